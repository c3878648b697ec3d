"""wise-ft: exact endpoints of the interpolation, the grid, the wrapped-model error, a run."""

import pytest
import torch
from method_helpers import metrics, run_tiny, series, tiny_context, tiny_model

from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench_plugins.wise_ft import WiseFT, WiseFTConfig, interpolate, recompute_bn_stats


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha": "1.5"}, "alpha must be in"),
        ({"alpha": "-0.1"}, "alpha must be in"),
        ({"grid": "0,1.2"}, "grid values must be in"),
        ({"grid": "0.5,0.501"}, "differ by at least 0.01"),
        ({"bn_stats": "keep"}, "bn_stats must be one of interpolate, recompute"),
        ({"bn_samples": "0"}, "bn_samples must be >= 1"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ForgetbenchError, match=message):
        build_config(WiseFTConfig, overrides, "wise-ft")


def test_config_parses_grid():
    assert build_config(WiseFTConfig, {"grid": "0, 0.5"}, "wise-ft").grid == (0.0, 0.5)


def fine_tuned_pair():
    """(setup WiseFT, model) where every weight, the new head included, moved after setup."""
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    method = WiseFT()
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn_like(weight))
    return method, model, new_names


def test_interpolation_endpoints_are_exact():
    method, model, new_names = fine_tuned_pair()
    theta_ft = {k: v.clone() for k, v in model.state_dict().items()}
    at_zero = interpolate(method.theta0, theta_ft, 0.0)
    at_one = interpolate(method.theta0, theta_ft, 1.0)
    for name, value in theta_ft.items():
        assert torch.equal(at_one[name], value)
        expected = value if name in new_names else method.theta0[name]
        assert torch.equal(at_zero[name], expected), name
    half = interpolate(method.theta0, theta_ft, 0.5)
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(half[name], (method.theta0[name] + theta_ft[name]) / 2)


def test_finalize_evaluates_the_grid_and_returns_the_configured_mix():
    method, model, _ = fine_tuned_pair()
    theta_ft = {k: v.clone() for k, v in model.state_dict().items()}
    name = "heads.prior.bias"
    seen = []

    def evaluate(candidate):
        seen.append(candidate.state_dict()[name].clone())
        return {"prior/accuracy": float(len(seen)), "new/accuracy": 0.5}

    returned = method.forgetbench_finalize(model=model, evaluate=evaluate)
    for alpha, value in zip(method.config.grid, seen, strict=True):
        assert torch.allclose(value, torch.lerp(method.theta0[name], theta_ft[name], alpha))
    midpoint = (method.theta0[name] + theta_ft[name]) / 2
    assert torch.allclose(returned.state_dict()[name], midpoint)
    diagnostics = method.forgetbench_diagnostics()
    prior = [(step, v) for n, step, v in diagnostics["series"] if n == "wise-ft/prior/accuracy"]
    assert prior == [(0, 1.0), (25, 2.0), (50, 3.0), (75, 4.0), (100, 5.0)]
    assert diagnostics["metrics"] == {"wise-ft/alpha": 0.5}


def test_wrapped_model_is_a_clear_error():
    from peft import LoraConfig, get_peft_model

    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    method = WiseFT()
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    wrapped = get_peft_model(model, LoraConfig(target_modules=["query"]))
    with pytest.raises(ForgetbenchError, match=r"still wrapped\? With lora, keep lora.merge"):
        method.forgetbench_finalize(model=wrapped, evaluate=lambda candidate: {})


def test_end_to_end_grid_endpoints_match_before_and_after(db):
    run_id = run_tiny(db, ["wise-ft"])
    stored = metrics(db, run_id)
    prior = series(db, run_id, "wise-ft/prior/accuracy")
    new = series(db, run_id, "wise-ft/new/accuracy")
    assert sorted(prior) == sorted(new) == [0, 25, 50, 75, 100]
    # a=0 is f0 on the prior task (its head is f0's); the returned model is a=0.5.
    assert prior[0] == stored["prior/before/accuracy"]
    assert prior[50] == stored["prior/after/accuracy"]
    assert new[50] == stored["new/after/accuracy"]
    assert stored["run/derived/wise-ft/alpha"] == 0.5


def test_recompute_bn_stats_averages_the_batches_statistics_with_dropout_off():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    model = torch.nn.Sequential(conv, torch.nn.Dropout(0.5), torch.nn.BatchNorm2d(4))
    model.train()
    batches = [torch.randn(6, 3, 8, 8) + shift for shift in (0.0, 1.0, -2.0)]
    recompute_bn_stats(model, batches, model)
    norm = model[2]
    with torch.no_grad():
        outputs = [conv(batch) for batch in batches]  # what BN sees when dropout is off
    means = torch.stack([out.mean(dim=(0, 2, 3)) for out in outputs])
    variances = torch.stack([out.var(dim=(0, 2, 3), unbiased=True) for out in outputs])
    # momentum=None: the running values are the plain average of the batches' statistics
    assert torch.allclose(norm.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(norm.running_var, variances.mean(0), atol=1e-5)
    assert int(norm.num_batches_tracked) == 3
    assert model.training
    assert norm.momentum == 0.1


def test_bn_stats_recompute_needs_a_batchnorm_layer():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    method = WiseFT(build_config(WiseFTConfig, {"bn_stats": "recompute"}, "wise-ft"))
    with pytest.raises(ForgetbenchError, match="bn_stats=recompute, but the model has no Batch"):
        method.forgetbench_setup(ctx=ctx, model=model, data=data)


def test_bn_stats_recompute_reestimates_after_every_mix_on_a_seeded_subset():
    model, new_names = tiny_model()
    model.heads["new"] = torch.nn.Sequential(torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 3))
    new_names = new_names | {f"heads.new.{n}" for n, _ in model.heads["new"].named_parameters()}
    ctx, data = tiny_context(new_names, model)
    config = build_config(WiseFTConfig, {"bn_stats": "recompute", "bn_samples": "12"}, "wise-ft")
    method = WiseFT(config)
    method.forgetbench_setup(ctx=ctx, model=model, data=data)
    chosen = [example["id"] for example in method.bn_split.examples]
    assert len(chosen) == 12
    assert len(set(chosen)) == 12
    again = WiseFT(config)
    again.forgetbench_setup(ctx=tiny_context(new_names, model)[0], model=model, data=data)
    assert [example["id"] for example in again.bn_split.examples] == chosen  # seeded
    norm = model.heads["new"][0]
    tracked = []

    def evaluate(candidate):
        tracked.append(int(norm.num_batches_tracked))
        return {"new/accuracy": 0.5}

    before = ctx.compute.extra_inference
    method.forgetbench_finalize(model=model, evaluate=evaluate)
    batches = -(-12 // ctx.train.eval_batch_size)
    assert tracked == [batches] * len(config.grid)  # reset, then re-estimated at every alpha
    assert ctx.compute.extra_inference - before == 12 * (len(config.grid) + 1)
