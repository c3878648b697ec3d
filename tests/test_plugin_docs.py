"""The plugin docs hold: docs/reference.md has a heading for every hookspec (written as its
signature, with the spec's arguments), every Task method and every ``forgetbench.api`` public
name (like datasette's documentation test); the guide's code is as short as promised and runs.
"""

import inspect
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

import forgetbench.api
from forgetbench import hookspecs
from forgetbench.api import Task

DOCS = Path(__file__).parents[1] / "docs"
REFERENCE = (DOCS / "reference.md").read_text()
GUIDE = (DOCS / "plugins.md").read_text()
HEADINGS = re.findall(r"^#{2,4} `([^`]+)`", REFERENCE, flags=re.MULTILINE)
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith(f"{hookspecs.PROJECT}_"))
TASK_METHODS = sorted(
    n for n, v in vars(Task).items() if not n.startswith("_") and isinstance(v, Callable | property)
)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_written_as_its_signature(hook):
    arguments = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"{hook}({arguments})" in HEADINGS, f"docs/reference.md: no '### `{hook}(...)`'"


@pytest.mark.parametrize("name", forgetbench.api.__all__)
def test_every_public_api_name_has_a_heading(name):
    assert any(re.fullmatch(rf"{re.escape(name)}(\(.*)?", h) for h in HEADINGS), name


@pytest.mark.parametrize("method", TASK_METHODS)
def test_every_task_method_has_a_heading(method):
    assert any(h.startswith(f"Task.{method}") for h in HEADINGS), method


def test_the_doc_test_would_catch_a_missing_heading():
    assert not any(h.startswith("forgetbench_no_such_hook(") for h in HEADINGS)
    assert len(HOOKS) >= 10
    assert len(TASK_METHODS) >= 10


def guide_blocks(section: str) -> dict[str, str]:
    """The code blocks of one ``## section`` of docs/plugins.md, by the file their first-line
    comment names."""
    text = GUIDE.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.DOTALL)
    return {block.splitlines()[0].lstrip("# ").strip(): block for block in blocks}


def code_lines(blocks: dict[str, str]) -> int:
    return sum(1 for block in blocks.values() for line in block.splitlines() if line.strip())


def load(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses and pluggy look the module up
    exec(compile(source, f"docs/plugins.md:{name}", "exec"), module.__dict__)
    return module


def test_the_method_guide_is_under_50_lines_and_runs(tmp_path):
    blocks = guide_blocks("A method")
    assert set(blocks) == {"pyproject.toml", "forgetbench_l1_anchor.py", "tests/test_l1_anchor.py"}
    assert code_lines(blocks) < 50
    module = load("forgetbench_l1_anchor", blocks["forgetbench_l1_anchor.py"])
    test = load("test_l1_anchor", blocks["tests/test_l1_anchor.py"])
    assert module.forgetbench_register_methods  # the discovery hook an entry point loads
    test.test_a_run_on_the_mock_task(tmp_path)


def test_the_task_guide_is_under_80_lines_and_loads_a_csv(tmp_path):
    blocks = guide_blocks("A task of a known family")
    assert set(blocks) == {"pyproject.toml", "forgetbench_my_texts.py"}
    assert code_lines(blocks) < 80
    module = load("forgetbench_my_texts", blocks["forgetbench_my_texts.py"])
    texts = tmp_path / "texts.csv"
    rows = [f"text number {i},{'spam' if i % 3 else 'ham'}" for i in range(20)]
    texts.write_text("text,label\n" + "\n".join(rows) + "\n")
    config = module.Config(csv_path=str(texts), prior_train_size=20, prior_eval_size=10)
    data = module.MyTextsTask(config).load_data(None)
    assert (len(data.new_train), len(data.new_eval)) == (16, 4)
    assert data.info["new_label_names"] == ["ham", "spam"]
    assert len(data.prior_train) == 20
    with pytest.raises(forgetbench.api.ForgetbenchError, match=r"task\.csv_path"):
        module.MyTextsTask(module.Config(csv_path=str(tmp_path / "no.csv"))).load_data(None)
