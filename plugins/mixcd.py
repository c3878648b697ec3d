"""``mixcd``: rehearse where the collateral damage is.

Collateral damage (CD): a prior sample the prior model f0 predicts correctly and the model
being fine-tuned gets wrong. mix-cd mixes prior samples into each batch like random
rehearsal, but draws them from the estimated distribution of CD samples:

- Candidate pool: prior-train samples f0 got right (read from the shared prior cache), with
  ``conf_threshold`` only those f0 got right with confidence >= threshold.
- Partitions: each scheme maps a sample to a bin: ``loss`` / ``confidence`` (quantile bins of
  f0's loss / confidence over the pool, ``bins`` each), or any scheme the task names in
  ``Task.partitions`` (``label`` for classification, ``genre`` for MNLI, ``question_type`` for
  QA, ...). Several schemes combine ``joint`` (Cartesian cells) or
  ``factorised``: alpha(a, b, ...) = alpha_bar * prod_s alpha_s / alpha_bar, exact under
  conditional independence, and needing far fewer observations per bin.
- Estimator: the rehearsed samples are forwarded anyway; their correctness updates per-bin
  counts u (CD seen) and n (seen), alpha = (u + 1) / (n + 2), a Beta(1, 1) start at 0.5.
  That forward is the training one, in train mode: with dropout a sample f0 gets right in
  evaluation can come out wrong there (on ``wordnet``'s f0, 21 of 418 right samples, 5%,
  before any training), so the counts include dropout's flips, mostly of low-confidence
  samples; the probe estimator below forwards in evaluation mode and does not.
  ``decay`` < 1 multiplies the counts by ``decay`` at every training step (whichever estimator
  feeds them), so evidence k steps old weighs ``decay**k``.
  ``estimator=probe`` instead spends ``probe_size`` counted extra forward passes every
  ``probe_every`` steps on a uniform sample of the pool, free of the selection bias.
- Sampling: cell k with probability proportional to |B_k| * alpha_k (its expected number of CD
  samples), then uniformly inside the cell. Per-step cost is O(cells + samples), independent of
  the pool size (bench/bench_mixcd_sampler.py).

Defaults: ``mix_ratio=0.25`` matches ``random`` so the two compare at equal budget;
``partitions`` unset means the task's main partition (the first it lists: ``label`` for
classification, ``question_type`` for QA) plus f0-confidence quantiles, with ``factorised``
combination and ``bins=4``, following DESIGN.md's mix-cd description (label bins plus
f0-confidence quantiles) on every family; no confidence filter and no decay unless asked for.
The schemes a run used are stored (``run/derived/cells`` and the ``mixcd/alpha/...`` series,
named by the task's own values: ``label=3``, ``genre=fiction``, ``confidence=0`` for the
least confident quantile).

Against ``random``: random draws from the whole prior train set, mix-cd from f0's right
samples only (the only ones that can be damaged), so part of mix-cd's higher rehearsal
precision is that filter; the rest is its choice among them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from forgetbench.api import (
    REHEARSAL_COLUMNS,
    ForgetbenchError,
    Method,
    PriorSampler,
    RehearsalMonitor,
    Split,
    check,
    check_prior_slots,
    did_you_mean,
    hookimpl,
)

# Schemes mix-cd computes itself from the prior cache; the task names the others.
OWN_SCHEMES = ("loss", "confidence")


def quantile_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin index in [0, bins) of each value by the values' own quantiles."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right").astype(np.int64, copy=False)


def dense_codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel arbitrary integer codes to 0..K-1 (in increasing order of the codes)."""
    values = np.asarray(values)
    if values.dtype.kind in "iu" and len(values) and values.min() >= 0 and values.max() < 2**24:
        present = np.bincount(values) > 0  # O(n), where np.unique sorts: same codes
        codes = (np.cumsum(present) - 1)[values]
        return codes.astype(np.int64, copy=False), int(present.sum())
    unique, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), len(unique)


def present_values(values: np.ndarray) -> list:
    """The distinct values of ``values`` in increasing order: what :func:`dense_codes`' codes
    0..K-1 stand for."""
    values = np.asarray(values)
    if values.dtype.kind in "iu" and len(values) and values.min() >= 0 and values.max() < 2**24:
        return np.flatnonzero(np.bincount(values)).tolist()
    return np.unique(values).tolist()


def bin_names(schemes: tuple[str, ...], bins: int, task_schemes: dict, pool: np.ndarray) -> list:
    """Per scheme, the name of each of its bins in the series: the quantile bin (0 = lowest)
    for ``loss`` / ``confidence``, the task's own value (a label, a genre) for its partitions,
    so that ``label=3`` is label 3 even when some label has no sample in the pool."""
    return [
        list(range(bins))
        if scheme in OWN_SCHEMES
        else present_values(np.asarray(task_schemes[scheme])[pool])
        for scheme in schemes
    ]


class CollateralDamageEstimator:
    """Per-bin Beta(1, 1) estimates of the CD rate, joint or factorised over schemes.

    ``scheme_codes`` is [S, K]: the bin of each of the K cells under each of the S schemes.
    Joint mode keeps one count per cell; factorised mode keeps counts per scheme bin.
    """

    def __init__(
        self,
        scheme_codes: np.ndarray,
        scheme_sizes: list[int],
        factorised: bool,
        decay: float = 1.0,
    ):
        self.scheme_codes = scheme_codes
        self.factorised = factorised
        self.decay = decay
        cells = scheme_codes.shape[1]
        shapes = scheme_sizes if factorised else [cells]
        self.damaged = [np.zeros(size) for size in shapes]
        self.seen = [np.zeros(size) for size in shapes]

    def fade(self) -> None:
        """One training step passed: old counts weigh ``decay`` times less."""
        if self.decay < 1.0:
            for counts in (*self.damaged, *self.seen):
                counts *= self.decay

    def update(self, cells: np.ndarray, damage: np.ndarray) -> None:
        """Fold in observations: the cell of each observed sample and whether it was CD."""
        keys = self.scheme_codes[:, cells] if self.factorised else cells[None, :]
        for damaged, seen, key in zip(self.damaged, self.seen, keys, strict=True):
            np.add.at(damaged, key, damage.astype(float))
            np.add.at(seen, key, 1.0)

    def scheme_rates(self) -> list[np.ndarray]:
        return [(u + 1.0) / (n + 2.0) for u, n in zip(self.damaged, self.seen, strict=True)]

    def cell_rates(self) -> np.ndarray:
        """alpha per cell [K]."""
        rates = self.scheme_rates()
        if not self.factorised:
            return rates[0]
        overall = (self.damaged[0].sum() + 1.0) / (self.seen[0].sum() + 2.0)
        combined = np.full(self.scheme_codes.shape[1], overall)
        for rate, codes in zip(rates, self.scheme_codes, strict=True):
            combined *= rate[codes] / overall
        return np.clip(combined, 1e-6, 1.0)

    def state_dict(self) -> dict:
        return {
            "damaged": [u.tolist() for u in self.damaged],
            "seen": [n.tolist() for n in self.seen],
        }

    def load_state_dict(self, state: dict) -> None:
        self.damaged = [np.asarray(u, dtype=float) for u in state["damaged"]]
        self.seen = [np.asarray(n, dtype=float) for n in state["seen"]]


class CollateralDamageSampler(PriorSampler):
    """Draws cells proportionally to size x estimated CD rate, then uniformly within a cell.

    ``cell_of`` maps every prior-train index to its cell (-1: not in the candidate pool).
    """

    def __init__(self, mix_ratio: float, cell_of: np.ndarray, estimator: CollateralDamageEstimator):
        super().__init__(mix_ratio)
        self.cell_of = cell_of
        self.estimator = estimator
        members = np.flatnonzero(cell_of >= 0)
        keys = cell_of[members]
        if len(keys) and keys.max() < 2**15:
            keys = keys.astype(np.int16)  # numpy sorts 16-bit keys stably by radix, in O(n)
        order = np.argsort(keys, kind="stable")
        self.members = members[order]
        self.sizes = np.bincount(cell_of[members], minlength=estimator.scheme_codes.shape[1])
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def cell_probabilities(self) -> np.ndarray:
        weights = self.sizes * self.estimator.cell_rates()
        return weights / weights.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        cells = rng.choice(len(self.sizes), size=n, p=self.cell_probabilities())
        offsets = (rng.random(n) * self.sizes[cells]).astype(np.int64)
        return self.members[self.starts[cells] + offsets]

    def state_dict(self) -> dict:
        return {"estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.estimator.load_state_dict(state["estimator"])


def build_cells(
    schemes: tuple[str, ...],
    bins: int,
    loss: np.ndarray,
    confidence: np.ndarray,
    task_schemes: dict[str, np.ndarray],
    pool: np.ndarray,
):
    """Cells of the candidate pool. Returns (cell per pool sample, [S, K] scheme codes per
    cell, bins per scheme). ``task_schemes`` are the task's named partitions (a bin per
    prior-train example)."""
    per_scheme, sizes = [], []
    for scheme in schemes:
        if scheme == "loss":
            codes, size = quantile_bins(loss[pool], bins), bins
        elif scheme == "confidence":
            codes, size = quantile_bins(confidence[pool], bins), bins
        elif scheme in task_schemes:
            codes, size = dense_codes(np.asarray(task_schemes[scheme])[pool])
        else:
            available = [*OWN_SCHEMES, *task_schemes]
            raise ForgetbenchError(
                f"mixcd: this task has no partition {scheme!r}" + did_you_mean(scheme, available)
            )
        per_scheme.append(codes)
        sizes.append(size)
    stacked = np.stack(per_scheme)  # [S, pool]
    flat = np.ravel_multi_index(tuple(stacked), tuple(sizes))
    cell, _ = dense_codes(flat)
    counted = len(flat) and flat.max() < 2**24  # as dense_codes: counting, not sorting
    unique = np.flatnonzero(np.bincount(flat)) if counted else np.unique(flat)
    scheme_codes = np.stack(np.unravel_index(unique, tuple(sizes))).astype(np.int64)
    return cell, scheme_codes, sizes


@dataclass
class MixCDConfig:
    mix_ratio: float = field(default=0.25, metadata={"help": "share of each batch rehearsed"})
    partitions: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "loss, confidence, or the task's partitions (label, genre, ...);"
            " unset: the task's first partition and confidence"
        },
    )
    combine: str = field(default="factorised", metadata={"help": "joint | factorised"})
    bins: int = field(default=4, metadata={"help": "quantile bins for loss / confidence"})
    conf_threshold: float | None = field(
        default=None, metadata={"help": "pool: f0 confidence >= this"}
    )
    decay: float = field(default=1.0, metadata={"help": "per-step decay of old counts"})
    estimator: str = field(default="rehearsal", metadata={"help": "rehearsal | probe"})
    probe_size: int = field(default=32, metadata={"help": "probe samples per probe"})
    probe_every: int = field(default=10, metadata={"help": "steps between probes"})
    log_every: int = field(default=10, metadata={"help": "steps between alpha snapshots"})

    def __post_init__(self):
        check(0.0 < self.mix_ratio < 1.0, f"mix_ratio must be in (0, 1), got {self.mix_ratio}")
        if self.partitions is not None:
            self.partitions = tuple(self.partitions)
            check(len(self.partitions) >= 1, "partitions needs at least one scheme")
            for scheme in self.partitions:
                check(scheme.isidentifier(), f"partitions: {scheme!r} is not a scheme name")
            check(len(set(self.partitions)) == len(self.partitions), "partitions repeat a scheme")
            check(
                not set(OWN_SCHEMES) <= set(self.partitions),
                "partitions: loss and confidence give the same bins (on the pool of samples f0"
                " gets right, loss = -log(confidence)): give one of them",
            )
        check(
            self.combine in ("joint", "factorised"),
            f"combine must be joint or factorised, got {self.combine!r}",
        )
        check(2 <= self.bins <= 100, f"bins must be in [2, 100], got {self.bins}")
        check(
            self.conf_threshold is None or 0.0 <= self.conf_threshold <= 1.0,
            f"conf_threshold must be in [0, 1], got {self.conf_threshold}",
        )
        check(0.0 < self.decay <= 1.0, f"decay must be in (0, 1], got {self.decay}")
        check(
            self.estimator in ("rehearsal", "probe"),
            f"estimator must be rehearsal or probe, got {self.estimator!r}",
        )
        check(self.probe_size >= 1 and self.probe_every >= 1, "probe sizes must be >= 1")
        check(self.log_every >= 1, "log_every must be >= 1")


class MixCD(Method):
    name = "mixcd"
    description = "rehearsal drawn where collateral damage is (partitioned CD-rate estimates)"
    Config = MixCDConfig
    columns = REHEARSAL_COLUMNS

    def __init__(self, config=None):
        super().__init__(config)
        self.sampler: CollateralDamageSampler | None = None
        self.monitor: RehearsalMonitor | None = None
        self.series: list[tuple[str, int, float]] = []
        self.pool_size = 0

    def check_train(self, train):
        check_prior_slots(self.name, self.config.mix_ratio, train.batch_size)

    @hookimpl
    def forgetbench_prior_sampler(self, ctx, data):
        config = self.config
        predictions = ctx.prior_predictions()
        # The prior cache is one inference pass of f0 over the prior train set, charged to
        # every mix-cd run (it is cached on disk and shared, but it is this method's cost).
        ctx.compute.extra_inference += len(data.prior_train)
        pool = candidate_pool(config, predictions)
        task_schemes = ctx.task.partitions(data)
        self.schemes = config.partitions or (*list(task_schemes)[:1], "confidence")
        cells, scheme_codes, sizes = build_cells(
            self.schemes, config.bins, predictions.loss, predictions.confidence, task_schemes, pool
        )
        cell_of = np.full(len(data.prior_train), -1, dtype=np.int64)
        cell_of[pool] = cells
        estimator = CollateralDamageEstimator(
            scheme_codes, sizes, config.combine == "factorised", config.decay
        )
        self.sampler = CollateralDamageSampler(config.mix_ratio, cell_of, estimator)
        warn_if_few(ctx, len(pool), predictions, self.sampler.count(ctx.train.batch_size))
        self.monitor = RehearsalMonitor(predictions.success)
        self.pool_size = len(pool)
        self.prior_split = data.prior_train
        self._cell_names = None
        self._bin_names = bin_names(self.schemes, config.bins, task_schemes, pool)
        self._snapshot(0)
        return self.sampler

    @hookimpl
    def forgetbench_after_step(self, ctx, step, model, batch, per_sample):
        index, damage = self.monitor.observe(batch, per_sample)
        self.sampler.estimator.fade()  # per step, also between probes
        if self.config.estimator == "rehearsal":
            cells = self.sampler.cell_of[index]
            in_pool = cells >= 0
            self.sampler.estimator.update(cells[in_pool], damage[in_pool])
        elif step % self.config.probe_every == 0:
            self._probe(ctx, model, step)
        if step % self.config.log_every == 0:
            self._snapshot(step)

    def _probe(self, ctx, model, step: int) -> None:
        """Counted extra inference on a uniform sample of the pool: unbiased CD observations."""
        rng = ctx.generator(f"mixcd-probe-{step}")
        index = rng.choice(self.sampler.members, size=self.config.probe_size)
        probe = Split("prior_probe", [self.prior_split[int(i)] for i in index])
        success = ctx.predict(model, probe, extra=True).success.numpy().astype(bool)
        self.sampler.estimator.update(self.sampler.cell_of[index], ~success)

    def _snapshot(self, step: int) -> None:
        estimator = self.sampler.estimator
        names = self.schemes
        bins = self._bin_names
        if estimator.factorised:
            for i, (scheme, rates) in enumerate(zip(names, estimator.scheme_rates(), strict=True)):
                self.series += [
                    (f"mixcd/alpha/{scheme}={bins[i][b]}", step, float(r))
                    for b, r in enumerate(rates)
                ]
        else:
            if getattr(self, "_cell_names", None) is None:  # formatted once, not every snapshot
                self._cell_names = [
                    "mixcd/alpha/"
                    + "|".join(f"{scheme}={bins[i][codes[i]]}" for i, scheme in enumerate(names))
                    for codes in estimator.scheme_codes.T.tolist()
                ]
            rates = estimator.cell_rates().tolist()
            self.series += [(n, step, r) for n, r in zip(self._cell_names, rates, strict=True)]

    def state_dict(self) -> dict:
        return {"monitor": self.monitor.state_dict(), "series": self.series}

    def load_state_dict(self, state: dict) -> None:
        self.monitor.load_state_dict(state["monitor"])
        self.series = [tuple(point) for point in state["series"]]

    @hookimpl
    def forgetbench_diagnostics(self):
        if self.monitor is None:
            return None
        metrics = {
            **self.monitor.metrics(),
            "pool_size": float(self.pool_size),
            "cells": float(len(self.sampler.sizes)),
        }
        return {"metrics": metrics, "series": self.series}


def candidate_pool(config: MixCDConfig, predictions) -> np.ndarray:
    """Indices of the prior-train samples mix-cd may rehearse: f0's right ones (above
    ``conf_threshold``); none is an error."""
    keep = predictions.success.copy()
    if config.conf_threshold is not None:
        keep &= predictions.confidence >= config.conf_threshold
    pool = np.flatnonzero(keep)
    if len(pool) == 0:
        right, total = int(predictions.success.sum()), len(predictions.success)
        raise ForgetbenchError(
            f"mixcd: the candidate pool is empty: f0 gets {right} of {total} prior-train"
            " samples right (the task's `success`)"
            + (
                f", none with confidence >= {config.conf_threshold} (lower"
                " mixcd.conf_threshold, or none)"
                if right and config.conf_threshold is not None
                else ": mix-cd rehearses only samples f0 knows; check f0 (stage 0) and"
                " what the task counts as success"
            )
        )
    return pool


def warn_if_few(ctx, pool: int, predictions, slots: int) -> None:
    """Warn when rehearsal would repeat each pool sample more than 10 times on average: the
    rehearsal and the CD estimate then rest on a few samples (usually a success rule f0
    rarely meets)."""
    draws = ctx.train.steps * slots
    if draws > 10 * pool:
        ctx.logger.warning(
            "mixcd: the candidate pool holds %d prior samples (f0 gets %d of %d right) for"
            " %d rehearsal draws, each rehearsed about %.0f times: check what the task"
            " counts as success",
            pool, int(predictions.success.sum()), len(predictions.success), draws, draws / pool,
        )  # fmt: skip


@hookimpl
def forgetbench_register_methods(register):
    register(MixCD)
