"""The machine-translation family: one encoder-decoder shared by the prior pairs and the new one.

Examples are dicts ``id`` (a stable integer), ``source`` (English text), ``target`` (its
reference translation), ``src_lang`` and ``tgt_lang`` (ISO 639-1 codes) and ``pair``
(``"en-de"``). The target language reaches the model one of two ways (``lang_style`` in the
bundle's extras):

- ``tag``: a ``>>de<<`` token in front of the source, as multilingual Marian (opus-mt) models do;
- ``m2m``: M2M100's language tokens, the source's in front of the source and the target's in
  front of the target (forced as the first generated token).

Training and the prior cache read the teacher-forced forward pass only (no decoding):

- ``loss``: mean token cross-entropy of the reference;
- ``success``: token accuracy (argmax == reference token, over the reference's tokens) at least
  ``success_token_accuracy``. All tokens right would be the strict analogue of a correct
  label, but a small model gets almost no whole sentence right token by token, which would
  leave mix-cd's estimator nothing to count; the threshold keeps "right" meaning "mostly right"
  and flips when a model drifts towards another language;
- ``confidence``: geometric mean over the reference's tokens of the argmax probability.

Evaluation decodes (batched greedy search, or beam search with ``num_beams``) and scores with
sacrebleu (:mod:`.metrics`): per pair BLEU and chrF and their means over the split's pairs.
Per-example success, from which the core derives the collateral-damage rate, is sentence chrF
at least ``success_chrf`` (default 50: the hypothesis shares about half of the reference's
character n-grams; sentence BLEU is unreliable on segments of a few words).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
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
    Task,
    TaskData,
    hash_dir,
    masked_mean,
    module_stack,
    tap_layers,
)

from .metrics import pair_metrics, sentence_chrf

if TYPE_CHECKING:
    from forgetbench.api import RunContext

BUNDLE_FORMAT = 1
TAG = ">>{lang}<<"
IGNORE = -100


def stable_id(key: str) -> int:
    """A 48-bit integer id derived from a string key (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")


def make_example(source: str, target: str, src_lang: str, tgt_lang: str, origin: str) -> dict:
    """One translation example; its id depends on the origin, the pair and the source."""
    pair = f"{src_lang}-{tgt_lang}"
    return {
        "id": stable_id(f"{origin}:{pair}:{source}"),
        "source": source,
        "target": target,
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "pair": pair,
    }


def pad(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """[len(rows), longest] int64, right-padded with ``value``."""
    length = max(len(row) for row in rows)
    return torch.tensor([list(row) + [value] * (length - len(row)) for row in rows])


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the start token, then the labels minus the last."""
    shifted = labels.new_full(labels.shape, pad_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start_id
    return shifted.masked_fill(shifted == IGNORE, pad_id)


def check_tags(tokenizer, languages: Sequence[str]) -> None:
    """Every language tag must be one token of the vocabulary (else the model cannot tell the
    target language)."""
    vocab = tokenizer.get_vocab()
    missing = [TAG.format(lang=lang) for lang in languages if TAG.format(lang=lang) not in vocab]
    if missing:
        raise ForgetbenchError(
            f"the tokenizer has no language tag token for {', '.join(missing)}: the model needs"
            " one per target language (opus-mt style) or M2M100 language tokens"
        )


def lang_style_of(tokenizer) -> str:
    """``m2m`` for tokenizers with language codes (M2M100), else ``tag``."""
    return "m2m" if hasattr(tokenizer, "get_lang_id") else "tag"


class Seq2SeqTask(Task):
    """Translation with a transformers encoder-decoder (Marian, M2M100): the prior pairs and the
    new pair share every weight (no fresh head), so ``new/before`` is the prior model's
    zero-shot score on the new pair.

    Subclasses set ``metadata`` and a ``Config`` dataclass with at least
    ``max_source_tokens``, ``max_target_tokens``, ``num_beams``, ``success_chrf`` and
    ``success_token_accuracy``, and implement ``load_data`` and ``build_prior``.
    """

    # -- encoding ----------------------------------------------------------------------------

    def encode_sources(self, bundle: ModelBundle, examples: Sequence[dict]) -> list[list[int]]:
        """Token ids of each source, with the target-language tag (``tag`` style) or the
        source-language token (``m2m`` style), truncated to ``max_source_tokens``."""
        tokenizer, style = bundle.processor, bundle.extras.get("lang_style", "tag")
        if style == "tag":
            texts = [f"{TAG.format(lang=e['tgt_lang'])} {e['source']}" for e in examples]
            return self._tokenize(tokenizer, texts, self.config.max_source_tokens)
        rows: list[list[int]] = [[] for _ in examples]
        for lang, members in group_by(examples, "src_lang").items():
            tokenizer.src_lang = lang
            ids = self._tokenize(tokenizer, [examples[i]["source"] for i in members], None)
            for i, row in zip(members, ids, strict=True):
                rows[i] = row
        return [truncate(row, self.config.max_source_tokens) for row in rows]

    def encode_targets(self, bundle: ModelBundle, examples: Sequence[dict]) -> list[list[int]]:
        """Token ids of each reference (``m2m`` style: after the target-language token),
        ending with end-of-sentence, truncated to ``max_target_tokens``."""
        tokenizer = bundle.processor
        rows: list[list[int]] = [[] for _ in examples]
        for lang, members in group_by(examples, "tgt_lang").items():
            if bundle.extras.get("lang_style") == "m2m":
                tokenizer.tgt_lang = lang
            texts = [examples[i]["target"] for i in members]
            ids = tokenizer(text_target=texts, truncation=False)["input_ids"]
            for i, row in zip(members, ids, strict=True):
                rows[i] = truncate(row, self.config.max_target_tokens)
        return rows

    @staticmethod
    def _tokenize(tokenizer, texts: list[str], limit: int | None) -> list[list[int]]:
        ids = tokenizer(texts, truncation=False)["input_ids"]
        return [truncate(row, limit) for row in ids] if limit else ids

    def collate(
        self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Sources, their mask, teacher-forcing decoder inputs and labels (-100 on padding)."""
        config = bundle.model.config
        sources = self.encode_sources(bundle, examples)
        targets = self.encode_targets(bundle, examples)
        input_ids = pad(sources, config.pad_token_id)
        labels = pad(targets, IGNORE)
        return {
            "input_ids": input_ids,
            "attention_mask": (input_ids != config.pad_token_id).long(),
            "decoder_input_ids": shift_right(
                labels, config.decoder_start_token_id, config.pad_token_id
            ),
            "labels": labels,
        }

    # -- one step ----------------------------------------------------------------------------

    def forward(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], with_features: bool = False
    ) -> PerSample:
        """Teacher-forced per-sample loss, success (token accuracy at least
        ``success_token_accuracy``) and confidence (geometric-mean argmax probability)."""
        output = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            decoder_input_ids=inputs["decoder_input_ids"],
            output_hidden_states=with_features,
        )
        labels = inputs["labels"]
        mask = labels != IGNORE
        logits = output.logits.float()
        token_loss = F.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
        )
        count = mask.sum(1).clamp(min=1)
        log_probability, predicted = logits.log_softmax(-1).max(-1)
        accuracy = ((predicted == labels) & mask).sum(1) / count
        features = None
        if with_features:
            features = self._features(output, inputs["attention_mask"], mask)
        return PerSample(
            loss=(token_loss * mask).sum(1) / count,
            success=accuracy >= self.config.success_token_accuracy,
            confidence=((log_probability * mask).sum(1) / count).exp(),
            features=features,
        )

    @staticmethod
    def _features(output, source_mask: torch.Tensor, target_mask: torch.Tensor) -> list:
        """Masked means of encoder states (over source tokens) and decoder states (over
        reference tokens) at the embedding output, the middle layer and the last layer."""
        taps = []
        for states, mask in (
            (output.encoder_hidden_states, source_mask),
            (output.decoder_hidden_states, target_mask),
        ):
            taps += [masked_mean(states[i], mask) for i in tap_layers(len(states) - 1, taps=3)]
        return taps

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, ctx: RunContext, model: torch.nn.Module, split: Split) -> EvalResult:
        """Decode every source, then sacrebleu BLEU and chrF per pair and their means, and the
        mean teacher-forced loss. ``success``: sentence chrF >= ``success_chrf``; ``score``:
        sentence chrF / 100."""
        if ctx.bundle is None:
            raise ForgetbenchError("evaluate needs the run's model bundle (its tokenizer)")
        hypotheses: list[str] = []
        losses = []
        for _indices, examples in ctx.chunks(split):
            hypotheses += self.translate(ctx, model, examples)
            batch = self.collate(ctx.bundle, examples)
            with ctx.autocast():
                per_sample = self.forward(model, {k: v.to(ctx.device) for k, v in batch.items()})
            losses.append(per_sample.loss.float().cpu())
        references = [e["target"] for e in split.examples]
        metrics = pair_metrics([e["pair"] for e in split.examples], hypotheses, references)
        metrics["loss"] = float(torch.cat(losses).mean())
        chrf = sentence_chrf(hypotheses, references)
        return EvalResult(metrics, success=chrf >= self.config.success_chrf, score=chrf / 100)

    def translate(self, ctx: RunContext, model: torch.nn.Module, examples: list[dict]) -> list:
        """Batched generation (greedy, or beam search with ``num_beams``), grouped by target
        language where the model needs a forced first token (``m2m``)."""
        bundle = ctx.bundle
        style = bundle.extras.get("lang_style", "tag")
        groups = group_by(examples, "tgt_lang") if style == "m2m" else {"": range(len(examples))}
        texts = [""] * len(examples)
        for lang, members in groups.items():
            chosen = [examples[i] for i in members]
            input_ids = pad(self.encode_sources(bundle, chosen), model.config.pad_token_id)
            options = {
                "num_beams": self.config.num_beams,
                "do_sample": False,
                "max_new_tokens": self.config.max_target_tokens,
            }
            if style == "m2m":
                options["forced_bos_token_id"] = bundle.processor.get_lang_id(lang)
            input_ids = input_ids.to(ctx.device)
            with ctx.autocast():
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=(input_ids != model.config.pad_token_id).long(),
                    **options,
                )
            decoded = bundle.processor.batch_decode(generated, skip_special_tokens=True)
            for i, text in zip(members, decoded, strict=True):
                texts[i] = text.strip()
        return texts

    # -- the prior model on disk -------------------------------------------------------------

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        """``model/`` (safetensors weights, config, tokenizer) and ``bundle.json``."""
        bundle.model.save_pretrained(directory / "model")
        bundle.processor.save_pretrained(directory / "model")
        meta = {
            "family": self.metadata.family,
            "task": self.metadata.name,
            "format": BUNDLE_FORMAT,
            "lang_style": bundle.extras.get("lang_style", "tag"),
            "tokenizer_class": type(bundle.processor).__name__,
        }
        (directory / "bundle.json").write_text(json.dumps(meta, indent=1))

    def load_bundle(self, directory: Path) -> ModelBundle:
        """What :meth:`save_bundle` wrote, from safetensors only and without remote code."""
        meta = json.loads((directory / "bundle.json").read_text())
        if meta.get("family") != self.metadata.family:
            raise ForgetbenchError(
                f"{directory} holds a {meta.get('family')!r} model, not a translation one"
            )
        model, tokenizer = load_seq2seq(
            str(directory / "model"), False, meta.get("tokenizer_class"), safetensors_only=True
        )
        return ModelBundle(
            model,
            tokenizer,
            identity=hash_dir(directory / "model"),
            source=f"prior-model:{directory}",
            extras={"lang_style": meta.get("lang_style", "tag")},
        )

    # -- what methods read -------------------------------------------------------------------

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        """``lang_pair``: the prior example's language pair (bins in sorted pair order)."""
        pairs = [e["pair"] for e in data.prior_train.examples]
        names = sorted(set(pairs))
        return {"lang_pair": np.asarray([names.index(p) for p in pairs], dtype=np.int64)}

    def feature_taps(self) -> str:
        return (
            "mean encoder states over source tokens and mean decoder states over reference"
            " tokens (teacher-forced), each at the embedding output, the middle layer and the"
            " last layer: six taps"
        )

    def lora_target_modules(self, model: torch.nn.Module) -> list[str] | None:
        """Marian / M2M100 / BART attention projections ``q_proj`` and ``v_proj`` (self- and
        cross-attention of the encoder and the decoder); None for other architectures."""
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        return ["q_proj", "v_proj"] if {"q_proj", "v_proj"} <= names else None

    def layer_stack(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The encoder's layers, then the decoder's (Marian, M2M100, BART, T5), bottom first."""
        return module_stack(model, strict=True)


def group_by(examples: Sequence[dict], key: str) -> dict[str, list[int]]:
    """Positions of the examples per value of ``key``, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example[key], []).append(i)
    return groups


def truncate(row: Sequence[int], limit: int | None) -> list[int]:
    """At most ``limit`` tokens, keeping the last one (end of sentence) when cutting."""
    row = list(row)
    if limit is None or len(row) <= limit:
        return row
    return [*row[: limit - 1], row[-1]]


def load_seq2seq(path: str, trust_remote_code: bool, tokenizer_class: str | None, **options):
    """An ``AutoModelForSeq2SeqLM`` and its tokenizer. A bare ``tokenizers`` vocabulary
    (``PreTrainedTokenizerFast``) is loaded as such, not as the architecture's own class."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerFast

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if options.get("safetensors_only"):
        kwargs["use_safetensors"] = True
    model = AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs)
    if tokenizer_class == "PreTrainedTokenizerFast":
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return model, tokenizer
