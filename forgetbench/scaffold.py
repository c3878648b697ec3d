"""``forgetbench new-plugin``: write a ready-to-install plugin distribution.

A method skeleton is a working method (a pull towards the prior model's weights, off at
``strength=0``) with the hooks a method usually needs and their contracts as docstrings (taken
from the hookspecs, so they never drift), a test on the mock task, a pyproject with the entry
point, and a README. A task skeleton extends the installed task of the family that runs offline
(its data and prior model) and overrides ``load_data``, the one step a new dataset changes; its
test runs it end to end at settings derived small from that task's config. A new family:
``forgetbench.scaffold_family``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
import textwrap
from pathlib import Path
from string import Template

from forgetbench import hookspecs
from forgetbench.api import Task
from forgetbench.errors import ForgetbenchError, did_you_mean
from forgetbench.registry import Registry, get_registry

NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
# Hooks a method skeleton implements; the rest are listed in its module docstring.
METHOD_HOOKS = ("forgetbench_setup", "forgetbench_regularizer", "forgetbench_diagnostics")
WIDTH = 88  # ruff's and black's default line length: the skeleton passes a default lint
MAX_NAME = 30


@dataclasses.dataclass(frozen=True)
class Names:
    """How one plugin name is spelled in each place."""

    name: str  # the method or task name, kebab-case
    module: str  # forgetbench_<name> (import name)
    dist: str  # forgetbench-<name> (distribution)
    cls: str  # CamelCase class name


def names(name: str) -> Names:
    if not NAME.fullmatch(name):
        raise ForgetbenchError(
            f"plugin name {name!r}: use lowercase letters, digits and single dashes"
            " (e.g. my-method)"
        )
    if len(name) > MAX_NAME:  # the skeletons' lines are wrapped for names up to this
        raise ForgetbenchError(f"plugin name {name!r}: at most {MAX_NAME} characters")
    module = f"forgetbench_{name.replace('-', '_')}"
    if importlib.util.find_spec(module) is not None:
        raise ForgetbenchError(
            f"plugin name {name!r}: a module {module} is already importable here (forgetbench's"
            " own or an installed plugin's); choose another name"
        )
    camel = "".join(part.capitalize() for part in name.split("-"))
    return Names(name, module, f"forgetbench-{name}", camel)


def method_docstring(text: str) -> str:
    """``text`` as the body of a method's docstring: its first line follows the indent and
    the opening quotes, its last is followed by the closing ones, all within ``WIDTH``."""
    opening = " " * 11  # 8 spaces of indent and three quotes
    wrapped = textwrap.fill(text, WIDTH - 3, initial_indent=opening, subsequent_indent=" " * 8)
    return wrapped[len(opening) :]


def hook_doc(hook: str) -> str:
    """The first paragraph of a hookspec's docstring, wrapped for a method body."""
    paragraph = " ".join(inspect.getdoc(getattr(hookspecs, hook)).split("\n\n")[0].split())
    return method_docstring(paragraph)


def other_hooks() -> str:
    """One line per per-run hook the skeleton does not implement: its first sentence."""
    lines = []
    for hook in sorted(n for n in dir(hookspecs) if n.startswith("forgetbench_")):
        if hook in METHOD_HOOKS or hook.startswith("forgetbench_register_"):
            continue
        text = " ".join(inspect.getdoc(getattr(hookspecs, hook)).split())
        first = re.split(r"(?<!\be\.g)(?<!\bi\.e)\. ", text)[0]  # "e.g. " ends no sentence
        lines.append(textwrap.fill(f"- ``{hook}``: {first}", WIDTH, subsequent_indent="  "))
    return "\n".join(lines)


def settings_literal(settings: dict[str, object]) -> str:
    """A dict literal, one key per line (as ruff format writes it)."""
    if not settings:
        return "{}"
    return "{\n" + "".join(f'    "{k}": {v!r},\n' for k, v in settings.items()) + "}"


def render(template: str, **values: str) -> str:
    return Template(template).substitute(**values)


def write(directory: Path, files: dict[str, str]) -> Path:
    if directory.exists() and any(directory.iterdir()):
        raise ForgetbenchError(f"{directory} exists and is not empty: choose another --directory")
    for relative, text in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def new_method(name: str, directory: Path) -> Path:
    """Write a method plugin distribution ``forgetbench-<name>`` into ``directory``."""
    n = names(name)
    values = {
        "name": n.name,
        "module": n.module,
        "dist": n.dist,
        "cls": n.cls,
        "kind": "method",
        "setup_doc": hook_doc("forgetbench_setup"),
        "regularizer_doc": hook_doc("forgetbench_regularizer"),
        "diagnostics_doc": hook_doc("forgetbench_diagnostics"),
        "other_hooks": other_hooks(),
    }
    return write(
        directory,
        {
            "pyproject.toml": render(PYPROJECT, **values),
            "README.md": render(README_METHOD, **values),
            f"{n.module}.py": render(METHOD, **values),
            f"tests/test_{n.module}.py": render(TEST_METHOD, **values),
        },
    )


def family_base(family: str, registry: Registry) -> type[Task]:
    """The installed task a new task of ``family`` extends: an offline one where there is one
    (it runs without a network), forgetbench's own before a third party's, then by name."""
    members = [
        entry.cls
        for entry in sorted(
            registry.tasks.values(),
            key=lambda e: (not e.cls.metadata.offline, e.provider != "forgetbench", e.name),
        )
        if entry.cls.metadata.family == family
    ]
    if not members:
        families = {entry.cls.metadata.family for entry in registry.tasks.values()}
        raise ForgetbenchError(
            f"unknown task family {family!r}"
            + did_you_mean(family, families)
            + f"; a new family: forgetbench new-plugin family {family}"
        )
    return members[0]


def public_module(cls: type) -> str:
    """The shortest package path that exports ``cls`` (a family package's ``__all__``)."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        module = importlib.import_module(".".join(parts[:end]))
        if cls.__name__ in getattr(module, "__all__", ()):
            return module.__name__
    return cls.__module__


def small_settings(cls: type[Task]) -> dict[str, object]:
    """``--set task.*`` values that make ``cls`` quick for a test: sizes, steps and held-out
    fractions of its config made small (never above their defaults)."""
    if cls.Config is None:
        return {}
    settings: dict[str, object] = {}
    for spec in dataclasses.fields(cls.Config):
        default = spec.default
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        if spec.name.endswith("_size"):
            settings[f"task.{spec.name}"] = min(default, 32)
        elif spec.name.endswith("steps"):
            settings[f"task.{spec.name}"] = min(default, 2)
        elif spec.name.endswith("_fraction"):
            settings[f"task.{spec.name}"] = min(default, 0.05)
    return settings


def new_task(name: str, family: str, directory: Path, registry: Registry | None = None) -> Path:
    """Write a task plugin distribution ``forgetbench-<name>`` of ``family`` into ``directory``."""
    n = names(name)
    base = family_base(family, registry or get_registry())
    values = {
        "name": n.name,
        "module": n.module,
        "dist": n.dist,
        "cls": f"{n.cls}Task",
        "kind": "task",
        "family": family,
        "base": base.__name__,
        "base_name": base.metadata.name,
        "base_module": public_module(base),
        "offline": str(base.metadata.offline),
        "load_data_doc": method_docstring(inspect.getdoc(Task.load_data)),
        "settings": settings_literal(small_settings(base)),
    }
    return write(
        directory,
        {
            "pyproject.toml": render(PYPROJECT, **values),
            "README.md": render(README_TASK, **values),
            f"{n.module}.py": render(TASK, **values),
            f"tests/test_{n.module}.py": render(TEST_TASK, **values),
        },
    )


# -- templates (string.Template: $name is replaced) ---------------------------------------------

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "The $name $kind for forgetbench"
requires-python = ">=3.11"
dependencies = ["forgetbench"]

# What makes it a forgetbench plugin: an entry point in the group "forgetbench".
[project.entry-points.forgetbench]
$name = "$module"

[tool.setuptools]
py-modules = ["$module"]
"""

README_METHOD = """\
# $dist

The `$name` method for forgetbench.

    pip install -e .                  # then: forgetbench list
    pytest tests                      # its test, on forgetbench's mock task
    forgetbench run --task wordnet --method $name --set $name.strength=0.5

Hooks, their arguments and how results combine: forgetbench's docs/reference.md.
"""

README_TASK = """\
# $dist

The `$name` task ($family family) for forgetbench, built on the installed `$base_name` task.

    pip install -e .                  # then: forgetbench list
    pytest tests                      # runs it end to end at small settings
    forgetbench run --task $name --method finetune

What a task returns, per family: forgetbench's docs/reference.md ("Task API").
"""

METHOD = '''"""The ``$name`` method: a forgetbench plugin.

Replace the body of the hooks below with your method. This skeleton pulls the weights
towards the prior model's (``strength/2 * ||w - w0||^2`` on the prior model's
weights); at ``strength=0`` it returns None and the run is plain fine-tuning.

Other per-run hooks a method may implement (``@hookimpl`` on the class, listing only the
arguments it uses):

$other_hooks
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetbench.api import Method, check, hookimpl


@dataclass
class Config:
    """Settings: ``--set $name.<field>=<value>``."""

    strength: float = field(
        default=0.1, metadata={"help": "strength of the pull towards w0"}
    )

    def __post_init__(self):
        check(self.strength >= 0, f"strength must be >= 0, got {self.strength}")


class $cls(Method):
    name = "$name"
    description = "pull towards the prior model's weights (replace with your method)"
    Config = Config

    @hookimpl
    def forgetbench_setup(self, ctx, model):
        """$setup_doc"""
        self.anchors = [
            (weight, weight.detach().clone())
            for name, weight in model.named_parameters()
            if name not in ctx.new_param_names
        ]
        self.last_penalty = 0.0

    @hookimpl
    def forgetbench_regularizer(self):
        """$regularizer_doc"""
        if self.config.strength == 0:
            # None, not a zero tensor: AdamW would still move zero-gradient weights.
            return None
        distance = sum(
            (w - w0).pow(2).sum() for w, w0 in self.anchors if w.requires_grad
        )
        penalty = self.config.strength / 2 * distance
        self.last_penalty = float(penalty.detach())
        return penalty

    @hookimpl
    def forgetbench_diagnostics(self):
        """$diagnostics_doc"""
        name = "$name/last_penalty"
        return {"metrics": {name: self.last_penalty}}


@hookimpl
def forgetbench_register_methods(register):
    register($cls)
'''

TEST_METHOD = '''"""Tests of the ``$name`` method.

Its config, and a whole run on forgetbench's mock task through the real engine and
store (seconds on a CPU).
"""

import pytest
from forgetbench.api import run_for_test

import $module as plugin

METHOD = plugin.$cls


def test_config_rejects_a_negative_strength():
    with pytest.raises(ValueError, match="strength"):
        plugin.Config(strength=-1.0)


def test_a_run_on_the_mock_task(tmp_path):
    settings = {"$name.strength": 0.5}
    result = run_for_test(METHOD, settings=settings, directory=tmp_path)
    assert result.run["status"] == "ok"
    assert 0.0 <= result.metrics["prior/after/accuracy"] <= 1.0
    penalty = result.metrics["run/derived/$name/last_penalty"]
    assert penalty > 0.0
'''

TASK = '''"""The ``$name`` task: a forgetbench task plugin.

Its family: ``$family``. It extends the installed ``$base_name`` task
(``$base`` from
``$base_module``):
its data, its prior model and the family's training and evaluation. A new dataset of
the family is metadata plus a loader: change ``load_data`` to read yours, in the
example format ``$base_name`` uses (forgetbench's docs/reference.md, "Task API").
"""

from __future__ import annotations

from forgetbench.api import RunContext, TaskData, TaskMetadata, hookimpl
from $base_module import $base


class $cls($base):
    metadata = TaskMetadata(
        name="$name",
        family="$family",
        description="replace with a description of the scenario",
        offline=$offline,
    )

    def load_data(self, ctx: RunContext) -> TaskData:
        """$load_data_doc

        This skeleton returns the data of ``$base_name`` unchanged: replace the splits
        your dataset brings, e.g. with
        ``dataclasses.replace(data, new_train=..., new_eval=...)``.
        """
        data = super().load_data(ctx)
        return data


@hookimpl
def forgetbench_register_tasks(register):
    register($cls)
'''

TEST_TASK = '''"""Tests of the ``$name`` task.

A whole run at small settings through the real engine and store.
"""

from forgetbench.api import run_for_test

import $module as plugin

TASK = plugin.$cls

# The base task's sizes, steps and held-out shares made small (a test, not a benchmark).
SMALL = $settings


def test_a_short_run(tmp_path):
    result = run_for_test(
        "finetune", task=TASK, steps=1, settings=SMALL, directory=tmp_path
    )
    assert result.run["status"] == "ok"
    assert result.run["task"] == TASK.metadata.name
    assert result.metrics["prior/after/" + TASK.metadata.prior_metric] >= 0.0
'''
