"""One run, start to finish: resolve plugins and configs, record provenance, train, evaluate,
store. A run row is written as ``running`` first and finished as ``ok`` (metrics and status in
one transaction) or ``failed`` / ``interrupted`` with the reason."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from forgetbench import engine
from forgetbench.api import Compute, Method, Task, TaskData
from forgetbench.cache import cache_root, hash_json
from forgetbench.checkpoint import Checkpointer, checkpoint_dir
from forgetbench.config import TrainConfig, build_config, config_dict, split_overrides
from forgetbench.context import RunContext
from forgetbench.errors import ForgetbenchError
from forgetbench.evaluation import derived_metrics, evaluate_splits, flat
from forgetbench.prior import prepare_prior
from forgetbench.provenance import git_sha, package_versions
from forgetbench.registry import Registry, get_registry, run_plugin_manager
from forgetbench.store import Metric, Store

log = logging.getLogger("forgetbench")


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
    store, request, resolved, run_id = _open_run(request, db, registry, resume)
    try:
        Run(request, resolved, store, run_id).execute()
    except KeyboardInterrupt:
        store.fail_run(run_id, "interrupted (SIGINT/SIGTERM)", status="interrupted")
        raise
    except BaseException as error:
        store.fail_run(run_id, f"{type(error).__name__}: {error}")
        raise
    return run_id


def _open_run(
    request: RunRequest | None, db: str | None, registry: Registry | None, resume: int | None
) -> tuple[Store, RunRequest, ResolvedRun, int]:
    """Validate everything, then write (or reopen, for ``resume``) the run row."""
    if resume is None:
        if request is None:
            raise ForgetbenchError("nothing to run: give a request or a run to resume")
        resolved = resolve(request, registry)  # bad input fails before anything is stored
        store = Store(db)
        return store, request, resolved, _start_row(store, request, resolved)
    store = Store(db)
    previous = store.get_run(resume)
    if previous is None:
        raise ForgetbenchError(f"no run with id {resume} in {store.url}")
    if previous["status"] == "ok":
        raise ForgetbenchError(f"run {resume} already finished (status ok)")
    request = request_from_run(previous)
    resolved = resolve(request, registry)
    if resolved.config_hash != previous["config_hash"]:
        raise ForgetbenchError(
            f"run {resume}'s stored config no longer resolves to the"
            " same config (a plugin changed); start a new run instead"
        )
    store.reopen_run(resume, versions=package_versions(resolved.providers), git_sha=git_sha())
    return store, request, resolved, resume


def _start_row(store: Store, request: RunRequest, resolved: ResolvedRun) -> int:
    task = resolved.task
    meta = task.metadata
    return store.start_run(
        task=meta.name,
        task_version=meta.version,
        family=meta.family,
        prior_metric=meta.prior_metric,
        new_metric=meta.new_metric,
        methods=method_label(
            resolved.methods, resolved.train, TrainConfig(**type(task).train_defaults)
        ),
        config=resolved.config,
        config_hash=resolved.config_hash,
        seed=request.seed,
        model=request.prior_model or "stage-0",
        data_fingerprints={},
        versions=package_versions(resolved.providers),
        git_sha=git_sha(),
    )


class Run:
    """One run as named steps: context, data, prior model, new task, evaluate, set up the
    methods, fine-tune, finalise, evaluate, store."""

    def __init__(self, request: RunRequest, resolved: ResolvedRun, store: Store, run_id: int):
        self.request, self.resolved, self.store, self.run_id = request, resolved, store, run_id
        self.task, self.methods = resolved.task, resolved.methods
        self.hooks = run_plugin_manager(self.methods).hook

    def execute(self) -> None:
        started = time.perf_counter()
        ctx = self.make_context()
        data = self.load_data(ctx)
        model = self.init_model(ctx, data)
        before = evaluate_splits(ctx, model, data)
        model, sampler = self.setup_methods(ctx, model, data)
        model, curve = self.fine_tune(ctx, model, data, sampler)
        model = _chain(
            self.hooks.forgetbench_finalize,
            ctx=ctx,
            model=model,
            evaluate=lambda candidate: flat(evaluate_splits(ctx, candidate, data)),
        )
        after = evaluate_splits(ctx, model, data)
        results, curve = self.diagnostics(
            ctx, derived_metrics(self.task.metadata, before, after), curve
        )
        ctx.compute.wall_seconds = engine.elapsed(started)
        self.store.finish_run(self.run_id, results, curve, ctx.compute.as_dict())
        self.checkpointer.clear()

    def make_context(self) -> RunContext:
        engine.seed_everything(self.request.seed)
        self.accelerator = engine.make_accelerator(self.resolved.train)
        return RunContext(
            run_id=self.run_id,
            seed=self.request.seed,
            task=self.task,
            train=self.resolved.train,
            device=self.accelerator.device,
            logger=log,
            cache_dir=cache_root(),
            trust_remote_code=self.request.trust_remote_code,
            accelerator=self.accelerator,
        )

    def load_data(self, ctx: RunContext) -> TaskData:
        """The task's splits, refused when one is empty; their fingerprints are stored."""
        data = self.task.load_data(ctx)
        for split in data.splits():
            if len(split) == 0:
                raise ForgetbenchError(
                    f"task {self.task.metadata.name!r}: split {split.name} is empty"
                    " (check the task's size settings)"
                )
        self.store.update_run(self.run_id, data_fingerprints=data.fingerprints())
        return data

    def init_model(self, ctx: RunContext, data: TaskData) -> torch.nn.Module:
        """f0 plus what the new task adds (seeded with the run seed), on the run's device."""
        bundle = prepare_prior(self.task, ctx, data, self.request.prior_model)
        self.store.update_run(self.run_id, model=f"{bundle.source}@{bundle.identity[:16]}")
        engine.seed_everything(self.request.seed)  # the new head's init must not depend on stage 0
        shared = {name for name, _ in bundle.model.named_parameters()}
        model = self.task.init_new_task(ctx, bundle, data).to(self.accelerator.device)
        new_names = frozenset(n for n, _ in model.named_parameters() if n not in shared)
        ctx.attach(bundle, new_names, data.prior_train)
        return model

    def setup_methods(self, ctx: RunContext, model: torch.nn.Module, data: TaskData):
        """Setup hooks, then the prior sampler (it must see f0 unchanged), then wrappers."""
        self.hooks.forgetbench_setup(ctx=ctx, model=model, data=data)
        sampler = self.hooks.forgetbench_prior_sampler(ctx=ctx, data=data)
        ctx.prior_cache.freeze()
        model = self.hooks.forgetbench_wrap_model(ctx=ctx, model=model) or model
        return model, sampler

    def fine_tune(self, ctx: RunContext, model: torch.nn.Module, data: TaskData, sampler):
        methods, compute = self.methods, ctx.compute
        self.checkpointer = Checkpointer(
            checkpoint_dir(self.resolved.config_hash, self.request.seed),
            ctx.train.checkpoint_every,
            extra_state=lambda: {
                "methods": {m.name: m.state_dict() for m in methods},
                "compute": compute.as_dict(),
            },
            load_extra_state=lambda state: _load_extra_state(state, methods, compute),
            on_save=lambda step: self.store.heartbeat(self.run_id),
        )
        engine.seed_everything(self.request.seed)
        loop = engine.TrainLoop(
            ctx,
            self.accelerator,
            data.new_train,
            hooks=self.hooks,
            sampler=sampler,
            prior_split=data.prior_train,
            needs_features=any(m.needs_features for m in methods),
            label="fine-tuning",
            checkpointer=self.checkpointer,
        )
        return loop.run(model)

    def diagnostics(self, ctx: RunContext, results: list[Metric], curve: list):
        """Append the methods' diagnostics (``run/derived/<name>``) and series."""
        for extra in self.hooks.forgetbench_diagnostics(ctx=ctx):
            if extra:
                metrics = extra.get("metrics", {})
                results += [Metric("run", "derived", k, v) for k, v in metrics.items()]
                curve += list(extra.get("series", []))
        return results, curve


def _load_extra_state(state: dict, methods: list[Method], compute: Compute) -> None:
    for method in methods:
        method.load_state_dict(state["methods"].get(method.name, {}))
    for key, value in state["compute"].items():
        setattr(compute, key, value)
