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
    total = torch.zeros(())
    for weight, start in anchored:
        if weight.requires_grad:
            total = total + alpha / 2 * (weight.float() - start).pow(2).sum()
    for weight in fresh:
        if weight.requires_grad:
            total = total + beta / 2 * weight.float().pow(2).sum()
    return total


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
