"""``wise-ft``: interpolate the fine-tuned weights with the prior model's after training.

Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022 (arXiv:2109.01903).
After fine-tuning, ``theta = (1 - a) * theta0 + a * theta_ft`` on every weight f0 already had;
weights the new task added (fresh heads) have no theta0 and keep their fine-tuned values.

Defaults: ``alpha=0.5``, the paper's fixed mixing coefficient for when no held-out data picks
one. The grid ``0, 0.25, 0.5, 0.75, 1`` is ours: a coarse version of the paper's sweep of ``a``
over [0, 1], at five evaluations per run (empty: evaluate nothing). Each grid point is
evaluated on the prior and new eval sets (counted as evaluation inference) and stored as series
``wise-ft/<split>/<metric>`` with step = 100*a, so one run gives a forgetting/gain frontier.

theta0 is snapshotted in setup, before any wrapper, so the fine-tuned state dict must use f0's
names: stacked with ``lora``, keep ``lora.merge=true`` so the adapters are merged first.

BatchNorm: the authors' code interpolates every state entry, running statistics included
(``bn_stats=interpolate``, the default). The running mean and variance of a mixed network are
not the mix of its endpoints' (its activations' statistics differ from both), so on a BatchNorm
tower every intermediate alpha can be worse than both endpoints. ``bn_stats=recompute``
re-estimates them after each mix, a cumulative average over ``bn_samples`` new-task training
examples (a seeded subset, forwarded in eval mode but for the BatchNorm layers, counted as
extra inference): the mixed weights with statistics that match them on the new task's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from forgetbench.api import ForgetbenchError, Method, Split, check, hookimpl

BN_STATS = ("interpolate", "recompute")


@dataclass
class WiseFTConfig:
    alpha: float = field(
        default=0.5, metadata={"help": "weight of the fine-tuned model in the returned mix"}
    )
    grid: tuple[float, ...] = field(
        default=(0.0, 0.25, 0.5, 0.75, 1.0),
        metadata={
            "help": "mixing coefficients evaluated post hoc, stored as series (may be empty)"
        },
    )
    bn_stats: str = field(
        default="interpolate",
        metadata={
            "help": "BatchNorm running statistics of a mix: interpolate (the authors' code)"
            " | recompute (re-estimated on new-task training examples)"
        },
    )
    bn_samples: int = field(
        default=512, metadata={"help": "new-task training examples for bn_stats=recompute"}
    )

    def __post_init__(self):
        check(0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}")
        self.grid = tuple(float(a) for a in self.grid)
        check(
            all(0 <= a <= 1 for a in self.grid), f"grid values must be in [0, 1], got {self.grid}"
        )
        check(
            self.bn_stats in BN_STATS,
            f"bn_stats must be one of {', '.join(BN_STATS)}, got {self.bn_stats!r}",
        )
        check(self.bn_samples >= 1, f"bn_samples must be >= 1, got {self.bn_samples}")
        steps = [round(a * 100) for a in self.grid]
        check(
            len(set(steps)) == len(steps),
            f"grid values must differ by at least 0.01 (stored as percent), got {self.grid}",
        )


def interpolate(
    theta0: dict[str, torch.Tensor], theta_ft: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * theta0 + alpha * theta_ft`` where theta0 has the entry (and it is a float
    tensor); other entries of ``theta_ft`` (new heads, integer buffers) are kept as they are."""
    return {
        name: torch.lerp(theta0[name], value, alpha)
        if name in theta0 and value.is_floating_point()
        else value
        for name, value in theta_ft.items()
    }


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recompute_bn_stats(model: nn.Module, batches, forward) -> None:
    """Re-estimate every BatchNorm layer's running mean and variance: reset, then a cumulative
    average (``momentum=None``) over ``forward(batch)`` for every batch, the rest of the model in
    eval mode (no dropout) and no gradient; weights are unchanged, the modes are restored."""
    norms = batch_norms(model)
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for batch in batches:
            forward(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)


class WiseFT(Method):
    name = "wise-ft"
    description = "WiSE-FT: (1-a) theta0 + a theta_ft after training; an alpha grid is evaluated"
    Config = WiseFTConfig

    @hookimpl
    def forgetbench_setup(self, ctx, model, data):
        self.ctx = ctx
        self.bn_split = None
        if self.config.bn_stats == "recompute":
            if not batch_norms(model):
                raise ForgetbenchError(
                    "wise-ft: bn_stats=recompute, but the model has no BatchNorm layer"
                )
            examples = data.new_train.examples
            rng = ctx.generator("wise-ft/bn_stats")
            chosen = rng.choice(len(examples), min(self.config.bn_samples, len(examples)), False)
            self.bn_split = Split("new_wise_ft_bn", [examples[i] for i in sorted(chosen)])
        self.theta0 = {
            name: value.detach().clone()
            for name, value in model.state_dict().items()
            if name not in ctx.new_param_names
        }
        self.grid_results: dict[float, dict[str, float]] = {}

    @hookimpl
    def forgetbench_finalize(self, model, evaluate):
        theta_ft = {name: value.detach().clone() for name, value in model.state_dict().items()}
        missing = sorted(set(self.theta0) - set(theta_ft))
        if missing:
            raise ForgetbenchError(
                f"wise-ft: the trained model lacks {len(missing)} of the prior model's weights"
                f" (e.g. {missing[0]!r}); is it still wrapped? With lora, keep lora.merge=true"
            )
        for alpha in self.config.grid:
            self.mix(model, theta_ft, alpha)
            self.grid_results[alpha] = evaluate(model)
        self.mix(model, theta_ft, self.config.alpha)
        return model

    def mix(self, model, theta_ft: dict[str, torch.Tensor], alpha: float) -> None:
        """Load ``(1 - alpha) theta0 + alpha theta_ft``; with ``bn_stats=recompute``, then
        re-estimate the BatchNorm statistics on the chosen new-task examples."""
        model.load_state_dict(interpolate(self.theta0, theta_ft, alpha))
        if self.bn_split is not None:
            batches = self.ctx.batches(self.bn_split, extra=True)
            recompute_bn_stats(model, batches, lambda batch: self.ctx.forward(model, batch))

    @hookimpl
    def forgetbench_diagnostics(self):
        if not self.grid_results:
            return None
        series = [
            (f"wise-ft/{key}", round(alpha * 100), value)
            for alpha, results in self.grid_results.items()
            for key, value in results.items()
        ]
        return {"metrics": {"wise-ft/alpha": self.config.alpha}, "series": series}


@hookimpl
def forgetbench_register_methods(register):
    register(WiseFT)
