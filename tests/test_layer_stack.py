"""A layer-wise method on the Task API: ``module_stack`` finds the blocks of the common model
layouts, the families' ``Task.layer_stack`` returns them, and ``Method.check_model`` refuses a
depth the model lacks before the run evaluates anything (the family tests check QA,
translation and CLIP stacks beside their LoRA targets)."""

from dataclasses import dataclass, field

import pytest
from torch import nn

from forgetbench.api import ForgetbenchError, Method, Task, hookimpl, module_stack, run_for_test
from forgetbench.store import Store
from forgetbench.testing import TinyTextTask, tiny_encoder


@dataclass
class FreezeConfig:
    layers: int = field(default=1, metadata={"help": "blocks frozen from the bottom"})


class FreezeBottom(Method):
    """Freezes the bottom ``layers`` blocks of ``Task.layer_stack``; its diagnostics say how far
    the first and the last block moved during fine-tuning."""

    name = "freeze-bottom"
    description = "freeze the bottom K blocks"
    Config = FreezeConfig

    def check_task(self, task):
        if not task.implements("layer_stack"):
            raise ForgetbenchError(f"freeze-bottom: task {task.metadata.name!r} has no stack")

    def check_model(self, task, model):
        depth = len(task.layer_stack(model))
        if self.config.layers > depth:
            raise ForgetbenchError(f"freeze-bottom.layers={self.config.layers}: depth {depth}")

    @hookimpl
    def forgetbench_setup(self, ctx, model):
        self.stack = ctx.task.layer_stack(model)
        for block in self.stack[: self.config.layers]:
            block.requires_grad_(False)
        self.start = [nn.utils.parameters_to_vector(b.parameters()).detach() for b in self.stack]

    @hookimpl
    def forgetbench_diagnostics(self):
        moved = [
            float((nn.utils.parameters_to_vector(block.parameters()).detach() - start).abs().max())
            for block, start in zip(self.stack, self.start, strict=True)
        ]
        return {"metrics": {"bottom_moved": moved[0], "top_moved": moved[-1]}}


class CountingTiny(TinyTextTask):
    """The mock task, counting its evaluations."""

    evaluations = 0

    def evaluate(self, ctx, model, split):
        type(self).evaluations += 1
        return super().evaluate(ctx, model, split)


class StacklessTiny(TinyTextTask):
    layer_stack = Task.layer_stack  # the base's: unknown


def test_module_stack_finds_blocks_in_order_and_skips_nested_lists():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2)])  # inside a block: not the stack

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4, 2)
            self.encoder = nn.Module()
            self.encoder.layers = nn.ModuleList([Block(), Block()])
            self.decoder = nn.Module()
            self.decoder.block = nn.Sequential(Block())
            self.heads = nn.ModuleList([nn.Linear(2, 2)])  # not a layer list's name

    model = EncoderDecoder()
    assert module_stack(model) == [*model.encoder.layers, *model.decoder.block]
    assert module_stack(nn.Linear(2, 2)) == []
    with pytest.raises(ForgetbenchError, match="no layer stack known for Linear"):
        module_stack(nn.Linear(2, 2), strict=True)
    encoder = tiny_encoder(layers=3)
    assert module_stack(encoder) == list(encoder.encoder.layer)


def test_text_classification_stack_is_the_encoders_layers():
    from forgetbench_tasks.text_classification.base import EncoderClassifier
    from forgetbench_tasks.text_classification.wordnet import WordnetTask

    model = EncoderClassifier(tiny_encoder(layers=3), {"prior": 4, "new": 2})
    stack = WordnetTask().layer_stack(model)
    assert stack == list(model.encoder.encoder.layer)
    assert not any(block is model.heads for block in stack)


def test_frozen_bottom_block_stays_and_the_top_one_trains(tmp_path):
    result = run_for_test(FreezeBottom, steps=4, directory=tmp_path)
    assert result.metrics["run/derived/bottom_moved"] == 0.0
    assert result.metrics["run/derived/top_moved"] > 0.0


def test_a_depth_the_model_lacks_fails_the_run_before_any_evaluation(tmp_path):
    CountingTiny.evaluations = 0
    with pytest.raises(ForgetbenchError, match=r"freeze-bottom.layers=3: depth 2"):
        run_for_test(
            FreezeBottom,
            task=CountingTiny,
            settings={"freeze-bottom.layers": 3},
            directory=tmp_path,
        )
    assert CountingTiny.evaluations == 0
    (run,) = Store(str(tmp_path / "results.db")).get_runs()
    assert run["status"] == "failed"
    assert "freeze-bottom.layers=3: depth 2" in run["error"]


def test_a_task_without_a_stack_is_refused_before_anything_is_stored(tmp_path):
    with pytest.raises(ForgetbenchError, match="has no stack"):
        run_for_test(FreezeBottom, task=StacklessTiny, directory=tmp_path)
    assert not StacklessTiny.implements("layer_stack")
    assert TinyTextTask.implements("layer_stack")
    assert Store(str(tmp_path / "results.db")).get_runs() == []


def test_a_stack_shared_by_reference_is_what_the_model_trains():
    """The blocks are the model's own modules, not copies: freezing them freezes the model."""
    encoder = tiny_encoder(layers=2)
    for block in module_stack(encoder)[:1]:
        block.requires_grad_(False)
    frozen = {n for n, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen
    assert all(n.startswith("encoder.layer.0.") for n in frozen)
