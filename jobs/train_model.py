"""``lime-rank train``: interactions -> trained checkpoint.

    lime-rank train --interactions ml-100k --model lime-xor --out artifacts/lime-xor.pt --seed 0

Trains on the training part of the temporal leave-one-out split (the last two
items of each user are held out), selects the epoch by validation NDCG@10 and
writes one checkpoint (config + weights + vocabulary + popularity +
model_version).  Progress (steps, loss, throughput, validation metrics) goes
to stderr through logging.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from typing import TypeVar

import torch

from lime_model.config import MODEL_KINDS

log = logging.getLogger(__name__)
Number = TypeVar("Number", int, float)


def _configure_logging() -> None:
    logging.basicConfig(level=os.environ.get("LIME_RANK_LOG_LEVEL", "INFO").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _positive(kind: type[Number]) -> Callable[[str], Number]:
    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lime-rank train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--interactions", required=True,
                        help="'ml-100k' or a .tsv/.csv/.parquet file with user_id, item_id, timestamp")
    parser.add_argument("--model", required=True, choices=MODEL_KINDS)
    parser.add_argument("--out", required=True, help="checkpoint file to write (atomically)")
    parser.add_argument("--epochs", type=_positive(int), default=None, help="maximum epochs")
    parser.add_argument("--seed", type=int, default=0)
    tuning = parser.add_argument_group("overrides of the documented per-model defaults")
    tuning.add_argument("--d-model", type=_positive(int), default=None)
    tuning.add_argument("--n-heads", type=_positive(int), default=None)
    tuning.add_argument("--n-links", type=_positive(int), default=None)
    tuning.add_argument("--n-layers", type=_positive(int), default=None)
    tuning.add_argument("--max-history", type=_positive(int), default=None)
    tuning.add_argument("--dropout", type=float, default=None)
    tuning.add_argument("--time-gaps", action=argparse.BooleanOptionalAction, default=None,
                        dest="use_time_gaps", help="add the time-gap embedding to history tokens")
    tuning.add_argument("--newest-to-links", action=argparse.BooleanOptionalAction, default=None,
                        help="LIME models: add the newest history token to every link before L_P's LayerNorm")
    tuning.add_argument("--lr", type=_positive(float), default=None)
    tuning.add_argument("--weight-decay", type=float, default=None)
    tuning.add_argument("--batch-size", type=_positive(int), default=None)
    tuning.add_argument("--prefixes-per-user", type=_positive(int), default=None)
    tuning.add_argument("--target-window", type=_positive(int), default=None,
                        help="LIME models: items after each prefix that it learns to predict")
    tuning.add_argument("--num-negatives", type=int, default=None)
    tuning.add_argument("--valid-users", type=int, default=None,
                        help="validation users sampled to compare epochs (0 = all; default 10000)")
    tuning.add_argument("--cpu-budget-minutes", type=_positive(float), default=None,
                        help="stop training after this much process CPU time (default 14)")
    parser.add_argument("--threads", type=_positive(int), default=None, help="torch CPU threads")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging()
    from lime_model.checkpoint import save_checkpoint
    from lime_model.data import build_sequences, leave_one_out
    from lime_model.datasets import read_interactions
    from lime_model.errors import LimeRankError
    from lime_model.train import default_configs, train_model
    from lime_model.vocab import ItemVocabulary

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        frame = read_interactions(args.interactions)
        vocab = ItemVocabulary.from_raw(frame["item_id"].to_numpy())
        split = leave_one_out(build_sequences(frame, vocab))
        budget = None if args.cpu_budget_minutes is None else args.cpu_budget_minutes * 60.0
        model_cfg, train_cfg = default_configs(
            args.model, vocab.num_indices, epochs=args.epochs, seed=args.seed, d_model=args.d_model,
            n_heads=args.n_heads, n_links=args.n_links, n_layers=args.n_layers, max_history=args.max_history,
            dropout=args.dropout, use_time_gaps=args.use_time_gaps, newest_to_links=args.newest_to_links,
            lr=args.lr, weight_decay=args.weight_decay,
            batch_size=args.batch_size, prefixes_per_user=args.prefixes_per_user, target_window=args.target_window,
            num_negatives=args.num_negatives, valid_users=args.valid_users, cpu_budget_s=budget)
        log.info("training %s: %s; %s", args.model, model_cfg, train_cfg)
        result = train_model(split, model_cfg, train_cfg)
        metadata = {
            "interactions": args.interactions,
            "train_config": dataclasses.asdict(train_cfg),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "stopped_by": result.stopped_by,
            "steps": result.steps,
            "valid": result.valid_metrics,
            "train_cpu_seconds": round(result.cpu_seconds, 1),
            "train_wall_seconds": round(result.wall_seconds, 1),
            "torch_threads": torch.get_num_threads(),
        }
        popularity = split.popularity(vocab.num_indices)
        version = save_checkpoint(args.out, result.model, vocab, popularity, metadata)
    except (LimeRankError, ValueError) as exc:
        print(f"lime-rank train: error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.model}: wrote {args.out} (model_version {version}, best epoch {result.best_epoch}, "
          f"valid ndcg@10 {result.valid_metrics.get('ndcg@10', float('nan')):.4f}, "
          f"{result.cpu_seconds / 60:.1f} CPU-min, {result.wall_seconds / 60:.1f} wall-min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
