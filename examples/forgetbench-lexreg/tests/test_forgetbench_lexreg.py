"""Tests of the ``lexreg`` family (an example plugin).

Its parts alone, then runs of ``lexreg-depth`` on the real WordNet files through forgetbench's
real engine and store (seconds each on a CPU). Stage 0 trains once: every run shares one
folder, so one cache.
"""

import forgetbench_lexreg as family
import pytest
import torch

from forgetbench.api import run_for_test

TASK = family.LexregWordnetDepthTask
# Every method forgetbench ships.
METHODS = ["finetune", "mixcd", "random", "flow", "ldifs", "l2sp", "lora", "wise-ft", "lp-ft"]
STEPS = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def test_the_splits_are_whole_and_their_ids_unique():
    data = TASK().load_data(None)
    ids = [e["id"] for split in data.splits() for e in split.examples]
    assert all(len(split) > 0 for split in data.splits())
    assert len(ids) == len(set(ids))


def test_a_saved_prior_model_loads_back_the_same(tmp_path):
    task = TASK()
    bundle = task.build_prior(None, task.load_data(None))
    task.save_bundle(bundle, tmp_path)
    loaded = task.load_bundle(tmp_path).model.state_dict()
    assert loaded.keys() == bundle.model.state_dict().keys()
    for name, value in bundle.model.state_dict().items():
        assert torch.equal(loaded[name], value), name


def test_each_row_of_a_mixed_batch_is_scored_by_its_own_head():
    torch.manual_seed(0)
    task = TASK()
    data = task.load_data(None)
    bundle = task.build_prior(None, data)
    model = task.init_new_task(None, bundle, data)
    examples = [*data.prior_train.examples[:3], *data.new_train.examples[:3]]
    inputs = task.collate(bundle, examples)
    result = task.forward(model, inputs, with_features=True)
    hidden = result.features[-1]  # the last block's output: what the heads read
    assert result.logits is None  # a regressor has no predictive distribution
    for row, example in enumerate(examples):
        head = model.heads["prior" if example["source"] == "prior" else "new"]
        prediction = head(hidden[row : row + 1])[0, 0]
        expected = (prediction - example["y"]) ** 2
        # one row alone and a batch round differently: equal to float precision
        assert torch.allclose(result.loss[row], expected, atol=1e-5), row
        error = abs(float(prediction.detach()) - example["y"]) * example["scale"]
        assert bool(result.success[row]) == (error <= task.config.tolerance)
    assert len(result.features) == len(task.layer_stack(model)) + 1


def test_a_bad_setting_is_refused():
    with pytest.raises(ValueError, match="tolerance"):
        family.Config(tolerance=0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_it(method, runs):
    result = run_for_test(method, task=TASK, steps=STEPS, directory=runs)
    assert result.run["status"] == "ok"
    batch_size = result.run["config"]["train"]["batch_size"]
    assert result.compute["forwarded"] == STEPS * batch_size  # each step's whole batch
    for split in ("prior", "new"):
        assert 0.0 <= result.metrics[f"{split}/after/within"] <= 1.0
        assert result.metrics[f"{split}/after/mse"] >= 0.0


def test_fine_tuning_learns_the_new_task_and_forgets_some_of_the_prior(runs):
    metrics = run_for_test("finetune", task=TASK, steps=STEPS, directory=runs).metrics
    # Stage 0 learned the prior task: f0 gets about half of it within a level,
    # and beats predicting the mean (the target's variance, about 4.9 levels^2).
    assert metrics["prior/before/within"] > 0.4
    assert metrics["prior/before/mse"] < 4.0
    assert metrics["new/after/mse"] < metrics["new/before/mse"]
    # Some examples f0 got right are wrong after fine-tuning: forgetting to mitigate.
    assert metrics["prior/derived/cd_rate"] > 0.0
