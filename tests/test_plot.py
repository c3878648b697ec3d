"""``forgetbench plot``: the files written are valid PNG and SVG images (opened again), for a
task (frontiers, error bars, f0, a WiSE-FT curve) and for one run's curves."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import matplotlib.image
import pytest
from frontier_helpers import store_run, wise_ft_series
from typer.testing import CliRunner

from forgetbench.cli import app
from forgetbench.errors import ForgetbenchError
from forgetbench.plot import plot_run, plot_task
from forgetbench.store import Metric, Store


@pytest.fixture
def toy(db) -> str:
    store = Store(db)
    for seed in range(2):
        loss = (
            Metric("prior", "after", "loss", 1.5, False),
            Metric("prior", "before", "loss", 0.5, False),
        )
        store_run(store, "finetune", "finetune", seed, 0.4 + 0.02 * seed, 0.9, extra=loss)
        store_run(store, "mixcd", "mixcd(mix_ratio=0.25)", seed, 0.7, 0.8 + 0.01 * seed)
        store_run(store, "mixcd", "mixcd(mix_ratio=0.5)", seed, 0.75, 0.7)
        store_run(store, "wise-ft", "wise-ft", seed, 0.6, 0.85, curves=wise_ft_series(0.45, 0.9))
    curves = [("train/loss", step, 2.0 / step) for step in range(1, 11)]
    curves += [(f"mixcd/alpha/label={b}", step, 0.5 - 0.01 * b * step) for b in range(3)
               for step in (2, 4, 6)]  # fmt: skip
    store_run(store, "mixcd", "mixcd(bins=3)", 0, 0.7, 0.8, curves=curves)
    return db


def test_task_plot_is_a_valid_png_and_svg(toy, tmp_path):
    store = Store(toy, read_only=True)
    png = plot_task(store, "toy", tmp_path / "toy.png")
    image = matplotlib.image.imread(png)
    height, width, channels = image.shape
    assert width > 500
    assert height > 300
    assert channels in (3, 4)
    assert image.std() > 0  # something was drawn
    svg = plot_task(store, "toy", tmp_path / "toy.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = svg.read_text()
    for label in ("finetune (1 config)", "mixcd (3 configs)", "f0 (before fine-tuning)"):
        assert label in text
    assert "WiSE-FT alpha grid (1 config)" in text
    assert "wise-ft (1 config + alpha grid)" in text  # its frontier includes the grid points
    off = plot_task(store, "toy", tmp_path / "off.svg", wise_ft_grid=False).read_text()
    assert "wise-ft (1 config)" in off
    assert "WiSE-FT alpha grid (1 config)" in off  # the curve is drawn either way


def test_run_plot_has_loss_and_damage_rate_panels(toy, tmp_path):
    store = Store(toy, read_only=True)
    run_id = len(store.get_runs())
    path = plot_run(store, run_id, tmp_path / "run.svg")
    text = path.read_text()
    assert "training loss" in text
    assert "mix-cd: estimated damage rate per bin" in text
    png = plot_run(store, run_id, tmp_path / "run.png")
    assert matplotlib.image.imread(png).shape[0] > 300
    with pytest.raises(ForgetbenchError, match="stored no curves"):
        plot_run(store, 1, tmp_path / "none.png")


def test_cli_plot_and_its_errors(toy, tmp_path):
    runner = CliRunner()
    out = tmp_path / "board.png"
    result = runner.invoke(app, ["plot", "--task", "toy", "--out", str(out), "--db", toy])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    svg = tmp_path / "off.svg"
    args = ["plot", "--task", "toy", "--out", str(svg), "--no-wise-ft-grid", "--db", toy]
    assert runner.invoke(app, args).exit_code == 0
    assert "wise-ft (1 config)" in svg.read_text()
    assert matplotlib.image.imread(out).size > 0
    on_loss = tmp_path / "loss.svg"
    args = [
        "plot",
        "--task",
        "toy",
        "--out",
        str(on_loss),
        "--metric",
        "loss,accuracy",
        "--db",
        toy,
    ]
    assert runner.invoke(app, args).exit_code == 0
    text = on_loss.read_text()
    assert "prior loss after fine-tuning (lower is better)" in text
    assert "new accuracy after fine-tuning (higher is better)" in text
    assert "finetune (1 config)" in text
    assert "mixcd" not in text  # only finetune stored a prior loss
    cases = {
        ("--task", "toy", "--metric", "los"): "did you mean 'loss'",
        ("--run", "1", "--metric", "loss"): "--metric and --scenario go with --task",
        ("--task", "toy", "--out", str(tmp_path / "x.jpg")): "give a .png or .svg file",
        ("--task", "toy", "--out", str(tmp_path / "no" / "x.png")): "does not exist",
        ("--task", "toy", "--run", "1"): "not both",
        ("--run", "99"): "no run with id 99",
    }
    for args, message in cases.items():
        failed = runner.invoke(app, ["plot", *args, "--db", toy])
        assert failed.exit_code != 0
        assert message in str(failed.exception)
