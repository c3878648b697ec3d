"""Pareto frontiers of each method on (prior main metric, new main metric), their hypervolume,
and bootstrap confidence intervals over seeds.

A *method* here is the stack of method names of a run (``mixcd``, ``mixcd+wise-ft``); its
*configs* are every stored config of that stack on the task (mix ratios, budgets, ...). Each
config is one point per seed: (prior/after, new/after) of the task's main metrics, in the
directions the runs stored. Internally both axes are oriented so that higher is better.

WiSE-FT: one run of a stack with ``wise-ft`` is a whole curve of models, one per alpha of its
grid (stored as series). By default each grid point counts as a config of its own, so the
frontier and its score include the trade-off WiSE-FT offers (``collect(wise_ft_grid=False)``
leaves them out).

Frontier score: the hypervolume (area) dominated by a method's frontier of per-config means,
bounded by a reference point on the worse side of both axes, shared by every method compared.
The default reference is the nadir (worst value on each axis) of every point compared: every
config, every seed, and f0 (the prior model before fine-tuning, whose new value is normally the
worst new value), pushed out by 10% of each axis' range so that the extreme points still add
area; larger is better. A method that neither forgets nor learns (at f0) scores only the
margin's small area. The reference is the pair's, so a score means something beside the other
method's of the same comparison, not beside a score from another pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from forgetbench.errors import ForgetbenchError, did_you_mean
from forgetbench.scenario import Scenario, describe, one_scenario, scenario_of
from forgetbench.store import Store, config_labels, latest_runs

Point = tuple[float, float]
REFERENCE_MARGIN = 0.1
WISE_FT = "wise-ft"  # a stack with it stores an alpha grid: series wise-ft/<split>/<metric>


def _orient(point: Point, higher: tuple[bool, bool]) -> Point:
    return tuple(v if up else -v for v, up in zip(point, higher, strict=True))


def dominates(a: Point, b: Point, higher: tuple[bool, bool] = (True, True)) -> bool:
    """``a`` is at least as good as ``b`` on both axes and better on one."""
    a, b = _orient(a, higher), _orient(b, higher)
    return a[0] >= b[0] and a[1] >= b[1] and a != b


def pareto_front(points: Sequence[Point], higher: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the points no other point dominates, ordered by the first axis (best first);
    of equal points only the first (a WiSE-FT run's own point is also its grid's point at the
    deployed alpha)."""
    first = {point: i for i, point in reversed(list(enumerate(points)))}
    front = [
        i
        for point, i in first.items()
        if not any(dominates(other, point, higher) for other in points)
    ]
    return sorted(front, key=lambda i: (-_orient(points[i], higher)[0], i))


def hypervolume(
    points: Sequence[Point], reference: Point, higher: tuple[bool, bool] = (True, True)
) -> float:
    """Area dominated by ``points`` and dominating ``reference`` (2-D hypervolume).

    Sweeps the frontier from the best first-axis value down: each frontier point adds the
    rectangle between the reference's first coordinate, its own second coordinate and the
    previous point's second coordinate. Points not better than the reference on both axes add
    nothing."""
    ref = _orient(reference, higher)
    inside = [p for p in (_orient(p, higher) for p in points) if p[0] > ref[0] and p[1] > ref[1]]
    area, floor = 0.0, ref[1]
    for x, y in sorted(inside, key=lambda p: (-p[0], -p[1])):
        if y > floor:
            area += (x - ref[0]) * (y - floor)
            floor = y
    return area


def front_dominates(
    a: Sequence[Point], b: Sequence[Point], higher: tuple[bool, bool] = (True, True)
) -> bool:
    """Every point of ``b`` is matched or dominated by a point of ``a``, and the two fronts
    differ (so two identical fronts dominate neither way)."""
    covered = all(any(p == q or dominates(p, q, higher) for p in a) for q in b)
    return covered and set(a) != set(b)


@dataclass
class MethodPoints:
    """The configs of one method stack on one task: per-seed (prior/after, new/after); for a
    stack with WiSE-FT also each config's alpha grid, read from its stored series."""

    name: str
    configs: dict[str, dict[int, Point]] = field(default_factory=dict)  # label -> seed -> point
    grid: dict[str, dict[float, dict[int, Point]]] = field(default_factory=dict)  # alpha -> ...
    use_grid: bool = True  # the grid's points count as configs of their own (frontier, score)

    def seeds(self) -> set[int]:
        return {seed for points in self.configs.values() for seed in points}

    def candidates(self) -> dict[str, dict[int, Point]]:
        """Every point a frontier is drawn from: the configs and, with ``use_grid``, each
        WiSE-FT grid point as a config of its own (``label @ alpha=0.25``)."""
        extra = {
            grid_label(label, alpha): points
            for label, alphas in (self.grid.items() if self.use_grid else ())
            for alpha, points in alphas.items()
        }
        return {**self.configs, **extra}

    def means(self, seeds: Sequence[int] | None = None) -> dict[str, Point]:
        """Each candidate's mean point over ``seeds`` (repeats count again; all seeds if None).
        A candidate with none of the seeds is left out."""
        result = {}
        for label, points in self.candidates().items():
            chosen = [points[s] for s in (points if seeds is None else seeds) if s in points]
            if chosen:
                result[label] = (
                    float(np.mean([p[0] for p in chosen])),
                    float(np.mean([p[1] for p in chosen])),
                )
        return result

    def describe(self) -> str:
        """``3`` configs, or ``2+10a`` with 10 WiSE-FT grid points counted in."""
        count = sum(len(alphas) for alphas in self.grid.values()) if self.use_grid else 0
        return f"{len(self.configs)}+{count}a" if count else str(len(self.configs))


def grid_label(label: str, alpha: float) -> str:
    return f"{label} @ alpha={alpha:g}"


@dataclass
class TaskPoints:
    """Everything a comparison or a plot needs of one task."""

    task: str
    prior_metric: str
    new_metric: str
    higher: tuple[bool, bool]
    f0: dict[int, Point] = field(default_factory=dict)  # seed -> (prior/before, new/before)
    methods: dict[str, MethodPoints] = field(default_factory=dict)
    # what they were read from: the latest ok runs and their metrics (``budget`` reads more)
    runs: list[dict] = field(default_factory=list, repr=False)
    values: dict[int, dict[str, float]] = field(default_factory=dict, repr=False)
    scenario: str = "defaults"  # which (forgetbench.scenario.describe)
    left_out: int = 0  # runs of the task's other scenarios

    def method(self, name: str) -> MethodPoints:
        if name not in self.methods:
            raise ForgetbenchError(
                f"no finished runs of method {name!r} on task {self.task!r}"
                + (f" in scenario {self.scenario}" if self.left_out else "")
                + did_you_mean(name, self.methods)
                + f" (stored: {', '.join(sorted(self.methods)) or 'none'}"
                + (
                    f"; other scenarios: {self.left_out} more runs, --scenario)"
                    if self.left_out
                    else ")"
                )
            )
        return self.methods[name]

    def f0_mean(self) -> Point:
        values = list(self.f0.values())
        return (float(np.mean([v[0] for v in values])), float(np.mean([v[1] for v in values])))


def method_name(run: dict) -> str:
    """The method stack of a run: ``mixcd``, ``mixcd+wise-ft``."""
    return "+".join(m["name"] for m in run["config"].get("methods", [])) or run["methods"]


def parse_metrics(text: str | None) -> tuple[str, str] | None:
    """``--metric``: ``NAME`` (the prior and the new task's metric of that name) or
    ``PRIOR,NEW``; None or empty: the task's main metrics."""
    if not text or not text.strip():
        return None
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(parts):
        raise ForgetbenchError(f"--metric takes NAME or PRIOR,NEW (e.g. chrf), got {text!r}")
    return parts[0], parts[1]


def collect(
    store: Store,
    task: str,
    wise_ft_grid: bool = True,
    metrics: tuple[str | None, str | None] | None = None,
    scenario: Scenario | None = None,
) -> TaskPoints:
    """Per-seed points of every method and config of ``task`` (its latest ok run per seed)
    in one scenario (:func:`~forgetbench.scenario.one_scenario`: ``scenario``, else the
    task's defaults where runs have them, else the latest run's), so f0 is one model.

    ``metrics``: the (prior, new) metric names of the two axes; None (for both, or for one)
    keeps the task's main metric. A run that did not store one of them is left out.

    A run whose stack has ``wise-ft`` also gives its alpha grid (series
    ``wise-ft/prior/<prior metric>`` and ``wise-ft/new/<new metric>``, step = 100 * alpha):
    one model per alpha, each a point per seed. With ``wise_ft_grid`` (the default) those
    points count in the method's frontier and score like configs; without, they are kept
    (for plots) but left out of every frontier."""
    runs = latest_runs(store, task)
    if not runs:
        raise ForgetbenchError(f"no finished runs of task {task!r} in {store.location}")
    everything, runs = runs, one_scenario(runs, task, scenario)
    scenarios = list({scenario_of(run): None for run in everything})
    values = store.get_metrics(run["id"] for run in runs)
    directions = store.get_directions(run["id"] for run in runs)
    first = runs[0]
    prior, new = metrics or (None, None)
    prior, new = prior or first["prior_metric"], new or first["new_metric"]
    keys = (f"prior/after/{prior}", f"new/after/{new}")
    higher = _directions(task, runs, values, directions, keys)
    points = TaskPoints(task, prior, new, higher, runs=runs, values=values)
    points.scenario = describe(task, scenario_of(runs[0]), scenarios)
    points.left_out = len(everything) - len(runs)
    labels = config_labels(runs)  # a config is its hash, shown by its label
    for run in runs:
        metric = values[run["id"]]
        if not all(key in metric for key in keys):
            continue
        name, label = method_name(run), labels[run["config_hash"]]
        method = points.methods.setdefault(name, MethodPoints(name, use_grid=wise_ft_grid))
        method.configs.setdefault(label, {})[run["seed"]] = (metric[keys[0]], metric[keys[1]])
        for alpha, point in wise_ft_grid_points(store, run, prior, new).items():
            method.grid.setdefault(label, {}).setdefault(alpha, {})[run["seed"]] = point
        before = (f"prior/before/{prior}", f"new/before/{new}")
        if all(key in metric for key in before):
            points.f0.setdefault(run["seed"], (metric[before[0]], metric[before[1]]))
    return points


def _directions(task: str, runs, values, directions, keys: tuple[str, str]) -> tuple[bool, bool]:
    """Each axis' direction, as the first run that stored its metric gave it; a metric no run
    stored is one error naming the stored ones."""
    check_stored(task, values, keys)
    prior, new = (
        next((directions[run["id"]][key] for run in runs if key in directions[run["id"]]), True)
        for key in keys
    )
    return prior, new


def check_stored(task: str | None, values: dict[int, dict[str, float]], keys) -> None:
    """Every metric key in ``keys`` was stored by some run of ``values`` ({run id: metrics}),
    else one error with a did-you-mean and the names that were stored."""
    scope = f" of task {task!r}" if task else ""
    for key in keys:
        if not any(key in metric for metric in values.values()):
            raise ForgetbenchError(f"no finished run{scope} stored {key}" + _names(values, key))


def _names(values: dict[int, dict[str, float]], key: str) -> str:
    """A did-you-mean and the metric names stored for ``key``'s split, for an error."""
    prefix, _, name = key.rpartition("/")
    stored = sorted(
        {k[len(prefix) + 1 :] for m in values.values() for k in m if k.startswith(prefix + "/")}
    )
    return did_you_mean(name, stored) + f" (stored: {', '.join(stored) or 'none'})"


def wise_ft_grid_points(store: Store, run: dict, prior: str, new: str) -> dict[float, Point]:
    """{alpha: (prior, new)} of a run's stored WiSE-FT grid (empty for other stacks)."""
    if WISE_FT not in method_name(run).split("+"):
        return {}
    names = (f"{WISE_FT}/prior/{prior}", f"{WISE_FT}/new/{new}")
    series: dict[str, dict[int, float]] = {name: {} for name in names}
    for name in names:
        for _, step, value in store.get_series(run["id"], name):
            series[name][step] = value
    steps = sorted(set(series[names[0]]) & set(series[names[1]]))
    return {step / 100: (series[names[0]][step], series[names[1]][step]) for step in steps}


def default_reference(points: TaskPoints, names: Sequence[str]) -> Point:
    """The nadir of every point of ``names`` (every config and seed) and of f0, pushed out by
    ``REFERENCE_MARGIN`` of each axis' range (in the axes' stored directions)."""
    every = [
        p for name in names for c in points.method(name).candidates().values() for p in c.values()
    ]
    every += list(points.f0.values())
    oriented = np.array([_orient(p, points.higher) for p in every])
    low, high = oriented.min(axis=0), oriented.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    nadir = low - REFERENCE_MARGIN * span
    return _orient((float(nadir[0]), float(nadir[1])), points.higher)


def score(method: MethodPoints, reference: Point, higher, seeds=None) -> float:
    """Hypervolume of the method's frontier of config means over ``seeds``."""
    return hypervolume(list(method.means(seeds).values()), reference, higher)


def resample_seeds(seeds: Sequence[int], resamples: int = 2000, seed: int = 0) -> list[list]:
    """``resamples`` draws of ``len(seeds)`` seeds with replacement, from a generator seeded
    with ``seed``: the same arguments give the same draws (one draw serves both methods of a
    paired comparison)."""
    rng = np.random.default_rng(seed)
    seeds = sorted(seeds)
    return [[int(s) for s in rng.choice(seeds, size=len(seeds))] for _ in range(resamples)]


def bootstrap_interval(
    statistic, seeds: Sequence[int], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(resampled_seeds)``: seeds drawn with
    replacement, ``resamples`` times, from a generator seeded with ``seed`` (reproducible)."""
    values = [statistic(chosen) for chosen in resample_seeds(seeds, resamples, seed)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class SeedComparison:
    seed: int
    score_a: float
    score_b: float
    verdict: str  # a | b | equal | neither

    @property
    def difference(self) -> float:
        return self.score_a - self.score_b


@dataclass
class Comparison:
    """A against B on one task: frontier scores on the means over the common seeds, bootstrap
    intervals, the dominance verdict, and the same per seed (paired)."""

    task: TaskPoints
    a: str
    b: str
    seeds: list[int]
    reference: Point
    score_a: float
    score_b: float
    interval_a: tuple[float, float]
    interval_b: tuple[float, float]
    interval_difference: tuple[float, float]
    verdict: str
    per_seed: list[SeedComparison]
    level: float = 0.95

    @property
    def difference(self) -> float:
        return self.score_a - self.score_b


def verdict(a: Sequence[Point], b: Sequence[Point], higher) -> str:
    """``a`` / ``b`` when that front dominates the other, ``equal``, or ``neither`` (they
    cross)."""
    front_a = [a[i] for i in pareto_front(a, higher)]
    front_b = [b[i] for i in pareto_front(b, higher)]
    if front_dominates(front_a, front_b, higher):
        return "a"
    if front_dominates(front_b, front_a, higher):
        return "b"
    return "equal" if set(front_a) == set(front_b) else "neither"


def compare(
    points: TaskPoints,
    a: str,
    b: str,
    reference: Point | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two methods' frontiers on the seeds both have (paired by seed)."""
    if a == b:
        raise ForgetbenchError(f"compare needs two different methods, got {a!r} twice")
    first, second = points.method(a), points.method(b)
    seeds = sorted(first.seeds() & second.seeds())
    if not seeds:
        raise ForgetbenchError(
            f"{a} and {b} have no seed in common on {points.task}: run both with the same seeds"
        )
    reference = reference or default_reference(points, [a, b])
    higher = points.higher

    def both(chosen):
        return score(first, reference, higher, chosen), score(second, reference, higher, chosen)

    score_a, score_b = both(seeds)
    intervals = _intervals(both, seeds, resamples, seed)
    per_seed = [
        SeedComparison(
            s,
            *both([s]),
            verdict(list(first.means([s]).values()), list(second.means([s]).values()), higher),
        )
        for s in seeds
    ]
    return Comparison(
        points,
        a,
        b,
        seeds,
        reference,
        score_a,
        score_b,
        *intervals,
        verdict(list(first.means(seeds).values()), list(second.means(seeds).values()), higher),
        per_seed,
    )


def _intervals(both, seeds: list[int], resamples: int, seed: int) -> list[tuple[float, float]]:
    """Bootstrap intervals of A's score, B's and their difference (``both(seeds)`` gives the
    two scores); nan with one seed, which resampled is that seed every time."""
    if len(seeds) < 2:
        return [(float("nan"), float("nan"))] * 3
    statistics = (
        lambda c: both(c)[0],
        lambda c: both(c)[1],
        lambda c: float(np.subtract(*both(c))),
    )
    return [bootstrap_interval(f, seeds, resamples, seed) for f in statistics]


def summary(result: Comparison) -> str:
    """One sentence: who dominates on the means over the seeds, where the seeds disagree with
    that, and whether the interval of the score difference excludes 0."""
    a, b = result.a, result.b
    low, high = result.interval_difference
    n = len(result.seeds)
    dominance = {
        "a": f"{a}'s frontier dominates {b}'s",
        "b": f"{b}'s frontier dominates {a}'s",
        "equal": f"{a} and {b} have the same frontier",
        "neither": f"the frontiers of {a} and {b} cross: neither dominates",
    }[result.verdict]
    head = f"On the means over {n} seed{'s' if n != 1 else ''}, {dominance}"
    level = f"{result.level:.0%}"
    if n < 2:
        return f"{head}; one seed in common: no interval, run both on more seeds."
    if low > 0 or high < 0:
        winner = a if low > 0 else b
        tail = f"; {winner} scores higher and the {level} interval excludes 0"
    else:
        joiner = ", but" if result.verdict in ("a", "b") else ", and"
        tail = f"{joiner} the {level} interval of the score difference includes 0: no clear winner"
    return f"{head}{seed_disagreement(result)}{tail}."


def seed_disagreement(result: Comparison) -> str:
    """`` (per seed: ...)`` when some seed's verdict is not the means' verdict, else empty."""
    verdicts = Counter(s.verdict for s in result.per_seed)
    if set(verdicts) <= {result.verdict}:
        return ""
    words = {
        "a": f"{result.a} dominates",
        "b": f"{result.b} dominates",
        "equal": "equal",
        "neither": "they cross",
    }
    parts = [f"{words[v]} on {k}" for v, k in verdicts.most_common()]
    parts[0] += f" of {len(result.per_seed)}"
    return f" (per seed: {', '.join(parts)})"
