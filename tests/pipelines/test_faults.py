"""Faults on the night it goes wrong (docs/operations.md, "Failure modes"): an executor killed
during inference, the driver killed between its data files and its commit, two concurrent
runs of one ds, a crash in the middle of the nightly run; plus the documented clean-up
(vacuum) and roll-back commands.

Faults are injected with ``$LIME_RANK_FAULT`` (pipelines/faults.py) in real ``lime-rank``
subprocesses; every outcome is compared with a clean in-process run of the same inputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipelines.faults import CRASH_EXIT_CODE, FAULT_ENV
from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.context import RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.stages.score_topk import score_topk
from pipelines.tables.audit import read_audit
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import RECOMMENDATIONS
from pipelines.tables.store import WriteRequest
from pipelines.tools.input_tables import write_synthetic
from pipelines.tools.synthetic_data import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
DS = "2024-01-03"
MAX_HISTORY = 8
K = 5


@dataclass(frozen=True)
class World:
    root: Path
    store: DeltaRsStore
    ckpt: Path
    links: dict[int, np.ndarray]  # the clean run's user_links(ds)
    recs: list[tuple]  # the clean run's recommendations(ds), sorted
    histories: list[tuple]

    def lakehouse(self) -> str:
        return self.store.root


def links_of(uri: str, version: int | None = None) -> dict[int, np.ndarray]:
    rows = DeltaTable(uri, version=version).to_pyarrow_table(filters=[("ds", "=", DS)]).to_pylist()
    out = {r["user_id"]: np.asarray(r["l_p"], np.float32) for r in rows}
    assert len(out) == len(rows), "duplicate user_id in user_links"
    return out


def rows_of(uri: str, version: int | None = None, ds: str = DS) -> list[tuple]:
    table = DeltaTable(uri, version=version).to_pyarrow_table(filters=[("ds", "=", ds)])
    return sorted(tuple(r.values()) for r in table.to_pylist())


def assert_links_equal(got: dict[int, np.ndarray], expected: dict[int, np.ndarray]) -> None:
    assert sorted(got) == sorted(expected)
    for user, l_p in expected.items():
        np.testing.assert_allclose(got[user], l_p, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("faults")
    cfg = SyntheticConfig(users=60, items=40, days=3, seed=2, mean_events_per_user=6)
    store = DeltaRsStore(spark, root / "lakehouse")
    write_synthetic(None, store, cfg)
    ckpt = root / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items)[:36], max_history=MAX_HISTORY)
    ctx = RunContext.open(spark, store, DS, "clean", str(ckpt))
    extract_histories(ctx, MAX_HISTORY)
    precompute_candidates(ctx, "cpu")
    infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"))
    score_topk(ctx, ScoringConfig(str(ckpt), ctx.model_version, top_k=K))
    return World(root, store, ckpt, links_of(store.uri("user_links")), rows_of(store.uri("recommendations")),
                 rows_of(store.uri("user_histories")))


def copy_of(world: World, spark: Any, dest: Path) -> World:
    """``world`` with its lakehouse copied under ``dest``: every test that writes works on its own
    copy, so the module's clean run stays what the other tests compare with."""
    shutil.copytree(world.lakehouse(), dest / "lakehouse")
    return dataclasses.replace(world, root=dest, store=DeltaRsStore(spark, dest / "lakehouse"))


def subprocess_env(fault: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIME_RANK_SPARK_LOG_LEVEL": "WARN"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return env


def lime_rank_argv(world: World, command: str, run_id: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", command, "--lakehouse", world.lakehouse(), "--ds", DS,
            "--checkpoint", str(world.ckpt), "--run-id", run_id, "--master", "local[2]", "--shuffle-partitions", "2",
            *extra]


def lime_rank(world: World, command: str, run_id: str, *extra: str, fault: str | None = None,
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lime_rank_argv(world, command, run_id, *extra), cwd=REPO, env=subprocess_env(fault),
                          capture_output=True, text=True, timeout=600, check=False)


def versions(world: World) -> dict[str, int]:
    root = Path(world.lakehouse())
    return {p.name: DeltaTable(str(p)).version() for p in sorted(root.iterdir()) if DeltaTable.is_deltatable(str(p))}


def files_on_disk(world: World, table: str) -> set[str]:
    base = Path(world.lakehouse()) / table
    return {str(p.relative_to(base)) for p in base.rglob("*.parquet")}


def files_in_any_version(world: World, table: str) -> set[str]:
    paths: set[str] = set()
    for log in (Path(world.lakehouse()) / table / "_delta_log").glob("*.json"):
        for line in log.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                paths.add(action["add"]["path"])
    return paths


def audit(world: World, run_id: str) -> list[tuple[str, str]]:
    return [(r["job"], r["status"]) for r in read_audit(world.store, DS) if r["run_id"] == run_id]


# --- an executor JVM killed during inference --------------------------------------------------------
def test_executor_killed_during_inference_is_retried_to_the_exact_result(world: World, spark, tmp_path: Path,
                                                                          ) -> None:
    world = copy_of(world, spark, tmp_path)
    marker, out = world.root / "killed.marker", world.root / "killed.json"
    before = DeltaTable(world.store.uri("user_links")).version()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.pipelines.cluster_inference", "--lakehouse", world.lakehouse(), "--ds", DS,
         "--checkpoint", str(world.ckpt), "--run-id", "executor-killed", "--out", str(out), "--partitions", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env=subprocess_env(f"kill-executor:stage=infer_user_links:partition=0:attempt=0:once={marker}"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert marker.exists()  # the fault fired ...
    assert "ExecutorLostFailure" in proc.stderr  # ... and Spark lost the executor running partition 0
    report = json.loads(out.read_text())
    assert report["version"] == before + 1
    got = links_of(world.store.uri("user_links"))  # raises on a duplicate user_id
    assert len(got) == len(world.links) == report["metrics"]["rows_written"] == report["metrics"]["users"]
    assert_links_equal(got, world.links)


# --- the driver killed after its files, before its commit; then the nightly run resumed -------------
@dataclass(frozen=True)
class Crash:
    proc: subprocess.CompletedProcess[str]
    before: dict[str, int]
    after: dict[str, int]
    new_files: set[str]  # user_links files the killed driver left on disk
    world: World  # the crashed lakehouse (read only: copy it to go on)


@pytest.fixture(scope="module")
def crash(world: World, spark, tmp_path_factory: pytest.TempPathFactory) -> Crash:
    """``lime-rank run`` whose driver dies right before the user_links commit (stage 3 of 4), on a
    copy of the clean world; the tests that go on from there each copy the crashed lakehouse."""
    world = copy_of(world, spark, tmp_path_factory.mktemp("crash"))
    before, on_disk = versions(world), files_on_disk(world, "user_links")
    proc = lime_rank(world, "run", "nightly-1", "--max-history", str(MAX_HISTORY), "--top-k", str(K),
                     "--inference-device", "cpu", fault="crash-before-commit:table=user_links")
    return Crash(proc, before, versions(world), files_on_disk(world, "user_links") - on_disk, world)


def test_driver_killed_before_commit_leaves_the_table_unchanged(crash: Crash) -> None:
    world = crash.world
    assert crash.proc.returncode == CRASH_EXIT_CODE, crash.proc.stderr[-4000:]
    assert crash.after["user_links"] == crash.before["user_links"]
    assert crash.after["recommendations"] == crash.before["recommendations"]
    assert_links_equal(links_of(world.store.uri("user_links")), world.links)
    assert rows_of(world.store.uri("recommendations")) == world.recs
    # the files were written, but no version of the log references them: invisible orphans
    assert crash.new_files and all(f.startswith(f"ds={DS}/part-") for f in crash.new_files)
    assert not crash.new_files & files_in_any_version(world, "user_links")
    # stages 1-2 are recorded; the killed stage left no audit row
    assert audit(world, "nightly-1") == [("extract_histories", "succeeded"), ("precompute_candidates", "skipped")]


def test_vacuum_lists_then_deletes_the_orphans(crash: Crash, spark, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    world = copy_of(crash.world, spark, tmp_path)

    table = ["--lakehouse", world.lakehouse(), "--table", "user_links"]
    assert main(["vacuum", *table]) == 0  # default: dry run, 7 days: fresh orphans are kept
    assert capsys.readouterr().out == "user_links: would delete (dry run) 0 file(s)\n"
    assert main(["vacuum", *table, "--retention-hours", "1"]) == 1  # short retention needs its flag
    short = [*table, "--retention-hours", "0", "--allow-short-retention"]
    assert main(["vacuum", *short]) == 0
    listed = {line.strip() for line in capsys.readouterr().out.splitlines()[1:]}
    assert crash.new_files <= listed  # orphans (and files of replaced versions) are listed ...
    assert files_on_disk(world, "user_links") >= listed  # ... and nothing was deleted by the dry run
    live = {uri.rsplit("user_links/", 1)[1] for uri in DeltaTable(world.store.uri("user_links")).file_uris()}
    assert not listed & live
    assert main(["vacuum", *short, "--delete"]) == 0
    assert files_on_disk(world, "user_links") == live
    assert_links_equal(links_of(world.store.uri("user_links")), world.links)


def test_rerun_with_the_same_run_id_resumes_without_double_work(crash: Crash, spark, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.cli import main

    world = copy_of(crash.world, spark, tmp_path)
    before = versions(world)
    assert before == crash.after
    # the same command again (in this process: the crashed driver is gone, its JVM with it)
    argv = lime_rank_argv(world, "run", "nightly-1", "--max-history", str(MAX_HISTORY), "--top-k", str(K),
                          "--inference-device", "cpu")[3:]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"extract_histories ds={DS}: nothing to do (extract_histories:ds={DS}:run=nightly-1 "
                               "already committed to user_histories)")
    assert lines[1].startswith(f"precompute_candidates ds={DS}: nothing to do")
    assert lines[2].startswith(f"infer_user_links ds={DS}: {len(world.links)} row(s) committed to user_links")
    assert lines[3].startswith(f"score_topk ds={DS}: {len(world.recs)} row(s) committed to recommendations")
    after = versions(world)
    assert after["user_histories"] == before["user_histories"]  # not extracted twice
    assert after["candidate_link_weights"] == before["candidate_link_weights"]
    assert (after["user_links"], after["recommendations"]) == (before["user_links"] + 1, before["recommendations"] + 1)
    assert audit(world, "nightly-1") == [
        ("extract_histories", "succeeded"), ("precompute_candidates", "skipped"),  # the crashed run
        ("extract_histories", "skipped"), ("precompute_candidates", "skipped"),  # the rerun
        ("infer_user_links", "succeeded"), ("score_topk", "succeeded"),
    ]
    recs = rows_of(world.store.uri("recommendations"))
    assert len({(r[1], r[2]) for r in recs}) == len(recs)  # one row per (user, rank)
    assert recs == world.recs
    assert_links_equal(links_of(world.store.uri("user_links")), world.links)


# --- rolling back a bad run --------------------------------------------------------------------------
def test_rollback_restores_one_partition_and_leaves_the_others(world: World, spark, tmp_path: Path) -> None:
    from jobs.cli import main

    world = copy_of(world, spark, tmp_path)

    uri = world.store.uri("recommendations")
    good = DeltaTable(uri).version()
    assert rows_of(uri, good) == world.recs
    ctx = RunContext.open(spark, world.store, DS, "bad-run", str(world.ckpt))
    score_topk(ctx, ScoringConfig(str(world.ckpt), ctx.model_version, top_k=2))  # the bad run: K=2
    bad = DeltaTable(uri).version()
    other_day = pa.Table.from_pylist([{"ds": "2024-01-02", "user_id": 1, "rank": 1, "item_id": 1003, "score": 1.0,
                                       "model_version": ctx.model_version, "source": "model"}],
                                     schema=RECOMMENDATIONS.schema)
    # a later run of another ds landed after the bad one
    world.store.write_arrow(other_day,
                            WriteRequest(RECOMMENDATIONS, "overwrite", "another-day", partition={"ds": "2024-01-02"}))
    assert len(rows_of(uri)) == 2 * len(world.recs) // K

    # the documented command: lime-rank rollback
    assert main(["rollback", "--lakehouse", world.lakehouse(), "--table", "recommendations", "--ds", DS,
                 "--to-version", str(good)]) == 0
    assert rows_of(uri) == world.recs
    assert rows_of(uri, ds="2024-01-02") == rows_of(uri, bad + 1, ds="2024-01-02")  # untouched
    assert DeltaTable(uri).history(1)[0]["operation"] == "WRITE"  # one ordinary commit, data files re-used
    assert read_audit(world.store, DS)[-1]["job"] == "rollback:recommendations"

    # the documented time travel: read any version; restore the whole table to one
    assert rows_of(uri, bad) != world.recs
    DeltaTable(uri).restore(bad)
    assert rows_of(uri) == rows_of(uri, bad) and rows_of(uri, ds="2024-01-02") == []  # whole table: other day gone
    DeltaTable(uri).restore(DeltaTable(uri).version() - 1)  # undo the restore: back to the rolled-back state
    assert rows_of(uri) == world.recs


# --- two runs of the same ds at once ---------------------------------------------------------------
def test_concurrent_runs_of_the_same_ds_one_fails_and_the_table_holds_the_other(world: World, spark,
                                                                                 tmp_path: Path) -> None:
    """Run A (a subprocess) pauses before its commit; run B (this process) commits the same
    partition meanwhile; A must then refuse to commit with ConcurrentWriteError."""
    world = copy_of(world, spark, tmp_path)
    go = world.root / "go"
    uri = world.store.uri("user_histories")
    run_a = subprocess.Popen(lime_rank_argv(world, "extract-histories", "run-a", "--max-history", "3"), cwd=REPO,
                             env=subprocess_env(f"pause-before-commit:table=user_histories:until={go}:timeout=300"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not Path(f"{go}.waiting").exists():
            assert run_a.poll() is None, run_a.communicate()[1][-4000:]
            assert time.monotonic() < deadline, "run A never reached its commit"
            time.sleep(0.2)
        ctx = RunContext.open(spark, world.store, DS, "run-b", str(world.ckpt))
        b = extract_histories(ctx, 4)
        go.touch()
        _, err = run_a.communicate(timeout=300)
    finally:
        if run_a.poll() is None:
            run_a.kill()
            run_a.wait()
    assert run_a.returncode == 1, err[-4000:]
    assert (f"ConcurrentWriteError: table 'user_histories': partition {{'ds': '{DS}'}} changed since this writer's "
            "snapshot (another run wrote it); not committing") in err
    assert b.commit is not None and DeltaTable(uri).version() == b.commit.version  # A added no version
    histories = rows_of(uri)
    assert histories == rows_of(uri, b.commit.version)
    assert max(r[4] for r in histories) == 4  # B's max history, not A's 3
    assert len(histories) == len(world.histories)
    assert audit(world, "run-a") == [("extract_histories", "failed")]
    failed = next(r for r in read_audit(world.store, DS) if r["run_id"] == "run-a")
    assert str(failed["metrics"]["error"]).startswith("ConcurrentWriteError: ")
