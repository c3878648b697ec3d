"""One run, start to finish: resolve plugins and configs, record provenance, train, evaluate,
store. A run row is written as ``running`` first and finished as ``ok`` (metrics and status in
one transaction) or ``failed`` / ``interrupted`` with the reason."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forgetbench import distributed, engine
from forgetbench.api import Compute, Method, ModelBundle, Task, TaskData
from forgetbench.cache import MANIFEST, build_seconds, cache_root, hash_json, manifest
from forgetbench.checkpoint import Checkpointer, CheckpointLock, checkpoint_dir
from forgetbench.config import (
    TrainConfig,
    build_config,
    config_dict,
    operational_settings,
    split_overrides,
)
from forgetbench.context import RunContext
from forgetbench.errors import ForgetbenchError, Interrupted
from forgetbench.evaluation import (
    derived_metrics,
    evaluate_before,
    evaluate_splits,
    flat,
    probe_feature_taps,
)
from forgetbench.prior import prepare_prior
from forgetbench.progress import phase
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


MAX_SEED = 2**31 - 1  # the store's seed column is a 32-bit integer on PostgreSQL


def resolve(request: RunRequest, registry: Registry | None = None) -> ResolvedRun:
    """Validate a request fully before anything is stored or computed."""
    registry = registry or get_registry()
    task_entry = registry.task(request.task)
    if not 0 <= request.seed <= MAX_SEED:
        raise ForgetbenchError(f"--seed must be in [0, {MAX_SEED}], got {request.seed}")
    if not request.methods:
        raise ForgetbenchError("give at least one --method")
    if len(set(request.methods)) != len(request.methods):
        raise ForgetbenchError(f"a method is given twice: {', '.join(request.methods)}")
    method_entries = [registry.method(name) for name in request.methods]
    task_cls = task_entry.cls
    train, task_config, methods = _build_configs(request, task_cls, method_entries, registry)
    task = task_cls(task_config)
    for method in methods:
        method.check_task(task)
        method.check_train(train)
    run_plugin_manager(methods)  # firstresult conflicts are errors before anything runs
    engine.check_device(train)
    if request.prior_model:
        check_prior_model(request.prior_model)
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
    config_hash = experiment_hash(config, TrainConfig(**task_cls.train_defaults))
    return ResolvedRun(task, methods, train, providers, config, config_hash)


def experiment_hash(config: dict[str, Any], train_defaults: TrainConfig) -> str:
    """The hash of what a run computes: its config with the operational settings (checkpoints,
    device, evaluation batch) at the task's defaults, so a default config keeps the hash it
    always had and a checkpointed run shares the leaderboard row of an unchecked one."""
    train = dict(config["train"])
    train.update({name: getattr(train_defaults, name) for name in operational_settings()})
    return hash_json({**config, "train": train})


def _build_configs(
    request: RunRequest, task_cls: type[Task], method_entries: list, registry: Registry
) -> tuple[TrainConfig, Any, list[Method]]:
    """The train, task and method configs from the overrides, each validated."""
    sections: dict[str, type | None] = {"train": TrainConfig, "task": task_cls.Config}
    sections.update({entry.name: entry.cls.Config for entry in method_entries})
    _check_method_keys(request.overrides, sections, registry)
    routed = split_overrides(request.overrides, sections)
    if request.steps is not None:
        if "steps" in routed["train"]:
            raise ForgetbenchError(
                f"--steps {request.steps} and --set steps={routed['train']['steps']} both"
                " set the number of steps: give one"
            )
        routed["train"]["steps"] = str(request.steps)  # converted and checked like --set
    train = build_config(TrainConfig, routed["train"], "train", base=task_cls.train_defaults)
    if train.steps < 1:  # 0 would store an untrained model as a perfect, forgetting-free run
        raise ForgetbenchError(f"invalid train config: steps must be >= 1, got {train.steps}")
    task_config = build_config(task_cls.Config, routed["task"], "task") if task_cls.Config else None
    methods = []
    for entry in method_entries:
        config = (
            build_config(entry.cls.Config, routed[entry.name], entry.name)
            if entry.cls.Config
            else None
        )
        methods.append(entry.cls(config))
    return train, task_config, methods


def _check_method_keys(overrides: dict, sections: dict[str, type | None], registry: Registry):
    """A ``--set`` key of an installed method that is not in this run says so (rather than
    suggesting the run's sections)."""
    in_run = {f.name for cls in sections.values() if cls for f in dataclasses.fields(cls)}
    for key in overrides:
        section, dot, _ = key.rpartition(".")
        if dot and section in registry.methods and section not in sections:
            raise ForgetbenchError(
                f"--set {key}: method {section} is not in this run (add --method {section})"
            )
        if dot or key in in_run:
            continue
        owners = [
            entry.name
            for entry in registry.methods.values()
            if entry.name not in sections
            and entry.cls.Config
            and key in {f.name for f in dataclasses.fields(entry.cls.Config)}
        ]
        if owners:
            raise ForgetbenchError(
                f"--set {key}: a setting of method {', '.join(sorted(owners))}, not in this run"
                f" (add --method {sorted(owners)[0]})"
            )


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_offline() -> bool:
    """Whether the hub libraries are off the network (``forgetbench run`` sets them so unless
    the user passes ``--online`` or set ``HF_HUB_OFFLINE`` already)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_prior_model(source: str) -> None:
    """``--prior-model`` must be a non-empty local directory, or a hub id (cached, when the
    hub is offline): anything else fails here, before a run row is written."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not any(path.iterdir()):
            raise ForgetbenchError(f"--prior-model {source}: the directory is empty")
        return
    if path.exists():
        raise ForgetbenchError(f"--prior-model {source}: not a directory (give a model folder)")
    if not HUB_ID.fullmatch(source):
        raise ForgetbenchError(f"--prior-model {source}: no such directory")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise ForgetbenchError(
                f"--prior-model {source}: no such directory, and not in the hub cache"
                " (the hub is offline: pass --online to download it)"
            )


def _changed(config: Any, default: Any) -> str:
    """``k=v,...`` for the fields of ``config`` that differ from ``default``."""
    reference = config_dict(default)
    changed = {k: v for k, v in config_dict(config).items() if reference.get(k) != v}
    return ",".join(f"{k}={v}" for k, v in sorted(changed.items()))


def method_label(
    methods: list[Method],
    train: TrainConfig | None = None,
    train_default: TrainConfig | None = None,
    extra: str = "",
) -> str:
    """``mixcd(mix_ratio=0.2)+wise-ft [lr=0.001]``: method names with their non-default
    settings, then the training settings that differ from the task's defaults and ``extra``."""
    parts = []
    for method in methods:
        args = _changed(method.config, method.default_config()) if method.config else ""
        parts.append(f"{method.name}({args})" if args else method.name)
    label = "+".join(parts)
    changed = _changed(train, train_default) if train is not None and train_default else ""
    changed = ",".join(part for part in (changed, extra) if part)
    return label + (f" [{changed}]" if changed else "")


def run_label(resolved: ResolvedRun) -> str:
    """The stored label of a run: :func:`method_label` of what its config hash covers, so two
    configs never share one. Operational settings (``device``, ``checkpoint_every``, ...) are
    left out (the hash leaves them out: same experiment); the task config's non-default
    values (``task.new_train_size=64``) and ``--prior-model`` are added."""
    task_cls = type(resolved.task)
    default = TrainConfig(**task_cls.train_defaults)
    operational = {name: getattr(default, name) for name in operational_settings()}
    train = dataclasses.replace(resolved.train, **operational)
    extra = []
    task_config = getattr(resolved.task, "config", None)
    if task_cls.Config is not None and task_config is not None:
        changed = _changed(task_config, build_config(task_cls.Config, {}, "task"))
        extra += [f"task.{part}" for part in changed.split(",") if part]
    if resolved.config.get("prior_model"):
        extra.append(f"prior_model={resolved.config['prior_model']}")
    return method_label(resolved.methods, train, default, ",".join(extra))


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
    force: bool = False,
) -> int:
    """Run one experiment and store it; returns the run id. Raises on failure after marking
    the run row ``failed`` (or ``interrupted``: then :class:`Interrupted` with the run id).

    ``resume`` continues a stored run that did not finish (its row is reused and ``request``
    is ignored): from its last checkpoint when there is one, else from the start. A run still
    alive is refused unless ``force``. A run whose (config, seed) has a checkpoint left by an
    interrupted run resumes from it automatically.

    Under a launcher of several processes (``accelerate launch``), every process calls this:
    the main one stores the run, the others train their shards and store nothing
    (:mod:`forgetbench.distributed`); a failure on any of them marks the run failed.
    """
    opened = _open_parallel_run if distributed.launched() else _open_run
    store, request, resolved, run_id, lock = opened(request, db, registry, resume, force)
    main = isinstance(store, Store) and distributed.is_main()  # the process that stores
    try:
        with store.heartbeats(run_id) if main else contextlib.nullcontext():
            Run(request, resolved, store, run_id, use_checkpoint=lock is not None).execute()
    except KeyboardInterrupt as interrupt:
        peer = distributed.peer_failure()  # the launcher stops the others when one fails
        if peer is not None:
            store.fail_run(run_id, peer)
            failed = ForgetbenchError(peer)
            failed.run_id = run_id
            raise failed from interrupt
        signum = getattr(interrupt, "signum", signal.SIGINT)
        reason = f"interrupted ({signal.Signals(signum).name})"
        store.fail_run(run_id, reason, status="interrupted")
        raise Interrupted(signum, run_id) from interrupt
    except BaseException as error:
        store.fail_run(run_id, distributed.peer_failure() or _failure(error, resolved, run_id))
        raise
    finally:
        if lock is not None:
            lock.release()
    distributed.leave()  # under a launcher: all processes leave once the main one stored
    return run_id


def _open_run(
    request: RunRequest | None,
    db: str | None,
    registry: Registry | None,
    resume: int | None,
    force: bool,
) -> tuple[Store, RunRequest, ResolvedRun, int, CheckpointLock | None]:
    """Validate everything, take the checkpoint's lock, then write (or reopen, for
    ``resume``) the run row. The lock is None when another run holds it: this run then
    neither reads nor writes the shared checkpoint."""
    if resume is not None:
        return _reopen_run(resume, db, registry, force)
    if request is None:
        raise ForgetbenchError("nothing to run: give a request or a run to resume")
    resolved = resolve(request, registry)  # bad input fails before anything is stored
    store = Store(db)
    lock = CheckpointLock(checkpoint_dir(resolved.config_hash, request.seed))
    if not lock.acquire():
        log.warning(
            "an identical run (%s) holds the checkpoint of this config and seed: this run"
            " will not checkpoint",
            lock.holder() or "another process",
        )
        lock = None
    try:
        run_id = _start_row(store, request, resolved)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return store, request, resolved, run_id, lock


def _open_parallel_run(
    request: RunRequest | None,
    db: str | None,
    registry: Registry | None,
    resume: int | None,
    force: bool,
) -> tuple[Any, RunRequest, ResolvedRun, int, None]:
    """Under a launcher: every process validates the request and joins the process group; the
    main process alone writes the run row, the others get its id (and a store that writes
    nothing). No checkpoint: every process would have to restore the same one."""
    if resume is not None or request is None:
        raise ForgetbenchError("--resume is not supported for a run over several processes")
    resolved = resolve(request, registry)
    if resolved.train.checkpoint_every:
        raise ForgetbenchError(
            "checkpoint_every is not supported for a run over several processes: set"
            " checkpoint_every=0"
        )
    distributed.start(engine.uses_cpu(resolved.train))
    distributed.check_batch(resolved.train.batch_size)
    store, run_id = distributed.WorkerStore(), None
    if distributed.is_main():
        try:
            store = Store(db)
            run_id = _start_row(store, request, resolved)
        except BaseException:
            distributed.broadcast(None)  # the others stop too
            raise
    try:
        run_id = distributed.broadcast(run_id)
    except BaseException as error:  # a process is gone: the row must not stay running
        if run_id is not None:
            store.fail_run(run_id, distributed.peer_failure() or f"{type(error).__name__}: {error}")
        raise
    if run_id is None:  # the main process could not write the row
        raise ForgetbenchError("the main process could not start the run (see its error)")
    return store, request, resolved, run_id, None


def plugin_origin(error: BaseException, resolved: ResolvedRun) -> str:
    """Which plugin a crash came from, e.g. `` (in method 'ewc', forgetbench_setup)``: the
    outermost frame of the traceback in a module of a run's method or task (their classes and
    base classes, outside the core); empty when none is."""
    owners: dict[str, str] = {}
    for plugin, what in [(m, f"method {m.name!r}") for m in resolved.methods] + [
        (resolved.task, f"task {resolved.task.metadata.name!r}")
    ]:
        for cls in type(plugin).__mro__:
            if not cls.__module__.startswith(("forgetbench.", "builtins", "abc")):
                owners.setdefault(cls.__module__, what)
    frame = error.__traceback__
    while frame is not None:
        owner = owners.get(frame.tb_frame.f_globals.get("__name__", ""))
        if owner:
            return f" (in {owner}, {frame.tb_frame.f_code.co_name})"
        frame = frame.tb_next
    return ""


def _failure(error: BaseException, resolved: ResolvedRun, run_id: int) -> str:
    """The failed row's error text; the error is marked with the run and, for a crash (not a
    ForgetbenchError, which says what is wrong itself), the plugin it came from."""
    origin = "" if isinstance(error, ForgetbenchError) else plugin_origin(error, resolved)
    with contextlib.suppress(AttributeError):  # any failure names its row (a sweep's line)
        error.run_id = run_id
        error.forgetbench_origin = origin
    return f"{type(error).__name__}: {error}{origin}"


def _reopen_run(
    resume: int, db: str | None, registry: Registry | None, force: bool
) -> tuple[Store, RunRequest, ResolvedRun, int, CheckpointLock]:
    reader = Store(db, read_only=True)  # a missing store is refused, not created
    previous = reader.get_run(resume)
    if previous is None:
        raise ForgetbenchError(f"no run with id {resume} in {reader.location}")
    store = Store(db)
    if previous["status"] == "ok":
        raise ForgetbenchError(f"run {resume} already finished (status ok)")
    if store.is_live(previous) and not force:
        raise ForgetbenchError(
            f"run {resume} is still running ({previous['hostname']}:{previous['pid']}, last"
            f" heartbeat {str(previous['heartbeat_at'])[:19]}): stop it first, or if it is"
            " gone pass --force"
        )
    request = request_from_run(previous)
    resolved = resolve(request, registry)
    if previous["config_hash"] == hash_json(resolved.config):
        # stored before operational settings left the hash: it keeps its hash and checkpoint
        resolved = dataclasses.replace(resolved, config_hash=previous["config_hash"])
    if resolved.config_hash != previous["config_hash"]:
        raise ForgetbenchError(
            f"run {resume}'s stored config no longer resolves to the"
            " same config (a plugin changed); start a new run instead"
        )
    lock = CheckpointLock(checkpoint_dir(resolved.config_hash, request.seed))
    if not lock.acquire():
        raise ForgetbenchError(
            f"run {resume}'s checkpoint is in use by another process"
            f" ({lock.holder() or 'unknown'}): wait for it to finish"
        )
    versions = package_versions(resolved.providers, engine.uses_tf32(resolved.train))
    store.reopen_run(resume, versions=versions, git_sha=git_sha())
    return store, request, resolved, resume, lock


def _start_row(store: Store, request: RunRequest, resolved: ResolvedRun) -> int:
    task = resolved.task
    meta = task.metadata
    return store.start_run(
        task=meta.name,
        task_version=meta.version,
        family=meta.family,
        prior_metric=meta.prior_metric,
        new_metric=meta.new_metric,
        methods=run_label(resolved),
        config=resolved.config,
        config_hash=resolved.config_hash,
        seed=request.seed,
        model=request.prior_model or "stage-0",
        data_fingerprints={},
        versions=package_versions(resolved.providers, engine.uses_tf32(resolved.train)),
        git_sha=git_sha(),
    )


class Run:
    """One run as named steps: context, data, prior model, new task, evaluate, set up the
    methods, fine-tune, finalise, evaluate, store."""

    def __init__(
        self,
        request: RunRequest,
        resolved: ResolvedRun,
        store: Store,
        run_id: int,
        use_checkpoint: bool = True,
    ):
        self.request, self.resolved, self.store, self.run_id = request, resolved, store, run_id
        self.task, self.methods = resolved.task, resolved.methods
        self.hooks = run_plugin_manager(self.methods).hook
        self.use_checkpoint = use_checkpoint
        self.checkpointer: Checkpointer | None = None

    def execute(self) -> None:
        started, cache_started = time.perf_counter(), build_seconds()
        ctx = self.make_context()
        with phase("loading data"), self.hub_hint():
            data = self.load_data(ctx)
        with phase("preparing the prior model"), self.hub_hint():
            model = self.init_model(ctx, data)
        main = distributed.is_main()  # under a launcher only the main process evaluates
        with phase("evaluating before fine-tuning"):
            before = self.evaluate_before(ctx, model, data) if main else None
        with phase("setting up the methods"):
            model, sampler = self.setup_methods(ctx, model, data)
        model, curve = self.fine_tune(ctx, model, data, sampler)
        if not main:
            return  # and stores: the other processes are done
        with phase("evaluating after fine-tuning"):
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
        ctx.compute.cache_seconds = round(build_seconds() - cache_started, 3)
        self.store.finish_run(self.run_id, results, curve, ctx.compute.as_dict())
        if self.checkpointer is not None:
            self.checkpointer.clear()

    @contextlib.contextmanager
    def hub_hint(self):
        """A task that may download, failing while the hub is offline, says how to allow it."""
        try:
            yield
        except ForgetbenchError as error:
            if self.task.metadata.offline or not hub_offline():
                raise
            raise ForgetbenchError(
                f"{error} (the hub is offline: pass --online to allow downloads)"
            ) from error

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
        data, fingerprints = loaded_data(self.task, ctx)
        for split in data.splits():
            if len(split) == 0:  # training would loop forever, evaluation divide by zero
                raise ForgetbenchError(
                    f"task {self.task.metadata.name!r}: split {split.name} has 0 examples"
                    f" (sizes: {_split_sizes(data)}); check the task's size settings"
                )
        self.store.update_run(self.run_id, data_fingerprints=fingerprints)
        return data

    def init_model(self, ctx: RunContext, data: TaskData) -> torch.nn.Module:
        """f0 plus what the new task adds (seeded with the run seed), on the run's device."""
        with distributed.main_first("prior-model"):  # it builds stage 0, the others load it
            bundle = prior_bundle(self.task, ctx, data, self.request.prior_model)
        state = self.accelerator.state
        if (
            state.mixed_precision != self.resolved.train.mixed_precision
            or state.device != ctx.device
        ):  # stage 0 ran under accelerate state of its own precision (its device is the
            # run's), or a task's prior model re-made that state: the run's comes back
            self.accelerator = ctx.accelerator = engine.make_accelerator(self.resolved.train)
        self.store.update_run(self.run_id, model=f"{bundle.source}@{bundle.identity[:16]}")
        digest = None if self.request.prior_model else _stage0_files_digest(bundle)
        if digest:  # a --prior-model folder's identity is already its files' hash
            self._add_versions(prior_files=digest)
        engine.seed_everything(self.request.seed)  # the new head's init must not depend on stage 0
        shared = {name for name, _ in bundle.model.named_parameters()}
        model = self.task.init_new_task(ctx, bundle, data).to(self.accelerator.device)
        new_names = frozenset(n for n, _ in model.named_parameters() if n not in shared)
        ctx.attach(bundle, new_names, data.prior_train)
        for method in self.methods:  # before minutes of evaluation go to a run it refuses
            method.check_model(self.task, model)
        tapped = [method.name for method in self.methods if method.needs_features]
        if tapped:
            probe_feature_taps(ctx, model, data, tapped)
        return model

    def evaluate_before(self, ctx: RunContext, model: torch.nn.Module, data: TaskData) -> dict:
        """Both eval splits before fine-tuning (the prior split's from the cache where it is
        f0's own, :func:`~forgetbench.evaluation.evaluate_before`); the run's versions record
        ``prior_before_cache``: ``hit``, ``miss`` or ``off``."""
        before, status = evaluate_before(ctx, model, data)
        log.info("the prior split's evaluation before fine-tuning: cache %s", status)
        self._add_versions(prior_before_cache=status)
        return before

    def _add_versions(self, **items: str) -> None:
        """Add entries to the stored row's ``versions`` (what was recorded at start stays)."""
        versions = (self.store.get_run(self.run_id) or {}).get("versions") or {}
        self.store.update_run(self.run_id, versions={**versions, **items})

    def setup_methods(self, ctx: RunContext, model: torch.nn.Module, data: TaskData):
        """Setup hooks, then the prior sampler (it must see f0 unchanged), then wrappers."""
        self.hooks.forgetbench_setup(ctx=ctx, model=model, data=data)
        sampler = self.hooks.forgetbench_prior_sampler(ctx=ctx, data=data)
        ctx.prior_cache.freeze()
        model = self.hooks.forgetbench_wrap_model(ctx=ctx, model=model) or model
        return model, sampler

    def fine_tune(self, ctx: RunContext, model: torch.nn.Module, data: TaskData, sampler):
        methods = self.methods
        self.checkpointer = self.make_checkpointer(ctx) if self.use_checkpoint else None
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
            sharded=True,
        )
        return loop.run(model)

    def make_checkpointer(self, ctx: RunContext) -> Checkpointer:
        """The checkpoint of this (config, seed), carrying the methods' state and compute."""
        methods, compute = self.methods, ctx.compute
        return Checkpointer(
            checkpoint_dir(self.resolved.config_hash, self.request.seed),
            ctx.train.checkpoint_every,
            extra_state=lambda: {
                "methods": {m.name: m.state_dict() for m in methods},
                "compute": compute.as_dict(),
            },
            load_extra_state=lambda state: _load_extra_state(state, methods, compute),
            on_save=lambda step: self.store.heartbeat(self.run_id),
        )

    def diagnostics(self, ctx: RunContext, results: list[Metric], curve: list):
        """Append the methods' diagnostics (``run/derived/<name>``) and series."""
        for extra in self.hooks.forgetbench_diagnostics(ctx=ctx):
            if extra:
                metrics = extra.get("metrics", {})
                results += [Metric("run", "derived", k, v) for k, v in metrics.items()]
                curve += list(extra.get("series", []))
        return results, curve


# -- several runs in one process (a sweep's worker): data and prior models loaded once ---------

MEMO_ENTRIES = 4  # the last two task configs' data and prior model
_memo: dict[tuple, Any] = {}


def memo_enabled() -> bool:
    """In-process reuse is on unless ``FORGETBENCH_MEMO=0``."""
    return os.environ.get("FORGETBENCH_MEMO", "1").strip().lower() not in ("0", "false", "off")


def _task_key(task: Task, *parts: Any) -> tuple:
    """A task config's identity in this process: class, version, config and the code that loads
    (a patched loader is another key)."""
    cls = type(task)
    loaders = ("load_data", "build_prior", "load_bundle", "load_prior", "init_new_task")
    config = hash_json(config_dict(task.config)) if task.config is not None else None
    code = tuple(getattr(cls, name, None) for name in loaders)  # held: ids are never reused
    return (cls.__module__, cls.__qualname__, cls.metadata.version, config, code, *parts)


def _remember(key: tuple, value: Any) -> None:
    _memo.pop(key, None)
    _memo[key] = value
    while len(_memo) > MEMO_ENTRIES:
        _memo.pop(next(iter(_memo)))


def loaded_data(task: Task, ctx: RunContext) -> tuple[TaskData, dict[str, str]]:
    """The task's data and its fingerprints, loaded once per process and task config; each run
    gets its own split lists (the examples themselves are shared, read-only). What ``load_data``
    kept on the task (e.g. an image table the examples point into) comes with the data: a task
    reusing them gets the loading task's attributes."""
    key = ("data", *_task_key(task))
    if memo_enabled() and key in _memo:
        data, fingerprints, state = _memo[key]
        vars(task).update(state)
    else:
        data = task.load_data(ctx)
        fingerprints = data.fingerprints()
        if not memo_enabled():
            return data, fingerprints
        _remember(key, (data, fingerprints, dict(vars(task))))
    splits = {}
    for field_name, split in zip(SPLIT_FIELDS, data.splits(), strict=True):
        splits[field_name] = copy.copy(split)
        splits[field_name].examples = list(split.examples)
    return dataclasses.replace(data, **splits, info=copy.deepcopy(data.info)), dict(fingerprints)


SPLIT_FIELDS = ("prior_train", "prior_eval", "new_train", "new_eval")


def _files_state(bundle: ModelBundle, prior_model: str | None) -> tuple | None:
    """Names, sizes and times of the files a prior model was loaded from (None: none)."""
    directory = Path(prior_model).expanduser() if prior_model else _stage0_entry(bundle)
    if not bundle.identity or not directory.is_dir():
        return None
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _stage0_entry(bundle: ModelBundle) -> Path:
    """The stage-0 cache entry a prior model came from (its identity is the entry's key)."""
    return cache_root() / "stage0" / bundle.identity


def _stage0_files_digest(bundle: ModelBundle) -> str | None:
    """sha256 over the stage-0 entry's files (names and sha256s, from its manifest): what f0's
    weights are, where its identity is how they were made (the entry's key). Two machines that
    trained one recipe to different weights store the same identity but different digests.
    None for a task without a stage 0."""
    entry = _stage0_entry(bundle)
    if not bundle.identity or not (entry / MANIFEST).is_file():
        return None
    return hash_json(sorted(manifest(entry)["files"].items()))


def _copy_bundle(bundle: ModelBundle) -> ModelBundle:
    """A bundle whose model and extras a run may change (the processor is shared)."""
    return dataclasses.replace(
        bundle, model=copy.deepcopy(bundle.model), extras=copy.deepcopy(bundle.extras)
    )


def prior_bundle(task: Task, ctx: RunContext, data: TaskData, prior_model: str | None):
    """f0 (:func:`~forgetbench.prior.prepare_prior`), loaded once per process and task config
    while the files it came from stay as they were; each run gets its own copy."""
    key = ("prior", *_task_key(task, prior_model, str(cache_root())))
    entry = _memo.get(key) if memo_enabled() else None
    if (
        entry is not None
        and entry[1] is not None
        and entry[1] == _files_state(entry[0], prior_model)
    ):
        return _copy_bundle(entry[0])
    bundle = prepare_prior(task, ctx, data, prior_model)
    if memo_enabled():
        _remember(key, (_copy_bundle(bundle), _files_state(bundle, prior_model)))
    return bundle


def _split_sizes(data: TaskData) -> str:
    return ", ".join(f"{split.name} {len(split)}" for split in data.splits())


def _load_extra_state(state: dict, methods: list[Method], compute: Compute) -> None:
    for method in methods:
        method.load_state_dict(state["methods"].get(method.name, {}))
    for key, value in state["compute"].items():
        setattr(compute, key, value)
