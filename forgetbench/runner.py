"""One run, start to finish: resolve plugins and configs, record provenance, train, evaluate,
store. A run row is written as ``running`` first and finished as ``ok`` (metrics and status in
one transaction) or ``failed`` / ``interrupted`` with the reason."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgetbench import engine
from forgetbench.api import (
    Compute,
    EvalResult,
    Method,
    PriorPredictions,
    RunContext,
    Task,
    TaskData,
)
from forgetbench.cache import cache_root, hash_json
from forgetbench.checkpoint import Checkpointer, checkpoint_dir
from forgetbench.config import TrainConfig, build_config, config_dict, split_overrides
from forgetbench.errors import ForgetbenchError
from forgetbench.registry import Registry, get_registry, run_plugin_manager
from forgetbench.store import Metric, Store

log = logging.getLogger("forgetbench")
CORE_PACKAGES = (
    "forgetbench",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "numpy",
    "safetensors",
    "sqlalchemy",
    "pluggy",
)


@dataclass
class RunRequest:
    """What ``forgetbench run`` asks for."""

    task: str
    methods: list[str] = field(default_factory=lambda: ["finetune"])
    seed: int = 0
    steps: int | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    prior_model: str | None = None
    trust_remote_code: bool = False


def request_from_run(run: dict) -> RunRequest:
    """Rebuild the request of a stored run from its config (for ``--resume``)."""
    config = run["config"]
    overrides = {f"train.{k}": v for k, v in config["train"].items()}
    overrides.update({f"task.{k}": v for k, v in config["task_config"].items()})
    for method in config["methods"]:
        overrides.update({f"{method['name']}.{k}": v for k, v in method["config"].items()})
    return RunRequest(
        task=config["task"],
        methods=[m["name"] for m in config["methods"]],
        seed=run["seed"],
        overrides=overrides,
        prior_model=config["prior_model"],
        trust_remote_code=config.get("trust_remote_code", False),
    )


@dataclass
class ResolvedRun:
    """A request checked against the registry, with every config built and validated."""

    task: Task
    methods: list[Method]
    train: TrainConfig
    providers: dict[str, str]
    config: dict[str, Any]
    config_hash: str


def resolve(request: RunRequest, registry: Registry | None = None) -> ResolvedRun:
    """Validate a request fully before anything is stored or computed."""
    registry = registry or get_registry()
    task_entry = registry.task(request.task)
    if not request.methods:
        raise ForgetbenchError("give at least one --method")
    if len(set(request.methods)) != len(request.methods):
        raise ForgetbenchError(f"a method is given twice: {', '.join(request.methods)}")
    method_entries = [registry.method(name) for name in request.methods]
    task_cls = task_entry.cls
    sections: dict[str, type | None] = {"train": TrainConfig, "task": task_cls.Config}
    sections.update({entry.name: entry.cls.Config for entry in method_entries})
    routed = split_overrides(request.overrides, sections)
    if request.steps is not None:
        routed["train"]["steps"] = request.steps
    train = build_config(TrainConfig, routed["train"], "train", base=task_cls.train_defaults)
    task_config = build_config(task_cls.Config, routed["task"], "task") if task_cls.Config else None
    methods = []
    for entry in method_entries:
        config = (
            build_config(entry.cls.Config, routed[entry.name], entry.name)
            if entry.cls.Config
            else None
        )
        methods.append(entry.cls(config))
    run_plugin_manager(methods)  # firstresult conflicts are errors before anything runs
    config = {
        "task": task_cls.metadata.name,
        "task_version": task_cls.metadata.version,
        "task_config": config_dict(task_config),
        "train": config_dict(train),
        "methods": [{"name": m.name, "config": config_dict(m.config)} for m in methods],
        "prior_model": request.prior_model,
    }
    if request.trust_remote_code:  # recorded only when on, so default configs keep their hash
        config["trust_remote_code"] = True
    providers = {"task": task_entry.provider}
    providers.update({entry.name: entry.provider for entry in method_entries})
    return ResolvedRun(task_cls(task_config), methods, train, providers, config, hash_json(config))


def _changed(config: Any, default: Any) -> str:
    """``k=v,...`` for the fields of ``config`` that differ from ``default``."""
    reference = config_dict(default)
    changed = {k: v for k, v in config_dict(config).items() if reference.get(k) != v}
    return ",".join(f"{k}={v}" for k, v in sorted(changed.items()))


def method_label(
    methods: list[Method],
    train: TrainConfig | None = None,
    train_default: TrainConfig | None = None,
) -> str:
    """``mixcd(mix_ratio=0.2)+wise-ft [lr=0.001]``: method names with their non-default
    settings, then the training settings that differ from the task's defaults."""
    parts = []
    for method in methods:
        args = _changed(method.config, method.default_config()) if method.config else ""
        parts.append(f"{method.name}({args})" if args else method.name)
    label = "+".join(parts)
    if train is not None and train_default is not None:
        changed = _changed(train, train_default)
        if changed:
            label += f" [{changed}]"
    return label


def package_versions(extra: dict[str, str]) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in sorted({*CORE_PACKAGES, *extra.values()}):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_sha() -> str | None:
    """The commit of the forgetbench source tree, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def derived_metrics(
    task: Task, before: dict[str, EvalResult], after: dict[str, EvalResult]
) -> list[Metric]:
    """before/after metrics of both splits, plus forgetting, gain and the collateral-damage rate.

    forgetting = prior/before - prior/after of the prior main metric (sign flipped where lower
    is better), gain = new/after - new/before of the new main metric, both in the metric's
    units; cd_rate = share of prior eval examples right before and wrong after (negative flip
    rate).
    """
    meta = task.metadata
    rows = []
    for split in ("prior", "new"):
        for stage, results in (("before", before), ("after", after)):
            for name, value in results[split].metrics.items():
                rows.append(Metric(split, stage, name, value, meta.higher_is_better(name)))

    def change(split: str, metric: str) -> float:
        sign = 1.0 if meta.higher_is_better(metric) else -1.0
        return sign * (after[split].metrics[metric] - before[split].metrics[metric])

    rows.append(
        Metric(
            "prior",
            "derived",
            "forgetting",
            -change("prior", meta.prior_metric),
            higher_is_better=False,
        )
    )
    rows.append(Metric("new", "derived", "gain", change("new", meta.new_metric)))
    right_before, right_after = before["prior"].correct, after["prior"].correct
    if right_before is not None and right_after is not None:
        damage = float(np.mean(right_before & ~right_after))
        rows.append(Metric("prior", "derived", "cd_rate", damage, higher_is_better=False))
    return rows


def _evaluate(
    task: Task, model: torch.nn.Module, data: TaskData, ctx: RunContext
) -> dict[str, EvalResult]:
    model.eval()
    with torch.inference_mode():
        return {
            "prior": task.evaluate(model, data.prior_eval, ctx),
            "new": task.evaluate(model, data.new_eval, ctx),
        }


def _flat(results: dict[str, EvalResult]) -> dict[str, float]:
    return {
        f"{split}/{k}": v for split, result in results.items() for k, v in result.metrics.items()
    }


def _chain(hook_caller, **kwargs):
    """Call a chaining hook's implementations in pluggy's call order, threading ``model``."""
    for impl in reversed(hook_caller.get_hookimpls()):
        result = impl.function(**{name: kwargs[name] for name in impl.argnames})
        if result is not None:
            kwargs["model"] = result
    return kwargs["model"]


def execute(
    request: RunRequest | None,
    db: str | None = None,
    registry: Registry | None = None,
    resume: int | None = None,
) -> int:
    """Run one experiment and store it; returns the run id. Raises on failure after marking
    the run row ``failed`` (or ``interrupted``).

    ``resume`` continues a stored run that did not finish (its row is reused and ``request``
    is ignored): from its last checkpoint when there is one, else from the start. A run whose
    (config, seed) has a checkpoint left by an interrupted run resumes from it automatically.
    """
    if resume is not None:
        store = Store(db)
        previous = store.get_run(resume)
        if previous is None:
            raise ForgetbenchError(f"no run with id {resume} in {store.url}")
        if previous["status"] == "ok":
            raise ForgetbenchError(f"run {resume} already finished (status ok)")
        request = request_from_run(previous)
    if request is None:
        raise ForgetbenchError("nothing to run: give a request or a run to resume")
    resolved = resolve(request, registry)  # bad input fails before anything is stored
    if resume is None:
        store = Store(db)
    task, methods = resolved.task, resolved.methods
    if resume is not None:
        if resolved.config_hash != previous["config_hash"]:
            raise ForgetbenchError(
                f"run {resume}'s stored config no longer resolves to the"
                " same config (a plugin changed); start a new run instead"
            )
        run_id = resume
        store.reopen_run(run_id, versions=package_versions(resolved.providers), git_sha=git_sha())
    else:
        run_id = store.start_run(
            task=task.metadata.name,
            task_version=task.metadata.version,
            methods=method_label(methods, resolved.train, TrainConfig(**type(task).train_defaults)),
            config=resolved.config,
            config_hash=resolved.config_hash,
            seed=request.seed,
            model=request.prior_model or "stage-0",
            data_fingerprints={},
            versions=package_versions(resolved.providers),
            git_sha=git_sha(),
        )
    try:
        _run(request, resolved, store, run_id)
    except KeyboardInterrupt:
        store.fail_run(run_id, "interrupted (SIGINT/SIGTERM)", status="interrupted")
        raise
    except BaseException as error:
        store.fail_run(run_id, f"{type(error).__name__}: {error}")
        raise
    return run_id


def _run(request: RunRequest, resolved: ResolvedRun, store: Store, run_id: int) -> None:
    started = time.perf_counter()
    task, methods, train = resolved.task, resolved.methods, resolved.train
    hooks = run_plugin_manager(methods).hook
    engine.seed_everything(request.seed)
    accelerator = engine.make_accelerator(train)
    compute = Compute()
    ctx = RunContext(
        run_id=run_id,
        seed=request.seed,
        device=accelerator.device,
        task=task,
        train=train,
        cache_dir=cache_root(),
        compute=compute,
        logger=log,
        trust_remote_code=request.trust_remote_code,
    )
    data = task.load_data(ctx)
    store.update_run(run_id, data_fingerprints=data.fingerprints())
    bundle = task.prepare_prior(ctx, data, request.prior_model)
    store.update_run(run_id, model=f"{bundle.source}@{bundle.identity[:16]}")

    engine.seed_everything(request.seed)  # the new head's init must not depend on stage-0 work
    shared = {name for name, _ in bundle.model.named_parameters()}
    model = task.init_new_task(bundle, data, ctx).to(accelerator.device)
    new_names = frozenset(name for name, _ in model.named_parameters() if name not in shared)

    def batches(split, batch_size=None, extra=False):
        """Inference batches over ``split``; ``extra=True`` charges them to extra inference."""
        counter = Compute() if extra else compute
        for batch in engine.eval_batches(
            task,
            bundle.tokenizer,
            split,
            batch_size or train.eval_batch_size,
            accelerator.device,
            counter,
        ):
            if extra:
                compute.extra_inference += len(batch["ids"])
            yield batch

    memo: dict[str, Any] = {}

    def prior_predictions() -> PriorPredictions:
        """f0's predictions on prior train, from the shared cache; only valid before training
        starts (the model is still f0 then), so later first calls are refused."""
        if "value" not in memo:
            if memo.get("frozen"):
                raise ForgetbenchError(
                    "prior predictions must be requested before training (in setup or"
                    " prior_sampler)"
                )
            memo["value"] = engine.prior_predictions(
                task,
                bundle.model,
                bundle.tokenizer,
                data.prior_train,
                bundle.identity,
                train,
                accelerator.device,
            )
        return memo["value"]

    ctx = dataclasses.replace(
        ctx, new_param_names=new_names, batches=batches, prior_predictions=prior_predictions
    )
    before = _evaluate(task, model, data, ctx)
    hooks.forgetbench_setup(ctx=ctx, model=model, data=data)
    # The sampler comes before any wrapper: the prior cache must see f0 unchanged.
    sampler = hooks.forgetbench_prior_sampler(ctx=ctx, data=data)
    memo.setdefault("frozen", True)
    model = hooks.forgetbench_wrap_model(ctx=ctx, model=model) or model
    checkpointer = Checkpointer(
        checkpoint_dir(resolved.config_hash, request.seed),
        train.checkpoint_every,
        extra_state=lambda: {
            "methods": {m.name: m.state_dict() for m in methods},
            "compute": compute.as_dict(),
        },
        load_extra_state=lambda state: _load_extra_state(state, methods, compute),
        on_save=lambda step: store.heartbeat(run_id),
    )
    engine.seed_everything(request.seed)
    model, curve = engine.train_loop(
        task,
        model,
        bundle.tokenizer,
        data.new_train,
        ctx,
        accelerator,
        hooks=hooks,
        sampler=sampler,
        prior_split=data.prior_train,
        needs_features=any(m.needs_features for m in methods),
        label="fine-tuning",
        checkpointer=checkpointer,
    )
    model = _chain(
        hooks.forgetbench_finalize,
        ctx=ctx,
        model=model,
        evaluate=lambda candidate: _flat(_evaluate(task, candidate, data, ctx)),
    )
    after = _evaluate(task, model, data, ctx)
    results = derived_metrics(task, before, after)
    for extra in hooks.forgetbench_diagnostics(ctx=ctx):
        if extra:
            results += [Metric("run", "derived", k, v) for k, v in extra.get("metrics", {}).items()]
            curve += list(extra.get("series", []))
    compute.wall_seconds = engine.elapsed(started)
    store.finish_run(run_id, results, curve, compute.as_dict())
    checkpointer.clear()


def _load_extra_state(state: dict, methods: list[Method], compute: Compute) -> None:
    for method in methods:
        method.load_state_dict(state["methods"].get(method.name, {}))
    for key, value in state["compute"].items():
        setattr(compute, key, value)
