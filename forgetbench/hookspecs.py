"""Hook specifications: the contract between the core and every plugin.

Each spec is an empty function whose docstring is its contract. A hookimpl lists only the
arguments it uses and never gives one a default (pluggy does not pass defaulted arguments).

Discovery hooks are implemented at module level by plugin modules (entry-point group
``forgetbench``). Per-run hooks are implemented by a :class:`forgetbench.api.Method` instance,
registered for one run only.
"""

import pluggy

PROJECT = "forgetbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- discovery ---------------------------------------------------------------------------------


@hookspec
def forgetbench_register_methods(register):
    """Hand method classes to the core registry.

    Called once when the plugin manager loads. ``register(cls)`` takes a subclass of
    :class:`forgetbench.api.Method`; a second class with an already-used ``name`` is an error.
    """


@hookspec
def forgetbench_register_tasks(register):
    """Hand task classes to the core registry.

    Called once when the plugin manager loads. ``register(cls)`` takes a subclass of
    :class:`forgetbench.api.Task`; a second class with an already-used metadata name is an error.
    """


# -- per run -----------------------------------------------------------------------------------


@hookspec
def forgetbench_setup(ctx, model, data):
    """Prepare a method before training; ``model`` is still the prior model f0 (plus new heads).

    Use it to snapshot theta0, score samples or build pools. ``ctx`` is the read-only
    :class:`forgetbench.api.RunContext`, ``data`` the :class:`forgetbench.api.TaskData`.
    All implementations are called; return values are ignored.
    """


@hookspec(firstresult=True)
def forgetbench_wrap_model(ctx, model):
    """Return a replacement model to train (e.g. a peft LoRA wrapper), or None.

    firstresult: at most one active method may implement it; two are a conflict error.
    """


@hookspec(firstresult=True)
def forgetbench_prior_sampler(ctx, data):
    """Return a :class:`forgetbench.api.PriorSampler` that picks the prior-task samples mixed
    into every training batch, or None for no rehearsal.

    firstresult: at most one active method may implement it; two are a conflict error.
    """


@hookspec
def forgetbench_sample_weights(ctx, batch, losses):
    """Return per-sample loss weights, a float Tensor of shape [B], or None.

    ``batch`` is the collated batch (``batch["ids"]``, ``batch["is_prior"]`` of shape [B]),
    ``losses`` the per-sample losses [B] (attached to the graph; do not backpropagate through
    them). Results of all methods are multiplied; the default weight is 1.
    """


@hookspec
def forgetbench_regularizer(ctx, model, batch, outputs):
    """Return a scalar Tensor added to the training loss, or None.

    ``outputs`` is the step's :class:`forgetbench.api.PerSample` (``outputs.features`` holds the
    task's feature taps, each [B, D], when the method sets ``needs_features``). Results of all
    methods are summed.
    """


@hookspec
def forgetbench_after_step(ctx, step, model, batch, per_sample):
    """Observe the step that just ran.

    ``step`` is the 1-based step number, ``model`` the model being trained (in train mode;
    a method that runs inference on it, e.g. a probe, counts it and restores train mode),
    ``batch`` the collated batch (on CPU) and
    ``per_sample`` a detached :class:`forgetbench.api.PerSample` on CPU: per-sample loss,
    correctness and confidence of the model *before* this step's update. All implementations
    are called.
    """


@hookspec
def forgetbench_finalize(ctx, model, evaluate):
    """Edit the trained model post hoc; return the replacement model or None.

    ``evaluate(model) -> dict[str, float]`` evaluates a candidate on the prior and new eval
    splits (keys ``prior/<metric>``, ``new/<metric>``); its cost is counted. Implementations
    chain in method order (``tryfirst`` ones first): each receives the previous result.
    """


@hookspec
def forgetbench_diagnostics(ctx):
    """Return run diagnostics to store: ``{"metrics": {name: value}, "series":
    [(name, step, value), ...]}`` or None. Called once after training. Results are merged.
    """
