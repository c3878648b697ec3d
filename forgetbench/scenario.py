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


def scenario_of(run: dict) -> Scenario:
    """The scenario of a stored run (from its config)."""
    config = run["config"]
    return json.dumps(config.get("task_config") or {}, sort_keys=True), config.get("prior_model")


def _task_class(task: str) -> type | None:
    from forgetbench.registry import get_registry

    entry = get_registry().tasks.get(task)
    return entry.cls if entry is not None else None


def default_scenario(task: str) -> Scenario | None:
    """The task's default settings without ``--prior-model``; None when it is not installed."""
    cls = _task_class(task)
    if cls is None:
        return None
    return json.dumps(config_dict(cls.Config() if cls.Config else None), sort_keys=True), None


def describe(task: str, scenario: Scenario, among: Sequence[Scenario] = ()) -> str:
    """``task.stage0_steps=150,prior_model=DIR``: the settings that differ from the task's
    defaults (``defaults`` for none). For a task that is not installed: the settings that
    differ between the scenarios ``among`` (``as stored`` for none)."""
    config, prior = json.loads(scenario[0]), scenario[1]
    cls = _task_class(task)
    if cls is not None:
        default = config_dict(cls.Config() if cls.Config else None)
        shown = {k for k, v in config.items() if k not in default or default[k] != v}
    else:
        others = [json.loads(other[0]) for other in among]
        shown = {k for k, v in config.items() if any(o.get(k) != v for o in others)}
    parts = [f"task.{k}={config[k]}" for k in sorted(shown)]
    parts += [f"prior_model={prior}"] if prior else []
    return ",".join(parts) or ("defaults" if cls is not None else "as stored")


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
    return json.dumps(config_dict(config), sort_keys=True), prior


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
            "task %s: comparing the runs of scenario %s; left out: %s (pick one with --scenario)",
            task,
            describe(task, chosen, list(groups)),
            "; ".join(others),
        )
    return groups[chosen]
