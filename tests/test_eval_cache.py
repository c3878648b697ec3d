"""The prior split's "before fine-tuning" evaluation, cached on disk keyed by f0's state: a hit
gives the same stored run as a miss and as a run with the cache off (metrics, cd_rate, compute
counts, curve), and anything that changes f0's state or the task's config misses."""

import random
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from forgetbench.evaluation import EVAL_CACHE_OFF_ENV, prior_state_digest
from forgetbench.testing import TinyTextTask, run_for_test

KIND = "prior-eval"  # the cache's folder under $FORGETBENCH_CACHE


class CountingTiny(TinyTextTask):
    """The mock task, recording the split of every ``evaluate`` call; ``nudge`` moves one f0
    weight in ``init_new_task`` (a task changing f0 before the evaluation)."""

    calls: ClassVar[list[str]] = []
    nudge: ClassVar[float] = 0.0

    def init_new_task(self, ctx, bundle, data):
        model = super().init_new_task(ctx, bundle, data)
        if self.nudge:
            with torch.no_grad():
                model.encoder.embeddings.word_embeddings.weight[5, 0] += self.nudge
        return model

    def evaluate(self, ctx, model, split):
        CountingTiny.calls.append(split.name)
        # draws from every global generator (as a sampling decoder would): skipping the
        # evaluation on a hit must still leave LoRA's initialisation, drawn next, unchanged
        torch.rand(1), np.random.random(), random.random()
        return super().evaluate(ctx, model, split)


def run(tmp_path, name: str, *methods: str, **kwargs: Any):
    CountingTiny.calls.clear()
    result = run_for_test(*methods, task=CountingTiny, steps=4, directory=tmp_path / name, **kwargs)
    assert result.run["status"] == "ok"
    return result, list(CountingTiny.calls)


def entries(cache) -> list:
    folder = cache / KIND
    return (
        sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if folder.is_dir()
        else []
    )


def without_timings(compute: dict) -> dict:
    """The counts: a hit charges the same samples as a miss, but takes less time."""
    return {k: v for k, v in compute.items() if k not in ("wall_seconds", "cache_seconds")}


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.delenv(EVAL_CACHE_OFF_ENV, raising=False)
    monkeypatch.setattr(CountingTiny, "nudge", 0.0)


def test_a_hit_stores_the_same_run_as_a_miss_and_as_the_cache_off(
    tmp_path, isolated_cache, monkeypatch
):
    cold, cold_calls = run(tmp_path, "cold", "lora", seed=3)
    assert cold_calls.count("prior_eval") == 2
    assert cold_calls.count("new_eval") == 2
    assert len(entries(isolated_cache)) == 1
    warm, warm_calls = run(tmp_path, "warm", "lora", seed=3)
    # the prior split is evaluated after fine-tuning only; the new split still both times
    assert warm_calls.count("prior_eval") == 1
    assert warm_calls.count("new_eval") == 2
    monkeypatch.setenv(EVAL_CACHE_OFF_ENV, "1")
    off, off_calls = run(tmp_path, "off", "lora", seed=3)
    assert off_calls.count("prior_eval") == 2
    assert len(entries(isolated_cache)) == 1
    assert [r.run["versions"]["prior_before_cache"] for r in (cold, warm, off)] == [
        "miss",
        "hit",
        "off",
    ]
    for other in (warm, off):
        assert other.metrics == cold.metrics  # every stored number, bit for bit
        assert without_timings(other.compute) == without_timings(cold.compute)
        assert other.series == cold.series
    assert 0.0 <= cold.metrics["prior/derived/cd_rate"] <= 1.0
    # the cache served the prior split's before-evaluation: it is counted all the same
    sizes = 128 + 128  # the mock task's prior and new eval splits
    assert cold.compute["eval_inference"] == 2 * sizes


def test_the_prior_evaluation_does_not_depend_on_the_run_seed(tmp_path, isolated_cache):
    first, _ = run(tmp_path, "a", seed=0)
    second, calls = run(tmp_path, "b", seed=1)  # another fresh head: the new split differs
    assert calls.count("prior_eval") == 1
    assert second.run["versions"]["prior_before_cache"] == "hit"
    for name, value in first.metrics.items():
        if name.startswith("prior/before/"):
            assert second.metrics[name] == value
    assert len(entries(isolated_cache)) == 1


def test_a_changed_f0_or_task_config_misses(tmp_path, isolated_cache, monkeypatch):
    run(tmp_path, "plain", seed=0)
    monkeypatch.setattr(CountingTiny, "nudge", 1e-3)  # one f0 weight moved before evaluation
    nudged, calls = run(tmp_path, "nudged", seed=0)
    assert calls.count("prior_eval") == 2
    assert nudged.run["versions"]["prior_before_cache"] == "miss"
    assert len(entries(isolated_cache)) == 2
    monkeypatch.setattr(CountingTiny, "nudge", 0.0)
    other, calls = run(tmp_path, "config", seed=0, settings={"task.stage0_steps": 5})
    assert calls.count("prior_eval") == 2
    assert other.run["versions"]["prior_before_cache"] == "miss"
    assert len(entries(isolated_cache)) == 3


def test_a_task_can_opt_out(tmp_path, isolated_cache, monkeypatch):
    monkeypatch.setattr(CountingTiny, "cache_prior_before", False, raising=False)
    for name in ("a", "b"):
        result, calls = run(tmp_path, name, seed=0)
        assert calls.count("prior_eval") == 2
        assert result.run["versions"]["prior_before_cache"] == "off"
    assert entries(isolated_cache) == []


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 3)
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2)


def test_the_state_digest_covers_buffers_and_dtypes_and_skips_the_new_parameters():
    model, new = Tiny(), frozenset({"head.weight", "head.bias"})
    digest = prior_state_digest(model, new)
    assert digest == prior_state_digest(Tiny(), new)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # a parameter the new task added: not f0's state
    assert prior_state_digest(model, new) == digest
    model.norm.running_mean[0] = 0.5  # a buffer (BatchNorm statistics) is
    moved = prior_state_digest(model, new)
    assert moved != digest
    assert prior_state_digest(model, frozenset()) != moved  # the head counts when not new
    half = prior_state_digest(Tiny().to(torch.bfloat16), new)
    assert half is not None
    assert half not in (digest, prior_state_digest(Tiny().double(), new))


def test_no_f0_parameter_left_means_no_key():
    model = Tiny()
    everything = frozenset(name for name, _ in model.named_parameters())
    assert prior_state_digest(model, everything) is None  # e.g. a wrapper renamed them all
    assert prior_state_digest(model, frozenset()) is not None
