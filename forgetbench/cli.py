"""The ``forgetbench`` command line (Typer + rich): run, leaderboard, list, show, runs."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shlex
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forgetbench.errors import ForgetbenchError, did_you_mean, interrupt
from forgetbench.progress import PipeSafeConsole

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Benchmark forgetting mitigations for fine-tuning pretrained models.",
)
out = PipeSafeConsole()
err = PipeSafeConsole(stderr=True)
STATE = {"debug": False}
TaskNameOption = Annotated[str, typer.Option("--task", "-t", help="task name")]
ResamplesOption = Annotated[int, typer.Option(help="bootstrap resamples")]
MAX_RESAMPLES = 1_000_000  # each one recomputes both frontiers: more is minutes for nothing
BootstrapSeedOption = Annotated[int, typer.Option(help="seed of the bootstrap")]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="SQLAlchemy URL or SQLite path (default $FORGETBENCH_DB or ./results.db)"
    ),
]

MetricOption = Annotated[
    str | None,
    typer.Option(
        "--metric",
        help="metric of both axes (e.g. chrf), or PRIOR,NEW (default: the task's main metrics)",
    ),
]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="config override key=value, e.g. lr=3e-5 or mixcd.mix_ratio=0.25"),
]
PriorModelOption = Annotated[
    str | None,
    typer.Option(
        help="a ready prior model instead of stage 0: a folder forgetbench wrote, or, for tasks"
        " that read one (mnli, wordnet-qa, squad, m2m100), a transformers checkpoint or hub id"
    ),
]
TrustOption = Annotated[
    bool,
    typer.Option(help="let transformers run model code from a hub repository (off by default)"),
]
ResumeOption = Annotated[
    int | None,
    typer.Option(
        help="continue an unfinished run (from its last checkpoint); other"
        " options are taken from the stored run"
    ),
]
ForceOption = Annotated[
    bool,
    typer.Option(
        "--force",
        help="with --resume: resume a run marked running whose process looks alive"
        " (only when you know it is gone)",
    ),
]
OnlineOption = Annotated[
    bool,
    typer.Option(
        "--online",
        help="let the hub libraries download models and data (off by default: only local"
        " files and the hub cache are used)",
    ),
]
# The variables the hub libraries (huggingface_hub, transformers, datasets) read at import.
HUB_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False):
    STATE["debug"] = debug
    logging.basicConfig(
        level=logging.INFO if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _quiet_libraries() -> None:
    """transformers' own progress bars and notices would interleave with ours."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _check_max_age(max_age: float) -> None:
    from forgetbench.store import HEARTBEAT_SECONDS

    least = 2 * HEARTBEAT_SECONDS / 60  # a live run's heartbeat is at most a minute old
    if not least <= max_age <= 60 * 24 * 365:
        raise ForgetbenchError(
            f"--max-age must be {least:g} to 525600 minutes (a running run refreshes its"
            f" heartbeat every {HEARTBEAT_SECONDS:g} s), got {max_age}"
        )


# The options a resumed run takes from its stored row: giving any of them is refused.
RESUME_FIXED = ("task", "method", "seed", "steps", "set_", "prior_model", "trust_remote_code")


def _resume_alone(ctx: typer.Context, resume: int | None, force: bool) -> None:
    """``--resume`` takes the stored run's config: any option that would change it is refused
    (not silently ignored), even one given at its default value (``--seed 0``); ``--force``
    goes only with it."""
    if resume is None:
        if force:
            raise ForgetbenchError("--force only applies to --resume")
        return
    given = [  # typer carries its own click: its ParameterSource is compared by name
        param.opts[0]
        for param in ctx.command.params
        if param.name in RESUME_FIXED
        and getattr(ctx.get_parameter_source(param.name), "name", "DEFAULT") != "DEFAULT"
    ]
    if given:
        raise ForgetbenchError(
            f"--resume {resume} continues the stored run with its own config: drop"
            f" {', '.join(given)}"
        )


def _hub_network(online: bool) -> None:
    """Without ``--online`` the hub libraries work offline (local files and their cache), so a
    missing model or dataset fails at once instead of after minutes of retries; a value the
    user gave these variables is kept. Must run before the hub libraries are imported."""
    for name in HUB_OFFLINE_VARIABLES:
        if online:
            os.environ[name] = "0"
        else:
            os.environ.setdefault(name, "1")


@app.command()
def run(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Option("--task", "-t", help="task name (forgetbench list)")
    ] = "wordnet",
    method: Annotated[
        list[str] | None,
        typer.Option("--method", "-m", help="method name; repeat to stack methods"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="fine-tuning steps (the same as --set steps=N)")
    ] = None,
    set_: SetOption = None,
    prior_model: PriorModelOption = None,
    trust_remote_code: TrustOption = False,
    resume: ResumeOption = None,
    force: ForceOption = False,
    online: OnlineOption = False,
    db: DbOption = None,
):
    """Run one experiment and store its results."""
    _hub_network(online)
    _quiet_libraries()
    from forgetbench.config import parse_set
    from forgetbench.runner import RunRequest, execute
    from forgetbench.store import Store

    signal.signal(signal.SIGTERM, interrupt)
    _resume_alone(ctx, resume, force)
    request = None
    if resume is None:
        request = RunRequest(
            task=task,
            methods=method or ["finetune"],
            seed=seed,
            steps=steps,
            overrides=parse_set(set_ or []),
            prior_model=prior_model,
            trust_remote_code=trust_remote_code,
        )
    try:
        run_id = execute(request, db=db, resume=resume, force=force)
    except KeyboardInterrupt as interrupted:
        raise typer.Exit(_report_interrupt(interrupted, db)) from None
    from forgetbench import distributed

    if distributed.is_main():  # under a launcher the other processes never read the store
        _print_run(Store(db, read_only=True), run_id)


def _report_interrupt(interrupted: KeyboardInterrupt, db: str | None) -> int:
    """Say which run stopped and how to continue it; returns the exit code, 128 + signal."""
    signum = getattr(interrupted, "signum", signal.SIGINT)
    name = signal.Signals(signum).name
    run_id = getattr(interrupted, "run_id", None)
    if run_id is None:
        _error_line(f"interrupted ({name}) before the run started: nothing was stored")
    else:
        again = f"forgetbench run --resume {run_id}" + (f" --db {shlex.quote(db)}" if db else "")
        _error_line(f"run {run_id} interrupted ({name}); continue it with: {again}")
    return 128 + signum


@app.command()
def leaderboard(
    task: Annotated[str | None, typer.Option("--task", "-t", help="only this task")] = None,
    format_: Annotated[
        str, typer.Option("--format", "-f", help="table | markdown | csv | json")
    ] = "table",
    columns_: Annotated[
        str | None,
        typer.Option(
            "--columns", help="columns to show, by key, e.g. prior_after,new_after,cd_rate"
        ),
    ] = None,
    ci: Annotated[
        bool, typer.Option("--ci", help="± is the 95% confidence interval, not the std")
    ] = False,
    metric: MetricOption = None,
    db: DbOption = None,
):
    """Aggregate finished runs over seeds (mean±std); * marks the Pareto front."""
    _quiet_libraries()
    from forgetbench.frontier import parse_metrics
    from forgetbench.report import as_records, columns, markdown, pick_columns, record_keys
    from forgetbench.report import leaderboard as build
    from forgetbench.store import Store

    if format_ not in ("table", "markdown", "csv", "json"):
        raise ForgetbenchError(f"--format must be table, markdown, csv or json, got {format_!r}")
    metrics = parse_metrics(metric)
    if metrics and task is None:
        raise ForgetbenchError("--metric goes with --task (metric names are a task's)")
    store = Store(db, read_only=True)
    if task is not None:
        _check_task_name(store, task)
    rows = build(store, task, metrics)
    shown = pick_columns(columns(rows), columns_)
    if format_ in ("json", "csv"):
        _print_records(as_records(rows, shown), format_, record_keys(shown))
    elif not rows:
        scope = f" of task {task}" if task else ""
        out.print(f"no finished runs{scope} yet: try 'forgetbench run'")
    elif format_ == "markdown":
        print(markdown(rows, shown, ci))
    else:
        _print_leaderboard(rows, shown, ci, chosen=columns_ is not None, metrics=metrics)


def _print_leaderboard(rows, shown: list[tuple], ci: bool, chosen: bool, metrics=None) -> None:
    """One table per task, fitted to the terminal (80 columns off a terminal), and the
    footnote defining its columns (of ``--metric``'s metrics when given)."""
    from forgetbench.report import render

    tables, notes = render(rows, shown, out.width, ci, chosen, metrics)
    for table in tables:  # wider than the terminal only for --columns that do not fit
        wide = table.min_width or 0  # rich clamps print(width=) to the console's: widen it
        console = out if wide <= out.width else Console(width=wide, file=out.file)
        console.print(table, crop=False)
    for line in notes:
        out.print(line, markup=False, highlight=False)


def _check_task_name(store, task: str) -> None:
    """``--task`` must name an installed task or one with stored runs."""
    from forgetbench.registry import get_registry

    known = set(get_registry().tasks) | {run["task"] for run in store.get_runs()}
    if task not in known:
        raise ForgetbenchError(f"unknown task {task!r}" + did_you_mean(task, known))


def _print_records(records: list[dict], format_: str, header: list[str]) -> None:
    """JSON, or CSV with a header row even when there are no records."""
    if format_ == "json":
        print(json.dumps(records, indent=1))
        return
    buffer = io.StringIO()
    keys = list(dict.fromkeys([*header, *(key for record in records for key in record)]))
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(records)
    print(buffer.getvalue(), end="")


@app.command("list")
def list_plugins(
    method: Annotated[
        str | None, typer.Option("--method", "-m", help="show this method's settings")
    ] = None,
    task: Annotated[
        str | None, typer.Option("--task", "-t", help="show this task's settings and budget")
    ] = None,
):
    """Methods and tasks, with the distribution that provides each; with --method or --task,
    the settings that one takes (--set keys, types, defaults, help)."""
    _quiet_libraries()
    from forgetbench.registry import get_registry

    registry = get_registry()
    if method or task:
        _print_settings(registry, method, task)
        return
    table = Table(title="methods")
    for column in ("name", "provided by", "description"):
        table.add_column(column, overflow="fold")  # names and distributions whole at any width
    for name, entry in sorted(registry.methods.items()):
        table.add_row(name, entry.provider, entry.cls.description)
    console = _list_console()
    console.print(table)
    table = Table(title="tasks")
    for column in ("name", "family", "main metric", "offline", "provided by", "description"):
        table.add_column(column, overflow="fold")
    for name, entry in sorted(registry.tasks.items()):
        meta = entry.cls.metadata
        metric = (
            meta.prior_metric
            if meta.prior_metric == meta.new_metric
            else (f"{meta.prior_metric} / {meta.new_metric}")
        )
        offline = "yes" if meta.offline else "no"
        table.add_row(name, meta.family, metric, offline, entry.provider, meta.description)
    console.print(table)
    for problem in registry.problems:
        err.print(f"[yellow]warning:[/] {escape(problem)}")


def _list_console() -> Console:
    """``list``'s tables off a terminal (a pipe, a file) are 200 columns wide, so descriptions
    and help stay on one line each where the 80 columns rich assumes would fold them. A
    ``COLUMNS`` set now wins; a new console reads it (``out`` kept the one set at import)."""
    if out.is_terminal:
        return out
    columns = os.environ.get("COLUMNS", "")
    return PipeSafeConsole(width=int(columns) if columns.isdigit() else 200)


def _print_settings(registry, method: str | None, task: str | None) -> None:
    """The ``--set`` keys of a method (``<method>.<key>``) or task (``task.<key>``, then the
    training budget it sets: ``steps``, ``lr``, ...)."""
    from forgetbench.config import settings

    console = _list_console()
    for kind, name in (("method", method), ("task", task)):
        if not name:
            continue
        entry = registry.method(name) if kind == "method" else registry.task(name)
        prefix = f"{name}." if kind == "method" else "task."
        described = entry.cls.description if kind == "method" else entry.cls.metadata.description
        table = Table(title=escape(f"{kind} {name}: {described}"))
        for column in ("--set key", "type", "default", "help"):
            table.add_column(column, overflow="fold")
        rows = settings(entry.cls.Config)
        for key, kind_name, default, text in rows:
            table.add_row(escape(prefix + key), escape(kind_name), escape(repr(default)), text)
        if not rows:
            table.add_row("(none)", "", "", "")
        console.print(table)
        if kind == "task" and getattr(entry.cls, "train_defaults", None):
            budget = ", ".join(f"{k}={v}" for k, v in entry.cls.train_defaults.items())
            console.print(f"its default training budget: {escape(budget)}")


def _print_run(store, run_id: int) -> None:
    from forgetbench.report import format_value

    run = store.get_run(run_id)
    if run is None:
        raise ForgetbenchError(f"no run with id {run_id} in {store.location}")
    table = Table(
        title=escape(
            f"run {run_id}: {run['task']} / {run['methods']} / seed {run['seed']} [{run['status']}]"
        )
    )
    for column in ("split", "metric", "before", "after", "derived"):
        table.add_column(column)
    values = store.get_metrics([run_id])[run_id]
    keys = sorted({(k.split("/")[0], k.split("/", 2)[2]) for k in values})
    for split, name in keys:
        cells = [values.get(f"{split}/{stage}/{name}") for stage in ("before", "after", "derived")]
        table.add_row(split, name, *["" if v is None else format_value(v) for v in cells])
    out.print(table)
    series = _series_table(store.get_series(run_id))
    if series is not None:
        out.print(series)
    if run["error"]:
        out.print(f"error: {run['error']}")
    if run["compute"]:
        out.print("compute: " + ", ".join(f"{k}={v}" for k, v in run["compute"].items()))


def _series_table(points: list[tuple[str, int, float]]) -> Table | None:
    """One row per stored series (training loss, mix-cd's per-bin damage-rate estimates,
    WiSE-FT's grid): its points and its first and last value with their steps (None: none)."""
    from forgetbench.report import format_value

    by_name: dict[str, list[tuple[int, float]]] = {}
    for name, step, value in points:
        by_name.setdefault(name, []).append((step, value))
    if not by_name:
        return None
    table = Table(title="series: first and last point (plot --run draws them)")
    for column in ("series", "points", "first", "last"):
        table.add_column(column, justify="left" if column == "series" else "right")
    for name, values in sorted(by_name.items()):
        values.sort()
        (first_step, first), (last_step, last) = values[0], values[-1]
        table.add_row(escape(name), str(len(values)), f"{format_value(first)} @{first_step}",
                      f"{format_value(last)} @{last_step}")  # fmt: skip
    return table


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="run id (see the runs table)")],
    as_json: Annotated[
        bool, typer.Option("--json", help="full provenance, metrics and series as JSON")
    ] = False,
    db: DbOption = None,
):
    """One run: metrics before/after, derived metrics, compute and provenance."""
    from forgetbench.store import Store

    store = Store(db, read_only=True)
    if as_json:
        run = store.get_run(run_id)
        if run is None:
            raise ForgetbenchError(f"no run with id {run_id} in {store.location}")
        run["metrics"] = store.get_metrics([run_id])[run_id]
        run["series"] = [list(point) for point in store.get_series(run_id)]
        print(json.dumps(run, indent=1, default=str))
        return
    _print_run(store, run_id)


@app.command()
def runs(
    status: Annotated[str | None, typer.Option(help="only runs with this status")] = None,
    stale: Annotated[
        bool,
        typer.Option(
            "--stale", help="only runs marked running whose process is gone (crashed, killed)"
        ),
    ] = False,
    mark_failed: Annotated[
        bool,
        typer.Option("--mark-failed", help="mark the stale runs failed (implies --stale)"),
    ] = False,
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age",
            help="minutes without a heartbeat after which a run on another host is stale",
        ),
    ] = 30.0,
    db: DbOption = None,
):
    """List stored runs (all statuses), or the stale ones with --stale."""
    from datetime import timedelta

    from forgetbench.store import STATUSES, Store

    if status is not None and status not in STATUSES:
        raise ForgetbenchError(
            f"--status must be one of {', '.join(STATUSES)}, got {status!r}"
            + did_you_mean(status, STATUSES)
        )
    _check_max_age(max_age)
    if (stale or mark_failed) and status not in (None, "running"):
        raise ForgetbenchError("stale runs are running runs: drop --status")
    store = Store(db, read_only=not mark_failed)
    if stale or mark_failed:
        rows = store.stale_runs(timedelta(minutes=max_age))
        title = f"stale runs (process gone, or no heartbeat for {max_age:g} min)"
    else:
        rows = store.get_runs(status=status)
        title = "runs"
    out.print(_runs_table(rows, title))
    if mark_failed:
        marked = store.mark_stale_failed(timedelta(minutes=max_age))
        ids = ", ".join(map(str, marked)) or "none"
        noun = "run" if len(marked) == 1 else "runs"
        out.print(f"marked {len(marked)} stale {noun} failed ({ids})")


def _runs_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for column in ("id", "task", "methods", "seed", "status", "started", "host", "error"):
        table.add_column(column, overflow="fold")
    for run in rows:
        table.add_row(
            str(run["id"]),
            run["task"],
            escape(run["methods"]),
            str(run["seed"]),
            run["status"],
            str(run["started_at"])[:19],
            f"{run['hostname']}:{run['pid']}" if run["hostname"] else "",
            escape((run["error"] or "")[:80]),
        )
    return table


@app.command()
def sweep(
    method: Annotated[
        list[str],
        typer.Option("--method", "-m", help="a method, or a stack (mixcd+wise-ft); repeat"),
    ],
    task: TaskNameOption = "wordnet",
    grid: Annotated[
        list[str] | None,
        typer.Option(
            help="key=v1,v2,... varied over, e.g. mixcd.mix_ratio=0.1,0.25 or steps=50,100"
        ),
    ] = None,
    seeds: Annotated[str, typer.Option(help="seeds: 0-4, or 0,3,7")] = "0",
    set_: SetOption = None,
    workers: Annotated[int, typer.Option(help="local worker processes (1: this one)")] = 1,
    executor: Annotated[str, typer.Option(help="local | ray (the ray extra)")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default $RAY_ADDRESS or local)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="rerun finished runs too")] = False,
    db: DbOption = None,
):
    """Run a grid of methods x config values x seeds; finished identical runs are skipped."""
    _hub_network(False)
    _quiet_libraries()
    from forgetbench.config import parse_set
    from forgetbench.sweep import SweepSpec, parse_grid, parse_seeds, run_sweep

    signal.signal(signal.SIGTERM, interrupt)
    spec = SweepSpec(
        task, method, parse_grid(grid or []), parse_seeds(seeds), parse_set(set_ or [])
    )
    try:
        result = run_sweep(spec, db, executor, workers, force, ray_address=ray_address)
    except KeyboardInterrupt as interrupted:
        signum = getattr(interrupted, "signum", signal.SIGINT)
        stopped = getattr(interrupted, "run_id", None)
        which = f" (run {stopped} marked interrupted)" if stopped is not None else ""
        _error_line(
            f"sweep interrupted ({signal.Signals(signum).name}){which}: run the same sweep"
            " again to continue; finished runs are skipped"
        )
        raise typer.Exit(128 + signum) from None
    _print_sweep_summary(result)
    if result.failed:
        raise typer.Exit(1)


def _print_sweep_summary(result) -> None:
    ok = len(result.outcomes) - len(result.failed)
    out.print(
        f"sweep done: {ok} ok, {len(result.failed)} failed, {len(result.skipped)} skipped"
        " (already finished)",
        highlight=False,
    )
    for outcome in result.failed:
        where = f"run {outcome.run_id}" if outcome.run_id is not None else "no run stored"
        out.print(
            f"failed: {outcome.label} seed {outcome.seed} ({where}): {outcome.error}",
            markup=False,
            highlight=False,
        )


ScenarioOption = Annotated[
    list[str] | None,
    typer.Option(
        "--scenario",
        help="the runs' task settings: task.KEY=VALUE or prior_model=PATH, repeatable, as given"
        " to run (default: the task's defaults, else the latest run's)",
    ),
]


def _scenario(task: str, items: list[str] | None):
    from forgetbench.scenario import parse_scenario

    return parse_scenario(task, items) if items else None


WiseFtGridOption = Annotated[
    bool,
    typer.Option(
        "--wise-ft-grid/--no-wise-ft-grid",
        help="count each WiSE-FT alpha grid point as a config in the frontier",
    ),
]


def _check_bootstrap(resamples: int, seed: int) -> None:
    if not 100 <= resamples <= MAX_RESAMPLES:
        raise ForgetbenchError(f"--resamples must be 100 to {MAX_RESAMPLES:,}, got {resamples}")
    if not 0 <= seed < 2**63:
        raise ForgetbenchError(f"--seed (the bootstrap's) must be >= 0, got {seed}")


@app.command()
def compare(
    method_a: Annotated[str, typer.Argument(help="a method (stack), e.g. mixcd")],
    method_b: Annotated[str, typer.Argument(help="the method to compare it with, e.g. random")],
    task: TaskNameOption = "wordnet",
    resamples: ResamplesOption = 2000,
    seed: BootstrapSeedOption = 0,
    reference: Annotated[
        str | None,
        typer.Option(help="reference point PRIOR,NEW of the frontier score (default: nadir)"),
    ] = None,
    wise_ft_grid: WiseFtGridOption = True,
    metric: MetricOption = None,
    scenario: ScenarioOption = None,
    db: DbOption = None,
):
    """Does A's Pareto frontier dominate B's? Frontier scores with bootstrap intervals."""
    from forgetbench.frontier import collect, parse_metrics
    from forgetbench.frontier import compare as compare_frontiers
    from forgetbench.report import comparison_tables, parse_reference
    from forgetbench.store import Store

    _check_bootstrap(resamples, seed)
    store = Store(db, read_only=True)
    _check_task_name(store, task)
    points = collect(store, task, wise_ft_grid, parse_metrics(metric), _scenario(task, scenario))
    result = compare_frontiers(
        points, method_a, method_b, parse_reference(reference), resamples, seed
    )
    for renderable in comparison_tables(result):
        out.print(renderable)


@app.command()
def budget(
    method_a: Annotated[str, typer.Argument(help="the method to match, e.g. mixcd")],
    method_b: Annotated[str, typer.Argument(help="the method whose samples count, e.g. random")],
    task: TaskNameOption = "wordnet",
    resamples: ResamplesOption = 2000,
    seed: BootstrapSeedOption = 0,
    metric: Annotated[
        str | None,
        typer.Option(help="the prior metric to match (default: the task's main metric)"),
    ] = None,
    scenario: ScenarioOption = None,
    db: DbOption = None,
):
    """How many rehearsed samples B needs to reach each A config's prior/after (the ratio)."""
    from forgetbench.budget import budget as match_budget
    from forgetbench.budget import budget_tables
    from forgetbench.store import Store

    _check_bootstrap(resamples, seed)
    store = Store(db, read_only=True)
    _check_task_name(store, task)
    chosen = _scenario(task, scenario)
    result = match_budget(
        store, task, method_a, method_b, resamples, seed, metric=metric, scenario=chosen
    )
    for renderable in budget_tables(result):
        out.print(renderable)


@app.command()
def plot(
    task: Annotated[str | None, typer.Option("--task", "-t", help="prior-vs-new plot")] = None,
    run_id: Annotated[
        int | None, typer.Option("--run", help="curves of one run instead (loss, mix-cd)")
    ] = None,
    out_path: Annotated[
        str | None, typer.Option("--out", "-o", help="PNG or SVG file (default by name)")
    ] = None,
    title: Annotated[str | None, typer.Option(help="title of the task plot")] = None,
    wise_ft_grid: WiseFtGridOption = True,
    metric: MetricOption = None,
    scenario: ScenarioOption = None,
    db: DbOption = None,
):
    """Plot a task's prior-vs-new frontiers, or one run's curves, to PNG or SVG."""
    from forgetbench.frontier import parse_metrics
    from forgetbench.plot import plot_run, plot_task
    from forgetbench.store import Store

    if (task is None) == (run_id is None):
        which = "not both" if task is not None else "one of them"
        raise ForgetbenchError(f"give --task T (frontiers) or --run ID (curves), {which}")
    if out_path is not None and not out_path.strip():
        raise ForgetbenchError("--out is empty: give a file name ending in .png or .svg")
    if (metric is not None or scenario) and task is None:
        raise ForgetbenchError("--metric and --scenario go with --task (the frontier plot)")
    store = Store(db, read_only=True)
    if task is not None:
        _check_task_name(store, task)
        metrics = parse_metrics(metric)
        chosen = _scenario(task, scenario)
        path = plot_task(
            store, task, out_path or f"{task}.png", title, wise_ft_grid, metrics, chosen
        )
    else:
        path = plot_run(store, run_id, out_path or f"run-{run_id}.png")
    out.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)  # a path whole


@app.command("new-plugin")
def new_plugin(
    kind: Annotated[str, typer.Argument(help="method, task or family")],
    name: Annotated[str, typer.Argument(help="its name, e.g. my-method")],
    family: Annotated[
        str | None, typer.Option(help="task family to build on (forgetbench list)")
    ] = None,
    directory: Annotated[
        str | None, typer.Option(help="where to write it (default ./forgetbench-NAME)")
    ] = None,
):
    """Write a ready-to-install plugin distribution: pyproject, module, test, README."""
    from pathlib import Path

    from forgetbench.scaffold import new_method, new_task
    from forgetbench.scaffold_family import new_family

    if kind not in ("method", "task", "family"):
        raise ForgetbenchError(f"new-plugin makes a method, a task or a family, got {kind!r}")
    if kind != "task" and family is not None:
        raise ForgetbenchError("--family goes with new-plugin task (and only there)")
    if kind == "task" and family is None:
        from forgetbench.registry import get_registry

        families = sorted({e.cls.metadata.family for e in get_registry().tasks.values()})
        raise ForgetbenchError(
            f"new-plugin task needs --family, the family the task extends: one of"
            f" {', '.join(families)} (a new family: forgetbench new-plugin family NAME)"
        )
    target = Path(directory or f"forgetbench-{name}")
    if kind == "method":
        written = new_method(name, target)
    elif kind == "task":
        written = new_task(name, family, target)
    else:
        written = new_family(name, target)
    out.print(
        f"wrote {written}: pip install -e {written} && pytest {written}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _error_line(message: str) -> None:
    """One line on stderr, whatever the message holds (line breaks become spaces)."""
    err.print(" ".join(str(message).split()), markup=False, highlight=False, soft_wrap=True)


def _usage_error(error: typer.TyperException) -> int:
    """click's usage errors as one line naming the parameter; click's exit code (2)."""
    message = error.format_message()
    if message:  # empty when click already printed the help (no arguments at all)
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "forgetbench"
        _error_line(f"error: {message} (see '{command} --help')")
    return error.exit_code


def main() -> None:
    """Console entry point: one clear error line and a non-zero exit (1 for errors, 2 for
    usage errors, 128 + signal for an interrupted run); a traceback only with --debug."""
    debug = "--debug" in sys.argv[1:]
    try:
        code = app(standalone_mode=False)
    except ForgetbenchError as error:
        if debug:
            raise
        failed = f"run {error.run_id} failed: " if error.run_id is not None else ""
        _error_line(f"error: {failed}{error}")
        sys.exit(1)
    except typer.TyperException as error:
        sys.exit(_usage_error(error))
    except typer.Abort:
        _error_line("aborted")
        sys.exit(1)
    except Exception as error:
        if debug:
            raise
        # a database error's own message, not SQLAlchemy's dump of the statement
        detail = getattr(error, "orig", None) or error
        run_id, origin = getattr(error, "run_id", None), getattr(error, "forgetbench_origin", "")
        failed = f"run {run_id} failed: " if run_id is not None else ""
        _error_line(
            f"error: {failed}{type(error).__name__}: {detail}{origin} (rerun with --debug for"
            " the traceback)"
        )
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit, and Ctrl-C outside a run (130)
        sys.exit(code)
