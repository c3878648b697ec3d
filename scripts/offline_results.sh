#!/usr/bin/env bash
# Reproduce docs/results.md's `wordnet` tables: every builtin method at its default over seeds
# 0-4; rehearsal at a second mix ratio, FLOW without its probe start, LP-FT and LDIFS/L2-SP at
# other strengths; then the leaderboard, the comparisons and the plot. Two worker processes of
# one torch thread each (about 3 minutes a run each on a 2-core CPU: about 3 hours 15 minutes in
# all; the first runs also build stage 0 and the prior caches). Finished runs are skipped, so an
# interrupted script continues where it stopped.
#
#   scripts/offline_results.sh [DB]     (default: offline-results.db)
set -euo pipefail
cd "$(dirname "$0")/.."
DB="${1:-offline-results.db}"
F=.venv/bin/forgetbench

$F sweep --task wordnet -m finetune -m mixcd -m random -m wise-ft --seeds 0-4 --workers 2 --db "$DB"
$F sweep --task wordnet -m lora -m l2sp -m ldifs -m flow --seeds 0-4 --workers 2 --db "$DB"
$F sweep --task wordnet -m mixcd -m random --grid mixcd.mix_ratio=0.5 \
    --grid random.mix_ratio=0.5 --seeds 0-2 --workers 2 --db "$DB"
$F sweep --task wordnet -m flow --grid flow.probe_init=false --seeds 0-4 --workers 2 --db "$DB"
$F sweep --task wordnet -m lp-ft --seeds 0-4 --workers 2 --db "$DB"
$F sweep --task wordnet -m ldifs -m l2sp --grid ldifs.lam=100,1000,10000 --grid l2sp.alpha=0.3,1.0 \
    --seeds 0-4 --workers 2 --db "$DB"

$F leaderboard --db "$DB" --task wordnet --format markdown
for other in random finetune; do $F compare mixcd "$other" --task wordnet --db "$DB"; done
$F compare ldifs l2sp --task wordnet --db "$DB"
$F compare lp-ft finetune --task wordnet --db "$DB"
$F compare flow lp-ft --task wordnet --db "$DB"
$F compare wise-ft finetune --task wordnet --db "$DB"
$F compare lora finetune --task wordnet --db "$DB"
$F budget mixcd random --task wordnet --db "$DB"
$F plot --task wordnet --db "$DB" --out docs/img/wordnet_frontier.png
