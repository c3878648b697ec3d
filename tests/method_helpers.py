"""Helpers shared by the method plugin tests: a tiny model, context and batches built in code,
and one end-to-end run through the real engine and store."""

from __future__ import annotations

import logging

import torch

from forgetbench.api import Batch, ModelBundle, TaskData
from forgetbench.cache import cache_root
from forgetbench.config import TrainConfig
from forgetbench.context import RunContext, make_batch
from forgetbench.runner import RunRequest, execute
from forgetbench.store import Store
from forgetbench.testing import (
    TinyClassifier,
    TinyConfig,
    TinyTextTask,
    registry_with,
    tiny_encoder,
)

CPU = torch.device("cpu")


def tiny_model(seed: int = 0) -> tuple[TinyClassifier, frozenset[str]]:
    """A 2-layer BERT classifier with a ``prior`` head and a fresh ``new`` head, and the names
    of the fresh head's parameters (what the runner passes as ``ctx.new_param_names``)."""
    model = TinyClassifier(tiny_encoder(seed=seed), {"prior": 4})
    shared = {name for name, _ in model.named_parameters()}
    model.heads["new"] = torch.nn.Linear(32, 3)
    return model, frozenset(n for n, _ in model.named_parameters() if n not in shared)


def tiny_context(
    new_param_names: frozenset[str] = frozenset(), model: torch.nn.Module | None = None
) -> tuple[RunContext, TaskData]:
    """A RunContext over a small TinyTextTask on the CPU, counting like the runner's
    (``extra=True`` charges extra inference, otherwise evaluation inference)."""
    task = TinyTextTask(
        TinyConfig(prior_train_size=40, prior_eval_size=16, new_train_size=30, new_eval_size=16)
    )
    ctx = RunContext(
        run_id=None,
        seed=0,
        task=task,
        train=TrainConfig(steps=3, batch_size=8, lr=1e-3, eval_batch_size=16),
        device=CPU,
        cache_dir=cache_root(),
        logger=logging.getLogger("forgetbench.tests"),
    )
    data = task.load_data(ctx)
    ctx.attach(ModelBundle(model, None, "tiny-test"), new_param_names, data.prior_train)
    return ctx, data


def train_batch(ctx: RunContext, data: TaskData, new: list[int], prior: list[int] = ()) -> Batch:
    """A collated training batch: new-train examples ``new`` then prior-train ones ``prior``."""
    examples = [data.new_train[i] for i in new] + [data.prior_train[i] for i in prior]
    is_prior = [False] * len(new) + [True] * len(prior)
    return make_batch(ctx.task, ctx.bundle, examples, [*new, *prior], is_prior)


def run_tiny(
    db: str, methods: list[str], overrides: dict[str, str] | None = None, extra_methods=()
) -> int:
    """Run the tiny task for 5 steps with ``methods`` (seed 0); returns the run id."""
    request = RunRequest(task="tiny", methods=methods, seed=0, steps=5, overrides=overrides or {})
    return execute(request, db=db, registry=registry_with(*extra_methods))


def metrics(db: str, run_id: int) -> dict[str, float]:
    return Store(db).get_metrics([run_id])[run_id]


def series(db: str, run_id: int, name: str) -> dict[int, float]:
    """{step: value} of one stored series."""
    return {step: value for _, step, value in Store(db).get_series(run_id, name)}
