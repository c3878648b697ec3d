"""``l2sp``: pull the fine-tuned weights towards the prior model's (L2-SP).

Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional
Networks", ICML 2018 (arXiv:1802.01483). The penalty added to the training loss is

    alpha/2 * sum ||w - w0||^2  over the weights f0 already had (w0: their values in f0)
    + beta/2 * sum ||w||^2       over the weights the new task added (fresh heads).

Defaults: ``alpha=0.1``, ``beta=0.01``. Source: none that matches a reference. The paper
selects alpha and beta by cross-validation on each target task, so it has no universal value;
these two numbers are this project's starting point (a strong pull to w0, a weak decay on the
fresh head), not the paper's, and nothing here was calibrated against its results. Compare
L2-SP by its frontier over a sweep
(``forgetbench sweep -m l2sp --grid l2sp.alpha=0.001,0.01,0.1,1 --grid l2sp.beta=0,0.01``),
not at the default. The engine's AdamW keeps its decoupled weight decay
(``train.weight_decay``); ``--set train.weight_decay=0`` gives the paper's pure L2-SP objective.

The anchors are the parameter tensors themselves, captured in setup, not their names: a model
wrapper (e.g. LoRA via peft, which renames modules) keeps the same tensors, so stacking works.
Frozen parameters are skipped (their distance to w0 is zero), and weights a wrapper adds after
setup (LoRA adapters) are not penalised: they are neither f0's nor the new task's head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetbench.api import Method, check, hookimpl


@dataclass
class L2SPConfig:
    alpha: float = field(
        default=0.1, metadata={"help": "strength of ||w - w0||^2 on the prior model's weights"}
    )
    beta: float = field(default=0.01, metadata={"help": "strength of ||w||^2 on new-task heads"})

    def __post_init__(self):
        check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")


def l2sp_penalty(
    anchored: list[tuple[torch.nn.Parameter, torch.Tensor]],
    fresh: list[torch.nn.Parameter],
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``alpha/2 * sum ||w - w0||^2 + beta/2 * sum ||w||^2`` over trainable parameters.

    Args:
        anchored: (parameter, its value in f0) pairs.
        fresh: parameters that f0 did not have (new heads).
        alpha: strength of the pull towards f0.
        beta: strength of plain weight decay on the fresh parameters.
    """
    pulled = [(w, start) for w, start in anchored if w.requires_grad]
    decayed = [w for w in fresh if w.requires_grad]
    if not pulled and not decayed:
        return torch.zeros(())
    starts = [start for _, start in pulled]
    return _Penalty.apply((alpha / 2, beta / 2), starts, *[w for w, _ in pulled], *decayed)


def per_tensor_penalty(
    anchored: list[tuple[torch.nn.Parameter, torch.Tensor]],
    fresh: list[torch.nn.Parameter],
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """:func:`l2sp_penalty` written out per tensor: its readable definition, and its code
    before 2026-12-04 (a few kernels and autograd nodes per parameter tensor). The fused one
    is checked against it bit for bit (tests) and timed beside it (``bench_methods
    --ablation``)."""
    total = torch.zeros(())
    for weight, start in anchored:
        if weight.requires_grad:
            total = total + alpha / 2 * (weight.float() - start).pow(2).sum()
    for weight in fresh:
        if weight.requires_grad:
            total = total + beta / 2 * weight.float().pow(2).sum()
    return total


class _Penalty(torch.autograd.Function):
    """The penalty as one autograd node over every weight, with ``torch._foreach_*`` kernels.

    Written out per tensor (``c * (w - w0).pow(2).sum()``, summed) the penalty costs about five
    kernels forward and six backward per parameter tensor, a thousand launches a step for
    MiniLM: 1.5 steps of fine-tuning on a GPU, whose step is bound by launches. Here the
    differences and squares are a few multi-tensor kernels, and the gradient (``c * 2 * (w -
    w0) * grad``) one. The value and the gradients are the per-tensor version's bit for bit:
    the same per-tensor sums added in the same order, and the gradient's one rounding of the
    same exact product (``tests/test_method_l2sp.py``).
    """

    @staticmethod
    def forward(ctx, coefficients, starts, *weights):
        pulled = len(starts)
        wide = [w.float() for w in weights]  # no copy for fp32 weights
        differences = list(torch._foreach_sub(wide[:pulled], starts)) if pulled else []
        terms = differences + wide[pulled:]
        sums = [square.sum() for square in _times(terms, terms)]
        scaled = _times(sums[:pulled], coefficients[0]) + _times(sums[pulled:], coefficients[1])
        total = torch.zeros((), device=scaled[0].device)
        for term in scaled:
            total = total + term
        ctx.coefficients, ctx.pulled = coefficients, pulled
        ctx.dtypes = [w.dtype for w in weights]
        ctx.save_for_backward(*terms)
        return total

    @staticmethod
    def backward(ctx, grad):
        terms, pulled, (pull, decay) = ctx.saved_tensors, ctx.pulled, ctx.coefficients
        # autograd's chain for c * sum(t^2): (grad * c) * (2 * t), one rounding of the product
        grads = _times(terms[:pulled], grad * pull * 2) + _times(terms[pulled:], grad * decay * 2)
        grads = [g.to(dtype) for g, dtype in zip(grads, ctx.dtypes, strict=True)]
        return None, None, *grads


def _times(tensors, factor) -> list[torch.Tensor]:
    """``[t * factor for t in tensors]`` (``factor``: a number, a tensor or a list of tensors)
    in multi-tensor kernels."""
    return list(torch._foreach_mul(list(tensors), factor)) if len(tensors) else []


class L2SP(Method):
    name = "l2sp"
    description = "L2-SP: alpha/2 ||w - w0||^2 on prior weights + beta/2 ||w||^2 on new heads"
    Config = L2SPConfig

    @hookimpl
    def forgetbench_setup(self, ctx, model):
        self.anchored = []
        self.fresh = []
        for name, weight in model.named_parameters():
            if name in ctx.new_param_names:
                self.fresh.append(weight)
            else:
                self.anchored.append((weight, weight.detach().float().clone()))

    @hookimpl
    def forgetbench_regularizer(self):
        return l2sp_penalty(self.anchored, self.fresh, self.config.alpha, self.config.beta)


@hookimpl
def forgetbench_register_methods(register):
    register(L2SP)
