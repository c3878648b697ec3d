"""Benchmark: mix-cd's and random rehearsal's per-step sampler cost against the prior-set size.

For 10^4, 10^6 and 10^7 prior samples: the one-off setup (building mix-cd's cells from the prior
cache's loss and confidence and a 45-class label partition), the per-step time of one draw plus
one estimator update (mix-cd joint and factorised; random: one uniform draw), and the memory
the sampler holds. The claim to check: the per-step time does not grow with the prior-set size.

    .venv/bin/python -m bench.bench_mixcd_sampler [--quick] [--steps 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.common import Row, describe, pick_device, print_table
from forgetbench_plugins.mixcd import (
    CollateralDamageEstimator,
    CollateralDamageSampler,
    build_cells,
)
from forgetbench_plugins.random_mixing import UniformPriorSampler

PER_STEP = 8  # rehearsed samples per step (batch 32, mix_ratio 0.25)


def prior_cache(size: int, rng: np.random.Generator):
    """A synthetic prior cache of ``size`` samples: loss, confidence, labels, f0-correct pool."""
    labels = rng.integers(0, 45, size)
    loss, confidence = rng.random(size), rng.random(size)
    pool = np.flatnonzero(rng.random(size) < 0.8)
    return labels, loss, confidence, pool


def mixcd_sampler(size: int, combine: str, rng) -> tuple[CollateralDamageSampler, float]:
    labels, loss, confidence, pool = prior_cache(size, rng)
    started = time.perf_counter()
    cells, codes, sizes = build_cells(
        ("label", "confidence"), 4, loss, confidence, {"label": labels}, pool
    )
    cell_of = np.full(size, -1, dtype=np.int64)
    cell_of[pool] = cells
    estimator = CollateralDamageEstimator(codes, sizes, combine == "factorised")
    sampler = CollateralDamageSampler(0.25, cell_of, estimator)
    return sampler, time.perf_counter() - started


def step_time(sampler, steps: int, rng, update: bool) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        index = sampler.sample(PER_STEP, rng)
        if update:
            sampler.estimator.update(sampler.cell_of[index], rng.random(PER_STEP) < 0.1)
    return (time.perf_counter() - started) / steps


def held_bytes(sampler) -> int:
    arrays = [v for v in vars(sampler).values() if isinstance(v, np.ndarray)]
    return sum(a.nbytes for a in arrays)


def run(args) -> list[Row]:
    sizes = (10**4, 10**6) if args.quick and not args.full_sizes else (10**4, 10**6, 10**7)
    rows = []
    for size in sizes:
        rng = np.random.default_rng(0)
        for combine in ("joint", "factorised"):
            sampler, setup = mixcd_sampler(size, combine, rng)
            step = step_time(sampler, args.steps, rng, update=True)
            variant = f"mixcd {combine} n={size:.0e}"
            rows.append(Row("sampler step", variant, step * 1e6, "us/step"))
            rows.append(Row("sampler setup", variant, setup, "s"))
            rows.append(Row("sampler memory", variant, held_bytes(sampler) / 2**20, "MiB"))
        uniform = UniformPriorSampler(0.25, size)
        step = step_time(uniform, args.steps, rng, update=False)
        rows.append(Row("sampler step", f"random n={size:.0e}", step * 1e6, "us/step"))
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^6 only, fewer steps")
    parser.add_argument("--full-sizes", action="store_true", help="with --quick: 10^7 too")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="auto", help="(host-side: always the CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="(unused)")
    return parser


def main(argv=None) -> list[Row]:
    args = parser().parse_args(argv)
    if args.quick and args.steps == 2000:
        args.steps = 500
    rows = run(args)
    print_table(rows, describe(pick_device("cpu")), "rehearsal samplers (host side)")
    return rows


if __name__ == "__main__":
    main()
