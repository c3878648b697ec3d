#!/usr/bin/env bash
# The clip-offline results of docs/tasks_clip.md: finetune, ldifs, l2sp, wise-ft and mixcd at
# their defaults on the offline CLIP scenario (default budget), seeds 0 1 2. Sequential; the
# first run also trains stage 0 (cached in $FORGETBENCH_CACHE, default ~/.cache/forgetbench).
#
#   scripts/clip_results.sh [DB]     (default: clip-results.db)
#
# Runs already stored with status ok in DB are skipped, so an interrupted sweep continues.
# Prints the leaderboard, then the zero-shot accuracy of each prior dataset before and after
# (mean over seeds) and the new task's accuracy, per method.
set -uo pipefail
cd "$(dirname "$0")/.."
DB="${1:-clip-results.db}"
BIN=.venv/bin
TASK=clip-offline
SEEDS="0 1 2"

done_already() {  # methods-label seed -> 0 when an ok run exists
  "$BIN/python" - "$DB" "$TASK" "$1" "$2" <<'PY'
import sys
from pathlib import Path
from forgetbench.store import Store
db, task, label, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if not Path(db).exists():
    sys.exit(1)
runs = Store(db).get_runs(status="ok", task=task)
sys.exit(0 if any(r["methods"] == label and r["seed"] == seed for r in runs) else 1)
PY
}

for method in finetune ldifs l2sp wise-ft mixcd; do
  for seed in $SEEDS; do
    if done_already "$method" "$seed"; then continue; fi
    echo "== $method seed $seed"
    "$BIN/forgetbench" run --task "$TASK" --method "$method" --seed "$seed" --db "$DB" > /dev/null \
      || echo "!! $method seed $seed failed"
  done
done
"$BIN/forgetbench" leaderboard --db "$DB" --task "$TASK" --format markdown
"$BIN/python" - "$DB" "$TASK" <<'PY'
import sys
from collections import defaultdict
from statistics import mean
from forgetbench.store import Store
store = Store(sys.argv[1], read_only=True)
runs = store.get_runs(status="ok", task=sys.argv[2])
metrics = store.get_metrics([r["id"] for r in runs])
by_method = defaultdict(list)
for run in runs:
    by_method[run["methods"]].append(metrics[run["id"]])
datasets = sorted({k.split("/")[-1] for m in metrics.values() for k in m
                   if k.startswith("prior/before/accuracy/")})
print("\n| method | seeds | " + " | ".join(f"{d} before -> after" for d in datasets)
      + " | mean drop | textile before -> after |")
print("|---" * (len(datasets) + 4) + "|")
for method, rows in sorted(by_method.items()):
    cells = [f"{mean(r[f'prior/before/accuracy/{d}'] for r in rows):.3f} -> "
             f"{mean(r[f'prior/after/accuracy/{d}'] for r in rows):.3f}" for d in datasets]
    drop = mean(r["prior/derived/forgetting"] for r in rows)
    new = (f"{mean(r['new/before/accuracy'] for r in rows):.3f} -> "
           f"{mean(r['new/after/accuracy'] for r in rows):.3f}")
    print(f"| {method} | {len(rows)} | " + " | ".join(cells) + f" | {drop:.3f} | {new} |")
PY
