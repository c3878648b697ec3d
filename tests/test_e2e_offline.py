"""End to end: the real CLI on the offline WordNet -> chatterbot scenario with the real
all-MiniLM-L6-v2 weights, at a few steps (a small stage 0 on a slice of WordNet)."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from forgetbench.config import TrainConfig
from forgetbench.engine import uses_tf32

SMALL = [
    "--set",
    "task.stage0_steps=4",
    "--set",
    "task.prior_train_size=256",
    "--set",
    "task.prior_eval_size=64",
    "--set",
    "batch_size=8",
    "--steps",
    "4",
]


def cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "forgetbench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture
def env(tmp_path):
    return {
        **os.environ,
        "FORGETBENCH_CACHE": str(tmp_path / "cache"),
        "FORGETBENCH_DB": str(tmp_path / "results.db"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


@pytest.mark.slow
def test_cli_run_leaderboard_show_on_the_offline_scenario(env):
    first = cli("run", "--task", "wordnet", "--method", "mixcd", "--seed", "3", *SMALL, env=env)
    assert first.returncode == 0, first.stderr
    assert "prior" in first.stdout
    again = cli("run", "--task", "wordnet", "--method", "mixcd", "--seed", "3", *SMALL, env=env)
    assert again.returncode == 0, again.stderr

    board = cli("leaderboard", "--format", "json", env=env)
    assert board.returncode == 0, board.stderr
    rows = json.loads(board.stdout)
    task = "task.prior_eval_size=64,task.prior_train_size=256,task.stage0_steps=4"
    assert [row["methods"] for row in rows] == [f"mixcd [batch_size=8,steps=4,{task}]"]
    assert rows[0]["seeds"] == 1  # a rerun of one seed is not a second seed
    assert 0.0 <= rows[0]["prior_after_mean"] <= 1.0

    shown = [json.loads(cli("show", str(run_id), "--json", env=env).stdout) for run_id in (1, 2)]
    for run in shown:
        assert run["status"] == "ok"
        # the versions the run recorded are the installed ones (whatever this machine has)
        assert run["versions"]["torch"] == importlib.metadata.version("torch")
        tf32 = uses_tf32(TrainConfig())  # as the CLI resolves device=auto here
        assert run["versions"]["torch.tf32"] == ("on" if tf32 else "off")
        assert len(run["data_fingerprints"]["prior_train"]) == 64
        assert run["model"].startswith("stage-0:wordnet@")
        assert run["compute"]["backpropagated"] == 4 * 8
    # same seed, same config, same machine: the same numbers
    assert shown[0]["metrics"] == shown[1]["metrics"]
    assert shown[0]["config_hash"] == shown[1]["config_hash"]


@pytest.mark.slow
def test_cli_errors_are_one_line_and_nonzero(env):
    cases = [
        (["run", "--method", "nosuch", "--task", "wordnet"], "did you mean"),
        (["run", "--method", "mixdc", "--task", "wordnet"], "did you mean 'mixcd'"),
        (["run", "--task", "wordnet", "--set", "lr=-1"], "lr must be > 0"),
        (["run", "--task", "wordnet", "--set", "nosuchkey=1"], "unknown --set key"),
        (["run", "--task", "wordnt"], "did you mean 'wordnet'"),
        (["run", "--task", "wordnet", "--method", "mixcd", "--set", "mix_ratio=2"], "mix_ratio"),
    ]
    for args, message in cases:
        result = cli(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (args, result.stderr)
        assert message in lines[0]


@pytest.mark.slow
def test_lp_ft_starts_from_a_probe_that_already_knows_the_new_task(env):
    """After four steps at batch 8 from a random head, plain fine-tuning has learnt little of
    the new task (0.25 here); a probe on f0's features already classifies chatterbot topics
    (0.71). Same seed, same batches, same budget."""
    runs = {}
    for method in ("finetune", "lp-ft"):
        done = cli("run", "--task", "wordnet", "--method", method, "--seed", "1", *SMALL, env=env)
        assert done.returncode == 0, done.stderr
        run_id = len(runs) + 1
        shown = cli("show", str(run_id), "--json", env=env)
        runs[method] = json.loads(shown.stdout)
    plain, probed = runs["finetune"], runs["lp-ft"]
    assert probed["status"] == "ok"
    assert probed["methods"].startswith("lp-ft ")
    new_before = plain["metrics"]["new/before/accuracy"]
    assert probed["metrics"]["new/before/accuracy"] == new_before  # evaluated before setup
    assert probed["metrics"]["new/after/accuracy"] > plain["metrics"]["new/after/accuracy"] + 0.3
    assert probed["compute"]["extra_inference"] > 0
    assert plain["compute"]["extra_inference"] == 0
