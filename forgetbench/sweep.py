"""``forgetbench sweep``: a grid over method stacks x config values x seeds, run through
:mod:`forgetbench.runner` by a local process pool (default) or Ray, all into one store.

Every run of the grid is resolved (validated, hashed) before any runs, so a bad key or value
fails at once. A run whose (config hash, seed) already finished ``ok`` in the store is skipped
unless ``force``. A worker process runs its share of the runs one after another, so whatever a
run caches in its process (loaded data, the prior model) serves the next one. A run that fails
is stored ``failed`` (by the runner) and the sweep goes on; the outcome lists it.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context

from forgetbench import runner
from forgetbench.errors import ForgetbenchError, interrupt
from forgetbench.registry import Registry
from forgetbench.runner import RunRequest, run_label
from forgetbench.store import Store

EXECUTORS = ("local", "ray")
MAX_SEEDS = 10_000  # a range is expanded into a list: a typo must not fill the memory
RegistryFactory = Callable[[], Registry] | None


def parse_seeds(text: str) -> list[int]:
    """``0-4`` -> [0, 1, 2, 3, 4]; ``0,2,7`` and mixtures (``0-2,9``) too."""
    seeds: list[int] = []
    seen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last) if dash else int(first)
        except ValueError:
            raise ForgetbenchError(f"--seeds: {part!r} is not a seed or a range like 0-4") from None
        if high < low:
            raise ForgetbenchError(f"--seeds: the range {part} is empty (write it low-high)")
        if low < 0 or high > runner.MAX_SEED:
            raise ForgetbenchError(f"--seeds: seeds are 0 to {runner.MAX_SEED}, got {part}")
        if high - low + 1 > MAX_SEEDS:  # before the range is expanded
            raise ForgetbenchError(f"--seeds: at most {MAX_SEEDS:,} seeds a sweep, got {part}")
        seeds += [s for s in range(low, high + 1) if s not in seen]
        seen.update(range(low, high + 1))
        if len(seeds) > MAX_SEEDS:  # distinct seeds: a repeated range counts once
            raise ForgetbenchError(f"--seeds: at most {MAX_SEEDS:,} seeds a sweep, got {text}")
    return seeds


def parse_grid(pairs: list[str]) -> dict[str, list[str]]:
    """``["mixcd.mix_ratio=0.1,0.25", "steps=50,100"]`` -> {key: values}. Values are split on
    ``;`` when there is one (for list-valued settings: ``wise-ft.grid=0,0.5;0,1``), else on
    ``,``."""
    grid: dict[str, list[str]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        values = [v.strip() for v in text.split(";" if ";" in text else ",") if v.strip()]
        if not sep or not key or not values:
            raise ForgetbenchError(f"--grid expects key=v1,v2,..., got {pair!r}")
        if key in grid:
            raise ForgetbenchError(f"--grid {key} is given twice: give all its values in one")
        grid[key] = list(dict.fromkeys(values))
    return grid


@dataclass
class SweepSpec:
    """What ``forgetbench sweep`` asks for: method stacks (``mixcd+wise-ft``), a grid of
    ``--set`` keys, seeds, and fixed ``--set`` overrides applied to every run."""

    task: str
    methods: list[str]
    grid: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    overrides: dict[str, str] = field(default_factory=dict)


def _applies(key: str, stack: list[str], registry: Registry) -> bool:
    """A key of a method (``mixcd.mix_ratio``) varies only the stacks that have that method;
    other keys (``steps``, ``task.x``, bare names) vary every stack."""
    section = key.rpartition(".")[0]
    return not (section in registry.methods and section not in stack)


def expand(spec: SweepSpec, registry: Registry) -> list[RunRequest]:
    """Every run of the grid, stack by stack, in a stable order, without duplicates."""
    stacks = [[name.strip() for name in m.split("+")] for m in spec.methods]
    used = {name for stack in stacks for name in stack}
    for key in spec.grid:
        section = key.rpartition(".")[0]
        if section in registry.methods and section not in used:
            raise ForgetbenchError(f"--grid {key}: method {section} is not in the sweep")
    requests, seen = [], set()
    for stack in stacks:
        keys = [key for key in spec.grid if _applies(key, stack, registry)]
        for values in itertools.product(*(spec.grid[key] for key in keys)):
            for seed in spec.seeds:
                overrides = {**spec.overrides, **dict(zip(keys, values, strict=True))}
                identity = (tuple(stack), tuple(sorted(overrides.items())), seed)
                if identity not in seen:
                    seen.add(identity)
                    requests.append(RunRequest(spec.task, stack, seed, overrides=overrides))
    return requests


@dataclass
class PlannedRun:
    request: RunRequest
    label: str
    config_hash: str


def plan(spec: SweepSpec, registry: Registry | None = None) -> list[PlannedRun]:
    """Every run of the sweep, resolved (validated and hashed): bad input fails here, before
    anything is stored or runs."""
    registry = registry or runner.get_registry()  # looked up when called: tests swap it
    if not spec.methods:
        raise ForgetbenchError("give at least one --method")
    planned = []
    for request in expand(spec, registry):
        resolved = runner.resolve(request, registry)
        planned.append(PlannedRun(request, run_label(resolved), resolved.config_hash))
    return planned


def split_done(
    planned: list[PlannedRun], store: Store, force: bool = False
) -> tuple[list[PlannedRun], list[PlannedRun]]:
    """(to run, skipped): a run whose (config hash, seed) finished ``ok`` in ``store`` is
    skipped, unless ``force``."""
    if force:
        return planned, []
    done = {(run["config_hash"], run["seed"]) for run in store.get_runs(status="ok")}
    todo = [p for p in planned if (p.config_hash, p.request.seed) not in done]
    return todo, [p for p in planned if (p.config_hash, p.request.seed) in done]


@dataclass
class Outcome:
    """One run of the sweep: its stored id (None if it failed before a row was written)."""

    label: str
    seed: int
    run_id: int | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def run_one(planned: PlannedRun, db: str | None, registry_factory: RegistryFactory) -> Outcome:
    """Run one planned run in this process; a failure becomes an :class:`Outcome`, not an
    exception (the runner already stored the run ``failed``)."""
    started = time.perf_counter()
    registry = registry_factory() if registry_factory else None
    try:
        run_id, error = runner.execute(planned.request, db=db, registry=registry), None
    except Exception as failure:  # the sweep goes on; Ctrl-C still stops it
        run_id = getattr(failure, "run_id", None)
        error = " ".join(f"{type(failure).__name__}: {failure}".split())
    seconds = time.perf_counter() - started
    return Outcome(planned.label, planned.request.seed, run_id, error, seconds)


def _start_worker(workers: int) -> None:
    """A pool process: its share of the CPU cores for torch, and SIGTERM (``timeout``, a
    scheduler, the sweep itself stopping) as an interruption, so that its run is marked
    ``interrupted`` as in a single run."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    signal.signal(signal.SIGTERM, interrupt)


def run_local(
    todo: list[PlannedRun], db: str | None, workers: int, registry_factory: RegistryFactory
) -> Iterator[Outcome]:
    """Outcomes as runs finish: in this process for one worker, else in a pool of ``workers``
    spawned processes (each runs its runs one after another)."""
    if workers == 1 or len(todo) <= 1:  # no pool for one run, nor for none (all finished)
        for planned in todo:
            yield run_one(planned, db, registry_factory)
        return
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=get_context("spawn"),  # forking a process that holds torch threads can hang
        initializer=_start_worker,
        initargs=(workers,),
    )
    with pool:
        futures = [pool.submit(run_one, planned, db, registry_factory) for planned in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()  # SIGTERM: each marks its run interrupted and stops
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def import_ray():
    """Ray, or one clear line saying how to get it."""
    try:
        import ray
    except ImportError:
        raise ForgetbenchError(
            "--executor ray needs Ray: pip install 'forgetbench[ray]' (or pip install ray)"
        ) from None
    return ray


def run_ray(
    todo: list[PlannedRun],
    db: str | None,
    registry_factory: RegistryFactory,
    address: str | None = None,
    cpus_per_run: float = 1.0,
) -> Iterator[Outcome]:
    """Outcomes as runs finish on a Ray cluster (``address``; else ``$RAY_ADDRESS``, else a
    local one). Ray reuses its worker processes, so a worker runs several runs in turn."""
    ray = import_ray()
    if not ray.is_initialized():
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, log_to_driver=False)
        if callable(handler):  # Ray installs its own; SIGTERM stays an interruption
            signal.signal(signal.SIGTERM, handler)
    remote = ray.remote(num_cpus=cpus_per_run)(run_one)
    pending = [remote.remote(planned, db, registry_factory) for planned in todo]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def execute_sweep(
    todo: list[PlannedRun],
    db: str | None,
    executor: str = "local",
    workers: int = 1,
    registry_factory: RegistryFactory = None,
    ray_address: str | None = None,
) -> Iterator[Outcome]:
    """The outcomes of ``todo`` on the chosen executor, as they finish."""
    if executor == "ray":
        return run_ray(todo, db, registry_factory, ray_address)
    return run_local(todo, db, workers, registry_factory)


def progress_line(done: int, total: int, outcome: Outcome) -> str:
    """``[3/12] ok mixcd(mix_ratio=0.1) seed 0: run 17 (12 s)``."""
    where = f"run {outcome.run_id}" if outcome.run_id is not None else "no run stored"
    status = "ok" if outcome.ok else "FAILED"
    line = f"[{done}/{total}] {status} {outcome.label} seed {outcome.seed}: {where}"
    line += f" ({outcome.seconds:.0f} s)"
    return line if outcome.ok else f"{line}: {outcome.error}"


def sqlite_cluster_warning(store: Store, executor: str) -> str | None:
    """With Ray and a SQLite store: a reminder that only one machine may write it."""
    if executor == "ray" and store.sqlite_path:
        return (
            "note: the store is a SQLite file; fine for Ray on this machine, but a cluster"
            " needs PostgreSQL (--db postgresql+psycopg://...; see docs/comparison.md)"
        )
    return None


def stderr_print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class SweepResult:
    outcomes: list[Outcome]
    skipped: list[PlannedRun]

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]


def check_executor(executor: str, workers: int) -> None:
    """Bad executor settings (and a missing Ray) fail before anything is planned."""
    if executor not in EXECUTORS:
        raise ForgetbenchError(f"--executor must be local or ray, got {executor!r}")
    if workers < 1:
        raise ForgetbenchError(f"--workers must be >= 1, got {workers}")
    if executor == "ray":
        import_ray()


def run_sweep(
    spec: SweepSpec,
    db: str | None = None,
    executor: str = "local",
    workers: int = 1,
    force: bool = False,
    registry_factory: RegistryFactory = None,
    ray_address: str | None = None,
    echo: Callable[[str], None] = stderr_print,
) -> SweepResult:
    """Plan the sweep, run what is not done yet, and report each run as it finishes."""
    check_executor(executor, workers)
    planned = plan(spec, registry_factory() if registry_factory else None)
    store = Store(db)
    todo, skipped = split_done(planned, store, force)
    note = sqlite_cluster_warning(store, executor)
    if note:
        echo(note)
    echo(
        f"sweep: {len(todo)} runs to do, {len(skipped)} already finished"
        + (" (skipped; --force reruns them)" if skipped else "")
    )
    outcomes: list[Outcome] = []
    for outcome in execute_sweep(todo, db, executor, workers, registry_factory, ray_address):
        outcomes.append(outcome)
        echo(progress_line(len(outcomes), len(todo), outcome))
    return SweepResult(outcomes, skipped)
