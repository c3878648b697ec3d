"""``ewc``: Elastic Weight Consolidation as a third-party forgetbench plugin.

Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017
(arXiv:1612.00796). Before fine-tuning, the diagonal of the prior model's Fisher information is
estimated on a bounded number of prior-task training samples; training then adds

    lambda/2 * sum_i F_i (w_i - w0_i)^2

over the prior model's weights (w0: their values in f0), so weights the prior task relies on
move least. Fresh heads get F = 0 (the prior task never uses them) and are not penalised.

The Fisher: ``fisher=true`` (default) is the true Fisher, ``E_x E_{y~p(y|x)} [g g]`` with
``g = d log p(y|x) / dw``: one label per sample is drawn from the prior model's own predictive
distribution (``PerSample.logits``), an unbiased single-sample estimate. ``fisher=empirical``
uses the data's labels instead (the task's per-sample loss), for tasks that give no logits.
Each sample needs its own gradient, so it costs ``fisher_samples`` forward passes and as many
backward passes, both charged to the run (``extra_inference`` / ``extra_backward``), also when
the Fisher comes from the plugin's cache: it is a property of the prior model (samples and
labels are drawn with a fixed seed, not the run's), cached per prior model and settings.

Defaults: ``fisher_samples=256`` (a bound on cost, not the paper's); ``lam=1e5``, not taken
from the paper (which tunes lambda per task) but from short runs here: on the offline
``wordnet`` scenario at 4 steps of batch 8 (Fisher on 16 samples) the penalty is about 0.06
against a task loss of about 3, and it grows as the weights drift. It was not tuned at the
default budget: sweep it (``--set ewc.lam=...``).

Written against ``forgetbench.api`` only, as any third-party plugin should be.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from forgetbench.api import (
    ForgetbenchError,
    Method,
    RunContext,
    Split,
    check,
    hookimpl,
    plugin_cache,
)

FISHER_KINDS = ("true", "empirical")
SAMPLE_SEED = 0  # the Fisher belongs to the prior model, not to a run: same samples every run


@dataclass
class EWCConfig:
    lam: float = field(default=1e5, metadata={"help": "lambda: strength of the penalty"})
    fisher_samples: int = field(
        default=256, metadata={"help": "prior-train samples the Fisher is estimated on"}
    )
    fisher: str = field(
        default="true",
        metadata={"help": "true (labels drawn from the prior model) or empirical (data labels)"},
    )

    def __post_init__(self):
        check(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        check(self.fisher_samples >= 1, f"fisher_samples must be >= 1, got {self.fisher_samples}")
        check(
            self.fisher in FISHER_KINDS,
            f"fisher must be one of {', '.join(FISHER_KINDS)}, got {self.fisher!r}",
        )


def fisher_split(prior_train: Split, count: int) -> Split:
    """A fixed random subset of at most ``count`` prior-train examples (named ``prior_*``, so
    its rows are prior samples)."""
    rng = np.random.default_rng(SAMPLE_SEED)
    size = min(count, len(prior_train))
    chosen = np.sort(rng.choice(len(prior_train), size=size, replace=False))
    return Split("prior_fisher", [prior_train[int(i)] for i in chosen])


def sample_nll(outputs, kind: str, rng: np.random.Generator) -> torch.Tensor:
    """-log p(y|x) of the batch's one sample: y drawn from the model (true Fisher) or the
    data's label (empirical Fisher)."""
    if kind == "empirical":
        return outputs.loss[0]
    if outputs.logits is None:
        raise ForgetbenchError(
            "ewc: this task gives no logits, so the true Fisher is not available;"
            " use --set ewc.fisher=empirical"
        )
    log_probs = outputs.logits[0].float().log_softmax(-1)
    probs = log_probs.detach().exp().double().cpu().numpy()
    label = int(rng.choice(len(probs), p=probs / probs.sum()))
    return -log_probs[label]


def diagonal_fisher(
    ctx: RunContext, model: torch.nn.Module, split: Split, kind: str
) -> dict[str, torch.Tensor]:
    """Mean squared per-sample gradient of -log p(y|x) for every trainable parameter.

    One forward (counted by ``ctx.batches(extra=True)``) and one backward (counted with
    ``ctx.count_extra``) per sample; dropout off; ``.grad`` fields untouched.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named}
    rng = np.random.default_rng(SAMPLE_SEED)
    was_training = model.training
    model.eval()
    try:
        for batch in ctx.batches(split, batch_size=1, extra=True):
            nll = sample_nll(ctx.forward(model, batch), kind, rng)
            grads = torch.autograd.grad(nll, [p for _, p in named], allow_unused=True)
            ctx.count_extra(backward=len(batch))
            for (name, _), grad in zip(named, grads, strict=True):
                if grad is not None:
                    fisher[name] += grad.detach().float().pow(2)
    finally:
        model.train(was_training)
    return {name: value / len(split) for name, value in fisher.items()}


def ewc_penalty(anchors: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], lam: float):
    """``lam/2 * sum_i F_i (w_i - w0_i)^2`` over (weight, w0, F) triples."""
    total = sum((f * (w.float() - w0).pow(2)).sum() for w, w0, f in anchors)
    return lam / 2 * total


class EWC(Method):
    name = "ewc"
    description = "EWC: lambda/2 sum F_i (w_i - w0_i)^2, diagonal Fisher of the prior model"
    Config = EWCConfig

    @hookimpl
    def forgetbench_setup(self, ctx, model, data):
        config = self.config
        split = fisher_split(data.prior_train, config.fisher_samples)
        key = {"data": split.fingerprint(), "fisher": config.fisher, "v": 1}

        def build(directory: Path) -> dict:
            fisher = diagonal_fisher(ctx, model, split, config.fisher)
            tensors = {name: value.cpu().contiguous() for name, value in fisher.items()}
            save_file(tensors, str(directory / "fisher.safetensors"))
            return {"samples": len(split), "fisher": config.fisher}

        # a cache hit costs what computing it would have
        entry = plugin_cache(ctx, self.name, key, build, forward=len(split), backward=len(split))
        fisher = load_file(str(entry / "fisher.safetensors"))
        # Anchors hold the parameter tensors themselves: wrappers (LoRA) keep them, renamed.
        self.anchors = [
            (p, p.detach().float().clone(), fisher[name].to(p.device))
            for name, p in model.named_parameters()
            if name in fisher and bool(fisher[name].any())
        ]
        self.fisher_total = float(sum(float(f.sum()) for _, _, f in self.anchors))
        self.penalty = 0.0

    @hookimpl
    def forgetbench_regularizer(self):
        if self.config.lam == 0 or not self.anchors:
            return None  # None, not a zero tensor: the run is then plain fine-tuning
        penalty = ewc_penalty(self.anchors, self.config.lam)
        self.penalty = float(penalty.detach())
        return penalty

    @hookimpl
    def forgetbench_diagnostics(self):
        return {"metrics": {"ewc/fisher_total": self.fisher_total, "ewc/penalty": self.penalty}}


@hookimpl
def forgetbench_register_methods(register):
    register(EWC)
