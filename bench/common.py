"""What every benchmark shares: the device, the offline ``wordnet`` scenario's model and data,
interleaved repeated timing, and the one result table.

Every benchmark runs on CUDA when one is present (``--device auto``) and on the CPU otherwise,
names the device in its table, and measures ratios within one invocation: variants run
interleaved (A, B, C, A, B, C, ...) and each figure is the median over the repeats, so that a
machine shared with other work slows every variant alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_progress() -> None:
    """The training loops' progress lines off (they would bury the table); ``--verbose`` keeps
    them."""
    from rich.console import Console

    from forgetbench import progress

    progress.stderr = Console(stderr=True, quiet=True)


@dataclass
class Row:
    """One line of the result table."""

    bench: str
    variant: str
    value: float
    unit: str
    ratio: float | None = None  # against the benchmark's reference variant
    target: str = ""

    @property
    def verdict(self) -> str:
        if not self.target:
            return ""
        measured = self.ratio if self.ratio is not None else self.value
        op, bound = self.target[:2], float(self.target[2:])
        met = measured >= bound if op == ">=" else measured <= bound
        return "met" if met else "MISSED"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="short run (make bench)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--verbose", action="store_true", help="show the loops' progress")


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    """The device in words, for the table's header."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" {torch.get_num_threads()} torch threads, load {load:.2f}"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Times steps ``warmup+1 .. steps`` of a loop that calls ``mark(step)`` after each step
    (the device is synchronised only at those two marks)."""

    def __init__(self, device: torch.device, warmup: int, steps: int):
        self.device, self.warmup, self.steps = device, warmup, steps
        self.started = self.ended = None

    def mark(self, step: int) -> None:
        if step == self.warmup:
            sync(self.device)
            self.started = time.perf_counter()
        if step == self.steps:
            sync(self.device)
            self.ended = time.perf_counter()

    @property
    def seconds_per_step(self) -> float:
        return (self.ended - self.started) / (self.steps - self.warmup)


class Baton:
    """Runs several training loops interleaved: each in its own thread, one at a time, control
    passing to the next loop every ``chunk`` steps (so a shared, noisy machine slows all alike).

    A loop calls ``clock(name).mark(step)`` after each of its ``steps`` steps. The time of each
    chunk after the first ``warmup`` steps is recorded (the device synchronised at hand-overs
    only); :meth:`seconds_per_step` is the median chunk time per step.
    """

    def __init__(self, device: torch.device, warmup: int, steps: int, chunk: int = 1):
        self.device, self.warmup, self.steps, self.chunk = device, warmup, steps, chunk
        self.turns: dict[str, threading.Event] = {}
        self.chunks: dict[str, list[float]] = {}
        self.order: list[str] = []
        self.errors: list[BaseException] = []
        self.on_turn: dict[str, Callable[[], None]] = {}

    def clock(self, name: str) -> _BatonClock:
        return _BatonClock(self, name)

    def _pass(self, name: str) -> None:
        alive = [n for n in self.order if not self.turns[n].done]
        if not alive:
            return
        following = self.order[(self.order.index(name) + 1) % len(self.order) :]
        following += self.order
        next_name = next(n for n in following if n in alive)
        self.turns[next_name].set()

    def run(
        self, loops: dict[str, Callable[[object], None]], on_turn: dict | None = None
    ) -> dict[str, list[float]]:
        """Run ``loops`` (name -> function of a clock) interleaved; each loop's seconds per
        step, chunk by chunk (chunk ``i`` of every loop ran at about the same time and, where
        the loops share a data order, on the same batches)."""
        self.order = list(loops)
        self.on_turn = on_turn or {}  # name -> called whenever that loop gets its turn
        for name in loops:
            self.turns[name] = threading.Event()
            self.turns[name].done = False
            self.chunks[name] = []
        threads = [
            threading.Thread(target=self._body, args=(name, loop), daemon=True)
            for name, loop in loops.items()
        ]
        for thread in threads:
            thread.start()
        self.turns[self.order[0]].set()
        for thread in threads:
            thread.join()
        if self.errors:
            raise self.errors[0]
        return {n: [c / self.chunk for c in chunks] for n, chunks in self.chunks.items()}

    def _body(self, name: str, loop) -> None:
        self.turns[name].wait()
        self.turns[name].clear()
        self.on_turn.get(name, lambda: None)()
        try:
            loop(self.clock(name))
        except BaseException as error:  # re-raised by run()
            self.errors.append(error)
        finally:
            self.turns[name].done = True
            self._pass(name)


class _BatonClock:
    def __init__(self, baton: Baton, name: str):
        self.baton, self.name = baton, name
        self.resumed = time.perf_counter()

    def mark(self, step: int) -> None:
        baton = self.baton
        timed = step > baton.warmup and (step - baton.warmup) % baton.chunk == 0
        if step != baton.warmup and not timed:
            return
        sync(baton.device)
        if timed:
            baton.chunks[self.name].append(time.perf_counter() - self.resumed)
        if step >= baton.steps:
            return  # the loop finishes and hands over when its function returns
        turn = baton.turns[self.name]
        baton._pass(self.name)
        turn.wait()
        turn.clear()
        baton.on_turn.get(self.name, lambda: None)()
        self.resumed = time.perf_counter()


def loop_length(device: torch.device, quick: bool, steps: int | None) -> tuple[int, int]:
    """(steps, warm-up steps) of a timed training loop: short on the CPU, longer on a GPU."""
    if device.type == "cpu":
        default, warmup = (10, 2) if quick else (30, 5)
    else:
        default, warmup = (120, 20) if quick else (320, 20)
    steps = steps or default
    return steps, min(warmup, steps // 3)


def chunk_size(device: torch.device, timed_steps: int) -> int:
    """Steps between hand-overs: every step on the CPU (noisy, no asynchrony to lose), a
    tenth of the timed steps on a GPU (a synchronisation per step would hide the overlap of
    host and device work a good loop gets)."""
    if device.type == "cpu":
        return 1
    return next(c for c in range(max(1, timed_steps // 10), 0, -1) if timed_steps % c == 0)


def median_step(rounds: list[dict[str, list[float]]], name: str) -> float:
    """Median seconds per step of loop ``name`` over every chunk of every round."""
    return statistics.median(t for timings in rounds for t in timings[name])


def paired_ratio(rounds: list[dict[str, list[float]]], slow: str, fast: str) -> float:
    """Median over chunks of (time of ``slow``) / (time of ``fast``), chunk by chunk: paired
    on the same moment and the same batches, which cancels most of a shared machine's noise
    and of the batches' different lengths."""
    return statistics.median(
        a / b for timings in rounds for a, b in zip(timings[slow], timings[fast], strict=True)
    )


def interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run every variant once per round, ``repeats`` rounds; the median of each."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            results[name].append(run())
    return {name: statistics.median(values) for name, values in results.items()}


def print_table(rows: list[Row], device: str, title: str = "forgetbench benchmarks") -> None:
    print(f"\n{title} -- {device}")
    print("ratios are within one invocation: variants interleaved, medians of the repeats")
    header = f"{'benchmark':<18} {'variant':<34} {'value':>12} {'unit':<10} {'ratio':>7}  target"
    print(header)
    print("-" * len(header))
    for row in rows:
        ratio = f"{row.ratio:7.3f}" if row.ratio is not None else " " * 7
        target = f"{row.target} {row.verdict}".strip()
        value = f"{row.value:12.4g}"
        print(f"{row.bench:<18} {row.variant:<34} {value} {row.unit:<10} {ratio}  {target}")


# -- the offline wordnet scenario ------------------------------------------------------------


def wordnet_task(**config):
    """The ``wordnet`` task (sizes from ``config``) and its data."""
    from forgetbench_tasks.text_classification.wordnet import WordnetConfig, WordnetTask

    task = WordnetTask(WordnetConfig(**config))
    return task, task.load_data(None)


def base_model(task, data):
    """MiniLM-L6 with the prior head and a fresh new-task head, on the CPU: the model the
    ``wordnet`` scenario fine-tunes (the base weights rather than stage 0's: the same cost)."""
    from forgetbench.api import TrainConfig
    from forgetbench.context import RunContext

    ctx = RunContext(run_id=None, seed=0, task=task, train=TrainConfig(), device="cpu")
    torch.manual_seed(0)
    bundle = task.build_prior(ctx, data)
    model = task.init_new_task(ctx, bundle, data)
    return bundle, model
