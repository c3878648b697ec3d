"""A run that fails keeps its row, marked ``failed`` (or ``interrupted``) with the reason, and
never reaches the leaderboard: exceptions, Ctrl-C, and SIGTERM from a scheduler."""

import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import (
    SMALL,
    SMALL_ARGS,
    SetupFails,
    cli,
    one_error_line,
    signal_when_ready,
)

from forgetbench.api import Method
from forgetbench.hookspecs import hookimpl
from forgetbench.report import leaderboard
from forgetbench.runner import RunRequest, execute
from forgetbench.store import Store
from forgetbench.testing import registry_with


class CtrlC(Method):
    name = "ctrl-c"
    description = "the user presses Ctrl-C during training"

    @hookimpl
    def forgetbench_after_step(self, step):
        raise KeyboardInterrupt


def tiny_request(methods: list[str]) -> RunRequest:
    return RunRequest(task="tiny", methods=methods, seed=0, steps=2, overrides=dict(SMALL))


def finished_label(db: str) -> str:
    (run,) = Store(db).get_runs(status="ok")
    return run["methods"]


@pytest.mark.usefixtures("fixtures_plugin")
def test_a_plugin_crash_is_one_line_naming_the_run_the_plugin_and_its_hook(db, monkeypatch, capsys):
    args = ["run", "--task", "tiny", "--method", "setup-fails", "--steps", "2", "--db", db]
    code, _, stderr = cli([*args, *SMALL_ARGS], monkeypatch, capsys)
    assert code == 1
    assert one_error_line(stderr) == (
        "error: run 1 failed: RuntimeError: setup exploded on purpose (in method 'setup-fails',"
        " forgetbench_setup) (rerun with --debug for the traceback)"
    )
    assert Store(db).get_run(1)["status"] == "failed"


def test_exception_marks_the_run_failed_and_keeps_it_off_the_leaderboard(db):
    registry = registry_with(SetupFails)
    finished = execute(tiny_request(["finetune"]), db=db, registry=registry)
    with pytest.raises(RuntimeError, match="setup exploded on purpose"):
        execute(tiny_request(["setup-fails"]), db=db, registry=registry)
    store = Store(db)
    (failed,) = store.get_runs(status="failed")
    # a crash names the plugin and the hook it came from
    origin = "(in method 'setup-fails', forgetbench_setup)"
    expected = f"RuntimeError: setup exploded on purpose {origin}"
    assert failed["error"] == expected
    label = finished_label(db)
    assert label.startswith("finetune [steps=2,task.")  # then the small task's settings
    assert failed["methods"] == label.replace("finetune", "setup-fails", 1)
    assert failed["finished_at"] is not None
    assert store.get_metrics([failed["id"]])[failed["id"]] == {}
    rows = leaderboard(store)
    assert [row.methods for row in rows] == [finished_label(db)]
    assert [run["id"] for run in store.get_runs(status="ok")] == [finished]


def test_keyboard_interrupt_marks_the_run_interrupted(db):
    with pytest.raises(KeyboardInterrupt):
        execute(tiny_request(["ctrl-c"]), db=db, registry=registry_with(CtrlC))
    (run,) = Store(db).get_runs()
    assert run["status"] == "interrupted"
    assert "interrupted" in run["error"]
    assert leaderboard(Store(db)) == []


SLOW_RUN = """
import signal
import sys
import time
from pathlib import Path

import forgetbench.errors
from forgetbench.api import Method
from forgetbench.hookspecs import hookimpl
from forgetbench.runner import RunRequest, execute
from forgetbench.testing import registry_with

db, training = sys.argv[1], Path(sys.argv[2])


class SlowSteps(Method):
    name = "slow-steps"

    @hookimpl
    def forgetbench_after_step(self, step):
        training.touch()
        time.sleep(0.5)


signal.signal(signal.SIGTERM, forgetbench.errors.interrupt)
overrides = dict(arg.split("=", 1) for arg in sys.argv[3:])
request = RunRequest(task="tiny", methods=["slow-steps"], steps=10_000, overrides=overrides)
execute(request, db=db, registry=registry_with(SlowSteps))
"""


def test_sigterm_marks_the_run_interrupted(db, tmp_path):
    training = tmp_path / "training"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_RUN,
            db,
            str(training),
            *(f"{k}={v}" for k, v in SMALL.items()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def started() -> bool:
        return Path(db).exists() and bool(Store(db).get_runs(status="running"))

    stderr = signal_when_ready(process, started, training.exists)
    assert process.returncode != 0
    assert "Interrupted: signal 15 in run 1" in stderr
    (run,) = Store(db).get_runs()
    assert run["status"] == "interrupted"
    assert run["error"] == "interrupted (SIGTERM)"
