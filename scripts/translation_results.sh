#!/usr/bin/env bash
# The translation results of docs/tasks_translation.md: finetune, random and mixcd at the
# gettext-mt scenario's default budget, seeds 0 1 2, then the leaderboard; then rehearsal at
# mix ratios 0.125 (both) and 0.5 (random) and the budget comparison.
#
#   scripts/translation_results.sh [DB]     (default: translation-results.db)
#
# Runs already stored with status ok in DB are skipped, so an interrupted sweep continues.
# The first run also trains stage 0 (cached under $FORGETBENCH_CACHE, default ~/.cache/forgetbench)
# and the prior cache; extra arguments for every run go in $RUN_ARGS (e.g. "--set device=cuda").
set -uo pipefail
cd "$(dirname "$0")/.."
DB="${1:-translation-results.db}"
BIN=.venv/bin
TASK=gettext-mt
SEEDS="0 1 2"

done_already() {  # methods-label seed -> exit 0 when an ok run exists
  "$BIN/python" - "$DB" "$TASK" "$1" "$2" <<'PY'
import sys
from pathlib import Path
from forgetbench.store import Store
db, task, label, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if "://" not in db and not Path(db).exists():
    sys.exit(1)
runs = Store(db).get_runs(status="ok", task=task)
sys.exit(0 if any(r["methods"] == label and r["seed"] == seed for r in runs) else 1)
PY
}

run() {  # label seed args...
  local label=$1 seed=$2; shift 2
  if done_already "$label" "$seed"; then echo "-- $label seed $seed: stored"; return; fi
  echo "== $label seed $seed"
  # shellcheck disable=SC2086  # RUN_ARGS is a list of words
  "$BIN/forgetbench" run --task "$TASK" --seed "$seed" --db "$DB" ${RUN_ARGS:-} "$@" > /dev/null \
    || echo "!! $label seed $seed failed"
}

for method in finetune random mixcd; do
  for seed in $SEEDS; do run "$method" "$seed" --method "$method"; done
done
"$BIN/forgetbench" leaderboard --db "$DB" --task "$TASK" --format markdown

# Equal compute (docs/tasks_translation.md): rehearsal at other mix ratios, then how many
# rehearsed samples random needs to match each mix-cd config.
"$BIN/forgetbench" sweep --task "$TASK" -m mixcd -m random --grid mixcd.mix_ratio=0.125 \
    --grid random.mix_ratio=0.125,0.5 --seeds "${SEEDS// /,}" --db "$DB"
"$BIN/forgetbench" budget mixcd random --task "$TASK" --db "$DB"
