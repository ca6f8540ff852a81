"""``lime-rank precompute-candidates`` decides from the table logs, before a Spark session starts,
that a model version's candidates are current (the usual night: neither the model nor ``items``
changed), and skips with an audit row; otherwise it builds them with Spark."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

import jobs.precompute_candidates as job
from pipelines.errors import ConfigError
from pipelines.stages.context import RunContext
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.tables import engine_without_session
from pipelines.tables.audit import read_audit
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import ITEMS
from pipelines.tables.store import WriteRequest
from pipelines.tools.input_tables import write_synthetic
from pipelines.tools.synthetic_data import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

pytestmark = pytest.mark.spark

DS = "2024-01-04"


class _SparkStarted(Exception):
    """Raised by the patched ``open_run``: the job went on to start a Spark session."""


@pytest.fixture()
def built(spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(lakehouse, checkpoint) with this model's candidates built from the current ``items``."""
    cfg = SyntheticConfig(users=40, items=30, days=4, seed=3)
    lake = tmp_path / "lake"
    write_synthetic(None, DeltaRsStore(spark, lake), cfg)
    ckpt = tmp_path / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items))
    precompute_candidates(RunContext.open(spark, DeltaRsStore(spark, lake), DS, "build", str(ckpt)), "cpu")

    def no_spark(*args: object) -> None:
        raise _SparkStarted

    monkeypatch.setattr(job, "open_run", no_spark)
    monkeypatch.setenv("LIME_RANK_TABLE_ENGINE", "delta-rs")
    return lake, ckpt


def _run(lake: Path, ckpt: Path, run_id: str) -> int:
    return job.main(["--lakehouse", str(lake), "--ds", DS, "--checkpoint", str(ckpt), "--run-id", run_id])


def _rows(lake: Path, run_id: str) -> list[dict]:
    return [r for r in read_audit(DeltaRsStore(None, lake), DS) if r["run_id"] == run_id]


def test_current_candidates_are_skipped_without_a_spark_session(built: tuple[Path, Path]) -> None:
    lake, ckpt = built
    assert _run(lake, ckpt, "nightly-1") == 0
    [row] = _rows(lake, "nightly-1")
    assert row["job"] == "precompute_candidates" and row["status"] == "skipped"
    assert "already committed to candidate_link_weights" in row["metrics"]["skipped_reason"]


def test_a_changed_catalogue_is_built_with_spark_and_nothing_is_written_before(built: tuple[Path, Path]) -> None:
    lake, ckpt = built
    store = DeltaRsStore(None, lake)
    items = store.delta_table(ITEMS).to_pyarrow_table()
    store.write_arrow(pa.Table.from_batches(items.slice(0, 1).to_batches()),
                      WriteRequest(ITEMS, "append", "test:items-change"))
    with pytest.raises(_SparkStarted):
        _run(lake, ckpt, "nightly-2")
    assert _rows(lake, "nightly-2") == []


def test_the_engine_is_known_without_a_session_only_when_forced_or_under_spark_submit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.delenv("LIME_RANK_TABLE_ENGINE", raising=False)
    assert engine_without_session() is None  # auto in a plain python process: only a JVM can tell
    monkeypatch.setenv("LIME_RANK_TABLE_ENGINE", "delta-spark")
    assert engine_without_session() == "delta-spark"
    monkeypatch.setenv("LIME_RANK_TABLE_ENGINE", "parquet")
    with pytest.raises(ConfigError, match="table engine must be auto, delta-rs or delta-spark, got 'parquet'"):
        engine_without_session()
