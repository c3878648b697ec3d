"""End to end: the real CLI on the offline translation scenario (the real Debian catalogues, a
Marian from a config trained by the core's stage 0), every builtin method at a few steps with
a tiny model and tiny splits."""

import json

import pytest
from e2e_helpers import cli_in

SMALL = [
    "--set", "task.stage0_steps=4",
    "--set", "task.prior_train_size=64",
    "--set", "task.prior_eval_size=8",
    "--set", "task.new_train_size=32",
    "--set", "task.new_eval_size=8",
    "--set", "task.vocab_size=400",
    "--set", "task.d_model=32",
    "--set", "task.heads=2",
    "--set", "task.ffn_dim=64",
    "--set", "task.layers=1",
    "--set", "task.max_target_tokens=12",
    "--set", "task.success_token_accuracy=0.05",
    "--set", "batch_size=8",
    "--steps", "2",
]  # fmt: skip
# Every builtin method once; stacked where they combine (one prior sampler per run).
METHOD_SETS = [
    ["finetune"],
    ["mixcd", "wise-ft"],
    ["lora", "ldifs"],
    ["random", "flow", "l2sp"],
]


@pytest.mark.slow
def test_every_method_runs_on_gettext_mt_through_the_cli(tmp_path):
    cli = cli_in(tmp_path)

    for methods in METHOD_SETS:
        flags = [part for name in methods for part in ("--method", name)]
        done = cli("run", "--task", "gettext-mt", *flags, *SMALL)
        assert done.returncode == 0, (methods, done.stderr)
    board = json.loads(cli("leaderboard", "--format", "json").stdout)
    assert len(board) == len(METHOD_SETS)
    assert {row["prior_metric"] for row in board} == {"bleu"}
    fingerprints = set()
    for run_id in range(1, len(METHOD_SETS) + 1):
        run = json.loads(cli("show", str(run_id), "--json").stdout)
        assert run["status"] == "ok"
        assert run["family"] == "translation"
        assert run["model"].startswith("stage-0:gettext-mt@")
        metrics = run["metrics"]
        for split, pairs in (("prior", ("en-de", "en-fr")), ("new", ("en-es",))):
            for pair in pairs:
                assert 0.0 <= metrics[f"{split}/after/chrf_{pair}"] <= 100.0
        mean = (metrics["prior/after/bleu_en-de"] + metrics["prior/after/bleu_en-fr"]) / 2
        assert metrics["prior/after/bleu"] == pytest.approx(mean)
        fingerprints.add(run["data_fingerprints"]["catalogues"])
        assert "coreutils=" in run["data_fingerprints"]["debian_packages"]
    assert len(fingerprints) == 1  # the same catalogues read by every run
