"""The bad-input sweep (issue 13): every command and every ``--set`` key, given bad input,
exits non-zero with exactly one line on stderr and no traceback, stores no ``ok`` row and
leaves the database as it was; the leaderboard's empty CSV has its header."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import typing
from contextlib import closing

import pytest
import torch
from reliability_helpers import SMALL, cli, database_state, one_error_line

from forgetbench.config import TrainConfig
from forgetbench.runner import RunRequest, execute
from forgetbench.store import Store
from forgetbench.testing import registry_with

REGISTRY = registry_with()


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> str:
    """A store holding one finished tiny run (id 1) and one interrupted one (id 2)."""
    folder = tmp_path_factory.mktemp("stored")
    db = str(folder / "results.db")
    with pytest.MonkeyPatch.context() as patch:  # both runs: never the user's own cache
        patch.setenv("FORGETBENCH_CACHE", str(folder / "cache"))
        execute(RunRequest(task="tiny", steps=2, overrides=dict(SMALL)), db=db, registry=REGISTRY)
        second = RunRequest(task="tiny", steps=2, seed=1, overrides=dict(SMALL))
        interrupted = execute(second, db=db, registry=REGISTRY)
    Store(db).update_run(interrupted, status="interrupted")
    with closing(sqlite3.connect(db)) as connection:  # everything into the file a test copies
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


# (arguments, exit code, a fragment of the error line). {db}: a copy of the stored database,
# {tmp}: the test's folder, {empty}: an empty folder in it, {text}: a text file in it.
CASES = {
    # the command line itself: click's usage errors, one line, exit code 2
    "no such command": (["nosuch"], 2, "No such command 'nosuch'"),
    "no such global option": (["--bogus", "runs"], 2, "No such option: --bogus"),
    "run: no such option": (["run", "--bogus"], 2, "No such option: --bogus"),
    "run: seed not a number": (["run", "--seed", "abc"], 2, "Invalid value for '--seed'"),
    "run: steps not a number": (["run", "--steps", "x"], 2, "Invalid value for '--steps'"),
    "run: extra argument": (["run", "extra"], 2, "unexpected extra argument"),
    "list: no such option": (["list", "--bogus"], 2, "No such option: --bogus"),
    "show: no run id": (["show"], 2, "Missing argument 'run_id'"),
    "show: run id not a number": (["show", "abc"], 2, "Invalid value for 'run_id'"),
    "runs: max age not a number": (["runs", "--max-age", "x"], 2, "Invalid value for '--max-age'"),
    # run: what is asked for
    "run: unknown task": (["run", "--task", "wordnt"], 1, "did you mean 'wordnet'?"),
    "run: unknown method": (["run", "--method", "mixc"], 1, "did you mean 'mixcd'?"),
    "run: method twice": (["run", "-m", "random", "-m", "random"], 1, "given twice"),
    "run: seed too large": (["run", "--seed", "99999999999999999999"], 1, "--seed must be in"),
    "run: negative seed": (["run", "--seed", "-1"], 1, "--seed must be in [0, 2147483647]"),
    "run: zero steps": (["run", "--steps", "0"], 1, "steps must be >= 1, got 0"),
    "run: --set steps=0": (["run", "--set", "steps=0"], 1, "steps must be >= 1, got 0"),
    "run: two sources of steps": (
        ["run", "--steps", "3", "--set", "steps=abc"],
        1,
        "--steps 3 and --set steps=abc both set the number of steps",
    ),
    "run: --set without =": (["run", "--set", "lr"], 1, "--set expects key=value"),
    "run: unknown key": (["run", "--set", "lrr=1"], 1, "unknown --set key 'lrr'"),
    "run: key of a method not in the run": (
        ["run", "--set", "mixcd.mix_ratio=0.5"],
        1,
        "--set mixcd.mix_ratio: method mixcd is not in this run (add --method mixcd)",
    ),
    "run: bare key of a method not in the run": (
        ["run", "--set", "mix_ratio=0.5"],
        1,
        "a setting of method mixcd, random, not in this run",
    ),
    "run: cuda without cuda": (["run", "--set", "device=cuda"], 1, "no CUDA device"),
    "run: prior model is an empty folder": (["run", "--prior-model", "{empty}"], 1, "is empty"),
    "run: prior model is a file": (["run", "--prior-model", "{text}"], 1, "not a directory"),
    "run: prior model missing": (["run", "--prior-model", "{tmp}/none"], 1, "no such directory"),
    "run: prior model not on the hub cache": (
        ["run", "--prior-model", "no-such-org/no-such-model"],
        1,
        "not in the hub cache (the hub is offline: pass --online to download it)",
    ),
    "run: force without resume": (["run", "--force"], 1, "--force only applies to --resume"),
    "run: resume an unknown run": (["run", "--resume", "99"], 1, "no run with id 99"),
    "run: resume a finished run": (["run", "--resume", "1"], 1, "run 1 already finished"),
    # the store
    "run: empty --db": (["run", "--db", ""], 1, "--db is empty"),
    "run: SQLite URL without a file": (["run", "--db", "sqlite:///"], 1, "give the SQLite file"),
    "run: in-memory SQLite": (["run", "--db", "sqlite://"], 1, "give the SQLite file"),
    "run: --db a folder": (["run", "--db", "{tmp}"], 1, "is a directory, not a database file"),
    "run: --db in a missing folder": (
        ["run", "--db", "{tmp}/missing/results.db"],
        1,
        "the directory {tmp}/missing does not exist",
    ),
    "run: missing driver": (
        ["run", "--db", "mysql://user@localhost/runs"],
        1,
        "database driver is not installed (pip install mysqlclient",
    ),
    "run: unknown backend": (["run", "--db", "nosuch://x/y"], 1, "unknown database backend"),
    "run: not a URL": (["run", "--db", "://x"], 1, "is not a database URL"),
    # reading commands
    "show: unknown run": (["show", "99"], 1, "no run with id 99"),
    "show: missing store": (["show", "1", "--db", "{tmp}/none.db"], 1, "no results database"),
    "leaderboard: unknown task": (
        ["leaderboard", "--task", "wordnt"],
        1,
        "unknown task 'wordnt' (did you mean 'wordnet'?)",
    ),
    "leaderboard: unknown format": (["leaderboard", "-f", "xml"], 1, "--format must be"),
    "runs: unknown status": (
        ["runs", "--status", "runing"],
        1,
        "--status must be one of running, ok, failed, interrupted, got 'runing'",
    ),
    "runs: zero max age": (["runs", "--max-age", "0"], 1, "--max-age must be 2 to 525600"),
    "runs: infinite max age": (["runs", "--max-age", "inf"], 1, "--max-age must be 2 to"),
    "runs: NaN max age": (["runs", "--max-age", "nan"], 1, "--max-age must be 2 to 525600"),
    "runs: stale with a status": (["runs", "--stale", "--status", "ok"], 1, "drop --status"),
    "run: options with --resume": (
        ["run", "--resume", "1", "--task", "wordnt", "--set", "lr=nan"],
        1,
        "--resume 1 continues the stored run with its own config: drop --task, --set",
    ),
    "run: default values with --resume": (
        ["run", "--resume", "1", "--task", "wordnet", "--seed", "0", "--trust-remote-code"],
        1,
        "--resume 1 continues the stored run with its own config: drop --task, --seed,"
        " --trust-remote-code",
    ),
    "sweep: a seed past the range": (
        ["sweep", "-m", "finetune", "--seeds", "0-2147483648", "--db", "{db}"],
        1,
        "--seeds: seeds are 0 to 2147483647, got 0-2147483648",
    ),
    "show: a run id past any integer": (["show", "99999999999999999999"], 1, "no run with id"),
    "plot: neither --task nor --run": (["plot", "--db", "{db}"], 1, "one of them"),
    "plot: an empty --out": (
        ["plot", "--task", "wordnet", "--out", "", "--db", "{db}"],
        1,
        "--out is empty",
    ),
    "compare: negative bootstrap seed": (
        ["compare", "mixcd", "random", "--seed", "-5", "--db", "{db}"],
        1,
        "--seed (the bootstrap's) must be >= 0, got -5",
    ),
    "compare: too many resamples": (
        ["compare", "mixcd", "random", "--resamples", "99999999999", "--db", "{db}"],
        1,
        "--resamples must be 100 to 1,000,000",
    ),
}


def _bad_value(hint) -> str | None:
    """A value of the wrong type for a field, or None for free text checked at run time."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if typing.get_origin(hint) in (typing.Union, typing.types.UnionType):
        return _bad_value(args[0])
    if typing.get_origin(hint) is tuple:
        return _bad_value(args[0])
    return {int: "1.5", float: "abc", bool: "maybe", str: "@@"}.get(hint)


def set_key_cases() -> dict[str, tuple]:
    """One bad value for every ``--set`` key: training, the task, every built-in method."""
    sections = [("train", TrainConfig, ["--task", "tiny"])]
    sections.append(("task", REGISTRY.task("wordnet").cls.Config, ["--task", "wordnet"]))
    for name, entry in sorted(REGISTRY.methods.items()):
        if entry.provider == "forgetbench" and entry.cls.Config is not None:
            sections.append((name, entry.cls.Config, ["--task", "tiny", "--method", name]))
    cases = {}
    for section, config, args in sections:
        hints = typing.get_type_hints(config)
        for field in dataclasses.fields(config):
            value = _bad_value(hints[field.name])
            if value is not None and f"{section}.{field.name}" not in FREE_TEXT:
                key = f"{section}.{field.name}"
                arguments = ["run", *args, "--set", f"{key}={value}"]
                cases[f"--set {key}={value}"] = (arguments, 1, field.name)
    return cases


# Free-text keys only the task's data or model can check (a name that could exist): they fail
# once the run started, in one line, with a failed row.
RUN_TIME_CHECKED = {
    "mixcd.partitions": "mixcd: this task has no partition 'abc'",
    "lora.target_modules": "Target modules {'abc'} not found",
}
# Module names of the model: any text could be one, so only the model can refuse it.
FREE_TEXT = {"lora.target_modules"}
ALL_CASES = {**CASES, **set_key_cases()}


def fill(args: list[str], tmp_path, db: str) -> list[str]:
    (tmp_path / "empty").mkdir(exist_ok=True)
    (tmp_path / "notes.txt").write_text("not a model\n")
    names = {"db": db, "tmp": str(tmp_path), "empty": str(tmp_path / "empty")}
    names["text"] = str(tmp_path / "notes.txt")
    return [arg.format(**names) for arg in args]


@pytest.mark.usefixtures("fixtures_plugin")
@pytest.mark.parametrize("case", list(ALL_CASES))
def test_bad_input_is_one_line_and_changes_nothing(case, stored, tmp_path, monkeypatch, capsys):
    args, expected_code, fragment = ALL_CASES[case]
    if case == "run: cuda without cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    db = str(tmp_path / "results.db")
    shutil.copy(stored, db)
    before = database_state(db)
    monkeypatch.chdir(tmp_path)
    args = fill(args, tmp_path, db)
    if args[0] in ("run", "show", "leaderboard", "runs") and "--db" not in args:
        args += ["--db", db]
    code, stdout, stderr = cli(args, monkeypatch, capsys)
    assert code == expected_code, stderr
    line = one_error_line(stderr)
    assert fill([fragment], tmp_path, db)[0] in line
    assert stdout == ""
    assert database_state(db) == before
    assert not (tmp_path / "cache").exists()  # nothing was computed


@pytest.mark.usefixtures("fixtures_plugin")
@pytest.mark.parametrize("key", list(RUN_TIME_CHECKED))
def test_free_text_keys_fail_the_run_in_one_line(key, db, monkeypatch, capsys):
    method = key.split(".")[0]
    small = [arg for k, v in SMALL.items() for arg in ("--set", f"{k}={v}")]
    args = ["run", "--task", "tiny", "-m", method, "--steps", "2", *small, "--set", f"{key}=abc"]
    code, _, stderr = cli([*args, "--db", db], monkeypatch, capsys)
    assert code == 1
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith("error: run 1 failed: ")
    assert RUN_TIME_CHECKED[key] in stderr.splitlines()[-1]
    assert [run["status"] for run in Store(db).get_runs()] == ["failed"]


def test_usage_help_answers_to_h(monkeypatch, capsys):
    code, stdout, stderr = cli(["run", "-h"], monkeypatch, capsys)
    assert code == 0
    assert "--resume" in stdout
    assert stderr == ""


@pytest.mark.usefixtures("fixtures_plugin")
def test_an_empty_leaderboard_exports_a_csv_header(stored, tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "results.db")
    shutil.copy(stored, db)
    code, stdout, _ = cli(
        ["leaderboard", "--task", "tiny-qa", "--format", "csv", "--db", db], monkeypatch, capsys
    )
    assert code == 0
    assert stdout.splitlines()[0].startswith("task,methods,config,seeds,pareto,prior_metric")
    assert len(stdout.splitlines()) == 1


def test_resuming_in_a_missing_database_creates_none(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "none.db"
    code, _, stderr = cli(["run", "--resume", "5", "--db", str(missing)], monkeypatch, capsys)
    assert code == 1
    assert "no results database at" in one_error_line(stderr)
    assert not missing.exists()
