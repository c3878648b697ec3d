"""Bookkeeping shared by rehearsal methods: which rehearsed samples were collateral damage."""

from __future__ import annotations

import numpy as np

from forgetbench.api import Batch, LeaderboardColumn, PerSample

# What a rehearsal method adds to the leaderboard.
REHEARSAL_COLUMNS = (
    LeaderboardColumn(
        "rehearsal_precision",
        "rehearsal prec.",
        definition="share of the rehearsed prior samples that were collateral damage when"
        " rehearsed (f0 right, the model being fine-tuned wrong)",
    ),
)


def prior_rows(batch: Batch, per_sample: PerSample):
    """Prior-train indices [P] and current success [P] of the prior samples in a batch."""
    mask = batch.is_prior.cpu().numpy()
    index = batch.index.cpu().numpy()[mask]
    success = per_sample.success.cpu().numpy()[mask].astype(bool)
    return index, success


class RehearsalMonitor:
    """Counts rehearsed prior samples and those that were collateral damage when seen.

    A rehearsed sample is collateral damage (CD) when the prior model f0 got it right and the
    current model gets it wrong in the step's forward pass (before that step's update).
    """

    def __init__(self, prior_success: np.ndarray):
        self.prior_success = np.asarray(prior_success, dtype=bool)
        self.rehearsed = 0
        self.damaged = 0

    def observe(self, batch: Batch, per_sample: PerSample):
        """Update the counts; returns (indices, is_cd) of the batch's prior samples."""
        index, success = prior_rows(batch, per_sample)
        damage = self.prior_success[index] & ~success
        self.rehearsed += len(index)
        self.damaged += int(damage.sum())
        return index, damage

    @property
    def precision(self) -> float:
        """Share of rehearsed samples that were CD when seen (0 when nothing was rehearsed)."""
        return self.damaged / self.rehearsed if self.rehearsed else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            "rehearsal_precision": self.precision,
            "rehearsed": float(self.rehearsed),
            "rehearsed_cd": float(self.damaged),
        }

    def state_dict(self) -> dict:
        return {"rehearsed": self.rehearsed, "damaged": self.damaged}

    def load_state_dict(self, state: dict) -> None:
        self.rehearsed, self.damaged = int(state["rehearsed"]), int(state["damaged"])
