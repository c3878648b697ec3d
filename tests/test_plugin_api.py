"""The public surface a plugin may import is one module, ``forgetbench.api``: every name in its
``__all__`` resolves, and the builtin plugins and tasks import nothing else from the core (a
task of a known family may also import its family's package, ``forgetbench_tasks.<family>``)."""

import ast
import re
from pathlib import Path

import pytest

import forgetbench.api

ROOT = Path(__file__).parents[1]
BUILTIN = sorted([*(ROOT / "plugins").glob("*.py"), *(ROOT / "tasks").rglob("*.py")])


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names (relative ones as ``.name``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def core_imports(path: Path) -> set[str]:
    return {name for name in imported_modules(path) if re.match(r"forgetbench(\.|$)", name)}


def test_every_public_name_resolves():
    for name in forgetbench.api.__all__:
        assert getattr(forgetbench.api, name) is not None, name


@pytest.mark.parametrize("path", BUILTIN, ids=lambda p: str(p.relative_to(ROOT)))
def test_builtin_plugins_and_tasks_import_only_the_public_api(path):
    assert core_imports(path) <= {"forgetbench.api"}, f"{path.name}: {core_imports(path)}"


def test_the_check_catches_a_core_import(tmp_path):
    plugin = tmp_path / "plugin.py"
    plugin.write_text("from forgetbench.config import check\nimport forgetbench.cache\n")
    assert core_imports(plugin) == {"forgetbench.config", "forgetbench.cache"}
