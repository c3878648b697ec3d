"""Helpers of the reliability tests: the real CLI (``forgetbench.cli.main``, ``python -m
forgetbench``) in this process or in a subprocess, and the test suite's own plugin
distribution, ``forgetbench-test-fixtures``, which registers the mock tasks (``tiny``,
``tiny-qa``) and the test methods below as a user's pip-installed plugin would: a
``*.dist-info`` folder with ``entry_points.txt`` next to the plugin's module, on the path.
Nothing of the core is patched: the registry finds the plugin through its entry point."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from forgetbench.api import Method
from forgetbench.cli import main
from forgetbench.hookspecs import hookimpl
from forgetbench.registry import get_registry

# A tiny run without stage-0 training that takes a few seconds.
SMALL = {
    "task.stage0_steps": "0",
    "task.prior_train_size": "32",
    "task.prior_eval_size": "16",
    "task.new_train_size": "32",
    "task.new_eval_size": "16",
}
SMALL_ARGS = [arg for key, value in SMALL.items() for arg in ("--set", f"{key}={value}")]
HUB_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class SlowSteps(Method):
    """Touches ``$TRAINING_MARKER`` and sleeps ``$SLOW_SECONDS`` after each step; changes no
    number."""

    name = "slow-steps"
    description = "sleeps after each step"

    @hookimpl
    def forgetbench_after_step(self, step):
        marker = os.environ.get("TRAINING_MARKER")
        if marker:
            Path(marker).touch()
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))


class SetupFails(Method):
    name = "setup-fails"
    description = "raises in setup"

    @hookimpl
    def forgetbench_setup(self, ctx):
        raise RuntimeError("setup exploded on purpose")


class NanDiagnostic(Method):
    name = "nan-diagnostic"
    description = "reports a NaN diagnostic"

    @hookimpl
    def forgetbench_diagnostics(self):
        return {"metrics": {"broken": float("nan")}}


def add_distribution(folder: Path, dist: str, entry_name: str, module: str, source: str) -> None:
    """A minimal installed distribution: metadata, one ``forgetbench`` entry point, a module."""
    info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[forgetbench]\n{entry_name} = {module}\n")
    (folder / f"{module}.py").write_text(textwrap.dedent(source))


@contextmanager
def plugins_on_path(
    monkeypatch: pytest.MonkeyPatch, *folders: Path, modules: Iterable[str]
) -> Iterator[None]:
    """``folders`` of distributions on ``sys.path``, searched in the order given. Afterwards
    every patch of ``monkeypatch`` is undone (the test's environment too), the plugins'
    ``modules`` are forgotten and the registry of the installed plugins is loaded again, so
    that no other test sees them."""
    for folder in reversed(folders):  # each prepended: the last one is searched first
        monkeypatch.syspath_prepend(str(folder))
    try:
        yield
    finally:
        monkeypatch.undo()
        for module in modules:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        get_registry(reload=True)


FIXTURES_DIST = "forgetbench-test-fixtures"
FIXTURES_MODULE = "forgetbench_test_fixtures"
FIXTURES_PLUGIN = """
# forgetbench-test-fixtures: the test suite's plugin, the mock tasks and the test methods
from reliability_helpers import NanDiagnostic, SetupFails, SlowSteps

from forgetbench.api import hookimpl
from forgetbench.testing import TinyQATask, TinyTextTask


@hookimpl
def forgetbench_register_tasks(register):
    register(TinyTextTask)
    register(TinyQATask)


@hookimpl
def forgetbench_register_methods(register):
    register(SlowSteps)
    register(SetupFails)
    register(NanDiagnostic)
"""


def add_fixtures_distribution(folder: Path) -> Path:
    """``forgetbench-test-fixtures`` installed in ``folder`` (put it on the path to use it;
    its module imports this one, so the tests' folder must be on the path too)."""
    add_distribution(folder, FIXTURES_DIST, "test-fixtures", FIXTURES_MODULE, FIXTURES_PLUGIN)
    return folder


def cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> tuple[int, str, str]:
    """``forgetbench ARGS`` through ``main()`` in this process: (exit code, stdout, stderr).

    The hub variables the CLI sets are restored afterwards."""
    for name in HUB_VARIABLES:
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
    monkeypatch.setattr(sys, "argv", ["forgetbench", *args])
    capsys.readouterr()
    code = _exit_code()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _exit_code() -> int:
    try:
        main()
    except SystemExit as exited:
        return exited.code if isinstance(exited.code, int) else 1
    return 0


def cli_process(args: list[str], env: dict[str, str], plugins: Path, **popen) -> subprocess.Popen:
    """``python -m forgetbench ARGS`` in a subprocess, with the distributions in ``plugins``
    (:func:`add_fixtures_distribution`) and the tests' folder on its ``PYTHONPATH``: the CLI,
    and a sweep's spawned pool processes, which inherit that path, find the test plugin
    through its entry point, as an installed one.

    The child starts with SIGINT at its default disposition, as from a terminal: a test suite
    launched in the background (``make test &``) has SIGINT ignored, which its children would
    inherit, and Python then never turns Ctrl-C into KeyboardInterrupt."""
    tests = str(Path(__file__).parent)
    path = os.pathsep.join([str(plugins), tests, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(
        [sys.executable, "-m", "forgetbench", *args],
        env={**env, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **popen,
    )


def signal_when_ready(
    process: subprocess.Popen,
    *ready: Callable[[], bool],
    signum: int = signal.SIGTERM,
    timeout: float = 60,
) -> str:
    """Wait for each of ``ready``, send ``signum``, and return the process's stderr once it
    has exited (within ``timeout`` s); a process still alive after that is killed."""
    try:
        for condition in ready:
            wait_for(condition, process)
        process.send_signal(signum)
        return process.communicate(timeout=timeout)[1]
    finally:
        if process.poll() is None:
            process.kill()


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run exited early: {process.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("timed out waiting for the run")
        time.sleep(0.05)


def database_state(path: str | Path) -> tuple[str, list[str]]:
    """sha256 of a SQLite file and its logical content (every row of every table)."""
    path = Path(path)
    if not path.exists():
        return "absent", []
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return digest, list(connection.iterdump())


# What forgetbench.progress prints off a terminal: a phase past SHOWN_AFTER seconds (``... (3
# s)``, ``: done in 4 s``) and a loop's tenths (``stage 0: 1/10 (1 s)``). Whether they show
# depends on the machine's speed and on what an earlier test left cached.
PROGRESS_LINE = re.compile(r".* \.\.\. \(\d+ s\)|.*: done in \d+ s|.*: \d+/\d+ \(\d+ s\)")


def one_error_line(stderr: str) -> str:
    """The only line of ``stderr`` besides progress lines, which must be an error line without
    a traceback."""
    lines = [line for line in stderr.splitlines() if not PROGRESS_LINE.fullmatch(line)]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]
