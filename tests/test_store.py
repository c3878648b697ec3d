"""The results store: migrations, the run life cycle, stale runs, and refusing foreign files."""

import os
import socket
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forgetbench.cli import app
from forgetbench.errors import ForgetbenchError
from forgetbench.store import MIGRATIONS, STALE_ERROR, Metric, Store, now


def run_fields(**changes) -> dict:
    """The columns ``start_run`` needs, for a made-up run."""
    fields = {
        "task": "tiny",
        "task_version": "1",
        "methods": "finetune",
        "config": {"train": {"lr": 0.001}},
        "config_hash": "0" * 64,
        "seed": 0,
        "model": "stage-0",
        "data_fingerprints": {"prior_train": "abc"},
        "versions": {"python": "3.11"},
    }
    return fields | changes


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_migrations_apply_once(store_url):
    names = [name for name, _ in MIGRATIONS]
    assert Store(store_url).applied_migrations() == names
    assert Store(store_url).applied_migrations() == names  # reopening applies nothing twice


def test_finished_run_round_trip(store_url):
    store = Store(store_url)
    run_id = store.start_run(**run_fields(seed=3))
    running = store.get_run(run_id)
    assert running["status"] == "running"
    assert running["pid"] == os.getpid()
    assert running["config"] == {"train": {"lr": 0.001}}
    results = [
        Metric("prior", "after", "accuracy", 0.75),
        Metric("prior", "derived", "forgetting", 0.05, higher_is_better=False),
    ]
    curve = [("loss", step, 1.0 / step) for step in range(1, 6)]
    store.finish_run(run_id, results, curve, {"wall_seconds": 1.5})
    finished = store.get_run(run_id)
    assert finished["status"] == "ok"
    assert finished["error"] is None
    assert finished["compute"] == {"wall_seconds": 1.5}
    assert finished["finished_at"] is not None
    assert store.get_metrics([run_id])[run_id] == {
        "prior/after/accuracy": 0.75,
        "prior/derived/forgetting": 0.05,
    }
    assert store.get_series(run_id, "loss") == curve


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_failed_run_keeps_its_row(store_url, status):
    store = Store(store_url)
    run_id = store.start_run(**run_fields())
    store.fail_run(run_id, "RuntimeError: boom", status=status)
    run = store.get_run(run_id)
    assert run["status"] == status
    assert run["error"] == "RuntimeError: boom"
    assert store.get_runs(status="ok") == []
    assert [r["id"] for r in store.get_runs(status=status)] == [run_id]


def test_run_with_dead_pid_is_stale_and_marked_failed(db):
    store = Store(db)
    gone = store.start_run(**run_fields(pid=dead_pid()))
    alive = store.start_run(**run_fields())
    finished = store.start_run(**run_fields(pid=dead_pid()))
    store.finish_run(finished, [])
    assert [run["id"] for run in store.stale_runs()] == [gone]
    assert store.mark_stale_failed() == [gone]
    run = store.get_run(gone)
    assert (run["status"], run["error"]) == ("failed", STALE_ERROR)
    assert run["finished_at"] is not None
    assert store.get_run(alive)["status"] == "running"
    assert store.get_run(finished)["status"] == "ok"
    assert store.stale_runs() == []


def test_run_on_another_host_is_stale_after_max_age(db):
    store = Store(db)
    old = store.start_run(
        **run_fields(hostname="elsewhere", heartbeat_at=now() - timedelta(hours=2))
    )
    recent = store.start_run(**run_fields(hostname="elsewhere", heartbeat_at=now()))
    assert [run["id"] for run in store.stale_runs(timedelta(minutes=30))] == [old]
    assert {run["id"] for run in store.stale_runs(timedelta(hours=3))} == set()
    assert store.get_run(recent)["status"] == "running"


def test_live_process_on_this_host_is_never_stale(db):
    store = Store(db)
    run_id = store.start_run(
        **run_fields(hostname=socket.gethostname(), heartbeat_at=now() - timedelta(days=1))
    )
    assert store.stale_runs(timedelta(minutes=1)) == []
    assert store.mark_stale_failed(timedelta(minutes=1)) == []
    assert store.get_run(run_id)["status"] == "running"


def test_cli_lists_and_marks_stale_runs(db):
    store = Store(db)
    gone = store.start_run(**run_fields(pid=dead_pid(), methods="gone-method"))
    store.start_run(**run_fields(methods="alive-method"))
    runner = CliRunner()
    listed = runner.invoke(app, ["runs", "--stale", "--db", db])
    assert listed.exit_code == 0, listed.output
    assert "gone-method" in listed.output
    assert "alive-method" not in listed.output
    marked = runner.invoke(app, ["runs", "--mark-failed", "--db", db])
    assert marked.exit_code == 0, marked.output
    assert "marked 1 stale run failed" in marked.output
    assert store.get_run(gone)["status"] == "failed"
    assert runner.invoke(app, ["runs", "--stale", "--db", db]).exit_code == 0
    assert store.stale_runs() == []


def test_cli_rejects_a_non_positive_max_age(db):
    result = CliRunner().invoke(app, ["runs", "--stale", "--max-age", "0", "--db", db])
    assert isinstance(result.exception, ForgetbenchError)
    assert "--max-age" in str(result.exception)


def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "results.db"
    content = os.urandom(8192)
    path.write_bytes(content)
    with pytest.raises(ForgetbenchError, match="not a usable SQLite database"):
        Store(str(path))
    assert path.read_bytes() == content
    assert [p.name for p in folder.iterdir()] == ["results.db"]


def test_sqlite_file_with_foreign_tables_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        connection.execute("INSERT INTO invoices (total) VALUES (9.5)")
    connection.close()
    content = path.read_bytes()
    with pytest.raises(ForgetbenchError, match=r"did not create.*invoices"):
        Store(str(path))
    assert path.read_bytes() == content
    assert not Path(f"{path}-wal").exists()


def test_empty_file_becomes_a_store(tmp_path):
    path = tmp_path / "results.db"
    path.touch()
    assert Store(str(path)).applied_migrations() == [name for name, _ in MIGRATIONS]


def test_a_running_run_refreshes_its_heartbeat(db):
    """A live run on another host must not look stale: its heartbeat is refreshed while it
    runs (here every 0.05 s), and no more once it is done."""
    import time

    store = Store(db)
    run_id = store.start_run(
        **run_fields(hostname="elsewhere", heartbeat_at=now() - timedelta(hours=2))
    )
    assert [run["id"] for run in store.stale_runs(timedelta(minutes=30))] == [run_id]
    with store.heartbeats(run_id, every=0.05):
        time.sleep(0.5)
        assert store.stale_runs(timedelta(minutes=30)) == []
    last = store.get_run(run_id)["heartbeat_at"]
    time.sleep(0.2)
    assert store.get_run(run_id)["heartbeat_at"] == last


def test_a_finished_run_keeps_ok_and_a_run_marked_meanwhile_stores_nothing(db):
    """A signal after the results are stored does not mark an ``ok`` run interrupted; a run
    another process marked failed (stale) while it ran is not flipped back to ``ok``."""
    store = Store(db)
    finished = store.start_run(**run_fields())
    store.finish_run(finished, [Metric("prior", "after", "accuracy", 0.5)])
    store.fail_run(finished, "interrupted (SIGTERM)", status="interrupted")
    assert store.get_run(finished)["status"] == "ok"
    assert store.get_run(finished)["error"] is None
    marked = store.start_run(**run_fields())
    store.fail_run(marked, "stale: process gone")
    with pytest.raises(ForgetbenchError, match=f"run {marked} is no longer running .* failed"):
        store.finish_run(marked, [Metric("prior", "after", "accuracy", 0.5)])
    assert store.get_run(marked)["status"] == "failed"
    assert store.get_metrics([marked])[marked] == {}


def test_a_store_from_a_newer_forgetbench_is_refused_untouched(db):
    store = Store(db)
    with store.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO forgetbench_migrations (name, applied_at)"
            " VALUES ('999_future', '2030-01-01 00:00:00')"
        )
    before = Path(db).read_bytes()
    for read_only in (True, False):
        with pytest.raises(ForgetbenchError, match=r"written by a newer forgetbench .*999_future"):
            Store(db, read_only=read_only)
    assert Path(db).read_bytes() == before
