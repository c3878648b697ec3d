"""forgetbench-ewc's own tests: the penalty and the Fisher sampling by hand, then whole runs on
forgetbench's mock ``tiny`` task through the real engine (``forgetbench.api.run_for_test``)."""

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from forgetbench_ewc import EWC, ewc_penalty, sample_nll

from forgetbench.api import ForgetbenchError, PerSample, run_for_test

FISHER_SAMPLES = 12
SMALL = {"task.prior_eval_size": 64, "task.new_train_size": 128, "task.new_eval_size": 64}


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Iterator[Path]:
    """One store and cache for the module: the mock task's stage 0 is trained once."""
    folder = tmp_path_factory.mktemp("ewc")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FORGETBENCH_CACHE", str(folder / "cache"))
        yield folder


def run(directory: Path, *methods, steps: int = 5, **settings):
    """The mock task at a small size; EWC's Fisher on ``FISHER_SAMPLES`` samples."""
    settings = {**SMALL, **settings}
    if EWC in methods:
        settings["ewc.fisher_samples"] = FISHER_SAMPLES
    return run_for_test(*methods, steps=steps, settings=settings, directory=directory)


def test_penalty_is_half_lambda_times_fisher_weighted_squared_distance():
    weight = torch.tensor([1.0, 2.0], requires_grad=True)
    anchors = [(weight, torch.zeros(2), torch.tensor([0.5, 2.0]))]
    penalty = ewc_penalty(anchors, lam=4.0)
    assert float(penalty.detach()) == pytest.approx(4.0 / 2 * (0.5 * 1.0 + 2.0 * 4.0))
    penalty.backward()
    assert weight.grad.tolist() == pytest.approx([4.0 * 0.5 * 1.0, 4.0 * 2.0 * 2.0])


def test_true_fisher_draws_the_label_from_the_model():
    logits = torch.tensor([[float("-inf"), math.log(1.0), float("-inf")]])  # only class 1
    outputs = PerSample(torch.tensor([5.0]), torch.tensor([False]), torch.ones(1), None, logits)
    rng = np.random.default_rng(0)
    assert float(sample_nll(outputs, "true", rng)) == pytest.approx(0.0)
    assert float(sample_nll(outputs, "empirical", rng)) == 5.0  # the data's label
    with pytest.raises(ForgetbenchError, match="fisher=empirical"):
        sample_nll(PerSample(torch.ones(1), torch.ones(1), torch.ones(1)), "true", rng)


def test_fisher_passes_are_counted_cached_and_lambda_anchors_the_weights(directory):
    """Two lambdas: the second run reads the Fisher the first cached (the same numbers) and is
    charged the same; a larger lambda keeps the Fisher-weighted squared distance to w0 at the
    last step (penalty / lambda) smaller."""
    results = {lam: run(directory, EWC, steps=20, **{"ewc.lam": lam}) for lam in (1e2, 1e4)}
    for result in results.values():
        assert result.run["status"] == "ok"
        assert result.compute["extra_inference"] == FISHER_SAMPLES
        assert result.compute["extra_backward"] == FISHER_SAMPLES
    totals = {r.metrics["run/derived/ewc/fisher_total"] for r in results.values()}
    assert len(totals) == 1
    assert totals.pop() > 0
    assert len(list((directory / "cache" / "plugin-ewc").iterdir())) == 1
    distance = {lam: r.metrics["run/derived/ewc/penalty"] / lam for lam, r in results.items()}
    assert 0 < distance[1e4] < 0.5 * distance[1e2]


def test_lambda_zero_is_plain_fine_tuning(directory):
    plain = run(directory, "finetune").metrics
    off = run(directory, EWC, **{"ewc.lam": 0.0}).metrics
    after = [k for k in plain if "/after/" in k]
    assert {k: off[k] for k in after} == {k: plain[k] for k in after}
