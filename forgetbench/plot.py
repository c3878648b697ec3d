"""``forgetbench plot``: a task's prior-vs-new scatter (every method's configs with error bars
over seeds, each method's Pareto frontier, f0, WiSE-FT's alpha grid as a curve) and one run's
curves (training loss, mix-cd's per-bin damage-rate estimates, the WiSE-FT grid).

matplotlib's object API without pyplot: no global figure state and no display needed (the Agg
renderer writes PNG; SVG has its own).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from forgetbench.errors import ForgetbenchError
from forgetbench.frontier import MethodPoints, TaskPoints, collect, pareto_front
from forgetbench.scenario import Scenario
from forgetbench.store import Store

FORMATS = (".png", ".svg", ".pdf")
MAX_LEGEND_BINS = 12


def _check_out(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ForgetbenchError(f"--out {path}: give a .png or .svg file (or .pdf)")
    if not path.parent.is_dir():
        raise ForgetbenchError(f"--out {path}: the directory {path.parent} does not exist")
    return path


def _configs(count: int) -> str:
    return f"{count} config" + ("" if count == 1 else "s")


def _axis_label(split: str, metric: str, higher: bool) -> str:
    return f"{split} {metric} after fine-tuning ({'higher' if higher else 'lower'} is better)"


def _draw_method(ax, method: MethodPoints, higher, color) -> None:
    """Each config's mean with std error bars over seeds, and the method's frontier (over its
    configs and, when they count, its WiSE-FT grid points: the frontier ``compare`` scores)."""
    labels = sorted(method.configs)
    points = [np.array(list(method.configs[label].values())) for label in labels]
    means = np.array([p.mean(axis=0) for p in points])
    spread = np.array([p.std(axis=0, ddof=1) if len(p) > 1 else np.zeros(2) for p in points])
    grid = " + alpha grid" if method.use_grid and method.grid else ""
    ax.errorbar(
        means[:, 0], means[:, 1], xerr=spread[:, 0], yerr=spread[:, 1], fmt="o", ms=5,
        color=color, alpha=0.85, capsize=2,
        label=f"{method.name} ({_configs(len(labels))}{grid})",
    )  # fmt: skip
    candidates = list(method.means().values())
    front = pareto_front(candidates, higher)
    if len(front) > 1:
        ordered = np.array(sorted(candidates[i] for i in front))
        ax.plot(ordered[:, 0], ordered[:, 1], "-", color=color, alpha=0.6, lw=1.5)


def _wise_ft_curves(points: TaskPoints) -> dict[str, np.ndarray]:
    """{config label: rows (alpha, prior, new) averaged over seeds} of every WiSE-FT grid
    ``collect`` read (series ``wise-ft/<split>/<metric>``, step = 100 * alpha)."""
    return {
        label: np.array(
            [(alpha, *np.mean(list(alphas[alpha].values()), axis=0)) for alpha in sorted(alphas)]
        )
        for method in points.methods.values()
        for label, alphas in method.grid.items()
    }


def plot_task(
    store: Store,
    task: str,
    out: str | Path,
    title: str | None = None,
    wise_ft_grid: bool = True,
    metrics: tuple[str, str] | None = None,
    scenario: Scenario | None = None,
) -> Path:
    """Prior/after (x) against new/after (y) for every method of ``task`` in one scenario (as
    in ``compare``); writes ``out``. ``wise_ft_grid``: WiSE-FT's grid points count in its
    frontier (as in ``compare``); ``metrics``: the (prior, new) metrics of the axes (default:
    the task's main metrics)."""
    path = _check_out(out)
    points = collect(store, task, wise_ft_grid, metrics, scenario)
    figure = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = figure.add_subplot()
    colors = itertools.cycle(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
    for name in sorted(points.methods):
        color = next(colors)
        _draw_method(ax, points.methods[name], points.higher, color)
    curves = _wise_ft_curves(points)
    for curve in curves.values():
        ax.plot(curve[:, 1], curve[:, 2], "--", marker=".", color="grey", lw=1)
        for alpha, x, y in curve[[0, -1]]:
            ax.annotate(f"a={alpha:g}", (x, y), fontsize=7, color="grey")
    if curves:
        ax.plot([], [], "--", color="grey", label=f"WiSE-FT alpha grid ({_configs(len(curves))})")
    if points.f0:
        f0 = points.f0_mean()
        ax.plot(*f0, marker="*", ms=14, color="black", ls="", label="f0 (before fine-tuning)")
    ax.set_xlabel(_axis_label("prior", points.prior_metric, points.higher[0]))
    ax.set_ylabel(_axis_label("new", points.new_metric, points.higher[1]))
    ax.set_title(title or f"{task}: configs (mean ± std over seeds), lines: Pareto frontiers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    figure.savefig(path, dpi=130)
    return path


def _curves(series: list[tuple[str, int, float]], prefix: str) -> dict[str, tuple[list, list]]:
    curves: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for name, step, value in series:
        if name.startswith(prefix):
            curves[name.removeprefix(prefix)][0].append(step)
            curves[name.removeprefix(prefix)][1].append(value)
    return dict(curves)


def plot_run(store: Store, run_id: int, out: str | Path) -> Path:
    """One run's stored curves: training loss, mix-cd's damage rate per bin, the WiSE-FT grid
    (whichever it has), one panel each; writes ``out``."""
    path = _check_out(out)
    run = store.get_run(run_id)
    if run is None:
        raise ForgetbenchError(f"no run with id {run_id} in {store.location}")
    series = store.get_series(run_id)
    panels = [
        ("train/", "training loss", "step", "loss"),
        ("mixcd/alpha/", "mix-cd: estimated damage rate per bin", "step", "alpha"),
        ("wise-ft/", "WiSE-FT grid", "100 x alpha", "metric"),
    ]
    panels = [(p, *rest, _curves(series, p)) for p, *rest in panels if _curves(series, p)]
    if not panels:
        raise ForgetbenchError(f"run {run_id} stored no curves (status {run['status']})")
    figure = Figure(figsize=(6, 3.2 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (_, title, xlabel, ylabel, curves) in zip(axes, panels, strict=True):
        for name, (steps, values) in sorted(curves.items()):
            ax.plot(steps, values, lw=1, label=name)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if 1 < len(curves) <= MAX_LEGEND_BINS:
            ax.legend(fontsize=6)
    figure.suptitle(f"run {run_id}: {run['task']} / {run['methods']} / seed {run['seed']}")
    figure.savefig(path, dpi=130)
    return path
