"""Pareto frontiers, hypervolume and the bootstrap against hand-computed examples, in both
metric directions; ``forgetbench compare`` on a store of hand-made runs."""

from __future__ import annotations

import math

import pytest
from frontier_helpers import store_run, wise_ft_series
from typer.testing import CliRunner

from forgetbench.cli import app
from forgetbench.errors import ForgetbenchError
from forgetbench.frontier import (
    bootstrap_interval,
    collect,
    compare,
    default_reference,
    front_dominates,
    hypervolume,
    pareto_front,
    parse_metrics,
    summary,
    verdict,
)
from forgetbench.report import leaderboard
from forgetbench.store import Metric, Store

# Three points on a staircase and one inside it. Higher is better on both axes:
# the front is (0.9, 0.1), (0.5, 0.5), (0.1, 0.9); above (0, 0) the area they dominate is
# 0.9 * 0.1 + 0.5 * (0.5 - 0.1) + 0.1 * (0.9 - 0.5) = 0.09 + 0.20 + 0.04 = 0.33.
POINTS = [(0.5, 0.5), (0.4, 0.4), (0.1, 0.9), (0.9, 0.1)]


def flip(points, axes):
    """The same points with the given axes turned into 'lower is better' (1 - value)."""
    return [
        tuple(1 - v if flipped else v for v, flipped in zip(p, axes, strict=True)) for p in points
    ]


def test_pareto_front_by_hand_higher_is_better():
    assert pareto_front(POINTS) == [3, 0, 2]  # best prior first


@pytest.mark.parametrize("axes", [(True, True), (True, False), (False, True)])
def test_front_and_hypervolume_are_the_same_in_every_direction(axes):
    higher = tuple(not flipped for flipped in axes)
    points = flip(POINTS, axes)
    reference = flip([(0.0, 0.0)], axes)[0]
    assert pareto_front(points, higher) == [3, 0, 2]
    assert hypervolume(points, reference, higher) == pytest.approx(0.33)


def test_hypervolume_by_hand():
    assert hypervolume(POINTS, (0.0, 0.0)) == pytest.approx(0.33)
    # above (0.2, 0.2) only (0.5, 0.5) counts: (0.9, 0.1) and (0.1, 0.9) are not above it
    assert hypervolume(POINTS, (0.2, 0.2)) == pytest.approx(0.3 * 0.3)
    assert hypervolume([(0.4, 0.4)], (0.0, 0.0)) == pytest.approx(0.16)
    assert hypervolume([], (0.0, 0.0)) == 0.0
    # a dominated point adds nothing
    assert hypervolume([*POINTS, (0.3, 0.3)], (0.0, 0.0)) == pytest.approx(0.33)
    # lower is better on both: errors 0.1 and 0.2 below a reference error of 0.5
    assert hypervolume([(0.1, 0.2)], (0.5, 0.5), (False, False)) == pytest.approx(0.4 * 0.3)


def test_front_dominance_and_verdict():
    better = [(0.6, 0.6), (0.95, 0.1)]
    assert front_dominates(better, [(0.5, 0.5), (0.9, 0.1)])
    assert not front_dominates([(0.5, 0.5)], better)
    assert not front_dominates(better, better)  # identical fronts dominate neither way
    assert verdict(better, [(0.5, 0.5)], (True, True)) == "a"
    assert verdict([(0.5, 0.5)], better, (True, True)) == "b"
    assert verdict([(0.9, 0.1)], [(0.1, 0.9)], (True, True)) == "neither"
    assert verdict([(0.5, 0.5)], [(0.5, 0.5)], (True, True)) == "equal"
    # with lower-is-better new metric, the low-error point wins
    assert verdict([(0.5, 0.2)], [(0.5, 0.4)], (True, False)) == "a"


def test_bootstrap_interval_is_reproducible_under_a_seed():
    values = {0: 0.1, 1: 0.5, 2: 0.2, 3: 0.9, 4: 0.4}

    def mean(seeds):
        return sum(values[s] for s in seeds) / len(seeds)

    first = bootstrap_interval(mean, list(values), resamples=500, seed=7)
    assert first == bootstrap_interval(mean, list(values), resamples=500, seed=7)
    assert first != bootstrap_interval(mean, list(values), resamples=500, seed=8)
    low, high = first
    assert low < mean(list(values)) < high
    assert low >= 0.1  # a mean of resampled values stays within them
    assert high <= 0.9


@pytest.fixture
def toy(db) -> str:
    """mixcd (two configs) beats random (one config) on every one of three seeds."""
    store = Store(db)
    for seed in range(3):
        shift = 0.01 * seed
        store_run(store, "mixcd", "mixcd(mix_ratio=0.25)", seed, 0.70 + shift, 0.80)
        store_run(store, "mixcd", "mixcd(mix_ratio=0.5)", seed, 0.75 + shift, 0.70)
        store_run(store, "random", "random(mix_ratio=0.25)", seed, 0.60 + shift, 0.78)
        store_run(store, "finetune", "finetune", seed, 0.40, 0.90 - shift)
    return db


def test_compare_by_hand(toy):
    points = collect(Store(toy, read_only=True), "toy")
    assert set(points.methods) == {"mixcd", "random", "finetune"}
    assert points.f0_mean() == pytest.approx((0.8, 0.1))
    result = compare(points, "mixcd", "random", reference=(0.5, 0.5), resamples=300)
    seed0 = result.per_seed[0]
    # seed 0: mixcd's front (0.75, 0.7), (0.7, 0.8): 0.25 * 0.2 + 0.2 * 0.1 = 0.07;
    # random's (0.6, 0.78): 0.1 * 0.28 = 0.028
    assert seed0.score_a == pytest.approx(0.07)
    assert seed0.score_b == pytest.approx(0.028)
    assert seed0.difference == pytest.approx(0.042)
    assert [s.verdict for s in result.per_seed] == ["a", "a", "a"]
    assert result.verdict == "a"
    low, high = result.interval_difference
    assert 0 < low <= result.difference <= high
    again = compare(points, "mixcd", "random", reference=(0.5, 0.5), resamples=300)
    assert again.interval_difference == result.interval_difference


def test_compare_pairs_the_seeds_so_a_shared_seed_effect_cancels(db):
    """Every seed moves both methods by the same large amount, and mix-cd's score is 0.01
    above random's on each: the paired interval of the difference is that 0.01, while each
    method's own interval spans the seed effect."""
    store = Store(db)
    for seed in range(6):
        shift = 0.4 * (seed % 2)
        store_run(store, "mixcd", "mixcd", seed, 0.32 + shift, 0.5)
        store_run(store, "random", "random", seed, 0.30 + shift, 0.5)
    points = collect(store, "toy")
    result = compare(points, "mixcd", "random", reference=(0.0, 0.0), resamples=500)
    assert result.interval_difference == pytest.approx((0.01, 0.01))
    low, high = result.interval_a
    assert high - low > 0.05


def test_default_reference_is_below_every_point_and_f0(toy):
    points = collect(Store(toy, read_only=True), "toy")
    prior, new = default_reference(points, ["mixcd", "random"])
    # worst prior 0.60, best 0.80 (f0): 10% of 0.20 below; worst new 0.10 (f0), best 0.80
    assert prior == pytest.approx(0.58)
    assert new == pytest.approx(0.03)


def test_compare_refuses_unknown_methods_and_disjoint_seeds(db):
    store = Store(db)
    store_run(store, "mixcd", "mixcd", 0, 0.7, 0.8)
    store_run(store, "random", "random", 1, 0.6, 0.8)
    points = collect(store, "toy")
    with pytest.raises(ForgetbenchError, match="no seed in common"):
        compare(points, "mixcd", "random")
    with pytest.raises(ForgetbenchError, match="did you mean 'mixcd'"):
        compare(points, "mixd", "random")


def test_cli_compare_prints_the_verdict_and_intervals_in_80_columns(toy):
    result = CliRunner().invoke(
        app, ["compare", "mixcd", "random", "--task", "toy", "--db", toy, "--resamples", "200"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "On the means over 3 seeds, mixcd's frontier dominates random's;" in text
    assert "mixcd scores higher and the 95% interval excludes 0." in text
    assert "per seed:" not in text  # every seed agrees with the means
    assert "A dominates" in text
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.fixture
def wise(db) -> str:
    """wise-ft (one config, its alpha grid 0, 0.5, 1 stored as series) and finetune, 2 seeds.
    Seed s: the grid runs straight from f0 (0.8, 0.1) to (0.45, 0.9 + 0.05 s)."""
    store = Store(db)
    for seed in range(2):
        grid = wise_ft_series(0.45, 0.9 + 0.05 * seed)
        store_run(store, "wise-ft", "wise-ft", seed, 0.6, 0.85, curves=grid)
        store_run(store, "finetune", "finetune", seed, 0.42, 0.9)
    return db


def test_collect_reads_the_wise_ft_grid_as_points_per_seed(wise):
    method = collect(Store(wise, read_only=True), "toy").methods["wise-ft"]
    assert sorted(method.grid["wise-ft"]) == [0.0, 0.5, 1.0]
    assert method.grid["wise-ft"][0.5][1] == pytest.approx((0.625, 0.525))
    assert method.grid["wise-ft"][1.0][0] == pytest.approx((0.45, 0.9))
    assert set(method.candidates()) == {
        "wise-ft",
        "wise-ft @ alpha=0",
        "wise-ft @ alpha=0.5",
        "wise-ft @ alpha=1",
    }
    assert method.describe() == "1+3a"
    assert method.seeds() == {0, 1}
    assert collect(Store(wise, read_only=True), "toy").methods["finetune"].grid == {}
    off = collect(Store(wise, read_only=True), "toy", wise_ft_grid=False).methods["wise-ft"]
    assert set(off.candidates()) == {"wise-ft"}
    assert off.grid == method.grid  # kept for plots, left out of the frontier
    assert off.describe() == "1"


def test_the_wise_ft_grid_extends_the_front_and_stays_paired_by_seed(wise):
    store = Store(wise, read_only=True)
    reference = (0.4, 0.0)
    # without the grid: (0.6, 0.85) alone, 0.2 * 0.85 = 0.17 on every seed
    off = compare(collect(store, "toy", False), "wise-ft", "finetune", reference, resamples=200)
    assert [s.score_a for s in off.per_seed] == pytest.approx([0.17, 0.17])
    # with it, seed 0's front is (0.8, 0.1), (0.625, 0.5), (0.6, 0.85), (0.45, 0.9):
    # 0.4 * 0.1 + 0.225 * 0.4 + 0.2 * 0.35 + 0.05 * 0.05 = 0.2025; seed 1's alpha-0.5 and
    # alpha-1 points are (0.625, 0.525) and (0.45, 0.95):
    # 0.04 + 0.225 * 0.425 + 0.2 * 0.325 + 0.05 * 0.1 = 0.205625
    on = compare(collect(store, "toy"), "wise-ft", "finetune", reference, resamples=200)
    assert [s.score_a for s in on.per_seed] == pytest.approx([0.2025, 0.205625])
    assert [s.score_b for s in on.per_seed] == pytest.approx([0.018, 0.018])  # 0.02 * 0.9
    assert on.score_a > off.score_a
    assert on.score_b == pytest.approx(off.score_b)
    # the default reference also covers the grid points (worst prior 0.42, worst new 0.1)
    assert default_reference(collect(store, "toy"), ["wise-ft", "finetune"])[1] < 0.1


def test_cli_compare_counts_the_wise_ft_grid_unless_told_not_to(wise):
    args = ["compare", "wise-ft", "finetune", "--task", "toy", "--db", wise, "--resamples", "100"]
    on = CliRunner().invoke(app, args)
    assert on.exit_code == 0, on.output
    assert "1+3a" in on.output
    assert "WiSE-FT grid points" in " ".join(on.output.split())
    off = CliRunner().invoke(app, [*args, "--no-wise-ft-grid"])
    assert off.exit_code == 0, off.output
    assert "1+3a" not in off.output
    assert "WiSE-FT grid points" not in " ".join(off.output.split())


def test_metric_names_parse_and_refuse_what_is_not_a_pair():
    assert parse_metrics(None) is None
    assert parse_metrics(" ") is None
    assert parse_metrics("chrf") == ("chrf", "chrf")
    assert parse_metrics("f1, exact_match") == ("f1", "exact_match")
    for bad in ("a,b,c", "a,", ",b"):
        with pytest.raises(ForgetbenchError, match="--metric takes NAME or PRIOR,NEW"):
            parse_metrics(bad)


@pytest.fixture
def two_metrics(db) -> str:
    """mixcd beats random on accuracy (the main metric) on both seeds; on ``loss`` (stored
    lower-is-better) random's points are the better ones."""
    store = Store(db)
    for seed in range(2):
        for stack, accuracy, loss in (
            ("mixcd", (0.7, 0.8), (0.9, 0.9)),
            ("random", (0.6, 0.7), (0.5, 0.6)),
        ):
            extra = (
                Metric("prior", "after", "loss", loss[0] + 0.01 * seed, False),
                Metric("new", "after", "loss", loss[1], False),
                Metric("prior", "before", "loss", 1.0, False),
                Metric("new", "before", "loss", 2.0, False),
            )
            store_run(store, stack, stack, seed, *accuracy, extra=extra)
    return db


def test_collect_and_compare_on_another_metric_use_its_values_and_direction(two_metrics):
    store = Store(two_metrics, read_only=True)
    main = collect(store, "toy")
    assert (main.prior_metric, main.higher) == ("accuracy", (True, True))
    assert compare(main, "mixcd", "random", resamples=200).verdict == "a"
    loss = collect(store, "toy", metrics=("loss", "loss"))
    assert (loss.prior_metric, loss.new_metric, loss.higher) == ("loss", "loss", (False, False))
    assert loss.methods["random"].configs["random"] == {0: (0.5, 0.6), 1: (0.51, 0.6)}
    assert loss.f0_mean() == (1.0, 2.0)
    assert compare(loss, "mixcd", "random", resamples=200).verdict == "b"
    mixed = collect(store, "toy", metrics=("loss", "accuracy"))
    assert mixed.higher == (False, True)
    assert mixed.methods["mixcd"].configs["mixcd"][0] == (0.9, 0.8)


def test_a_metric_no_run_stored_is_one_error_with_the_stored_names(two_metrics):
    store = Store(two_metrics, read_only=True)
    with pytest.raises(
        ForgetbenchError,
        match=r"stored prior/after/los .*did you mean 'loss'.*stored: accuracy, loss",
    ):
        collect(store, "toy", metrics=("los", "loss"))
    result = CliRunner().invoke(
        app, ["compare", "mixcd", "random", "-t", "toy", "--db", two_metrics, "--metric", "a,b,c"]
    )
    assert result.exit_code != 0
    assert str(result.exception) == "--metric takes NAME or PRIOR,NEW (e.g. chrf), got 'a,b,c'"


def test_cli_compare_on_another_metric(two_metrics):
    args = ["compare", "mixcd", "random", "-t", "toy", "--db", two_metrics, "--resamples", "200"]
    main = " ".join(CliRunner().invoke(app, args).output.split())
    assert "mixcd's frontier dominates random's" in main
    result = CliRunner().invoke(app, [*args, "--metric", "loss"])
    assert result.exit_code == 0, result.output
    assert "random's frontier dominates mixcd's" in " ".join(result.output.split())


def test_a_config_is_its_hash_not_its_label(db):
    """Two configs that stored one label (e.g. a task setting older labels left out) stay two,
    told apart by their hash; one config whose runs stored two labels (an operational setting
    such as ``device`` in the label) stays one."""
    store = Store(db)
    for seed in range(3):
        store_run(store, "mixcd", "mixcd", seed, 0.7, 0.6, config_hash="aaaaaaa1")
        store_run(store, "mixcd", "mixcd", seed, 0.4, 0.3, config_hash="bbbbbbb2")
        label = "random [device=cuda]" if seed == 2 else "random"
        store_run(store, "random", label, seed, 0.5, 0.5, config_hash="ccccccc3")
    points = collect(Store(db, read_only=True), "toy")
    assert set(points.methods["mixcd"].configs) == {"mixcd #aaaaaaa", "mixcd #bbbbbbb"}
    assert points.methods["random"].configs == {"random": {s: (0.5, 0.5) for s in range(3)}}
    assert compare(points, "mixcd", "random", resamples=200).verdict == "a"
    rows = leaderboard(Store(db, read_only=True), "toy")
    assert sorted(row.methods for row in rows) == ["mixcd #aaaaaaa", "mixcd #bbbbbbb", "random"]


def test_runs_of_an_older_task_version_are_left_out_with_a_warning(db, caplog):
    store = Store(db)
    for seed in range(2):
        store_run(store, "mixcd", "mixcd", seed, 0.9, 0.9, config_hash="v1", task_version="1")
        store_run(store, "mixcd", "mixcd", seed, 0.4, 0.3, config_hash="v2", task_version="2")
        store_run(store, "random", "random", seed, 0.5, 0.5, task_version="2")
    with caplog.at_level("WARNING", logger="forgetbench"):
        points = collect(Store(db, read_only=True), "toy")
    assert points.methods["mixcd"].configs == {"mixcd": {0: (0.4, 0.3), 1: (0.4, 0.3)}}
    assert "task toy: 2 run(s) of older task versions left out (its current version is 2)" in (
        caplog.text
    )
    assert {row.methods for row in leaderboard(Store(db, read_only=True), "toy")} == {
        "mixcd",
        "random",
    }


def test_equal_fronts_are_equal_however_often_a_point_repeats():
    assert verdict([(0.5, 0.5), (0.5, 0.5)], [(0.5, 0.5)], (True, True)) == "equal"
    assert pareto_front([(0.5, 0.5), (0.6, 0.1), (0.5, 0.5)]) == [1, 0]
    assert not front_dominates([(0.5, 0.5), (0.5, 0.5)], [(0.5, 0.5)])


def test_one_common_seed_gives_no_interval_and_no_claim(db):
    store = Store(db)
    store_run(store, "mixcd", "mixcd", 0, 0.7, 0.6)
    for seed in range(2):
        store_run(store, "random", "random", seed, 0.5, 0.5)
    result = compare(collect(Store(db, read_only=True), "toy"), "mixcd", "random", resamples=200)
    assert all(math.isnan(bound) for bound in result.interval_difference)
    assert "no interval" in summary(result)
    assert "excludes 0" not in summary(result)
    output = CliRunner().invoke(app, ["compare", "mixcd", "random", "-t", "toy", "--db", db])
    assert output.exit_code == 0, output.output
    assert "n/a" in output.output


def test_a_rerun_seed_counts_once_with_its_latest_ok_run(db):
    """Of two ok runs of one config and seed the later one counts, in the frontier and the
    leaderboard alike; a later failed or interrupted run replaces nothing."""
    from forgetbench.store import latest_runs

    store = Store(db)
    store_run(store, "mixcd", "mixcd", 0, 0.5, 0.5)
    rerun = store_run(store, "mixcd", "mixcd", 0, 0.7, 0.6)
    broken = store.start_run(**{**store.get_run(rerun), "id": None, "status": "running"})
    store.fail_run(broken, "boom")
    assert [run["id"] for run in latest_runs(store, "toy")] == [rerun]
    points = collect(Store(db, read_only=True), "toy")
    assert points.methods["mixcd"].configs == {"mixcd": {0: (0.7, 0.6)}}
    [row] = leaderboard(Store(db, read_only=True), "toy")
    assert row.values["prior_after"] == [0.7]


def test_the_verdict_says_where_seeds_disagree_with_the_means(db):
    store = Store(db)
    # mixcd's mean point (0.667, 0.667) dominates random's (0.533, 0.533); seed 2 reverses it
    for seed, (mixcd, random) in enumerate([(0.8, 0.5), (0.8, 0.5), (0.4, 0.6)]):
        store_run(store, "mixcd", "mixcd", seed, mixcd, mixcd)
        store_run(store, "random", "random", seed, random, random)
    result = compare(collect(Store(db, read_only=True), "toy"), "mixcd", "random", resamples=500)
    assert [s.verdict for s in result.per_seed] == ["a", "a", "b"]
    text = summary(result)
    assert text.startswith(
        "On the means over 3 seeds, mixcd's frontier dominates random's (per seed: mixcd"
        " dominates on 2 of 3, random dominates on 1)"
    )
    low, high = result.interval_difference
    assert low < 0 < high  # a resample of seed 2 alone favours random
    assert text.endswith(
        ", but the 95% interval of the score difference includes 0: no clear winner."
    )
