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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from forgetbench.api import ForgetbenchError, Method, check, hookimpl


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

    def __post_init__(self):
        check(0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}")
        self.grid = tuple(float(a) for a in self.grid)
        check(
            all(0 <= a <= 1 for a in self.grid), f"grid values must be in [0, 1], got {self.grid}"
        )
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


class WiseFT(Method):
    name = "wise-ft"
    description = "WiSE-FT: (1-a) theta0 + a theta_ft after training; an alpha grid is evaluated"
    Config = WiseFTConfig

    @hookimpl
    def forgetbench_setup(self, ctx, model):
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
            model.load_state_dict(interpolate(self.theta0, theta_ft, alpha))
            self.grid_results[alpha] = evaluate(model)
        model.load_state_dict(interpolate(self.theta0, theta_ft, self.config.alpha))
        return model

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
