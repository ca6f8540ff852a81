"""``lime-rank generate`` and ``lime-rank load-movielens`` write the input tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from deltalake import DeltaTable

import lime_model.datasets as datasets
from jobs.cli import main as cli
from lime_model.errors import DatasetChecksumError


@pytest.mark.spark
def test_generate_writes_events_and_items(spark, lakehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["generate", "--lakehouse", str(lakehouse), "--users", "1000", "--items", "200",
                "--days", "7", "--seed", "1"]) == 0
    events = DeltaTable(str(lakehouse / "events")).to_pandas()
    items = DeltaTable(str(lakehouse / "items")).to_pandas()
    assert events.user_id.nunique() == 1000 and len(items) == 200
    assert sorted(events.event_date.unique())[-1] <= "2024-01-07"
    assert "--ds 2024-01-07" in capsys.readouterr().out


def test_generate_rejects_bad_sizes(lakehouse: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["generate", "--lakehouse", str(lakehouse), "--users", "0", "--items", "10"])
    assert exit_info.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.network
def test_load_movielens_writes_verified_tables(lakehouse: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert cli(["load-movielens", "--lakehouse", str(lakehouse), "--cache-dir", str(cache)]) == 0
    events = DeltaTable(str(lakehouse / "events")).to_pandas()
    items = DeltaTable(str(lakehouse / "items")).to_pandas()
    assert (len(events), events.user_id.nunique(), events.item_id.nunique(), len(items)) == (100000, 943, 1682, 1682)
    assert items.set_index("item_id").title[1] == "Toy Story"
    inter = (cache / "ml-100k" / "ml-100k.inter").read_bytes()
    assert hashlib.sha256(inter).hexdigest() == datasets.MOVIELENS_FILES["ml-100k.inter"]


@pytest.mark.network
def test_movielens_checksum_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(datasets.MOVIELENS_FILES, "ml-100k.inter", "0" * 64)
    with pytest.raises(DatasetChecksumError, match=r"ml-100k\.inter .* has sha256 4edb74e2"):
        datasets.ensure_movielens_files(tmp_path / "cache")
    assert not (tmp_path / "cache" / "ml-100k" / "ml-100k.inter").exists()


@pytest.mark.network
def test_tampered_cache_is_fetched_again(tmp_path: Path) -> None:
    folder = datasets.ensure_movielens_files(tmp_path)
    (folder / "ml-100k.inter").write_text("user_id\titem_id\n1\t2\n")
    folder = datasets.ensure_movielens_files(tmp_path)
    digest = hashlib.sha256((folder / "ml-100k.inter").read_bytes()).hexdigest()
    assert digest == datasets.MOVIELENS_FILES["ml-100k.inter"]
