#!/usr/bin/env bash
# `make demo`: MovieLens-100K -> a small LIME-XOR checkpoint -> the nightly DAG under
# `airflow dags test` (SQLite metadata DB, no scheduler) -> top-K of a few users + the run report.
#
# Everything lands under demo/ (git-ignored), which is where the DAG's embedded defaults point:
#   demo/lakehouse  tables        demo/lime-xor.pt  checkpoint
#   demo/airflow    AIRFLOW_HOME  demo/logs         one log per step
# A second `make demo` reuses the data and the checkpoint (LIME_RANK_DEMO_RETRAIN=1 retrains)
# and runs the DAG again.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PATH="$REPO/.venv/bin:$PATH"
PY="$REPO/.venv/bin/python"

DEMO="$REPO/demo"
LAKE="$DEMO/lakehouse"
CKPT="$DEMO/lime-xor.pt"
LOGS="$DEMO/logs"
TRAIN_CPU_MINUTES="${LIME_RANK_DEMO_TRAIN_CPU_MINUTES:-5}"
SHOW_USERS="${LIME_RANK_DEMO_USERS:-1 2 3}"
mkdir -p "$LOGS"

# The DAG's embedded defaults (demo/lakehouse, demo/lime-xor.pt), not whatever the shell has set.
unset LIME_RANK_LAKEHOUSE LIME_RANK_CHECKPOINT LIME_RANK_SPARK_CONN_ID LIME_RANK_PYTHON
export AIRFLOW_HOME="$DEMO/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM=2
export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]"}'
export LIME_RANK_DAG_RETRIES=0          # a demo fails fast instead of retrying for minutes
export LIME_RANK_SPARK_LOG_LEVEL=ERROR

T0=$SECONDS
step() { printf '[%02d:%02d] %s\n' $(((SECONDS - T0) / 60)) $(((SECONDS - T0) % 60)) "$*"; }

# run LOG CMD...: the command's output goes to LOG; on failure show its end and stop
run() {
    local log="$1"; shift
    if ! "$@" >"$log" 2>&1; then
        echo "FAILED: $*" >&2
        echo "--- last lines of $log ---" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

step "MovieLens-100K -> $LAKE (events, items)"
if [[ -d "$LAKE/events/_delta_log" && -d "$LAKE/items/_delta_log" ]]; then
    echo "        already loaded"
else
    run "$LOGS/load_movielens.log" lime-rank load-movielens --lakehouse "$LAKE"
    tail -n 1 "$LOGS/load_movielens.log" | sed 's/^/        /'
fi
# Tables are read here from their file lists with pyarrow: deltalake's own readers (to_pandas,
# to_pyarrow_table/_dataset) abort now and then at interpreter exit ("terminate called without an
# active exception", about 1 run in 6 on this machine), which would fail the demo after its work.
DS="$("$PY" - "$LAKE" <<'EOF'
import sys

import pyarrow.dataset as pads
from deltalake import DeltaTable

files = DeltaTable(f"{sys.argv[1]}/events").file_uris()
days = pads.dataset(files, format="parquet", partitioning="hive").to_table(columns=["event_date"])
print(max(days.column("event_date").to_pylist()))
EOF
)"

step "train a small LIME-XOR checkpoint -> $CKPT (at most $TRAIN_CPU_MINUTES CPU-minutes)"
if [[ -f "$CKPT" && -z "${LIME_RANK_DEMO_RETRAIN:-}" ]]; then
    echo "        reusing it (LIME_RANK_DEMO_RETRAIN=1 to retrain)"
else
    if ! "$PY" -c "import jobs.train_model" 2>/dev/null; then
        echo "FAILED: 'lime-rank train' is not available in this checkout (jobs/train_model.py)" >&2
        exit 1
    fi
    run "$LOGS/train.log" lime-rank train --interactions ml-100k --model lime-xor --out "$CKPT" \
        --cpu-budget-minutes "$TRAIN_CPU_MINUTES" --threads 2
    tail -n 1 "$LOGS/train.log" | sed 's/^/        /'
fi

step "airflow db migrate (SQLite under $AIRFLOW_HOME)"
run "$LOGS/airflow_db_migrate.log" airflow db migrate

step "airflow dags test lime_nightly_scoring $DS (5 spark-submit tasks, local[2])"
run "$LOGS/dags_test.log" airflow dags test lime_nightly_scoring "$DS"
grep -o 'DagRun Finished: dag_id=lime_nightly_scoring.*state=[a-z]*' "$LOGS/dags_test.log" \
    | sed -E 's/run_start_date.*(state=[a-z]+)/\1/; s/^/        /' || true
REPORT="$(grep -o 'run report: [^ ]*' "$LOGS/dags_test.log" | tail -n 1 | cut -d' ' -f3)"
if [[ -z "$REPORT" ]]; then  # a run whose tasks never ran also "succeeds"
    echo "FAILED: validate_publish logged no run report; see $LOGS/dags_test.log" >&2
    exit 1
fi

step "top-K of users $SHOW_USERS (recommendations, ds=$DS)"
"$PY" - "$LAKE" "$DS" $SHOW_USERS <<'EOF'
import sys

import pandas as pd
import pyarrow.dataset as pads
from deltalake import DeltaTable

lake, ds, users = sys.argv[1], sys.argv[2], [int(u) for u in sys.argv[3:]]


def read(table: str, **partition: str) -> pd.DataFrame:
    """The table's (or one partition's) data columns, read from its files with pyarrow."""
    filters = [(k, "=", v) for k, v in partition.items()] or None
    return pads.dataset(DeltaTable(f"{lake}/{table}").file_uris(file_pruning_predicate=filters),
                        format="parquet").to_table().to_pandas()


recs = read("recommendations", ds=ds)
titles = read("items").set_index("item_id")["title"]
hist = read("user_histories", ds=ds).set_index("user_id")
print(f"        {recs.user_id.nunique()} users x K={recs.groupby('user_id').size().max()} rows, "
      f"model_version {', '.join(sorted(recs.model_version.unique()))}")
for user in users:
    rows = recs[recs.user_id == user].sort_values("rank")
    n = int(hist.loc[user, "n"]) if user in hist.index else 0
    print(f"\n        user {user} ({n} items in history, source={','.join(rows.source.unique()) or '-'})")
    for r in rows.itertuples():
        title = titles.get(r.item_id, "?")
        title = title if isinstance(title, str) and not pd.isna(title) else "?"
        print(f"        {r.rank:>3}  {r.score:8.3f}  {r.item_id:>5}  {title}")
EOF

echo
step "done"
echo "        run report: $REPORT"
echo "        task logs:  $LOGS/dags_test.log"
