"""Checkpoints and resume: a run killed midway (a real subprocess, SIGKILL) and resumed ends
with exactly the metrics of an uninterrupted run with the same seed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest

from forgetbench.api import Method
from forgetbench.checkpoint import checkpoint_dir
from forgetbench.errors import ForgetbenchError
from forgetbench.hookspecs import hookimpl
from forgetbench.runner import RunRequest, execute, resolve
from forgetbench.store import Store
from forgetbench.testing import registry_with


class Slow(Method):
    """Sleeps after each step so a test can kill the run midway, and records the steps this
    process ran (``seen``); changes no number."""

    name = "slow"
    seen: ClassVar[list[int]] = []

    @hookimpl
    def forgetbench_after_step(self, step):
        Slow.seen.append(step)
        time.sleep(float(os.environ.get("SLOW_SECONDS", "0")))


REQUEST = RunRequest(
    task="tiny", methods=["mixcd", "slow"], seed=4, steps=24, overrides={"checkpoint_every": 4}
)
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_resume import REQUEST, Slow
from forgetbench.runner import execute
from forgetbench.testing import registry_with
execute(REQUEST, db=sys.argv[1], registry=registry_with(Slow))
"""


def stored(db, run_id):
    store = Store(db)
    metrics = store.get_metrics([run_id])[run_id]
    return store.get_run(run_id), metrics, store.get_series(run_id)


def test_killed_run_resumes_to_identical_metrics(tmp_path, monkeypatch, caplog):
    """The resumed process trains only the steps after the checkpoint (a resume that started
    again from step 0 would also end with the same metrics: the run is deterministic)."""
    registry = registry_with(Slow)
    reference_db = str(tmp_path / "reference.db")
    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "reference-cache"))
    reference_id = execute(REQUEST, db=reference_db, registry=registry)
    _, expected, expected_series = stored(reference_db, reference_id)

    cache = tmp_path / "cache"
    monkeypatch.setenv("FORGETBENCH_CACHE", str(cache))
    db = str(tmp_path / "killed.db")
    env = {**os.environ, "SLOW_SECONDS": "0.25"}
    script = SCRIPT.format(tests=str(Path(__file__).parent))
    process = subprocess.Popen([sys.executable, "-c", script, db], env=env)
    state = checkpoint_dir(resolve(REQUEST, registry).config_hash, REQUEST.seed) / "state.json"
    deadline = time.time() + 240
    step = 0
    while time.time() < deadline and process.poll() is None:
        if state.exists():
            try:
                step = json.loads(state.read_text())["step"]
            except (ValueError, OSError):
                step = 0
            if step >= 8:
                break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = Store(db).get_runs()[0]
    assert run["status"] == "running"  # killed: never a half-written success
    assert Store(db).get_metrics([run["id"]])[run["id"]] == {}
    saved = json.loads(state.read_text())["step"]  # the last checkpoint before the kill
    assert 8 <= saved < REQUEST.steps

    Slow.seen.clear()
    caplog.set_level("WARNING")
    resumed = execute(None, db=db, registry=registry, resume=run["id"])
    assert Slow.seen == list(range(saved + 1, REQUEST.steps + 1))
    assert f"from its checkpoint at step {saved}" in caplog.text
    assert resumed == run["id"]
    row, metrics, series = stored(db, resumed)
    assert row["status"] == "ok"
    assert metrics == expected
    assert series == expected_series
    assert not state.exists()  # a finished run removes its checkpoint


def test_resume_refuses_finished_and_unknown_runs(db):
    registry = registry_with(Slow)
    run_id = execute(RunRequest(task="tiny", steps=2), db=db, registry=registry)
    with pytest.raises(ForgetbenchError, match="already finished"):
        execute(None, db=db, registry=registry, resume=run_id)
    with pytest.raises(ForgetbenchError, match="no run with id 99"):
        execute(None, db=db, registry=registry, resume=99)
