"""Progress on stderr: a rich bar on a terminal, plain lines elsewhere (CI, logs), so that no
phase of a run is silent for long."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class PipeSafeConsole(Console):
    """A console that goes quiet when whoever reads it goes away (``forgetbench run ... |
    head``): the run goes on to its end and is stored. rich's own exits the process
    (``SystemExit(1)``), which failed the run."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError, ValueError):  # later writes go nowhere
            os.dup2(devnull, self.file.fileno())


stderr = PipeSafeConsole(stderr=True)
# The longest a phase, or a loop off a terminal, stays silent, in seconds; a phase shorter than
# SHOWN_AFTER seconds prints nothing.
QUIET_SECONDS = 20.0
SHOWN_AFTER = 3.0


@contextmanager
def progress(description: str, total: int, enabled: bool = True):
    """Yields ``advance(n=1)``. Off a terminal (CI, logs) it prints a plain line at every tenth
    of the work, and at least every ``QUIET_SECONDS``, instead of a bar."""
    if enabled and not stderr.is_terminal:
        done = [0]
        started = time.perf_counter()
        last_line = [started]

        def advance(n: int = 1) -> None:
            before, done[0] = done[0], done[0] + n
            now = time.perf_counter()
            tenth = total > 0 and done[0] * 10 // total > before * 10 // total
            if tenth or now - last_line[0] >= QUIET_SECONDS:
                last_line[0] = now
                stderr.print(
                    f"{description}: {done[0]}/{total} ({now - started:.0f} s)", highlight=False
                )

        yield advance
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not enabled,
    )
    with bar:
        task_id = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task_id, n)


@contextmanager
def periodically(action: Callable[[], None], every: float, name: str, first: float | None = None):
    """Call ``action`` from a thread every ``every`` seconds (the first time after ``first``)
    while the block runs; the thread stops with the block."""
    stop = threading.Event()

    def loop() -> None:
        wait = every if first is None else first
        while not stop.wait(wait):
            action()
            wait = every

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)  # an action stuck (a busy store) does not hold the run


@contextmanager
def phase(description: str):
    """A named phase of a run (loading data, evaluating, ...). A phase that lasts more than
    ``SHOWN_AFTER`` seconds says so on stderr, again every ``QUIET_SECONDS``, and how long it
    took; a short one prints nothing (so an error in it stays the only line)."""
    started = time.perf_counter()
    shown = threading.Event()

    def tick() -> None:
        elapsed = time.perf_counter() - started
        stderr.print(f"{description} ... ({elapsed:.0f} s)", highlight=False)
        shown.set()

    with periodically(tick, QUIET_SECONDS, f"progress: {description}", first=SHOWN_AFTER):
        yield
    if shown.is_set():
        elapsed = time.perf_counter() - started
        stderr.print(f"{description}: done in {elapsed:.0f} s", highlight=False)
