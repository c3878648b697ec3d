"""Core types shared by the engine and every plugin. Kept deliberately few."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

FAMILIES = ("text-classification", "qa", "translation", "clip-image")
SPLITS = ("prior", "new")


@dataclass(frozen=True)
class TaskMetadata:
    """What a task is, for the registry, the leaderboard and provenance."""

    name: str
    family: str
    description: str
    prior_metric: str = "accuracy"
    new_metric: str = "accuracy"
    lower_is_better: frozenset[str] = frozenset({"loss"})
    reference: str = ""
    version: str = "1"
    offline: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"task family must be one of {FAMILIES}, got {self.family!r}")

    def higher_is_better(self, metric: str) -> bool:
        return metric not in self.lower_is_better


@dataclass
class Split:
    """One data split: a list of examples (dicts), each with a stable integer ``id``."""

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


@dataclass
class TaskData:
    """The four splits of a two-stage scenario.

    ``prior_aux`` optionally gives, per prior-train example, a task-defined integer bin (e.g.
    MNLI genre) that mix-cd's ``aux`` partition reads.
    """

    prior_train: Split
    prior_eval: Split
    new_train: Split
    new_eval: Split
    prior_aux: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def fingerprints(self) -> dict[str, str]:
        return {
            split.name: split.fingerprint()
            for split in (self.prior_train, self.prior_eval, self.new_train, self.new_eval)
        }


@dataclass
class PerSample:
    """Per-sample results of one forward pass. All tensors have leading dimension B.

    ``loss`` [B] float (attached to the graph during training), ``correct`` [B] bool (task
    prediction right?), ``confidence`` [B] float (probability of the predicted answer),
    ``features``: optional list of [B, D] tensors read at the task's feature taps.
    """

    loss: torch.Tensor
    correct: torch.Tensor
    confidence: torch.Tensor
    features: list[torch.Tensor] | None = None

    def detach_cpu(self) -> PerSample:
        return PerSample(
            loss=self.loss.detach().float().cpu(),
            correct=self.correct.detach().cpu(),
            confidence=self.confidence.detach().float().cpu(),
            features=None,
        )


@dataclass
class EvalResult:
    """Metrics of one split, plus per-example correctness where the task defines it."""

    metrics: dict[str, float]
    correct: np.ndarray | None = None


@dataclass
class PriorPredictions:
    """The prior model's per-sample results on the prior train set (the shared prior cache)."""

    loss: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray


@dataclass
class Compute:
    """Compute spent by a run, in samples (one sample = one example through the model)."""

    forwarded: int = 0
    backpropagated: int = 0
    extra_inference: int = 0
    eval_inference: int = 0
    wall_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunContext:
    """What a method may read about the current run. Read-only, except the compute counter
    (``ctx.compute.extra_inference += n`` for inference a method spends of its own)."""

    run_id: int | None
    seed: int
    device: torch.device
    task: Task
    train: Any  # forgetbench.config.TrainConfig
    cache_dir: Path
    compute: Compute
    logger: logging.Logger
    new_param_names: frozenset[str] = frozenset()
    # Only ever True when the user passed --trust-remote-code (hub code runs on this machine).
    trust_remote_code: bool = False
    prior_predictions: Callable[[], PriorPredictions] | None = None
    # batches(split, batch_size=None, extra=False): collated device batches over a split for
    # inference; extra=True counts them as the method's extra inference.
    batches: Callable[..., Iterator[dict[str, torch.Tensor]]] | None = None

    def generator(self, purpose: str) -> np.random.Generator:
        """A numpy generator derived from the run seed and a purpose string."""
        digest = hashlib.sha256(f"{self.seed}:{purpose}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))


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
        return round(self.mix_ratio * batch_size)

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``n`` indices into ``data.prior_train`` (int64 array)."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state for checkpoints; learning samplers override it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`state_dict`."""


class Method:
    """Base class of a forgetting mitigation. Subclasses set ``name`` and ``Config`` (a
    dataclass validated in ``__post_init__``) and implement hooks with ``@hookimpl``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    needs_features: ClassVar[bool] = False

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


@dataclass(frozen=True)
class ModelBundle:
    """A model plus what is needed to feed it and to identify it."""

    model: torch.nn.Module
    tokenizer: Any
    identity: str  # content hash of the weights (provenance, cache keys)
    source: str  # where it came from (base model id, stage-0 cache dir, --prior-model path)


class Task(ABC):
    """A two-stage scenario: a prior model f0, then fine-tuning on a new task.

    Abstract only what every task must do; optional steps have no-op defaults.
    """

    metadata: ClassVar[TaskMetadata]
    Config: ClassVar[type] = None  # type: ignore[assignment]
    # Overrides of TrainConfig's defaults for this task (the default fine-tuning budget).
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any = None):
        self.config = config if config is not None else (self.Config() if self.Config else None)

    @abstractmethod
    def load_data(self, ctx: RunContext) -> TaskData:
        """Load the four splits; raise ForgetbenchError naming what is missing."""

    @abstractmethod
    def prepare_prior(
        self, ctx: RunContext, data: TaskData, prior_model: str | None
    ) -> ModelBundle:
        """Return f0: ``prior_model`` if given, else the (cached) stage-0 model."""

    def init_new_task(
        self, bundle: ModelBundle, data: TaskData, ctx: RunContext
    ) -> torch.nn.Module:
        """Add what the new task needs (e.g. a fresh head) and return the model to fine-tune."""
        return bundle.model

    @abstractmethod
    def collate(
        self, examples: Sequence[dict[str, Any]], tokenizer: Any
    ) -> dict[str, torch.Tensor]:
        """Collate examples (mixed prior and new) into model inputs, dynamically padded."""

    @abstractmethod
    def forward(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], with_features: bool = False
    ) -> PerSample:
        """Per-sample loss, correctness and confidence of ``model`` on ``batch``."""

    def evaluate(self, model: torch.nn.Module, split: Split, ctx: RunContext) -> EvalResult:
        """Metrics of ``model`` on ``split``. The default suits classification: accuracy and
        mean loss from :meth:`forward`, plus per-example correctness."""
        losses, correct = [], []
        for batch in ctx.batches(split):
            per_sample = self.forward(model, batch)
            losses.append(per_sample.loss.float().cpu())
            correct.append(per_sample.correct.cpu())
        loss = torch.cat(losses).numpy()
        right = torch.cat(correct).numpy().astype(bool)
        return EvalResult({"accuracy": float(right.mean()), "loss": float(loss.mean())}, right)

    def partitions(self, data: TaskData) -> np.ndarray | None:
        """Optional auxiliary bin per prior-train example for mix-cd (e.g. MNLI genre)."""
        return data.prior_aux

    def feature_taps(self) -> str:
        """Describe the layers whose features ``forward(..., with_features=True)`` returns."""
        return ""
