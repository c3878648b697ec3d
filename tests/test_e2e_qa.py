"""End to end: the real CLI on the offline extractive-QA scenario (real WordNet, real
all-MiniLM-L6-v2), every builtin method at a few steps with a tiny stage 0."""

import json

import pytest
from e2e_helpers import cli_in

SMALL = [
    "--set", "task.stage0_steps=3",
    "--set", "task.prior_train_size=48",
    "--set", "task.prior_eval_size=16",
    "--set", "task.new_train_size=32",
    "--set", "task.new_eval_size=16",
    "--set", "batch_size=8",
    "--steps", "2",
]  # fmt: skip
# Every builtin method once; stacked in pairs that exercise the wrappers and finalisers.
METHOD_SETS = [
    ["finetune"],
    ["random"],
    ["mixcd", "wise-ft"],
    ["lora", "ldifs"],
    ["flow", "l2sp"],
]


@pytest.mark.slow
def test_every_method_runs_on_wordnet_qa_through_the_cli(tmp_path):
    cli = cli_in(tmp_path)

    for methods in METHOD_SETS:
        flags = [part for name in methods for part in ("--method", name)]
        done = cli("run", "--task", "wordnet-qa", *flags, *SMALL)
        assert done.returncode == 0, (methods, done.stderr)
    board = json.loads(cli("leaderboard", "--format", "json").stdout)
    assert len(board) == len(METHOD_SETS)
    assert {row["prior_metric"] for row in board} == {"f1"}
    for run_id in range(1, len(METHOD_SETS) + 1):
        run = json.loads(cli("show", str(run_id), "--json").stdout)
        assert run["status"] == "ok"
        assert run["family"] == "qa"
        assert 0.0 <= run["metrics"]["prior/after/f1"] <= 1.0
        assert run["metrics"]["prior/after/exact_match"] <= run["metrics"]["prior/after/f1"]
        assert run["model"].startswith("stage-0:wordnet-qa@")
