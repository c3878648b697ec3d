"""flow: weights against a hand computation, the probe, loss0's cache and counting, a run."""

import math

import pytest
import torch
from method_helpers import metrics, run_tiny, tiny_context, tiny_model, train_batch

from forgetbench.api import Batch
from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench.store import Store
from forgetbench.testing import TinyTextTask
from forgetbench_plugins.flow import Flow, FlowConfig, flow_weights


def test_config_validation():
    with pytest.raises(ForgetbenchError, match="tau must be > 0"):
        build_config(FlowConfig, {"tau": "0"}, "flow")
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
    batch = Batch(
        inputs={},
        ids=torch.arange(4),
        is_prior=torch.tensor([False, True, False, True]),
        index=torch.tensor([3, 3, 0, 1]),
    )
    weights = method.forgetbench_sample_weights(batch=batch)
    assert weights.tolist() == pytest.approx([0.6, 1.0, 0.9, 1.0])


def test_setup_scores_every_new_example_charges_the_pass_and_caches_it(isolated_cache):
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
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

    # The tiny task has no probe (reference_losses): loss0 goes through the fresh head, so
    # another seed's head is another entry (it used to be served the first seed's loss0).
    other, _ = tiny_model()
    other.load_state_dict(model.state_dict())
    torch.nn.init.normal_(other.heads["new"].weight)
    again = Flow()
    again.forgetbench_setup(ctx=ctx, model=other, data=data)
    assert not torch.equal(again.loss0, method.loss0)
    assert entries() == 2
    assert ctx.compute.extra_inference == 2 * len(data.new_train)

    # Different prior weights: a different entry.
    with torch.no_grad():
        other.encoder.embeddings.word_embeddings.weight.mul_(2)
    Flow().forgetbench_setup(ctx=ctx, model=other, data=data)
    assert entries() == 3


def test_with_a_probe_the_fresh_head_is_left_out_of_the_key(isolated_cache):
    """A task whose reference_losses gives loss0 (a probe on f0's features): another seed's
    fresh head does not change it, so the cache serves it, at the same cost."""

    class Probed(TinyTextTask):
        def reference_losses(self, ctx, model, split):
            return torch.arange(1, len(split) + 1, dtype=torch.float32)

    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    ctx.task = Probed(ctx.task.config)
    first = Flow()
    first.forgetbench_setup(ctx=ctx, model=model, data=data)
    other, _ = tiny_model()
    other.load_state_dict(model.state_dict())
    torch.nn.init.normal_(other.heads["new"].weight)
    again = Flow()
    again.forgetbench_setup(ctx=ctx, model=other, data=data)
    assert torch.equal(again.loss0, first.loss0)
    assert len(list((isolated_cache / "flow-loss0").iterdir())) == 1
    assert ctx.compute.extra_inference == 2 * len(data.new_train)


def test_without_a_task_reference_loss0_is_the_prior_models_own_loss():
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    assert ctx.task.reference_losses(ctx, model, data.new_train) is None
    method = Flow()
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    model.eval()
    batch = train_batch(ctx, data, new=[0, 1, 2, 3])
    with torch.no_grad():
        expected = ctx.task.forward(model, batch.inputs).loss
    assert torch.allclose(method.loss0[:4], expected, atol=1e-5)


def test_a_task_reference_replaces_the_prior_models_loss():
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    reference = torch.linspace(0.1, 3.0, len(data.new_train))
    ctx.task.reference_losses = lambda ctx, model, split: reference
    method = Flow()
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    assert torch.equal(method.loss0, reference)


def test_end_to_end(db):
    run_id = run_tiny(db, ["flow"])
    stored = metrics(db, run_id)
    assert stored["run/derived/flow/tau"] > 0
    # exp(-loss/median) is above exp(-1) for half the samples and below 1 for all of them.
    assert math.exp(-1) / 2 < stored["run/derived/flow/weight_mean"] < 1
    compute = Store(db).get_run(run_id)["compute"]
    assert compute["extra_inference"] == 256  # one pass over the tiny task's new-train split


def probe_head(model, fill: float) -> dict[str, torch.Tensor]:
    head = model.heads["new"]
    return {
        "heads.new.weight": torch.full_like(head.weight, fill),
        "heads.new.bias": torch.full_like(head.bias, -fill),
    }


def test_probe_init_starts_the_fresh_head_from_the_tasks_probe():
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    ctx.task.reference_head = lambda ctx, model, split: probe_head(model, 0.25)
    Flow().forgetbench_setup(ctx=ctx, model=model, data=data)
    assert torch.equal(model.heads["new"].weight, torch.full_like(model.heads["new"].weight, 0.25))
    assert torch.equal(model.heads["new"].bias, torch.full_like(model.heads["new"].bias, -0.25))
    # from the cache too; with probe_init off the fresh head is left as it was
    fresh, _ = tiny_model()
    fresh.load_state_dict(model.state_dict())
    torch.nn.init.normal_(fresh.heads["new"].weight)
    before = fresh.heads["new"].weight.clone()
    Flow(FlowConfig(probe_init=False)).forgetbench_setup(ctx=ctx, model=fresh, data=data)
    assert torch.equal(fresh.heads["new"].weight, before)
    Flow().forgetbench_setup(ctx=ctx, model=fresh, data=data)
    assert torch.equal(fresh.heads["new"].weight, model.heads["new"].weight)


def test_a_probe_head_that_does_not_fit_is_one_clear_error():
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    ctx.task.reference_head = lambda ctx, model, split: {"heads.new.weight": torch.zeros(2, 2)}
    with pytest.raises(ForgetbenchError, match=r"does not fit the model; set flow\.probe_init"):
        Flow().forgetbench_setup(ctx=ctx, model=model, data=data)
