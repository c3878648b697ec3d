"""ldifs: the distance against a hand computation, zero at theta0, cache == on the fly, a run."""

import pytest
import torch
from method_helpers import run_tiny, series, tiny_context, tiny_model, train_batch

from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench.store import Store
from forgetbench_plugins.ldifs import Ldifs, LdifsConfig, feature_distance


def test_config_validation():
    with pytest.raises(ForgetbenchError, match="lam must be >= 0"):
        build_config(LdifsConfig, {"lam": "-1"}, "ldifs")
    with pytest.raises(ForgetbenchError, match="cache_mb must be >= 0"):
        build_config(LdifsConfig, {"cache_mb": "-5"}, "ldifs")


def test_feature_distance_matches_hand_computation():
    # Sample 1, tap 1: [3, 4] -> [0.6, 0.8] vs [1, 0]: squared differences 0.16, 0.64, mean 0.4.
    # Sample 1, tap 2: same direction, distance 0. Sample 2: opposite directions, (4 + 0) / 2 = 2
    # on tap 1 and [0, 2] vs [0, -2] (normalised [0, 1] vs [0, -1]) gives 2 on tap 2.
    mine = [torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 2.0]])]
    prior = [torch.tensor([[1.0, 0.0], [-5.0, 0.0]]), torch.tensor([[7.0, 0.0], [0.0, -2.0]])]
    assert feature_distance(mine, prior).item() == pytest.approx((0.4 + 0 + 2 + 2) / 4)


def features_of(ctx, model, batch):
    return ctx.task.forward(model, batch.inputs, with_features=True)


def test_penalty_is_zero_at_theta0_and_positive_after_a_step():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    method = Ldifs()
    method.forgetbench_setup(model=model)
    batch = train_batch(ctx, data, new=[0, 1, 2, 3], prior=[5, 6])
    model.eval()  # no dropout, so theta0 reproduces phi0 exactly
    penalty = method.forgetbench_regularizer(
        ctx=ctx, batch=batch, outputs=features_of(ctx, model, batch)
    )
    assert penalty.item() == pytest.approx(0.0, abs=1e-10)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    features_of(ctx, model, batch).loss.mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    penalty = method.forgetbench_regularizer(
        ctx=ctx, batch=batch, outputs=features_of(ctx, model, batch)
    )
    assert penalty.item() > 1e-6
    penalty.backward()  # the penalty reaches the model's weights, not the frozen copy's
    assert model.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert all(w.grad is None for w in method.frozen.parameters())


def test_cached_and_on_the_fly_prior_features_give_the_same_penalty():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    cached, on_the_fly = Ldifs(LdifsConfig(cache_mb=64)), Ldifs(LdifsConfig(cache_mb=0))
    cached.forgetbench_setup(model=model)
    on_the_fly.forgetbench_setup(model=model)
    with torch.no_grad():
        model.encoder.embeddings.word_embeddings.weight.add_(0.1)
    model.eval()
    batches = [
        train_batch(ctx, data, new=[0, 1, 2], prior=[4]),
        train_batch(ctx, data, new=[2, 1, 7], prior=[9, 4]),  # 1, 2 and prior 4 come back
        train_batch(ctx, data, new=[1, 2], prior=[4]),  # all cached by now
    ]
    penalties = {}
    for name, method in (("cached", cached), ("on the fly", on_the_fly)):
        counted = ctx.compute.extra_inference
        penalties[name] = [
            method.forgetbench_regularizer(
                ctx=ctx, batch=batch, outputs=features_of(ctx, model, batch)
            ).item()
            for batch in batches
        ]
        penalties[name + " cost"] = ctx.compute.extra_inference - counted
    assert penalties["cached"] == pytest.approx(penalties["on the fly"], rel=1e-5)
    assert penalties["cached"][0] > 0
    assert penalties["cached cost"] == 4 + 5  # the third batch is served from the cache
    assert penalties["on the fly cost"] == 4 + 5 + 3
    assert set(cached.cache) == {
        (False, 0),
        (False, 1),
        (False, 2),
        (False, 7),
        (True, 4),
        (True, 9),
    }
    assert not on_the_fly.cache


def test_cache_stays_within_its_budget():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    batch = train_batch(ctx, data, new=[0, 1, 2, 3, 4])
    model.eval()
    outputs = features_of(ctx, model, batch)
    row_bytes = 4 * sum(tap.shape[1] for tap in outputs.features)  # float32 per example
    method = Ldifs(LdifsConfig(cache_mb=3.5 * row_bytes / 2**20))
    method.forgetbench_setup(model=model)
    method.forgetbench_regularizer(ctx=ctx, batch=batch, outputs=outputs)
    assert len(method.cache) == 3
    assert method.cache_bytes == 3 * row_bytes


def test_missing_features_are_a_clear_error():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    method = Ldifs()
    method.forgetbench_setup(model=model)
    batch = train_batch(ctx, data, new=[0])
    outputs = ctx.task.forward(model, batch.inputs)
    with pytest.raises(ForgetbenchError, match="returns no feature taps"):
        method.forgetbench_regularizer(ctx=ctx, batch=batch, outputs=outputs)


def test_end_to_end_penalises_the_first_step(db):
    # Same seed and batches as plain fine-tuning; the training model's dropout already moves
    # its features away from the frozen (eval-mode) prior model's at step 1.
    baseline = run_tiny(db, ["finetune"])
    run_id = run_tiny(db, ["ldifs"])
    assert series(db, run_id, "train/loss")[1] > series(db, baseline, "train/loss")[1]
    compute = Store(db).get_run(run_id)["compute"]
    # 5 steps x 16 samples over 256 new-train examples: every step sees new ones, each once.
    assert compute["extra_inference"] == 5 * 16
