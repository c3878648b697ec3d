"""flow: weights against a hand computation, the probe, loss0's cache and counting, a run."""

import math

import pytest
import torch
from method_helpers import metrics, run_tiny, tiny_context, tiny_model, train_batch

from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench.store import Store
from forgetbench_plugins.flow import Flow, FlowConfig, fit_probe_losses, flow_weights


def test_config_validation():
    with pytest.raises(ForgetbenchError, match="tau must be > 0"):
        build_config(FlowConfig, {"tau": "0"}, "flow")
    with pytest.raises(ForgetbenchError, match="probe_steps must be >= 1"):
        build_config(FlowConfig, {"probe_steps": "0"}, "flow")
    assert build_config(FlowConfig, {"tau": "none"}, "flow").tau is None


def test_weights_with_median_and_given_tau():
    loss0 = torch.tensor([0.5, 1.0, 2.0, 4.0])
    weights, tau = flow_weights(loss0)
    assert tau == pytest.approx(1.5)  # even count: mean of the two middle losses
    expected = [math.exp(-0.5 / 1.5), math.exp(-1 / 1.5), math.exp(-2 / 1.5), math.exp(-4 / 1.5)]
    assert weights.tolist() == pytest.approx(expected)
    weights, tau = flow_weights(loss0, tau=2.0)
    assert tau == 2.0
    assert weights.tolist() == pytest.approx([math.exp(-x / 2) for x in (0.5, 1, 2, 4)])
    weights, tau = flow_weights(torch.tensor([3.0, 0.2, 1.0]))
    assert tau == pytest.approx(1.0)  # odd count: the middle loss
    assert weights[2].item() == pytest.approx(math.exp(-1.0))


def test_zero_median_falls_back_to_mean():
    weights, tau = flow_weights(torch.tensor([0.0, 0.0, 3.0]))
    assert tau == pytest.approx(1.0)
    assert torch.isfinite(weights).all()


def test_sample_weights_look_up_new_samples_and_leave_prior_at_one():
    method = Flow()
    method.weights = torch.tensor([0.9, 0.8, 0.7, 0.6])
    batch = {
        "is_prior": torch.tensor([False, True, False, True]),
        "index": torch.tensor([3, 3, 0, 1]),
    }
    weights = method.forgetbench_sample_weights(batch=batch)
    assert weights.tolist() == pytest.approx([0.6, 1.0, 0.9, 1.0])


def test_heavily_penalised_probe_predicts_class_frequencies():
    # With the weights forced to ~0 only the bias fits: p(class) = its frequency, so each
    # sample's loss is -log(frequency of its label).
    features = torch.randn(8, 5)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
    losses = fit_probe_losses(features, labels, classes=3, steps=100, l2=1e6)
    expected = [-math.log(6 / 8)] * 6 + [-math.log(1 / 8)] * 2
    assert losses.tolist() == pytest.approx(expected, abs=1e-3)


def test_probe_separates_separable_features():
    labels = torch.arange(30) % 3
    features = torch.nn.functional.one_hot(labels, 3).float() * 4 + 0.1 * torch.randn(30, 3)
    losses = fit_probe_losses(features, labels, classes=3, steps=100, l2=1e-3)
    assert losses.max().item() < 0.1


def test_setup_scores_every_new_example_charges_the_pass_and_caches_it(isolated_cache):
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names)
    method = Flow()
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    assert method.loss0.shape == (len(data.new_train),)
    assert (method.loss0 > 0).all()
    assert method.tau == pytest.approx(float(torch.quantile(method.loss0, 0.5)))
    assert ctx.compute.extra_inference == len(data.new_train)
    assert ctx.compute.eval_inference == 0

    def entries() -> int:
        return len(list((isolated_cache / "flow-loss0").iterdir()))

    assert entries() == 1

    # Another seed's fresh head does not change loss0: the cache serves it, the cost is the same.
    other, _ = tiny_model()
    other.load_state_dict(model.state_dict())
    torch.nn.init.normal_(other.heads["new"].weight)
    again = Flow()
    again.forgetbench_setup(ctx=ctx, model=other, data=data)
    assert torch.equal(again.loss0, method.loss0)
    assert entries() == 1
    assert ctx.compute.extra_inference == 2 * len(data.new_train)

    # Different prior weights: a different entry.
    with torch.no_grad():
        other.encoder.embeddings.word_embeddings.weight.mul_(2)
    Flow().forgetbench_setup(ctx=ctx, model=other, data=data)
    assert entries() == 2


def test_without_a_fresh_head_loss0_is_the_prior_models_own_loss():
    model, _ = tiny_model()
    ctx, data = tiny_context(frozenset())
    method = Flow()
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    model.eval()
    batch = train_batch(ctx, data, new=[0, 1, 2, 3])
    with torch.no_grad():
        expected = ctx.task.forward(model, batch).loss
    assert torch.allclose(method.loss0[:4], expected, atol=1e-5)


def test_new_parameters_that_are_not_one_linear_head_are_an_error():
    model, _ = tiny_model()
    ctx, data = tiny_context(frozenset({"heads.new.weight"}))
    with pytest.raises(ForgetbenchError, match="do not form one head module"):
        Flow().forgetbench_setup(ctx=ctx, model=model, data=data)


def test_end_to_end(db):
    run_id = run_tiny(db, ["flow"])
    stored = metrics(db, run_id)
    assert stored["run/derived/flow/tau"] > 0
    # exp(-loss/median) is above exp(-1) for half the samples and below 1 for all of them.
    assert math.exp(-1) / 2 < stored["run/derived/flow/weight_mean"] < 1
    compute = Store(db).get_run(run_id)["compute"]
    assert compute["extra_inference"] == 256  # one pass over the tiny task's new-train split
