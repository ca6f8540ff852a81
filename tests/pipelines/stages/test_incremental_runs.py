"""Incremental nightly runs equal full runs: the same lakehouse is copied, the same change is made
to both copies, and the next day runs incrementally on one and with ``full=True`` on the other."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipelines.runtime.inference_task import InferenceConfig
from pipelines.runtime.scoring_task import ScoringConfig
from pipelines.stages.context import RunContext
from pipelines.stages.extract_histories import extract_histories
from pipelines.stages.incremental import encoded_link_files
from pipelines.stages.infer_user_links import infer_user_links
from pipelines.stages.precompute_candidates import precompute_candidates
from pipelines.stages.score_topk import score_topk
from pipelines.stages.scoring_plan import seen_lists_bytes
from pipelines.tables.audit import read_audit
from pipelines.tables.delta_rs import DeltaRsStore
from pipelines.tables.schemas import EVENTS, ITEMS, USER_LINKS
from pipelines.tables.store import WriteRequest
from pipelines.tools.input_tables import write_synthetic
from pipelines.tools.synthetic_data import SyntheticConfig, item_ids
from tests.factories import make_checkpoint

pytestmark = [pytest.mark.spark, pytest.mark.slow]

DAY0 = "2024-01-08"
DAY1 = "2024-01-09"
MAX_HISTORY = 6  # short, so that new events push old ones out of the window
K = 5
KNOWN = 180  # the model knows the first 180 of the 200 items


def run_day(spark, root: Path, ds: str, ckpt: Path, *, full: bool = False, allow_empty_ds: bool = False,
            full_extract: bool = False, seen_max: int | None = None) -> dict:
    """The four nightly stages of ``ds``; the audit metrics of each stage, by stage."""
    ctx = RunContext.open(spark, DeltaRsStore(spark, root), ds, f"run-{uuid.uuid4().hex[:8]}", str(ckpt))
    scoring = ScoringConfig(str(ckpt), ctx.model_version, top_k=K, candidate_block=64)
    if seen_max is not None:
        scoring = dataclasses.replace(scoring, seen_broadcast_max_bytes=seen_max)
    results = [
        extract_histories(ctx, MAX_HISTORY, allow_empty_ds=allow_empty_ds, full=full or full_extract),
        precompute_candidates(ctx),
        infer_user_links(ctx, InferenceConfig(str(ckpt), ctx.model_version, device="cpu"), full=full),
        score_topk(ctx, scoring, full=full),
    ]
    return {r.stage: r.metrics for r in results}


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A lakehouse with day 0 run (in full: there is no day before it)."""
    root = tmp_path_factory.mktemp("incremental")
    cfg = SyntheticConfig(users=300, items=200, days=8, seed=5, mean_events_per_user=8)
    write_synthetic(None, DeltaRsStore(spark, root / "lake"), cfg)
    ckpt = root / "model.ckpt"
    make_checkpoint(ckpt, item_ids(cfg.items)[:KNOWN], max_history=MAX_HISTORY)
    metrics = run_day(spark, root / "lake", DAY0, ckpt)
    assert metrics["extract_histories"]["mode"] == "full"
    return {"root": root, "ckpt": ckpt, "items": item_ids(cfg.items), "cfg": cfg}


def copies(base: dict, tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of the day-0 lakehouse: one for the incremental run, one for the full run."""
    return shutil.copytree(base["root"] / "lake", tmp_path / "inc"), shutil.copytree(base["root"] / "lake",
                                                                                     tmp_path / "full")


def events(rows: list[tuple[int, int, str]], event_date: str) -> pa.Table:
    ts = [pd.Timestamp(t, tz="UTC") for _, _, t in rows]
    return pa.table({"event_date": [event_date] * len(rows), "user_id": [u for u, _, _ in rows],
                     "item_id": [i for _, i, _ in rows], "ts": pa.array(ts, pa.timestamp("us", tz="UTC"))},
                    schema=EVENTS.schema)


def append(spark, root: Path, table: pa.Table) -> None:
    DeltaRsStore(spark, root).write_arrow(table, WriteRequest(EVENTS, "append", f"test:{uuid.uuid4().hex}"))


def partition(root: Path, table: str, ds: str, keys: list[str]) -> pd.DataFrame:
    frame = DeltaTable(str(root / table)).to_pandas(filters=[("ds", "=", ds)])
    return frame.sort_values(keys).reset_index(drop=True)


def assert_same_tables(inc: Path, full: Path, ds: str) -> None:
    """user_histories equal; user_links and recommendations the same rows, values within 1e-5."""
    a, b = partition(inc, "user_histories", ds, ["user_id"]), partition(full, "user_histories", ds, ["user_id"])
    assert len(a) == len(b) > 0
    for col in ("user_id", "n", "n_seen"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("item_ids", "ts", "seen_item_ids"):
        assert [list(x) for x in a[col]] == [list(x) for x in b[col]], col
    a, b = partition(inc, "user_links", ds, ["user_id"]), partition(full, "user_links", ds, ["user_id"])
    assert a.user_id.tolist() == b.user_id.tolist() and set(a.model_version) == set(b.model_version)
    np.testing.assert_allclose(np.stack(a.l_p.to_numpy()), np.stack(b.l_p.to_numpy()), atol=1e-5)
    keys = ["user_id", "rank"]
    a, b = partition(inc, "recommendations", ds, keys), partition(full, "recommendations", ds, keys)
    for col in ("user_id", "rank", "item_id", "source", "model_version"):
        assert a[col].tolist() == b[col].tolist(), col
    np.testing.assert_allclose(a.score.to_numpy(), b.score.to_numpy(), atol=1e-5)


def history_changes(root: Path, ds: str, before: str, *, seen: bool = False) -> int:
    """Users with n > 0 on ``ds`` who are new or whose (item_ids, ts[, seen_item_ids]) differ from ``before``."""
    now, prev = (partition(root, "user_histories", d, ["user_id"]).set_index("user_id") for d in (ds, before))
    now = now[now.n > 0]
    columns = ["item_ids", "ts", *(["seen_item_ids"] if seen else [])]
    same = [u for u in now.index if u in prev.index and all(list(now[c][u]) == list(prev[c][u]) for c in columns)]
    return len(now) - len(same)


def test_a_day_of_new_events_runs_incrementally_and_equals_a_full_run(spark, base: dict, tmp_path: Path) -> None:
    """Users with new events, new users, users whose new events are all unknown items, an exact
    duplicate of an old event, and a late event filed under an earlier day; then a rerun of the day."""
    inc, full = copies(base, tmp_path)
    known, unknown = base["items"][:KNOWN], base["items"][KNOWN:]
    rows = [(u, int(known[(u * 7) % KNOWN]), f"{DAY1} 0{u % 9}:30:00") for u in range(100, 140)]  # existing
    rows += [(u, int(known[u % KNOWN]), f"{DAY1} 12:00:00") for u in range(99_000, 99_005)]  # new users
    rows += [(u, int(unknown[u % len(unknown)]), f"{DAY1} 13:00:00") for u in range(200, 205)]  # unknown items
    rows += [(250, int(known[3]), f"{DAY1} 14:00:00"), (250, int(known[4]), f"{DAY1} 14:00:00")]  # a tie
    late = events([(280, int(known[5]), "2024-01-05 10:00:00")], "2024-01-05")  # arrives late, filed under its day
    old = partition(inc, "user_histories", DAY0, ["user_id"]).set_index("user_id")
    dup_user = int(old.index[old.n > 0][0])
    newest = pd.Timestamp(old.ts[dup_user][-1])
    newest = newest.tz_convert(None) if newest.tzinfo else newest
    dup = events([(dup_user, int(old.item_ids[dup_user][-1]), str(newest))], newest.date().isoformat())
    for root in (inc, full):
        append(spark, root, events(rows, DAY1))
        append(spark, root, pa.concat_tables([late, dup]))
    metrics = run_day(spark, inc, DAY1, base["ckpt"])
    full_metrics = run_day(spark, full, DAY1, base["ckpt"], full=True)
    assert_same_tables(inc, full, DAY1)
    assert full_metrics["score_topk"]["gate_scope"] == "all users"
    for stage in ("extract_histories", "infer_user_links", "score_topk"):
        assert metrics[stage]["mode"] == "incremental", (stage, metrics[stage]["mode_reason"])
    assert 40 <= history_changes(inc, DAY1, DAY0) <= 47  # 40 + 5 users with known new items, the tie, the late event
    users_with_events = len({r[0] for r in rows} | {280, dup_user})
    histories = partition(inc, "user_histories", DAY1, ["user_id"])
    extracted = histories[histories.extracted_ds == DAY1]
    assert len(extracted) == users_with_events and (histories.extracted_ds <= DAY1).all()
    changed = int((extracted.n > 0).sum())  # the users with new events and a history: 5 have new unknown items only
    assert history_changes(inc, DAY1, DAY0, seen=True) < changed == users_with_events
    for stage, count in (("infer_user_links", "users_reinferred"), ("score_topk", "users_rescored")):
        assert metrics[stage]["changed_users_by"] == "extracted_ds"
        assert metrics[stage][count] == changed
    score = metrics["score_topk"]  # the gate before the commit checks the recomputed lists only
    assert score["gate_scope"] == "recomputed users" and score["quality"]["passed"]
    assert score["scoring_input"] == "link_files"  # the tasks read L_P from the files, the copied users left out
    encoded = metrics["infer_user_links"]["encoded_files"]  # only the files of the users infer_user_links encoded
    assert score["link_files_read"] == len(encoded) < score["link_files"], score.get("link_files_read_all_because")
    assert score["quality"]["users"] == score["users_rescored"] + score["users_popular"]
    assert metrics["extract_histories"]["users_extracted"] == users_with_events
    assert metrics["extract_histories"]["users_reused"] + users_with_events == metrics["extract_histories"]["users"]
    # the late event and the duplicate are not newer than those users' histories: extracted again
    assert metrics["extract_histories"]["users_rescanned"] == 2
    again = run_day(spark, inc, DAY1, base["ckpt"])  # a rerun of the day (new run id): incremental from day 0
    assert again["infer_user_links"]["mode"] == "incremental"
    assert again["infer_user_links"]["users_reinferred"] == changed
    assert_same_tables(inc, full, DAY1)


def test_a_day_without_events_reuses_every_row(spark, base: dict, tmp_path: Path) -> None:
    inc, full = copies(base, tmp_path)
    metrics = run_day(spark, inc, DAY1, base["ckpt"], allow_empty_ds=True)
    run_day(spark, full, DAY1, base["ckpt"], full=True, allow_empty_ds=True)
    assert_same_tables(inc, full, DAY1)
    assert metrics["extract_histories"]["users_extracted"] == 0
    assert metrics["infer_user_links"]["users_reinferred"] == 0
    assert metrics["score_topk"]["users_rescored"] == 0


def test_events_dated_after_the_previous_day_already_in_the_table_are_read(spark, base: dict, tmp_path: Path) -> None:
    """Events filed early (dated day 2, in a file that day 1's run read and left them out of) count
    on day 2 although no file was added for them since."""
    inc, full = copies(base, tmp_path)
    day2 = (dt.date.fromisoformat(DAY1) + dt.timedelta(days=1)).isoformat()
    known = base["items"][:KNOWN]
    early = [(120, int(known[9]), f"{day2} 06:00:00"), (99_100, int(known[2]), f"{day2} 07:00:00")]
    for root in (inc, full):
        append(spark, root, events([*early, (121, int(known[8]), f"{DAY1} 09:00:00")], DAY1))
    run_day(spark, inc, DAY1, base["ckpt"])
    for root in (inc, full):
        append(spark, root, events([(130, int(known[1]), f"{day2} 10:00:00")], day2))
    metrics = run_day(spark, inc, day2, base["ckpt"])
    run_day(spark, full, day2, base["ckpt"], full=True)
    assert_same_tables(inc, full, day2)
    extract = metrics["extract_histories"]
    assert extract["mode"] == "incremental", extract["mode_reason"]
    assert (extract["users_extracted"], extract["users_rescanned"], extract["events_on_ds"]) == (3, 0, 3)


def test_an_incremental_run_broadcasts_only_the_seen_lists_of_the_users_it_scores(
    spark, base: dict, tmp_path: Path,
) -> None:
    """A seen-list bound that every user's lists exceed but the changed users' fit: the full run
    joins the seen lists by a shuffle, the incremental run broadcasts those it needs and its tasks
    read L_P from the files; the same lists either way."""
    inc, full = copies(base, tmp_path)
    rows = [(u, int(base["items"][u % KNOWN]), f"{DAY1} 08:00:00") for u in range(100, 110)]
    for root in (inc, full):
        append(spark, root, events(rows, DAY1))
    before = partition(inc, "user_histories", DAY0, ["user_id"])
    bound = seen_lists_bytes(50, int(before.n_seen.max()) + 1)  # one new event per user at most
    assert seen_lists_bytes(len(before), int(before.n_seen.max())) > bound
    metrics = run_day(spark, inc, DAY1, base["ckpt"], seen_max=bound)
    full_metrics = run_day(spark, full, DAY1, base["ckpt"], full=True, seen_max=bound)
    assert_same_tables(inc, full, DAY1)
    plans = [(m["score_topk"]["seen_join"], m["score_topk"]["scoring_input"]) for m in (full_metrics, metrics)]
    assert plans == [("shuffle", "spark_join"), ("broadcast", "link_files")]
    assert metrics["score_topk"]["mode"] == "incremental" and metrics["score_topk"]["users_rescored"] == 10
    store = DeltaRsStore(spark, inc)
    found, _ = encoded_link_files(store, DAY1)
    assert found is not None and sorted(Path(f).name for f in found) == sorted(
        Path(f).name for f in metrics["infer_user_links"]["encoded_files"])
    # a compaction rewrites the partition's files: the named files are gone, so score_topk would read them all
    links = DeltaTable(str(inc / "user_links")).to_pyarrow_table(filters=[("ds", "=", DAY1)])
    store.write_arrow(links, WriteRequest(USER_LINKS, "overwrite", "compaction", partition={"ds": DAY1}))
    found, why_not = encoded_link_files(store, DAY1)
    assert found is None and why_not.endswith(f"wrote for {DAY1} are no longer in user_links"), why_not


def test_after_a_full_extraction_the_changed_users_are_found_by_comparing_histories(
    spark, base: dict, tmp_path: Path,
) -> None:
    """A full extraction recomputes every row (extracted_ds = ds for all): the later stages compare
    the two days' histories and still recompute only the users whose history changed."""
    inc, full = copies(base, tmp_path)
    rows = [(u, int(base["items"][u % KNOWN]), f"{DAY1} 08:00:00") for u in range(100, 110)]
    for root in (inc, full):
        append(spark, root, events(rows, DAY1))
    metrics = run_day(spark, inc, DAY1, base["ckpt"], full_extract=True)
    run_day(spark, full, DAY1, base["ckpt"], full=True)
    assert_same_tables(inc, full, DAY1)
    for stage, count in (("infer_user_links", "users_reinferred"), ("score_topk", "users_rescored")):
        assert metrics[stage]["mode"] == "incremental", metrics[stage]["mode_reason"]
        assert metrics[stage]["changed_users_by"] == "comparing histories"
        assert metrics[stage][count] == history_changes(inc, DAY1, DAY0, seen=stage == "score_topk") == 10
    assert "encoded_files" not in metrics["infer_user_links"]  # not the users marked extracted_ds = ds
    score = metrics["score_topk"]
    assert score["link_files_read"] == score["link_files"] > 0
    assert score["link_files_read_all_because"] == "users found by comparing histories"


def test_a_missing_previous_day_falls_back_to_a_full_run_and_says_why(spark, base: dict, tmp_path: Path) -> None:
    inc, _ = copies(base, tmp_path)
    day2 = (dt.date.fromisoformat(DAY1) + dt.timedelta(days=1)).isoformat()
    append(spark, inc, events([(100, int(base["items"][0]), f"{day2} 08:00:00")], day2))
    metrics = run_day(spark, inc, day2, base["ckpt"])
    for stage in ("extract_histories", "infer_user_links", "score_topk"):
        assert metrics[stage]["mode"] == "full"
        assert DAY1 in str(metrics[stage]["mode_reason"]), metrics[stage]["mode_reason"]


def test_a_new_model_version_recomputes_everything(spark, base: dict, tmp_path: Path) -> None:
    inc, full = copies(base, tmp_path)
    ckpt = tmp_path / "model-2.ckpt"
    make_checkpoint(ckpt, base["items"][:KNOWN - 10], max_history=MAX_HISTORY, seed=1)
    rows = [(u, int(base["items"][u % KNOWN]), f"{DAY1} 08:00:00") for u in range(100, 110)]
    for root in (inc, full):
        append(spark, root, events(rows, DAY1))
    metrics = run_day(spark, inc, DAY1, ckpt)
    run_day(spark, full, DAY1, ckpt, full=True)
    assert_same_tables(inc, full, DAY1)
    for stage in ("extract_histories", "infer_user_links", "score_topk"):
        assert metrics[stage]["mode"] == "full"
        assert "model_version" in str(metrics[stage]["mode_reason"]), metrics[stage]["mode_reason"]


def test_a_changed_items_table_rescores_every_user(spark, base: dict, tmp_path: Path) -> None:
    inc, full = copies(base, tmp_path)
    catalogue = base["items"][:KNOWN - 30]  # items leave the catalogue: new candidate table
    for root in (inc, full):
        DeltaRsStore(spark, root).write_arrow(
            pa.table({"item_id": pa.array(catalogue, pa.int64()), "title": pa.nulls(len(catalogue), pa.string())}),
            WriteRequest(ITEMS, "overwrite", f"test:{uuid.uuid4().hex}"))
    metrics = run_day(spark, inc, DAY1, base["ckpt"], allow_empty_ds=True)
    run_day(spark, full, DAY1, base["ckpt"], full=True, allow_empty_ds=True)
    assert_same_tables(inc, full, DAY1)
    assert metrics["infer_user_links"]["mode"] == "incremental"
    assert metrics["score_topk"]["mode"] == "full"
    assert "candidates_fingerprint" in str(metrics["score_topk"]["mode_reason"])


def test_a_stage_whose_previous_output_no_longer_matches_its_input_runs_in_full(
    spark, base: dict, tmp_path: Path,
) -> None:
    """Day 0's histories extracted again after its links were inferred: day 1 must not reuse them."""
    inc, full = copies(base, tmp_path)
    for root in (inc, full):
        append(spark, root, events([(100, int(base["items"][0]), "2024-01-08 23:00:00")], DAY0))
    ctx = RunContext.open(spark, DeltaRsStore(spark, inc), DAY0, "re-extract", str(base["ckpt"]))
    extract_histories(ctx, MAX_HISTORY)
    metrics = run_day(spark, inc, DAY1, base["ckpt"], allow_empty_ds=True)
    run_day(spark, full, DAY1, base["ckpt"], full=True, allow_empty_ds=True)
    assert_same_tables(inc, full, DAY1)
    assert metrics["extract_histories"]["mode"] == "incremental"
    for stage in ("infer_user_links", "score_topk"):
        assert metrics[stage]["mode"] == "full"
        assert f"extract_histories ran for the previous day {DAY0} after" in str(metrics[stage]["mode_reason"])


def test_the_audit_of_day_0_records_what_the_next_day_needs(base: dict) -> None:
    rows = [r for r in read_audit(DeltaRsStore(None, base["root"] / "lake"), DAY0) if r["status"] == "succeeded"]
    by_job = {r["job"]: r["metrics"] for r in rows}
    assert isinstance(by_job["extract_histories"]["events_version"], int)
    assert by_job["extract_histories"]["max_history"] == MAX_HISTORY
    assert by_job["score_topk"]["top_k"] == K and len(by_job["score_topk"]["candidates_fingerprint"]) == 32
