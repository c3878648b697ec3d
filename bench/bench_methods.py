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

A step's cost grows with its padded length, and methods that rehearse draw different prior
examples (mix-cd draws from f0-correct cells, random from the whole prior set), so their batches
pad to different lengths. Every step's padded tokens (``input_ids`` elements) are recorded, and
the rehearsal rows give both the paired step-time ratio and the paired ratio per padded token,
with the mean padded tokens of a step; ``--pad-to-max`` pads every batch of every method to the
task's ``max_length`` (the same tokens everywhere: step time ratios are then the methods' own
cost). The ``host work`` rows are the seconds a method's host-side code takes per step: its
prior sampler's draw and its ``forgetbench_after_step`` hooks (mix-cd's estimator update).

    .venv/bin/python -m bench.bench_methods [--quick] [--device auto|cpu|cuda] [--steps N]
        [--methods finetune,random,mixcd] [--pad-to-max]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
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
from forgetbench_plugins.l2sp import l2sp_penalty as L2SP_PENALTY
from forgetbench_plugins.l2sp import per_tensor_penalty

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
# --ablation: forgetbench's code before an optimisation, timed beside today's
ABLATIONS = {"l2sp (per-tensor, before)": ("l2sp", {})}


def code_of(label: str) -> None:
    """Called when ``label``'s loop takes its turn: the code it times in place."""
    from forgetbench_plugins import l2sp

    l2sp.l2sp_penalty = per_tensor_penalty if label in ABLATIONS else L2SP_PENALTY


class TimedLoop(TrainLoop):
    """forgetbench's loop, recording each step's padded tokens and the host seconds of the
    method's own work (the sampler's draw, the after-step hooks)."""

    clock = None

    def _next_batch(self):
        batch = super()._next_batch()
        self.tokens.append(int(batch.inputs["input_ids"].numel()))
        return batch

    def _after_step(self, step, batch, loss, outputs):
        if self.observed:  # the wait for the device (a GPU's): not the method's host work
            outputs = outputs.detach_cpu()
        started = time.perf_counter()
        super()._after_step(step, batch, loss, outputs)
        self.host[-1] += time.perf_counter() - started
        self.clock.mark(step)
        self.host.append(0.0)


def timed_sampler(sampler, host: list[float]):
    """``sampler`` whose draws add their seconds to the current step's ``host[-1]``."""
    if sampler is None:
        return None
    draw = sampler.sample

    def sample(n, rng):
        started = time.perf_counter()
        index = draw(n, rng)
        host[-1] += time.perf_counter() - started
        return index

    sampler.sample = sample
    return sampler


def pad_to_max(task, pad_id: int) -> None:
    """Every batch of ``task`` padded to its ``max_length`` (the same tokens for all methods)."""
    collate, length = task.collate, task.max_length

    def padded(bundle, examples):
        inputs = collate(bundle, examples)
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            value = inputs.get(key)
            if value is not None and value.shape[1] < length:
                fill = pad_id if key == "input_ids" else 0
                widen = (0, length - value.shape[1])
                inputs[key] = torch.nn.functional.pad(value, widen, value=fill)
        return inputs

    task.collate = padded


class Scenario:
    """The model, data and accelerator every method's run shares (each run its own copies)."""

    def __init__(self, device: torch.device, steps: int, new_train_size: int, pad: bool = False):
        self.task, self.data = wordnet_task(prior_train_size=1024, prior_eval_size=64)
        examples = self.data.new_train.examples[:new_train_size]
        self.data.new_train = Split(self.data.new_train.name, examples)
        self.bundle, self.template = base_model(self.task, self.data)
        if pad:
            pad_to_max(self.task, self.bundle.processor.pad_token_id)
        self.train = TrainConfig(steps=steps, batch_size=32, lr=1e-4, device=device.type)
        self.accelerator = make_accelerator(self.train)
        self.device = self.accelerator.device
        self.bundle.model.to(self.device)  # f0 builds the prior cache there (the runner's too)
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

        name, settings = {**METHODS, **ABLATIONS}[label]
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
        host = [0.0]
        loop = TimedLoop(
            ctx,
            self.accelerator,
            self.data.new_train,
            hooks=hooks,
            sampler=timed_sampler(sampler, host),
            prior_split=self.data.prior_train,
            needs_features=method.needs_features,
            label=label,
        )
        loop.tokens, loop.host = [], host
        return loop, model, setup_seconds


def run(args) -> tuple[list[Row], str]:
    if not args.verbose:
        quiet_progress()
    device = pick_device(args.device)
    seed_everything(0)
    quick_steps, full_steps = (10, 24) if device.type == "cpu" else (120, 320)
    steps = args.steps or (quick_steps if args.quick else full_steps)
    warmup = 4  # more than one epoch of the 96-example new-task split at 24 new per batch
    labels = chosen(args.methods) + (list(ABLATIONS) if args.ablation else [])
    scenario = Scenario(device, steps, new_train_size=96, pad=args.pad_to_max)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FORGETBENCH_CACHE"] = cache  # pre-passes measured with empty caches
        started = time.perf_counter()
        scenario.context().prior_predictions()  # built once, read by mixcd and random
        cache_seconds = time.perf_counter() - started
        prepared = {label: scenario.prepare(label) for label in labels}
        rounds, counts = [], []
        for _ in range(args.repeats or 1):
            chunk = chunk_size(device, steps - warmup)
            baton = Baton(scenario.device, warmup, steps, chunk)
            loops, timed = {}, {}
            for label in labels:
                loop, model, _ = scenario.prepare(label) if rounds else prepared[label]
                loops[label] = lambda clock, loop=loop, model=model: _run(loop, model, clock)
                timed[label] = loop
            on_turn = {label: lambda label=label: code_of(label) for label in labels}
            rounds.append(baton.run(loops, on_turn))
            counts.append({label: per_chunk(loop, warmup, chunk) for label, loop in timed.items()})
    setup = {label: seconds for label, (_, _, seconds) in prepared.items()}
    return rows_of(rounds, counts, cache_seconds, setup), describe(device)


def chosen(methods: str | None) -> list[str]:
    """The labels ``--methods`` names (labels, or method names for all their labels), finetune
    first, the others in the order given (the order the loops take turns in)."""
    if not methods:
        return list(METHODS)
    labels = ["finetune"]
    for name in (name.strip() for name in methods.split(",")):
        matches = [label for label in METHODS if name in (label, METHODS[label][0])]
        if not matches:
            raise SystemExit(f"--methods: unknown {name!r}; choose from {list(METHODS)}")
        labels += [label for label in matches if label not in labels]
    return labels


def per_chunk(loop: TimedLoop, warmup: int, chunk: int) -> dict[str, list[float]]:
    """Mean padded tokens and host seconds per step of each timed chunk of ``loop``'s steps
    (step ``k`` is entry ``k - 1`` of its lists)."""
    chunks = (len(loop.tokens) - warmup) // chunk
    spans = [slice(warmup + i * chunk, warmup + (i + 1) * chunk) for i in range(chunks)]
    return {
        "tokens": [statistics.fmean(loop.tokens[span]) for span in spans],
        "host": [statistics.fmean(loop.host[span]) for span in spans],
    }


def _run(loop: TimedLoop, model, clock) -> None:
    loop.clock = clock
    loop.run(model)


def per_token_ratio(rounds, counts, slow: str, fast: str) -> float:
    """Median over chunks of (seconds per padded token of ``slow``) / (that of ``fast``)."""
    ratios = []
    for timings, tokens in zip(rounds, counts, strict=True):
        pairs = zip(timings[slow], timings[fast], strict=True)
        for i, (a, b) in enumerate(pairs):
            ratios.append((a / tokens[slow]["tokens"][i]) / (b / tokens[fast]["tokens"][i]))
    return statistics.median(ratios)


def mean_of(counts, label: str, key: str) -> float:
    return statistics.fmean(v for count in counts for v in count[label][key])


def rows_of(rounds, counts, cache_seconds: float, setup: dict[str, float]) -> list[Row]:
    """Step times (ratio: paired with finetune step by step), padded tokens per step and the
    methods' host work, mix-cd against random per step and per padded token, then the
    pre-passes (ratio: in finetune steps)."""
    reference = median_step(rounds, "finetune")
    base_tokens = mean_of(counts, "finetune", "tokens")
    rows = []
    for label in setup:
        seconds, ratio = median_step(rounds, label), paired_ratio(rounds, label, "finetune")
        target = TARGETS.get(label, "")
        rows.append(Row("method step", label, seconds * 1e3, "ms/step", ratio, target))
    for label in setup:
        tokens = mean_of(counts, label, "tokens")
        rows.append(Row("method tokens", label, tokens, "tok/step", tokens / base_tokens))
    for label in setup:
        host = statistics.median(v for count in counts for v in count[label]["host"])
        rows.append(Row("method host work", label, host * 1e3, "ms/step", host / reference))
    if {"mixcd", "random"} <= set(setup):
        target = TARGETS["mixcd / random"]
        step = paired_ratio(rounds, "mixcd", "random")
        token = per_token_ratio(rounds, counts, "mixcd", "random")
        tokens = mean_of(counts, "mixcd", "tokens") / mean_of(counts, "random", "tokens")
        rows.append(Row("method step", "mixcd / random (per step)", step, "x", step))
        rows.append(Row("method step", "mixcd / random (tokens)", tokens, "x", tokens))
        rows.append(Row("method step", "mixcd / random (per token)", token, "x", token, target))
    for label, seconds in [("prior cache (f0, shared)", cache_seconds), *setup.items()]:
        rows.append(Row("method pre-pass", label, seconds, "s", seconds / reference))
    return rows


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps per method")
    parser.add_argument("--methods", default=None, help="comma-separated subset (and finetune)")
    parser.add_argument(
        "--pad-to-max", action="store_true", help="pad every batch to max_length (equal tokens)"
    )
    parser.add_argument(
        "--ablation", action="store_true", help="also the code before optimisations (ABLATIONS)"
    )
    return parser


def main(argv=None) -> list[Row]:
    rows, device = run(parser().parse_args(argv))
    print_table(rows, device, "method overhead (pre-pass ratio: in finetune steps)")
    return rows


if __name__ == "__main__":
    main()
