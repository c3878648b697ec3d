"""A method that trains on feature taps (LDIFS) gets them checked before the run evaluates
anything: a task whose ``forward(..., with_features=True)`` gives no ``[B, D]`` taps, or
crashes there, fails the run at once, with the task named."""

import dataclasses

import pytest

from forgetbench.api import ForgetbenchError, run_for_test
from forgetbench.store import Store
from forgetbench.testing import TinyTextTask


class FlatTaps(TinyTextTask):
    """Features of shape [B] instead of [B, D]; counts its evaluations."""

    evaluations = 0

    def forward(self, model, inputs, with_features=False):
        result = super().forward(model, inputs, with_features)
        if with_features:
            result = dataclasses.replace(result, features=[f.mean(dim=1) for f in result.features])
        return result

    def evaluate(self, ctx, model, split):
        type(self).evaluations += 1
        return super().evaluate(ctx, model, split)


class TapOutOfRange(FlatTaps):
    def forward(self, model, inputs, with_features=False):
        if with_features:
            raise IndexError("tuple index out of range")
        return TinyTextTask.forward(self, model, inputs, with_features)


def test_taps_of_the_wrong_shape_fail_the_run_before_any_evaluation(tmp_path):
    FlatTaps.evaluations = 0
    with pytest.raises(ForgetbenchError, match=r"list of \[B, D\] tensors.*ldifs.*\[\(2,\)"):
        run_for_test("ldifs", task=FlatTaps, directory=tmp_path)
    assert FlatTaps.evaluations == 0
    (run,) = Store(str(tmp_path / "results.db")).get_runs()
    assert run["status"] == "failed"


def test_a_crash_in_the_taps_names_the_task_before_any_evaluation(tmp_path):
    TapOutOfRange.evaluations = 0
    with pytest.raises(IndexError):
        run_for_test("ldifs", task=TapOutOfRange, directory=tmp_path)
    assert TapOutOfRange.evaluations == 0
    (run,) = Store(str(tmp_path / "results.db")).get_runs()
    assert run["error"].endswith("(in task 'tiny', forward)")


def test_the_check_changes_no_number(tmp_path, monkeypatch):
    """The same LDIFS run with and without the check: identical metrics, so the probe leaves
    the random state, the modules' modes and the weights as they were."""
    import forgetbench.runner

    checked = run_for_test("ldifs", steps=3, directory=tmp_path / "checked")
    monkeypatch.setattr(forgetbench.runner, "probe_feature_taps", lambda *args: None)
    unchecked = run_for_test("ldifs", steps=3, directory=tmp_path / "unchecked")
    assert checked.metrics == unchecked.metrics
