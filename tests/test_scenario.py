"""Runs of one task with other task settings or another ``--prior-model`` are another problem
(another f0, other data): a frontier, its f0 point and the leaderboard's Pareto marks use the
runs of one scenario, and ``--scenario`` picks it (hand-made runs; the mock ``tiny`` task of the
test plugin where the task's defaults matter)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

import pytest
from frontier_helpers import store_run
from typer.testing import CliRunner

from forgetbench.cli import app
from forgetbench.errors import ForgetbenchError
from forgetbench.frontier import collect
from forgetbench.report import leaderboard
from forgetbench.scenario import describe, parse_scenario
from forgetbench.store import Store
from forgetbench.testing import TinyConfig

DEFAULTS = asdict(TinyConfig())
SMALL_EVAL = {**DEFAULTS, "prior_eval_size": 50}


def two_scenarios(store: Store, task: str, first: dict, second: dict) -> None:
    """finetune and mixcd on seeds 0-1 in scenario ``first`` (f0 at 0.8, 0.1), then the same
    in ``second``, stored later (another f0: 0.6, 0.2)."""
    for config, before, shift in ((first, (0.8, 0.1), 0.0), (second, (0.6, 0.2), 0.1)):
        for seed in range(2):
            for stack, prior, new in (("finetune", 0.5, 0.7), ("mixcd", 0.7, 0.65)):
                store_run(store, stack, stack, seed, prior - shift, new, before=before,
                          task=task, task_config=config, config_hash=f"{stack}{shift}")  # fmt: skip


def test_a_frontier_and_its_f0_come_from_one_scenario(db, caplog):
    store = Store(db)
    two_scenarios(store, "toy", {"size": 1}, {"size": 2})  # toy is not installed: the latest
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        points = collect(store, "toy")
    assert set(points.f0.values()) == {(0.6, 0.2)}
    assert points.methods["mixcd"].configs == {"mixcd": {0: (0.6, 0.65), 1: (0.6, 0.65)}}
    assert "left out: task.size=1 (4 runs)" in caplog.text
    first = (json.dumps({"size": 1}), None)
    chosen = collect(store, "toy", scenario=first)
    assert set(chosen.f0.values()) == {(0.8, 0.1)}
    assert chosen.methods["finetune"].configs == {"finetune": {0: (0.5, 0.7), 1: (0.5, 0.7)}}


@pytest.mark.usefixtures("fixtures_plugin")
def test_the_tasks_defaults_are_the_default_scenario_even_when_not_the_latest(db):
    store = Store(db)
    two_scenarios(store, "tiny", DEFAULTS, SMALL_EVAL)
    assert set(collect(store, "tiny").f0.values()) == {(0.8, 0.1)}
    small = parse_scenario("tiny", ["task.prior_eval_size=50"])
    assert describe("tiny", small) == "task.prior_eval_size=50"
    assert set(collect(store, "tiny", scenario=small).f0.values()) == {(0.6, 0.2)}
    assert parse_scenario("tiny", ["defaults"]) == parse_scenario("tiny", [])
    with_model = parse_scenario("tiny", ["prior_model=/models/f0"])
    assert describe("tiny", with_model) == "prior_model=/models/f0"
    with pytest.raises(ForgetbenchError, match=r"no finished runs of task 'tiny' in scenario"):
        collect(store, "tiny", scenario=with_model)
    for bad, message in (
        (["task.prior_eval_sise=50"], "did you mean 'prior_eval_size'"),
        (["task.prior_classes=1"], "need at least 2 classes"),
        (["prior_eval_size=50"], "give task.KEY=VALUE"),
    ):
        with pytest.raises(ForgetbenchError, match=message):
            parse_scenario("tiny", bad)


def test_leaderboard_pareto_marks_are_within_a_scenario(db):
    store = Store(db)
    two_scenarios(store, "toy", {"size": 1}, {"size": 2})
    marked = {row.config_hash: row.pareto for row in leaderboard(store, "toy")}
    # mixcd at size 1 (0.7, 0.65) dominates mixcd at size 2 (0.6, 0.65), and finetune at size
    # 1 (0.5, 0.7) finetune at size 2 (0.4, 0.7): each scenario has its own front
    assert marked == {"mixcd0.0": True, "finetune0.0": True, "mixcd0.1": True, "finetune0.1": True}


@pytest.mark.usefixtures("fixtures_plugin")
def test_cli_scenario_option_picks_the_runs(db, tmp_path):
    two_scenarios(Store(db), "tiny", DEFAULTS, SMALL_EVAL)
    runner = CliRunner()
    base = ["compare", "mixcd", "finetune", "--task", "tiny", "--db", db, "--resamples", "100"]
    default = runner.invoke(app, base)
    small = runner.invoke(app, [*base, "--scenario", "task.prior_eval_size=50"])
    assert default.exit_code == 0, default.output
    assert small.exit_code == 0, small.output
    # the reference point: each scenario's nadir (its f0 included) pushed out by 10%
    assert "reference point prior 0.47, new 0.04" in " ".join(default.output.split())
    assert "reference point prior 0.38, new 0.15" in " ".join(small.output.split())
    out = tmp_path / "small.svg"
    args = ["plot", "-t", "tiny", "--db", db, "-o", str(out), "--scenario", "prior_model=x"]
    missing = runner.invoke(app, args)
    assert missing.exit_code != 0
    assert "stored: defaults (4 runs); task.prior_eval_size=50 (4 runs)" in str(missing.exception)
    assert not out.exists()


def test_one_value_in_two_spellings_is_one_scenario(db, caplog):
    store = Store(db)
    store_run(store, "finetune", "finetune", 0, 0.5, 0.7, task_config={"rate": 1, "ids": [1]})
    store_run(store, "mixcd", "mixcd", 0, 0.6, 0.7, task_config={"rate": 1.0, "ids": [1.0]})
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        points = collect(store, "toy")
    assert set(points.methods) == {"finetune", "mixcd"}
    assert "left out" not in caplog.text


@pytest.mark.usefixtures("fixtures_plugin")
def test_descriptions_are_what_scenario_takes_and_name_unset_settings():
    listed = (json.dumps({**DEFAULTS, "prior_classes": 5, "hidden": 16}, sort_keys=True), "f0")
    assert describe("tiny", listed) == "task.hidden=16 task.prior_classes=5 prior_model=f0"
    assert parse_scenario("tiny", describe("tiny", listed).split()) == listed
    older = {k: v for k, v in DEFAULTS.items() if k != "hidden"}  # stored before `hidden`
    assert describe("tiny", (json.dumps(older), None)) == "task.hidden=<unset>"


@pytest.mark.usefixtures("fixtures_plugin")
def test_a_method_missing_from_the_chosen_scenario_says_so(db):
    store = Store(db)
    store_run(store, "finetune", "finetune", 0, 0.5, 0.7, task="tiny", task_config=DEFAULTS)
    store_run(store, "mixcd", "mixcd", 0, 0.6, 0.7, task="tiny", task_config=SMALL_EVAL)
    points = collect(store, "tiny")
    with pytest.raises(
        ForgetbenchError, match=r"in scenario defaults .*other scenarios: 1 more runs, --scenario"
    ):
        points.method("mixcd")


def test_a_task_whose_config_has_a_required_setting_has_no_default_scenario(db, monkeypatch):
    import dataclasses

    import forgetbench.registry
    from forgetbench.testing import TinyTextTask, registry_with

    @dataclasses.dataclass
    class NeedsFolder:
        data_dir: str

    class FolderTask(TinyTextTask):
        metadata = dataclasses.replace(TinyTextTask.metadata, name="toy")
        Config = NeedsFolder

    monkeypatch.setattr(forgetbench.registry, "_cached", registry_with(tasks=(FolderTask,)))
    store = Store(db)
    two_scenarios(store, "toy", {"data_dir": "a"}, {"data_dir": "b"})
    points = collect(store, "toy")  # the latest run's scenario, described by what differs
    assert set(points.f0.values()) == {(0.6, 0.2)}
    assert points.scenario == "task.data_dir=b"


@pytest.mark.usefixtures("fixtures_plugin")
def test_the_leaderboard_has_a_table_per_scenario_defaults_first(db, tmp_path):
    two_scenarios(Store(db), "tiny", SMALL_EVAL, DEFAULTS)  # the defaults stored last
    result = CliRunner().invoke(app, ["leaderboard", "--task", "tiny", "--db", db])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert text.index("tiny [defaults]:") < text.index("tiny [task.prior_eval_size=50]:")
    one = str(tmp_path / "one.db")
    store_run(Store(one), "finetune", "finetune", 0, 0.5, 0.7, task="tiny", task_config=DEFAULTS)
    single = CliRunner().invoke(app, ["leaderboard", "--task", "tiny", "--db", one])
    assert "tiny: accuracy" in single.output  # one scenario: the title as it always was
    assert "[defaults]" not in single.output
