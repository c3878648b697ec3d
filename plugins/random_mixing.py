"""``random``: rehearsal by uniform mixing, the common baseline of replay methods.

Each training batch gives ``mix_ratio`` of its slots to prior-train samples drawn uniformly with
replacement (experience replay as in e.g. Chaudhry et al. 2019, "On tiny episodic memories in
continual learning"). Default ``mix_ratio=0.25``: a quarter of every batch, a common replay
share; the benchmark reports several ratios. Rehearsal precision (share of rehearsed samples
that were collateral damage when seen) is measured for comparison with mix-cd; the prior cache
it reads is shared, and not charged as compute (it does not change what random trains on).
"""

from dataclasses import dataclass, field

import numpy as np

from forgetbench.api import (
    REHEARSAL_COLUMNS,
    Method,
    PriorSampler,
    RehearsalMonitor,
    check,
    check_prior_slots,
    hookimpl,
)


class UniformPriorSampler(PriorSampler):
    """Uniform draws (with replacement) from the whole prior train set."""

    def __init__(self, mix_ratio: float, size: int):
        super().__init__(mix_ratio)
        self.size = size

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, self.size, size=n, dtype=np.int64)


@dataclass
class RandomConfig:
    mix_ratio: float = field(default=0.25, metadata={"help": "share of each batch rehearsed"})

    def __post_init__(self):
        check(0.0 <= self.mix_ratio < 1.0, f"mix_ratio must be in [0, 1), got {self.mix_ratio}")


class RandomMixing(Method):
    name = "random"
    description = "rehearsal: mix uniformly drawn prior samples into every batch"
    Config = RandomConfig
    columns = REHEARSAL_COLUMNS

    def __init__(self, config=None):
        super().__init__(config)
        self.monitor: RehearsalMonitor | None = None

    def check_train(self, train):
        check_prior_slots(self.name, self.config.mix_ratio, train.batch_size)

    @hookimpl
    def forgetbench_prior_sampler(self, ctx, data):
        self.monitor = RehearsalMonitor(ctx.prior_predictions().success)
        return UniformPriorSampler(self.config.mix_ratio, len(data.prior_train))

    @hookimpl
    def forgetbench_after_step(self, batch, per_sample):
        self.monitor.observe(batch, per_sample)

    def state_dict(self) -> dict:
        return {"monitor": self.monitor.state_dict()} if self.monitor else {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.monitor.load_state_dict(state["monitor"])

    @hookimpl
    def forgetbench_diagnostics(self):
        return {"metrics": self.monitor.metrics()} if self.monitor else None


@hookimpl
def forgetbench_register_methods(register):
    register(RandomMixing)
