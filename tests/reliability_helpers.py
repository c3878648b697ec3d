"""Helpers of the reliability tests: the real CLI (``forgetbench.cli.main``) with the mock
``tiny`` task registered, in this process or in a subprocess, and a method that slows training
down so that a test can signal a run midway."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

import forgetbench.registry
import forgetbench.report
import forgetbench.runner
from forgetbench.api import Method
from forgetbench.cli import main
from forgetbench.hookspecs import hookimpl
from forgetbench.registry import Registry
from forgetbench.testing import registry_with

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


def use_registry(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> None:
    """Every core module that looks the registry up gets ``registry``."""
    for module in (forgetbench.registry, forgetbench.runner, forgetbench.report):
        monkeypatch.setattr(module, "get_registry", lambda reload=False: registry)


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


SCRIPT = """
import functools, sys
sys.path.insert(0, {tests!r})
from reliability_helpers import SlowSteps, slow_registry, use_registry_everywhere
use_registry_everywhere(SlowSteps)
import forgetbench.sweep as sweep  # a sweep's pool processes build the same registry
sweep.run_sweep = functools.partial(sweep.run_sweep, registry_factory=slow_registry)
sys.argv = ["forgetbench", *sys.argv[1:]]
from forgetbench.cli import main
main()
"""


def slow_registry():
    """The registry of :data:`SCRIPT`'s runs, for a sweep's pool processes (picklable)."""
    return registry_with(SlowSteps)


def use_registry_everywhere(*methods: type) -> None:
    """For a subprocess: the installed registry plus the mock tasks and ``methods``."""
    registry = registry_with(*methods)
    for module in (forgetbench.registry, forgetbench.runner, forgetbench.report):
        module.get_registry = lambda reload=False: registry


def cli_process(args: list[str], env: dict[str, str], **popen) -> subprocess.Popen:
    """``forgetbench ARGS`` with the tiny task registered, in a subprocess.

    The child starts with SIGINT at its default disposition, as from a terminal: a test suite
    launched in the background (``make test &``) has SIGINT ignored, which its children would
    inherit, and Python then never turns Ctrl-C into KeyboardInterrupt. The tests' folder is
    on the child's ``PYTHONPATH``, so a sweep's spawned pool processes find this module."""
    tests = str(Path(__file__).parent)
    path = os.pathsep.join([tests, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT.format(tests=tests), *args],
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


def one_error_line(stderr: str) -> str:
    """The only line of ``stderr``, which must be an error line without a traceback."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]
