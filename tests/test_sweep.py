"""``forgetbench sweep`` on the tiny mock task: the grid, skip-if-done and --force, a failed run
that does not stop the sweep, a process pool, and Ray in local mode."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from reliability_helpers import (
    SMALL,
    SMALL_ARGS,
    cli,
    cli_process,
    one_error_line,
    signal_when_ready,
)

from forgetbench.errors import ForgetbenchError
from forgetbench.report import leaderboard
from forgetbench.store import Store
from forgetbench.sweep import SweepSpec, expand, parse_grid, parse_seeds, run_sweep
from forgetbench.testing import registry_with

REGISTRY = registry_with()
# 2 configs (steps) x 2 seeds of plain fine-tuning on the tiny task: seconds each.
SPEC = SweepSpec("tiny", ["finetune"], {"steps": ["2", "3"]}, [0, 1], dict(SMALL))
# the task settings a run's label shows after its training settings
SMALL_LABEL = ",".join(f"{key}={value}" for key, value in sorted(SMALL.items()))


def test_parse_seeds_and_grid():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0-2,9,1") == [0, 1, 2, 9]
    for bad in ("a", "3-1", "1-", "", "0-2147483648", "-1", "0-20000"):
        with pytest.raises(ForgetbenchError, match="--seeds"):
            parse_seeds(bad)
    assert len(parse_seeds("0-9999")) == 10_000
    assert len(parse_seeds("0-9999,0-9999,5")) == 10_000  # distinct seeds count, once each
    with pytest.raises(ForgetbenchError, match="at most 10,000 seeds"):
        parse_seeds("0-9999,10000")
    grid = parse_grid(["mixcd.mix_ratio=0.1, 0.25", "wise-ft.grid=0,0.5;0,1", "steps=5"])
    assert grid == {"mixcd.mix_ratio": ["0.1", "0.25"], "wise-ft.grid": ["0,0.5", "0,1"]} | {
        "steps": ["5"]
    }
    with pytest.raises(ForgetbenchError, match="key=v1,v2"):
        parse_grid(["steps"])
    with pytest.raises(ForgetbenchError, match="given twice"):
        parse_grid(["steps=1", "steps=2"])


def test_method_keys_vary_only_the_stacks_that_have_the_method():
    spec = SweepSpec(
        "tiny",
        ["mixcd", "random", "mixcd+wise-ft"],
        {"mixcd.mix_ratio": ["0.1", "0.2"], "steps": ["2", "3"]},
        [0, 1],
    )
    requests = expand(spec, REGISTRY)
    stacks = [tuple(r.methods) for r in requests]
    assert stacks.count(("mixcd",)) == 8  # 2 ratios x 2 budgets x 2 seeds
    assert stacks.count(("random",)) == 4  # 2 budgets x 2 seeds
    assert stacks.count(("mixcd", "wise-ft")) == 8
    assert all("mixcd.mix_ratio" not in r.overrides for r in requests if r.methods == ["random"])
    with pytest.raises(ForgetbenchError, match="method lora is not in the sweep"):
        expand(SweepSpec("tiny", ["mixcd"], {"lora.r": ["4"]}), REGISTRY)


def check_stored(db: str, runs: int) -> None:
    """``runs`` ok runs, grouped into the spec's two configs of two seeds each."""
    store = Store(db, read_only=True)
    assert len(store.get_runs(status="ok")) == runs
    rows = leaderboard(store)
    assert sorted(row.methods for row in rows) == [
        f"finetune [steps=2,{SMALL_LABEL}]",
        f"finetune [steps=3,{SMALL_LABEL}]",
    ]
    assert all(sorted(row.seeds) == [0, 1] for row in rows)


def test_sweep_in_this_process_skips_finished_runs_unless_forced(db):
    lines: list[str] = []
    result = run_sweep(SPEC, db, registry_factory=registry_with, echo=lines.append)
    assert [o.ok for o in result.outcomes] == [True] * 4
    assert lines[0] == "sweep: 4 runs to do, 0 already finished"
    assert lines[-1].startswith(f"[4/4] ok finetune [steps=3,{SMALL_LABEL}] seed 1: run 4")
    check_stored(db, 4)
    again = run_sweep(SPEC, db, registry_factory=registry_with, echo=lines.append)
    assert (again.outcomes, len(again.skipped)) == ([], 4)
    # nothing left to do with a pool asked for: no pool (it once failed on max_workers=0)
    pooled = run_sweep(SPEC, db, workers=2, registry_factory=registry_with, echo=lines.append)
    assert (pooled.outcomes, len(pooled.skipped)) == ([], 4)
    check_stored(db, 4)
    wider = SweepSpec("tiny", ["finetune"], {"steps": ["2"]}, [0, 1, 2], dict(SMALL))
    third = run_sweep(wider, db, registry_factory=registry_with, echo=lines.append)
    assert [o.seed for o in third.outcomes] == [2]  # only the new seed runs
    assert len(third.skipped) == 2
    one = SweepSpec("tiny", ["finetune"], {"steps": ["2"]}, [0], dict(SMALL))
    forced = run_sweep(one, db, force=True, registry_factory=registry_with, echo=lines.append)
    assert len(forced.outcomes) == 1
    assert len(Store(db).get_runs(status="ok")) == 6


@pytest.mark.usefixtures("fixtures_plugin")
def test_a_failed_run_is_listed_and_the_sweep_goes_on(db, monkeypatch, capsys):
    args = ["sweep", "--task", "tiny", "-m", "mixcd", "--grid", "mixcd.partitions=label,abc"]
    args += ["--set", "steps=2", *(f"--set={k}={v}" for k, v in SMALL.items()), "--db", db]
    code, stdout, stderr = cli(args, monkeypatch, capsys)
    assert code == 1
    text = "".join(stdout.splitlines())  # a label longer than the terminal folds: rejoin it
    assert "sweep done: 1 ok, 1 failed, 0 skipped" in text
    label = f"mixcd(partitions=['abc']) [steps=2,{SMALL_LABEL}]"
    assert f"failed: {label} seed 0 (run 2): ForgetbenchError: mixcd: this task has no" in text
    assert f"FAILED {label} seed 0" in stderr
    assert [r["status"] for r in Store(db).get_runs()] == ["ok", "failed"]


def test_a_run_failing_with_any_exception_is_listed_with_its_stored_row(db, monkeypatch):
    from forgetbench.testing import TinyTextTask

    def broken(self, bundle, examples):
        raise KeyError("image/36")  # not a ForgetbenchError: a bug in a task

    monkeypatch.setattr(TinyTextTask, "collate", broken)
    spec = SweepSpec("tiny", ["finetune"], {"steps": ["2"]}, [0], dict(SMALL))
    lines: list[str] = []
    result = run_sweep(spec, db, registry_factory=registry_with, echo=lines.append)
    (outcome,) = result.outcomes
    assert outcome.run_id == 1  # its failed row, not "no run stored"
    assert "KeyError: 'image/36'" in outcome.error
    assert [r["status"] for r in Store(db).get_runs()] == ["failed"]


@pytest.mark.usefixtures("fixtures_plugin")
def test_bad_sweep_input_is_one_line_before_anything_runs(db, monkeypatch, capsys):
    cases = {
        ("--grid", "mix_ratio=0.1", "-m", "lora"): "a setting of method mixcd, random",
        ("--grid", "steps=0"): "steps must be >= 1, got 0",
        ("--seeds", "x"): "--seeds: 'x' is not a seed",
        ("--workers", "0"): "--workers must be >= 1",
        ("--executor", "slurm"): "--executor must be local or ray",
    }
    for extra, message in cases.items():
        args = ["sweep", "--task", "tiny", *extra, "--db", db]
        if "-m" not in extra:
            args += ["-m", "finetune"]
        code, _, stderr = cli(args, monkeypatch, capsys)
        assert code == 1, stderr
        assert message in one_error_line(stderr)
    assert not Path(db).exists()  # nothing was stored, not even an empty store


@pytest.mark.usefixtures("fixtures_plugin")
def test_missing_ray_is_one_clear_line(db, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    args = ["sweep", "--task", "tiny", "-m", "finetune", "--executor", "ray", "--db", db]
    code, _, stderr = cli(args, monkeypatch, capsys)
    assert code == 1
    assert "--executor ray needs Ray: pip install 'forgetbench[ray]'" in one_error_line(stderr)


@pytest.mark.slow
def test_sweep_with_a_process_pool(db):
    result = run_sweep(SPEC, db, workers=2, registry_factory=registry_with, echo=lambda _: None)
    assert [o.ok for o in result.outcomes] == [True] * 4
    check_stored(db, 4)
    pids = {run["pid"] for run in Store(db).get_runs()}
    assert len(pids) <= 2  # at most two worker processes: one of them ran several runs
    assert os.getpid() not in pids


@pytest.mark.slow
def test_sweep_on_ray_in_local_mode(db):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'forgetbench[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        lines: list[str] = []
        result = run_sweep(
            SPEC, db, executor="ray", registry_factory=registry_with, echo=lines.append
        )
    finally:
        ray.shutdown()
    assert [o.ok for o in result.outcomes] == [True] * 4
    assert "a cluster needs PostgreSQL" in lines[0]
    check_stored(db, 4)


@pytest.mark.slow
def test_sigterm_stops_the_sweep_marks_the_run_and_says_how_to_continue(
    db, tmp_path, fixtures_plugin_path
):
    marker = tmp_path / "training"
    env = {**os.environ, "SLOW_SECONDS": "0.3", "TRAINING_MARKER": str(marker)}
    args = ["sweep", "--task", "tiny", "-m", "slow-steps", "--seeds", "0-1", "--set", "steps=40"]
    process = cli_process([*args, *SMALL_ARGS, "--db", db], env, fixtures_plugin_path)
    stderr = signal_when_ready(process, marker.exists)
    assert process.returncode == 143
    assert stderr.splitlines()[-1] == (
        "sweep interrupted (SIGTERM) (run 1 marked interrupted): run the same sweep again to"
        " continue; finished runs are skipped"
    )
    assert [run["status"] for run in Store(db).get_runs()] == ["interrupted"]


@pytest.mark.slow
def test_sigterm_to_a_sweep_with_workers_marks_every_running_run(
    db, tmp_path, fixtures_plugin_path
):
    """The pool's processes get the signal too (the sweep forwards it): each marks its run
    ``interrupted`` instead of dying with it ``running``, and the sweep does not wait for
    them to finish their runs."""
    marker = tmp_path / "training"
    env = {**os.environ, "SLOW_SECONDS": "0.5", "TRAINING_MARKER": str(marker)}
    args = ["sweep", "--task", "tiny", "-m", "slow-steps", "--seeds", "0-1", "--workers", "2"]
    run = [*args, "--set", "steps=200", *SMALL_ARGS, "--db", db]
    process = cli_process(run, env, fixtures_plugin_path)

    def both() -> bool:  # both workers started a run
        return len(Store(db).get_runs()) == 2

    stderr = signal_when_ready(process, marker.exists, both, timeout=90)
    assert process.returncode == 143
    assert stderr.splitlines()[-1].startswith("sweep interrupted (SIGTERM)")
    statuses = [run["status"] for run in Store(db).get_runs()]
    assert statuses == ["interrupted", "interrupted"]
