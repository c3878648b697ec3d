#!/usr/bin/env bash
# Reproduce the offline results tables of docs/results.md: every method at its default on the
# `wordnet` scenario (default budget), 3 seeds, plus rehearsal at two mix ratios. Sequential;
# about 4 minutes a run on a 2-core CPU (the first run also builds stage 0 and the prior cache).
#
#   scripts/offline_results.sh [DB]     (default: offline-results.db)
#
# Runs already stored with status ok in DB are skipped, so an interrupted sweep continues.
set -uo pipefail
cd "$(dirname "$0")/.."
DB="${1:-offline-results.db}"
BIN=.venv/bin
SEEDS="0 1 2"

done_already() {  # task methods-label seed -> 0 when an ok run exists
  "$BIN/python" - "$DB" "$1" "$2" <<'PY'
import sys
from forgetbench.store import Store
db, label, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = Store(db).get_runs(status="ok", task="wordnet")
sys.exit(0 if any(r["methods"] == label and r["seed"] == seed for r in runs) else 1)
PY
}

run() {  # label seed args...
  local label=$1 seed=$2; shift 2
  if done_already "$label" "$seed"; then return; fi
  echo "== $label seed $seed"
  "$BIN/forgetbench" run --task wordnet --seed "$seed" --db "$DB" "$@" > /dev/null \
    || echo "!! $label seed $seed failed"
}

for seed in $SEEDS; do run finetune "$seed" --method finetune; done
for seed in $SEEDS; do run mixcd "$seed" --method mixcd; done
for seed in $SEEDS; do run random "$seed" --method random; done
for method in l2sp wise-ft lora ldifs flow; do
  for seed in $SEEDS; do run "$method" "$seed" --method "$method"; done
done
for seed in $SEEDS; do
  run "mixcd(mix_ratio=0.5)" "$seed" --method mixcd --set mixcd.mix_ratio=0.5
  run "random(mix_ratio=0.5)" "$seed" --method random --set random.mix_ratio=0.5
done
for seed in $SEEDS; do run "lora [lr=0.001]" "$seed" --method lora --set lr=1e-3; done
"$BIN/forgetbench" leaderboard --db "$DB" --task wordnet --format markdown
