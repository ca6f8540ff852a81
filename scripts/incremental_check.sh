#!/usr/bin/env bash
# An incremental night against a full one, through the CLI (docs/incremental.md):
# generate 30 days of events, run 2024-01-29, copy the lakehouse, run 2024-01-30 incrementally on
# one copy and with --full on the other, print what each incremental stage recomputed, and compare
# the two recommendations partitions.  About 2 minutes on 2 cores.
#
#   bash scripts/incremental_check.sh [WORKDIR]     (default: a fresh temporary folder)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d -t lime-incremental-XXXXXX)}"
mkdir -p "$work" && cd "$work"
rm -rf lake lake_full ckpt.pt
make -C "$repo" --quiet setup  # the venv, as make demo / make test set it up
source "$repo/.venv/bin/activate"
export LIME_RANK_LOG_LEVEL=WARNING

step() {  # step LOG COMMAND...: run it, its output in LOG; on failure show the end of LOG
  local log="$1"; shift
  "$@" > "$log" 2>&1 || { echo "failed: $* (end of $work/$log):"; tail -30 "$log"; exit 1; }
}
echo "[$(date +%T)] generate 3,000 users x 1,000 items (30 days) and train a 1-CPU-minute model in $work"
step generate.log lime-rank generate --lakehouse lake --users 3000 --items 1000
step train.log lime-rank train --interactions lake/events --model lime-xor --out ckpt.pt --cpu-budget-minutes 1
echo "[$(date +%T)] day 2024-01-29 (full: no day before it)"
step day-29.log lime-rank run --lakehouse lake --ds 2024-01-29 --checkpoint ckpt.pt --run-id day-29
cp -r lake lake_full
echo "[$(date +%T)] day 2024-01-30, incremental"
step day-30.log lime-rank run --lakehouse lake --ds 2024-01-30 --checkpoint ckpt.pt --run-id day-30
echo "[$(date +%T)] day 2024-01-30, --full, on the copy"
step day-30-full.log lime-rank run --lakehouse lake_full --ds 2024-01-30 --checkpoint ckpt.pt --run-id day-30-full --full
python - <<'PY'
import json
import sys

import numpy as np
from deltalake import DeltaTable

DAY = "2024-01-30"
audit = DeltaTable("lake/run_audit").to_pandas(filters=[("ds", "=", DAY)]).sort_values("finished_at")
for _, row in audit.iterrows():
    m = json.loads(row.metrics)
    if "mode" in m:
        counts = {k: m[k] for k in ("users_extracted", "users_reinferred", "users_rescored", "users_reused") if k in m}
        print(f"{row.job}: {m['mode']} ({m['mode_reason']}) {counts}")
events = DeltaTable("lake/events").to_pandas()
print("users with events on", DAY, ":", events[events.event_date == DAY].user_id.nunique())
keys = ["user_id", "rank"]
inc = DeltaTable("lake/recommendations").to_pandas(filters=[("ds", "=", DAY)]).sort_values(keys).reset_index(drop=True)
full = DeltaTable("lake_full/recommendations").to_pandas(filters=[("ds", "=", DAY)]).sort_values(keys).reset_index(drop=True)
same = len(inc) == len(full) and all(inc[c].equals(full[c]) for c in ("user_id", "rank", "item_id", "source"))
gap = float(np.abs(inc.score - full.score).max()) if same else float("nan")
print(f"recommendations equal to --full: {same} ({len(inc)} rows, largest score difference {gap:.1e})")
sys.exit(0 if same and gap <= 1e-5 else 1)
PY
