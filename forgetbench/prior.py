"""The prior model f0: given (``--prior-model``), built ready by the task, or trained by the
core's stage 0 and cached content-addressed, so it runs once per machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from forgetbench.api import ModelBundle, Stage0Spec, Task, TaskData
from forgetbench.cache import cached_dir, hash_json
from forgetbench.config import config_dict
from forgetbench.context import RunContext
from forgetbench.engine import TrainLoop, make_accelerator, seed_everything


def stage0_key(task: Task, spec: Stage0Spec, data: TaskData) -> str:
    """The stage-0 cache key: base weights, prior data, stage-0 budget and the task's extras."""
    return hash_json(
        {
            "task": task.metadata.family,
            "base": spec.base,
            "data": data.prior_train.fingerprint(),
            "train": config_dict(spec.train),
            "key": spec.key,
            "v": 2,
        }
    )


def train_stage0(spec: Stage0Spec, bundle: ModelBundle, data: TaskData, ctx: RunContext):
    """Fine-tune the task's base model on the prior task with the stage-0 budget, seed 0, on
    the run's device (``--set device=cpu`` keeps stage 0 off a GPU too)."""
    train = dataclasses.replace(spec.train, device=ctx.train.device)
    accelerator = make_accelerator(train)
    stage_ctx = ctx.for_stage0(train, accelerator, bundle)
    loop = TrainLoop(stage_ctx, accelerator, data.prior_train, label="stage 0", train_is_prior=True)
    model, _ = loop.run(bundle.model.to(accelerator.device))
    return model


def prepare_prior(
    task: Task, ctx: RunContext, data: TaskData, prior_model: str | None
) -> ModelBundle:
    """f0 for this run: ``prior_model`` if given, else the task's (cached) stage-0 model."""
    if prior_model:
        return task.load_prior(ctx, prior_model)
    seed_everything(0)  # the prior model belongs to the scenario: its init never varies
    spec = task.stage0  # read once: a task may hash its base weights to build it
    if spec is None:
        return task.build_prior(ctx, data)
    key = stage0_key(task, spec, data)

    def build(directory: Path) -> dict:
        ctx.logger.info("stage 0: training the prior model (cached afterwards)")
        torch.manual_seed(0)
        bundle = task.build_prior(ctx, data)
        model = train_stage0(spec, bundle, data, ctx)
        task.save_bundle(dataclasses.replace(bundle, model=model.cpu()), directory)
        return {"task": task.metadata.name, "stage0": config_dict(spec.train)}

    bundle = task.load_bundle(cached_dir("stage0", key, build))
    return dataclasses.replace(bundle, identity=key, source=f"stage-0:{task.metadata.name}")
