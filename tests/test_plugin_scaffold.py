"""``forgetbench new-plugin`` writes distributions that install (``pip install -e``, offline:
``--no-deps --no-build-isolation``) and pass their own tests out of the box; bad requests are
one clear line.

The install goes into this test's own environment and is removed afterwards (the suite runs
its tests one at a time, so no other test sees the skeleton installed).
"""

import ast
import importlib.util
import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import cli

from forgetbench.registry import hook_problems
from forgetbench.scaffold import hook_doc, new_method, new_task
from forgetbench.scaffold_family import new_family


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def forgetbench_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module.startswith("forgetbench")
    }


def test_a_method_skeleton_has_valid_hooks_with_their_contracts(tmp_path):
    folder = new_method("head-pull", tmp_path / "skeleton")
    module_path = folder / "forgetbench_head_pull.py"
    assert forgetbench_imports(module_path) == {"forgetbench.api"}
    assert 'head-pull = "forgetbench_head_pull"' in (folder / "pyproject.toml").read_text()
    module = load_module(module_path)
    assert hook_problems(module.HeadPull, per_run=True) == []
    assert hook_problems(module, per_run=False) == []
    for hook in ("forgetbench_setup", "forgetbench_regularizer", "forgetbench_diagnostics"):
        assert (
            inspect.getdoc(getattr(module.HeadPull, hook)).split()[:6]
            == (hook_doc(hook).split()[:6])
        )
    assert "forgetbench_finalize" in module.__doc__  # the hooks it does not implement
    # each by its whole first sentence: "e.g. " does not end one
    assert "(e.g. a peft LoRA wrapper), or None" in " ".join(module.__doc__.split())
    with pytest.raises(ValueError, match="strength"):
        module.Config(strength=-1.0)


def test_a_task_skeleton_extends_the_offline_task_of_its_family(tmp_path):
    folder = new_task("my-news", "text-classification", tmp_path / "skeleton")
    module_path = folder / "forgetbench_my_news.py"
    assert forgetbench_imports(module_path) == {
        "forgetbench.api",
        "forgetbench_tasks.text_classification",
    }
    task = load_module(module_path).MyNewsTask
    assert task.metadata.family == "text-classification"
    assert task.__mro__[1].metadata.name == "wordnet"
    test = (folder / "tests" / "test_forgetbench_my_news.py").read_text()
    assert '"task.stage0_steps": 2' in test


def test_a_family_skeleton_is_a_family_base_and_a_first_dataset(tmp_path):
    folder = new_family("speech", tmp_path / "skeleton")
    module_path = folder / "forgetbench_speech.py"
    assert forgetbench_imports(module_path) == {"forgetbench.api"}
    assert 'speech = "forgetbench_speech"' in (folder / "pyproject.toml").read_text()
    module = load_module(module_path)
    assert hook_problems(module, per_run=False) == []
    # The family leaves load_data to its datasets; the first dataset is a whole task.
    assert inspect.isabstract(module.SpeechTask)
    assert not inspect.isabstract(module.SpeechToyTask)
    metadata = module.SpeechToyTask.metadata
    assert (metadata.name, metadata.family, metadata.offline) == ("speech-toy", "speech", True)
    steps = ("stage0", "init_new_task", "layer_stack", "reference_losses", "reference_head")
    for step in steps:
        assert module.SpeechToyTask.implements(step), step
    with pytest.raises(ValueError, match="new_classes"):
        module.Config(new_classes=1)


@pytest.mark.parametrize("kind", ["method", "task", "family"])
def test_skeletons_pass_a_default_lint_even_with_a_long_name(kind, tmp_path):
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed (the dev extra)")
    name = "causal-language-model-of-token"  # 30 characters: the longest name allowed
    if kind == "method":
        folder = new_method(name, tmp_path / name)
    elif kind == "task":
        folder = new_task(name, "text-classification", tmp_path / name)
    else:
        folder = new_family(name, tmp_path / name)
    isolated = ["--isolated", "--line-length", "88"]  # ruff's defaults, not this project's
    rules = ["--select", "E,F,W,I,B,UP"]
    checked = subprocess.run(
        [ruff, "check", *isolated, *rules, "."], cwd=folder, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout
    formatted = subprocess.run(
        [ruff, "format", "--check", *isolated, "."], cwd=folder, capture_output=True, text=True
    )
    assert formatted.returncode == 0, formatted.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["new-plugin", "method", "My_Method"], "lowercase letters, digits and single dashes"),
        (["new-plugin", "widget", "x"], "a method, a task or a family, got 'widget'"),
        (["new-plugin", "task", "x"], "needs --family, the family the task extends: one of"),
        (["new-plugin", "task", "x"], "text-classification"),
        (["new-plugin", "method", "x", "--family", "qa"], "--family goes with new-plugin task"),
        (["new-plugin", "task", "x", "--family", "txt-class"], "did you mean"),
        (["new-plugin", "task", "x", "--family", "speech"], "new-plugin family speech"),
        (["new-plugin", "family", "x", "--family", "qa"], "--family goes with new-plugin task"),
        (["new-plugin", "family", "qa"], "is installed: a new dataset of it is"),
        (["new-plugin", "family", "tasks"], "a module forgetbench_tasks is already importable"),
        (["new-plugin", "method", "a" * 31], "at most 30 characters"),
    ],
)
def test_bad_requests_are_one_line(args, message, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(args, monkeypatch, capsys)
    assert code == 1
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_an_existing_folder_is_not_overwritten(monkeypatch, capsys, tmp_path):
    (tmp_path / "forgetbench-mine").mkdir()
    (tmp_path / "forgetbench-mine" / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["new-plugin", "method", "mine"], monkeypatch, capsys)
    assert code == 1
    assert "exists and is not empty" in err
    assert (tmp_path / "forgetbench-mine" / "keep.txt").read_text() == "mine"


@pytest.fixture
def installed(tmp_path) -> Iterator[callable]:
    """``install(folder)``: pip install -e it (offline); uninstalled afterwards."""
    names = []

    def install(folder: Path) -> None:
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
        done = subprocess.run(
            [*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(folder)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        names.append(folder.name)

    try:
        yield install
    finally:
        for name in names:
            subprocess.run(
                [sys.executable, "-m", "pip", "uninstall", "-y", "-q", name],
                capture_output=True, timeout=300,
            )  # fmt: skip


def run_in(folder: Path, *command: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FORGETBENCH_CACHE": str(cache), "COLUMNS": "200"}
    env.pop("FORGETBENCH_DB", None)
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["method", "task", "family"])
def test_a_skeleton_installs_and_passes_its_own_test(kind, installed, tmp_path):
    name = {"method": "head-pull", "task": "my-news", "family": "speech"}[kind]
    family = ["--family", "text-classification"] if kind == "task" else []
    cache = tmp_path / "cache"
    forgetbench = [sys.executable, "-m", "forgetbench"]
    made = run_in(tmp_path, *forgetbench, "new-plugin", kind, name, *family, cache=cache)
    assert made.returncode == 0, made.stderr
    folder = tmp_path / f"forgetbench-{name}"
    installed(folder)
    listed = run_in(tmp_path, *forgetbench, "list", cache=cache).stdout.splitlines()
    assert any(name in line and folder.name in line for line in listed)
    tested = run_in(folder, sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", cache=cache)
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert " passed" in tested.stdout
