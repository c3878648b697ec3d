"""The text-classification family: an encoder with one linear head per task.

A dataset of this family is metadata, a config and ``load_data`` returning examples
``{"id", "text", ["text_pair"], "label", "source": "prior" | "new"}``; everything else is
here: stage 0 (the core trains the base encoder plus a prior head), a fresh head for the new
task, dynamic-padding collation, the per-sample forward, the ``label`` partition for mix-cd,
LoRA targets, LDIFS taps and FLOW's reference losses (a linear probe, since the fresh head has
no loss of its own before training).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from forgetbench.api import (
    ModelBundle,
    PerSample,
    RunContext,
    Split,
    Stage0Spec,
    Task,
    TaskData,
    fit_probe,
    hash_dir,
    masked_mean,
    module_stack,
    pad_logits,
    tap_layers,
)


class EncoderClassifier(nn.Module):
    """A transformers encoder, a pooling rule and one linear head per task (``prior``, ``new``)."""

    def __init__(
        self, encoder: nn.Module, heads: dict[str, int], pooling: str = "mean", dropout: float = 0.1
    ):
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"pooling must be mean, cls or pooler, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in heads.items()})

    def add_head(self, name: str, num_labels: int) -> None:
        self.heads[name] = nn.Linear(self.encoder.config.hidden_size, num_labels)


# ``inputs`` key of the host copy of ``prior_head`` (a numpy array, not a tensor: it stays on the
# host when the inputs move to a device, and a launcher's shard of the rows leaves it whole)
HOST_PRIOR_HEAD = "prior_head_host"


def host_flags(inputs: dict) -> np.ndarray | None:
    """The host copy of ``inputs["prior_head"]`` that :meth:`ClassificationTask.collate` keeps,
    or None where there is none or the rows are no longer the collated ones (a launcher's
    shard: fewer rows; rows reordered on the CPU)."""
    flags, host = inputs["prior_head"], inputs.get(HOST_PRIOR_HEAD)
    if not isinstance(host, np.ndarray) or len(host) != flags.shape[0]:
        return None
    if flags.device.type == "cpu" and not np.array_equal(host, flags.numpy()):
        return None  # rows reordered since collation: the tensor is the truth
    return host


def one_head(inputs: dict) -> bool | None:
    """``is_prior`` of every row when all rows go through one head (known on the host), else
    None."""
    host = host_flags(inputs)
    if host is None or len(host) == 0 or host.min() != host.max():
        return None
    return bool(host[0])


def head_rows(inputs: dict, is_prior: bool) -> torch.Tensor:
    """The rows [R] (int64, ascending) that go through the prior head (``is_prior``) or the
    new one, on the device of ``inputs["prior_head"]``.

    Counted on the host from the copy :meth:`ClassificationTask.collate` keeps, so a forward on
    a GPU does not wait for the device to learn how many rows each head has; inputs without it,
    or whose rows are no longer the collated ones (a shard of them: fewer rows), are searched
    on the device (``nonzero``: a wait)."""
    flags, host = inputs["prior_head"], host_flags(inputs)
    if host is None:
        return (flags == is_prior).nonzero().squeeze(1)
    rows = torch.from_numpy(np.flatnonzero(host == is_prior))
    if flags.device.type == "cpu":
        return rows
    return rows.pin_memory().to(flags.device, non_blocking=True)


def score(logits: torch.Tensor, labels: torch.Tensor):
    """Per-row cross-entropy, success (argmax == label) and confidence (its probability)."""
    probability, prediction = logits.softmax(-1).max(-1)
    loss = F.cross_entropy(logits, labels, reduction="none")
    return loss, prediction == labels, probability


def route_to_heads(model: EncoderClassifier, pooled: torch.Tensor, inputs: dict):
    """Each row through its own head: per-row loss, success, confidence and the logits padded
    to the wider head (:func:`pad_logits`), in the batch's row order."""
    size = pooled.shape[0]
    loss = pooled.new_zeros(size, dtype=torch.float32)
    confidence = pooled.new_zeros(size, dtype=torch.float32)
    success = torch.zeros(size, dtype=torch.bool, device=pooled.device)
    parts = []
    for head, is_prior in (("prior", True), ("new", False)):
        index = head_rows(inputs, is_prior)
        if index.numel() == 0:
            continue
        logits = model.heads[head](pooled[index]).float()
        parts.append((index, logits))
        rows = score(logits, inputs["labels"][index])
        loss = loss.index_copy(0, index, rows[0])
        success = success.index_copy(0, index, rows[1])
        confidence = confidence.index_copy(0, index, rows[2])
    return loss, success, confidence, pad_logits(size, parts)


class ClassificationTask(Task):
    """Shared machinery of single-label text classification (see the module docstring).

    Subclasses set ``metadata``, ``Config`` (with ``max_length`` and ``stage0_steps``),
    ``stage0_train`` (the stage-0 budget except steps), ``base_model_path()`` and ``load_data``.
    ``data.info`` must hold ``prior_labels`` and ``new_labels`` (class counts).
    """

    pooling: ClassVar[str] = "mean"
    # The stage-0 budget; ``steps`` comes from the config's ``stage0_steps``.
    stage0_train: ClassVar[dict[str, Any]] = {"batch_size": 32, "lr": 1e-4}
    # FLOW's reference: a linear probe on f0's pooled features (ours; the authors fit theirs
    # with a separate linear-probing script). L2 keeps in-sample losses off 0 on separable data.
    probe_steps: ClassVar[int] = 100
    probe_l2: ClassVar[float] = 1e-3

    def base_model_path(self) -> str:
        raise NotImplementedError

    @property
    def max_length(self) -> int:
        return self.config.max_length

    # -- the prior model ---------------------------------------------------------------------

    @property
    def stage0(self) -> Stage0Spec:
        from forgetbench.api import TrainConfig

        base = self.base_model_path()
        identity = hash_dir(Path(base)) if Path(base).is_dir() else base
        train = TrainConfig(steps=self.config.stage0_steps, **self.stage0_train)
        key = {"pooling": self.pooling, "max_length": self.config.max_length}
        return Stage0Spec(train=train, base=identity, key=key)

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        from transformers import AutoModel, AutoTokenizer

        base = self.base_model_path()
        remote = ctx.trust_remote_code
        tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=remote)
        encoder = AutoModel.from_pretrained(base, use_safetensors=True, trust_remote_code=remote)
        model = EncoderClassifier(encoder, {"prior": int(data.info["prior_labels"])}, self.pooling)
        return ModelBundle(model, tokenizer, source=base)

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        model = bundle.model
        model.encoder.save_pretrained(directory / "encoder", safe_serialization=True)
        bundle.processor.save_pretrained(directory / "encoder")
        heads = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
        save_file(heads, str(directory / "heads.safetensors"))
        labels = {name: head.out_features for name, head in model.heads.items()}
        meta = {"pooling": model.pooling, "heads": labels, "base": bundle.source}
        (directory / "bundle.json").write_text(json.dumps(meta, indent=1))

    def load_bundle(self, directory: Path) -> ModelBundle:
        from transformers import AutoModel, AutoTokenizer

        meta = json.loads((directory / "bundle.json").read_text())
        encoder = AutoModel.from_pretrained(directory / "encoder", use_safetensors=True)
        model = EncoderClassifier(encoder, meta["heads"], meta["pooling"])
        model.heads.load_state_dict(load_file(str(directory / "heads.safetensors")))
        tokenizer = AutoTokenizer.from_pretrained(directory / "encoder")
        return ModelBundle(model, tokenizer, hash_dir(directory), f"prior-model:{directory}")

    def init_new_task(self, ctx: RunContext, bundle: ModelBundle, data: TaskData) -> nn.Module:
        bundle.model.add_head("new", int(data.info["new_labels"]))
        return bundle.model

    # -- one step ----------------------------------------------------------------------------

    def collate(self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]) -> dict:
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if "text_pair" in examples[0] else None
        encoded = bundle.processor(
            texts,
            pairs,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = dict(encoded)
        inputs["labels"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
        prior_head = np.array([e["source"] == "prior" for e in examples], dtype=bool)
        inputs["prior_head"] = torch.from_numpy(prior_head)
        inputs[HOST_PRIOR_HEAD] = prior_head.copy()  # see head_rows
        return inputs

    def encode(self, model, inputs, with_features: bool = False):
        """Pooled features [B, D] (after dropout) and the encoder's output."""
        encoder_inputs = {
            k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in inputs
        }
        output = model.encoder(**encoder_inputs, output_hidden_states=with_features)
        if model.pooling == "mean":
            pooled = masked_mean(output.last_hidden_state, inputs["attention_mask"])
        elif model.pooling == "cls":
            pooled = output.last_hidden_state[:, 0]
        else:
            pooled = output.pooler_output
        return model.dropout(pooled), output

    def forward(self, model, inputs, with_features: bool = False) -> PerSample:
        """Success: the head's argmax equals the label; confidence: its softmax probability."""
        pooled, output = self.encode(model, inputs, with_features)
        is_prior = one_head(inputs)
        if is_prior is None:
            loss, success, confidence, logits = route_to_heads(model, pooled, inputs)
        else:  # one head for every row (fine-tuning on the new task alone): nothing to route
            logits = model.heads["prior" if is_prior else "new"](pooled).float()
            loss, success, confidence = score(logits, inputs["labels"])
        features = None
        if with_features:
            states, mask = output.hidden_states, inputs["attention_mask"]
            features = [masked_mean(states[i], mask) for i in tap_layers(len(states) - 1)]
        return PerSample(loss, success, confidence, features, logits)

    # -- what methods read -------------------------------------------------------------------

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        return {"label": data.prior_train.column("label")}

    def feature_taps(self) -> str:
        return (
            "mask-averaged hidden states of the embedding output and evenly spaced encoder"
            " layers (4 taps: 0, L/3, 2L/3, L)"
        )

    def lora_target_modules(self, model: nn.Module) -> list[str]:
        # BERT-family attention projections (LoRA paper: W_q and W_v).
        return ["query", "value"]

    def layer_stack(self, model: nn.Module) -> list[nn.Module]:
        """The encoder's transformer layers (BERT's ``encoder.layer``), bottom first."""
        return module_stack(model.encoder, strict=True)

    def reference_losses(self, ctx: RunContext, model: nn.Module, split: Split) -> torch.Tensor:
        """Per-example loss of a linear probe fitted on f0's pooled features of ``split``."""
        return self.probe(ctx, model, split)[0]

    def reference_head(
        self, ctx: RunContext, model: nn.Module, split: Split
    ) -> dict[str, torch.Tensor]:
        """The new head set to that probe (the head reads the same pooled features)."""
        _, weight, bias = self.probe(ctx, model, split)
        return {"heads.new.weight": weight.T.contiguous(), "heads.new.bias": bias}

    def probe(self, ctx: RunContext, model: nn.Module, split: Split):
        """(losses [N], weight [D, C], bias [C]) of the linear probe on f0's pooled features
        of ``split``, fitted once per model and split."""
        key = (id(model), split.fingerprint())
        if getattr(self, "_probe", (None,))[0] == key:
            return self._probe[1]
        features = torch.zeros(len(split), model.encoder.config.hidden_size)
        labels = torch.zeros(len(split), dtype=torch.long)
        with torch.inference_mode():
            for batch in ctx.batches(split, extra=True):
                pooled, _ = self.encode(model, batch.inputs)
                index = batch.index.cpu()
                features[index] = pooled.float().cpu()
                labels[index] = batch.inputs["labels"].cpu()
        classes = model.heads["new"].out_features
        self._probe = (key, fit_probe(features, labels, classes, self.probe_steps, self.probe_l2))
        return self._probe[1]
