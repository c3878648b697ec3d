"""Equal rehearsal budget: how many rehearsed samples method B needs to reach the prior/after of
each config of method A (the mix-cd paper's question: "random rehearsal needs ~4x the samples").

Every rehearsal run stores how many prior samples it rehearsed (``run/derived/rehearsed``).
B's configs (mix ratios, budgets) give a curve of (rehearsed samples, prior/after) on means
over the seeds both methods have. Its *monotone envelope* keeps, from the fewest samples up,
each config that beats every config with fewer samples (the best prior/after B reaches with at
most that many samples). For each config of A, B's samples at A's prior/after are read off
that envelope by piecewise-linear interpolation; the ratio is B's samples / A's samples.
Outside the swept range the answer is a bound: ``< x`` when B's smallest budget already
reaches A's prior/after, ``> x`` (not reached) when none of B's configs does, x being B's
largest budget. The prior metric's stored direction is respected (a lower-is-better metric is
flipped, as in ``forgetbench.frontier``).

Interval: a percentile bootstrap over the common seeds (the same draw for both methods:
paired), of the whole computation (A's means, B's curve and envelope, the match). A resample
may give a bound; bounds sort below (``<``) or above (``>``) every exact value, and the
interval's ends are order statistics, so an end can itself be a bound ("> 5.2").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rich import box
from rich.markup import escape
from rich.table import Table

from forgetbench.errors import ForgetbenchError
from forgetbench.frontier import TaskPoints, collect, method_name, resample_seeds
from forgetbench.scenario import Scenario
from forgetbench.store import Store, config_labels

REHEARSED = "run/derived/rehearsed"
RANK = {"<": 0, "=": 1, ">": 2}
LABEL_MIN_WIDTH = 12  # in a narrow terminal, config labels fold down to this width

# one config's per-seed (rehearsed samples, prior/after oriented higher-is-better)
Configs = dict[str, dict[int, tuple[float, float]]]


@dataclass(frozen=True)
class Bound:
    """An exact value (``=``), or a bound when the match left the swept range: ``<`` (at most
    ``value``) or ``>`` (not reached: more than ``value``)."""

    kind: str
    value: float

    def scaled(self, factor: float) -> Bound:
        return Bound(self.kind, self.value * factor)

    def text(self, digits: int = 2) -> str:
        number = f"{self.value:.{digits}f}"
        return number if self.kind == "=" else f"{self.kind}{number}"


def envelope(curve: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (samples, goodness) that beat every point with fewer samples, by samples
    (at equal samples the best one): the best goodness reachable with at most that many."""
    kept: list[tuple[float, float]] = []
    for samples, good in sorted(curve, key=lambda p: (p[0], -p[1])):
        if not kept or good > kept[-1][1]:
            kept.append((samples, good))
    return kept


def samples_to_reach(curve: Sequence[tuple[float, float]], target: float) -> Bound:
    """The samples needed to reach goodness ``target`` along the envelope of ``curve``,
    interpolated linearly between its points; a bound outside the swept range."""
    hull = envelope(curve)
    if not hull:
        raise ForgetbenchError("no configs to interpolate along")
    if target > hull[-1][1]:
        return Bound(">", max(samples for samples, _ in curve))
    if target < hull[0][1]:
        return Bound("<", hull[0][0])
    samples, goods = zip(*hull, strict=True)
    return Bound("=", float(np.interp(target, goods, samples)))


def censored_interval(outcomes: Sequence[Bound], level: float = 0.95) -> tuple[Bound, Bound]:
    """Percentile interval of bootstrap outcomes some of which are bounds: ``<`` outcomes sort
    below the exact ones, ``>`` above; the ends are order statistics (inverted CDF)."""
    order = sorted(outcomes, key=lambda b: (RANK[b.kind], b.value))
    tail, n = (1 - level) / 2, len(order)
    # rounded first: (1 - 0.95) / 2 * 2000 is 50.000000000000044 in floats, whose ceiling
    # would take the 51st value for the 50th
    low = order[max(0, math.ceil(round(tail * n, 9)) - 1)]
    high = order[min(n - 1, math.ceil(round((1 - tail) * n, 9)) - 1)]
    return low, high


@dataclass
class Match:
    """One config of A: its means, B's samples at its prior/after, the ratio, intervals."""

    label: str
    rehearsed: float
    prior: float  # in the metric's stored direction
    needed: Bound
    ratio: Bound | None  # None when A rehearsed nothing
    interval: tuple[Bound, Bound] | None
    per_seed: dict[int, Bound | None]


@dataclass
class Budget:
    task: TaskPoints
    a: str
    b: str
    seeds: list[int]
    curve: list[tuple[str, float, float, bool]]  # B: label, rehearsed, prior, on the envelope
    matches: list[Match]
    level: float = 0.95


def rehearsal_configs(points: TaskPoints, name: str) -> Configs:
    """{config label: {seed: (rehearsed, prior/after oriented)}} of method stack ``name``, from
    the runs ``points`` were collected from."""
    points.method(name)  # a clear error for an unknown method
    runs = [r for r in points.runs if method_name(r) == name]
    labels = config_labels(runs)  # as the frontier's (labels of other stacks never collide)
    values = points.values
    sign = 1.0 if points.higher[0] else -1.0
    key = f"prior/after/{points.prior_metric}"
    configs: Configs = {}
    for run in runs:
        metric = values[run["id"]]
        if key not in metric:
            continue
        if REHEARSED not in metric:
            raise ForgetbenchError(
                f"run {run['id']} ({run['methods']}, seed {run['seed']}) stored no rehearsed"
                f" count ({REHEARSED}): budget compares rehearsal methods (mixcd, random)"
            )
        configs.setdefault(labels[run["config_hash"]], {})[run["seed"]] = (
            metric[REHEARSED],
            sign * metric[key],
        )
    return configs


def means(configs: Configs, seeds: Sequence[int]) -> dict[str, tuple[float, float]]:
    """Each config's mean (rehearsed, goodness) over ``seeds`` (repeats count again); configs
    with none of them are left out."""
    result = {}
    for label, points in configs.items():
        chosen = [points[s] for s in seeds if s in points]
        if chosen:
            result[label] = (
                float(np.mean([p[0] for p in chosen])),
                float(np.mean([p[1] for p in chosen])),
            )
    return result


def ratio_on(a: Configs, b: Configs, label: str, seeds: Sequence[int]) -> Bound | None:
    """B's samples / A's samples at config ``label``'s goodness, on means over ``seeds``
    (None when A rehearsed nothing or a side has none of the seeds)."""
    point, curve = means({label: a[label]}, seeds).get(label), list(means(b, seeds).values())
    if point is None or not curve or point[0] <= 0:
        return None
    return samples_to_reach(curve, point[1]).scaled(1 / point[0])


def match(a: Configs, b: Configs, label: str, seeds: list[int], draws: list[list[int]], level):
    """The ``Match`` of A's config ``label`` on the common ``seeds``, with ``draws`` (bootstrap
    resamples of them) for the interval."""
    rehearsed, good = means({label: a[label]}, seeds)[label]
    needed = samples_to_reach(list(means(b, seeds).values()), good)
    ratio = ratio_on(a, b, label, seeds)
    outcomes = [r for r in (ratio_on(a, b, label, d) for d in draws) if r is not None]
    interval = censored_interval(outcomes, level) if ratio is not None and outcomes else None
    per_seed = {s: ratio_on(a, b, label, [s]) for s in seeds}
    return Match(label, rehearsed, good, needed, ratio, interval, per_seed)


def budget(
    store: Store,
    task: str,
    a: str,
    b: str,
    resamples: int = 2000,
    seed: int = 0,
    level=0.95,
    metric: str | None = None,
    scenario: Scenario | None = None,
) -> Budget:
    """For each config of ``a``: the rehearsed samples ``b`` needs for the same prior/after,
    and the ratio with a paired bootstrap interval over the seeds both have. ``metric``: the
    prior metric matched (default: the task's main metric)."""
    if a == b:
        raise ForgetbenchError(f"budget needs two different methods, got {a!r} twice")
    if metric is not None and (not metric.strip() or "," in metric):
        raise ForgetbenchError(f"budget --metric takes one prior metric name, got {metric!r}")
    points = collect(store, task, False, (metric and metric.strip(), None), scenario)
    first, second = rehearsal_configs(points, a), rehearsal_configs(points, b)
    seeds = sorted({s for c in first.values() for s in c} & {s for c in second.values() for s in c})
    if not seeds:
        raise ForgetbenchError(
            f"{a} and {b} have no seed in common on {task}: run both with the same seeds"
        )
    draws = resample_seeds(seeds, resamples, seed)
    shared = [label for label in sorted(first) if set(first[label]) & set(seeds)]
    matches = [match(first, second, label, seeds, draws, level) for label in shared]
    curve_means = means(second, seeds)
    hull = set(envelope(list(curve_means.values())))
    sign = 1.0 if points.higher[0] else -1.0
    for m in matches:
        m.prior *= sign  # back to the stored direction
    curve = [
        (label, r, sign * g, (r, g) in hull)
        for label, (r, g) in sorted(curve_means.items(), key=lambda item: item[1])
    ]
    return Budget(points, a, b, seeds, curve, matches, level)


def budget_tables(result: Budget) -> list:
    """``forgetbench budget``: A's configs and B's matching samples, B's curve, the per-seed
    ratios, and how to read them, as rich renderables."""
    a, b, prior = result.a, result.b, result.task.prior_metric
    n = len(result.seeds)
    main = Table(
        title=escape(f"{result.task.task}: rehearsed samples {b} needs for the prior/after"
                     f" {prior} of {a}'s configs (means over {n} paired seeds)"),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )  # fmt: skip
    _label_column(main, f"{a} config", [m.label for m in result.matches])
    for header in ("samples", "prior", f"{b} needs", "ratio", "95% CI"):
        main.add_column(escape(header), justify="right", no_wrap=True)
    for m in result.matches:
        ratio = m.ratio.text() if m.ratio else "n/a"
        interval = f"{m.interval[0].text()}..{m.interval[1].text()}" if m.interval else ""
        main.add_row(escape(m.label), f"{m.rehearsed:.0f}", f"{m.prior:.4f}",
                     escape(m.needed.text(0)), escape(ratio), escape(interval))  # fmt: skip
    curve = Table(title=escape(f"{b}'s curve (* on its monotone envelope)"), box=box.SIMPLE_HEAD)
    _label_column(curve, "config", [label for label, *_ in result.curve])
    for header in ("rehearsed", f"prior/after {prior}", ""):
        curve.add_column(escape(header), justify="right", no_wrap=True)
    for label, rehearsed, value, on_hull in result.curve:
        curve.add_row(escape(label), f"{rehearsed:.0f}", f"{value:.4f}", "*" if on_hull else "")
    return [main, curve, _per_seed_table(result), *_notes(result)]


def _label_column(table: Table, header: str, labels: list[str]) -> None:
    """A left column of config labels that folds them (rather than crop) when space is short."""
    width = min(LABEL_MIN_WIDTH, max(map(len, [header, *labels])))
    table.add_column(escape(header), min_width=width, overflow="fold")


def _per_seed_table(result: Budget) -> Table:
    table = Table(title="ratio per seed (that seed's runs alone)", box=box.SIMPLE_HEAD)
    _label_column(table, f"{result.a} config", [m.label for m in result.matches])
    for seed in result.seeds:
        table.add_column(f"seed {seed}", justify="right", no_wrap=True)
    for m in result.matches:
        cells = [r.text() if r else "n/a" for r in m.per_seed.values()]
        table.add_row(escape(m.label), *map(escape, cells))
    return table


def _notes(result: Budget) -> list[str]:
    a, b = result.a, result.b
    notes = [
        f"ratio = {b}'s rehearsed samples / {a}'s at the same prior/after, interpolated"
        f" linearly along {b}'s monotone envelope; '>x': not reached within the swept range"
        f" (x from {b}'s largest budget), '<x': {b}'s smallest budget already reaches it.",
        f"{result.level:.0%} CI: percentile bootstrap over the seeds (paired draws).",
    ]
    notes += [
        f"{m.label}: {b} does not reach its prior/after within the swept range"
        f" (up to {m.needed.value:.0f} samples); sweep larger {b} budgets."
        for m in result.matches
        if m.needed.kind == ">"
    ]
    if len(result.seeds) < 5:
        notes.append(f"only {len(result.seeds)} seeds: run 5 or more for an interval to quote.")
    return [escape(note) for note in notes]
