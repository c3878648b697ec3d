"""Many processes writing one results database at once (parallel seeds, a sweep on a cluster).

Every worker opens a store that does not exist yet, so the processes also race to create the
tables and record the migrations.
"""

import subprocess
import sys
import time
from pathlib import Path

from forgetbench.store import MIGRATIONS, Store

WORKERS = 8
RUNS_PER_WORKER = 4
STEPS = 25

WORKER = """
import sys
import time
from pathlib import Path

from forgetbench.store import Metric, Store

url, worker, runs, steps, go = sys.argv[1:]
worker, runs, steps, go = int(worker), int(runs), int(steps), Path(go)
Path(f"{go}.ready{worker}").touch()
while not go.exists():
    time.sleep(0.005)
store = Store(url)
for index in range(runs):
    run_id = store.start_run(
        task="concurrency", task_version="1", methods=f"worker{worker}", config={},
        config_hash="0" * 64, seed=index, model="none", data_fingerprints={}, versions={},
    )
    store.heartbeat(run_id)
    store.finish_run(
        run_id,
        [
            Metric("prior", "after", "accuracy", worker + index / 10),
            Metric("new", "after", "f1", 0.5),
        ],
        [("loss", step, 1.0 / (step + 1)) for step in range(steps)],
        {"wall_seconds": 0.1},
    )
"""


def write_concurrently(url: str, workdir: Path) -> None:
    """Start the workers, release them together once all have imported, and wait."""
    go = workdir / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, url, str(n), str(RUNS_PER_WORKER), str(STEPS), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{go}.ready{n}").exists() for n in range(WORKERS)):
            assert time.monotonic() < deadline, "workers did not start"
            assert all(worker.poll() is None for worker in workers), "a worker died early"
            time.sleep(0.02)
        go.touch()
        outcomes = [worker.communicate(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, (_stdout, stderr) in zip(workers, outcomes, strict=True):
        assert "database is locked" not in stderr
        assert worker.returncode == 0, stderr


def test_eight_processes_write_one_store(store_url, tmp_path):
    write_concurrently(store_url, tmp_path)
    store = Store(store_url)
    assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    runs = store.get_runs(task="concurrency")
    assert len(runs) == WORKERS * RUNS_PER_WORKER
    assert {run["status"] for run in runs} == {"ok"}
    assert sorted((run["methods"], run["seed"]) for run in runs) == sorted(
        (f"worker{n}", index) for n in range(WORKERS) for index in range(RUNS_PER_WORKER)
    )
    values = store.get_metrics(run["id"] for run in runs)
    for run in runs:
        worker = int(run["methods"].removeprefix("worker"))
        assert values[run["id"]] == {
            "prior/after/accuracy": worker + run["seed"] / 10,
            "new/after/f1": 0.5,
        }
        assert len(store.get_series(run["id"], "loss")) == STEPS


def test_opening_a_store_waits_out_a_lock_longer_than_sqlite3s_default_timeout(tmp_path):
    """The busy timeout is set before the WAL switch: a new store whose file another process
    holds locked for longer than sqlite3's default 5 s wait opens once the lock is released."""
    import sqlite3
    import threading

    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(6.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        store = Store(str(path))
        assert time.monotonic() - started >= 6.0  # it waited for the lock rather than failing
        assert store.applied_migrations()
    finally:
        release.join()
        holder.close()
