#!/usr/bin/env bash
# The wordnet-qa results of docs/results.md: every builtin method that applies at the
# scenario's defaults, seeds 0-4; rehearsal at mix ratios 0.125 (both) and 0.5 (random) for the
# budget question; LoRA at a larger learning rate, LDIFS and L2-SP at stronger settings; then the
# leaderboard, the frontier comparisons, the budget table and the per-metric table (about 4
# hours on an idle 2-core CPU: stage 0 about 8 minutes, a run 2.5-3.5 minutes, a WiSE-FT run
# with its alpha grid about 5).
#
#   scripts/qa_results.sh [DB]     (default: qa-results.db)
#
# Finished runs in DB are skipped, so an interrupted script continues. The first run also
# trains stage 0 (cached under $FORGETBENCH_CACHE, default ~/.cache/forgetbench) and the first
# rehearsal run the prior cache.
set -uo pipefail
cd "$(dirname "$0")/.."
DB="${1:-qa-results.db}"
BIN=.venv/bin
F="$BIN/forgetbench"
TASK=wordnet-qa
SEEDS=0-4

# lp-ft needs a fresh new-task head; the QA span head is f0's own
$F sweep --task "$TASK" -m finetune -m random -m mixcd -m lora -m ldifs -m l2sp -m flow \
    -m wise-ft --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m mixcd -m random --grid mixcd.mix_ratio=0.125 \
    --grid random.mix_ratio=0.125,0.5 --seeds "$SEEDS" --db "$DB"
# LoRA at 10x the run's learning rate; LDIFS and L2-SP at stronger settings
$F sweep --task "$TASK" -m lora --grid lr=1e-3 --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m ldifs -m l2sp --grid ldifs.lam=10000 --grid l2sp.alpha=1.0 \
    --seeds "$SEEDS" --db "$DB"

$F leaderboard --db "$DB" --task "$TASK" --format markdown
for pair in "mixcd random" "mixcd finetune" "wise-ft finetune" "ldifs l2sp" "lora finetune" \
    "flow finetune"; do
  # shellcheck disable=SC2086  # two method names
  $F compare $pair --task "$TASK" --db "$DB"
done
$F budget mixcd random --task "$TASK" --db "$DB"
"$BIN/python" scripts/per_metric_table.py "$DB" "$TASK" f1 exact_match
