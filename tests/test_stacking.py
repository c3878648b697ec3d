"""Methods stacked in one run: weights multiply, regularisers add, finalizers chain (lora's
merge first), and two claimers of a firstresult hook are an error before anything runs."""

import pytest
import torch
from method_helpers import metrics, run_tiny, series, tiny_context, tiny_model, train_batch

from forgetbench import engine
from forgetbench.api import Method
from forgetbench.errors import ForgetbenchError
from forgetbench.hookspecs import hookimpl
from forgetbench.registry import run_plugin_manager
from forgetbench.store import Store
from forgetbench_plugins.flow import Flow
from forgetbench_plugins.l2sp import L2SP


def test_lora_then_wise_ft_interpolates_the_merged_model(db):
    run_id = run_tiny(db, ["wise-ft", "lora"])  # lora's merge runs first whatever the order
    stored = metrics(db, run_id)
    prior = series(db, run_id, "wise-ft/prior/accuracy")
    assert sorted(prior) == [0, 25, 50, 75, 100]
    assert prior[0] == stored["prior/before/accuracy"]  # theta0 was taken before the wrap
    assert prior[50] == stored["prior/after/accuracy"]


def test_unmerged_lora_with_wise_ft_fails_clearly(db):
    with pytest.raises(ForgetbenchError, match=r"keep lora\.merge=true"):
        run_tiny(db, ["lora", "wise-ft"], {"lora.merge": "false"})
    (run,) = Store(db).get_runs()
    assert run["status"] == "failed"
    assert "lora.merge" in run["error"]


def test_mixcd_with_ldifs_penalises_the_rehearsed_batch(db):
    # Same seed, same sampler draws: the only difference from mix-cd alone is the LDIFS
    # penalty, whose frozen forward covers every sample of the mixed batch, prior ones included.
    alone = run_tiny(db, ["mixcd"])
    stacked = run_tiny(db, ["mixcd", "ldifs"])
    assert series(db, stacked, "train/loss")[1] > series(db, alone, "train/loss")[1]
    cost = {run["id"]: run["compute"]["extra_inference"] for run in Store(db).get_runs()}
    assert cost[stacked] - cost[alone] == 5 * 16  # 5 steps x 16 samples, none cached yet
    assert "run/derived/pool_size" in metrics(db, stacked)


def test_flow_and_l2sp_combine_as_weighted_mean_plus_penalty():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    flow, l2sp = Flow(), L2SP()
    hooks = run_plugin_manager([flow, l2sp]).hook
    hooks.forgetbench_setup(ctx=ctx, model=model, data=data)
    with torch.no_grad():
        model.heads["new"].weight.add_(1.0)  # so the L2-SP head term is clearly non-zero
    batch = train_batch(ctx, data, new=[0, 3, 5], prior=[2])
    outputs = ctx.task.forward(model, batch.inputs)
    combined = engine.combine_loss(ctx, hooks, model, batch, outputs)
    weights = torch.cat([flow.weights[[0, 3, 5]], torch.ones(1)])
    expected = (weights * outputs.loss).mean() + l2sp.forgetbench_regularizer()
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)
    assert l2sp.forgetbench_regularizer().item() > 0


def test_flow_with_l2sp_end_to_end(db):
    run_id = run_tiny(db, ["flow", "l2sp"])
    assert metrics(db, run_id)["run/derived/flow/tau"] > 0
    assert Store(db).get_run(run_id)["compute"]["extra_inference"] == 256  # flow's pre-pass


class OtherWrapper(Method):
    name = "other-wrapper"

    @hookimpl
    def forgetbench_wrap_model(self, model):
        return model


def test_two_model_wrappers_are_a_conflict(db):
    with pytest.raises(ForgetbenchError, match="lora and other-wrapper both implement"):
        run_tiny(db, ["lora", "other-wrapper"], extra_methods=[OtherWrapper])
    assert Store(db).get_runs() == []  # refused before a run row was written
