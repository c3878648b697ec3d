"""``ldifs``: keep the model's features close to the prior model's (l2 distance in feature space).

Mukhoti, Gal, Torr and Dokania, "Fine-tuning can cripple your foundation model; preserving
features may be the solution", arXiv:2308.13320 (TMLR 2024). The regulariser is

    lambda * mean over batch and taps l of  mean_d (u_l(x) - u0_l(x))_d^2,
    u_l = phi_l / ||phi_l||,

where ``phi_l`` are the model's features at the task's taps (``forward(..., with_features=True)``,
each [B, D]) and ``phi0_l`` the frozen prior model's. Each tap is L2-normalised per sample, and
the squared distance is averaged over the D feature dimensions, as in the authors' code
(``loss/ldifs.py`` in omegafragger/ldifs_code); this is ``||u_l - u0_l||^2 / D``.

Defaults: ``lam`` (lambda) ``=10``, the authors' default (``--ldifs-alpha 10.0`` in their code
and README). ``cache_mb=512`` is ours.

Lambda's scale is not the authors': the same number is a weaker penalty here. Their taps are
CLIP's token-level features [B, T, D], normalised along the token axis (issue 11's reading of
their code, not re-checked here); ours are pooled [B, D] features normalised along D. The
distances differ in size, and issue 11 reports lambda 10 here to be several times weaker than
theirs on the same model. We keep 10 as the nominal default and claim no exchange rate (none
was measured): compare LDIFS by its frontier over a lambda sweep
(``forgetbench sweep -m ldifs --grid ldifs.lam=1,10,100,1000 --seeds 0-4``), not at one value.

phi0 comes from a frozen copy of f0 taken in setup (eval mode, so no dropout; the model being
trained is in train mode, as in the authors' training). A batch holding any example whose phi0
is not cached goes through the frozen copy whole (counted as extra inference), and its phi0 are
kept in a cache keyed by (is_prior, index) while the cache stays under ``cache_mb``. The cache is
on the training device (GPU memory on a GPU) and looked up with the batch's host bookkeeping, so
a cached step neither copies features to the device nor waits for it. Once every example of a
batch is cached (later epochs, repeated rehearsal) it costs nothing.
The cache is not checkpointed: a resumed run starts it empty, so it recomputes (and counts again)
phi0 of examples seen before the checkpoint, equal up to float rounding (padding differs).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from forgetbench.api import ForgetbenchError, Method, check, hookimpl


@dataclass
class LdifsConfig:
    lam: float = field(default=10.0, metadata={"help": "strength of the feature-distance penalty"})
    cache_mb: float = field(
        default=512.0,
        metadata={"help": "memory for cached prior features, on the training device (0: none)"},
    )

    def __post_init__(self):
        check(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        check(self.cache_mb >= 0, f"cache_mb must be >= 0, got {self.cache_mb}")


def feature_distance(features: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    """Mean over samples and taps of the squared distance between L2-normalised features,
    averaged over the feature dimension. Both lists hold one [B, D_l] tensor per tap."""
    per_tap = [
        (F.normalize(mine.float(), dim=-1) - F.normalize(prior.float(), dim=-1)).pow(2).mean(-1)
        for mine, prior in zip(features, reference, strict=True)
    ]
    return torch.stack(per_tap, dim=1).mean()


class Ldifs(Method):
    name = "ldifs"
    description = "LDIFS: lambda * distance of normalised features to the prior model's"
    Config = LdifsConfig
    needs_features = True

    @hookimpl
    def forgetbench_setup(self, model):
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False)
        self.cache: dict[tuple[bool, int], torch.Tensor] = {}
        self.cache_bytes = 0

    def prior_features(self, ctx, batch) -> list[torch.Tensor]:
        """phi0 of every sample of ``batch``: one [B, D_l] tensor per tap, on the batch's device.

        The keys come from the batch's host bookkeeping and the cached rows live on the
        batch's device, so a step whose phi0 are all cached does not wait for a GPU."""
        host = batch.bookkeeping()
        keys = list(zip(host.is_prior.tolist(), host.index.tolist(), strict=True))
        if all(key in self.cache for key in keys):
            rows = torch.stack([self.cache[key] for key in keys])
            return list(rows.split(self.widths, dim=1))
        with torch.inference_mode():
            taps = ctx.forward(self.frozen, batch, with_features=True, extra=True).features
        taps = [tap.float().clone() for tap in taps]  # clone leaves inference mode
        self.widths = [tap.shape[1] for tap in taps]
        self._remember(keys, torch.cat(taps, dim=1))
        return taps

    def _remember(self, keys, rows: torch.Tensor) -> None:
        """Cache each new key's row (a view of ``rows``, on its device) within the budget."""
        budget = self.config.cache_mb * 2**20
        for key, row in zip(keys, rows, strict=True):
            if key in self.cache or self.cache_bytes + row.nbytes > budget:
                continue
            self.cache[key] = row
            self.cache_bytes += row.nbytes

    @hookimpl
    def forgetbench_regularizer(self, ctx, batch, outputs):
        if outputs.features is None:
            raise ForgetbenchError(
                f"ldifs: task {ctx.task.metadata.name!r} returns no feature taps"
                " (forward(..., with_features=True) gave none)"
            )
        reference = self.prior_features(ctx, batch)
        return self.config.lam * feature_distance(outputs.features, reference)


@hookimpl
def forgetbench_register_methods(register):
    register(Ldifs)
