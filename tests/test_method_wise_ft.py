"""wise-ft: exact endpoints of the interpolation, the grid, the wrapped-model error, a run."""

import pytest
import torch
from method_helpers import metrics, run_tiny, series, tiny_context, tiny_model

from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench_plugins.wise_ft import WiseFT, WiseFTConfig, interpolate


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"alpha": "1.5"}, "alpha must be in"),
        ({"alpha": "-0.1"}, "alpha must be in"),
        ({"grid": "0,1.2"}, "grid values must be in"),
        ({"grid": "0.5,0.501"}, "differ by at least 0.01"),
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
    ctx, _ = tiny_context(new_names, model)
    method = WiseFT()
    method.forgetbench_setup(ctx=ctx, model=model)
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
    ctx, _ = tiny_context(new_names, model)
    method = WiseFT()
    method.forgetbench_setup(ctx=ctx, model=model)
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
