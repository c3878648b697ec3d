"""Benchmark: each method's training-step time against plain fine-tuning at the same budget,
and the one-off work a method does before training (its pre-pass).

Every method runs forgetbench's own loop with its real plugin on the offline ``wordnet``
scenario's model (MiniLM-L6, batch 32, max length 48), the loops interleaved step by step; the
step times are medians after a warm-up that covers one epoch of the (reduced) new-task split,
so LDIFS's frozen features are cached by then. ``ldifs (no cache)`` pays the frozen model's
forward pass every step, as the first epoch of any LDIFS run does. The pre-pass column is the
wall time of ``forgetbench_setup`` plus ``forgetbench_prior_sampler`` with empty caches: the
prior cache (mix-cd, random), FLOW's reference losses (a linear probe on f0's features), the
frozen copy (LDIFS), theta0 (L2SP).

    .venv/bin/python -m bench.bench_methods [--quick] [--device auto|cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import torch

from bench.common import (
    Baton,
    Row,
    add_common_args,
    base_model,
    chunk_size,
    describe,
    median_step,
    paired_ratio,
    pick_device,
    print_table,
    quiet_progress,
    sync,
    wordnet_task,
)
from forgetbench.api import Split, TrainConfig
from forgetbench.context import RunContext
from forgetbench.engine import TrainLoop, make_accelerator, seed_everything

METHODS = {
    "finetune": ("finetune", {}),
    "random": ("random", {}),
    "mixcd": ("mixcd", {}),
    "flow": ("flow", {}),
    "ldifs": ("ldifs", {}),
    "ldifs (no cache)": ("ldifs", {"cache_mb": 0.0}),
    "l2sp": ("l2sp", {}),
}
TARGETS = {"mixcd / random": "<=1.02", "ldifs": "<=1.10"}


class TimedLoop(TrainLoop):
    clock = None

    def _after_step(self, step, batch, loss, outputs):
        super()._after_step(step, batch, loss, outputs)
        self.clock.mark(step)


class Scenario:
    """The model, data and accelerator every method's run shares (each run its own copies)."""

    def __init__(self, device: torch.device, steps: int, new_train_size: int):
        self.task, self.data = wordnet_task(prior_train_size=1024, prior_eval_size=64)
        examples = self.data.new_train.examples[:new_train_size]
        self.data.new_train = Split(self.data.new_train.name, examples)
        self.bundle, self.template = base_model(self.task, self.data)
        self.train = TrainConfig(steps=steps, batch_size=32, lr=1e-4, device=device.type)
        self.accelerator = make_accelerator(self.train)
        self.device = self.accelerator.device
        shared = {name for name, _ in self.bundle.model.named_parameters()}
        self.new_names = frozenset(
            n for n, _ in self.template.named_parameters() if n not in shared
        )

    def context(self) -> RunContext:
        ctx = RunContext(
            run_id=None,
            seed=0,
            task=self.task,
            train=self.train,
            device=self.device,
            accelerator=self.accelerator,
        )
        ctx.attach(self.bundle, self.new_names, self.data.prior_train)
        return ctx

    def prepare(self, label: str):
        """A fresh model and method for ``label``, set up as the runner does; returns the
        loop and the seconds its setup took."""
        from forgetbench.registry import get_registry, run_plugin_manager

        name, settings = METHODS[label]
        cls = get_registry().method(name).cls
        method = cls(cls.Config(**settings) if cls.Config else None)
        hooks = run_plugin_manager([method]).hook
        ctx, model = self.context(), copy.deepcopy(self.template).to(self.device)
        sync(self.device)
        started = time.perf_counter()
        hooks.forgetbench_setup(ctx=ctx, model=model, data=self.data)
        sampler = hooks.forgetbench_prior_sampler(ctx=ctx, data=self.data)
        model = hooks.forgetbench_wrap_model(ctx=ctx, model=model) or model
        sync(self.device)
        setup_seconds = time.perf_counter() - started
        ctx.prior_cache.freeze()
        loop = TimedLoop(
            ctx,
            self.accelerator,
            self.data.new_train,
            hooks=hooks,
            sampler=sampler,
            prior_split=self.data.prior_train,
            needs_features=method.needs_features,
            label=label,
        )
        return loop, model, setup_seconds


def run(args) -> tuple[list[Row], str]:
    if not args.verbose:
        quiet_progress()
    device = pick_device(args.device)
    seed_everything(0)
    quick_steps, full_steps = (10, 24) if device.type == "cpu" else (120, 320)
    steps = args.steps or (quick_steps if args.quick else full_steps)
    warmup = 4  # more than one epoch of the 96-example new-task split at 24 new per batch
    scenario = Scenario(device, steps, new_train_size=96)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FORGETBENCH_CACHE"] = cache  # pre-passes measured with empty caches
        started = time.perf_counter()
        scenario.context().prior_predictions()  # built once, read by mixcd and random
        cache_seconds = time.perf_counter() - started
        prepared = {label: scenario.prepare(label) for label in METHODS}
        rounds = []
        for _ in range(args.repeats or 1):
            baton = Baton(scenario.device, warmup, steps, chunk_size(device, steps - warmup))
            loops = {}
            for label in METHODS:
                loop, model, _ = scenario.prepare(label) if rounds else prepared[label]
                loops[label] = lambda clock, loop=loop, model=model: _run(loop, model, clock)
            rounds.append(baton.run(loops))
    setup = {label: seconds for label, (_, _, seconds) in prepared.items()}
    return rows_of(rounds, cache_seconds, setup), describe(device)


def _run(loop: TimedLoop, model, clock) -> None:
    loop.clock = clock
    loop.run(model)


def rows_of(rounds, cache_seconds: float, setup: dict[str, float]) -> list[Row]:
    """Step times (ratio: paired with finetune step by step), then the pre-passes (ratio: in
    finetune steps)."""
    reference = median_step(rounds, "finetune")
    rows = []
    for label in METHODS:
        seconds, ratio = median_step(rounds, label), paired_ratio(rounds, label, "finetune")
        target = TARGETS.get(label, "")
        rows.append(Row("method step", label, seconds * 1e3, "ms/step", ratio, target))
    ratio = paired_ratio(rounds, "mixcd", "random")
    rows.append(Row("method step", "mixcd / random", ratio, "x", ratio, TARGETS["mixcd / random"]))
    for label, seconds in [("prior cache (f0, shared)", cache_seconds), *setup.items()]:
        rows.append(Row("method pre-pass", label, seconds, "s", seconds / reference))
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps per method")
    return parser


def main(argv=None) -> list[Row]:
    rows, device = run(parser().parse_args(argv))
    print_table(rows, device, "method overhead (pre-pass ratio: in finetune steps)")
    return rows


if __name__ == "__main__":
    main()
