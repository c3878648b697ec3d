"""Task API v2 holds for every family: the core imports no builtin task and special-cases no
family, old stores keep working, and a non-classification task runs end to end."""

import ast
import json
import sqlite3
from pathlib import Path

import pytest

from forgetbench.report import columns, leaderboard
from forgetbench.runner import RunRequest, execute
from forgetbench.store import RUN_COLUMNS_002, Store
from forgetbench.testing import registry_with

CORE = Path(__file__).parents[1] / "forgetbench"
FAMILY_NAMES = ("text-classification", "qa", "translation", "clip-image", "clip")
MAX_FUNCTION_LINES = 50


def core_modules():
    return sorted(CORE.glob("*.py"))


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_the_core_imports_no_builtin_task_or_plugin(path):
    tree = ast.parse(path.read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (node.names if isinstance(node, ast.Import) else [None])
    ]
    builtin = [name for name in imported if name and name.startswith("forgetbench_")]
    assert not builtin, f"{path.name} imports {builtin}"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_the_core_special_cases_no_family(path):
    """No family name appears as a string literal in the core (docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    literals = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]
    allowed = {
        "store.py": {"text-classification"},  # migration 002's value for rows written before it
        "testing.py": set(FAMILY_NAMES),  # the mock tasks' own metadata
    }
    found = [v for v in literals if v in FAMILY_NAMES and v not in allowed.get(path.name, ())]
    assert not found, f"{path.name} names families {found}"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_no_core_function_is_longer_than_a_screen(path):
    tree = ast.parse(path.read_text())
    long = [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: {long}"


def test_a_store_from_before_migration_002_keeps_working(tmp_path):
    """Rows written before the main-metric columns existed get the classification defaults
    they were computed with, and the leaderboard reads them."""
    path = tmp_path / "old.db"
    store = Store(str(path))
    run_id = store.start_run(
        task="wordnet",
        task_version="1",
        methods="finetune",
        config={"methods": [{"name": "finetune", "config": {}}]},
        config_hash="h",
        seed=0,
        model="m",
        data_fingerprints={},
        versions={},
    )
    from forgetbench.store import Metric

    store.finish_run(
        run_id,
        [Metric("prior", "after", "accuracy", 0.7), Metric("new", "after", "accuracy", 0.6)],
    )
    store.engine.dispose()
    with sqlite3.connect(path) as connection:  # turn it back into a 001-only store
        connection.execute("DROP VIEW leaderboard")  # migration 003's, reads those columns
        connection.execute("DELETE FROM forgetbench_migrations WHERE name > '002'")
        for name in RUN_COLUMNS_002:
            connection.execute(f"ALTER TABLE runs DROP COLUMN {name}")
        connection.execute("DELETE FROM forgetbench_migrations WHERE name = '002_main_metrics'")
    reopened = Store(str(path))
    run = reopened.get_run(run_id)
    assert (run["family"], run["prior_metric"], run["new_metric"]) == (
        "text-classification",
        "accuracy",
        "accuracy",
    )
    [row] = leaderboard(reopened)
    assert row.mean("prior_after") == pytest.approx(0.7)
    assert row.mean("new_after") == pytest.approx(0.6)


def test_a_span_qa_task_runs_end_to_end_with_f1_as_its_main_metric(db):
    registry = registry_with()
    for method in (["finetune"], ["mixcd"]):
        overrides = {"mixcd.partitions": "marker,confidence"} if method == ["mixcd"] else {}
        request = RunRequest(task="tiny-qa", methods=method, steps=5, overrides=overrides)
        execute(request, db=db, registry=registry)
    store = Store(db)
    runs = store.get_runs(status="ok")
    assert [(r["family"], r["prior_metric"], r["new_metric"]) for r in runs] == [
        ("qa", "f1", "f1")
    ] * 2
    stored = store.get_metrics([runs[1]["id"]])[runs[1]["id"]]
    for split in ("prior", "new"):
        for stage in ("before", "after"):
            assert 0.0 <= stored[f"{split}/{stage}/f1"] <= 1.0
            assert stored[f"{split}/{stage}/exact_match"] <= stored[f"{split}/{stage}/f1"]
    forgetting = stored["prior/before/f1"] - stored["prior/after/f1"]
    assert stored["prior/derived/forgetting"] == pytest.approx(forgetting)
    rows = leaderboard(store)
    assert {row.prior_metric for row in rows} == {"f1"}
    # rehearsal precision is mix-cd's column, not the core's
    assert "rehearsal_precision" in [key for key, _, _ in columns(rows, registry)]
    only_finetune = [row for row in rows if row.methods == "finetune"]
    assert "rehearsal_precision" not in [key for key, _, _ in columns(only_finetune, registry)]
    assert json.loads(json.dumps(runs[0]["config"]))["task"] == "tiny-qa"
