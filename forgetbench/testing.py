"""Mock tasks and a one-call run for tests: tiny models built from configs, tiny data built in
code, and :func:`run_for_test` (re-exported by ``forgetbench.api``), which runs methods on a mock
task through the real engine and a real SQLite store in seconds on a CPU.

The mock tasks are built only on the public API (``forgetbench.api``), as a third party's task
would be:

- ``tiny`` (:class:`TinyTextTask`): classification. Token-id "sentences", a 2-layer BERT, one
  head per task, planted rules (each label's marker token appears three times).
- ``tiny-qa`` (:class:`TinyQATask`): span extraction. The question is one marker token; the
  answer is the 3-token span right after that marker in the context. Main metric ``f1``
  (token overlap), so the leaderboard and Pareto marks are exercised on a metric other than
  accuracy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from forgetbench.api import (
    EvalResult,
    Method,
    ModelBundle,
    PerSample,
    RunContext,
    Split,
    Stage0Spec,
    Task,
    TaskData,
    TaskMetadata,
    TrainConfig,
    check,
    module_stack,
    pad_logits,
)
from forgetbench.cache import CACHE_ENV, hash_json
from forgetbench.config import config_dict
from forgetbench.registry import Registry, get_registry

VOCAB = 64
PAD = 0
CLS = 1
FILLER = (20, VOCAB)  # tokens that carry no label
# The mock tasks' fine-tuning budget: seconds on a CPU.
MOCK_TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "batch_size": 16,
    "lr": 1e-3,
    "eval_batch_size": 64,
}


def tiny_bert_config(hidden: int = 32, layers: int = 2):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )


def tiny_encoder(hidden: int = 32, layers: int = 2, seed: int = 0):
    """A randomly initialised BertModel small enough for unit tests."""
    from transformers import BertModel

    torch.manual_seed(seed)
    return BertModel(tiny_bert_config(hidden, layers), add_pooling_layer=False)


def pad_tokens(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` [B, T] and ``attention_mask`` [B, T]."""
    width = max(len(tokens) for tokens in sequences)
    ids = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for row, tokens in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids, (ids != PAD).long()


def mean_taps(hidden_states, mask: torch.Tensor) -> list[torch.Tensor]:
    """Mask-averaged hidden states of the embedding output and every layer, each [B, D]."""
    weights = mask.unsqueeze(-1).float()
    return [(h * weights).sum(1) / weights.sum(1).clamp(min=1.0) for h in hidden_states]


def _planted_rows(count: int, marker_base: int, classes: int, seed: int) -> list[dict]:
    """Random filler sequences with the label's marker token at three positions."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        length = int(rng.integers(6, 16))
        tokens = rng.integers(*FILLER, size=length)
        label = int(rng.integers(classes))
        tokens[rng.choice(length, size=3, replace=False)] = marker_base + label
        rows.append(
            {"tokens": [CLS, *tokens.tolist()], "label": label, "aux": int(rng.integers(3))}
        )
    return rows


def _splits(rows: list[dict], train_size: int, source: str, offset: int) -> tuple[Split, Split]:
    examples = [{"id": offset + i, **row, "source": source} for i, row in enumerate(rows)]
    return Split(f"{source}_train", examples[:train_size]), Split(
        f"{source}_eval", examples[train_size:]
    )


@dataclass
class TinyConfig:
    prior_train_size: int = 256
    prior_eval_size: int = 128
    new_train_size: int = 256
    new_eval_size: int = 128
    prior_classes: int = 4
    new_classes: int = 3
    stage0_steps: int = 30
    hidden: int = field(default=32, metadata={"help": "encoder width"})

    def __post_init__(self):
        check(self.prior_classes >= 2 and self.new_classes >= 2, "need at least 2 classes")
        check(self.stage0_steps >= 0, "stage0_steps must be >= 0")


class TinyClassifier(nn.Module):
    """A tiny BERT, mean pooling and one linear head per task."""

    def __init__(self, encoder: nn.Module, heads: dict[str, int]):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(0.1)
        width = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in heads.items()})


class TinyTextTask(Task):
    """A mock text-classification scenario (tiny BERT, token ids, planted rules)."""

    metadata = TaskMetadata(
        name="tiny",
        family="text-classification",
        description="mock classification task for tests",
        offline=True,
    )
    Config = TinyConfig
    train_defaults: ClassVar[dict[str, Any]] = MOCK_TRAIN_DEFAULTS

    def load_data(self, ctx: RunContext) -> TaskData:
        c = self.config
        prior = _planted_rows(c.prior_train_size + c.prior_eval_size, 2, c.prior_classes, seed=1)
        new = _planted_rows(c.new_train_size + c.new_eval_size, 10, c.new_classes, seed=2)
        return TaskData(
            *_splits(prior, c.prior_train_size, "prior", 0),
            *_splits(new, c.new_train_size, "new", 100_000),
            info={"prior_labels": c.prior_classes, "new_labels": c.new_classes},
        )

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        return {"label": data.prior_train.column("label"), "aux": data.prior_train.column("aux")}

    @property
    def stage0(self) -> Stage0Spec:
        train = TrainConfig(steps=self.config.stage0_steps, batch_size=16, lr=3e-3)
        return Stage0Spec(train=train, base="tiny-bert", key={"hidden": self.config.hidden})

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        heads = {"prior": self.config.prior_classes}
        return ModelBundle(TinyClassifier(tiny_encoder(self.config.hidden), heads), None)

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        save_file(dict(bundle.model.state_dict()), str(directory / "model.safetensors"))
        (directory / "bundle.json").write_text(json.dumps(config_dict(self.config)))

    def load_bundle(self, directory: Path) -> ModelBundle:
        model = self.build_prior(None, None).model
        model.load_state_dict(load_file(str(directory / "model.safetensors")))
        return ModelBundle(model, None, hash_json({"tiny": config_dict(self.config)}), "tiny")

    def init_new_task(self, ctx: RunContext, bundle: ModelBundle, data: TaskData) -> nn.Module:
        bundle.model.heads["new"] = nn.Linear(self.config.hidden, self.config.new_classes)
        return bundle.model

    def collate(self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]) -> dict:
        ids, mask = pad_tokens([e["tokens"] for e in examples])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": torch.tensor([e["label"] for e in examples]),
            "prior_head": torch.tensor([e["source"] == "prior" for e in examples]),
        }

    def forward(self, model, inputs, with_features: bool = False) -> PerSample:
        output = model.encoder(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            output_hidden_states=True,
        )
        taps = mean_taps(output.hidden_states, inputs["attention_mask"])
        pooled = model.dropout(taps[-1])
        size = pooled.shape[0]
        loss, confidence = pooled.new_zeros(size), pooled.new_zeros(size)
        success = torch.zeros(size, dtype=torch.bool, device=pooled.device)
        parts = []
        for head, is_prior in (("prior", True), ("new", False)):
            rows = (inputs["prior_head"] == is_prior).nonzero().squeeze(1)
            if rows.numel():
                logits = model.heads[head](pooled[rows]).float()
                parts.append((rows, logits))
                labels = inputs["labels"][rows]
                probability, prediction = logits.softmax(-1).max(-1)
                loss = loss.index_copy(0, rows, F.cross_entropy(logits, labels, reduction="none"))
                confidence = confidence.index_copy(0, rows, probability)
                success = success.index_copy(0, rows, prediction == labels)
        features = taps if with_features else None
        return PerSample(loss, success, confidence, features, pad_logits(size, parts))

    def lora_target_modules(self, model: nn.Module) -> list[str]:
        return ["query", "value"]

    def layer_stack(self, model: nn.Module) -> list[nn.Module]:
        return module_stack(model.encoder)

    def feature_taps(self) -> str:
        return "mask-averaged hidden states of the embedding output and each layer"


# -- span extraction ---------------------------------------------------------------------------

SPAN = 3  # answer length in tokens


def _qa_rows(count: int, markers: range, seed: int) -> list[dict]:
    """Question = a marker token; context = filler with the marker planted once, followed by a
    3-token answer span. Start/end are positions in the model input ``[CLS, q, context...]``."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        marker = int(rng.choice(markers))
        context = rng.integers(*FILLER, size=int(rng.integers(8, 20))).tolist()
        at = int(rng.integers(0, len(context) - SPAN))
        context[at] = marker
        start = 2 + at + 1
        rows.append({"tokens": [CLS, marker, *context], "start": start, "end": start + SPAN - 1})
    return rows


def span_f1(predicted: tuple[int, int], gold: tuple[int, int]) -> float:
    """Token-overlap F1 of two inclusive spans (0 for an empty or reversed prediction)."""
    (ps, pe), (gs, ge) = predicted, gold
    overlap = max(0, min(pe, ge) - max(ps, gs) + 1)
    if pe < ps or overlap == 0:
        return 0.0
    precision, recall = overlap / (pe - ps + 1), overlap / (ge - gs + 1)
    return 2 * precision * recall / (precision + recall)


@dataclass
class TinyQAConfig:
    prior_train_size: int = 256
    prior_eval_size: int = 96
    new_train_size: int = 256
    new_eval_size: int = 96
    stage0_steps: int = 300  # f0 then gets about 0.6 F1 on the prior task
    hidden: int = 32

    def __post_init__(self):
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")


class TinyQATask(Task):
    """A mock extractive-QA scenario: prior markers 2-5, new markers 10-13, one shared span head."""

    metadata = TaskMetadata(
        name="tiny-qa",
        family="qa",
        description="mock span-extraction task for tests",
        prior_metric="f1",
        new_metric="f1",
        offline=True,
    )
    Config = TinyQAConfig
    train_defaults: ClassVar[dict[str, Any]] = MOCK_TRAIN_DEFAULTS

    def load_data(self, ctx: RunContext) -> TaskData:
        c = self.config
        prior = _qa_rows(c.prior_train_size + c.prior_eval_size, range(2, 6), seed=3)
        new = _qa_rows(c.new_train_size + c.new_eval_size, range(10, 14), seed=4)
        return TaskData(
            *_splits(prior, c.prior_train_size, "prior", 0),
            *_splits(new, c.new_train_size, "new", 100_000),
        )

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        return {"marker": np.asarray([e["tokens"][1] for e in data.prior_train.examples])}

    @property
    def stage0(self) -> Stage0Spec:
        train = TrainConfig(steps=self.config.stage0_steps, batch_size=16, lr=3e-3)
        return Stage0Spec(train=train, base="tiny-bert-qa", key={"hidden": self.config.hidden})

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        from transformers import BertForQuestionAnswering

        return ModelBundle(BertForQuestionAnswering(tiny_bert_config(self.config.hidden)), None)

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        bundle.model.save_pretrained(directory / "model", safe_serialization=True)
        (directory / "bundle.json").write_text(json.dumps(config_dict(self.config)))

    def load_bundle(self, directory: Path) -> ModelBundle:
        from transformers import BertForQuestionAnswering

        model = BertForQuestionAnswering.from_pretrained(directory / "model", use_safetensors=True)
        return ModelBundle(model, None, hash_json({"tiny-qa": config_dict(self.config)}), "tiny-qa")

    def collate(self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]) -> dict:
        ids, mask = pad_tokens([e["tokens"] for e in examples])
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "start_positions": torch.tensor([e["start"] for e in examples]),
            "end_positions": torch.tensor([e["end"] for e in examples]),
        }

    def logits(self, model, inputs, with_features: bool = False):
        """Start and end logits [B, T] with padding masked out, and the model's output."""
        output = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            output_hidden_states=with_features,
        )
        masked = (1 - inputs["attention_mask"]).bool()
        starts = output.start_logits.float().masked_fill(masked, -1e4)
        return starts, output.end_logits.float().masked_fill(masked, -1e4), output

    def forward(self, model, inputs, with_features: bool = False) -> PerSample:
        starts, ends, output = self.logits(model, inputs, with_features)
        gold_start, gold_end = inputs["start_positions"], inputs["end_positions"]
        loss = (
            F.cross_entropy(starts, gold_start, reduction="none")
            + F.cross_entropy(ends, gold_end, reduction="none")
        ) / 2
        p_start, start = starts.softmax(-1).max(-1)
        p_end, end = ends.softmax(-1).max(-1)
        success = (start == gold_start) & (end == gold_end)
        taps = mean_taps(output.hidden_states, inputs["attention_mask"]) if with_features else None
        return PerSample(loss, success, p_start * p_end, taps)

    def evaluate(self, ctx: RunContext, model: nn.Module, split: Split) -> EvalResult:
        """Exact match (the predicted span is the gold one) and token-overlap F1."""
        f1, success, losses = [], [], []
        for batch in ctx.batches(split):
            starts, ends, _ = self.logits(model, batch.inputs)
            gold_start, gold_end = batch.inputs["start_positions"], batch.inputs["end_positions"]
            loss = F.cross_entropy(starts, gold_start, reduction="none") + F.cross_entropy(
                ends, gold_end, reduction="none"
            )
            losses.append((loss / 2).cpu())
            spans = zip(starts.argmax(-1).tolist(), ends.argmax(-1).tolist(), strict=True)
            golds = zip(gold_start.tolist(), gold_end.tolist(), strict=True)
            for span, gold in zip(spans, golds, strict=True):
                f1.append(span_f1(span, gold))
                success.append(span == gold)
        metrics = {
            "exact_match": float(np.mean(success)),
            "f1": float(np.mean(f1)),
            "loss": float(torch.cat(losses).mean()),
        }
        return EvalResult(metrics, np.asarray(success), np.asarray(f1))

    def lora_target_modules(self, model: nn.Module) -> list[str]:
        return ["query", "value"]

    def layer_stack(self, model: nn.Module) -> list[nn.Module]:
        return module_stack(model)


def registry_with(*extra_methods: type, tasks: tuple[type, ...] = ()) -> Registry:
    """The installed registry plus the mock tasks and any extra method/task classes."""
    installed = get_registry()
    registry = Registry(dict(installed.methods), dict(installed.tasks), list(installed.problems))
    for cls in (TinyTextTask, TinyQATask):
        registry.add_task(cls, "forgetbench.testing")
    for cls in tasks:
        registry.add_task(cls, "test")
    for cls in extra_methods:
        registry.add_method(cls, "test")
    return registry


def _with_classes(
    registry: Registry, methods: Sequence[type], tasks: Sequence[type], provider: str
) -> Registry:
    """``registry`` plus these classes; a class under a name already registered replaces it
    (a test may run a modified copy of an installed plugin)."""
    for cls in methods:
        registry.methods.pop(cls.name, None)
        registry.add_method(cls, provider)
    for cls in tasks:
        registry.tasks.pop(cls.metadata.name, None)
        registry.add_task(cls, provider)
    return registry


@dataclass
class RunResult:
    """What the store holds for one run of :func:`run_for_test`.

    ``metrics``: ``{"<split>/<stage>/<name>": value}``, e.g. ``prior/after/accuracy``,
    ``prior/derived/forgetting``, ``run/derived/<diagnostic>``; ``compute``: the run's
    :class:`~forgetbench.api.Compute` counters; ``series``: ``[(name, step, value)]``;
    ``run``: the whole ``runs`` row (config, versions, status...); ``db``: the store's path.
    """

    run_id: int
    metrics: dict[str, float]
    compute: dict[str, float]
    series: list[tuple[str, int, float]]
    run: dict[str, Any]
    db: str


@contextmanager
def _cache_under(directory: Path) -> Iterator[None]:
    """``$FORGETBENCH_CACHE`` as it is when set (a test suite's own), else under ``directory``."""
    if os.environ.get(CACHE_ENV):
        yield
        return
    os.environ[CACHE_ENV] = str(directory / "cache")
    try:
        yield
    finally:
        os.environ.pop(CACHE_ENV, None)


def run_for_test(
    *methods: type[Method] | str,
    task: type[Task] | str = "tiny",
    settings: dict[str, Any] | None = None,
    steps: int = 5,
    seed: int = 0,
    directory: str | Path | None = None,
) -> RunResult:
    """Run ``methods`` (stacked in the order given) on a task through the real engine and
    store, and return what was stored. Raises what ``forgetbench run`` would (a
    :class:`~forgetbench.api.ForgetbenchError` for bad settings).

    Args:
        methods: method classes (registered for this run only, no install needed) or names of
            installed methods; default ``finetune``.
        task: a task class (registered for this run only) or the name of an installed task;
            default the mock ``tiny`` task (a 2-layer BERT on token ids, seconds on a CPU).
        settings: ``--set`` overrides, e.g. ``{"ewc.lam": 10, "task.stage0_steps": 5}``.
        steps: fine-tuning steps.
        seed: the run seed.
        directory: where the SQLite store (and, unless ``$FORGETBENCH_CACHE`` is set, the
            cache) go; default a fresh temporary directory.

    Example::

        result = run_for_test(MyMethod, settings={"my-method.strength": 0.5})
        assert result.run["status"] == "ok"
        assert result.metrics["prior/after/accuracy"] >= 0.0
    """
    from forgetbench.runner import RunRequest, execute
    from forgetbench.store import Store

    classes = [m for m in methods if isinstance(m, type)]
    names = [m.name if isinstance(m, type) else m for m in methods] or ["finetune"]
    tasks = [task] if isinstance(task, type) else []
    registry = _with_classes(registry_with(), classes, tasks, "run_for_test")
    task_name = task.metadata.name if isinstance(task, type) else task
    if directory is None:
        directory = tempfile.mkdtemp(prefix="forgetbench-test-")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    db = str(folder / "results.db")
    request = RunRequest(task_name, names, seed, steps, dict(settings or {}))
    with _cache_under(folder):
        run_id = execute(request, db=db, registry=registry)
    store = Store(db, read_only=True)
    run = store.get_run(run_id)
    metrics = store.get_metrics([run_id])[run_id]
    return RunResult(run_id, metrics, run["compute"], store.get_series(run_id), run, db)
