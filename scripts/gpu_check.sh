#!/usr/bin/env bash
# The CUDA figures of docs/performance.md ("GPU figures") and the suite on CUDA, in device calls
# that fit a session's 15 minutes of device time, starts (1-2 minutes each) included.
#
# Here, once (the GPU image lacks some packages, forgetbench's plugins and the offline data):
#   make setup && bash scripts/gpu_bundle.sh
# Then, with the device tool (carry [".gpu"]), back to back so the machine stays warm (30 s):
#   source .gpu/setup.sh && GPU_CHECK_SECONDS=290 bash scripts/gpu_check.sh figures
#   source .gpu/setup.sh && GPU_CHECK_SECONDS=480 GPU_TEST_WORKERS=8 bash scripts/gpu_check.sh tests
# On an H200 (2026-12-04) `figures` took 165 s (three CLI runs, then the engine benchmark: the
# rest ran out of budget), `tests` 370 s with 8 workers, `bench` with
# BENCH_ONLY=precision,sampler,run 134 s, `profile` 170 s before it was cut (the profile about
# 100 s, the engine A/B 70 s; the L2-SP A/B, about 60 s, did not fit). Since then a GPU runs
# the engine benchmark 3 rounds (about 110 s alone, 150 s with --ablation) and precision 4
# (about 110 s): give `profile` about 320 s. `bench` runs the benchmarks alone, BENCH_ONLY
# (run_all's --only) naming which; PYTEST_ARGS narrows `tests`.
# Everything lands in $OUT (device.txt, runs.txt, profile*.txt, ablation.txt, bench.txt,
# tests.txt), which the tool brings back. Each part stops itself before GPU_CHECK_SECONDS
# (default 480) and keeps what it printed: the bench and the suite are interrupted with SIGINT,
# so their tables and summaries still print.
set -uo pipefail
PART=${1:?usage: gpu_check.sh figures|profile|bench|tests}
OUT=${OUT:-/tmp/gpu-check}
PY=${PY:-python3}
BUDGET=${GPU_CHECK_SECONDS:-480}
STARTED=$(date +%s)
mkdir -p "$OUT"
export FORGETBENCH_CACHE=${FORGETBENCH_CACHE:-/tmp/fbcache}

left() { echo $((BUDGET - ($(date +%s) - STARTED))); }

benchmarks() {
    # Every benchmark (or BENCH_ONLY's) at quick sizes, on the GPU; what does not fit is cut,
    # its table kept.
    if [ "$(left)" -gt 30 ]; then
        timeout -s INT "$(left)" "$PY" -m bench.run_all --quick --device auto \
            ${BENCH_ONLY:+--only "$BENCH_ONLY"} 2>&1 | tee "$OUT/bench.txt"
    else
        echo "no time left for the benchmarks" | tee "$OUT/bench.txt"
    fi
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda",
        torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available()
        else "-", "transformers", transformers.__version__)'
    git rev-parse --short HEAD 2>/dev/null || true
} > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

case "$PART" in
figures)
    # The issue's run target: a default 100-step `wordnet` finetune run end to end, from the
    # CLI, once cold (stage 0 trained and cached: not the target) and twice warm.
    for seed in 0 1 2; do
        start=$(date +%s.%N)
        "$PY" -m forgetbench run --task wordnet --method finetune --seed "$seed" \
            --db "$OUT/gpu.db" > "$OUT/run-$seed.log" 2>&1
        status=$?
        end=$(date +%s.%N)
        echo "run seed $seed: exit $status, $(awk "BEGIN {print $end - $start}") s end to end" \
            | tee -a "$OUT/runs.txt"
        [ "$status" -eq 0 ] || tail -5 "$OUT/run-$seed.log" | tee -a "$OUT/runs.txt"
    done
    "$PY" -m forgetbench leaderboard --db "$OUT/gpu.db" 2>&1 | tee -a "$OUT/runs.txt"
    rm -f "$OUT"/run-*.log "$OUT"/gpu.db*  # the tool brings back at most 8 files
    benchmarks
    ;;
profile)
    # Where the engine's step time goes (bench/profile_engine.py: torch.profiler and cProfile of
    # the bare loop and forgetbench's), then today's code against the code before its
    # optimisations (--ablation of bench_engine and bench_methods).
    { timeout -s INT "$(left)" "$PY" -m bench.profile_engine --out "$OUT" 2>&1 \
        | grep -v '^USDT\|Loading weights' ; } | tee "$OUT/profile.txt"
    for args in "bench_engine --quick --ablation" "bench_methods --quick --methods l2sp --ablation"
    do
        [ "$(left)" -gt 20 ] || { echo "no time left for $args" | tee -a "$OUT/ablation.txt"; continue; }
        timeout -s INT "$(left)" "$PY" -m bench.$args 2>&1 | tail -20 | tee -a "$OUT/ablation.txt"
    done
    ;;
bench)
    # The benchmarks alone, BENCH_ONLY (run_all's --only) first: a rerun of what did not fit.
    benchmarks
    ;;
tests)
    # The suite on CUDA (or PYTEST_ARGS's tests), the slowest named; PostgreSQL's tests skip
    # (no server there).
    # The GPU image has pytest-xdist and 16 cores: GPU_TEST_WORKERS processes (default 8) of 2
    # torch threads each share the GPU; 0 runs the suite in one process.
    # The console script, where tests look for it (beside the interpreter): setup.sh installs
    # into /tmp/site, whose bin/ is not there.
    bindir=$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")
    [ -x /tmp/site/bin/forgetbench ] && [ ! -e "$bindir/forgetbench" ] \
        && ln -s /tmp/site/bin/forgetbench "$bindir/forgetbench"
    workers=${GPU_TEST_WORKERS:-8}
    if [ "$workers" -gt 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then
        set -- -n "$workers"
        export OMP_NUM_THREADS=2
    else
        set --
    fi
    timeout -s INT "$(left)" "$PY" -m pytest -q -p no:cacheprovider --durations=15 "$@" ${PYTEST_ARGS:-} 2>&1 \
        | tee "$OUT/tests.txt"
    ;;
*)
    echo "usage: gpu_check.sh figures|profile|bench|tests" >&2
    exit 2
    ;;
esac
echo "gpu_check $PART: $(($(date +%s) - STARTED)) s"
