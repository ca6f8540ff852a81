"""The benchmark's own logic: list comparison with ties, and the dot-product engine it races MLlib with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from benchmarks.common import tree_rss_bytes
from benchmarks.pipeline_throughput import compare_lists


def lists(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


def test_identical_lists_compare_equal() -> None:
    a = lists([(1, 1, 10, 3.0), (1, 2, 11, 2.0)])
    assert compare_lists(a, a.copy()) == (True, 0)


def test_swaps_among_tied_scores_are_allowed_others_are_not() -> None:
    a = lists([(1, 1, 10, 3.0), (1, 2, 11, 2.0), (1, 3, 12, 2.0)])
    tie_swap = lists([(1, 1, 10, 3.0), (1, 2, 12, 2.0), (1, 3, 11, 2.0)])
    boundary = lists([(1, 1, 10, 3.0), (1, 2, 11, 2.0), (1, 3, 99, 2.0)])  # another item tied at the K-th place
    wrong = lists([(1, 1, 11, 3.0), (1, 2, 10, 2.0), (1, 3, 12, 2.0)])
    assert compare_lists(a, tie_swap) == (True, 0)
    assert compare_lists(a, boundary) == (True, 0)
    assert compare_lists(a, wrong) == (False, 1)
    assert compare_lists(a, lists([(1, 1, 10, 3.0), (1, 2, 11, 1.0), (1, 3, 12, 2.0)])) == (False, 1)
    assert compare_lists(a, lists([(2, 1, 10, 3.0)])) == (False, 2)  # user 1 missing, user 2 extra


@pytest.mark.spark
def test_dot_product_engine_equals_brute_force(spark) -> None:
    from pipelines.runtime.scoring_task import dot_product_topk

    rng = np.random.default_rng(0)
    users, items, rank, k = 50, 300, 6, 5
    item_ids = rng.permutation(np.arange(1000, 1000 + items)).astype(np.int64)
    factors = rng.standard_normal((items, rank)).astype(np.float32)
    user_f = rng.standard_normal((users, rank)).astype(np.float32)
    df = spark.createDataFrame(pa.table({"user_id": pa.array(np.arange(users), pa.int64()),
                                         "features": pa.array(list(user_f), pa.list_(pa.float32()))}))
    got = dot_product_topk(df, item_ids, factors, k, user_block=16, candidate_block=64).toPandas()
    got = got.sort_values(["user_id", "rank"])
    scores = user_f @ factors.T
    for u in range(users):
        order = np.lexsort((item_ids, -scores[u]))[:k]
        assert got[got.user_id == u].item_id.tolist() == item_ids[order].tolist()


def test_tree_rss_counts_resident_bytes_of_every_descendant() -> None:
    """A grandchild holding 64 MiB resident and 256 MiB mapped but untouched: counted in bytes,
    resident only (not the virtual size), and under the shell that started it (descendants are part
    of the tree).  The tree measured is that shell's, not this process's: other processes of the
    session (the cluster demo runs beside the tests) come and go under this one."""
    import subprocess
    import sys

    code = ("import mmap, sys\n"
            "held = b'x' * (64 << 20)\n"  # written: resident
            "reserved = mmap.mmap(-1, 256 << 20)\n"  # never touched: virtual only
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")
    # "; exit" keeps bash from exec-ing the interpreter in its own place: the holder is its child
    shell = subprocess.Popen(["bash", "-c", '"$0" -c "$1"; exit $?', sys.executable, code],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert shell.stdin is not None and shell.stdout is not None
    try:
        assert shell.stdout.readline() == "ready\n"
        [holder] = Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()
        alone, tree = tree_rss_bytes(int(holder)), tree_rss_bytes(shell.pid)
    finally:
        shell.stdin.close()
        shell.wait(timeout=60)
    assert 64 << 20 <= alone < (64 + 48) << 20  # an interpreter is ~10 MiB; KiB or VmSize are far off
    assert alone < tree < alone + (32 << 20)  # the shell's own few MiB on top of its child's


def test_quality_summary_means_over_seeds_and_ratios_per_setting() -> None:
    from benchmarks.quality import summarise_settings
    from benchmarks.tables import quality_tables

    def run(setting: str, model: str, seed: int, ndcg: float) -> dict:
        return {"setting": setting, "model": model, "seed": seed, "hr@10": 2 * ndcg, "ndcg@10": ndcg,
                "hr@50": 0.5, "ndcg@50": 0.2}

    runs = [run("ml-100k", "lime-xor", 0, 0.08), run("ml-100k", "lime-xor", 1, 0.10),
            run("ml-100k", "sasrec", 0, 0.10), run("ml-100k", "popularity", 0, 0.03),
            run("ml-100k@3min", "lime-xor", 0, 0.05), run("ml-100k@3min", "sasrec", 0, 0.10)]
    summary = summarise_settings(runs)
    full, short = summary["ml-100k"], summary["ml-100k@3min"]
    assert full["means"]["lime-xor"] == {"hr@10": 0.18, "ndcg@10": 0.09, "hr@50": 0.5, "ndcg@50": 0.2, "seeds": 2}
    assert full["xor_over_sasrec_ndcg@10"] == 0.9 and short["xor_over_sasrec_ndcg@10"] == 0.5
    assert full["xor_over_popularity_ndcg@10"] == 3.0 and "xor_over_popularity_ndcg@10" not in short
    assert (full["cpu_budget_minutes"], short["cpu_budget_minutes"]) == (14.0, 3.0)
    table = quality_tables({"summary": summary, "runs": runs})
    assert "| lime-xor | 2 | 0.1800 | 0.0900 | 0.5000 | 0.2000 |" in table
    assert "`xor_over_sasrec_ndcg@10` = 0.9" in table and "**ml-100k@3min** (3 CPU-minutes per model)" in table


def test_paired_bootstrap_interval_covers_the_ratio_and_narrows_with_agreement() -> None:
    from benchmarks.quality import paired_bootstrap_ratio

    rng = np.random.default_rng(1)
    b = rng.random(2000)
    assert paired_bootstrap_ratio(b, b.copy(), resamples=500) == (1.0, 1.0)  # same users, same scores
    lo, hi = paired_bootstrap_ratio(0.9 * b, b, resamples=500)
    assert lo == pytest.approx(0.9) and hi == pytest.approx(0.9)
    noisy = np.clip(0.9 * b + rng.normal(0, 0.3, size=b.shape), 0, None)
    lo, hi = paired_bootstrap_ratio(noisy, b, resamples=500)
    assert lo < noisy.mean() / b.mean() < hi and hi - lo > 0.02
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap_ratio(b, b[:-1])


def test_quality_summary_bootstraps_the_ratio_over_users_averaged_over_seeds() -> None:
    from benchmarks.quality import summarise
    from benchmarks.tables import quality_tables

    def run(model: str, seed: int, ranks: list[int]) -> dict:
        return {"setting": "ml-100k", "model": model, "seed": seed, "hr@10": 0.5, "ndcg@10": 0.1,
                "hr@50": 0.5, "ndcg@50": 0.2, "rank_by_user": {str(u): r for u, r in enumerate(ranks)}}

    runs = [run("lime-xor", 0, [0, 50] * 50), run("lime-xor", 1, [50, 0] * 50),  # 0.5 per user on average
            run("sasrec", 0, [0] * 100)]
    summary = summarise(runs)
    assert summary["xor_over_sasrec_ndcg@10_ci95"] == [0.5, 0.5]
    assert summary["bootstrap"]["users"] == 100
    assert "95% bootstrap interval of the first over the 100 test users [0.5, 0.5]" in quality_tables(
        {"summary": {"ml-100k": {"cpu_budget_minutes": 14.0, **summary}}, "runs": runs})
    runs[1]["rank_by_user"].pop("7")
    with pytest.raises(ValueError, match="lime-xor seed 1 was evaluated on other users than seed 0"):
        summarise(runs)


def test_quality_summary_splits_ndcg_by_whether_the_transition_was_seen_in_training() -> None:
    from benchmarks.quality import summarise_settings
    from benchmarks.tables import quality_tables

    def run(model: str, seed: int, ranks: list[int]) -> dict:
        return {"setting": "ml-100k", "model": model, "seed": seed, "hr@10": 0.5, "ndcg@10": 0.1,
                "hr@50": 0.5, "ndcg@50": 0.2, "rank_by_user": {str(u): r for u, r in enumerate(ranks)}}

    runs = [run("lime-xor", 0, [0, 0, 99, 99]), run("lime-xor", 1, [0, 99, 99, 0]),
            run("sasrec", 0, [5, 5, 0, 0])]  # rank 5: NDCG 1 / log2(7)
    asked = []

    def seen_users(dataset: str) -> set[str]:
        asked.append(dataset)
        return {"0", "1"}

    summary = summarise_settings(runs, seen_users)["ml-100k"]
    assert asked == ["ml-100k"]
    assert summary["by_transition"] == {"seen_users": 2, "users": 4,
                                        "lime-xor": {"seen_ndcg@10": 0.75, "unseen_ndcg@10": 0.25},
                                        "sasrec": {"seen_ndcg@10": 0.3562, "unseen_ndcg@10": 1.0}}
    assert "for 2 of the 4 test users" in quality_tables({"summary": {"ml-100k": summary}, "runs": runs})
    assert "by_transition" not in summarise_settings([{k: v for k, v in r.items() if k != "rank_by_user"}
                                                      for r in runs], seen_users)["ml-100k"]
