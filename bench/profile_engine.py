"""Where a training step's time goes: the bare loop and forgetbench's ``finetune`` loop of
``bench_engine`` (same model, data and batches), each profiled over the same steps after a
warm-up, on the device.

For each loop: its wall time per step unprofiled, then under ``torch.profiler`` the operators
and runtime calls per step (kernel launches, copies, synchronisations) and under ``cProfile``
the Python functions by their own time. The summary prints what forgetbench does per step that
the bare loop does not (by self CPU time): on a GPU whose step is bound by the host, that is
the engine's overhead. A diagnostic, not a benchmark with a target (``make bench`` does not
run it); the profilers slow every step, so compare the two loops, not their absolute times.

    .venv/bin/python -m bench.profile_engine [--device auto|cpu|cuda] [--steps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from bench.bench_engine import Setup, bare_loop, forgetbench_loop
from bench.common import describe, pick_device, quiet_progress, sync
from forgetbench.api import TrainConfig
from forgetbench.engine import seed_everything, set_tf32, uses_tf32

LOOPS = {"bare loop": bare_loop, "forgetbench finetune": forgetbench_loop}
RUNTIME_CALLS = ("Launch", "Memcpy", "Synchronize", "HostAlloc", "EventRecord", "Malloc")


class Window:
    """A clock for the loops' ``mark(step)``: calls ``start`` after step ``warmup`` and
    ``stop`` after step ``warmup + steps`` (the device synchronised at both)."""

    def __init__(self, device, warmup: int, steps: int, start, stop):
        self.device, self.first, self.last = device, warmup, warmup + steps
        self.start, self.stop = start, stop

    def mark(self, step: int) -> None:
        if step in (self.first, self.last):
            sync(self.device)
            (self.start if step == self.first else self.stop)()


def wall(setup: Setup, loop, warmup: int, steps: int) -> float:
    """Seconds per step of ``loop``, unprofiled."""
    times = []
    loop(setup, Window(setup.device, warmup, steps, lambda: times.append(time.perf_counter()),
                       lambda: times.append(time.perf_counter())))  # fmt: skip
    return (times[1] - times[0]) / steps


def torch_profile(setup: Setup, loop, warmup: int, steps: int):
    activities = [ProfilerActivity.CPU]
    if setup.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    profiler = profile(activities=activities)
    loop(setup, Window(setup.device, warmup, steps, profiler.start, profiler.stop))
    return profiler


def python_profile(setup: Setup, loop, warmup: int, steps: int) -> str:
    profiler = cProfile.Profile()
    loop(setup, Window(setup.device, warmup, steps, profiler.enable, profiler.disable))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
    return text.getvalue()


def per_step(profiler, steps: int) -> dict[str, tuple[float, float]]:
    """Operator or runtime call -> (calls per step, self CPU microseconds per step)."""
    return {
        event.key: (event.count / steps, event.self_cpu_time_total / steps)
        for event in profiler.key_averages()
    }


def summary(walls: dict, counts: dict, top: int) -> str:
    bare, ours = counts["bare loop"], counts["forgetbench finetune"]
    lines = [f"{name}: {seconds * 1e3:.2f} ms/step unprofiled" for name, seconds in walls.items()]
    for name, table in counts.items():
        calls = {k: v[0] for k, v in table.items() if any(part in k for part in RUNTIME_CALLS)}
        aten = sum(v[0] for k, v in table.items() if k.startswith("aten::"))
        self_us = sum(v[1] for v in table.values())
        lines.append(f"{name}: {aten:.0f} aten calls/step (nested included), self CPU"
                     f" {self_us / 1e3:.2f} ms/step; runtime calls/step: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in sorted(calls.items())))  # fmt: skip
    lines.append(f"\nforgetbench minus bare loop, per step, the {top} largest by self CPU time:")
    lines.append(f"{'operator or call':<48} {'calls':>8} {'self CPU us':>12}")
    keys = set(bare) | set(ours)
    delta = {
        k: tuple(ours.get(k, (0, 0))[i] - bare.get(k, (0, 0))[i] for i in (0, 1)) for k in keys
    }
    for key, (calls, micros) in sorted(delta.items(), key=lambda kv: -abs(kv[1][1]))[:top]:
        lines.append(f"{key[:48]:<48} {calls:>+8.1f} {micros:>+12.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (after warm-up)")
    parser.add_argument("--top", type=int, default=30, help="rows of the difference table")
    parser.add_argument("--out", default=None, help="folder for the full profiles (one file)")
    args = parser.parse_args(argv)
    quiet_progress()
    device = pick_device(args.device)
    seed_everything(0)
    # both loops under forgetbench's TF32 default (its loop sets it; the bare loop would not)
    set_tf32(uses_tf32(TrainConfig(device=device.type)))
    warmup = 10 if device.type == "cpu" else 20
    steps = args.steps or (10 if device.type == "cpu" else 40)
    setup = Setup(device, warmup + steps, 32)
    walls, counts, details = {}, {}, []
    for name, loop in LOOPS.items():
        walls[name] = wall(setup, loop, warmup, steps)
        profiler = torch_profile(setup, loop, warmup, steps)
        counts[name] = per_step(profiler, steps)
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=60)
        details += [f"== {name}: operators ({steps} steps)", table]
        details += [f"== {name}: Python functions", python_profile(setup, loop, warmup, steps)]
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile-details.txt").write_text("\n".join(details))
    print(f"\nwhere a step's time goes -- {describe(device)}; {steps} steps after {warmup}")
    print(summary(walls, counts, args.top))


if __name__ == "__main__":
    main()
