#!/usr/bin/env bash
# The clip-offline results of docs/tasks_clip.md: every method at its defaults on the offline
# CLIP scenario (default budget), seeds 0-4, rehearsal at other mix ratios, LDIFS and L2-SP at a
# stronger setting, the budget and frontier comparisons (about 40 minutes on a 2-core CPU). The
# first run also trains stage 0 (cached in $FORGETBENCH_CACHE, default ~/.cache/forgetbench).
#
#   scripts/clip_results.sh [DB]     (default: clip-results.db)
#
# Finished runs in DB are skipped, so an interrupted script continues.
# Prints the budget table, the comparisons and the leaderboard, then per method the zero-shot
# accuracy on each prior dataset and the new task's accuracy after fine-tuning (mean ± std over
# seeds; the first row, f0, is every dataset before fine-tuning).
set -uo pipefail
cd "$(dirname "$0")/.."
DB="${1:-clip-results.db}"
BIN=.venv/bin
TASK=clip-offline
SEEDS=0-4
F="$BIN/forgetbench"

# every builtin method that applies (lp-ft needs a fresh head: CLIP's is zero-shot), rehearsal
# at other mix ratios (the budget question), LDIFS and L2-SP at a stronger setting
$F sweep --task "$TASK" -m finetune -m mixcd -m random -m ldifs -m l2sp -m wise-ft -m lora \
    -m flow --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m mixcd -m random --grid mixcd.mix_ratio=0.0625,0.125 \
    --grid random.mix_ratio=0.0625,0.125,0.5 --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m ldifs -m l2sp --grid ldifs.lam=1000 --grid l2sp.alpha=1.0 \
    --seeds "$SEEDS" --db "$DB"
$F budget mixcd random --task "$TASK" --db "$DB"
for pair in "mixcd random" "wise-ft finetune" "ldifs l2sp"; do
  # shellcheck disable=SC2086  # two method names
  $F compare $pair --task "$TASK" --db "$DB"
done
"$BIN/forgetbench" leaderboard --db "$DB" --task "$TASK" --format markdown
"$BIN/python" scripts/per_metric_table.py "$DB" "$TASK" accuracy
