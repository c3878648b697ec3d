"""A plugin author's mistakes give one line naming the distribution and what to fix, and never
break the other plugins: a misspelled hook (per-run or discovery), a hookimpl taking an argument
its hook does not pass, a hook without ``@hookimpl``, a module raising at import, a ``Config``
that is not a dataclass, a method name two distributions claim.

Each mistake is a real distribution on disk (``*.dist-info`` with ``entry_points.txt``) found
through the entry-point group, as an installed one would be.
"""

from collections.abc import Iterator

import pytest
from reliability_helpers import add_distribution, cli, plugins_on_path

from forgetbench.api import ForgetbenchError
from forgetbench.registry import get_registry

HEADER = """
from dataclasses import dataclass

from forgetbench.api import Method, hookimpl
"""
REGISTER = """

@hookimpl
def forgetbench_register_methods(register):
    register({cls})
"""
PLUGINS = {
    "typo": """
class Typo(Method):
    name = "typo"

    @hookimpl
    def forgetbench_regulariser(self, ctx):
        return None
"""
    + REGISTER.format(cls="Typo"),
    "extra-arg": """
class ExtraArg(Method):
    name = "extra-arg"

    @hookimpl
    def forgetbench_regularizer(self, ctx, loss):
        return None
"""
    + REGISTER.format(cls="ExtraArg"),
    "unmarked": """
class Unmarked(Method):
    name = "unmarked"

    def forgetbench_setup(self, model):
        self.seen = True
"""
    + REGISTER.format(cls="Unmarked"),
    "boom": 'raise RuntimeError("no GPU driver")\n',
    "plain-config": """
class Config:
    strength = 1.0


class PlainConfig(Method):
    name = "plain-config"
    Config = Config
"""
    + REGISTER.format(cls="PlainConfig"),
    "collide-a": """
class Collide(Method):
    name = "collide"
"""
    + REGISTER.format(cls="Collide"),
    "discovery-typo": """
class Fine(Method):
    name = "discovery-typo"


@hookimpl
def forgetbench_register_method(register):
    register(Fine)
""",
}
PLUGINS["collide-b"] = PLUGINS["collide-a"]


def module_name(entry: str) -> str:
    return "fb_err_" + entry.replace("-", "_")


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch) -> Iterator[None]:
    for entry, body in PLUGINS.items():
        source = body if entry == "boom" else HEADER + body
        add_distribution(tmp_path, f"fb-{entry}-dist", entry, module_name(entry), source)
    with plugins_on_path(monkeypatch, tmp_path, modules=map(module_name, PLUGINS)):
        yield


def problem_of(registry, needle: str) -> str:
    (line,) = [problem for problem in registry.problems if needle in problem]
    assert "\n" not in line
    return line


@pytest.mark.usefixtures("broken_plugins")
def test_each_mistake_is_one_line_naming_the_distribution_and_the_fix():
    registry = get_registry(reload=True)
    assert problem_of(registry, "fb-typo-dist") == (
        "method 'typo' from fb-typo-dist: unknown hook forgetbench_regulariser"
        " (did you mean 'forgetbench_regularizer'?)"
    )
    assert "takes 'loss', which the hook does not pass (it passes ctx, model, batch, outputs)" in (
        problem_of(registry, "fb-extra-arg-dist")
    )
    assert "forgetbench_setup lacks @hookimpl, so it is never called" in problem_of(
        registry, "fb-unmarked-dist"
    )
    assert "Config must be a @dataclass" in problem_of(registry, "fb-plain-config-dist")
    assert problem_of(registry, "fb-boom-dist") == (
        "plugin 'boom' from fb-boom-dist failed to load: RuntimeError: no GPU driver"
        " (fix it, or skip it with FORGETBENCH_DISABLE_PLUGINS=boom)"
    )
    collision = problem_of(registry, "duplicate method 'collide'")
    assert "fb-collide-a-dist" in collision
    assert "fb-collide-b-dist" in collision
    discovery = problem_of(registry, "fb-discovery-typo-dist")
    assert "did you mean 'forgetbench_register_methods'" in discovery
    assert "FORGETBENCH_DISABLE_PLUGINS=discovery-typo" in discovery
    # the other plugins keep working
    assert {"finetune", "mixcd", "wise-ft"} <= set(registry.methods)
    assert "wordnet" in registry.tasks


@pytest.mark.usefixtures("broken_plugins")
def test_asking_for_a_set_aside_method_says_why():
    registry = get_registry(reload=True)
    for name in ("typo", "extra-arg", "plain-config", "collide", "boom"):
        assert name not in registry.methods
        with pytest.raises(ForgetbenchError, match=f"method '{name}' is not available: "):
            registry.method(name)
    with pytest.raises(ForgetbenchError, match=r"plugins that failed to load: .*boom"):
        registry.method("nosuch")


@pytest.mark.usefixtures("broken_plugins")
def test_the_cli_keeps_working_and_names_the_failed_plugin(monkeypatch, capsys):
    get_registry(reload=True)
    code, out, err = cli(["list"], monkeypatch, capsys)
    assert code == 0
    assert "finetune" in out
    assert "fb-discovery-typo-dist" in err
    code, _, err = cli(["run", "--task", "wordnet", "--method", "boom"], monkeypatch, capsys)
    assert code == 1
    assert err.strip() == (
        "error: method 'boom' is not available: plugin 'boom' from fb-boom-dist failed to"
        " load: RuntimeError: no GPU driver (fix it, or skip it with"
        " FORGETBENCH_DISABLE_PLUGINS=boom)"
    )
