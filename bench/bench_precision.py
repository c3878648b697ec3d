"""Benchmark: forgetbench's training loop at each numeric precision the hardware offers.

fp32 (TF32 off), and on a GPU: fp32 with TF32 matmuls (the default on Ampere and newer), bf16
and fp16 autocast through accelerate; on a CPU: bf16 autocast. Same model, data and batches as
``bench_engine`` (the ``wordnet`` scenario's MiniLM-L6, batch 32). accelerate keeps one
precision per process at a time, so the variants take turns run by run (not step by step):
rounds of fp32, tf32, bf16, ... and each figure is the median over the rounds.

    .venv/bin/python -m bench.bench_precision [--quick] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import os

import torch

from bench.bench_engine import Setup, forgetbench_loop
from bench.common import (
    Row,
    StepClock,
    add_common_args,
    describe,
    interleaved,
    loop_length,
    pick_device,
    quiet_progress,
)
from forgetbench.engine import seed_everything


def variants(device: torch.device) -> dict[str, tuple[str, bool]]:
    """name -> (accelerate mixed_precision, TF32)."""
    if device.type == "cpu":
        return {"fp32": ("no", False), "bf16 autocast": ("bf16", False)}
    found = {"fp32 (TF32 off)": ("no", False)}
    if torch.cuda.get_device_capability(device)[0] >= 8:
        found["fp32 + TF32 (default)"] = ("no", True)
        found["bf16 autocast"] = ("bf16", True)
    found["fp16 autocast"] = ("fp16", True)
    return found


def rounds(device, quick: bool) -> int:
    """Whole runs per variant: on a GPU two quick rounds put bf16 at 0.645 and four at 0.823
    of fp32 on an H200 (docs/performance.md), so four there."""
    if device.type == "cuda":
        return 4
    return 2 if quick else 3


def measure(setup: Setup, warmup: int, precision: str, tf32: bool) -> float:
    os.environ["FORGETBENCH_TF32"] = "1" if tf32 else "0"
    clock = StepClock(setup.device, warmup, setup.steps)
    forgetbench_loop(setup, clock, precision)
    return setup.batch_size / clock.seconds_per_step


def run(args) -> tuple[list[Row], str]:
    if not args.verbose:
        quiet_progress()
    device = pick_device(args.device)
    seed_everything(0)
    steps, warmup = loop_length(device, args.quick, args.steps)
    if device.type == "cpu":
        steps = min(steps, 6 if args.quick else 12)
        warmup = 2
    setup = Setup(device, steps, 32)
    found = variants(device)
    saved = os.environ.get("FORGETBENCH_TF32")
    try:
        rates = interleaved(
            {
                name: (lambda p=precision, t=tf32: measure(setup, warmup, p, t))
                for name, (precision, tf32) in found.items()
            },
            args.repeats or rounds(device, args.quick),
        )
    finally:
        if saved is None:
            os.environ.pop("FORGETBENCH_TF32", None)
        else:
            os.environ["FORGETBENCH_TF32"] = saved
    reference = rates[next(iter(found))]
    rows = [
        Row("precision", f"forgetbench finetune, {name}", rate, "samples/s", rate / reference)
        for name, rate in rates.items()
    ]
    return rows, describe(device)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run")
    return parser


def main(argv=None) -> list[Row]:
    from bench.common import print_table

    rows, device = run(parser().parse_args(argv))
    print_table(rows, device, "mixed precision (ratio: against fp32)")
    return rows


if __name__ == "__main__":
    main()
