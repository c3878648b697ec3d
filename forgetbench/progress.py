"""Progress on stderr: a rich bar on a terminal, a plain line per tenth of the work elsewhere."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stderr = Console(stderr=True)


@contextmanager
def progress(description: str, total: int, enabled: bool = True):
    """Yields ``advance(n=1)``. Off a terminal (CI, logs) it prints a plain line at every tenth
    of the work instead of a bar."""
    if enabled and not stderr.is_terminal:
        done = [0]
        started = time.perf_counter()

        def advance(n: int = 1) -> None:
            before, done[0] = done[0], done[0] + n
            if total >= 20 and done[0] * 10 // total > before * 10 // total:
                stderr.print(
                    f"{description}: {done[0]}/{total} ({time.perf_counter() - started:.0f} s)",
                    highlight=False,
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
