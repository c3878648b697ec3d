"""Leaderboard: aggregate finished runs over seeds and mark the Pareto front."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from forgetbench.store import Store

# (key, header, decimals): metrics show mean ± std, compute (decimals 0) its mean
COLUMNS = (
    ("prior_after", "prior/after", 4),
    ("forgetting", "forgetting", 4),
    ("new_after", "new/after", 4),
    ("cd_rate", "CD rate", 4),
    ("rehearsal_precision", "rehearsal prec.", 4),
    ("extra_inference", "extra inference", 0),
    ("wall_seconds", "wall s", 0),
)
COMPUTE = ("extra_inference", "wall_seconds")


@dataclass
class Row:
    """One task x method-config cell, aggregated over seeds."""

    task: str
    methods: str
    config_hash: str
    metric: str
    seeds: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    pareto: bool = False

    def mean(self, key: str) -> float:
        values = self.values.get(key, [])
        return sum(values) / len(values) if values else math.nan

    def std(self, key: str) -> float:
        """Sample standard deviation over seeds (0 for one seed)."""
        values = self.values.get(key, [])
        if len(values) < 2:
            return 0.0
        mean = self.mean(key)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def leaderboard(store: Store, task: str | None = None) -> list[Row]:
    """Rows of ``ok`` runs grouped by (task, config hash); failed runs never appear. A seed run
    twice with one config counts once (its latest run)."""
    latest: dict[tuple[str, str, int], dict] = {}
    for run in store.get_runs(status="ok", task=task):  # ordered by id: later reruns win
        latest[run["task"], run["config_hash"], run["seed"]] = run
    runs = list(latest.values())
    values = store.get_metrics(run["id"] for run in runs)
    rows: dict[tuple[str, str], Row] = {}
    for run in runs:
        key = (run["task"], run["config_hash"])
        run_metrics = values[run["id"]]
        main = _main_metric(run_metrics)
        row = rows.setdefault(key, Row(run["task"], run["methods"], run["config_hash"], main))
        row.seeds.append(run["seed"])
        picks = {
            "prior_after": f"prior/after/{row.metric}",
            "new_after": _new_main(run_metrics),
            "forgetting": "prior/derived/forgetting",
            "cd_rate": "prior/derived/cd_rate",
            "rehearsal_precision": "run/derived/rehearsal_precision",
        }
        for column, name in picks.items():
            if name in run_metrics:
                row.values[column].append(run_metrics[name])
        for column in COMPUTE:
            if column in (run["compute"] or {}):
                row.values[column].append(float(run["compute"][column]))
    result = sorted(rows.values(), key=lambda r: (r.task, -_nan_low(r.mean("prior_after"))))
    _mark_pareto(result)
    return result


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def _main_metric(run_metrics: dict[str, float]) -> str:
    names = [k.split("/", 2)[2] for k in run_metrics if k.startswith("prior/after/")]
    return "accuracy" if "accuracy" in names else (sorted(names)[0] if names else "accuracy")


def _new_main(run_metrics: dict[str, float]) -> str:
    names = sorted(k for k in run_metrics if k.startswith("new/after/") and not k.endswith("/loss"))
    preferred = [k for k in names if k.endswith("/accuracy")]
    return (preferred or names or ["new/after/accuracy"])[0]


def _mark_pareto(rows: list[Row]) -> None:
    """A row is Pareto-optimal when no row of its task is at least as good on both prior/after
    and new/after (means over seeds) and strictly better on one."""
    for row in rows:
        point = (row.mean("prior_after"), row.mean("new_after"))
        row.pareto = not any(
            other is not row
            and other.task == row.task
            and other.mean("prior_after") >= point[0]
            and other.mean("new_after") >= point[1]
            and (other.mean("prior_after") > point[0] or other.mean("new_after") > point[1])
            for other in rows
        )


def cell(row: Row, column: str, decimals: int) -> str:
    """Text of one leaderboard cell: mean ± std for metrics, the mean for compute."""
    mean = row.mean(column)
    if math.isnan(mean):
        return "-"
    return f"{mean:.{decimals}f} ± {row.std(column):.{decimals}f}" if decimals else f"{mean:.0f}"


def as_records(rows: list[Row]) -> list[dict]:
    """Plain dicts for csv / json / markdown output."""
    records = []
    for row in rows:
        record = {
            "task": row.task,
            "methods": row.methods,
            "config": row.config_hash[:10],
            "seeds": len(row.seeds),
            "pareto": row.pareto,
        }
        for column, _, _ in COLUMNS:
            if row.values.get(column):
                record[f"{column}_mean"] = round(row.mean(column), 6)
                record[f"{column}_std"] = round(row.std(column), 6)
        records.append(record)
    return records
