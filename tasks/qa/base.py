"""The extractive-QA family: a span-prediction head shared by the prior and the new task.

Examples are SQuAD-shaped dicts: ``id`` (a stable integer), ``question``, ``context`` and
``answers`` (``{"text": [...], "answer_start": [...]}``, character offsets into ``context``),
plus whatever keys a dataset adds. Contexts longer than ``max_length`` are cut into overlapping
windows (``stride`` tokens of overlap):

- training (``collate``) keeps one window per example, the first one that holds its first gold
  answer, so that batch rows stay examples (an answer that fits no window points at [CLS]);
- evaluation (``evaluate``) reads every window and keeps the best-scoring span over all of them,
  as in the SQuAD reference setup.

Metrics (SQuAD v1.1 exact match and F1, computed by torchmetrics) are stored as fractions in
[0, 1], like accuracy elsewhere in forgetbench, not as torchmetrics' percentages.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from forgetbench.api import (
    EvalResult,
    ForgetbenchError,
    ModelBundle,
    PerSample,
    Split,
    Stage0Spec,
    Task,
    TaskData,
    TrainConfig,
    hash_dir,
    hash_json,
    masked_mean,
    module_stack,
    tap_layers,
)

if TYPE_CHECKING:
    from forgetbench.api import RunContext

# What a BERT-family QA model takes; anything else in a batch's inputs is a target.
MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")
BUNDLE_FORMAT = 1


# -- examples ----------------------------------------------------------------------------------


def stable_id(key: str) -> int:
    """A 48-bit integer id derived from a string key (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")


def answer_bins(examples: Sequence[dict[str, Any]]) -> np.ndarray:
    """Length of each example's first gold answer in words, binned: 1, 2-3, 4-7, 8+."""
    words = [len(e["answers"]["text"][0].split()) if e["answers"]["text"] else 0 for e in examples]
    return np.digitize(words, [2, 4, 8]).astype(np.int64)


def category_bins(values: Sequence[str]) -> np.ndarray:
    """Integer bins of string categories (bins numbered in sorted order of the categories)."""
    names = sorted(set(values))
    return np.asarray([names.index(v) for v in values], dtype=np.int64)


# -- windows -----------------------------------------------------------------------------------


@dataclass
class Windows:
    """Tokenised windows of a list of examples.

    ``encoding``: the tokenizer's output (lists, unpadded) with ``offset_mapping``;
    ``example_of[w]``: the example window ``w`` belongs to; ``gold[w]``: the token span
    (start, end) of the example's first gold answer in window ``w``, None where it does not fit.
    """

    encoding: Any
    example_of: list[int]
    gold: list[tuple[int, int] | None]

    def context_mask(self, window: int) -> list[bool]:
        """Which tokens of ``window`` belong to the context (the only ones an answer may use)."""
        return [sequence == 1 for sequence in self.encoding.sequence_ids(window)]


def answer_token_span(
    offsets: Sequence[tuple[int, int]],
    sequence_ids: Sequence[int | None],
    start_char: int,
    end_char: int,
) -> tuple[int, int] | None:
    """Token span (start, end), inclusive, covering characters [start_char, end_char) of the
    context in one window, or None when the window does not hold all of them."""
    context = [t for t, sequence in enumerate(sequence_ids) if sequence == 1]
    if not context:
        return None
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return None
    start = first
    while start <= last and offsets[start][0] <= start_char:
        start += 1
    end = last
    while end >= first and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def encode_windows(
    tokenizer, examples: Sequence[dict[str, Any]], max_length: int, stride: int
) -> Windows:
    """Every window of every example (question first, the context truncated and overflowing)."""
    encoding = tokenizer(
        # Leading spaces in questions waste tokens and would shift nothing else (SQuAD has some).
        [e["question"].lstrip() for e in examples],
        [e["context"] for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    example_of = list(encoding["overflow_to_sample_mapping"])
    check_coverage(encoding, example_of, examples)
    gold = []
    for window, index in enumerate(example_of):
        answers = examples[index]["answers"]
        if not answers["text"]:
            gold.append(None)
            continue
        start = int(answers["answer_start"][0])
        end = start + len(answers["text"][0])
        offsets = encoding["offset_mapping"][window]
        gold.append(answer_token_span(offsets, encoding.sequence_ids(window), start, end))
    return Windows(encoding, example_of, gold)


def check_coverage(encoding, example_of: list[int], examples: Sequence[dict[str, Any]]) -> None:
    """Refuse windows that stop before the end of their context.

    Some tokenizer versions (seen with tokenizers 0.23.2) return fewer
    overflowing windows than the context needs, so answers past them would silently point at
    [CLS] in training and never be found in evaluation.
    """
    reached: dict[int, int] = {}
    for window, index in enumerate(example_of):
        offsets, sequences = encoding["offset_mapping"][window], encoding.sequence_ids(window)
        ends = [end for (_, end), sequence in zip(offsets, sequences, strict=True) if sequence == 1]
        reached[index] = max([reached.get(index, 0), *ends])
    for index, example in enumerate(examples):
        if example["context"][reached.get(index, 0) :].strip():
            import tokenizers
            import transformers

            raise ForgetbenchError(
                f"the tokenizer's windows stop at character {reached.get(index, 0)} of a"
                f" {len(example['context'])}-character context (transformers"
                f" {transformers.__version__}, tokenizers {tokenizers.__version__}): upgrade"
                " tokenizers to >= 0.23.3"
            )


def answer_windows(windows: Windows) -> list[int]:
    """Per example (in order), its first window holding the gold answer, else its first one."""
    chosen: dict[int, int] = {}
    for window, index in enumerate(windows.example_of):
        holds_answer = windows.gold[window] is not None
        if index not in chosen or (holds_answer and windows.gold[chosen[index]] is None):
            chosen[index] = window
    return [chosen[index] for index in range(len(chosen))]


def pad_windows(windows: Windows, rows: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Model inputs for the given windows, padded to the longest (dynamic padding)."""
    encoding = windows.encoding
    length = max(len(encoding["input_ids"][w]) for w in rows)
    inputs = {}
    for key in MODEL_KEYS:
        if key not in encoding:
            continue
        fill = pad_id if key == "input_ids" else 0
        padded = [encoding[key][w] + [fill] * (length - len(encoding[key][w])) for w in rows]
        inputs[key] = torch.tensor(padded, dtype=torch.long)
    return inputs


def gold_positions(windows: Windows, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gold start and end token of each window in ``rows`` ([CLS], index 0, where none fits)."""
    spans = [windows.gold[w] or (0, 0) for w in rows]
    return (
        torch.tensor([s for s, _ in spans], dtype=torch.long),
        torch.tensor([e for _, e in spans], dtype=torch.long),
    )


# -- model outputs -----------------------------------------------------------------------------


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 logits with masked-out positions at -inf-ish, so that padding (which depends on
    the rest of the batch) never takes probability mass: per-sample results stay per sample."""
    return logits.float().masked_fill(~mask.bool(), torch.finfo(torch.float32).min)


def span_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Per-example loss [B]: mean of the start and end cross-entropies (as transformers' QA
    heads, without the batch mean)."""
    start = F.cross_entropy(start_logits, start_positions, reduction="none")
    end = F.cross_entropy(end_logits, end_positions, reduction="none")
    return (start + end) / 2


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    valid: torch.Tensor,
    max_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Highest ``start + end`` logit span per window over valid tokens, with start <= end and
    at most ``max_tokens`` tokens: (score [W], start [W], end [W]). A window without a valid
    token scores -inf."""
    length = start_logits.shape[1]
    positions = torch.arange(length, device=start_logits.device)
    width = positions[None, :] - positions[:, None]  # [start, end] -> end - start
    band = (width >= 0) & (width < max_tokens)
    allowed = band[None] & valid[:, :, None] & valid[:, None, :]
    scores = start_logits.float()[:, :, None] + end_logits.float()[:, None, :]
    scores = scores.masked_fill(~allowed, -math.inf).flatten(1)
    best, flat = scores.max(-1)
    return best, flat // length, flat % length


# -- metrics -----------------------------------------------------------------------------------

PUNCTUATION = frozenset(string.punctuation)


def squad_scores(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """SQuAD v1.1 exact match and F1 (torchmetrics), per example and over all, as fractions.

    Returns (exact_match [N], f1 [N], {"exact_match": ..., "f1": ...}); each prediction is
    scored against its best-matching reference (after SQuAD's normalisation: lower case, no
    punctuation, no articles, single spaces).
    """
    from torchmetrics.functional.text import squad

    preds = [{"prediction_text": text, "id": str(i)} for i, text in enumerate(predictions)]
    targets = [
        {"answers": {"text": list(texts), "answer_start": [0] * len(texts)}, "id": str(i)}
        for i, texts in enumerate(references)
    ]
    each = [squad(pred, target) for pred, target in zip(preds, targets, strict=True)]
    exact = np.asarray([float(s["exact_match"]) / 100 for s in each])
    f1 = np.asarray([float(s["f1"]) / 100 for s in each])
    # v1.1's F1 is 0 for a prediction with no token left after normalisation (no token in
    # common), where torchmetrics follows v2.0 and gives 1 against an answer normalised to
    # nothing as well ("the" against "A")
    f1[[not normalize_answer(text).split() for text in predictions]] = 0.0
    # the means in float64 (torchmetrics sums in float32)
    return exact, f1, {"exact_match": float(exact.mean()), "f1": float(f1.mean())}


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation and the articles a, an, the
    removed, white space collapsed."""
    text = "".join(c for c in text.lower() if c not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


# -- the family's base task --------------------------------------------------------------------


class SpanQATask(Task):
    """Extractive QA with ``AutoModelForQuestionAnswering``: the prior and the new task share
    the encoder and the ``qa_outputs`` span head (no fresh head, so ``new/before`` is the prior
    model's zero-shot score on the new task).

    Subclasses set ``metadata``, a ``Config`` dataclass with at least ``max_length``,
    ``stride`` and ``max_answer_tokens``, and implement ``load_data``, ``base_model`` and
    ``stage0_train``.
    """

    # -- the prior model ---------------------------------------------------------------------

    def base_model(self) -> str:
        """The base checkpoint stage 0 starts from: a local HF folder or a hub id."""
        raise NotImplementedError

    def stage0_train(self) -> TrainConfig:
        """The stage-0 budget: fine-tuning the base model on the prior QA task."""
        raise NotImplementedError

    @functools.cached_property
    def base_identity(self) -> str:
        """Content hash of a local base folder, else the hub id itself."""
        base = self.base_model()
        return hash_dir(Path(base)) if Path(base).is_dir() else base

    @property
    def stage0(self) -> Stage0Spec:
        return Stage0Spec(
            train=self.stage0_train(),
            base=self.base_identity,
            key={"max_length": self.config.max_length, "stride": self.config.stride, "v": 1},
        )

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        """The base encoder with a new, untrained span head (stage 0 trains both)."""
        base = self.base_model()
        try:
            model, tokenizer = load_qa_model(base, ctx.trust_remote_code, safetensors_only=True)
        except (OSError, ValueError) as error:
            raise ForgetbenchError(
                f"base model {base!r} not available ({first_line(error)}): pass --prior-model"
                " PATH (a QA checkpoint) or --set task.base_model=LOCAL_DIR"
            ) from None
        return ModelBundle(model, tokenizer, identity=self.base_identity, source=f"base:{base}")

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        """``model/`` (weights as safetensors, config, tokenizer) and ``bundle.json``."""
        bundle.model.save_pretrained(directory / "model")
        bundle.processor.save_pretrained(directory / "model")
        meta = {
            "family": self.metadata.family,
            "task": self.metadata.name,
            "format": BUNDLE_FORMAT,
            "max_length": self.config.max_length,
            "stride": self.config.stride,
        }
        (directory / "bundle.json").write_text(json.dumps(meta, indent=1))

    def load_bundle(self, directory: Path) -> ModelBundle:
        """What :meth:`save_bundle` wrote, from safetensors only and without remote code."""
        meta = json.loads((directory / "bundle.json").read_text())
        if meta.get("family") != self.metadata.family:
            raise ForgetbenchError(
                f"{directory} holds a {meta.get('family')!r} model, not an extractive-QA one"
            )
        model, tokenizer = load_qa_model(str(directory / "model"), False, safetensors_only=True)
        identity = hash_dir(directory / "model")
        return ModelBundle(model, tokenizer, identity=identity, source=f"bundle:{directory}")

    def load_prior(self, ctx: RunContext, path: str) -> ModelBundle:
        """``--prior-model``: a directory :meth:`save_bundle` wrote, or any transformers
        question-answering checkpoint (local folder or hub id) with a fast tokenizer."""
        if (Path(path) / "bundle.json").exists():
            return self.load_bundle(Path(path))
        try:
            model, tokenizer = load_qa_model(path, ctx.trust_remote_code, safetensors_only=False)
        except (OSError, ValueError) as error:
            raise ForgetbenchError(
                f"cannot load --prior-model {path!r} as a question-answering checkpoint"
                f" ({first_line(error)})"
            ) from None
        identity = hash_dir(Path(path)) if Path(path).is_dir() else hash_json({"hub": path})
        return ModelBundle(model, tokenizer, identity=identity, source=f"prior-model:{path}")

    # -- one step ----------------------------------------------------------------------------

    def collate(
        self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """One window per example (the one holding its answer) plus gold token positions."""
        tokenizer = bundle.processor
        windows = encode_windows(tokenizer, examples, self.config.max_length, self.config.stride)
        rows = answer_windows(windows)
        inputs = pad_windows(windows, rows, tokenizer.pad_token_id)
        inputs["start_positions"], inputs["end_positions"] = gold_positions(windows, rows)
        return inputs

    def forward(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], with_features: bool = False
    ) -> PerSample:
        """Per-sample span loss; success: the argmax start and end tokens are the gold ones;
        confidence: p(argmax start) * p(argmax end)."""
        output = model(
            **{k: inputs[k] for k in MODEL_KEYS if k in inputs}, output_hidden_states=with_features
        )
        mask = inputs["attention_mask"]
        start_logits = mask_logits(output.start_logits, mask)
        end_logits = mask_logits(output.end_logits, mask)
        starts, ends = inputs["start_positions"], inputs["end_positions"]
        loss = span_loss(start_logits, end_logits, starts, ends)
        start_probability, start = start_logits.softmax(-1).max(-1)
        end_probability, end = end_logits.softmax(-1).max(-1)
        features = None
        if with_features:
            states = output.hidden_states
            features = [masked_mean(states[i], mask) for i in tap_layers(len(states) - 1)]
        return PerSample(
            loss=loss,
            success=(start == starts) & (end == ends),
            confidence=start_probability * end_probability,
            features=features,
        )

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, ctx: RunContext, model: torch.nn.Module, split: Split) -> EvalResult:
        """SQuAD exact match and F1 of the best span over all windows, and the mean training
        loss (on each example's answer window). ``success``: exact match; ``score``: F1."""
        if ctx.bundle is None:
            raise ForgetbenchError("evaluate needs the run's model bundle (its tokenizer)")
        predictions: list[str] = []
        losses: list[torch.Tensor] = []
        for _indices, examples in ctx.chunks(split):
            texts, loss = self.predict_spans(ctx, model, ctx.bundle.processor, examples)
            predictions.extend(texts)
            losses.append(loss)
        references = [e["answers"]["text"] for e in split.examples]
        exact, f1, metrics = squad_scores(predictions, references)
        metrics["loss"] = float(torch.cat(losses).mean())
        return EvalResult(metrics, success=exact == 1.0, score=f1)

    def predict_spans(
        self, ctx: RunContext, model: torch.nn.Module, tokenizer, examples: Sequence[dict]
    ) -> tuple[list[str], torch.Tensor]:
        """Predicted answer text and training loss [N] (CPU) of each example; windows run in
        batches of at most ``ctx.train.eval_batch_size``."""
        windows = encode_windows(tokenizer, examples, self.config.max_length, self.config.stride)
        loss_window = set(answer_windows(windows))
        best = [(-math.inf, "")] * len(examples)
        losses = torch.zeros(len(examples))
        total, size = len(windows.example_of), ctx.train.eval_batch_size
        for begin in range(0, total, size):
            rows = range(begin, min(begin + size, total))
            spans, row_losses = self.score_windows(ctx, model, tokenizer, windows, rows)
            for window, (score, first, last), loss in zip(rows, spans, row_losses, strict=True):
                index = windows.example_of[window]
                if window in loss_window:
                    losses[index] = loss
                if score > best[index][0]:
                    offsets = windows.encoding["offset_mapping"][window]
                    text = examples[index]["context"][offsets[first][0] : offsets[last][1]]
                    best[index] = (score, text)
        return [text for _, text in best], losses

    def score_windows(
        self, ctx: RunContext, model: torch.nn.Module, tokenizer, windows: Windows, rows: range
    ) -> tuple[list[tuple[float, int, int]], list[float]]:
        """One model call on some windows: each one's best span (score, start token, end
        token) and its training loss against the gold tokens ([CLS] where none fits)."""
        padded = pad_windows(windows, rows, tokenizer.pad_token_id)
        inputs = {k: v.to(ctx.device) for k, v in padded.items()}
        with ctx.autocast():
            output = model(**inputs)
        mask = inputs["attention_mask"]
        start_logits = mask_logits(output.start_logits, mask)
        end_logits = mask_logits(output.end_logits, mask)
        valid = context_masks(windows, rows, mask.shape[1]).to(ctx.device)
        spans = best_spans(start_logits, end_logits, valid, self.config.max_answer_tokens)
        gold_start, gold_end = (t.to(ctx.device) for t in gold_positions(windows, rows))
        losses = span_loss(start_logits, end_logits, gold_start, gold_end)
        # one transfer per batch rather than one device sync per window
        scores, starts, ends = (t.cpu().tolist() for t in spans)
        return list(zip(scores, starts, ends, strict=True)), losses.cpu().tolist()

    # -- what methods read -------------------------------------------------------------------

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        """``question_type`` (see :meth:`question_type`) and ``answer_length`` (1, 2-3, 4-7,
        8+ words) of every prior-train example."""
        examples = data.prior_train.examples
        return {
            "question_type": category_bins([self.question_type(e) for e in examples]),
            "answer_length": answer_bins(examples),
        }

    def question_type(self, example: dict[str, Any]) -> str:
        """The question's wh-word (what, who, when, ...; ``other`` when it has none)."""
        words = example["question"].lower().replace("?", " ").split()
        for word in ("what", "which", "who", "whom", "whose", "when", "where", "why", "how"):
            if word in words:
                return word
        return "other"

    def feature_taps(self) -> str:
        return (
            "attention-mask-averaged hidden states (question and context tokens of the training"
            " window) of the embedding output and the encoder layers L/3, 2L/3 and L"
        )

    def lora_target_modules(self, model: torch.nn.Module) -> list[str] | None:
        """BERT-family attention projections: ``query`` and ``value`` (``q_lin``/``v_lin`` in
        DistilBERT); None for other architectures."""
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        for targets in (["query", "value"], ["q_lin", "v_lin"]):
            if set(targets) <= names:
                return targets
        return None

    def layer_stack(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The encoder's transformer layers, bottom first (the span head is not one)."""
        return module_stack(model, strict=True)


def context_masks(windows: Windows, rows: Sequence[int], length: int) -> torch.Tensor:
    """[len(rows), length] bool: context tokens of each window, padded with False."""
    masks = [windows.context_mask(w) for w in rows]
    return torch.tensor([m + [False] * (length - len(m)) for m in masks], dtype=torch.bool)


def load_qa_model(path: str, trust_remote_code: bool, safetensors_only: bool):
    """An ``AutoModelForQuestionAnswering`` and its fast tokenizer (offsets need a fast one)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    options: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if safetensors_only:
        options["use_safetensors"] = True
    model = AutoModelForQuestionAnswering.from_pretrained(path, **options)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer (no offsets)")
    return model, tokenizer


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, shortened (for one-line errors)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]
