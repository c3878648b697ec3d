"""The ``forgetbench`` command line (Typer + rich): run, leaderboard, list, show, runs."""

from __future__ import annotations

import csv
import io
import json
import logging
import signal
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from forgetbench.errors import ForgetbenchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Benchmark forgetting mitigations for fine-tuning pretrained models.",
)
out = Console()
err = Console(stderr=True)
STATE = {"debug": False}
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db", help="SQLAlchemy URL or SQLite path (default $FORGETBENCH_DB or ./results.db)"
    ),
]


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="config override key=value, e.g. lr=3e-5 or mixcd.mix_ratio=0.25"),
]
PriorModelOption = Annotated[
    str | None,
    typer.Option(help="a ready prior model (local dir or hub id) instead of stage 0"),
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


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="show full tracebacks")] = False):
    STATE["debug"] = debug
    _quiet_libraries()
    logging.basicConfig(
        level=logging.INFO if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _quiet_libraries() -> None:
    """transformers' own progress bars and notices would interleave with ours."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


@app.command()
def run(
    task: Annotated[
        str, typer.Option("--task", "-t", help="task name (forgetbench list)")
    ] = "wordnet",
    method: Annotated[
        list[str] | None,
        typer.Option("--method", "-m", help="method name; repeat to stack methods"),
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    steps: Annotated[
        int | None, typer.Option(help="fine-tuning steps (overrides train.steps)")
    ] = None,
    set_: SetOption = None,
    prior_model: PriorModelOption = None,
    trust_remote_code: TrustOption = False,
    resume: ResumeOption = None,
    db: DbOption = None,
):
    """Run one experiment and store its results."""
    from forgetbench.config import parse_set
    from forgetbench.runner import RunRequest, execute
    from forgetbench.store import Store

    signal.signal(signal.SIGTERM, _interrupt)
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
    run_id = execute(request, db=db, resume=resume)

    _print_run(Store(db), run_id)


@app.command()
def leaderboard(
    task: Annotated[str | None, typer.Option("--task", "-t", help="only this task")] = None,
    format_: Annotated[
        str, typer.Option("--format", "-f", help="table | markdown | csv | json")
    ] = "table",
    db: DbOption = None,
):
    """Aggregate finished runs over seeds (mean ± std); * marks the Pareto front."""
    from forgetbench.report import as_records, cell, columns
    from forgetbench.report import leaderboard as build
    from forgetbench.store import Store

    if format_ not in ("table", "markdown", "csv", "json"):
        raise ForgetbenchError(f"--format must be table, markdown, csv or json, got {format_!r}")
    rows = build(Store(db), task)
    shown = columns(rows)
    if format_ in ("json", "csv"):
        _print_records(as_records(rows, shown), format_)
        return
    if not rows:
        out.print("no finished runs yet: try 'forgetbench run'")
        return
    headers = ["task", "methods", "seeds", "main metric", *[header for _, header, _ in shown]]
    lines = [
        [row.task, row.methods + (" *" if row.pareto else ""), str(len(row.seeds))]
        + [_main_metric_label(row)]
        + [cell(row, key, decimals) for key, _, decimals in shown]
        for row in rows
    ]
    if format_ == "markdown":
        print("| " + " | ".join(headers) + " |")
        print("|" + "---|" * len(headers))
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
        return
    table = Table(title="forgetbench leaderboard (mean ± std over seeds; * Pareto-optimal)")
    for header in headers:
        table.add_column(header, overflow="fold")
    for cells in lines:
        table.add_row(*cells)
    out.print(table)


def _main_metric_label(row) -> str:
    """``f1``, or ``bleu / chrf`` when the prior and new main metrics differ."""
    prior = row.prior_metric + ("" if row.prior_higher_is_better else " (lower better)")
    new = row.new_metric + ("" if row.new_higher_is_better else " (lower better)")
    return prior if prior == new else f"{prior} / {new}"


def _print_records(records: list[dict], format_: str) -> None:
    if format_ == "json":
        print(json.dumps(records, indent=1))
        return
    buffer = io.StringIO()
    keys = list(dict.fromkeys(key for record in records for key in record))
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(records)
    print(buffer.getvalue(), end="")


@app.command("list")
def list_plugins():
    """Methods and tasks, with the distribution that provides each."""
    from forgetbench.registry import get_registry

    registry = get_registry()
    table = Table(title="methods")
    for column in ("name", "provided by", "description"):
        table.add_column(column)
    for name, entry in sorted(registry.methods.items()):
        table.add_row(name, entry.provider, entry.cls.description)
    out.print(table)
    table = Table(title="tasks")
    for column in ("name", "family", "main metric", "offline", "provided by", "description"):
        table.add_column(column)
    for name, entry in sorted(registry.tasks.items()):
        meta = entry.cls.metadata
        metric = (
            meta.prior_metric
            if meta.prior_metric == meta.new_metric
            else (f"{meta.prior_metric} / {meta.new_metric}")
        )
        offline = "yes" if meta.offline else "no"
        table.add_row(name, meta.family, metric, offline, entry.provider, meta.description)
    out.print(table)
    for problem in registry.problems:
        err.print(f"[yellow]warning:[/] {problem}")


def _print_run(store, run_id: int) -> None:
    run = store.get_run(run_id)
    if run is None:
        raise ForgetbenchError(f"no run with id {run_id} in {store.url}")
    table = Table(
        title=f"run {run_id}: {run['task']} / {run['methods']} / seed {run['seed']}"
        f" [{run['status']}]"
    )
    for column in ("split", "metric", "before", "after", "derived"):
        table.add_column(column)
    values = store.get_metrics([run_id])[run_id]
    keys = sorted({(k.split("/")[0], k.split("/", 2)[2]) for k in values})
    for split, name in keys:
        cells = [values.get(f"{split}/{stage}/{name}") for stage in ("before", "after", "derived")]
        table.add_row(split, name, *["" if v is None else f"{v:.4f}" for v in cells])
    out.print(table)
    if run["error"]:
        out.print(f"error: {run['error']}")
    if run["compute"]:
        out.print("compute: " + ", ".join(f"{k}={v}" for k, v in run["compute"].items()))


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(help="run id (see the runs table)")],
    as_json: Annotated[bool, typer.Option("--json", help="full provenance as JSON")] = False,
    db: DbOption = None,
):
    """One run: metrics before/after, derived metrics, compute and provenance."""
    from forgetbench.store import Store

    store = Store(db)
    if as_json:
        run = store.get_run(run_id)
        if run is None:
            raise ForgetbenchError(f"no run with id {run_id} in {store.url}")
        run["metrics"] = store.get_metrics([run_id])[run_id]
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

    from forgetbench.store import Store

    if max_age <= 0:
        raise ForgetbenchError(f"--max-age must be > 0 minutes, got {max_age}")
    if (stale or mark_failed) and status not in (None, "running"):
        raise ForgetbenchError("stale runs are running runs: drop --status")
    store = Store(db)
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
            run["methods"],
            str(run["seed"]),
            run["status"],
            str(run["started_at"])[:19],
            f"{run['hostname']}:{run['pid']}" if run["hostname"] else "",
            (run["error"] or "")[:80],
        )
    return table


def main() -> None:
    """Console entry point: one clear error line and exit 1 (traceback only with --debug)."""
    debug = "--debug" in sys.argv[1:]
    try:
        app(standalone_mode=False)
    except ForgetbenchError as error:
        if debug:
            raise
        err.print(f"error: {error}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except Exception as error:  # click usage errors and unexpected failures
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        err.print(
            f"error: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
