"""Benchmark: the fixed cost of a run, end to end, with warm caches.

1. ``forgetbench run --task wordnet --method finetune`` as a user starts it (a new process:
   imports, data, the cached stage-0 model, evaluation before and after, training, the store),
   after one untimed run that fills the caches (stage 0 is trained then if it never was).
2. What a new process pays before the run's own work: the interpreter and the imports
   (forgetbench and its plugins), and on a GPU CUDA's start.
3. The same run twice in one process (as a sweep's worker runs them): the second reuses the
   data and prior model the first loaded; its phases are timed one by one.
4. Evaluation of the prior eval split in split order against length-sorted batches (what a GPU
   run does), interleaved, with the largest per-example difference between the two.

``--quick`` uses a small configuration (2,000 prior-train and 500 prior-eval glosses, 20
stage-0 steps, 10 fine-tuning steps); without it, the scenario's defaults (100 steps; stage 0
is 250 steps the first time: a minute on a GPU, about four on a 2-core CPU).

    .venv/bin/python -m bench.bench_run [--quick] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    Row,
    add_common_args,
    describe,
    pick_device,
    print_table,
    quiet_progress,
    sync,
)

QUICK = {
    "task.prior_train_size": "2000",
    "task.prior_eval_size": "500",
    "task.stage0_steps": "20",
    "steps": "10",
}
GPU_TARGET_SECONDS = 8.0


def cli_run(overrides: dict[str, str], env: dict[str, str]) -> float:
    """Wall seconds of one ``forgetbench run`` in a new process."""
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "forgetbench", "run", "--task", "wordnet"]
    started = time.perf_counter()
    done = subprocess.run(
        [*command, "--method", "finetune", *sets], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"forgetbench run failed:\n{done.stderr}")
    return time.perf_counter() - started


IMPORTS = (
    "import forgetbench.runner\n"
    "from forgetbench.registry import get_registry\n"
    "get_registry()"  # every installed plugin imported, as a run does
)
CUDA_START = (
    "import time, torch\n"
    "started = time.perf_counter()\n"
    "x = torch.randn(256, 256, device='cuda')\n"
    "(x @ x).sum().item()\n"
    "print(time.perf_counter() - started)"
)


def start_up(env: dict[str, str], device: torch.device) -> list[Row]:
    """What a new process pays before a run's own work: the interpreter and the imports of
    forgetbench and its plugins (the process's wall time), and on a GPU CUDA's start (context,
    library handles, a first matrix product), timed inside a process that imported torch."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=env, check=True)
    rows = [Row("start-up", "interpreter and imports", time.perf_counter() - started, "s")]
    if device.type == "cuda":
        done = subprocess.run(
            [sys.executable, "-c", CUDA_START], env=env, check=True, capture_output=True, text=True
        )
        rows.append(Row("start-up", "CUDA start (first matmul)", float(done.stdout), "s"))
    return rows


def in_process(overrides: dict[str, str], db: str, phases: dict[str, float]) -> float:
    """Wall seconds of one run through :func:`forgetbench.runner.execute`; ``phases`` gets the
    seconds of each named phase."""
    from forgetbench import runner

    @contextlib.contextmanager
    def timed(description: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            phases[description] = time.perf_counter() - started

    runner.phase, original = timed, runner.phase
    try:
        request = runner.RunRequest(task="wordnet", methods=["finetune"], overrides=overrides)
        started = time.perf_counter()
        runner.execute(request, db=db)
        return time.perf_counter() - started
    finally:
        runner.phase = original


def evaluation_order(overrides: dict[str, str], device: torch.device, repeats: int) -> list[Row]:
    """ctx.predict over the prior eval split: split order against length order."""
    from bench.common import base_model, wordnet_task
    from forgetbench import context
    from forgetbench.api import TrainConfig

    sizes = {k[5:]: int(v) for k, v in overrides.items() if k in QUICK and k.startswith("task.")}
    task, data = wordnet_task(**{k: v for k, v in sizes.items() if k != "stage0_steps"})
    bundle, model = base_model(task, data)
    model = model.to(device)
    ctx = context.RunContext(run_id=None, seed=0, task=task, train=TrainConfig(), device=device)
    ctx.bundle = bundle
    split = data.prior_eval
    split_order, by_length = (
        (lambda s, d: np.arange(len(s))),
        (lambda s, d: context.length_order(s)),
    )
    orders = {"split order": (split_order, 128), "length-sorted": (by_length, 128)}
    if device.type == "cuda":
        orders["length-sorted, batch 512"] = (by_length, 512)
    times: dict[str, list[float]] = {name: [] for name in orders}
    results = {}
    original = context.evaluation_order
    try:
        for _ in range(repeats):
            for name, (order, size) in orders.items():
                context.evaluation_order, ctx.train = order, TrainConfig(eval_batch_size=size)
                sync(device)
                started = time.perf_counter()
                results[name] = ctx.predict(model, split)
                times[name].append(time.perf_counter() - started)
    finally:
        context.evaluation_order = original
    plain, ordered = results["split order"], results["length-sorted"]
    base = statistics.median(times["split order"])
    rows = [
        Row(
            "evaluation",
            f"{name}, {len(split)} ex",
            statistics.median(t),
            "s",
            statistics.median(t) / base,
        )
        for name, t in times.items()
    ]
    gap = float((plain.loss - ordered.loss).abs().max())
    same = bool(torch.equal(plain.success, ordered.success))
    rows.append(Row("evaluation", "max |loss diff| sorted vs not", gap, "nats"))
    rows.append(Row("evaluation", "same per-example success", float(same), "bool"))
    return rows


def run(args) -> tuple[list[Row], str]:
    if not args.verbose:
        quiet_progress()
    device = pick_device(args.device)
    overrides = dict(QUICK) if args.quick else {}
    overrides["device"] = device.type
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        db = str(Path(scratch) / "results.db")
        env = {**os.environ, "FORGETBENCH_DB": db, "HF_HUB_OFFLINE": "1"}
        cli_run(overrides, env)  # fills the caches (stage 0, if never trained)
        cli = [cli_run(overrides, env) for _ in range(args.repeats or (1 if args.quick else 3))]
        label = "default 100-step run" if not args.quick else "quick run (10 steps)"
        target = f"<={GPU_TARGET_SECONDS:g}" if device.type == "cuda" and not args.quick else ""
        rows.append(
            Row("run end to end", f"{label}, CLI", statistics.median(cli), "s", target=target)
        )
        rows += start_up(env, device)
        first, second = {}, {}
        cold = in_process(overrides, db, first)
        warm = in_process(overrides, db, second)
        rows.append(Row("run end to end", f"{label}, in process, 1st", cold, "s"))
        rows.append(Row("run end to end", f"{label}, in process, 2nd", warm, "s", warm / cold))
        # the 1st run's phases hold a process's one-time costs (CUDA's context, first kernels,
        # reading f0 and the data); the 2nd's what every later run of a sweep's process pays
        for which, phases, total in (("1st", first, cold), ("2nd", second, warm)):
            for name, seconds in phases.items():
                rows.append(Row(f"run phases ({which})", name, seconds, "s", seconds / total))
            training = total - sum(phases.values())
            rows.append(
                Row(f"run phases ({which})", "fine-tuning and storing", training, "s",
                    training / total)
            )  # fmt: skip
    rows += evaluation_order(overrides if args.quick else {}, device, args.repeats or 3)
    return rows, describe(device)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    return parser


def main(argv=None) -> list[Row]:
    rows, device = run(parser().parse_args(argv))
    print_table(rows, device, "fixed cost of a run (ratio: of the run, or of split order)")
    return rows


if __name__ == "__main__":
    main()
