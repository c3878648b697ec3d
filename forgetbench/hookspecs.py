"""Hook specifications: the contract between the core and every plugin.

Each spec is an empty function whose docstring is its contract. A hookimpl lists only the
arguments it uses and never gives one a default (pluggy does not pass defaulted arguments).

Discovery hooks are implemented at module level by plugin modules (entry-point group
``forgetbench``). Per-run hooks are implemented by a :class:`forgetbench.api.Method` instance,
registered for one run only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import torch

    from forgetbench.api import Batch, PerSample, PriorSampler, TaskData
    from forgetbench.context import RunContext

PROJECT = "forgetbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- discovery ---------------------------------------------------------------------------------


@hookspec
def forgetbench_register_methods(register: Callable[[type], None]) -> None:
    """Hand method classes to the core registry.

    Called once when the plugin manager loads. ``register(cls)`` takes a subclass of
    :class:`forgetbench.api.Method`; a second class with an already-used ``name`` is an error.
    """


@hookspec
def forgetbench_register_tasks(register: Callable[[type], None]) -> None:
    """Hand task classes to the core registry.

    Called once when the plugin manager loads. ``register(cls)`` takes a subclass of
    :class:`forgetbench.api.Task`; a second class with an already-used metadata name is an error.
    """


# -- per run -----------------------------------------------------------------------------------


@hookspec
def forgetbench_setup(ctx: RunContext, model: torch.nn.Module, data: TaskData) -> None:
    """Prepare a method before training; ``model`` is still the prior model f0 (plus new heads).

    Use it to snapshot theta0, score samples or build pools. ``ctx`` is the read-only
    :class:`forgetbench.api.RunContext`, ``data`` the :class:`forgetbench.api.TaskData`.
    All implementations are called; return values are ignored.
    """


@hookspec(firstresult=True)
def forgetbench_wrap_model(ctx: RunContext, model: torch.nn.Module) -> torch.nn.Module | None:
    """Return a replacement model to train (e.g. a peft LoRA wrapper), or None.

    firstresult: at most one active method may implement it; two are a conflict error.
    """


@hookspec(firstresult=True)
def forgetbench_prior_sampler(ctx: RunContext, data: TaskData) -> PriorSampler | None:
    """Return a :class:`forgetbench.api.PriorSampler` that picks the prior-task samples mixed
    into every training batch, or None for no rehearsal.

    firstresult: at most one active method may implement it; two are a conflict error.
    """


@hookspec
def forgetbench_sample_weights(
    ctx: RunContext, batch: Batch, losses: torch.Tensor
) -> torch.Tensor | None:
    """Return per-sample loss weights, a float Tensor of shape [B], or None.

    ``batch`` is the step's :class:`forgetbench.api.Batch` on the training device
    (``batch.is_prior`` and ``batch.index`` of shape [B], ``batch.inputs`` the task's inputs),
    ``losses`` the per-sample losses [B] (attached to the graph; do not backpropagate through
    them). Results of all methods are multiplied; the default weight is 1.
    """


@hookspec
def forgetbench_regularizer(
    ctx: RunContext, model: torch.nn.Module, batch: Batch, outputs: PerSample
) -> torch.Tensor | None:
    """Return a scalar Tensor added to the training loss, or None.

    ``batch`` is the step's :class:`forgetbench.api.Batch` on the training device, ``outputs``
    its :class:`forgetbench.api.PerSample` (``outputs.features`` holds the task's feature taps,
    each [B, D], when the method sets ``needs_features``). Results of all
    methods are summed.
    """


@hookspec
def forgetbench_after_step(
    ctx: RunContext, step: int, model: torch.nn.Module, batch: Batch, per_sample: PerSample
) -> None:
    """Observe the step that just ran.

    ``step`` is the 1-based step number, ``model`` the model being trained (in train mode;
    a method that runs inference on it, e.g. a probe, counts it and restores train mode),
    ``batch`` the step's :class:`forgetbench.api.Batch` (on CPU) and
    ``per_sample`` a detached :class:`forgetbench.api.PerSample` on CPU: per-sample loss,
    success and confidence of the model *before* this step's update. All implementations
    are called.
    """


@hookspec
def forgetbench_finalize(
    ctx: RunContext,
    model: torch.nn.Module,
    evaluate: Callable[[torch.nn.Module], dict[str, float]],
) -> torch.nn.Module | None:
    """Edit the trained model post hoc; return the replacement model or None.

    ``evaluate(model) -> dict[str, float]`` evaluates a candidate on the prior and new eval
    splits (keys ``prior/<metric>``, ``new/<metric>``); its cost is counted. Implementations
    chain in method order (``tryfirst`` ones first): each receives the previous result.
    """


@hookspec
def forgetbench_diagnostics(ctx: RunContext) -> dict | None:
    """Return run diagnostics to store: ``{"metrics": {name: value}, "series":
    [(name, step, value), ...]}`` or None. Called once after training. Results are merged.
    """
