"""l2sp: the penalty against a hand computation, its gradient, and a run through the engine."""

import pytest
import torch
from method_helpers import metrics, run_tiny, series, tiny_context, tiny_model

from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench_plugins.l2sp import L2SP, L2SPConfig, l2sp_penalty, per_tensor_penalty


def test_config_rejects_negative_strengths():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        L2SPConfig(alpha=-0.1)
    with pytest.raises(ForgetbenchError, match="beta must be >= 0"):
        build_config(L2SPConfig, {"beta": "-1"}, "l2sp")


def setup_method_on_tiny_model(alpha: float, beta: float):
    model, new_names = tiny_model()
    ctx, _ = tiny_context(new_names, model)
    method = L2SP(L2SPConfig(alpha=alpha, beta=beta))
    method.forgetbench_setup(ctx=ctx, model=model)
    return method, model


def test_penalty_matches_hand_computation():
    method, model = setup_method_on_tiny_model(alpha=0.3, beta=0.02)
    query = model.encoder.encoder.layer[0].attention.self.query.weight
    head = model.heads["new"]
    with torch.no_grad():
        query[0, :4] += torch.tensor([0.5, -1.0, 0.0, 2.0])  # ||w - w0||^2 = 0.25 + 1 + 4
        head.weight.fill_(0.5)  # 3 x 32 entries of 0.25
        head.bias.copy_(torch.tensor([1.0, -2.0, 0.0]))  # 1 + 4
    expected = 0.3 / 2 * 5.25 + 0.02 / 2 * (3 * 32 * 0.25 + 5.0)
    assert method.forgetbench_regularizer().item() == pytest.approx(expected, rel=1e-5)


def test_penalty_pulls_towards_w0_and_skips_frozen_weights():
    method, model = setup_method_on_tiny_model(alpha=0.3, beta=0.0)
    assert method.forgetbench_regularizer().item() == 0.0
    query = model.encoder.encoder.layer[0].attention.self.query.weight
    with torch.no_grad():
        query[1, 1] += 2.0
    penalty = method.forgetbench_regularizer()
    penalty.backward()
    assert penalty.item() == pytest.approx(0.3 / 2 * 4.0)
    assert query.grad[1, 1].item() == pytest.approx(0.3 * 2.0)  # d/dw alpha/2 (w - w0)^2
    assert query.grad.abs().sum().item() == pytest.approx(0.6)
    query.requires_grad_(False)
    assert method.forgetbench_regularizer().item() == 0.0


def test_end_to_end_adds_the_head_penalty_to_the_first_step(db):
    # At step 1 every weight is still w0, so the only difference from plain fine-tuning
    # (same seed, same batch, same dropout) is beta/2 ||new head||^2 at its initial value.
    baseline = run_tiny(db, ["finetune"])
    run_id = run_tiny(db, ["l2sp"], {"l2sp.beta": "2.0"})
    torch.manual_seed(0)  # the runner seeds with the run seed right before adding the head
    head = torch.nn.Linear(32, 3)
    head_penalty = (head.weight.pow(2).sum() + head.bias.pow(2).sum()).item()
    first = series(db, run_id, "train/loss")[1] - series(db, baseline, "train/loss")[1]
    assert first == pytest.approx(2.0 / 2 * head_penalty, rel=1e-4)
    stored = metrics(db, run_id)
    assert {"prior/after/accuracy", "new/after/accuracy", "prior/derived/forgetting"} <= set(stored)


@pytest.mark.parametrize("scale", [1.0, 1024.0, 3.7])  # 1024: an fp16 loss scaler's
def test_fused_penalty_is_the_per_tensor_one_bit_for_bit(scale):
    method, model = setup_method_on_tiny_model(alpha=0.1, beta=0.01)
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(torch.randn_like(weight) * 1e-2)
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    results = []
    for penalty in (l2sp_penalty, per_tensor_penalty):
        model.zero_grad(set_to_none=True)
        value = penalty(method.anchored, method.fresh, 0.1, 0.01)
        (value * scale).backward()
        grads = {name: w.grad for name, w in model.named_parameters() if w.grad is not None}
        results.append((value.detach(), grads))
    (fused, fused_grads), (plain, plain_grads) = results
    assert torch.equal(fused, plain)
    assert fused.item() > 0
    assert fused_grads.keys() == plain_grads.keys()
    assert "encoder.embeddings.word_embeddings.weight" not in fused_grads
    for name, grad in fused_grads.items():
        assert torch.equal(grad, plain_grads[name]), name


def test_penalty_is_one_autograd_node_over_every_trainable_weight():
    method, model = setup_method_on_tiny_model(alpha=0.1, beta=0.01)
    penalty = method.forgetbench_regularizer()
    trainable = [w for w in model.parameters() if w.requires_grad]
    inputs = [edge for edge, _ in penalty.grad_fn.next_functions if edge is not None]
    assert len(inputs) == len(trainable)
    assert {id(edge.variable) for edge in inputs} == {id(w) for w in trainable}
