"""The caches of f0's results are keyed by everything that changes them: f0's prior-train
predictions (mix-cd's and random's pool, bins and damage flags) by the task's config and the
evaluation settings as well as f0 and the data; a text task's stage 0 by its ``max_length``."""

from __future__ import annotations

from reliability_helpers import SMALL

from forgetbench.runner import RunRequest, execute
from forgetbench.store import Store
from forgetbench.testing import registry_with


def entries(cache, kind: str) -> set[str]:
    folder = cache / kind
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def test_prior_predictions_are_cached_per_task_config(db, isolated_cache):
    registry = registry_with()

    def run(**overrides):
        request = RunRequest(
            task="tiny", methods=["mixcd"], seed=0, steps=2, overrides={**SMALL, **overrides}
        )
        return execute(request, db=db, registry=registry)

    run()
    first = entries(isolated_cache, "prior-predictions")
    assert len(first) == 1
    run()  # the same config again: the same entry
    assert entries(isolated_cache, "prior-predictions") == first
    run(**{"task.new_eval_size": "24"})  # f0 and the prior split unchanged, the config not
    assert len(entries(isolated_cache, "prior-predictions")) == 2
    assert len(entries(isolated_cache, "stage0")) == 1  # stage 0 was shared all along
    assert [r["status"] for r in Store(db).get_runs()] == ["ok"] * 3


def test_a_text_tasks_stage0_depends_on_its_max_length():
    from forgetbench_tasks.text_classification.wordnet import WordnetConfig, WordnetTask

    short, default = WordnetTask(WordnetConfig(max_length=16)), WordnetTask()
    assert short.stage0.key != default.stage0.key
    assert WordnetTask().stage0.key == default.stage0.key


def test_flow_loss0_is_cached_per_task_config_and_through_an_unprobed_head_per_seed(
    db, isolated_cache
):
    """FLOW's loss0 cache: another task config is another entry; the tiny task has a fresh
    head but no probe (``reference_losses``), so loss0 goes through the seed's own head and
    another seed is another entry too (it used to reuse the first seed's)."""
    registry = registry_with()

    def run(seed=0, **overrides):
        request = RunRequest(
            task="tiny", methods=["flow"], seed=seed, steps=2, overrides={**SMALL, **overrides}
        )
        execute(request, db=db, registry=registry)

    run()
    run()
    assert len(entries(isolated_cache, "flow-loss0")) == 1
    run(**{"task.new_eval_size": "24"})
    assert len(entries(isolated_cache, "flow-loss0")) == 2
    run(seed=1)
    assert len(entries(isolated_cache, "flow-loss0")) == 3
