"""``lime-rank``: one console script, one subcommand per job.

Each subcommand lives in its own module under ``jobs/`` that exposes
``build_parser() -> argparse.ArgumentParser`` and ``main(argv) -> int``; this
file only dispatches, importing the chosen module lazily so that ``lime-rank
--help`` stays fast and a model command never starts a JVM.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("jobs.generate", "write a seeded synthetic events/items lakehouse"),
    "load-movielens": ("jobs.load_movielens", "write MovieLens-100K as events/items tables"),
    "train": ("jobs.train_model", "train a model checkpoint"),
    "evaluate": ("jobs.evaluate_model", "full-catalogue leave-one-out evaluation of a checkpoint"),
    "extract-histories": ("jobs.extract_histories", "events -> user_histories(ds)"),
    "precompute-candidates": ("jobs.precompute_candidates", "items + checkpoint -> candidate_link_weights"),
    "infer-user-links": ("jobs.infer_user_links", "user_histories(ds) -> user_links(ds)"),
    "score-topk": ("jobs.score_topk", "user_links(ds) x candidate_link_weights -> recommendations(ds)"),
    "validate-publish": ("jobs.validate_publish", "quality gate, run report and audit row for ds"),
    "run": ("jobs.run_nightly", "run the four nightly jobs in order, without Airflow"),
    "vacuum": ("jobs.vacuum", "list (default) or delete data files no table version references"),
    "rollback": ("jobs.rollback", "make one ds partition hold what it held at an earlier table version"),
    "pack-env": ("jobs.pack_env", "pack the executors' Python environment into one archive for spark.archives"),
    "cluster-demo": ("jobs.cluster_demo", "the DAGs under an Airflow scheduler on a local Spark standalone cluster"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: lime-rank COMMAND [options]   (lime-rank COMMAND --help for its options)", "",
             "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lime-rank: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
