"""Leaderboard: aggregate finished runs over seeds and mark the Pareto front."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from forgetbench.registry import Registry, get_registry
from forgetbench.store import Store

# (key, header, decimals): metrics show mean ± std, compute (decimals 0) its mean. Methods add
# their own diagnostics (``Method.columns``) after these.
COLUMNS = (
    ("prior_after", "prior/after", 4),
    ("forgetting", "forgetting", 4),
    ("new_after", "new/after", 4),
    ("cd_rate", "CD rate", 4),
)
COMPUTE_COLUMNS = (
    ("extra_inference", "extra inference", 0),
    ("wall_seconds", "wall s", 0),
)


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


def leaderboard(store: Store, task: str | None = None) -> list[Row]:
    """Rows of ``ok`` runs grouped by (task, config hash); failed runs never appear. A seed run
    twice with one config counts once (its latest run). Main metrics and their directions are
    those each run stored (its task's metadata)."""
    latest: dict[tuple[str, str, int], dict] = {}
    for run in store.get_runs(status="ok", task=task):  # ordered by id: later reruns win
        latest[run["task"], run["config_hash"], run["seed"]] = run
    runs = list(latest.values())
    values = store.get_metrics(run["id"] for run in runs)
    directions = store.get_directions(run["id"] for run in runs)
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        key = (run["task"], run["config_hash"])
        if key not in rows:
            rows[key] = _new_row(run, directions[run["id"]])
        _add_run(rows[key], run, values[run["id"]])
    result = sorted(rows.values(), key=lambda r: (r.task, -_nan_low(r.goodness("prior_after"))))
    _mark_pareto(result)
    return result


def _new_row(run: dict, directions: dict[str, bool]) -> Row:
    prior, new = run["prior_metric"], run["new_metric"]
    return Row(
        run["task"],
        run["methods"],
        run["config_hash"],
        prior,
        new,
        directions.get(f"prior/after/{prior}", True),
        directions.get(f"new/after/{new}", True),
        method_names=tuple(m["name"] for m in run["config"].get("methods", [])),
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
    for column, name in picks.items():
        if name in run_metrics:
            row.values[column].append(run_metrics[name])
    for column, _, _ in COMPUTE_COLUMNS:
        if column in (run["compute"] or {}):
            row.values[column].append(float(run["compute"][column]))


def columns(rows: list[Row], registry: Registry | None = None) -> list[tuple]:
    """(key, header, decimals) of every leaderboard column: the core's, the diagnostics the
    rows' methods declare (``Method.columns``; an uninstalled method adds none), compute."""
    names = {name for row in rows for name in row.method_names}
    return [*COLUMNS, *_method_columns(names, registry), *COMPUTE_COLUMNS]


def _method_columns(names: set[str], registry: Registry | None) -> list[tuple]:
    if not names:
        return []
    registry = registry or get_registry()
    columns: dict[str, tuple] = {}
    for name in sorted(names):
        entry = registry.methods.get(name)
        for column in entry.cls.columns if entry else ():
            columns.setdefault(column.name, (column.name, column.header, column.decimals))
    return list(columns.values())


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _mark_pareto(rows: list[Row]) -> None:
    """A row is Pareto-optimal when no row of its task is at least as good on both prior/after
    and new/after (means over seeds, in each metric's stored direction) and strictly better on
    one."""
    for row in rows:
        mine = (row.goodness("prior_after"), row.goodness("new_after"))
        row.pareto = not any(
            other is not row and other.task == row.task and _dominates(other, mine)
            for other in rows
        )


def _dominates(other: Row, point: tuple[float, float]) -> bool:
    theirs = (other.goodness("prior_after"), other.goodness("new_after"))
    return all(t >= p for t, p in zip(theirs, point, strict=True)) and theirs != point


def cell(row: Row, column: str, decimals: int) -> str:
    """Text of one leaderboard cell: mean ± std for metrics, the mean for compute."""
    mean = row.mean(column)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{decimals}f} ± {row.std(column):.{decimals}f}" if decimals else f"{mean:.0f}"


RECORD_KEYS = ("task", "methods", "config", "seeds", "pareto", "prior_metric", "new_metric")


def record_keys(columns: list[tuple]) -> list[str]:
    """Every key a record of :func:`as_records` may have, in order (a CSV header, also for an
    empty leaderboard)."""
    return [*RECORD_KEYS, *(f"{key}_{part}" for key, _, _ in columns for part in ("mean", "std"))]


def as_records(rows: list[Row], columns: list[tuple]) -> list[dict]:
    """Plain dicts for csv / json / markdown output."""
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
        records.append(record)
    return records
