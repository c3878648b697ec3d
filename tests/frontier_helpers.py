"""Hand-made finished runs on a task ``toy`` for the frontier, plot and budget tests: one
stored run per call, with chosen (prior/after, new/after) points, f0, directions, derived
metrics (``rehearsed``) and series (WiSE-FT's alpha grid)."""

from __future__ import annotations

from forgetbench.store import Metric, Store


def store_run(
    store: Store,
    stack: str,
    label: str,
    seed: int,
    prior: float,
    new: float,
    before: tuple[float, float] = (0.8, 0.1),
    higher: tuple[bool, bool] = (True, True),
    curves=(),
    derived: dict[str, float] | None = None,
    extra: tuple[Metric, ...] = (),
    config_hash: str | None = None,
    task_version: str = "1",
    task: str = "toy",
    task_config: dict | None = None,
    prior_model: str | None = None,
) -> int:
    """A finished run of method stack ``stack`` (config label ``label``) on task ``toy``;
    ``derived`` becomes ``run/derived/<name>`` metrics, ``curves`` its series, ``extra`` is
    stored as well (metrics besides the main ones); ``config_hash`` defaults to one per
    label; ``task_config`` and ``prior_model`` are its scenario (default: none stored)."""
    run_id = store.start_run(
        task=task,
        task_version=task_version,
        family="text-classification",
        prior_metric="accuracy",
        new_metric="accuracy",
        methods=label,
        config={
            "methods": [{"name": name, "config": {}} for name in stack.split("+")],
            "task_config": task_config or {},
            "prior_model": prior_model,
        },
        config_hash=config_hash or f"hash-{label}",
        seed=seed,
        model="m",
        data_fingerprints={},
        versions={},
    )
    metrics = [
        Metric("prior", "after", "accuracy", prior, higher[0]),
        Metric("new", "after", "accuracy", new, higher[1]),
        Metric("prior", "before", "accuracy", before[0], higher[0]),
        Metric("new", "before", "accuracy", before[1], higher[1]),
    ]
    metrics += [Metric("run", "derived", k, v) for k, v in (derived or {}).items()]
    metrics += list(extra)
    store.finish_run(run_id, metrics, list(curves))
    return run_id


def wise_ft_series(
    prior: float, new: float, steps=(0, 50, 100), before: tuple[float, float] = (0.8, 0.1)
) -> list[tuple[str, int, float]]:
    """The grid WiSE-FT stores (step = 100 * alpha): a straight line from f0 (``before``, alpha
    0) to the fine-tuned model (``prior``, ``new``, alpha 1)."""
    series = []
    for step in steps:
        alpha = step / 100
        series.append(("wise-ft/prior/accuracy", step, before[0] + alpha * (prior - before[0])))
        series.append(("wise-ft/new/accuracy", step, before[1] + alpha * (new - before[1])))
    return series
