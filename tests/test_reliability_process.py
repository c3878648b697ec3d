"""Reliability (issue 13) across processes: exit codes of interrupted runs, a resume refused
while its run is alive, usage errors of the installed script, the hub kept offline, a store on a
read-only mount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_helpers import (
    HUB_VARIABLES,
    SMALL_ARGS,
    SlowSteps,
    cli_process,
    database_state,
    one_error_line,
    signal_when_ready,
    wait_for,
)

from forgetbench.errors import ForgetbenchError
from forgetbench.runner import execute
from forgetbench.store import Metric, Store
from forgetbench.testing import registry_with

SLOW_RUN = ["run", "--task", "tiny", "--method", "slow-steps", "--steps", "40", *SMALL_ARGS]


def slow_run(db: str, tmp_path: Path, plugins: Path) -> tuple[subprocess.Popen, Path]:
    """A tiny run in a subprocess taking 0.3 s a step; returns it and its training marker."""
    marker = tmp_path / "training"
    env = {**os.environ, "SLOW_SECONDS": "0.3", "TRAINING_MARKER": str(marker)}
    return cli_process([*SLOW_RUN, "--db", db], env, plugins), marker


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_exits_128_plus_the_signal_saying_how_to_resume(
    signum, code, db, tmp_path, fixtures_plugin_path
):
    process, marker = slow_run(db, tmp_path, fixtures_plugin_path)
    stderr = signal_when_ready(process, marker.exists, signum=signum)
    assert process.returncode == code  # was 0: schedulers and `make demo` saw a success
    name = signal.Signals(signum).name
    assert stderr.splitlines()[-1] == (
        f"run 1 interrupted ({name}); continue it with: forgetbench run --resume 1 --db {db}"
    )
    assert "Traceback" not in stderr
    (run,) = Store(db).get_runs()
    assert run["status"] == "interrupted"
    assert run["error"] == f"interrupted ({name})"


def test_a_live_run_cannot_be_resumed_by_a_second_process(db, tmp_path, fixtures_plugin_path):
    registry = registry_with(SlowSteps)
    process, marker = slow_run(db, tmp_path, fixtures_plugin_path)
    try:
        wait_for(marker.exists, process)
        with pytest.raises(ForgetbenchError, match="run 1 is still running"):
            execute(None, db=db, registry=registry, resume=1)
        # --force overrides a heartbeat, never the lock of a live process
        with pytest.raises(ForgetbenchError, match="checkpoint is in use by another process"):
            execute(None, db=db, registry=registry, resume=1, force=True)
        assert Store(db).get_run(1)["pid"] == process.pid
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert execute(None, db=db, registry=registry, resume=1) == 1
    assert Store(db).get_run(1)["status"] == "ok"


def test_the_installed_script_reports_usage_errors_like_click(tmp_path):
    script = str(Path(sys.executable).with_name("forgetbench"))
    result = subprocess.run(
        [script, "run", "--bogus"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == "error: No such option: --bogus (see 'forgetbench run --help')\n"
    assert not (tmp_path / "results.db").exists()


def test_a_task_that_needs_the_hub_fails_fast_when_offline(tmp_path):
    """`--task mnli` with nothing cached: the hub libraries are kept offline, so the run fails
    in seconds with one line saying how to allow downloads (it was 43 s of retries)."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES}
    env.update(HF_HOME=str(tmp_path / "hf"), FORGETBENCH_CACHE=str(tmp_path / "cache"))
    db = str(tmp_path / "results.db")
    result = subprocess.run(  # the timeout only guards a hang: the message proves offline mode
        [sys.executable, "-m", "forgetbench", "run", "--task", "mnli", "--steps", "1", "--db", db],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: run 1 failed: nyu-mll/multi_nli not available")
    assert last.endswith("(the hub is offline: pass --online to allow downloads)")
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "error" in line.lower()]) == 1


def _read_only_mount_works() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount --bind / /mnt && mount -o remount,ro,bind /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_store_on_a_read_only_mount_can_be_read(tmp_path):
    if not _read_only_mount_works():
        pytest.skip("needs mount namespaces (root, Linux) to make a read-only mount")
    folder = tmp_path / "store"
    folder.mkdir()
    db = str(folder / "results.db")
    store = Store(db)
    fields = dict(task="wordnet", task_version="1", methods="finetune", config={"methods": []})
    run_id = store.start_run(
        **fields, config_hash="h", seed=0, model="m", data_fingerprints={}, versions={}
    )
    store.finish_run(run_id, [Metric("prior", "after", "accuracy", 0.5)])
    store.engine.dispose()  # the last connection closes: no -wal or -shm file is left
    assert sorted(p.name for p in folder.iterdir()) == ["results.db"]
    before = database_state(db)
    forgetbench = f"{sys.executable} -m forgetbench"
    script = f"""
    mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} || exit 99
    {forgetbench} runs --db {db} > {tmp_path}/runs.txt || exit 1
    {forgetbench} show 1 --db {db} > {tmp_path}/show.txt || exit 2
    {forgetbench} run --task wordnet --db {db} 2> {tmp_path}/run.txt && exit 3
    exit 0
    """
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "finetune" in (tmp_path / "runs.txt").read_text()
    assert "0.5000" in (tmp_path / "show.txt").read_text()
    line = one_error_line((tmp_path / "run.txt").read_text())
    assert line == f"error: --db {db} is read-only: runs cannot be stored there"
    assert database_state(db) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "split"),
    [
        ("task.new_eval_fraction=0.9999", "new_train"),
        ("task.prior_eval_size=200000", "prior_train"),
    ],
)
def test_the_offline_scenario_refuses_an_empty_split(setting, split, tmp_path):
    """The issue's reproduction on the real `wordnet` task: it spun at 100% CPU, silent."""
    env = {**os.environ, "FORGETBENCH_CACHE": str(tmp_path / "cache")}
    db = str(tmp_path / "results.db")
    result = subprocess.run(
        [sys.executable, "-m", "forgetbench", "run", "--set", setting, "--steps", "4", "--db", db],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"error: run 1 failed: task 'wordnet': split {split} has 0 examples")
    assert "Traceback" not in result.stderr
    assert [run["status"] for run in Store(db).get_runs()] == ["failed"]


def test_a_run_whose_reader_goes_away_finishes_and_is_stored(db, tmp_path, fixtures_plugin_path):
    """``forgetbench run ... 2>&1 | head -2``: the pipe closes after two lines, and the run
    goes on quietly to its end (rich's console would exit the process, failing the run)."""
    run = ["run", "--task", "tiny", "--method", "finetune", "--steps", "3", *SMALL_ARGS]
    process = cli_process([*run, "--db", db], {**os.environ}, fixtures_plugin_path)
    process.stdout.close()
    process.stderr.close()  # nobody reads any more: every write is a broken pipe
    assert process.wait(timeout=120) == 0
    (stored,) = Store(db).get_runs()
    assert stored["status"] == "ok"
