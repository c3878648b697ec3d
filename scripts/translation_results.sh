#!/usr/bin/env bash
# The gettext-mt results of docs/tasks_translation.md: every builtin method that applies at the
# scenario's defaults, seeds 0-4; rehearsal at mix ratios 0.125 (both) and 0.5 (random) for the
# budget question; then the leaderboard, the frontier comparisons, the budget table (in BLEU and
# chrF) and the per-language-pair BLEU per method (about 1 hour on an idle 2-core CPU, stage 0
# included).
#
#   scripts/translation_results.sh [DB]     (default: translation-results.db)
#
# Finished runs in DB are skipped, so an interrupted script continues. The first run also
# trains stage 0 (cached under $FORGETBENCH_CACHE, default ~/.cache/forgetbench) and the first
# rehearsal run the prior cache.
set -uo pipefail
cd "$(dirname "$0")/.."
DB="${1:-translation-results.db}"
BIN=.venv/bin
F="$BIN/forgetbench"
TASK=gettext-mt
SEEDS=0-4

# lp-ft needs a fresh new-task head; a translation model's decoder is f0's own
$F sweep --task "$TASK" -m finetune -m random -m mixcd -m wise-ft -m lora -m ldifs -m l2sp \
    -m flow --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m mixcd -m random --grid mixcd.mix_ratio=0.125 \
    --grid random.mix_ratio=0.125,0.5 --seeds "$SEEDS" --db "$DB"
# LDIFS and L2-SP at stronger settings; LoRA at 4x and 10x the run's learning rate
$F sweep --task "$TASK" -m ldifs -m l2sp --grid ldifs.lam=1000,10000 --grid l2sp.alpha=1.0 \
    --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m lora --grid lr=2e-3,5e-3 --seeds "$SEEDS" --db "$DB"
# LoRA on the feed-forward layers too, then on the output layer as well
$F sweep --task "$TASK" -m lora --set lora.target_modules=q_proj,v_proj,fc1,fc2 \
    --grid lr=5e-4,2e-3,5e-3 --seeds "$SEEDS" --db "$DB"
$F sweep --task "$TASK" -m lora --set lora.target_modules=q_proj,v_proj,fc1,fc2,lm_head \
    --grid lr=5e-3 --seeds "$SEEDS" --db "$DB"

$F leaderboard --db "$DB" --task "$TASK" --format markdown
for pair in "mixcd random" "mixcd finetune" "wise-ft finetune" "ldifs l2sp" "lora finetune" \
    "flow finetune"; do
  # shellcheck disable=SC2086  # two method names
  $F compare $pair --task "$TASK" --db "$DB"
done
$F budget mixcd random --task "$TASK" --db "$DB"
# the same two questions in chrF (docs/tasks_translation.md, "Where mix-cd's selection goes")
$F compare mixcd random --task "$TASK" --db "$DB" --metric chrf
$F budget mixcd random --task "$TASK" --db "$DB" --metric chrf
"$BIN/python" scripts/per_metric_table.py "$DB" "$TASK" bleu
