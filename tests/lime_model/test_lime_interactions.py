"""``read_interactions``: files with a header, a lakehouse events table, and what each refuses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lime_model.datasets import read_interactions
from lime_model.errors import InteractionsSchemaError

ROWS = {"user_id": [2, 1, 1, 2], "item_id": [10, 11, 12, 13], "timestamp": [5, 9, 3, 1]}
EXPECTED = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [12, 11, 13, 10], "timestamp": [3, 9, 1, 5]})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_files_with_a_header_sorted_by_user_then_time(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"inter{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)
    pd.testing.assert_frame_equal(read_interactions(str(path)), EXPECTED)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_datetime_timestamps_become_epoch_seconds_whatever_their_unit(tmp_path: Path, unit: str) -> None:
    ts = pa.array([5, 9, 3, 1], pa.int64()).cast(pa.timestamp("s", tz="UTC")).cast(pa.timestamp(unit, tz="UTC"))
    table = pa.table({"user_id": ROWS["user_id"], "item_id": ROWS["item_id"], "timestamp": ts})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "inter.parquet")
    pd.testing.assert_frame_equal(read_interactions(str(tmp_path / "inter.parquet")), EXPECTED)


def test_a_lakehouse_events_table_is_read_with_its_ts_column(tmp_path: Path) -> None:
    from deltalake import write_deltalake

    ts = pa.array([5, 9, 3, 1], pa.int64()).cast(pa.timestamp("s", tz="UTC")).cast(pa.timestamp("us", tz="UTC"))
    events = pa.table({"user_id": pa.array(ROWS["user_id"], pa.int64()),
                       "item_id": pa.array(ROWS["item_id"], pa.int64()), "ts": ts,
                       "event_date": pa.array(["1970-01-01"] * 4)})
    write_deltalake(str(tmp_path / "events"), events, partition_by=["event_date"])
    pd.testing.assert_frame_equal(read_interactions(str(tmp_path / "events")), EXPECTED)


def test_events_table_ties_keep_the_order_of_file_path_then_row(tmp_path: Path) -> None:
    """Serving orders equal timestamps by file path, then row; so does training and evaluation."""
    from deltalake import DeltaTable, write_deltalake

    uri = str(tmp_path / "events")
    for item in range(1, 9):  # eight files, one event each, all at the same second
        write_deltalake(uri, pa.table({"user_id": pa.array([1], pa.int64()), "item_id": pa.array([item], pa.int64()),
                                       "ts": pa.array([7], pa.int64())}), mode="append")
    by_path = [pq.read_table(u)["item_id"][0].as_py() for u in sorted(DeltaTable(uri).file_uris())]
    assert read_interactions(uri)["item_id"].tolist() == by_path


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(InteractionsSchemaError, match="neither 'ml-100k', an existing file"):
        read_interactions(str(tmp_path / "nothing.csv"))
    pd.DataFrame({"user_id": [1], "item": [2], "timestamp": [3]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InteractionsSchemaError, match=r"lacks column\(s\) \['item_id'\]"):
        read_interactions(str(tmp_path / "a.csv"))
    pd.DataFrame({"user_id": [-1], "item_id": [2], "timestamp": [3]}).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(InteractionsSchemaError, match="negative id"):
        read_interactions(str(tmp_path / "b.csv"))
    pd.DataFrame({"user_id": ["x"], "item_id": [2], "timestamp": [3]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(InteractionsSchemaError, match="column 'user_id' must hold integers, found 'x'"):
        read_interactions(str(tmp_path / "c.csv"))
    (tmp_path / "d.json").write_text("{}")
    with pytest.raises(InteractionsSchemaError, match=r"unknown extension '\.json'"):
        read_interactions(str(tmp_path / "d.json"))
