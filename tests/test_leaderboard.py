"""The leaderboard: aggregation with std and 95% intervals by hand, compute relative to
finetune, CSV/JSON round trips, the 80-column table, markup-safe labels, small values in
``show``, and the SQL view that datasette shows."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from contextlib import closing

import pytest
from typer.testing import CliRunner

from forgetbench.cli import app
from forgetbench.report import leaderboard, t_quantile_975
from forgetbench.store import Metric, Store

LABEL = "mixcd(mix_ratio=0.25,partitions=label) [steps=20,lr=0.0001]"


def store_run(store, label, seed, prior, new, compute=None, cd_rate=3.7e-5):
    run_id = store.start_run(
        task="toy",
        task_version="1",
        family="text-classification",
        prior_metric="accuracy",
        new_metric="accuracy",
        methods=label,
        config={"methods": [{"name": label.split("(")[0], "config": {}}]},
        config_hash=f"hash-{label}",
        seed=seed,
        model="m",
        data_fingerprints={},
        versions={},
    )
    store.finish_run(
        run_id,
        [
            Metric("prior", "after", "accuracy", prior),
            Metric("new", "after", "accuracy", new),
            Metric("prior", "derived", "forgetting", 0.9 - prior, False),
            Metric("prior", "derived", "cd_rate", cd_rate, False),
        ],
        compute=compute or {"forwarded": 640, "extra_inference": 0, "wall_seconds": 10.0},
    )
    return run_id


@pytest.fixture
def toy(db) -> str:
    store = Store(db)
    for seed, prior in enumerate((0.70, 0.72, 0.77)):
        store_run(store, "finetune", seed, prior - 0.2, 0.90)
        compute = {"forwarded": 640, "extra_inference": 320, "wall_seconds": 25.0}
        store_run(store, LABEL, seed, prior, 0.80 + 0.01 * seed, compute)
    return db


def test_aggregation_std_interval_and_relative_compute_by_hand(toy):
    rows = {row.methods: row for row in leaderboard(Store(toy, read_only=True))}
    row = rows[LABEL]
    values = [0.70, 0.72, 0.77]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert row.mean("prior_after") == pytest.approx(mean)
    assert row.std("prior_after") == pytest.approx(std)
    assert row.ci95("prior_after") == pytest.approx(4.303 * std / math.sqrt(3))
    assert row.mean("compute_x") == pytest.approx((640 + 320) / 640)
    assert row.mean("wall_x") == pytest.approx(2.5)
    assert rows["finetune"].mean("compute_x") == pytest.approx(1.0)
    assert math.isnan(rows["finetune"].ci95("missing"))


def test_wall_columns_leave_out_the_shared_cache_builds(db):
    store = Store(db)
    # seed 0's finetune trained stage 0 (90 of its 100 s); the other runs found it cached, and
    # a run stored before cache_seconds existed counts whole
    for seed, wall, cached in ((0, 100.0, 90.0), (1, 10.0, 0.0), (2, 10.0, None)):
        compute = {"forwarded": 640, "wall_seconds": wall}
        if cached is not None:
            compute["cache_seconds"] = cached
        store_run(store, "finetune", seed, 0.5, 0.9, compute)
        store_run(store, LABEL, seed, 0.7, 0.8, {"forwarded": 640, "wall_seconds": 20.0})
    rows = {row.methods: row for row in leaderboard(Store(db, read_only=True))}
    assert rows["finetune"].mean("wall_seconds") == pytest.approx(10.0)
    assert rows[LABEL].mean("wall_x") == pytest.approx(2.0)


def test_t_quantiles():
    assert t_quantile_975(1) == pytest.approx(12.706)
    assert t_quantile_975(30) == pytest.approx(2.042)
    assert t_quantile_975(60) == pytest.approx(2.000, abs=1e-3)
    assert t_quantile_975(10_000) == pytest.approx(1.960, abs=1e-3)


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_json_and_csv_round_trip(toy):
    as_json = json.loads(invoke("leaderboard", "--db", toy, "-f", "json"))
    as_csv = list(csv.DictReader(io.StringIO(invoke("leaderboard", "--db", toy, "-f", "csv"))))
    assert [r["methods"] for r in as_json] == [r["methods"] for r in as_csv] == [LABEL, "finetune"]
    for record, line in zip(as_json, as_csv, strict=True):
        for key, value in record.items():
            if isinstance(value, float):
                assert float(line[key]) == pytest.approx(value)
            elif isinstance(value, bool):
                assert line[key] == str(value)
            else:
                assert line[key] == str(value)
    assert as_json[0]["prior_after_ci95"] == pytest.approx(
        4.303 * as_json[0]["prior_after_std"] / math.sqrt(3), abs=1e-5
    )


def test_table_fits_80_columns_with_compact_cells_and_a_footnote(toy):
    output = invoke("leaderboard", "--db", toy)
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 80
    text = " ".join(output.split())
    assert "0.730±0.036" in text  # mean and std of 0.70, 0.72, 0.77
    assert "[steps=20,lr=0.0001]" in text  # not swallowed as markup
    assert "prior/after: the prior task's main metric after fine-tuning" in text
    assert "± standard deviation over seeds" in text
    assert "not shown for width:" in text  # the compute columns did not fit


def test_columns_and_ci_options(toy):
    output = invoke("leaderboard", "--db", toy, "--columns", "prior_after,compute_x", "--ci")
    text = " ".join(output.split())
    assert "compute ×ft" in text
    assert "new/after" not in text.split("±")[0]  # only the chosen columns
    half = 4.303 * 0.0360555 / math.sqrt(3)
    assert f"0.730±{half:.3f}" in text
    assert "95% Student t interval" in text
    output = invoke("leaderboard", "--db", toy, "--columns", "prior_after,rehearsal_precision")
    # a method's column is footnoted with its LeaderboardColumn.definition
    footnote = "rehearsal prec.: share of the rehearsed prior samples that were collateral damage"
    assert footnote in " ".join(output.split())
    result = CliRunner().invoke(app, ["leaderboard", "--db", toy, "--columns", "prior_aftr"])
    assert result.exit_code != 0
    assert "did you mean 'prior_after'" in str(result.exception)


def test_show_prints_small_values(toy):
    text = invoke("show", "2", "--db", toy)
    assert "3.7e-05" in text
    assert "[steps=20,lr=0.0001]" in text


def test_show_summarises_each_series_by_its_first_and_last_point(db):
    from frontier_helpers import store_run

    curves = [("train/loss", step, 3.0 - step / 10) for step in (3, 1, 2)]  # stored unsorted
    curves += [("mixcd/alpha/label=0", step, 0.5 + step / 100) for step in (0, 10, 20)]
    run_id = store_run(Store(db), "mixcd", "mixcd", 0, 0.7, 0.8, curves=curves)
    lines = [
        " ".join(line.split()) for line in invoke("show", str(run_id), "--db", db).splitlines()
    ]
    assert "│ mixcd/alpha/label=0 │ 3 │ 0.5000 @0 │ 0.7000 @20 │" in lines
    assert "│ train/loss │ 3 │ 2.9000 @1 │ 2.7000 @3 │" in lines
    bare = store_run(Store(db), "finetune", "finetune", 0, 0.5, 0.9)
    assert "series" not in invoke("show", str(bare), "--db", db)


def test_sql_view_matches_the_leaderboard(toy):
    with closing(sqlite3.connect(toy)) as connection:
        connection.row_factory = sqlite3.Row
        rows = {
            row["methods"]: dict(row) for row in connection.execute("SELECT * FROM leaderboard")
        }
    board = {row.methods: row for row in leaderboard(Store(toy, read_only=True))}
    assert set(rows) == set(board)
    for label, row in rows.items():
        assert row["seeds"] == 3
        assert row["prior_after_mean"] == pytest.approx(board[label].mean("prior_after"))
        assert row["new_after_max"] == pytest.approx(max(board[label].values["new_after"]))
        assert row["cd_rate_mean"] == pytest.approx(3.7e-5)


def test_the_view_counts_a_rerun_seed_once_and_no_failed_run(toy):
    store = Store(toy)
    store_run(store, "finetune", 0, 0.1, 0.1)  # rerun of seed 0: replaces the first
    failed = store.start_run(**{**store.get_run(1), "id": None, "status": "running"})
    store.fail_run(failed, "boom")
    with closing(sqlite3.connect(toy)) as connection:
        seeds, prior = connection.execute(
            "SELECT seeds, prior_after_min FROM leaderboard WHERE methods = 'finetune'"
        ).fetchone()
    assert seeds == 3
    assert prior == pytest.approx(0.1)


def test_the_view_shows_each_tasks_current_version_only(toy):
    """Runs of an older task version (other data or protocol) stay out of the view, as they
    stay out of ``forgetbench leaderboard``; the view names the version it shows."""
    query = "SELECT methods, task_version, seeds FROM leaderboard ORDER BY methods"
    with closing(sqlite3.connect(toy)) as connection:
        assert connection.execute(query).fetchall() == [("finetune", "1", 3), (LABEL, "1", 3)]
    store = Store(toy)
    newer = store_run(store, "finetune", 0, 0.5, 0.5)
    store.engine.dispose()
    with closing(sqlite3.connect(toy)) as connection, connection:
        connection.execute("UPDATE runs SET task_version = '2' WHERE id = ?", (newer,))
    with closing(sqlite3.connect(toy)) as connection:
        assert connection.execute(query).fetchall() == [("finetune", "2", 1)]
    [row] = leaderboard(Store(toy, read_only=True))
    assert (row.methods, row.values["prior_after"]) == ("finetune", [0.5])


def test_columns_wider_than_the_terminal_keep_the_labels_and_whole_headers(toy):
    wanted = "prior_after,new_after,forgetting,cd_rate,extra_inference,wall_seconds,compute_x"
    output = invoke("leaderboard", "--db", toy, "--columns", wanted)
    lines = output.splitlines()
    assert max(len(line) for line in lines) > 80  # asked for more than fits: the table widens
    header = next(line for line in lines if "prior/after" in line)
    assert header.split()[:2] == ["methods", "n"]  # the labels are not squeezed out
    assert "…" not in output  # no header cut to an ellipsis
    assert any(line.split()[:2] in (["*", "finetune"], ["finetune", "3"]) for line in lines)


def test_metric_option_shows_another_stored_metric_in_its_direction(db):
    """``--metric loss``: the columns, forgetting and Pareto marks follow the lower-is-better
    loss (on which random is the better config), not the main accuracy (mixcd's); a run that
    did not store the loss is left out, and an unstored name is one error line."""
    from frontier_helpers import store_run

    store = Store(db)
    for seed in range(2):
        for stack, accuracy, loss in (("mixcd", (0.7, 0.8), 0.9), ("random", (0.6, 0.7), 0.5)):
            extra = (
                Metric("prior", "after", "loss", loss + 0.1 * seed, False),
                Metric("new", "after", "loss", loss, False),
                Metric("prior", "before", "loss", 0.4, False),
            )
            store_run(store, stack, stack, seed, *accuracy, extra=extra)
    store_run(store, "finetune", "finetune", 0, 0.2, 0.9)  # stored no loss
    main = {row.methods: row for row in leaderboard(Store(db, read_only=True), "toy")}
    assert {label for label, row in main.items() if row.pareto} == {"mixcd", "finetune"}
    rows = leaderboard(Store(db, read_only=True), "toy", ("loss", "loss"))
    by_label = {row.methods: row for row in rows}
    assert set(by_label) == {"mixcd", "random"}
    random = by_label["random"]
    assert (random.prior_metric, random.prior_higher_is_better) == ("loss", False)
    assert random.values["prior_after"] == [0.5, 0.6]
    assert random.values["forgetting"] == pytest.approx([0.1, 0.2])  # after - before: lower better
    assert [row.methods for row in rows if row.pareto] == ["random"]
    mixed = leaderboard(Store(db, read_only=True), "toy", ("loss", "accuracy"))
    assert {row.methods: row.mean("new_after") for row in mixed} == {"mixcd": 0.8, "random": 0.7}

    text = " ".join(invoke("leaderboard", "--db", db, "-t", "toy", "--metric", "loss").split())
    assert "prior/after: the prior task's loss after fine-tuning" in text
    assert "forgetting: prior/before - prior/after of loss" in text
    assert "as good on both loss" in text
    assert "toy: loss (lower better)" in text
    for args, message in (
        (["--metric", "loss"], "--metric goes with --task"),
        (["-t", "toy", "--metric", "los"], "did you mean 'loss'"),
    ):
        result = CliRunner().invoke(app, ["leaderboard", "--db", db, *args])
        assert result.exit_code != 0
        assert message in str(result.exception)
