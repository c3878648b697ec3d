"""Run every benchmark and print one table (``make bench`` runs it with ``--quick``).

    .venv/bin/python -m bench.run_all [--quick] [--device auto|cpu|cuda] [--only engine,methods]

Benchmarks: engine (bare loop, HF Trainer, forgetbench), methods (step time against finetune,
pre-passes), precision (fp32, TF32, bf16, fp16), run (a run end to end, evaluation order),
sampler (mix-cd and random at 10^4 to 10^7 prior samples). Each also runs alone:
``python -m bench.bench_<name> --help``.
"""

from __future__ import annotations

import argparse
import importlib
import time

from bench.common import Row, describe, pick_device, print_table

BENCHMARKS = {
    "engine": "bench.bench_engine",
    "methods": "bench.bench_methods",
    "precision": "bench.bench_precision",
    "run": "bench.bench_run",
    "sampler": "bench.bench_mixcd_sampler",
}


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="short runs (make bench)")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated names")
    args = parser.parse_args(argv)
    rows: list[Row] = []
    seconds, failed = {}, []
    for name in args.only.split(","):
        module = importlib.import_module(BENCHMARKS[name.strip()])
        forwarded = ["--device", args.device] + (["--quick"] if args.quick else [])
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        try:
            rows += module.main(forwarded)
        except KeyboardInterrupt:  # Ctrl-C or a time limit (scripts/gpu_check.sh): keep the rest
            print(f"== {name}: interrupted; the table holds the benchmarks before it", flush=True)
            break
        except Exception as error:  # one broken benchmark costs its rows, not the others'
            print(f"== {name}: failed: {type(error).__name__}: {error}", flush=True)
            failed.append(name)
        seconds[name] = time.perf_counter() - started
    print_table(rows, describe(pick_device(args.device)), "all benchmarks")
    print("benchmark seconds: " + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()))
    if failed:
        raise SystemExit(f"failed benchmarks: {', '.join(failed)} (their errors are above)")
    return rows


if __name__ == "__main__":
    main()
