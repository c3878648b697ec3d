"""The public types of forgetbench: what a task and a method implement and what they receive.

Kept deliberately few. A task (one family or one dataset of a known family) implements
:class:`Task`; a method implements :class:`Method` plus hooks (``forgetbench.hookspecs``); both
read the run through a :class:`RunContext`. The core never special-cases a family: every task
says what success means for one example (:class:`PerSample`, :class:`EvalResult`), which metric
is its main one and in which direction (:class:`TaskMetadata`), and which auxiliary partitions
mix-cd may use (:meth:`Task.partitions`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from forgetbench.cache import cached_dir, hash_dir, hash_file, hash_json
from forgetbench.config import TrainConfig, check
from forgetbench.errors import ForgetbenchError, did_you_mean
from forgetbench.fingerprint import evaluation_settings, task_identity
from forgetbench.hookspecs import hookimpl
from forgetbench.progress import phase, progress

if TYPE_CHECKING:
    from forgetbench.context import RunContext
    from forgetbench.rehearsal import REHEARSAL_COLUMNS, RehearsalMonitor
    from forgetbench.testing import RunResult, run_for_test

__all__ = [
    "REHEARSAL_COLUMNS",
    "Batch",
    "Compute",
    "EvalResult",
    "ForgetbenchError",
    "LeaderboardColumn",
    "Method",
    "ModelBundle",
    "PerSample",
    "PriorPredictions",
    "PriorSampler",
    "RehearsalMonitor",
    "RunContext",
    "RunResult",
    "Split",
    "Stage0Spec",
    "Task",
    "TaskData",
    "TaskMetadata",
    "TrainConfig",
    "cached_dir",
    "check",
    "check_prior_slots",
    "did_you_mean",
    "fit_probe",
    "hash_dir",
    "hash_file",
    "hash_json",
    "hookimpl",
    "load_entries",
    "masked_mean",
    "module_stack",
    "pad_logits",
    "phase",
    "plugin_cache",
    "plugin_key",
    "progress",
    "run_for_test",
    "split_indices",
    "subsample",
    "tap_layers",
]


@dataclass(frozen=True)
class TaskMetadata:
    """What a task is, for the registry, the leaderboard, plots and provenance.

    ``prior_metric`` / ``new_metric`` are the main metrics of the prior and the new task (keys of
    :attr:`EvalResult.metrics`); ``lower_is_better`` names every metric of the task where lower
    is better (the rest are higher-is-better). Runs store the main metrics; the leaderboard and
    its Pareto marks read them and the stored directions, never a guess.
    """

    name: str
    family: str
    description: str
    prior_metric: str = "accuracy"
    new_metric: str = "accuracy"
    lower_is_better: frozenset[str] = frozenset({"loss"})
    reference: str = ""
    version: str = "1"
    dataset_revision: str = ""
    license: str = ""
    offline: bool = False

    def __post_init__(self):
        if not self.name or not self.family:
            raise ValueError("a task needs a name and a family")

    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.lower_is_better


@dataclass
class Split:
    """One data split: a list of examples (dicts of JSON-able values), each with a stable integer
    ``id``. Keys other than ``id`` belong to the task."""

    name: str
    examples: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]

    def fingerprint(self) -> str:
        """sha256 of the examples' canonical JSON: changes whenever the data does."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(json.dumps(example, sort_keys=True, default=str).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def column(self, key: str) -> np.ndarray:
        return np.asarray([example[key] for example in self.examples])


def subsample(items: list, size: int | None, seed: int | Sequence[int] = 0) -> list:
    """``size`` of ``items`` drawn without replacement by a fixed seed (numpy's
    ``default_rng(seed)``), kept in their order; all of them when ``size`` is None or not
    smaller. The draw depends only on the seed and ``len(items)``, never on the run's seed: a
    task's splits are the same in every run."""
    if size is None or size >= len(items):
        return items
    keep = np.random.default_rng(seed).permutation(len(items))[:size]
    return [items[i] for i in sorted(keep.tolist())]


def split_indices(
    n: int, eval_size: int, train_size: int | None = None, seed: int = 0, reserve: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A task's fixed train/eval split of ``range(n)``: (train indices, eval indices), each
    sorted. Eval is the first ``eval_size`` of a permutation seeded with ``seed``; train is
    the next ``train_size`` (all the rest when None) from ``max(eval_size, reserve)`` on. With
    ``reserve`` the default eval size, a smaller eval split (a quicker run) is a subset of the
    default one and leaves the train split, and so a cached stage 0, as they are. Where the
    data has no room for that train split (fewer than ``train_size`` examples, or none, after
    ``reserve``), train starts right after eval."""
    order = np.random.default_rng(seed).permutation(n)
    start = max(eval_size, reserve)
    if n - start < (train_size or 1):
        start = eval_size
    train = order[start:] if train_size is None else order[start : start + train_size]
    return np.sort(train), np.sort(order[:eval_size])


@dataclass
class TaskData:
    """The four splits of a two-stage scenario, plus task-specific ``info`` (label names...).

    ``provenance``: strings that identify the data or its scoring beyond the splits' contents
    (e.g. a hash of the source files read, a metric's signature); stored with the run's split
    fingerprints.
    """

    prior_train: Split
    prior_eval: Split
    new_train: Split
    new_eval: Split
    info: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)

    def splits(self) -> tuple[Split, Split, Split, Split]:
        return (self.prior_train, self.prior_eval, self.new_train, self.new_eval)

    def fingerprints(self) -> dict[str, str]:
        return {**{split.name: split.fingerprint() for split in self.splits()}, **self.provenance}


@dataclass(frozen=True)
class HostBookkeeping:
    """A batch's ``is_prior`` [B] bool and ``index`` [B] int64 as host (numpy) arrays."""

    is_prior: np.ndarray
    index: np.ndarray


@dataclass
class Batch:
    """A collated batch: the task's model ``inputs`` and the engine's bookkeeping.

    ``ids`` [B] (the examples' ``id``), ``is_prior`` [B] bool (drawn from the prior train set, i.e.
    rehearsed), ``index`` [B] (position in its split). Row ``b`` of every tensor in ``inputs`` is
    example ``b``: a task that windows long inputs picks one window per example for training.
    ``host``: ``is_prior`` and ``index`` on the host, taken when the batch is made on the CPU and
    carried when it moves to a device; read them with :meth:`bookkeeping`.
    """

    inputs: dict[str, torch.Tensor]
    ids: torch.Tensor
    is_prior: torch.Tensor
    index: torch.Tensor
    host: HostBookkeeping | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.host is None and self.is_prior.device.type == self.index.device.type == "cpu":
            self.host = HostBookkeeping(self.is_prior.numpy(), self.index.numpy())

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def bookkeeping(self) -> HostBookkeeping:
        """``is_prior`` and ``index`` as numpy arrays: the host copy when the batch carries one
        (a hook branching on them then never waits for a GPU), else read from the device."""
        if self.host is not None:
            return self.host
        return HostBookkeeping(self.is_prior.cpu().numpy(), self.index.cpu().numpy())

    def to(self, device: torch.device) -> Batch:
        moved = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in self.inputs.items()
        }
        tensors = (self.ids.to(device), self.is_prior.to(device), self.index.to(device))
        return Batch(moved, *tensors, host=self.host)


@dataclass
class PerSample:
    """Per-sample results of one forward pass; every tensor has leading dimension B.

    ``loss`` [B] float (attached to the graph in training), ``success`` [B] bool (the task's own
    criterion of a right answer, from the same forward pass: no decoding, no extra pass),
    ``confidence`` [B] float (probability of the predicted answer), ``features``: optional list
    of [B, D] tensors at the task's feature taps (``with_features=True``).

    ``logits``: optional [B, C] float scores whose softmax is the model's predictive
    distribution over the answers ``loss`` is the cross-entropy of (attached to the graph like
    ``loss``), for methods that need the model's own distribution (e.g. EWC's true Fisher: sample
    an answer from it). Classes a row cannot take are ``-inf`` (rows of two heads in one batch
    are padded to the wider one). None where a task does not give them (e.g. span extraction);
    :meth:`detach_cpu` drops them.
    """

    loss: torch.Tensor
    success: torch.Tensor
    confidence: torch.Tensor
    features: list[torch.Tensor] | None = None
    logits: torch.Tensor | None = None

    def detach_cpu(self) -> PerSample:
        return PerSample(
            loss=self.loss.detach().float().cpu(),
            success=self.success.detach().cpu(),
            confidence=self.confidence.detach().float().cpu(),
        )

    @staticmethod
    def concat(parts: Sequence[PerSample]) -> PerSample:
        return PerSample(
            loss=torch.cat([p.loss for p in parts]),
            success=torch.cat([p.success for p in parts]),
            confidence=torch.cat([p.confidence for p in parts]),
        )


@dataclass
class EvalResult:
    """One split's evaluation: aggregate ``metrics`` and per-example ``success`` [N] bool (in
    split order), from which the engine derives the collateral-damage rate for every family.
    ``score`` [N] optionally holds a per-example score (e.g. sentence F1)."""

    metrics: dict[str, float]
    success: np.ndarray
    score: np.ndarray | None = None


@dataclass
class PriorPredictions:
    """The prior model's per-sample results on the prior train set (the shared prior cache)."""

    loss: np.ndarray
    success: np.ndarray
    confidence: np.ndarray


@dataclass
class Compute:
    """Compute spent by a run, in samples (one sample = one example through the model).

    ``forwarded`` / ``backpropagated``: the training steps' samples. ``extra_inference``: forward
    passes methods spend of their own (a frozen reference model, a pre-pass, a probe);
    ``extra_backward``: backward passes methods spend of their own (e.g. EWC's Fisher), counted
    separately because a backward pass costs about twice a forward one. ``eval_inference``: the
    core's evaluation. A method adds to the extra columns through ``RunContext.forward`` /
    ``predict`` / ``batches`` with ``extra=True`` and ``RunContext.count_extra``.

    ``wall_seconds``: the run's wall time, from start to stored results. ``cache_seconds``: the
    part of it spent building shared on-disk cache entries that later runs on the machine reuse
    (stage 0, the prior caches, the before-evaluation, plugin caches; ``forgetbench.cache``),
    so ``wall_seconds - cache_seconds`` is what the run takes once the caches are warm (the
    leaderboard's wall columns). Both are timings, not counts: they differ between machines.
    """

    forwarded: int = 0
    backpropagated: int = 0
    extra_inference: int = 0
    extra_backward: int = 0
    eval_inference: int = 0
    wall_seconds: float = 0.0
    cache_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelBundle:
    """A model plus what feeds it and identifies it.

    ``processor``: the tokenizer, image transform or both (whatever the task's ``collate``
    needs); ``extras``: what else the family needs (e.g. class-name text embeddings);
    ``identity``: what names these weights in provenance and cache keys: a content hash of
    the files for a ``--prior-model`` folder, the cache key (a hash of how it was made) for a
    stage-0 model; ``source``: where it came from (stage-0 cache entry, ``--prior-model``
    path, base model id).
    """

    model: torch.nn.Module
    processor: Any
    identity: str = ""
    source: str = ""
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage0Spec:
    """How the core makes the prior model: train ``build_prior``'s model on the prior train set
    with ``train`` (seed 0), then cache it content-addressed by ``base`` (an identity of the
    base weights), the prior data's fingerprint, ``train`` and ``key`` (anything else that
    changes the result, e.g. pooling)."""

    train: TrainConfig
    base: str
    key: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LeaderboardColumn:
    """A diagnostic a method stores (``run/derived/<name>``) that the leaderboard shows;
    ``definition`` is what the leaderboard's footnote says of it."""

    name: str
    header: str
    decimals: int = 4
    definition: str = ""


class PriorSampler(ABC):
    """Chooses which prior-train examples are mixed into each training batch.

    ``mix_ratio`` is the share of each batch given to prior samples. Subclass it and return an
    instance from ``forgetbench_prior_sampler``; the engine calls :meth:`sample` once per step.
    Samplers that learn feed on ``forgetbench_after_step``.
    """

    def __init__(self, mix_ratio: float):
        self.mix_ratio = mix_ratio

    def count(self, batch_size: int) -> int:
        """How many of ``batch_size`` slots go to prior samples."""
        return prior_slots(self.mix_ratio, batch_size)

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``n`` indices into ``data.prior_train`` (int64 array)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints; learning samplers override it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`state_dict`."""


def prior_slots(mix_ratio: float, batch_size: int) -> int:
    """The prior samples in a batch of ``batch_size`` at ``mix_ratio`` (rounded to nearest)."""
    return round(mix_ratio * batch_size)


def check_prior_slots(method: str, mix_ratio: float, batch_size: int) -> None:
    """A rehearsal method's ``check_train``: refuse a ``mix_ratio`` that rounds to no prior
    sample in a batch (the run would rehearse nothing) or to the whole batch (it would learn no
    new-task sample)."""
    slots = prior_slots(mix_ratio, batch_size)
    if mix_ratio > 0 and slots == 0:
        raise ForgetbenchError(
            f"{method}.mix_ratio={mix_ratio} gives no prior sample in a batch of {batch_size}:"
            f" raise mix_ratio above {0.5 / batch_size:.3g} or the batch size"
        )
    if slots >= batch_size:
        raise ForgetbenchError(
            f"{method}.mix_ratio={mix_ratio} gives all {batch_size} slots of a batch to prior"
            " samples, none to the new task: lower mix_ratio or raise the batch size"
        )


class Method:
    """Base class of a forgetting mitigation. Subclasses set ``name`` and ``Config`` (a
    dataclass validated in ``__post_init__``) and implement hooks with ``@hookimpl``.

    ``needs_features``: the training forward pass returns the task's feature taps.
    ``columns``: diagnostics this method stores that the leaderboard shows.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type | None] = None
    needs_features: ClassVar[bool] = False
    columns: ClassVar[tuple[LeaderboardColumn, ...]] = ()

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.default_config()

    @classmethod
    def default_config(cls) -> Any:
        return cls.Config() if cls.Config is not None else None

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state that changes during training, for checkpoints (default: none).

        State rebuilt deterministically in ``forgetbench_setup`` need not be saved."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when a run resumes from a checkpoint."""

    def check_task(self, task: Task) -> None:
        """Refuse a task this method cannot run on, with a ForgetbenchError saying why: called
        while a request is validated, before anything is stored or computed (a sweep checks
        every run of its grid first). Default: every task."""

    def check_train(self, train: TrainConfig) -> None:
        """Refuse training settings this method's config cannot run with (the rehearsal
        methods: a ``mix_ratio`` that rounds to no prior sample at this ``batch_size``), like
        :meth:`check_task`: before anything is stored. Default: any settings."""

    def check_model(self, task: Task, model: torch.nn.Module) -> None:
        """Refuse the model this run would fine-tune (f0 plus the new task's head), with a
        ForgetbenchError saying why: e.g. a layer index past the depth of
        :meth:`Task.layer_stack`. Called once the model is built, before anything is evaluated
        or trained; the run is stored ``failed`` with the error. Default: any model."""


class Task(ABC):
    """A two-stage scenario: a prior model f0, then fine-tuning on a new task.

    Abstract: what every task must do (``load_data``, ``build_prior``, ``collate``, ``forward``).
    The rest are optional steps with defaults. The core calls, in order: ``load_data``; the prior
    model (``load_prior`` for ``--prior-model``, else ``build_prior`` trained by the core when
    ``stage0`` is set, cached with ``save_bundle`` / ``load_bundle``); ``init_new_task``;
    ``evaluate`` before and after fine-tuning, ``collate`` and ``forward`` for every step.
    """

    metadata: ClassVar[TaskMetadata]
    Config: ClassVar[type | None] = None
    # Overrides of TrainConfig's defaults for this task (the default fine-tuning budget).
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any = None):
        self.config = config if config is not None else (self.Config() if self.Config else None)

    # -- data --------------------------------------------------------------------------------

    @abstractmethod
    def load_data(self, ctx: RunContext) -> TaskData:
        """Load the four splits; raise ForgetbenchError naming what is missing and how to get it."""

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        """Named auxiliary schemes for mix-cd: an integer bin per prior-train example (e.g.
        ``label``, ``genre``, ``lang_pair``, ``dataset``). Default: none."""
        return {}

    # -- the prior model ---------------------------------------------------------------------

    @property
    def stage0(self) -> Stage0Spec | None:
        """How the core trains the prior model from ``build_prior``'s, or None (ready as built)."""
        return None

    @abstractmethod
    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        """The prior model before stage 0 (base weights plus the prior task's head), or the
        ready prior model when ``stage0`` is None. The core seeds torch before calling it."""

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        """Write a (stage-0) bundle to ``directory`` with safetensors; needed with ``stage0``."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its prior model")

    def load_bundle(self, directory: Path) -> ModelBundle:
        """Read what :meth:`save_bundle` wrote (safely: safetensors, no remote code)."""
        raise NotImplementedError(f"{type(self).__name__} cannot load a saved prior model")

    def load_prior(self, ctx: RunContext, path: str) -> ModelBundle:
        """``--prior-model PATH``: by default a directory :meth:`save_bundle` wrote."""
        if not (Path(path) / "bundle.json").exists():
            raise ForgetbenchError(
                f"--prior-model {path!r}: not a forgetbench prior-model directory"
                f" (task {self.metadata.name!r} reads no other format)"
            )
        return self.load_bundle(Path(path))

    def init_new_task(
        self, ctx: RunContext, bundle: ModelBundle, data: TaskData
    ) -> torch.nn.Module:
        """Add what the new task needs (e.g. a fresh head); return the model to fine-tune. The
        core seeds torch with the run seed first; parameters added here are the run's
        ``ctx.new_param_names``."""
        return bundle.model

    # -- one step ----------------------------------------------------------------------------

    @abstractmethod
    def collate(
        self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Model inputs for ``examples`` (prior and new mixed), one row per example."""

    @abstractmethod
    def forward(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], with_features: bool = False
    ) -> PerSample:
        """Per-sample loss, success and confidence of ``model`` on ``inputs`` in one pass."""

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, ctx: RunContext, model: torch.nn.Module, split: Split) -> EvalResult:
        """Metrics of ``model`` (in eval mode, under inference mode) on ``split``.

        Default (classification-like tasks): ``accuracy`` (share of successes) and the mean
        ``loss`` from :meth:`forward`. Override it for metrics that need decoding.
        """
        results = ctx.predict(model, split)
        success = results.success.numpy().astype(bool)
        loss = results.loss.numpy()
        return EvalResult({"accuracy": float(success.mean()), "loss": float(loss.mean())}, success)

    # -- what methods read -------------------------------------------------------------------

    def feature_taps(self) -> str:
        """Describe the layers whose features ``forward(..., with_features=True)`` returns."""
        return ""

    def lora_target_modules(self, model: torch.nn.Module) -> list[str] | None:
        """Module-name suffixes LoRA adapts by default for this family (None: no default)."""
        return None

    def head_parameters(self, model: torch.nn.Module) -> list[str]:
        """Names of the new task's own head parameters that f0 already has (CLIP's class
        weights for the new dataset, set zero-shot): a method that freezes the model, such as
        LoRA, keeps them trainable, as it keeps a fresh head (``ctx.new_param_names``)."""
        return []

    def layer_stack(self, model: torch.nn.Module) -> list[torch.nn.Module] | None:
        """The fine-tuned model's repeated blocks (transformer layers, CNN stages), in the order
        the input passes through them, embeddings and heads excluded: what a layer-wise method
        (freeze the bottom K blocks, layer-wise learning rates) indexes. An encoder-decoder
        gives its encoder's blocks, then its decoder's. None: unknown for this task (a method
        that needs it refuses the task in :meth:`Method.check_task`, with
        ``task.implements("layer_stack")``). :func:`module_stack` finds them in most
        transformers and open_clip models."""
        return None

    @classmethod
    def implements(cls, step: str) -> bool:
        """Whether this task overrides the optional step ``step`` (``reference_head``,
        ``reference_losses``, ...), for a method that needs it."""
        return getattr(cls, step) is not getattr(Task, step)

    def reference_losses(
        self, ctx: RunContext, model: torch.nn.Module, split: Split
    ) -> torch.Tensor | None:
        """Per-example loss [N] of the prior model on a new-task split, where ``model``'s own
        loss is meaningless (e.g. a fresh classification head: a linear probe). None: FLOW uses
        the prior model's own per-sample loss."""
        return None

    def reference_head(
        self, ctx: RunContext, model: torch.nn.Module, split: Split
    ) -> dict[str, torch.Tensor] | None:
        """The fresh new-task head set to the probe :meth:`reference_losses` fits, as entries
        of ``model.state_dict()`` (FLOW's ``probe_init`` starts fine-tuning from it, as the
        authors' code does, and so does ``lp-ft``). None: the new task has no fresh head."""
        return None


# -- helpers families share ----------------------------------------------------------------------


def plugin_key(ctx: RunContext, key: dict[str, Any]) -> str:
    """The cache key of a plugin's result computed from the prior model: ``key`` (the plugin's
    own settings, data fingerprints) with the prior model's identity, the task (class,
    version, config such as ``max_length``, source code) and the evaluation settings (device,
    precision, threads, ...), which change what f0 computes as much as its weights do."""
    return hash_json(
        {
            "prior": ctx.bundle.identity,
            **task_identity(ctx.task),
            "settings": evaluation_settings(ctx),
            "key": key,
        }
    )


def plugin_cache(
    ctx: RunContext,
    plugin: str,
    key: dict[str, Any],
    build: Callable[[Path], dict | None],
    forward: int = 0,
    backward: int = 0,
) -> Path:
    """A plugin's own on-disk cache entry, shared by every run that has the same prior model.

    The entry is ``<cache>/plugin-<plugin>/<sha256>``, keyed by the prior model's identity
    (``ctx.bundle.identity``), the task (class, version, config, source code), the evaluation
    settings (device, precision, threads, ...) and ``key`` (whatever else changes the result:
    the plugin's settings, data fingerprints). ``build(directory)`` writes the entry's files when
    it is missing or corrupt (checked against a manifest) and may return metadata; the entry's
    directory is returned.

    A run's reported cost must not depend on what is on disk: ``build`` counts its own passes
    (``extra=True``, ``ctx.count_extra``), and on a hit, where it does not run, ``forward``
    samples of inference and ``backward`` ones of backward passes (what it would have counted)
    are charged instead (``ctx.count_extra``), so a run pays once either way.
    """
    built = []

    def counted_build(directory: Path) -> dict | None:
        built.append(True)
        return build(directory)

    entry = cached_dir(f"plugin-{plugin}", plugin_key(ctx, key), counted_build)
    if not built:
        ctx.count_extra(forward=forward, backward=backward)
    return entry


def load_entries(
    model: torch.nn.Module, entries: dict[str, torch.Tensor], what: str, remedy: str
) -> None:
    """Copy ``entries`` (``model.state_dict()`` names -> tensors, e.g. a fitted head from
    :meth:`Task.reference_head`) into ``model`` in place, cast to each entry's device and dtype.

    A name the model lacks or a shape that differs is one :class:`ForgetbenchError`: ``what``
    (whose entries), the name and shape, then ``remedy`` (what the user can do); nothing is
    copied then."""
    state = model.state_dict()
    for name, value in entries.items():
        if name not in state or state[name].shape != value.shape:
            raise ForgetbenchError(
                f"{what} {name} {tuple(value.shape)} does not fit the model; {remedy}"
            )
    with torch.no_grad():
        for name, value in entries.items():
            state[name].copy_(value.to(state[name].device, state[name].dtype))


def pad_logits(size: int, parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """:attr:`PerSample.logits` of a batch whose rows go through heads of different widths.

    ``parts``: (row indices [R], logits [R, C_head]) per head; returns [size, max C_head] with
    ``-inf`` where a row's head has fewer classes (probability 0 under softmax)."""
    width = max(logits.shape[1] for _, logits in parts)
    padded = parts[0][1].new_full((size, width), float("-inf"))
    for rows, logits in parts:
        filler = logits.new_full((logits.shape[0], width - logits.shape[1]), float("-inf"))
        padded = padded.index_copy(0, rows, torch.cat([logits, filler], dim=1))
    return padded


def fit_probe(
    features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int, l2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit a linear probe (multinomial logistic regression) on frozen features; returns its
    per-sample training loss [N], its weight [D, C] and bias [C]: what a family with a fresh
    new-task head returns from :meth:`Task.reference_losses` (FLOW's reference losses) and
    :meth:`Task.reference_head` (the fresh head set to the probe: LP-FT, FLOW's
    ``probe_init``), fitted on f0's features of the fresh head's inputs.

    Zero initialisation and full-batch L-BFGS, so it is deterministic (no seed); it runs on
    the features' device (``labels`` on the same one).

    Args:
        features: [N, D] float features.
        labels: [N] int64 class indices.
        classes: number of classes.
        steps: L-BFGS iterations (full batch).
        l2: penalty ``l2/2 * ||W||^2`` on the weights (not the bias).
    """
    features = features.float()
    weight = torch.zeros(features.shape[1], classes, device=features.device, requires_grad=True)
    bias = torch.zeros(classes, device=features.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    cross_entropy = torch.nn.functional.cross_entropy

    def closure():
        optimizer.zero_grad()
        loss = cross_entropy(features @ weight + bias, labels) + l2 / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        losses = cross_entropy(features @ weight + bias, labels, reduction="none")
    return losses, weight.detach(), bias.detach()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens: [B, T, D], [B, T] -> [B, D]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def tap_layers(num_layers: int, taps: int = 4) -> list[int]:
    """Evenly spaced hidden-state indices from the embedding output (0) to the last layer:
    the feature taps LDIFS reads (4 taps: 0, L/3, 2L/3, L)."""
    return sorted({round(i * num_layers / (taps - 1)) for i in range(taps)})


_STACK_NAMES = ("layer", "layers", "block", "blocks", "resblocks", "h")


def module_stack(module: torch.nn.Module, strict: bool = False) -> list[torch.nn.Module]:
    """The blocks of every layer list in ``module``, in registration order: each
    ``ModuleList`` or ``Sequential`` named ``layer``, ``layers``, ``block``, ``blocks``,
    ``resblocks`` or ``h`` (BERT's ``encoder.layer``, DistilBERT's ``transformer.layer``, Marian's
    ``encoder.layers`` then ``decoder.layers``, T5's ``block``, GPT-2's ``h``, open_clip's
    ``transformer.resblocks``, timm's ``blocks``), lists nested inside a found block left
    out. Pass the part a task fine-tunes, e.g. CLIP's image tower only. ``strict``: none
    found is a ForgetbenchError naming ``module``'s class (an architecture whose blocks have
    other names, e.g. open_clip's ModifiedResNet, ALBERT), not an empty list."""
    stack: list[torch.nn.Module] = []
    found: list[str] = []
    for name, child in module.named_modules():
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        if name.rsplit(".", 1)[-1] in _STACK_NAMES and isinstance(
            child, torch.nn.ModuleList | torch.nn.Sequential
        ):
            found.append(name)
            stack.extend(child)
    if strict and not stack:
        raise ForgetbenchError(
            f"no layer stack known for {type(module).__name__}: none of its layer lists is"
            f" named {', '.join(_STACK_NAMES)}"
        )
    return stack


# Public names defined in modules that import this one (the engine, the rehearsal helpers, the
# test harness): re-exported lazily so plugins import every public name from one module.
_LAZY = {
    "RunContext": "forgetbench.context",
    "RehearsalMonitor": "forgetbench.rehearsal",
    "REHEARSAL_COLUMNS": "forgetbench.rehearsal",
    "run_for_test": "forgetbench.testing",
    "RunResult": "forgetbench.testing",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'forgetbench.api' has no attribute {name!r}")
