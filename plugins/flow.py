"""``flow``: upweight the new-task samples the prior model already finds easy.

Sanyal, Prairie, Das, Kavis and Sanghavi, "Upweighting Easy Samples in Fine-Tuning Mitigates
Forgetting" (FLOW, "Fine-tuning with pre-trained Loss-Oriented Weighting"), arXiv:2502.02797,
ICML 2025. Each new-task training sample i gets the fixed weight ``w_i = exp(-loss0_i / tau)``,
where ``loss0_i`` is its loss under the prior model; weights are computed once before training
and not normalised (the paper's Algorithm 1). Rehearsed prior samples, when another method mixes
them in, keep weight 1.

Where the new task has a fresh head (the usual case here), f0 has no loss on it. As in the
authors' vision code, a linear probe is fitted on f0's frozen features (the inputs of the fresh
head) and ``loss0`` is the probe's per-sample cross-entropy on the new-task training set. Where
the new task reuses f0's outputs (no new parameters), ``loss0`` is f0's own loss.

Defaults:
- ``tau = median(loss0)`` (``tau=None``), the paper's default temperature.
- The probe (ours; the authors fit theirs with a separate linear-probing script): multinomial
  logistic regression from zero initialisation (so deterministic, no seed), full-batch L-BFGS
  for ``probe_steps=100`` iterations with L2 penalty ``probe_l2=1e-3`` on the weights, which
  keeps in-sample losses from collapsing to 0 on separable features.

``loss0`` costs one inference pass of f0 over the new-task training set, charged to every run as
extra inference (a cache hit included, so a run's reported cost does not depend on what an
earlier run left on disk). It is cached on disk (``<cache>/flow-loss0/<key>``), keyed by the
task, the new-train fingerprint, the probe settings and a sha256 of f0's weights (fresh-head
weights excluded: they are seeded per run and do not affect the probe), so runs with other seeds
or taus reuse it. The probe's labels are the batches' ``labels``.

Not included: the authors' vision recipe follows FLOW with a second round that re-trains only
the head on the plain loss; here the weighted fine-tuning is the whole method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from forgetbench.api import Method
from forgetbench.cache import cached_dir, hash_json
from forgetbench.config import check
from forgetbench.errors import ForgetbenchError
from forgetbench.hookspecs import hookimpl


@dataclass
class FlowConfig:
    tau: float | None = field(
        default=None, metadata={"help": "temperature of exp(-loss0 / tau) (None: median loss0)"}
    )
    probe_steps: int = field(
        default=100, metadata={"help": "L-BFGS iterations of the linear probe (fresh heads)"}
    )
    probe_l2: float = field(
        default=1e-3, metadata={"help": "L2 penalty on the linear probe's weights"}
    )

    def __post_init__(self):
        check(self.tau is None or self.tau > 0, f"tau must be > 0 (or None), got {self.tau}")
        check(self.probe_steps >= 1, f"probe_steps must be >= 1, got {self.probe_steps}")
        check(self.probe_l2 >= 0, f"probe_l2 must be >= 0, got {self.probe_l2}")


def flow_weights(loss0: torch.Tensor, tau: float | None = None) -> tuple[torch.Tensor, float]:
    """``exp(-loss0 / tau)`` with ``tau`` defaulting to the median of ``loss0``.

    Returns the weights and the temperature used. The median of an even count is the mean of
    the two middle values (as ``numpy.median``). A zero median (f0 already fits more than half
    the samples perfectly) falls back to the mean, and to 1 if all losses are 0, so the weights
    stay finite.
    """
    if tau is None:
        tau = float(torch.quantile(loss0.float(), 0.5))
        if tau <= 0:
            tau = float(loss0.float().mean()) or 1.0
    return torch.exp(-loss0 / tau), tau


def fit_probe_losses(
    features: torch.Tensor, labels: torch.Tensor, classes: int, steps: int, l2: float
) -> torch.Tensor:
    """Fit a multinomial logistic regression and return its per-sample training loss.

    Args:
        features: [N, D] float features.
        labels: [N] int64 class indices.
        classes: number of classes.
        steps: L-BFGS iterations (full batch).
        l2: penalty ``l2/2 * ||W||^2`` on the weights (not the bias).
    """
    features = features.float()
    weight = torch.zeros(features.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight + bias, labels) + l2 / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return F.cross_entropy(features @ weight + bias, labels, reduction="none")


def fresh_head(model: torch.nn.Module, new_param_names: frozenset[str]) -> torch.nn.Linear:
    """The linear module whose parameters are exactly the new task's (e.g. ``heads.new``)."""
    for prefix, module in model.named_modules():
        names = {f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters()}
        if names == new_param_names:
            if not isinstance(module, torch.nn.Linear):
                raise ForgetbenchError(
                    f"flow: the new-task head {prefix!r} is not a linear layer, so no linear"
                    " probe can stand in for it"
                )
            return module
    raise ForgetbenchError(
        "flow: the new task's parameters do not form one head module; cannot fit the probe"
    )


def weights_digest(model: torch.nn.Module, skip: frozenset[str]) -> str:
    """sha256 over the names and bytes of the model's state dict, ``skip`` excluded."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name in skip:
            continue
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


@torch.inference_mode()
def prior_losses(ctx, model, split) -> torch.Tensor:
    """f0's per-sample loss on ``split`` (the new task reuses f0's outputs)."""
    losses = torch.zeros(len(split))
    for batch in ctx.batches(split, extra=True):
        losses[batch["index"].cpu()] = ctx.task.forward(model, batch).loss.float().cpu()
    return losses


def probe_losses(ctx, model, split, steps: int, l2: float) -> torch.Tensor:
    """Per-sample loss of a linear probe fitted on the fresh head's inputs under f0."""
    head = fresh_head(model, ctx.new_param_names)
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].float()))
    features = torch.zeros(len(split), head.in_features)
    labels = torch.zeros(len(split), dtype=torch.long)
    try:
        with torch.inference_mode():
            for batch in ctx.batches(split, extra=True):
                captured.clear()
                ctx.task.forward(model, batch)
                index = batch["index"].cpu()
                features[index] = torch.cat(captured).cpu()
                labels[index] = batch["labels"].cpu()
    finally:
        hook.remove()
    return fit_probe_losses(features, labels, head.out_features, steps, l2)


class Flow(Method):
    name = "flow"
    description = "FLOW: new-task samples weighted exp(-loss0 / tau), loss0 from the prior model"
    Config = FlowConfig

    @hookimpl
    def forgetbench_setup(self, ctx, model, data):
        split = data.new_train
        key = hash_json(
            {
                "task": [ctx.task.metadata.name, ctx.task.metadata.version],
                "data": split.fingerprint(),
                "model": weights_digest(model, ctx.new_param_names),
                "probe": [self.config.probe_steps, self.config.probe_l2]
                if ctx.new_param_names
                else None,
                "v": 1,
            }
        )

        def build(directory: Path) -> dict:
            was_training = model.training
            model.eval()
            try:
                if ctx.new_param_names:
                    loss0 = probe_losses(
                        ctx, model, split, self.config.probe_steps, self.config.probe_l2
                    )
                else:
                    loss0 = prior_losses(ctx, model, split)
            finally:
                model.train(was_training)
            save_file({"loss0": loss0.contiguous()}, str(directory / "loss0.safetensors"))
            return {"split": split.name, "size": len(split)}

        charged = ctx.compute.extra_inference + len(split)
        entry = cached_dir("flow-loss0", key, build)
        ctx.compute.extra_inference = charged  # the same whether build ran or the cache hit
        self.loss0 = load_file(str(entry / "loss0.safetensors"))["loss0"]
        self.weights, self.tau = flow_weights(self.loss0, self.config.tau)

    @hookimpl
    def forgetbench_sample_weights(self, batch):
        is_new = ~batch["is_prior"].cpu()
        weights = torch.ones(is_new.shape[0])
        weights[is_new] = self.weights[batch["index"].cpu()[is_new]]
        return weights

    @hookimpl
    def forgetbench_diagnostics(self):
        return {
            "metrics": {
                "flow/tau": self.tau,
                "flow/weight_mean": float(self.weights.mean()),
            }
        }


@hookimpl
def forgetbench_register_methods(register):
    register(Flow)
