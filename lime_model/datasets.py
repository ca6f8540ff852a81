"""Interaction data sources for training and evaluation.

MovieLens-100K is fetched at run time from the ``recbole==1.2.1`` wheel on PyPI
(its terms forbid redistribution, so it is never committed), verified by sha256
and cached.  Any other source is a TSV/CSV/Parquet file with a header and the
columns ``user_id, item_id, timestamp``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lime_model.errors import DatasetChecksumError, DatasetFetchError, InteractionsSchemaError

log = logging.getLogger(__name__)

MOVIELENS_SOURCE = "ml-100k"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
_WHEEL_PREFIX = "recbole/dataset_example/ml-100k/"
# sha256 of the two files inside recbole-1.2.1-py3-none-any.whl.
MOVIELENS_FILES: dict[str, str] = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")


@dataclass(frozen=True)
class MovieLens:
    """MovieLens-100K as two frames.

    interactions: user_id int64, item_id int64, rating float64, timestamp int64 (epoch s)
    items: item_id int64, title str
    """

    interactions: pd.DataFrame
    items: pd.DataFrame


def default_cache_dir() -> Path:
    """``$LIME_RANK_CACHE`` or ``~/.cache/lime-rank``."""
    root = os.environ.get("LIME_RANK_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "lime-rank"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached_files_ok(folder: Path) -> bool:
    for name, digest in MOVIELENS_FILES.items():
        path = folder / name
        if not path.is_file() or _sha256(path.read_bytes()) != digest:
            return False
    return True


def _download_wheel(into: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--dest", str(into), RECBOLE_REQUIREMENT]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DatasetFetchError(f"could not run {' '.join(cmd)}: {exc}") from exc
    if proc.returncode != 0:
        raise DatasetFetchError(
            f"'pip download {RECBOLE_REQUIREMENT}' failed (exit {proc.returncode}); MovieLens-100K "
            f"is read from that wheel and needs the package index:\n{proc.stderr.strip()[-2000:]}"
        )
    wheels = sorted(into.glob("recbole-*.whl"))
    if not wheels:
        raise DatasetFetchError(f"pip download {RECBOLE_REQUIREMENT} produced no wheel in {into}")
    return wheels[0]


def ensure_movielens_files(cache_dir: Path | None = None) -> Path:
    """Return a folder holding the verified ``ml-100k.inter`` and ``ml-100k.item``.

    Downloads the recbole wheel once, extracts the two files, checks their sha256
    and writes them atomically into ``<cache>/ml-100k``.
    """
    folder = (cache_dir or default_cache_dir()) / "ml-100k"
    if _cached_files_ok(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lime-rank-recbole-") as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            for name, digest in MOVIELENS_FILES.items():
                try:
                    data = archive.read(_WHEEL_PREFIX + name)
                except KeyError as exc:
                    raise DatasetFetchError(f"{wheel.name} has no {_WHEEL_PREFIX + name}") from exc
                actual = _sha256(data)
                if actual != digest:
                    raise DatasetChecksumError(
                        f"{name} from {wheel.name} has sha256 {actual}, expected {digest}"
                    )
                part = folder / (name + ".part")
                part.write_bytes(data)
                part.replace(folder / name)
    log.info("MovieLens-100K cached in %s", folder)
    return folder


def load_movielens_100k(cache_dir: Path | None = None) -> MovieLens:
    """Fetch (once), verify and parse MovieLens-100K."""
    folder = ensure_movielens_files(cache_dir)
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t", header=0)
    inter.columns = ["user_id", "item_id", "rating", "timestamp"]
    inter = inter.astype({"user_id": "int64", "item_id": "int64", "rating": "float64",
                          "timestamp": "int64"})
    raw_items = (folder / "ml-100k.item").read_bytes().decode("latin-1")
    items = pd.read_csv(io.StringIO(raw_items), sep="\t", header=0, usecols=[0, 1])
    items.columns = ["item_id", "title"]
    items = items.astype({"item_id": "int64"})
    items["title"] = items["title"].fillna("").astype(str)
    return MovieLens(interactions=inter, items=items)


def read_interactions(source: str, cache_dir: Path | None = None) -> pd.DataFrame:
    """Read ``user_id, item_id, timestamp`` (int64, epoch seconds) from ``source``.

    ``source`` is ``"ml-100k"``, a path to a ``.tsv``/``.csv``/``.parquet`` file
    with a header, or the folder of a lakehouse ``events`` Delta table (columns
    ``user_id, item_id, ts``; read with delta-rs, no Spark).  Rows are returned sorted
    by (user_id, timestamp) with a stable tie-break on file order.
    """
    if source == MOVIELENS_SOURCE:
        frame = load_movielens_100k(cache_dir).interactions[list(INTERACTION_COLUMNS)]
    else:
        path = Path(source)
        frame = _validated(path, _read_frame(source, path))
    frame = frame.astype({c: "int64" for c in INTERACTION_COLUMNS})
    return frame.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def _read_frame(source: str, path: Path) -> pd.DataFrame:
    """The raw table of a file or an events Delta table (``ts`` read as ``timestamp``)."""
    is_delta = path.is_dir() and (path / "_delta_log").is_dir()
    if not path.is_file() and not is_delta:
        raise InteractionsSchemaError(
            f"interactions source {source!r} is neither '{MOVIELENS_SOURCE}', an existing file nor an "
            "events Delta table folder"
        )
    suffix = path.suffix.lower()
    if is_delta:
        from deltalake import DeltaTable

        return _read_events_table(DeltaTable(str(path)))
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix in (".tsv", ".csv"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", header=0)
    raise InteractionsSchemaError(
        f"interactions file {path}: unknown extension {suffix!r} (use .tsv, .csv or .parquet)"
    )


def _read_events_table(table: Any) -> pd.DataFrame:
    """A Delta ``events`` table's interaction columns, its files read in path order: timestamp ties
    then keep the source order serving uses (file path, then row; docs/pipeline.md)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f.name for f in table.schema().fields]
    time_col = "ts" if "ts" in names and "timestamp" not in names else "timestamp"
    columns = [c for c in ("user_id", "item_id", time_col) if c in names]
    parts = [pq.read_table(uri, columns=columns) for uri in sorted(table.file_uris())]
    frame = pa.concat_tables(parts).to_pandas() if parts else pd.DataFrame(columns=columns)
    return frame.rename(columns={"ts": "timestamp"})


def _validated(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """The interaction columns as integers (datetimes as epoch seconds); an error names the first bad value."""
    missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
    if missing:
        raise InteractionsSchemaError(
            f"interactions file {path} lacks column(s) {missing}; it has {list(frame.columns)}"
        )
    frame = frame[list(INTERACTION_COLUMNS)]
    if pd.api.types.is_datetime64_any_dtype(frame["timestamp"]):
        ts = frame["timestamp"]
        ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
        # whole seconds since the epoch, whatever the column's unit (ns, us, ms)
        frame = frame.assign(timestamp=(ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))
    for col in INTERACTION_COLUMNS:
        if not pd.api.types.is_integer_dtype(frame[col]):
            coerced = pd.to_numeric(frame[col], errors="coerce")
            bad = coerced.isna() | (coerced != np.floor(coerced))
            if bad.any():
                first = frame.loc[bad.idxmax(), col]
                raise InteractionsSchemaError(
                    f"interactions file {path}: column {col!r} must hold integers, "
                    f"found {first!r} ({int(bad.sum())} bad rows)"
                )
            frame = frame.assign(**{col: coerced.astype("int64")})
    negative = frame["user_id"].lt(0) | frame["item_id"].lt(0)
    if negative.any():
        row = frame[negative].iloc[0]
        raise InteractionsSchemaError(
            f"interactions file {path}: negative id (user_id={row.user_id}, item_id={row.item_id})"
        )
    return frame
