"""``flow``: upweight the new-task samples the prior model already finds easy.

Sanyal, Prairie, Das, Kavis and Sanghavi, "Upweighting Easy Samples in Fine-Tuning Mitigates
Forgetting" (FLOW, "Fine-tuning with pre-trained Loss-Oriented Weighting"), arXiv:2502.02797,
ICML 2025. Each new-task training sample i gets the fixed weight ``w_i = exp(-loss0_i / tau)``,
where ``loss0_i`` is its loss under the prior model; weights are computed once before training
and not normalised (the paper's Algorithm 1). Rehearsed prior samples, when another method mixes
them in, keep weight 1.

Where the new task has a fresh head (classification), f0 has no loss on it: the task's
``reference_losses`` stands in (the classification family, as in the authors' vision code,
fits a linear probe on f0's frozen features, the fresh head's inputs, and gives its
per-sample cross-entropy). Where the new task reuses f0's outputs (QA's span head, a
translation decoder, CLIP's zero-shot head), ``loss0`` is f0's own per-sample loss.

Defaults: ``tau = median(loss0)`` (``tau=None``), the paper's default temperature.
``probe_init=true``: where the task fits a probe for a fresh head (``Task.reference_head``),
fine-tuning starts from that probe, as the authors' code does (``FLOW_ft.py`` loads the
linear-probe checkpoint before fine-tuning); ``flow.probe_init=false`` starts from the task's
freshly initialised head instead. Tasks without a fresh head are unaffected.

``loss0`` costs one inference pass of f0 over the new-task training set, charged to every run as
extra inference (a cache hit included, so a run's reported cost does not depend on what an
earlier run left on disk). It is cached on disk (``<cache>/flow-loss0/<key>``), keyed by the
task (class, version, config, code), the evaluation settings, the new-train fingerprint and a
sha256 of f0's weights (fresh-head weights excluded where the task's probe gives loss0: they
are seeded per run and do not affect it), so runs with other seeds or taus reuse it. A task
with a fresh head but no ``reference_losses`` gets loss0 through its untrained head (a
warning says so), and then the head is in the key.

Not included: the authors' vision recipe follows FLOW with a second round that re-trains only
the head on the plain loss; here the weighted fine-tuning is the whole method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from forgetbench.api import Method, cached_dir, check, hookimpl, load_entries, plugin_key


@dataclass
class FlowConfig:
    tau: float | None = field(
        default=None, metadata={"help": "temperature of exp(-loss0 / tau) (None: median loss0)"}
    )
    probe_init: bool = field(
        default=True,
        metadata={"help": "start a fresh new-task head from the fitted probe (as the authors)"},
    )

    def __post_init__(self):
        check(self.tau is None or self.tau > 0, f"tau must be > 0 (or None), got {self.tau}")


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


def weights_digest(model: torch.nn.Module, skip: frozenset[str]) -> str:
    """sha256 over the names and bytes of the model's state dict, ``skip`` excluded."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name in skip:
            continue
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def reference_losses(ctx, model, split) -> torch.Tensor:
    """loss0 per example of ``split``: the task's reference where it has one (a probe for a
    fresh head), else f0's own per-sample loss."""
    loss0 = ctx.task.reference_losses(ctx, model, split)
    if loss0 is None:
        loss0 = ctx.predict(model, split, extra=True).loss
    return loss0.float().cpu()


class Flow(Method):
    name = "flow"
    description = "FLOW: new-task samples weighted exp(-loss0 / tau), loss0 from the prior model"
    Config = FlowConfig

    @hookimpl
    def forgetbench_setup(self, ctx, model, data):
        split = data.new_train
        # without a reference (a probe), loss0 goes through the fresh head as initialised for
        # this seed: then the head is part of what loss0 depends on
        fresh = ctx.new_param_names if ctx.task.implements("reference_losses") else frozenset()
        if ctx.new_param_names and not fresh:
            ctx.logger.warning(
                "flow: task %r has a fresh new-task head but no reference_losses: loss0 comes"
                " from the untrained head",
                ctx.task.metadata.name,
            )
        key = plugin_key(
            ctx,
            {"data": split.fingerprint(), "model": weights_digest(model, fresh), "v": 4},
        )

        def build(directory: Path) -> dict:
            was_training = model.training
            model.eval()
            try:
                loss0 = reference_losses(ctx, model, split)
                head = ctx.task.reference_head(ctx, model, split) or {}
            finally:
                model.train(was_training)
            tensors = {f"head/{name}": value.contiguous() for name, value in head.items()}
            save_file(
                {"loss0": loss0.contiguous(), **tensors}, str(directory / "loss0.safetensors")
            )
            return {"split": split.name, "size": len(split)}

        charged = ctx.compute.extra_inference + len(split)
        entry = cached_dir("flow-loss0", key, build)
        ctx.compute.extra_inference = charged  # the same whether build ran or the cache hit
        stored = load_file(str(entry / "loss0.safetensors"))
        self.loss0 = stored.pop("loss0")
        self.weights, self.tau = flow_weights(self.loss0, self.config.tau)
        if self.config.probe_init and stored:
            head = {name.removeprefix("head/"): value for name, value in stored.items()}
            load_entries(model, head, "flow: the task's probe head", "set flow.probe_init=false")

    @hookimpl
    def forgetbench_sample_weights(self, batch):
        """w_i for new-task rows, 1 for rehearsed ones; computed where the batch is (a gather
        and a select on the device: nothing waits for it)."""
        weights = self.weights_on(batch.index.device)
        # a rehearsed row's index is a prior-train position: any in-range one will do, the
        # select below gives it 1
        looked_up = weights[batch.index.clamp(max=len(weights) - 1)]
        return torch.where(batch.is_prior, 1.0, looked_up)

    def weights_on(self, device: torch.device) -> torch.Tensor:
        """``self.weights`` on ``device``, copied there once."""
        source, placed = getattr(self, "_placed", (None, None))
        if source is not self.weights or placed.device != device:
            self._placed = (self.weights, self.weights.to(device))
        return self._placed[1]

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
