"""``lime-rank evaluate``: checkpoint + interactions -> test metrics (JSON + a printed table).

    lime-rank evaluate --checkpoint artifacts/lime-xor.pt --interactions ml-100k --out lime-xor.json

Protocol (``lime_model.data`` / ``lime_model.evaluate``): temporal
leave-one-out, the last item of every user with >= 3 interactions is the
target, everything before it is the history; the whole catalogue (the
checkpoint's vocabulary) is ranked, the history's items are masked, ties are
broken by item id; HR and NDCG at 10 and 50.  ``--ranks-out`` also writes every
evaluated user's target rank (CSV ``user_id,rank``, 0-based), so that two models
can be compared user by user (``benchmarks/ml100k_quality.py`` bootstraps the
ratio of their NDCG@10 from these files).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("model", "users", "hr@10", "ndcg@10", "hr@50", "ndcg@50")


def _configure_logging() -> None:
    logging.basicConfig(level=os.environ.get("LIME_RANK_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows with ``TABLE_COLUMNS`` -> a fixed-width text table (metrics with 4 decimals)."""
    cells = [[str(c) for c in TABLE_COLUMNS]]
    for row in rows:
        cells.append([f"{row[c]:.4f}" if isinstance(row[c], float) else str(row[c]) for c in TABLE_COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths,
                                                                                         strict=True)))
             for r in cells]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--interactions", required=True,
                        help="'ml-100k' or a .tsv/.csv/.parquet file with user_id, item_id, timestamp")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--split", choices=("test", "valid"), default="test")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ranks-out", default=None,
                        help="also write each user's 0-based target rank here (CSV: user_id,rank)")
    return parser


def write_ranks(path: Path, user_ids: np.ndarray, ranks: np.ndarray) -> None:
    """CSV ``user_id,rank`` sorted by user id, written to a temporary file and renamed into place."""
    order = np.argsort(user_ids, kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write("user_id,rank\n")
        f.writelines(f"{u},{r}\n" for u, r in zip(user_ids[order].tolist(), ranks[order].tolist(), strict=True))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    from lime_model.checkpoint import build_model, load_checkpoint
    from lime_model.data import build_sequences, leave_one_out
    from lime_model.datasets import read_interactions
    from lime_model.errors import LimeRankError
    from lime_model.evaluate import metrics_from_ranks, stage_ranks

    try:
        ckpt = load_checkpoint(args.checkpoint)
        model = build_model(ckpt)
        split = leave_one_out(build_sequences(read_interactions(args.interactions), ckpt.vocab))
        user_ids, ranks = stage_ranks(model, split, args.split, batch_size=args.batch_size)
    except LimeRankError as exc:
        print(f"lime-rank evaluate: error: {exc}", file=sys.stderr)
        return 1
    result = {"model": ckpt.config.model, "users": len(ranks), **metrics_from_ranks(ranks),
              "model_version": ckpt.model_version,
              "split": args.split, "interactions": args.interactions}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.ranks_out is not None:
        write_ranks(Path(args.ranks_out), user_ids, ranks)
        log.info("wrote %s", args.ranks_out)
    print(format_table([result]))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
