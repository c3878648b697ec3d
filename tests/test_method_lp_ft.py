"""lp-ft: the task's probe loaded into the fresh head, its pass charged and cached, the clear
refusal of a task without a fresh head (the real run: tests/test_e2e_offline.py)."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from method_helpers import run_tiny, tiny_context, tiny_model

from forgetbench.errors import ForgetbenchError
from forgetbench.runner import RunRequest, execute
from forgetbench.store import Store
from forgetbench.sweep import SweepSpec, plan
from forgetbench.testing import TinyTextTask, registry_with
from forgetbench_plugins.lp_ft import LPFT
from forgetbench_plugins.wise_ft import WiseFT


def probe_head(model, fill: float) -> dict[str, torch.Tensor]:
    head = model.heads["new"]
    return {
        "heads.new.weight": torch.full_like(head.weight, fill),
        "heads.new.bias": torch.full_like(head.bias, -fill),
    }


def test_setup_starts_the_fresh_head_from_the_probe_charges_the_pass_and_caches_it(
    isolated_cache,
):
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    fitted = []

    def reference_head(ctx, model, split):
        fitted.append(split.name)
        ctx.count_extra(forward=len(split))  # as a real probe's pass counts itself
        assert not model.training  # the probe reads f0's features in eval mode
        return probe_head(model, 0.25)

    ctx.task.reference_head = reference_head
    model.train()
    LPFT().forgetbench_setup(ctx=ctx, model=model, data=data)
    assert model.training  # left as it was
    assert fitted == [data.new_train.name]
    assert torch.equal(model.heads["new"].weight, torch.full_like(model.heads["new"].weight, 0.25))
    assert torch.equal(model.heads["new"].bias, torch.full_like(model.heads["new"].bias, -0.25))
    assert ctx.compute.extra_inference == len(data.new_train)
    assert len(list((isolated_cache / "plugin-lp-ft").iterdir())) == 1

    # another seed's fresh head: the probe comes from the cache, and the run pays the same
    other, _ = tiny_model()
    other.load_state_dict(model.state_dict())
    torch.nn.init.normal_(other.heads["new"].weight)
    LPFT().forgetbench_setup(ctx=ctx, model=other, data=data)
    assert fitted == [data.new_train.name]
    assert torch.equal(other.heads["new"].weight, model.heads["new"].weight)
    assert ctx.compute.extra_inference == 2 * len(data.new_train)


def test_a_task_without_a_fresh_head_is_one_clear_error_and_caches_nothing(isolated_cache):
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    assert ctx.task.reference_head(ctx, model, data.new_train) is None
    before = model.heads["new"].weight.clone()
    with pytest.raises(ForgetbenchError, match=r"no probe for a fresh .* --method finetune"):
        LPFT().forgetbench_setup(ctx=ctx, model=model, data=data)
    assert torch.equal(model.heads["new"].weight, before)
    assert not list((isolated_cache / "plugin-lp-ft").glob("[!.]*"))


def test_a_probe_that_does_not_fit_the_model_is_one_clear_error(isolated_cache):
    model, names = tiny_model()
    ctx, data = tiny_context(names, model)
    ctx.task.reference_head = lambda ctx, model, split: {"heads.new.weight": torch.zeros(2, 2)}
    with pytest.raises(ForgetbenchError, match=r"heads\.new\.weight \(2, 2\) does not fit"):
        LPFT().forgetbench_setup(ctx=ctx, model=model, data=data)


def test_a_task_without_reference_head_is_refused_before_anything_is_stored(db):
    # the tiny task does not implement reference_head (as QA, MT and CLIP, which have no fresh head)
    with pytest.raises(ForgetbenchError, match="lp-ft: task 'tiny' gives no probe for a fresh"):
        run_tiny(db, ["lp-ft"])
    assert not Path(db).exists()  # refused before the store is opened
    # a sweep checks its whole grid before the first run
    with pytest.raises(ForgetbenchError, match="lp-ft: task 'tiny' gives no probe for a fresh"):
        plan(SweepSpec(task="tiny", methods=["finetune", "lp-ft"], seeds=[0, 1]), registry_with())


def test_a_task_whose_reference_head_returns_nothing_fails_at_setup_and_keeps_its_row(db):
    class NoHeadTask(TinyTextTask):
        metadata = replace(TinyTextTask.metadata, name="tiny-no-head")

        def reference_head(self, ctx, model, split):
            return None  # implemented, but nothing to fit here

    request = RunRequest(task="tiny-no-head", methods=["lp-ft"], seed=0, steps=5)
    with pytest.raises(ForgetbenchError, match="task 'tiny-no-head' gives no probe"):
        execute(request, db=db, registry=registry_with(tasks=(NoHeadTask,)))
    (run,) = Store(db, read_only=True).get_runs()
    assert run["status"] == "failed"


def test_stacked_with_wise_ft_the_order_of_setup_does_not_change_theta0(isolated_cache):
    # lp-ft writes only the fresh head, and WiSE-FT leaves the fresh head out of theta0 (it has
    # no prior value), so `lp-ft+wise-ft` and `wise-ft+lp-ft` mix the same endpoints
    thetas = []
    for lp_ft_first in (True, False):
        model, names = tiny_model()
        ctx, data = tiny_context(names, model)
        ctx.task.reference_head = lambda ctx, model, split: probe_head(model, 0.25)
        setups = [LPFT(), WiseFT()] if lp_ft_first else [WiseFT(), LPFT()]
        for method in setups:
            method.forgetbench_setup(ctx=ctx, model=model, data=data)
        (wise,) = [m for m in setups if isinstance(m, WiseFT)]
        assert torch.equal(
            model.heads["new"].weight, torch.full_like(model.heads["new"].weight, 0.25)
        )
        assert not set(wise.theta0) & names
        thetas.append(wise.theta0)
    assert thetas[0].keys() == thetas[1].keys()
    assert all(torch.equal(thetas[0][name], thetas[1][name]) for name in thetas[0])
