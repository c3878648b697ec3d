"""Benchmark: mix-cd's per-step sampler cost against the prior-set size.

Prints, for 10^4, 10^6 and 10^7 prior samples, the one-off setup time (building the cells) and
the per-step time of one draw plus one estimator update (joint and factorised). The claim to
check: the per-step time does not grow with the prior-set size.

    .venv/bin/python bench/bench_mixcd_sampler.py [--steps 2000]
"""

import argparse
import time

import numpy as np

from forgetbench_plugins.mixcd import (
    CollateralDamageEstimator,
    CollateralDamageSampler,
    build_cells,
)


def bench(size: int, combine: str, steps: int, per_step: int = 8) -> tuple[float, float, int]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 45, size)
    loss, confidence = rng.random(size), rng.random(size)
    start = time.perf_counter()
    pool = np.arange(size)
    cells, codes, sizes = build_cells(
        ("label", "confidence"), 4, labels, loss, confidence, None, pool
    )
    estimator = CollateralDamageEstimator(codes, sizes, combine == "factorised")
    sampler = CollateralDamageSampler(0.25, cells, estimator)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        index = sampler.sample(per_step, rng)
        estimator.update(sampler.cell_of[index], rng.random(per_step) < 0.1)
    return setup, (time.perf_counter() - start) / steps, len(sampler.sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'prior samples':>14} {'combine':>11} {'cells':>6} {'setup s':>9} {'step us':>9}")
    for size in (10**4, 10**6, 10**7):
        for combine in ("joint", "factorised"):
            setup, step, cells = bench(size, combine, args.steps)
            print(f"{size:>14,} {combine:>11} {cells:>6} {setup:>9.3f} {step * 1e6:>9.1f}")


if __name__ == "__main__":
    main()
