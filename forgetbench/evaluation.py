"""Evaluation of both splits and the metrics derived from before/after, the same for every
family: forgetting and gain of the task's main metrics, and the collateral-damage rate from
per-example success. The prior split's evaluation before fine-tuning is cached on disk, keyed
by f0's state (:func:`evaluate_before`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from forgetbench.api import EvalResult, Split, TaskData, TaskMetadata
from forgetbench.cache import cached_dir, hash_json
from forgetbench.context import RunContext, make_batch, to_device
from forgetbench.errors import ForgetbenchError
from forgetbench.fingerprint import evaluation_settings, task_identity
from forgetbench.store import Metric

EVAL_CACHE_OFF_ENV = "FORGETBENCH_NO_EVAL_CACHE"
EVAL_CACHE_KIND = "prior-eval"
TIMINGS = ("wall_seconds", "cache_seconds")  # Compute's timings: not charged on a cache hit


def evaluate_split(ctx: RunContext, model: torch.nn.Module, split: Split) -> EvalResult:
    """The task's evaluation of ``model`` on one split, its per-example results checked."""
    result = ctx.task.evaluate(ctx, model, split)
    if len(result.success) != len(split):
        raise ForgetbenchError(
            f"task {ctx.task.metadata.name!r}: evaluate gave {len(result.success)}"
            f" per-example results for {len(split)} {split.name} examples"
        )
    return result


def evaluate_splits(
    ctx: RunContext, model: torch.nn.Module, data: TaskData
) -> dict[str, EvalResult]:
    """The task's evaluation of ``model`` (eval mode, inference mode) on both eval splits."""
    model.eval()
    with torch.inference_mode():
        return {
            "prior": evaluate_split(ctx, model, data.prior_eval),
            "new": evaluate_split(ctx, model, data.new_eval),
        }


def evaluate_before(
    ctx: RunContext, model: torch.nn.Module, data: TaskData
) -> tuple[dict[str, EvalResult], str]:
    """Both splits before fine-tuning, and where the prior split's result came from: ``hit``
    (the cache), ``miss`` (evaluated, then cached) or ``off`` (evaluated, not cached).

    The prior split's result depends on f0 alone, not on the run seed, the methods or the new
    task's fresh parameters: it is cached keyed by everything that can change it
    (:func:`prior_eval_key`). Its compute counts as evaluation inference whether served from
    the cache or not, and it runs with the random generators' state saved and restored, so a
    hit leaves the run exactly where a miss would. The new split is evaluated every run."""
    model.eval()
    with torch.inference_mode():
        prior, status = _prior_before(ctx, model, data)
        return {"prior": prior, "new": evaluate_split(ctx, model, data.new_eval)}, status


def eval_cache_enabled(ctx: RunContext) -> bool:
    """On unless ``FORGETBENCH_NO_EVAL_CACHE`` is set (not 0) or the task sets
    ``cache_prior_before = False``."""
    off = os.environ.get(EVAL_CACHE_OFF_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return not off and getattr(ctx.task, "cache_prior_before", True)


def _prior_before(
    ctx: RunContext, model: torch.nn.Module, data: TaskData
) -> tuple[EvalResult, str]:
    split = data.prior_eval
    key = prior_eval_key(ctx, model, data) if eval_cache_enabled(ctx) else None
    if key is None:
        return _isolated(ctx, model, split)[0], "off"
    fresh: list[EvalResult] = []

    def build(directory: Path) -> dict:
        result, spent = _isolated(ctx, model, split)
        fresh.append(result)
        np.save(directory / "success.npy", result.success, allow_pickle=False)
        if result.score is not None:
            np.save(directory / "score.npy", result.score, allow_pickle=False)
        document = {"metrics": result.metrics, "compute": spent, "size": len(split)}
        (directory / "result.json").write_text(json.dumps(document, indent=1))
        return {"task": ctx.task.metadata.name, "split": split.name, "size": len(split)}

    entry = cached_dir(EVAL_CACHE_KIND, key, build)
    if fresh:
        return fresh[0], "miss"
    document = json.loads((entry / "result.json").read_text())
    success = np.load(entry / "success.npy", allow_pickle=False)
    score = (
        np.load(entry / "score.npy", allow_pickle=False) if (entry / "score.npy").exists() else None
    )
    if len(success) != len(split) or document["size"] != len(split):
        raise ForgetbenchError(f"cache entry {entry} does not fit {split.name}: delete it")
    for name, count in document["compute"].items():  # the protocol's cost, cached or not
        setattr(ctx.compute, name, getattr(ctx.compute, name) + count)
    return EvalResult(document["metrics"], success, score), "hit"


@contextlib.contextmanager
def random_state_kept(ctx: RunContext) -> Iterator[None]:
    """Python's, numpy's and torch's random state (the run device's too) as they were before,
    whatever the block draws."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [ctx.device] if torch.device(ctx.device).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _isolated(
    ctx: RunContext, model: torch.nn.Module, split: Split
) -> tuple[EvalResult, dict[str, int]]:
    """The prior split's evaluation as the cache stores it (metrics as JSON numbers, success as
    booleans), with the compute it counted; Python's, numpy's and torch's random state are
    restored afterwards (a hit, which runs nothing, must leave them the same)."""
    counted = dataclasses.asdict(ctx.compute)
    with random_state_kept(ctx):
        result = evaluate_split(ctx, model, split)
    spent = {
        name: value - counted[name]
        for name, value in dataclasses.asdict(ctx.compute).items()
        if name not in TIMINGS and value != counted[name]
    }
    metrics = json.loads(json.dumps(result.metrics, default=float))
    success = np.asarray(result.success, dtype=bool)
    score = None if result.score is None else np.asarray(result.score)
    return EvalResult(metrics, success, score), spent


def prior_eval_key(ctx: RunContext, model: torch.nn.Module, data: TaskData) -> str | None:
    """The cache key of the prior split's evaluation before fine-tuning: the task (class,
    name, version, config, source code), the split's contents, the prior model (its bundle's
    identity and extras, and a digest of every ``state_dict`` entry and buffer but the
    parameters ``init_new_task`` added) and what can change the numbers (evaluation batch,
    precision, device, threads, TF32 and determinism flags, installed package versions).
    None (no caching) when f0's state cannot be hashed or no f0 parameter is left."""
    try:
        state = prior_state_digest(model, ctx.new_param_names)
    except (RuntimeError, TypeError, ValueError) as error:
        ctx.logger.info("prior evaluation not cached: f0's state cannot be hashed (%s)", error)
        return None
    if state is None:
        return None
    bundle = ctx.bundle
    return hash_json(
        {
            "v": 1,
            **task_identity(ctx.task),
            "split": [data.prior_eval.name, data.prior_eval.fingerprint(), data.provenance],
            "model": [bundle.identity, bundle.source, _value_digest(bundle.extras)]
            if bundle
            else None,
            "state": state,
            "settings": evaluation_settings(ctx),
        }
    )


def prior_state_digest(model: torch.nn.Module, exclude: frozenset[str]) -> str | None:
    """sha256 over the names, dtypes, shapes and bytes of ``model``'s state (``state_dict``
    and buffers) but the entries named in ``exclude``; None when no parameter is left."""
    parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    state = {**dict(model.named_buffers()), **model.state_dict(keep_vars=True)}
    digest, kept = hashlib.sha256(), 0
    for name in sorted(state):
        if name in exclude:
            continue
        kept += name in parameters
        digest.update(name.encode() + b"\0")
        _tensor_digest(digest, state[name])
    return digest.hexdigest() if kept else None


def _tensor_digest(digest, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"a state entry is a {type(tensor).__name__}, not a tensor")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest.update(f"{flat.dtype}|{tuple(tensor.shape)}\0".encode())
    digest.update(flat.view(torch.uint8).numpy())  # any dtype, bf16 included, as raw bytes


def _value_digest(value) -> str:
    """A digest of a bundle's extras: tensors and arrays by their bytes, the rest as JSON."""
    digest = hashlib.sha256()

    def walk(item) -> None:
        if isinstance(item, torch.Tensor):
            _tensor_digest(digest, item)
        elif isinstance(item, np.ndarray):
            _tensor_digest(digest, torch.from_numpy(np.ascontiguousarray(item)))
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                digest.update(f"{key!s}\0".encode())
                walk(item[key])
        elif isinstance(item, list | tuple):
            digest.update(f"[{len(item)}\0".encode())
            for element in item:
                walk(element)
        else:
            digest.update(json.dumps(item, default=repr).encode() + b"\0")

    walk(value)
    return digest.hexdigest()


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


def probe_feature_taps(
    ctx: RunContext, model: torch.nn.Module, data: TaskData, methods: list[str]
) -> None:
    """Check what ``methods`` (those that train on feature taps, LDIFS) will read, before
    anything is evaluated: ``forward(..., with_features=True)`` on two prior-train examples
    must give ``features`` as a non-empty list of ``[2, D]`` tensors. One pass in eval mode
    under inference mode, not counted; the random state and every module's mode are restored,
    so the run's numbers are those it gives without the check."""
    examples = data.prior_train.examples[:2]
    rows = range(len(examples))
    batch = make_batch(ctx.task, ctx.bundle, examples, rows, [True] * len(examples))
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with random_state_kept(ctx), torch.inference_mode(), ctx.autocast():
            inputs = to_device(batch, ctx.device).inputs
            features = ctx.task.forward(model, inputs, with_features=True).features
    finally:
        for module, training in modes:
            module.training = training
    if not _taps_fit(features, len(examples)):
        shapes = [tuple(getattr(f, "shape", ())) for f in features or []]
        raise ForgetbenchError(
            f"task {ctx.task.metadata.name!r}: forward(inputs, with_features=True) must give"
            f" PerSample.features as a list of [B, D] tensors, one per tap, which"
            f" {', '.join(methods)} train(s) on; for {len(examples)} examples it gave"
            f" {shapes if features else features!r}"
        )


def _taps_fit(features, size: int) -> bool:
    return (
        isinstance(features, list | tuple)
        and len(features) > 0
        and all(
            isinstance(f, torch.Tensor) and f.dim() == 2 and f.shape[0] == size for f in features
        )
    )
