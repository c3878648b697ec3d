"""mix-cd on a planted scenario: a simulated per-sample oracle with known damage rates."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from forgetbench.api import (
    Batch,
    Compute,
    PerSample,
    PriorPredictions,
    Split,
    TaskData,
    TrainConfig,
)
from forgetbench.errors import ForgetbenchError
from forgetbench_plugins.mixcd import (
    CollateralDamageEstimator,
    CollateralDamageSampler,
    MixCD,
    MixCDConfig,
    build_cells,
    quantile_bins,
)
from forgetbench_plugins.random_mixing import RandomConfig, RandomMixing

POOL = 5000
LABELS = 10
RATE_A, RATE_REST = 0.5, 0.05  # bin A (label 0) is damaged 10x as often as the rest


def planted(seed=0, size=POOL):
    """Prior predictions where f0 got everything right, and the task's partitions: labels
    uniform, aux independent of them."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, LABELS, size)
    predictions = PriorPredictions(
        loss=rng.random(size), success=np.ones(size, bool), confidence=rng.random(size)
    )
    return predictions, {"label": labels, "aux": rng.integers(0, 3, size)}


def damage_rate(labels):
    return np.where(labels == 0, RATE_A, RATE_REST)


def fake_context(predictions, schemes, seed=0, train=None):
    task = SimpleNamespace(partitions=lambda data: schemes)
    ctx = SimpleNamespace(
        prior_predictions=lambda: predictions,
        compute=Compute(),
        task=task,
        generator=lambda purpose: np.random.default_rng(seed),
        train=train or TrainConfig(),
        logger=logging.getLogger("forgetbench"),
    )
    examples = [{"id": i} for i in range(len(predictions.loss))]
    data = TaskData(Split("prior_train", examples), Split("e", []), Split("n", []), Split("ne", []))
    return ctx, data


def simulate(method, predictions, schemes, steps=400, per_step=8, seed=1):
    """Drive a rehearsal method through its hooks with an oracle deciding CD per sample."""
    ctx, data = fake_context(predictions, schemes)
    sampler = method.forgetbench_prior_sampler(ctx=ctx, data=data)
    rng = np.random.default_rng(seed)
    oracle = np.random.default_rng(seed + 100)
    for step in range(1, steps + 1):
        index = sampler.sample(per_step, rng)
        damaged = oracle.random(per_step) < damage_rate(schemes["label"][index])
        batch = Batch(
            inputs={},
            ids=torch.as_tensor(index),
            is_prior=torch.ones(per_step, dtype=torch.bool),
            index=torch.as_tensor(index),
        )
        per_sample = PerSample(
            loss=torch.zeros(per_step),
            success=torch.as_tensor(~damaged),
            confidence=torch.ones(per_step),
        )
        if isinstance(method, MixCD):
            method.forgetbench_after_step(
                ctx=ctx, step=step, model=None, batch=batch, per_sample=per_sample
            )
        else:
            method.forgetbench_after_step(batch=batch, per_sample=per_sample)
    return method, ctx


@pytest.mark.parametrize("combine", ["joint", "factorised"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixcd_rehearses_at_least_twice_the_damage_of_random(combine, seed):
    predictions, schemes = planted(seed)
    config = MixCDConfig(partitions=("label", "aux"), combine=combine)
    mixcd, _ = simulate(MixCD(config), predictions, schemes, seed=seed)
    random, _ = simulate(RandomMixing(RandomConfig()), predictions, schemes, seed=seed)
    # Expected: random ~ 0.095; mix-cd at its fixed point ~ 0.29 (samples bin A ~ 53%).
    assert random.monitor.precision == pytest.approx(0.095, abs=0.03)
    assert mixcd.monitor.precision >= 2 * random.monitor.precision


@pytest.mark.parametrize("factorised", [False, True])
def test_estimator_converges_to_planted_rates_from_uniform_observations(factorised):
    predictions, schemes = planted(3)
    pool = np.arange(POOL)
    cells, codes, sizes = build_cells(
        ("label", "aux"), 4, predictions.loss, predictions.confidence, schemes, pool
    )
    estimator = CollateralDamageEstimator(codes, sizes, factorised)
    rng = np.random.default_rng(0)
    for _ in range(300):  # the probe estimator's setting: unbiased uniform observations
        index = rng.integers(0, POOL, 32)
        damage = rng.random(32) < damage_rate(schemes["label"][index])
        estimator.update(cells[index], damage)
    rates = estimator.cell_rates()
    label_of_cell = codes[0]
    assert np.all(np.abs(rates[label_of_cell == 0] - RATE_A) < 0.12)
    assert np.all(np.abs(rates[label_of_cell != 0] - RATE_REST) < 0.04)


def test_estimator_starts_at_one_half_and_decay_forgets():
    codes = np.array([[0, 1]])
    estimator = CollateralDamageEstimator(codes, [2], factorised=False, decay=0.5)
    assert estimator.cell_rates().tolist() == [0.5, 0.5]
    estimator.update(np.array([0, 0, 0, 0]), np.array([True] * 4))
    assert estimator.cell_rates()[0] == pytest.approx(5 / 6)
    estimator.fade()  # one step: counts u=2, n=2 -> alpha = 3/4
    assert estimator.cell_rates()[0] == pytest.approx(3 / 4)
    for _ in range(20):  # no new evidence: old counts fade back towards the prior
        estimator.fade()
    assert estimator.cell_rates()[0] == pytest.approx(0.5, abs=1e-3)
    estimator.update(np.array([1]), np.array([False]))  # an update alone does not fade
    assert estimator.cell_rates()[1] == pytest.approx(1 / 3)


def test_factorised_combination_formula():
    """alpha(a, b) = alpha_a * alpha_b / alpha_bar on a hand-computed example."""
    codes = np.array([[0, 0, 1, 1], [0, 1, 0, 1]])
    estimator = CollateralDamageEstimator(codes, [2, 2], factorised=True)
    estimator.update(np.array([0, 0, 1, 2]), np.array([True, True, False, False]))
    # scheme 1: bin0 u=2 n=3, bin1 u=0 n=1; scheme 2: bin0 u=2 n=3 (cells 0, 2), bin1 u=0 n=1
    a1 = np.array([3 / 5, 1 / 3])
    a2 = np.array([3 / 5, 1 / 3])
    bar = 3 / 6
    expected = [a1[0] * a2[0] / bar, a1[0] * a2[1] / bar, a1[1] * a2[0] / bar, a1[1] * a2[1] / bar]
    assert estimator.cell_rates() == pytest.approx(expected)


def test_sampling_is_size_times_rate_then_uniform_within_cell():
    cell_of = np.array([0] * 30 + [1] * 10 + [-1] * 5)
    estimator = CollateralDamageEstimator(np.array([[0, 1]]), [2], factorised=False)
    estimator.load_state_dict({"damaged": [[0.0, 8.0]], "seen": [[8.0, 8.0]]})
    sampler = CollateralDamageSampler(0.25, cell_of, estimator)
    # weights: 30 * 0.1 and 10 * 0.9 -> p(cell 1) = 9 / 12
    assert sampler.cell_probabilities() == pytest.approx([0.25, 0.75])
    draws = sampler.sample(20000, np.random.default_rng(0))
    assert not np.isin(draws, np.arange(40, 45)).any()  # outside the pool: never drawn
    assert np.mean(draws >= 30) == pytest.approx(0.75, abs=0.01)
    counts = np.bincount(draws[draws >= 30], minlength=40)[30:40]
    assert counts.min() > 0.8 * counts.mean()  # uniform inside the cell


def test_confidence_filter_excludes_low_confidence_samples():
    predictions, schemes = planted(4)
    predictions.success[:100] = False  # f0 wrong: never collateral damage, never in the pool
    method = MixCD(MixCDConfig(conf_threshold=0.7))
    ctx, data = fake_context(predictions, schemes)
    sampler = method.forgetbench_prior_sampler(ctx=ctx, data=data)
    pool = sampler.members
    assert np.all(predictions.confidence[pool] >= 0.7)
    assert not np.isin(np.arange(100), pool).any()
    expected = np.sum(predictions.success & (predictions.confidence >= 0.7))
    assert len(pool) == expected
    draws = sampler.sample(5000, np.random.default_rng(1))
    assert np.all(predictions.confidence[draws] >= 0.7)
    assert ctx.compute.extra_inference == POOL  # the prior-cache pass is charged to mix-cd


@pytest.mark.parametrize("combine", ["factorised", "joint"])
def test_alpha_series_are_named_by_the_tasks_values_not_pool_codes(combine):
    """f0 got every label-0 sample wrong, so label 0 has no sample in the pool: the first
    pool bin is label 1 and its series says so; string partitions keep their names."""
    predictions, schemes = planted(6, size=600)
    predictions.success[schemes["label"] == 0] = False
    genres = np.array(["fiction", "government", "travel"])[schemes["aux"]]
    method = MixCD(MixCDConfig(partitions=("label", "genre"), combine=combine))
    ctx, data = fake_context(predictions, {"label": schemes["label"], "genre": genres})
    method.forgetbench_prior_sampler(ctx=ctx, data=data)
    names = {name for name, _, _ in method.series}
    if combine == "factorised":
        expected = {f"mixcd/alpha/label={label}" for label in range(1, LABELS)}
        expected |= {f"mixcd/alpha/genre={genre}" for genre in ("fiction", "government", "travel")}
    else:
        expected = {
            f"mixcd/alpha/label={label}|genre={genre}"
            for label in range(1, LABELS)
            for genre in ("fiction", "government", "travel")
        }
    assert names == expected


def test_quantile_bins_are_balanced():
    values = np.random.default_rng(0).random(1000)
    counts = np.bincount(quantile_bins(values, 4))
    assert counts.tolist() == [250, 250, 250, 250]


def test_an_empty_pool_says_why_and_what_to_change():
    predictions, schemes = planted(6, size=50)
    ctx, data = fake_context(predictions, schemes)
    strict = MixCD(MixCDConfig(conf_threshold=1.0))
    with pytest.raises(ForgetbenchError, match=r"none with confidence >= 1.0 \(lower mixcd"):
        strict.forgetbench_prior_sampler(ctx=ctx, data=data)
    predictions.success[:] = False
    with pytest.raises(ForgetbenchError, match=r"f0 gets 0 of 50 .*check f0 \(stage 0\)"):
        MixCD(MixCDConfig()).forgetbench_prior_sampler(ctx=ctx, data=data)


def test_a_pool_rehearsal_would_repeat_many_times_is_a_warning(caplog):
    predictions, schemes = planted(6, size=200)
    predictions.success[5:] = False  # f0 gets 5 right
    # 100 steps of 8 prior slots: 800 draws from 5 samples, each about 160 times
    ctx, data = fake_context(predictions, schemes, train=TrainConfig(steps=100, batch_size=32))
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        MixCD(MixCDConfig()).forgetbench_prior_sampler(ctx=ctx, data=data)
    assert "candidate pool holds 5 prior samples (f0 gets 5 of 200 right)" in caplog.text
    assert "800 rehearsal draws, each rehearsed about 160 times" in caplog.text
    caplog.clear()
    predictions.success[:] = True  # 200 samples for 800 draws: 4 times each, no warning
    with caplog.at_level(logging.WARNING, logger="forgetbench"):
        MixCD(MixCDConfig()).forgetbench_prior_sampler(ctx=ctx, data=data)
    assert "candidate pool" not in caplog.text


def test_a_partition_the_task_lacks_is_an_error_with_a_suggestion():
    predictions, schemes = planted(5, size=50)
    method = MixCD(MixCDConfig(partitions=("lable",)))
    ctx, data = fake_context(predictions, schemes)
    with pytest.raises(ForgetbenchError, match="no partition 'lable' \\(did you mean 'label'"):
        method.forgetbench_prior_sampler(ctx=ctx, data=data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mix_ratio", 1.5),
        ("mix_ratio", 0.0),
        ("partitions", ("not a name",)),
        ("partitions", ("label", "loss", "confidence")),  # loss and confidence: the same bins
        ("combine", "both"),
        ("conf_threshold", 1.2),
        ("decay", 0.0),
        ("estimator", "oracle"),
        ("bins", 1),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        MixCDConfig(**{field: value})


def test_decay_applies_every_step_with_the_probe_estimator_too():
    """Between probes (every 10 steps) the counts still fade once per step, as documented."""
    predictions, schemes = planted(6, size=50)
    config = MixCDConfig(partitions=("label",), decay=0.5, estimator="probe", probe_every=10)
    method = MixCD(config)
    ctx, data = fake_context(predictions, schemes)
    estimator = method.forgetbench_prior_sampler(ctx=ctx, data=data).estimator
    estimator.update(np.zeros(8, dtype=np.int64), np.ones(8, dtype=bool))
    empty = Batch(
        inputs={},
        ids=torch.zeros(0, dtype=torch.long),
        is_prior=torch.zeros(0, dtype=torch.bool),
        index=torch.zeros(0, dtype=torch.long),
    )
    nothing = PerSample(torch.zeros(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0))
    for step in range(1, 4):  # no probe at steps 1-3
        method.forgetbench_after_step(
            ctx=ctx, step=step, model=None, batch=empty, per_sample=nothing
        )
    assert estimator.seen[0][0] == pytest.approx(8 * 0.5**3)
    assert estimator.damaged[0][0] == pytest.approx(8 * 0.5**3)


@pytest.mark.parametrize(
    ("method", "overrides", "message"),
    [
        ("mixcd", {"mixcd.mix_ratio": "0.05", "batch_size": "8"}, "gives no prior sample"),
        ("random", {"random.mix_ratio": "0.0625", "batch_size": "8"}, "gives no prior sample"),
        ("random", {"random.mix_ratio": "0.75", "batch_size": "2"}, "none to the new task"),
    ],
)
def test_a_mix_ratio_that_rounds_to_nothing_or_everything_is_refused_up_front(
    db, method, overrides, message
):
    """0.05 x 8 rounds to 0 prior samples (the run would rehearse nothing), 0.0625 x 8 = 0.5
    rounds to 0 as well (half to even), 0.75 x 2 to 2 of 2: refused while the request is
    validated, before the store is opened; a ratio that leaves both sides a slot runs."""
    from pathlib import Path

    from forgetbench.runner import RunRequest, execute, resolve
    from forgetbench.testing import registry_with

    request = RunRequest(task="tiny", methods=[method], overrides=overrides)
    with pytest.raises(ForgetbenchError, match=f"{method}.mix_ratio=.* {message}"):
        execute(request, db=db, registry=registry_with())
    assert not Path(db).exists()
    fine = {**overrides, "batch_size": "16"}
    resolve(RunRequest(task="tiny", methods=[method], overrides=fine), registry_with())
    zero = {"random.mix_ratio": "0", "batch_size": "8"}  # random at 0: plain fine-tuning
    resolve(RunRequest(task="tiny", methods=["random"], overrides=zero), registry_with())


def test_the_probe_estimator_probes_every_probe_every_steps_and_charges_it(db):
    """``estimator=probe`` forwards ``probe_size`` pool samples at steps 2 and 4 of 5: 16
    counted extra inferences beyond the rehearsal estimator's run, and its CD rates move."""
    from method_helpers import run_tiny, series

    from forgetbench.store import Store

    rehearsal = run_tiny(db, ["mixcd"], {"mixcd.log_every": "1"})
    settings = {"mixcd.estimator": "probe", "mixcd.probe_every": "2", "mixcd.probe_size": "8"}
    probe = run_tiny(db, ["mixcd"], {**settings, "mixcd.log_every": "1"})
    store = Store(db)
    extra = {r: store.get_run(r)["compute"]["extra_inference"] for r in (rehearsal, probe)}
    assert extra[probe] - extra[rehearsal] == 2 * 8
    names = {name for name, _, _ in store.get_series(probe) if name.startswith("mixcd/alpha/")}
    assert names
    curves = [series(db, probe, name) for name in sorted(names)]
    # nothing observed before the first probe at step 2; what it saw shows from then on
    assert all(curve[1] == curve[0] for curve in curves)
    assert any(curve[2] != curve[1] for curve in curves)
