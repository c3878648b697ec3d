"""lora: what trains, what stays frozen, merging, and runs through the engine."""

from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from method_helpers import metrics, run_tiny, tiny_context, tiny_model, train_batch

from forgetbench.api import Method, Task
from forgetbench.config import build_config
from forgetbench.errors import ForgetbenchError
from forgetbench.hookspecs import hookimpl
from forgetbench.runner import RunRequest, execute, resolve
from forgetbench.testing import TinyTextTask, registry_with
from forgetbench_plugins.lora import Lora, LoraMethodConfig, target_modules


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"r": "0"}, "r must be >= 1"),
        ({"dropout": "1.0"}, r"dropout must be in \[0, 1\)"),
        ({"lora_alpha": "0"}, "lora_alpha must be > 0"),
        ({"merge": "maybe"}, "expects true or false"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ForgetbenchError, match=message):
        build_config(LoraMethodConfig, overrides, "lora")


def test_targets_come_from_the_task_family_unless_configured():
    model, names = tiny_model()
    ctx, _ = tiny_context(names, model)
    assert target_modules(ctx, model, None) == ["query", "value"]
    assert target_modules(ctx, model, ("dense",)) == ["dense"]
    ctx.task.lora_target_modules = lambda model: None
    with pytest.raises(ForgetbenchError, match=r"--set lora\.target_modules"):
        target_modules(ctx, model, None)


def wrap(config: LoraMethodConfig | None = None):
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    base = {name: value.clone() for name, value in model.state_dict().items()}
    wrapped = Lora(config).forgetbench_wrap_model(ctx=ctx, model=model)
    return ctx, data, wrapped, base


def test_a_task_without_default_targets_is_refused_before_anything_is_stored(db):
    class NoTargets(TinyTextTask):
        metadata = replace(TinyTextTask.metadata, name="tiny-no-targets")
        lora_target_modules = Task.lora_target_modules  # the base's: no family default

    registry = registry_with(tasks=(NoTargets,))
    request = RunRequest(task="tiny-no-targets", methods=["lora"], seed=0, steps=2)
    with pytest.raises(ForgetbenchError, match=r"names no default target modules; name them"):
        execute(request, db=db, registry=registry)
    assert not Path(db).exists()  # refused before the store is opened
    configured = replace(request, overrides={"lora.target_modules": "query,value"})
    assert resolve(configured, registry).methods[0].config.target_modules == ("query", "value")


def test_only_adapters_and_the_new_head_train():
    _, _, wrapped, _ = wrap()
    trainable = {name for name, weight in wrapped.named_parameters() if weight.requires_grad}
    assert {n for n in trainable if "lora_" not in n} == {
        "base_model.model.heads.new.weight",
        "base_model.model.heads.new.bias",
    }
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[1] for n in trainable if "lora_" in n}
    assert adapted == {"query", "value"}
    adapter = wrapped.encoder.encoder.layer[0].attention.self.query
    assert adapter.r["default"] == 8
    assert adapter.scaling["default"] == pytest.approx(16 / 8)  # lora_alpha = 2r


def test_training_leaves_base_weights_untouched_and_merge_returns_a_plain_model():
    ctx, data, wrapped, base = wrap()
    optimizer = torch.optim.AdamW([w for w in wrapped.parameters() if w.requires_grad], lr=1e-2)
    wrapped.train()
    for step in range(3):
        batch = train_batch(ctx, data, new=list(range(8 * step, 8 * step + 8)))
        ctx.task.forward(wrapped, batch.inputs).loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    unwrapped = {
        name.replace("base_layer.", ""): value
        for name, value in wrapped.base_model.model.state_dict().items()
        if "lora_" not in name
    }
    assert set(unwrapped) == set(base)
    changed = {name for name in base if not torch.equal(base[name], unwrapped[name])}
    assert changed == {"heads.new.weight", "heads.new.bias"}

    wrapped.eval()
    batch = train_batch(ctx, data, new=[0, 1, 2], prior=[0, 1])
    with torch.no_grad():
        expected = ctx.task.forward(wrapped, batch.inputs).loss
    merged = Lora().forgetbench_finalize(model=wrapped)
    assert type(merged).__name__ == "TinyClassifier"
    assert set(merged.state_dict()) == set(base)
    query = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(merged.state_dict()[query], base[query])  # the adapters moved it
    with torch.no_grad():
        assert torch.allclose(ctx.task.forward(merged, batch.inputs).loss, expected, atol=1e-5)


def test_unmerged_finalize_keeps_the_adapters():
    _, _, wrapped, _ = wrap(LoraMethodConfig(merge=False))
    assert Lora(LoraMethodConfig(merge=False)).forgetbench_finalize(model=wrapped) is None


def test_unknown_target_module_is_a_clear_error():
    with pytest.raises(ForgetbenchError, match="lora: Target modules"):
        wrap(LoraMethodConfig(target_modules=("nope",)))


class Observer(Method):
    """Snapshots f0 in setup and keeps the model the finalizers before it hand on."""

    name = "observe"
    seen: ClassVar[dict] = {}

    @hookimpl
    def forgetbench_setup(self, model):
        Observer.seen["f0"] = {k: v.clone() for k, v in model.state_dict().items()}

    @hookimpl
    def forgetbench_finalize(self, model):
        Observer.seen["final"] = model


@pytest.fixture(autouse=True)
def _fresh_observer():
    Observer.seen.clear()  # a hook that did not run must not leave an earlier test's model


def test_end_to_end_merged(db):
    run_id = run_tiny(db, ["lora", "observe"], extra_methods=[Observer])
    f0, final = Observer.seen["f0"], Observer.seen["final"]
    assert type(final).__name__ == "TinyClassifier"  # lora's finalizer ran first and merged
    weights = final.state_dict()
    assert set(weights) == set(f0)
    changed = {name for name in f0 if not torch.equal(f0[name], weights[name])}
    adapted = {n for n in f0 if n.endswith(("query.weight", "value.weight"))}
    assert changed == adapted | {"heads.new.weight", "heads.new.bias"}
    stored = metrics(db, run_id)
    assert stored["new/after/accuracy"] != stored["new/before/accuracy"]


def test_end_to_end_unmerged_keeps_base_weights(db):
    run_tiny(db, ["lora", "observe"], {"lora.merge": "false"}, extra_methods=[Observer])
    f0, final = Observer.seen["f0"], Observer.seen["final"]
    base = {
        name.replace("base_layer.", ""): value
        for name, value in final.base_model.model.state_dict().items()
        if "lora_" not in name
    }
    changed = {name for name in f0 if not torch.equal(f0[name], base[name])}
    assert changed == {"heads.new.weight", "heads.new.bias"}
