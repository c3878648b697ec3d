"""The third-party example distributions under examples/ work as installed plugins: listed with
their distribution, and run end to end through the real CLI on the offline text scenario
(``make setup`` installs them; ``pip install -e examples/<name>`` does it by hand).

- forgetbench-ewc: ``--method ewc --method wise-ft`` on ``wordnet``, its Fisher's forward and
  backward passes in the run's compute, the stacked row on the leaderboard;
- forgetbench-fortunes: ``--task fortunes --method finetune``, on the stage-0 model it shares with
  ``wordnet`` (same family, prior data and budget: one cache entry);
- forgetbench-lexreg (a new family: regression, lower-is-better main metric):
  ``--task lexreg-depth --method mixcd``, its forgetting signed for a lower-is-better metric.
"""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from forgetbench.registry import get_registry
from forgetbench.store import Store

EXAMPLES = Path(__file__).parents[1] / "examples"
DISTRIBUTIONS = {
    "forgetbench-ewc": ("ewc", "method"),
    "forgetbench-fortunes": ("fortunes", "task"),
    "forgetbench-lexreg": ("lexreg-depth", "task"),
}
# The small offline settings of test_e2e_offline, with a smaller chatterbot eval split.
SMALL = [
    "--set", "task.stage0_steps=4",
    "--set", "task.prior_train_size=256",
    "--set", "task.prior_eval_size=64",
    "--set", "task.new_eval_fraction=0.05",
    "--set", "batch_size=8",
    "--steps", "4",
]  # fmt: skip
FISHER_SAMPLES = 16


def require_installed(dist: str) -> None:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{dist} is not installed: 'pip install -e examples/{dist}' (make setup does)")


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
def test_each_example_is_a_plugin_of_its_own_distribution(dist):
    require_installed(dist)
    name, kind = DISTRIBUTIONS[dist]
    registry = get_registry(reload=True)
    table = registry.methods if kind == "method" else registry.tasks
    assert table[name].provider == dist
    assert not [p for p in registry.problems if dist in p]
    source = (EXAMPLES / dist / f"{dist.replace('-', '_')}.py").read_text()
    imported = {line.split()[1] for line in source.splitlines() if line.startswith("from forgetb")}
    # forgetbench.api, and for a task of a known family the family package (not its modules)
    assert all(
        name == "forgetbench.api" or re.fullmatch(r"forgetbench_tasks\.\w+", name)
        for name in imported
    ), imported
    assert "import forgetbench" not in source


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("examples")
    return {
        **os.environ,
        "FORGETBENCH_CACHE": str(folder / "cache"),
        "FORGETBENCH_DB": str(folder / "results.db"),
        "COLUMNS": "200",
    }


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "forgetbench", *args],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_ewc_stacked_with_wise_ft_on_wordnet_through_the_cli(env):
    require_installed("forgetbench-ewc")
    listed = cli(env, "list")
    assert any("ewc" in line and "forgetbench-ewc" in line for line in listed.splitlines())
    cli(
        env, "run", "--task", "wordnet", "--method", "ewc", "--method", "wise-ft",
        "--set", f"ewc.fisher_samples={FISHER_SAMPLES}", "--set", "wise-ft.grid=", *SMALL,
    )  # fmt: skip
    [run_id] = [r["id"] for r in Store(env["FORGETBENCH_DB"]).get_runs() if "ewc" in r["methods"]]
    run = json.loads(cli(env, "show", str(run_id), "--json"))
    assert run["status"] == "ok"
    assert run["compute"]["extra_inference"] == FISHER_SAMPLES
    assert run["compute"]["extra_backward"] == FISHER_SAMPLES
    assert run["metrics"]["run/derived/ewc/fisher_total"] > 0
    assert [step for name, step, _ in run["series"] if name == "train/loss"] == [1, 2, 3, 4]
    assert run["versions"]["forgetbench-ewc"] == "0.1.0"
    assert len(run["versions"]["forgetbench-ewc source sha256"]) == 64  # an editable install
    board = json.loads(cli(env, "leaderboard", "--format", "json"))
    labels = [row["methods"].split(" ")[0] for row in board]
    assert labels == [f"ewc(fisher_samples={FISHER_SAMPLES})+wise-ft(grid=[])"]


@pytest.mark.slow
def test_the_fortunes_task_through_the_cli(env):
    require_installed("forgetbench-fortunes")
    cli(env, "run", "--task", "fortunes", "--set", "task.per_category=40", *SMALL)
    board = json.loads(cli(env, "leaderboard", "--format", "json", "--task", "fortunes"))
    assert len(board) == 1
    assert 0.0 <= board[0]["new_after_mean"] <= 1.0
    stage0 = Path(env["FORGETBENCH_CACHE"]) / "stage0"
    [entry] = [p.name for p in stage0.iterdir() if not p.name.startswith(".")]
    models = {r["task"]: r["model"] for r in Store(env["FORGETBENCH_DB"]).get_runs()}
    assert models["fortunes"].endswith("@" + entry[:16])  # wordnet's stage 0, not one of its own
    if "wordnet" in models:  # the ewc test ran first in this module: the same f0
        assert models["wordnet"].split("@")[1] == models["fortunes"].split("@")[1]


@pytest.mark.slow
def test_the_lexreg_family_through_the_cli(env):
    require_installed("forgetbench-lexreg")
    small = ["--set", "task.stage0_steps=200", "--set", "task.prior_train_size=2000"]
    cli(env, "run", "--task", "lexreg-depth", "--method", "mixcd", *small, "--steps", "20")
    [run] = [r for r in Store(env["FORGETBENCH_DB"]).get_runs() if r["task"] == "lexreg-depth"]
    metrics = Store(env["FORGETBENCH_DB"]).get_metrics([run["id"]])[run["id"]]
    # mse is lower-is-better: forgetting is after - before, and the stored direction says so
    forgetting = metrics["prior/after/mse"] - metrics["prior/before/mse"]
    assert metrics["prior/derived/forgetting"] == pytest.approx(forgetting)
    assert metrics["run/derived/pool_size"] > 0
    board = json.loads(cli(env, "leaderboard", "--format", "json", "--task", "lexreg-depth"))
    assert [row["methods"].split(" ")[0] for row in board] == ["mixcd"]
