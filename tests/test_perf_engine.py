"""What the performance work may not change: length-sorted evaluation gives every example its
own result, the deferred loss curve is the per-step curve, observers still see every step on
the CPU, runs in one process reuse data and prior models without changing a number, accelerate
takes another precision in the same process, and mix-cd's counting setup builds the same cells
as sorting did. (No timings here: bench/ measures them.)"""

from typing import ClassVar

import numpy as np
import pytest
import torch

from forgetbench import context, engine
from forgetbench.api import Method, Split, TrainConfig, hookimpl
from forgetbench.testing import TinyConfig, TinyTextTask, run_for_test
from forgetbench_plugins.mixcd import build_cells, dense_codes


@pytest.fixture
def tiny():
    task = TinyTextTask(TinyConfig(prior_eval_size=70))
    data = task.load_data(None)
    ctx = context.RunContext(
        run_id=None, seed=0, task=task, train=TrainConfig(eval_batch_size=16), device="cpu"
    )
    torch.manual_seed(0)
    ctx.bundle = task.build_prior(ctx, data)
    model = task.init_new_task(ctx, ctx.bundle, data)
    return ctx, model, data


def test_length_sorted_evaluation_gives_each_example_its_own_result(tiny, monkeypatch):
    ctx, model, data = tiny
    split = data.prior_eval
    order = context.length_order(split)
    lengths = [len(split[int(i)]["tokens"]) for i in order]
    assert lengths == sorted(lengths)
    assert not np.array_equal(order, np.arange(len(split)))
    plain = ctx.predict(model, split)
    monkeypatch.setattr(context, "evaluation_order", lambda s, d: context.length_order(s))
    ordered = ctx.predict(model, split)
    assert torch.equal(plain.success, ordered.success)
    torch.testing.assert_close(ordered.loss, plain.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ordered.confidence, plain.confidence, rtol=1e-5, atol=1e-6)
    # in split order: row i is example i's own result (alone in its batch)
    for i in (0, 17, 69):
        alone = ctx.predict(model, Split(split.name, [split[i]]))
        torch.testing.assert_close(ordered.loss[i : i + 1], alone.loss, rtol=1e-5, atol=1e-6)
    assert ctx.compute.eval_inference == 2 * len(split) + 3


def test_cpu_evaluation_keeps_split_order():
    split = Split("prior_eval", [{"id": i, "text": "x" * (9 - i)} for i in range(9)])
    assert np.array_equal(context.evaluation_order(split, "cpu"), np.arange(9))
    assert np.array_equal(context.length_order(split), np.arange(9)[::-1])


def test_loss_curve_is_the_same_whatever_the_flush_interval(monkeypatch, tmp_path):
    first = run_for_test(steps=6, directory=tmp_path / "a")
    monkeypatch.setattr(engine, "CURVE_FLUSH", 4)
    second = run_for_test(steps=6, directory=tmp_path / "b")
    curve = [point for point in first.series if point[0] == "train/loss"]
    assert [step for _, step, _ in curve] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(value) for _, _, value in curve)
    assert curve == [point for point in second.series if point[0] == "train/loss"]


class Observer(Method):
    name = "observer"
    description = "records what forgetbench_after_step receives"
    seen: ClassVar[list] = []

    @hookimpl
    def forgetbench_after_step(self, step, batch, per_sample):
        Observer.seen.append((step, per_sample.success.device.type, len(batch)))


def test_observers_see_every_step_on_the_cpu(tmp_path):
    Observer.seen = []
    run_for_test(Observer, steps=4, directory=tmp_path)
    assert [step for step, _, _ in Observer.seen] == [1, 2, 3, 4]
    assert {device for _, device, _ in Observer.seen} == {"cpu"}


def test_runs_in_one_process_reuse_data_and_prior_without_changing_results(monkeypatch, tmp_path):
    calls = {"load_data": 0, "load_bundle": 0}
    for name in calls:
        original = getattr(TinyTextTask, name)

        def counting(self, *args, _original=original, _name=name):
            calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(TinyTextTask, name, counting)
    first = run_for_test(steps=3, directory=tmp_path / "a")
    second = run_for_test(steps=3, directory=tmp_path / "a")
    assert calls == {"load_data": 1, "load_bundle": 1}
    monkeypatch.setenv("FORGETBENCH_MEMO", "0")
    third = run_for_test(steps=3, directory=tmp_path / "a")
    assert calls == {"load_data": 2, "load_bundle": 2}
    # the first run trained its copy: the second started from the same f0 all the same
    assert first.metrics == second.metrics == third.metrics


def test_a_reused_load_brings_what_load_data_kept_on_the_task(monkeypatch, tmp_path):
    """A task whose examples point into state its load_data kept (the CLIP family's image
    table) still finds that state when a later run in the process reuses the data."""
    original = TinyTextTask.load_data

    def load_data(self, ctx):
        data = original(self, ctx)
        self.side_table = {e["id"]: e["label"] for split in data.splits() for e in split.examples}
        return data

    def collate(self, bundle, examples):
        assert all(self.side_table[e["id"]] == e["label"] for e in examples)  # KeyError if lost
        return original_collate(self, bundle, examples)

    original_collate = TinyTextTask.collate
    monkeypatch.setattr(TinyTextTask, "load_data", load_data)
    monkeypatch.setattr(TinyTextTask, "collate", collate)
    first = run_for_test(steps=2, directory=tmp_path)
    second = run_for_test(steps=2, directory=tmp_path)  # a fresh task instance, data reused
    assert first.metrics == second.metrics


def test_plain_steps_skip_accelerates_wrappers_and_change_no_number(monkeypatch, tmp_path):
    """Without a loss scaler the loop steps PyTorch's optimiser and scheduler itself (their
    accelerate wrappers cost host time a GPU step waits on); the numbers are the wrappers'."""
    from accelerate.optimizer import AcceleratedOptimizer

    calls = []
    wrapped_step = AcceleratedOptimizer.step
    monkeypatch.setattr(
        AcceleratedOptimizer, "step", lambda self, *a: calls.append(1) or wrapped_step(self, *a)
    )
    plain = run_for_test("mixcd", steps=4, directory=tmp_path / "plain")
    assert calls == []
    monkeypatch.setattr(engine, "plain_steps", lambda accelerator: False)
    wrapped = run_for_test("mixcd", steps=4, directory=tmp_path / "wrapped")
    assert len(calls) == 4
    assert plain.metrics == wrapped.metrics
    assert plain.series == wrapped.series  # the loss curve, step by step


def test_plain_steps_only_without_a_scaler_or_accumulation():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    def accelerator(**changes):
        base = {"scaler": None, "gradient_accumulation_steps": 1, "distributed_type": "NO"}
        return SimpleNamespace(**{**base, **changes})

    assert engine.plain_steps(accelerator())
    assert not engine.plain_steps(accelerator(scaler=object()))  # fp16: the scaler steps
    assert not engine.plain_steps(accelerator(gradient_accumulation_steps=2))
    assert not engine.plain_steps(accelerator(distributed_type=DistributedType.DEEPSPEED))


def test_another_precision_in_the_same_process():
    for precision in ("bf16", "no", "bf16"):
        accelerator = engine.make_accelerator(TrainConfig(device="cpu", mixed_precision=precision))
        assert accelerator.mixed_precision == precision


@pytest.mark.parametrize("high", [50, 2**26])
def test_counting_cells_match_sorting(high):
    rng = np.random.default_rng(high)
    values = rng.integers(3, high, 5000) * 7
    unique, reference = np.unique(values, return_inverse=True)
    codes, count = dense_codes(values)
    assert count == len(unique)
    assert np.array_equal(codes, reference)
    labels = values % 45
    loss, confidence = rng.random(5000), rng.random(5000)
    pool = np.flatnonzero(rng.random(5000) < 0.7)
    cells, scheme_codes, _sizes = build_cells(
        ("label", "confidence"), 4, loss, confidence, {"label": labels}, pool
    )
    label_codes = np.unique(labels[pool], return_inverse=True)[1]
    bins = np.searchsorted(
        np.quantile(confidence[pool], [0.25, 0.5, 0.75]), confidence[pool], side="right"
    )
    flat = label_codes * 4 + bins
    assert np.array_equal(cells, np.unique(flat, return_inverse=True)[1])
    assert np.array_equal(scheme_codes[0] * 4 + scheme_codes[1], np.unique(flat))


def test_a_prior_model_folder_changed_on_disk_is_loaded_again(tmp_path, db, isolated_cache):
    """The in-process reuse of f0 checks the files it came from: a ``--prior-model`` folder
    replaced between two runs of one config gives the second run the new weights."""
    import shutil

    from forgetbench.runner import RunRequest, execute
    from forgetbench.store import Store
    from forgetbench.testing import registry_with

    registry = registry_with()

    def entries() -> set:
        return {p for p in (isolated_cache / "stage0").iterdir() if not p.name.startswith(".")}

    execute(RunRequest(task="tiny", steps=2), db=db, registry=registry)
    [trained] = entries()
    other = RunRequest(task="tiny", steps=2, overrides={"task.stage0_steps": "5"})
    execute(other, db=db, registry=registry)  # another f0, from a shorter stage 0
    [shorter] = entries() - {trained}
    folder = tmp_path / "prior"
    shutil.copytree(trained, folder, copy_function=shutil.copy)
    request = RunRequest(task="tiny", steps=2, prior_model=str(folder))
    first = execute(request, db=db, registry=registry)
    shutil.rmtree(folder)
    shutil.copytree(shorter, folder, copy_function=shutil.copy)
    second = execute(request, db=db, registry=registry)
    store = Store(db)
    before = store.get_metrics([first, second])  # (the mock's identity names its config)
    assert before[first]["prior/before/loss"] != before[second]["prior/before/loss"]
