"""Leaderboard: aggregate finished runs over seeds, mark the Pareto front, and render it
readably at any width (compact ``mean±spread`` cells, columns chosen to fit, a footnote with
every shown column's definition)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from forgetbench.api import LeaderboardColumn
from forgetbench.errors import ForgetbenchError, did_you_mean
from forgetbench.frontier import check_stored, summary
from forgetbench.registry import Registry, get_registry
from forgetbench.scenario import default_scenario, describe, scenario_of
from forgetbench.store import Store, config_labels, latest_runs

# (key, header, decimals): metrics show mean ± spread, compute (decimals 0, or 1 for ratios)
# its mean. Methods add their own diagnostics (``Method.columns``) after these.
COLUMNS = (
    ("prior_after", "prior/after", 4),
    ("new_after", "new/after", 4),
    ("forgetting", "forgetting", 4),
    ("cd_rate", "CD rate", 4),
)
COMPUTE_COLUMNS = (
    ("compute_x", "compute ×ft", 1),
    ("wall_x", "wall ×ft", 1),
    ("extra_inference", "extra inference", 0),
    ("wall_seconds", "wall s", 0),
)
RATIO_COLUMNS = {"compute_x": "train_samples", "wall_x": "wall_seconds"}
DEFINITIONS = {
    "prior_after": "the prior task's main metric after fine-tuning",
    "new_after": "the new task's main metric after fine-tuning",
    "forgetting": "prior/before - prior/after of the prior main metric (sign flipped where"
    " lower is better)",
    "cd_rate": "collateral-damage rate: share of prior eval examples right before and wrong after",
    "compute_x": "training samples forwarded (with extra inference) relative to the task's"
    " default finetune run (or its only finetune config)",
    "wall_x": "wall time (as in wall s) relative to the same finetune run",
    "extra_inference": "samples forwarded for the method's own inference (frozen model, probes)",
    "wall_seconds": "wall time of the run in seconds, less the time it spent building shared"
    " caches later runs reuse (stage 0, prior caches)",
}
TABLE_DECIMALS = 3  # compact cells: 0.727±0.011
LABEL_MIN_WIDTH = 22  # longer method labels fold onto more lines
# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30; beyond, a Cornish-Fisher
# expansion of the normal quantile is accurate to 1e-3.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class Row:
    """One task x method-config cell, aggregated over seeds."""

    task: str
    methods: str
    config_hash: str
    prior_metric: str
    new_metric: str
    # direction of the main metrics, as the runs stored them
    prior_higher_is_better: bool = True
    new_higher_is_better: bool = True
    method_names: tuple[str, ...] = ()
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    pareto: bool = False
    scenario: tuple = ()  # the task settings and --prior-model (forgetbench.scenario)

    def mean(self, key: str) -> float:
        values = self.values.get(key, [])
        return sum(values) / len(values) if values else math.nan

    def goodness(self, key: str) -> float:
        """The mean of ``prior_after`` / ``new_after`` signed so that higher is better."""
        higher = self.prior_higher_is_better if key == "prior_after" else self.new_higher_is_better
        return self.mean(key) if higher else -self.mean(key)

    def std(self, key: str) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        values = self.values.get(key, [])
        if len(values) < 2:
            return 0.0
        mean = self.mean(key)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))

    def ci95(self, key: str) -> float:
        """Half-width of the 95% Student t interval of the mean over seeds (nan for one
        seed: one value gives no interval)."""
        n = len(self.values.get(key, []))
        if n < 2:
            return math.nan
        return t_quantile_975(n - 1) * self.std(key) / math.sqrt(n)


def leaderboard(
    store: Store, task: str | None = None, metrics: tuple[str, str] | None = None
) -> list[Row]:
    """Rows of ``ok`` runs grouped by (task, config hash) (see :func:`latest_runs`). Main
    metrics and their directions are those each run stored (its task's metadata).

    ``metrics``: (prior, new) metric names to show instead of the main ones (``--metric``):
    prior/after, new/after, forgetting and the Pareto marks are then of those; a run that
    did not store both is left out, and none storing them is one error naming the stored
    ones."""
    runs = latest_runs(store, task)
    values = store.get_metrics(run["id"] for run in runs)
    directions = store.get_directions(run["id"] for run in runs)
    if metrics:
        keys = (f"prior/after/{metrics[0]}", f"new/after/{metrics[1]}")
        check_stored(task, values, keys)
        runs = [run for run in runs if all(key in values[run["id"]] for key in keys)]
    rows: dict[tuple[str, str], Row] = {}
    labels = config_labels(runs)
    for run in runs:
        key = (run["task"], run["config_hash"])
        if key not in rows:
            rows[key] = _new_row(run, directions[run["id"]], metrics, labels[run["config_hash"]])
        _add_run(rows[key], run, values[run["id"]])
    result = sorted(rows.values(), key=lambda r: (r.task, -_nan_low(r.goodness("prior_after"))))
    _mark_pareto(result)
    _relative_compute(result)
    return result


def _new_row(run: dict, directions: dict[str, bool], metrics, label: str) -> Row:
    prior, new = metrics or (run["prior_metric"], run["new_metric"])
    return Row(
        run["task"],
        label,
        run["config_hash"],
        prior,
        new,
        directions.get(f"prior/after/{prior}", True),
        directions.get(f"new/after/{new}", True),
        method_names=tuple(m["name"] for m in run["config"].get("methods", [])),
        scenario=scenario_of(run),
    )


def _add_run(row: Row, run: dict, run_metrics: dict[str, float]) -> None:
    row.seeds.append(run["seed"])
    picks = {
        "prior_after": f"prior/after/{row.prior_metric}",
        "new_after": f"new/after/{row.new_metric}",
        "forgetting": "prior/derived/forgetting",
        "cd_rate": "prior/derived/cd_rate",
    }
    picks.update({k.split("/", 2)[2]: k for k in run_metrics if k.startswith("run/derived/")})
    if row.prior_metric != run["prior_metric"]:  # --metric: forgetting in the chosen metric
        del picks["forgetting"]
        before = run_metrics.get(f"prior/before/{row.prior_metric}")
        if before is not None:
            sign = 1.0 if row.prior_higher_is_better else -1.0
            after = run_metrics[picks["prior_after"]]
            row.values["forgetting"].append(-(sign * (after - before)))
    for column, name in picks.items():
        if name in run_metrics:
            row.values[column].append(run_metrics[name])
    compute = run["compute"] or {}
    if "extra_inference" in compute:
        row.values["extra_inference"].append(float(compute["extra_inference"]))
    if "wall_seconds" in compute:  # warm: what a run takes once the shared caches exist
        warm = compute["wall_seconds"] - compute.get("cache_seconds", 0.0)
        row.values["wall_seconds"].append(float(warm))
    if "forwarded" in compute:
        samples = compute["forwarded"] + compute.get("extra_inference", 0)
        row.values["train_samples"].append(float(samples))


def _relative_compute(rows: list[Row]) -> None:
    """``compute_x`` and ``wall_x``: each run's compute over the mean of its task's reference
    finetune row: plain ``finetune`` at the task's default settings, else the task's only
    finetune config; none without one (one fixed reference per task, so budgets compare)."""
    finetunes: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row.method_names == ("finetune",):
            finetunes[row.task].append(row)
    reference = {
        task: next((r for r in found if r.methods == "finetune"), found[0])
        for task, found in finetunes.items()
        if len(found) == 1 or any(r.methods == "finetune" for r in found)
    }
    for row in rows:
        finetune = reference.get(row.task)
        for column, source in RATIO_COLUMNS.items():
            base = finetune.mean(source) if finetune else math.nan
            if base > 0:
                row.values[column] = [value / base for value in row.values.get(source, [])]


def columns(rows: list[Row], registry: Registry | None = None) -> list[tuple]:
    """(key, header, decimals) of every leaderboard column: the core's, the diagnostics the
    rows' methods declare (``Method.columns``; an uninstalled method adds none), compute."""
    names = {name for row in rows for name in row.method_names}
    return [*COLUMNS, *_method_columns(names, registry), *COMPUTE_COLUMNS]


def _method_columns(names: set[str], registry: Registry | None) -> list[tuple]:
    if not names:
        return []
    columns: dict[str, tuple] = {}
    for column in _declared_columns(registry or get_registry(), sorted(names)):
        columns.setdefault(column.name, (column.name, column.header, column.decimals))
    return list(columns.values())


def _declared_columns(registry: Registry, names: Iterable[str]) -> Iterator[LeaderboardColumn]:
    """The ``LeaderboardColumn``s the methods ``names`` declare (an uninstalled one: none)."""
    for name in names:
        entry = registry.methods.get(name)
        yield from entry.cls.columns if entry else ()


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _mark_pareto(rows: list[Row]) -> None:
    """A row is Pareto-optimal when no row of its task and scenario (task settings and
    ``--prior-model``: another f0 or other data is another problem) is at least as good on
    both prior/after and new/after (means over seeds, in each metric's stored direction) and
    strictly better on one."""
    for row in rows:
        mine = (row.goodness("prior_after"), row.goodness("new_after"))
        row.pareto = not any(
            other is not row
            and (other.task, other.scenario) == (row.task, row.scenario)
            and _dominates(other, mine)
            for other in rows
        )


def _dominates(other: Row, point: tuple[float, float]) -> bool:
    theirs = (other.goodness("prior_after"), other.goodness("new_after"))
    return all(t >= p for t, p in zip(theirs, point, strict=True)) and theirs != point


def format_value(value: float, decimals: int = 4) -> str:
    """``0.7270`` at ``decimals``; a non-zero value too small to show there in two significant
    digits (``3.7e-05``, not ``0.0000``)."""
    if math.isnan(value):
        return "-"
    if value != 0 and abs(value) < 0.5 * 10**-decimals:
        return f"{value:.2g}"
    return f"{value:.{decimals}f}"


def cell(row: Row, column: str, decimals: int, ci: bool = False) -> str:
    """A compact cell: ``0.727±0.011`` (std over seeds, or the 95% interval's half-width
    with ``ci``; no spread for one seed), a ratio ``1.3``, or the mean count for compute."""
    mean = row.mean(column)
    if math.isnan(mean):
        return "-"
    if column in RATIO_COLUMNS or decimals == 0:
        return f"{mean:.{decimals}f}"
    decimals = min(decimals, TABLE_DECIMALS)
    spread = row.ci95(column) if ci else row.std(column)
    if len(row.values[column]) < 2:
        return format_value(mean, decimals)
    return f"{format_value(mean, decimals)}±{format_value(spread, decimals)}"


RECORD_KEYS = ("task", "methods", "config", "seeds", "pareto", "prior_metric", "new_metric")
RECORD_PARTS = ("mean", "std", "ci95")


def record_keys(columns: list[tuple]) -> list[str]:
    """Every key a record of :func:`as_records` may have, in order (a CSV header, also for an
    empty leaderboard)."""
    return [*RECORD_KEYS, *(f"{key}_{part}" for key, _, _ in columns for part in RECORD_PARTS)]


def as_records(rows: list[Row], columns: list[tuple]) -> list[dict]:
    """Plain dicts for csv / json output (full precision: 6 decimals)."""
    records = []
    for row in rows:
        record = {
            "task": row.task,
            "methods": row.methods,
            "config": row.config_hash[:10],
            "seeds": len(row.seeds),
            "pareto": row.pareto,
            "prior_metric": row.prior_metric,
            "new_metric": row.new_metric,
        }
        for column, _, _ in columns:
            if row.values.get(column):
                record[f"{column}_mean"] = round(row.mean(column), 6)
                record[f"{column}_std"] = round(row.std(column), 6)
                interval = row.ci95(column)
                record[f"{column}_ci95"] = None if math.isnan(interval) else round(interval, 6)
        records.append(record)
    return records


def pick_columns(available: list[tuple], wanted: str | None) -> list[tuple]:
    """``--columns prior_after,cd_rate``: those columns by key (or header), in that order."""
    if not wanted:
        return available
    by_name = {key: column for column in available for key in (column[0], column[1])}
    chosen = []
    for name in (part.strip() for part in wanted.split(",") if part.strip()):
        if name not in by_name:
            keys = [column[0] for column in available]
            raise ForgetbenchError(
                f"--columns: unknown column {name!r}"
                + did_you_mean(name, keys)
                + f" (available: {', '.join(keys)})"
            )
        chosen.append(by_name[name])
    return chosen


def _title(row: Row, ci: bool, scenario: str = "") -> str:
    prior = row.prior_metric + ("" if row.prior_higher_is_better else " (lower better)")
    new = row.new_metric + ("" if row.new_higher_is_better else " (lower better)")
    metric = prior if prior == new else f"prior {prior}, new {new}"
    spread = "95% CI" if ci else "std"
    where = f" [{scenario}]" if scenario else ""
    return f"{row.task}{where}: {metric}, mean±{spread} over seeds, * Pareto-optimal"


def _table(
    rows: list[Row], shown: list[tuple], ci: bool, label_width: int | None = None, scenario=""
) -> Table:
    """The table of one task's rows (of one ``scenario``, named in the title where the task has
    several); ``label_width`` cuts the labels (to measure a table whose labels fold)."""
    title = _title(rows[0], ci, scenario)
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False)
    longest = max(len(row.methods) + 2 for row in rows)
    table.add_column("methods", overflow="fold", min_width=min(longest, LABEL_MIN_WIDTH))
    table.add_column("n", justify="right", no_wrap=True)
    cells = [[cell(row, key, decimals, ci) for key, _, decimals in shown] for row in rows]
    for index, (_, header, _) in enumerate(shown):
        widest = max(len(header), *(len(line[index]) for line in cells))  # nothing is cropped
        table.add_column(header, justify="right", no_wrap=True, min_width=widest)
    for row, line in zip(rows, cells, strict=True):
        label = escape((("* " if row.pareto else "  ") + row.methods)[:label_width])
        table.add_row(label, str(len(row.seeds)), *line)
    return table


def needed_width(rows: list[Row], shown: list[tuple], ci: bool = False) -> int:
    """The narrowest a task's table can be (its labels folded): wider than the terminal only
    when ``--columns`` asked for more than fits."""
    console = Console(width=100_000)  # a measurement is clamped to the console's width
    table = _table(rows, shown, ci, LABEL_MIN_WIDTH)
    return Measurement.get(console, console.options, table).minimum


def fit_columns(
    rows: list[Row], available: list[tuple], width: int, ci: bool = False
) -> list[tuple]:
    """The longest prefix of ``available`` (in priority order) whose table fits ``width``
    (the main metrics are always kept). Columns no row has a value for are skipped."""
    present = [c for c in available if any(row.values.get(c[0]) for row in rows)]
    shown: list[tuple] = []
    for column in present:
        candidate = [*shown, column]
        if needed_width(rows, candidate, ci) > width and column[0] not in (
            "prior_after",
            "new_after",
        ):
            break
        shown = candidate
    return shown


def footnote(
    shown: list[tuple], hidden: list[tuple], ci: bool, metrics: tuple[str, str] | None = None
) -> list[str]:
    """Definitions of the shown columns (of ``metrics`` where ``--metric`` chose them), what ±
    means, and which columns were left out."""
    spread = (
        "± half-width of the 95% Student t interval of the mean over seeds"
        if ci
        else "± standard deviation over seeds (--ci for 95% intervals)"
    )
    definitions = _definitions(metrics) | _method_definitions()
    lines = [f"{header}: {definitions.get(key) or 'a diagnostic its method stores'}"
             for key, header, _ in shown]  # fmt: skip
    both = "main metrics" if not metrics else " and ".join(dict.fromkeys(metrics))
    lines += [spread, f"*: no other config of the task, in the same scenario (task settings,"
              f" --prior-model), is as good on both {both}"]  # fmt: skip
    if hidden:
        names = ", ".join(key for key, _, _ in hidden)
        lines.append(f"not shown for width: {names} (--columns to pick, or a wider terminal)")
    return lines


def _method_definitions() -> dict[str, str]:
    """The installed methods' leaderboard columns' definitions (``LeaderboardColumn``)."""
    registry = get_registry()
    columns = _declared_columns(registry, sorted(registry.methods))
    return {column.name: column.definition for column in columns if column.definition}


def _definitions(metrics: tuple[str, str] | None) -> dict[str, str]:
    """The columns' definitions, naming ``--metric``'s metrics instead of the main ones."""
    if not metrics:
        return DEFINITIONS
    prior, new = metrics
    return DEFINITIONS | {
        "prior_after": f"the prior task's {prior} after fine-tuning",
        "new_after": f"the new task's {new} after fine-tuning",
        "forgetting": DEFINITIONS["forgetting"].replace("the prior main metric", prior),
    }


def render(
    rows: list[Row],
    available: list[tuple],
    width: int,
    ci: bool = False,
    chosen: bool = False,
    metrics: tuple[str, str] | None = None,
) -> tuple[list[Table], list[str]]:
    """One table per task and scenario (the task's defaults first) fitting ``width`` (all
    ``available`` columns when ``chosen``), and the footnote lines (of ``metrics`` where
    ``--metric`` chose them)."""
    tables, shown_keys = [], {}
    for task_rows, scenario in _by_scenario(rows):
        shown = available if chosen else fit_columns(task_rows, available, width, ci)
        shown_keys.update({column[0]: column for column in shown})
        table = _table(task_rows, shown, ci, scenario=scenario)
        table.min_width = needed_width(task_rows, shown, ci)  # never crop a chosen column
        tables.append(table)
    present = {c[0] for c in available if any(row.values.get(c[0]) for row in rows)}
    hidden = [c for c in available if c[0] in present and c[0] not in shown_keys]
    return tables, footnote(list(shown_keys.values()), hidden, ci, metrics)


def _by_scenario(rows: list[Row]) -> list[tuple[list[Row], str]]:
    """The rows of each (task, scenario), the task's defaults first, each with its description
    where its task has several scenarios (else "")."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.task, row.scenario].append(row)
    scenarios = defaultdict(list)
    for task, scenario in groups:
        scenarios[task].append(scenario)
    order = sorted(groups, key=lambda key: (key[0], key[1] != default_scenario(key[0])))
    return [
        (
            groups[key],
            describe(key[0], key[1], scenarios[key[0]]) if len(scenarios[key[0]]) > 1 else "",
        )
        for key in order
    ]


def markdown(rows: list[Row], shown: list[tuple], ci: bool = False) -> str:
    """The leaderboard as a Markdown table (every column given, compact cells)."""
    headers = ["task", "methods", "seeds", *[header for _, header, _ in shown]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        label = row.methods.replace("|", "\\|") + (" *" if row.pareto else "")
        cells = [row.task, label, str(len(row.seeds))]
        cells += [cell(row, key, decimals, ci) for key, _, decimals in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_reference(text: str | None) -> tuple[float, float] | None:
    """``--reference 0.5,0.2`` -> (0.5, 0.2): the frontier score's reference (prior, new)."""
    if text is None:
        return None
    try:
        prior, new = (float(part) for part in text.split(","))
    except ValueError:
        raise ForgetbenchError(f"--reference expects PRIOR,NEW numbers, got {text!r}") from None
    if not (math.isfinite(prior) and math.isfinite(new)):
        raise ForgetbenchError(f"--reference must be finite numbers, got {text!r}")
    return prior, new


def _interval(bounds: tuple[float, float]) -> str:
    if any(math.isnan(bound) for bound in bounds):
        return "n/a"
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def comparison_tables(result) -> list:
    """``forgetbench compare``: the frontier scores with their bootstrap intervals, the
    per-seed (paired) scores and differences, and the verdict, as rich renderables."""
    points, a, b = result.task, result.a, result.b
    words = {"a": "A dominates", "b": "B dominates", "equal": "equal", "neither": "cross"}
    reference = f"prior {result.reference[0]:.4g}, new {result.reference[1]:.4g}"
    scores = Table(
        title=escape(
            f"{points.task}: {a} vs {b} (frontier score: the area it dominates, bounded by"
            f" the reference point {reference})"
        ),
        box=box.SIMPLE_HEAD,
    )
    for header in ("method", "configs", "score", f"{result.level:.0%} bootstrap CI"):
        scores.add_column(header, justify="left" if header == "method" else "right")
    for name, value, bounds in (
        (a, result.score_a, result.interval_a),
        (b, result.score_b, result.interval_b),
        (f"{a} - {b}", result.difference, result.interval_difference),
    ):
        count = points.methods[name].describe() if name in points.methods else ""
        scores.add_row(escape(name), count, f"{value:.4f}", _interval(bounds))
    per_seed = Table(
        title=escape(f"paired by seed (same seed, same new-task batches): A = {a}, B = {b}"),
        box=box.SIMPLE_HEAD,
    )
    for header in ("seed", "score A", "score B", "A - B", "frontiers"):
        per_seed.add_column(header, justify="right")
    for seed in result.per_seed:
        per_seed.add_row(
            str(seed.seed),
            f"{seed.score_a:.4f}",
            f"{seed.score_b:.4f}",
            f"{seed.difference:+.4f}",
            escape(words[seed.verdict]),
        )
    notes = [escape(summary(result))]
    if 1 < len(result.seeds) < 5:
        notes.append(
            f"only {len(result.seeds)} seeds in common: run 5 or more for an interval to quote."
        )
    if any("+" in points.methods[name].describe() for name in (a, b)):
        notes.append(
            "configs N+Ma: N configs and M WiSE-FT grid points (one per alpha and config),"
            " each scored as a config of its own (--no-wise-ft-grid leaves them out)."
        )
    return [scores, per_seed, *notes]
