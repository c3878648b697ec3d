"""Scenarios: the problem a run solved, its task's settings and its ``--prior-model``.

Runs of one task with other task settings (``--set task.stage0_steps=150``,
``task.prior_eval_size=50``) or another ``--prior-model`` start from another f0, or train or
evaluate on other data: they answer another question. A frontier, its f0 point and reference
point (``compare``, ``plot``, ``budget``) are therefore built from the runs of one scenario,
and the leaderboard marks Pareto-optimal rows among the rows of their own scenario.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from forgetbench.config import build_config, config_dict
from forgetbench.errors import ForgetbenchError

log = logging.getLogger("forgetbench")

# (the task config as sorted JSON, the --prior-model given or None)
Scenario = tuple[str, str | None]


def _canonical(value):
    """A stored setting in one spelling: a whole float as an int (a float field whose default
    is written ``1`` stores 1, ``--set`` gives 1.0), lists element-wise."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    return value


def _key(config: dict | None) -> str:
    return json.dumps({k: _canonical(v) for k, v in (config or {}).items()}, sort_keys=True)


def scenario_of(run: dict) -> Scenario:
    """The scenario of a stored run (from its config)."""
    config = run["config"]
    return _key(config.get("task_config")), config.get("prior_model")


def _task_class(task: str) -> type | None:
    from forgetbench.registry import get_registry

    entry = get_registry().tasks.get(task)
    return entry.cls if entry is not None else None


def _defaults(task: str) -> dict | None:
    """The task's default config as stored; None when the task is not installed or its config
    has no defaults (a required setting, such as a data folder)."""
    cls = _task_class(task)
    if cls is None:
        return None
    if cls.Config is None:
        return {}
    try:
        return json.loads(_key(config_dict(build_config(cls.Config, {}, "task"))))
    except ForgetbenchError:
        return None


def default_scenario(task: str) -> Scenario | None:
    """The task's default settings without ``--prior-model``; None without defaults."""
    defaults = _defaults(task)
    return (_key(defaults), None) if defaults is not None else None


def _text(value) -> str:
    """A setting as ``--scenario`` takes it back: list items joined with commas."""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def describe(task: str, scenario: Scenario, among: Sequence[Scenario] = ()) -> str:
    """``task.stage0_steps=150 prior_model=DIR``: the settings that differ from the task's
    defaults (``defaults`` for none), each as ``--scenario`` takes it. A setting of the defaults
    the runs did not store (an older config) is ``task.KEY=<unset>``. For a task without
    defaults (not installed, or a required setting): the settings that differ between the
    scenarios ``among`` (``as stored`` for none)."""
    config, prior = json.loads(scenario[0]), scenario[1]
    default = _defaults(task)
    if default is not None:
        shown = {k for k, v in config.items() if k not in default or default[k] != v}
        unset = sorted(set(default) - set(config))
    else:
        others = [json.loads(other[0]) for other in among]
        shown = {k for k, v in config.items() if any(o.get(k) != v for o in others)}
        unset = []
    parts = [f"task.{k}={_text(config[k])}" for k in sorted(shown)]
    parts += [f"task.{k}=<unset>" for k in unset]
    parts += [f"prior_model={prior}"] if prior else []
    return " ".join(parts) or ("defaults" if default is not None else "as stored")


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def parse_scenario(task: str, items: Sequence[str]) -> Scenario:
    """The scenario ``--scenario`` names: items ``task.KEY=VALUE``, ``prior_model=PATH`` or
    ``defaults``, as ``run`` took them; checked against the task's config like ``--set``."""
    cls = _task_class(task)
    if cls is None:
        raise ForgetbenchError(
            f"--scenario: task {task!r} is not installed: its settings are unknown"
        )
    overrides: dict[str, str] = {}
    prior = None
    for item in (part.strip() for part in items):
        key, sep, value = item.partition("=")
        if item == "defaults":
            continue
        if sep and key.strip() == "prior_model":
            prior = value.strip() or None
        elif sep and key.strip().startswith("task."):
            overrides[key.strip().removeprefix("task.")] = value.strip()
        else:
            raise ForgetbenchError(
                f"--scenario {item!r}: give task.KEY=VALUE, prior_model=PATH or defaults"
            )
    if overrides and cls.Config is None:
        raise ForgetbenchError(f"--scenario: task {task!r} has no settings")
    config = build_config(cls.Config, overrides, "task") if cls.Config else None
    return _key(config_dict(config)), prior


def one_scenario(runs: list[dict], task: str, wanted: Scenario | None = None) -> list[dict]:
    """The runs of one scenario of ``task``: ``wanted``, else the task's defaults where runs
    have them, else the latest run's. Runs of other scenarios are left out, and a warning
    names them; a ``wanted`` scenario without runs is an error naming the stored ones."""
    groups: dict[Scenario, list[dict]] = {}
    for run in runs:
        groups.setdefault(scenario_of(run), []).append(run)
    if wanted is not None and wanted not in groups:
        stored = "; ".join(
            f"{describe(task, s, list(groups))} ({_runs(len(r))})" for s, r in groups.items()
        )
        raise ForgetbenchError(
            f"no finished runs of task {task!r} in scenario {describe(task, wanted)}"
            f" (stored: {stored})"
        )
    chosen = wanted
    if chosen is None:
        default = default_scenario(task)
        latest = max(runs, key=lambda run: run["id"])
        chosen = default if default in groups else scenario_of(latest)
    if len(groups) > 1:
        others = [
            f"{describe(task, s, list(groups))} ({_runs(len(r))})"
            for s, r in groups.items()
            if s != chosen
        ]
        log.warning(
            "task %s: comparing the runs of scenario %s; left out: %s%s",
            task,
            describe(task, chosen, list(groups)),
            "; ".join(others),
            " (--scenario KEY=VALUE, once per setting, picks one)" if wanted is None else "",
        )
    return groups[chosen]
