"""Evaluation of both splits and the metrics derived from before/after, the same for every
family: forgetting and gain of the task's main metrics, and the collateral-damage rate from
per-example success."""

from __future__ import annotations

import numpy as np
import torch

from forgetbench.api import EvalResult, TaskData, TaskMetadata
from forgetbench.context import RunContext
from forgetbench.errors import ForgetbenchError
from forgetbench.store import Metric


def evaluate_splits(
    ctx: RunContext, model: torch.nn.Module, data: TaskData
) -> dict[str, EvalResult]:
    """The task's evaluation of ``model`` (eval mode, inference mode) on both eval splits."""
    model.eval()
    results = {}
    with torch.inference_mode():
        for split, examples in (("prior", data.prior_eval), ("new", data.new_eval)):
            result = ctx.task.evaluate(ctx, model, examples)
            if len(result.success) != len(examples):
                raise ForgetbenchError(
                    f"task {ctx.task.metadata.name!r}: evaluate gave {len(result.success)}"
                    f" per-example results for {len(examples)} {examples.name} examples"
                )
            results[split] = result
    return results


def flat(results: dict[str, EvalResult]) -> dict[str, float]:
    """``{"prior/<metric>": v, "new/<metric>": v}``."""
    return {
        f"{split}/{name}": value
        for split, result in results.items()
        for name, value in result.metrics.items()
    }


def collateral_damage_rate(success_before: np.ndarray, success_after: np.ndarray) -> float:
    """Share of examples right before and wrong after (the negative flip rate)."""
    before = np.asarray(success_before, dtype=bool)
    return float(np.mean(before & ~np.asarray(success_after, dtype=bool)))


def derived_metrics(
    meta: TaskMetadata, before: dict[str, EvalResult], after: dict[str, EvalResult]
) -> list[Metric]:
    """before/after metrics of both splits, plus forgetting, gain and the collateral-damage rate.

    forgetting = prior/before - prior/after of the prior main metric (sign flipped where lower
    is better), gain = new/after - new/before of the new main metric, both in the metric's
    units; cd_rate = share of prior eval examples right before and wrong after.
    """
    rows = [
        Metric(split, stage, name, value, meta.higher_is_better(name))
        for split in ("prior", "new")
        for stage, results in (("before", before), ("after", after))
        for name, value in results[split].metrics.items()
    ]

    def change(split: str, metric: str) -> float:
        if metric not in before[split].metrics:
            raise ForgetbenchError(
                f"task {meta.name!r}: main metric {metric!r} is not among its {split} metrics"
                f" ({', '.join(sorted(before[split].metrics))})"
            )
        sign = 1.0 if meta.higher_is_better(metric) else -1.0
        return sign * (after[split].metrics[metric] - before[split].metrics[metric])

    forgetting = -change("prior", meta.prior_metric)
    rows.append(Metric("prior", "derived", "forgetting", forgetting, higher_is_better=False))
    rows.append(Metric("new", "derived", "gain", change("new", meta.new_metric)))
    damage = collateral_damage_rate(before["prior"].success, after["prior"].success)
    rows.append(Metric("prior", "derived", "cd_rate", damage, higher_is_better=False))
    return rows
