"""Equal rehearsal budget (``forgetbench budget``): the samples random rehearsal needs to match
each mix-cd config, against a hand-computed example in both metric directions, the bounds at
the edges of the swept range, the paired bootstrap, and the command on a tiny store."""

from __future__ import annotations

import pytest
from frontier_helpers import store_run
from typer.testing import CliRunner

from forgetbench.budget import Bound, budget, censored_interval, envelope, samples_to_reach
from forgetbench.cli import app
from forgetbench.errors import ForgetbenchError
from forgetbench.store import Metric, Store

# random's curve, the same on both seeds: (rehearsed samples, prior/after accuracy).
# 300 samples do worse than 200 (seed noise), so its monotone envelope is 100, 200, 400.
RANDOM = {0.1: (100, 0.60), 0.2: (200, 0.64), 0.3: (300, 0.62), 0.4: (400, 0.70)}
# mix-cd: (rehearsed, prior/after on seed 0, on seed 1)
MIXCD = {0.02: (20, 0.57, 0.59), 0.05: (50, 0.66, 0.68), 0.1: (100, 0.71, 0.73)}


def test_envelope_and_interpolation_by_hand():
    curve = list(RANDOM.values())
    assert envelope(curve) == [(100, 0.60), (200, 0.64), (400, 0.70)]
    # 0.67 is half way from 0.64 (200 samples) to 0.70 (400 samples): 300
    assert samples_to_reach(curve, 0.67) == Bound("=", pytest.approx(300.0))
    assert samples_to_reach(curve, 0.64) == Bound("=", pytest.approx(200.0))
    assert samples_to_reach(curve, 0.70) == Bound("=", pytest.approx(400.0))
    assert samples_to_reach(curve, 0.55) == Bound("<", 100)  # the smallest budget does it
    assert samples_to_reach(curve, 0.72) == Bound(">", 400)  # never reached
    # a larger budget that does worse is not on the envelope but bounds the swept range
    assert samples_to_reach([(100, 0.6), (500, 0.5)], 0.65) == Bound(">", 500)
    # at equal samples the better config counts
    assert envelope([(100, 0.5), (100, 0.6)]) == [(100, 0.6)]


def test_censored_interval_ends_are_the_inverted_cdf_order_statistics():
    """2000 outcomes 1..2000 at 95%: the 50th and the 1950th (numpy's inverted CDF), not the
    51st a float rounding of 2.5% of 2000 would give."""
    import numpy as np

    values = [float(i) for i in range(1, 2001)]
    low, high = censored_interval([Bound("=", v) for v in values])
    expected = np.percentile(values, [2.5, 97.5], method="inverted_cdf")
    assert (low.value, high.value) == (50.0, 1950.0) == tuple(expected)


def test_censored_interval_puts_bounds_at_the_ends():
    exact = [Bound("=", v) for v in (1.0, 2.0, 3.0)]
    assert censored_interval(exact * 10) == (Bound("=", 1.0), Bound("=", 3.0))
    with_bounds = [Bound("<", 9.0)] * 10 + exact * 30 + [Bound(">", 0.5)] * 10
    # a '<' bound sorts below every exact value and a '>' above, whatever their numbers
    assert censored_interval(with_bounds) == (Bound("<", 9.0), Bound(">", 0.5))
    assert censored_interval(with_bounds, level=0.5) == (Bound("=", 1.0), Bound("=", 3.0))
    assert Bound(">", 4.0).text() == ">4.00"
    assert Bound("=", 6.0).text(0) == "6"


def make_store(db, lower_is_better: bool = False) -> Store:
    """RANDOM and MIXCD on seeds 0 and 1 (and a finetune run); with ``lower_is_better`` the
    prior metric is stored as an error rate (1 - accuracy), lower is better."""
    store = Store(db)

    def value(accuracy):
        return 1 - accuracy if lower_is_better else accuracy

    higher = (not lower_is_better, True)
    for seed in range(2):
        for ratio, (rehearsed, prior) in RANDOM.items():
            store_run(store, "random", f"random(mix_ratio={ratio})", seed, value(prior), 0.8,
                      higher=higher, derived={"rehearsed": rehearsed})  # fmt: skip
        for ratio, (rehearsed, *prior) in MIXCD.items():
            store_run(store, "mixcd", f"mixcd(mix_ratio={ratio})", seed, value(prior[seed]), 0.8,
                      higher=higher, derived={"rehearsed": rehearsed})  # fmt: skip
        store_run(store, "finetune", "finetune", seed, value(0.4), 0.9, higher=higher)
    return store


@pytest.mark.parametrize("lower_is_better", [False, True])
def test_budget_by_hand_in_both_directions(db, lower_is_better):
    result = budget(make_store(db, lower_is_better), "toy", "mixcd", "random", resamples=400)
    assert result.seeds == [0, 1]
    rows = {m.label: m for m in result.matches}
    middle = rows["mixcd(mix_ratio=0.05)"]
    # mean prior 0.67: random needs 300 samples, 6x mix-cd's 50
    assert middle.prior == pytest.approx(1 - 0.67 if lower_is_better else 0.67)
    assert middle.needed == Bound("=", pytest.approx(300.0))
    assert middle.ratio == Bound("=", pytest.approx(6.0))
    # seed 0 alone: 0.66 -> 200 + 200/3 samples, ratio 16/3; seed 1: 0.68 -> 400/3 * 2.5 ...
    seed0, seed1 = middle.per_seed[0], middle.per_seed[1]
    assert seed0.value == pytest.approx((200 + 200 / 3) / 50)
    assert seed1.value == pytest.approx((200 + 400 / 3) / 50)
    # two seeds: resamples are {0,0}, {0,1} or {1,1}; the 95% interval spans the extremes
    low, high = middle.interval
    assert low.value == pytest.approx(seed0.value)
    assert high.value == pytest.approx(seed1.value)
    # mean 0.72 beyond random's best 0.70: not reached within 400 samples, ratio > 4
    top = rows["mixcd(mix_ratio=0.1)"]
    assert top.needed == Bound(">", 400)
    assert top.ratio == Bound(">", pytest.approx(4.0))
    assert top.interval == (Bound(">", pytest.approx(4.0)), Bound(">", pytest.approx(4.0)))
    # mean 0.58 below random's smallest budget (100 samples, 0.60): ratio < 100 / 20
    bottom = rows["mixcd(mix_ratio=0.02)"]
    assert bottom.needed == Bound("<", 100)
    assert bottom.ratio == Bound("<", pytest.approx(5.0))
    on_envelope = [label for label, _, _, hull in result.curve if hull]
    assert "random(mix_ratio=0.3)" not in on_envelope
    assert len(on_envelope) == 3


def test_budget_reads_the_runs_once(db, monkeypatch):
    store = make_store(db)
    reads = []
    get_runs = store.get_runs
    monkeypatch.setattr(store, "get_runs", lambda **kw: reads.append(kw) or get_runs(**kw))
    result = budget(store, "toy", "mixcd", "random", resamples=50)
    assert len(result.matches) == len(MIXCD)
    assert reads == [{"status": "ok", "task": "toy"}]


def test_budget_on_another_prior_metric_uses_its_values_and_direction(db):
    """The curve stored as an extra metric ``error`` (1 - accuracy, lower is better) and a flat
    main metric: --metric error gives the by-hand ratios, the main metric none of them."""
    store = Store(db)
    runs = [("random", RANDOM[r][0], r, RANDOM[r][1], RANDOM[r][1]) for r in RANDOM]
    runs += [("mixcd", MIXCD[r][0], r, MIXCD[r][1], MIXCD[r][2]) for r in MIXCD]
    for seed in range(2):
        for stack, rehearsed, ratio, *accuracy in runs:
            error = (Metric("prior", "after", "error", 1 - accuracy[seed], False),)
            store_run(store, stack, f"{stack}(mix_ratio={ratio})", seed, 0.5, 0.8,
                      derived={"rehearsed": rehearsed}, extra=error)  # fmt: skip
    result = budget(store, "toy", "mixcd", "random", resamples=200, metric="error")
    assert result.task.prior_metric == "error"
    assert result.task.higher[0] is False
    middle = {m.label: m for m in result.matches}["mixcd(mix_ratio=0.05)"]
    assert middle.prior == pytest.approx(1 - 0.67)
    assert middle.ratio == Bound("=", pytest.approx(6.0))
    flat = budget(store, "toy", "mixcd", "random", resamples=200)
    assert {m.label: m for m in flat.matches}["mixcd(mix_ratio=0.05)"].ratio != middle.ratio
    args = ["budget", "mixcd", "random", "-t", "toy", "--db", db, "--resamples", "200"]
    text = " ".join(CliRunner().invoke(app, [*args, "--metric", "error"]).output.split())
    assert "for the prior/after error of mixcd's" in text
    assert "300 6.00" in text
    for bad, message in (("errr", "did you mean 'error'"), ("a,b", "one prior metric name")):
        with pytest.raises(ForgetbenchError, match=message):
            budget(store, "toy", "mixcd", "random", metric=bad)


def test_budget_interval_is_reproducible_and_paired(db):
    store = make_store(db)
    first = budget(store, "toy", "mixcd", "random", resamples=300, seed=3)
    again = budget(store, "toy", "mixcd", "random", resamples=300, seed=3)
    assert [m.interval for m in first.matches] == [m.interval for m in again.matches]


def test_budget_pairs_the_seeds_so_a_shared_seed_effect_cancels(db):
    """Every seed moves both methods by the same large amount; on each seed random needs
    exactly twice mix-cd's samples. Paired draws (one resample of seeds for both methods) give
    the ratio 2 in every draw; drawing each method's seeds on its own would not."""
    store = Store(db)
    for seed in range(6):
        base = 0.2 * (seed % 2)  # shared on a seed, far larger than the methods' gap
        for ratio, rehearsed, gain in ((0.1, 100, 0.5), (0.2, 200, 0.6), (0.4, 400, 0.7)):
            store_run(store, "random", f"random(mix_ratio={ratio})", seed, base + gain, 0.8,
                      derived={"rehearsed": rehearsed})  # fmt: skip
        store_run(store, "mixcd", "mixcd(mix_ratio=0.1)", seed, base + 0.6, 0.8,
                  derived={"rehearsed": 100})  # fmt: skip
    [only] = budget(store, "toy", "mixcd", "random", resamples=500).matches
    assert only.ratio == Bound("=", pytest.approx(2.0))
    assert only.interval == (Bound("=", pytest.approx(2.0)), Bound("=", pytest.approx(2.0)))
    assert list(only.per_seed.values()) == [Bound("=", pytest.approx(2.0))] * 6


def test_a_config_that_rehearsed_nothing_has_no_ratio(db):
    store = make_store(db)
    for seed in (0, 1):
        store_run(store, "mixcd", "mixcd(mix_ratio=0.0)", seed, 0.5, 0.9,
                  derived={"rehearsed": 0})  # fmt: skip
    matches = {m.label: m for m in budget(store, "toy", "mixcd", "random", resamples=100).matches}
    empty = matches["mixcd(mix_ratio=0.0)"]
    assert (empty.rehearsed, empty.ratio, empty.interval) == (0, None, None)
    assert matches["mixcd(mix_ratio=0.05)"].ratio is not None  # the others are unaffected


def test_budget_refuses_what_it_cannot_answer(db):
    store = make_store(db)
    with pytest.raises(ForgetbenchError, match="stored no rehearsed count"):
        budget(store, "toy", "finetune", "random")
    with pytest.raises(ForgetbenchError, match="two different methods"):
        budget(store, "toy", "random", "random")
    with pytest.raises(ForgetbenchError, match="did you mean 'mixcd'"):
        budget(store, "toy", "mixd", "random")
    store_run(store, "random", "random(mix_ratio=0.9)", 7, 0.7, 0.8, derived={"rehearsed": 9})
    store_run(store, "mixcd", "mixcd(mix_ratio=0.9)", 8, 0.7, 0.8, derived={"rehearsed": 9})
    lonely = budget(store, "toy", "mixcd", "random", resamples=100)
    assert lonely.seeds == [0, 1]  # seeds 7 and 8 are not shared, so not used
    assert "mixcd(mix_ratio=0.9)" not in [m.label for m in lonely.matches]
    assert "random(mix_ratio=0.9)" not in [label for label, *_ in lonely.curve]


def test_cli_budget_prints_the_ratios(db):
    make_store(db)
    args = ["budget", "mixcd", "random", "--task", "toy", "--db", db, "--resamples", "200"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "rehearsed samples random needs for the prior/after accuracy of mixcd's" in text
    for cell in ("300 6.00 5.33..6.67", ">400 >4.00", "<100 <5.00", "seed 1"):
        assert cell in text
    assert "mixcd(mix_ratio=0.1): random does not reach its prior/after" in text
    assert max(len(line) for line in result.output.splitlines()) <= 80
    failed = CliRunner().invoke(app, ["budget", "finetune", "random", "--task", "toy", "--db", db])
    assert failed.exit_code != 0
    assert "stored no rehearsed count" in str(failed.exception)
