"""Reliability (issue 13), in this process on the mock ``tiny`` task: empty splits, corrupt
checkpoints, NaN metrics, concurrent resumes, the config hash, progress off a terminal."""

from __future__ import annotations

import json
import os
import re
import socket
import time

import numpy as np
import pytest
import torch
from reliability_helpers import SMALL, SMALL_ARGS, NanDiagnostic, cli
from safetensors.torch import save_model

import forgetbench.progress
from forgetbench.api import Method
from forgetbench.cache import hash_json
from forgetbench.checkpoint import Checkpointer, CheckpointLock, checkpoint_dir
from forgetbench.engine import BatchStream
from forgetbench.errors import ForgetbenchError, Interrupted
from forgetbench.hookspecs import hookimpl
from forgetbench.progress import phase, progress
from forgetbench.runner import RunRequest, execute, resolve
from forgetbench.store import Metric, Store
from forgetbench.testing import registry_with


class StopAtStep(Method):
    """Ctrl-C after step ``stop_at`` while armed (a class switch, so a resume can disarm it)."""

    name = "stop-at"
    description = "interrupts training once"
    armed = True
    stop_at = 5

    @hookimpl
    def forgetbench_after_step(self, step):
        if StopAtStep.armed and step == StopAtStep.stop_at:
            raise KeyboardInterrupt


@pytest.fixture
def registry():
    return registry_with(StopAtStep, NanDiagnostic)


@pytest.fixture(autouse=True)
def _armed():
    StopAtStep.armed = True
    yield
    StopAtStep.armed = True


def request(methods=("finetune",), steps=6, **overrides) -> RunRequest:
    return RunRequest(
        task="tiny", methods=list(methods), steps=steps, overrides={**SMALL, **overrides}
    )


def interrupted_run(db, registry, **overrides) -> int:
    """A run stopped by Ctrl-C at step 5, with a checkpoint every 2 steps (at step 4)."""
    with pytest.raises(Interrupted) as raised:
        execute(request(["stop-at"], checkpoint_every="2", **overrides), db=db, registry=registry)
    return raised.value.run_id


# -- 2. empty splits -------------------------------------------------------------------------


@pytest.mark.usefixtures("fixtures_plugin")
def test_an_empty_split_fails_at_once_naming_the_split_and_its_size(db, monkeypatch, capsys):
    args = ["run", "--task", "tiny", "--steps", "2", *SMALL_ARGS, "--db", db]
    code, _, stderr = cli([*args, "--set", "task.new_train_size=0"], monkeypatch, capsys)
    assert code == 1  # the old batch stream spun forever (BatchStream's own test covers it)
    last = stderr.splitlines()[-1]
    assert last.startswith("error: run 1 failed: task 'tiny': split new_train has 0 examples")
    assert "new_eval 16" in last
    (run,) = Store(db).get_runs()
    assert run["status"] == "failed"


def test_the_batch_stream_refuses_an_empty_split():
    with pytest.raises(ForgetbenchError, match="cannot train on new_train: it has 0 examples"):
        BatchStream(0, np.random.default_rng(0), "new_train")


# -- 3. corrupt checkpoints, non-finite metrics ---------------------------------------------


def corrupt(path, at: int = 64, size: int = 4096) -> None:
    content = bytearray(path.read_bytes())
    end = min(len(content), at + size)
    content[at:end] = os.urandom(end - at)
    path.write_bytes(bytes(content))


@pytest.mark.parametrize("damaged", ["model.safetensors", "tensors.safetensors", "state.json"])
def test_a_corrupt_checkpoint_is_discarded_and_training_starts_over(
    damaged, db, registry, tmp_path, monkeypatch, caplog
):
    StopAtStep.armed = False
    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "reference-cache"))
    reference = execute(request(["stop-at"]), db=str(tmp_path / "reference.db"), registry=registry)
    expected = Store(str(tmp_path / "reference.db")).get_metrics([reference])[reference]

    monkeypatch.setenv("FORGETBENCH_CACHE", str(tmp_path / "cache"))
    StopAtStep.armed = True
    run_id = interrupted_run(db, registry)
    directory = checkpoint_dir(resolve(request(["stop-at"]), registry).config_hash, 0)
    assert json.loads((directory / "state.json").read_text())["step"] == 4
    corrupt(directory / damaged)

    StopAtStep.armed = False
    assert execute(None, db=db, registry=registry, resume=run_id) == run_id
    assert "is corrupt" in caplog.text
    assert "resuming" not in caplog.text  # not a single step was taken from the bad checkpoint
    assert Store(db).get_run(run_id)["status"] == "ok"
    assert Store(db).get_metrics([run_id])[run_id] == expected
    assert not directory.exists()


def test_an_intact_checkpoint_restores_and_a_tampered_one_does_not(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    checkpointer = Checkpointer(tmp_path / "checkpoint", every=1)
    checkpointer.save(3, model, optimizer, scheduler, {"position": 1})
    assert checkpointer.restore(model, optimizer, scheduler) == (3, {"position": 1})
    state_file = tmp_path / "checkpoint" / "state.json"
    state = json.loads(state_file.read_text())
    assert set(state["files"]) == {"model.safetensors", "tensors.safetensors"}
    state_file.write_text(json.dumps({**state, "step": 2}))  # valid JSON, not what was written
    assert checkpointer.restore(model, optimizer, scheduler) is None
    checkpointer.save(3, model, optimizer, scheduler, {"position": 1})
    with torch.no_grad():
        model.weight += 1
    # valid safetensors, but not what was checkpointed
    save_model(model, str(tmp_path / "checkpoint" / "model.safetensors"))
    assert checkpointer.restore(model, optimizer, scheduler) is None
    assert not (tmp_path / "checkpoint").exists()


@pytest.mark.usefixtures("fixtures_plugin")
def test_a_nan_metric_fails_the_run_in_one_line_naming_it(db, monkeypatch, capsys):
    args = ["run", "--task", "tiny", "--method", "nan-diagnostic", "--steps", "2", *SMALL_ARGS]
    code, _, stderr = cli([*args, "--db", db], monkeypatch, capsys)
    assert code == 1
    assert "Traceback" not in stderr
    assert "IntegrityError" not in stderr
    assert stderr.splitlines()[-1] == (
        "error: run 1 failed: metric run/derived/broken is nan: the run diverged or its task"
        " computed no value; nothing was stored"
    )
    store = Store(db)
    assert store.get_run(1)["status"] == "failed"
    assert store.get_metrics([1])[1] == {}


def test_the_store_refuses_non_finite_numbers_before_writing(db):
    store = Store(db)
    fields = dict(task="t", task_version="1", methods="m", config={}, config_hash="h", seed=0)
    run_id = store.start_run(**fields, model="m", data_fingerprints={}, versions={})
    with pytest.raises(ForgetbenchError, match=r"series train/loss is inf at step 7"):
        store.finish_run(
            run_id, [Metric("new", "after", "accuracy", 0.5)], [("train/loss", 7, 1e400)]
        )
    with pytest.raises(ForgetbenchError, match=r"metric prior/after/loss is -inf"):
        store.finish_run(run_id, [Metric("prior", "after", "loss", -1e400)])
    assert store.get_metrics([run_id])[run_id] == {}
    assert store.get_run(run_id)["status"] == "running"


# -- 5. one process per run and per checkpoint -----------------------------------------------


def test_resume_of_a_live_run_is_refused_unless_forced(db, registry):
    run_id = interrupted_run(db, registry)
    store = Store(db)
    # as if its process were still at work: this very process, on this host
    store.update_run(run_id, status="running", hostname=socket.gethostname(), pid=os.getpid())
    StopAtStep.armed = False
    with pytest.raises(ForgetbenchError, match=rf"run {run_id} is still running .*--force"):
        execute(None, db=db, registry=registry, resume=run_id)
    assert store.get_run(run_id)["pid"] == os.getpid()  # not reopened
    assert execute(None, db=db, registry=registry, resume=run_id, force=True) == run_id
    assert store.get_run(run_id)["status"] == "ok"


def test_a_run_whose_config_no_longer_resolves_is_not_resumed(db, registry):
    """A plugin changed since the run was stored (here: its stored hash is another one): the
    run is refused, not continued under a config it never had, and stays as it was."""
    run_id = interrupted_run(db, registry)
    store = Store(db)
    store.update_run(run_id, config_hash="0" * 64)
    StopAtStep.armed = False
    with pytest.raises(ForgetbenchError, match=rf"run {run_id}'s stored config no longer"):
        execute(None, db=db, registry=registry, resume=run_id)
    assert store.get_run(run_id)["status"] == "interrupted"


def test_a_held_checkpoint_lock_refuses_resume_even_forced(db, registry):
    run_id = interrupted_run(db, registry)
    directory = checkpoint_dir(resolve(request(["stop-at"]), registry).config_hash, 0)
    holder = CheckpointLock(directory)
    assert holder.acquire()
    try:
        StopAtStep.armed = False
        with pytest.raises(ForgetbenchError, match=r"checkpoint is in use by another process"):
            execute(None, db=db, registry=registry, resume=run_id, force=True)
        assert Store(db).get_run(run_id)["status"] == "interrupted"
        # an identical new run meanwhile neither reads nor deletes the held checkpoint
        fresh = execute(request(["stop-at"]), db=db, registry=registry)
        assert Store(db).get_run(fresh)["status"] == "ok"
        assert (directory / "state.json").exists()
    finally:
        holder.release()
    assert execute(None, db=db, registry=registry, resume=run_id) == run_id
    assert not directory.exists()


# -- 6. steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "overrides", "message"),
    [
        (None, {"steps": "0"}, "steps must be >= 1, got 0"),
        (0, {}, "steps must be >= 1, got 0"),
        (3, {"steps": "abc"}, "--steps 3 and --set steps=abc both set the number of steps"),
        (3, {"train.steps": "3"}, "--steps 3 and --set steps=3 both set the number of steps"),
        (3, {"train.steps": "-5"}, "both set the number of steps"),
    ],
)
def test_steps_are_validated_from_every_source(steps, overrides, message, tiny_registry):
    with pytest.raises(ForgetbenchError, match=message):
        resolve(RunRequest(task="tiny", steps=steps, overrides=overrides), tiny_registry)


# -- 12. the config hash, progress off a terminal ---------------------------------------------


def test_operational_settings_stay_out_of_the_config_hash(tiny_registry):
    def resolved(**overrides):
        return resolve(RunRequest(task="tiny", overrides=overrides), tiny_registry)

    default = resolved()
    assert default.config_hash == hash_json(default.config)  # the hash it always had
    tuned = resolved(lr="0.01")
    assert tuned.config_hash == hash_json(tuned.config) != default.config_hash
    for operational in (
        {"checkpoint_every": "5"},
        {"device": "cpu"},
        {"eval_batch_size": "7"},
        {"checkpoint_every": "5", "device": "cpu", "eval_batch_size": "7"},
    ):
        same = resolved(**operational)
        assert same.config_hash == default.config_hash
        assert same.config["train"] != default.config["train"]  # still stored with the run


def test_progress_off_a_terminal_reports_short_loops_and_long_phases(monkeypatch, capsys):
    monkeypatch.setattr(forgetbench.progress, "QUIET_SECONDS", 0.05)
    with progress("fine-tuning", 3) as advance:
        for _ in range(3):
            advance()
    assert capsys.readouterr().err.splitlines() == [f"fine-tuning: {n}/3 (0 s)" for n in (1, 2, 3)]
    with phase("loading data"):
        pass
    assert capsys.readouterr().err == ""  # a short phase says nothing
    monkeypatch.setattr(forgetbench.progress, "SHOWN_AFTER", 0.05)
    with phase("evaluating"):
        time.sleep(0.4)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("evaluating ... (0 s)")
    assert len(lines) >= 3
    assert re.fullmatch(r"evaluating: done in \d+ s", lines[-1])


def test_a_run_shows_each_long_phase(db, capsys, monkeypatch, tiny_registry):
    monkeypatch.setattr(forgetbench.progress, "SHOWN_AFTER", 0.0)
    execute(request(steps=2), db=db, registry=tiny_registry)
    stderr = capsys.readouterr().err
    for phase_name in (
        "loading data ...",
        "preparing the prior model ...",
        "evaluating before fine-tuning ...",
        "setting up the methods ...",
        "fine-tuning: 2/2",
        "evaluating after fine-tuning ...",
    ):
        assert phase_name in stderr
