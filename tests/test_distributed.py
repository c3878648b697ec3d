"""One run over several processes: two CPU processes on the gloo backend.

The end-to-end tests start this file as the launched script with the real launcher,
``accelerate launch --multi_gpu --num_processes 2`` (with ``device=cpu`` the processes join a
gloo group; accelerate 1.15's ``--cpu`` flag starts a single process unless mpirun is used), on
a tiny classification task without dropout, and compare the stored run with one process's run
of the same seed and config. The unit test of the collectives starts two processes with
``torch.multiprocessing`` and the variables a launcher sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

STEPS = 12
SEED = 3
SETTINGS = {
    "batch_size": "16",
    "device": "cpu",
    "task.stage0_steps": "10",
    "task.prior_train_size": "128",
    "task.prior_eval_size": "64",
    "task.new_train_size": "128",
    "task.new_eval_size": "64",
}
SPY_LOG: list[dict] = []  # the spy method's observations in this process
SAMPLERS: list = []  # mix-cd's samplers built in this process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the tiny task without dropout and a spy method (built on import: used in every process) ---


def _classes():
    from torch import nn

    from forgetbench.api import Method, check, hookimpl
    from forgetbench.testing import TinyTextTask

    class ParallelTinyTask(TinyTextTask):
        """The mock ``tiny`` task with dropout off in fine-tuning: one process and several then
        compute the same function, so their runs differ only by the order of float sums."""

        metadata = dataclasses.replace(TinyTextTask.metadata, name="tiny-parallel")

        def save_bundle(self, bundle, directory):
            from forgetbench import distributed

            super().save_bundle(bundle, directory)
            if os.environ.get("FORGETBENCH_TEST_OUT"):  # which process built stage 0
                Path(os.environ["FORGETBENCH_TEST_OUT"], f"built{distributed.rank()}").touch()

        def init_new_task(self, ctx, bundle, data):
            model = super().init_new_task(ctx, bundle, data)
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
            return model

    @dataclass
    class SpyConfig:
        fail_rank: int = -1  # raise on this process (rank) ...
        fail_step: int = 3  # ... at this step

        def __post_init__(self):
            check(self.fail_step >= 1, "fail_step must be >= 1")

    class Spy(Method):
        """Records what ``forgetbench_after_step`` receives; fails where it is told to."""

        name = "spy"
        description = "records the per-sample results of each step"
        Config = SpyConfig

        @hookimpl
        def forgetbench_after_step(self, step, batch, per_sample):
            from forgetbench import distributed

            if distributed.rank() == self.config.fail_rank and step == self.config.fail_step:
                raise RuntimeError(f"spy: planted failure at step {step}")
            SPY_LOG.append(
                {
                    "step": step,
                    "index": batch.index.tolist(),
                    "is_prior": batch.is_prior.tolist(),
                    "success": per_sample.success.tolist(),
                    "loss": per_sample.loss.tolist(),
                }
            )

    return ParallelTinyTask, Spy


def registry():
    from forgetbench.testing import registry_with

    task, spy = _classes()
    return registry_with(spy, tasks=(task,))


def request(extra: dict[str, str] | None = None):
    from forgetbench.runner import RunRequest

    overrides = {**SETTINGS, **(extra or {})}
    return RunRequest("tiny-parallel", ["mixcd", "spy"], SEED, STEPS, overrides)


@contextmanager
def recording_samplers():
    """Keep the mix-cd samplers this process builds meanwhile (to compare their estimators)."""
    import forgetbench_plugins.mixcd as mixcd

    original = mixcd.CollateralDamageSampler.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        SAMPLERS.append(self)

    SAMPLERS.clear()
    SPY_LOG.clear()
    mixcd.CollateralDamageSampler.__init__ = recording
    try:
        yield
    finally:
        mixcd.CollateralDamageSampler.__init__ = original


def state() -> dict:
    """What the methods saw in this process: the spy's log and mix-cd's estimator counts."""
    estimator = SAMPLERS[-1].estimator.state_dict() if SAMPLERS else None
    return {"spy": SPY_LOG, "estimator": estimator}


def worker(db: str, out: str, extra: list[str]) -> None:
    """One launched process: the run, then what its methods saw (``out/rank<r>.json``). It
    answers SIGTERM as ``forgetbench run`` does (the launcher stops the main process that way
    when another fails; without the handler that stop could kill it before it marks the row)."""
    from forgetbench import distributed
    from forgetbench.errors import interrupt
    from forgetbench.runner import execute

    signal.signal(signal.SIGTERM, interrupt)

    settings = dict(item.split("=", 1) for item in extra)
    os.environ["FORGETBENCH_TEST_OUT"] = out
    try:
        with recording_samplers():
            execute(request(settings), db=db, registry=registry())
    finally:
        path = Path(out) / f"rank{distributed.rank()}.json"
        path.write_text(json.dumps({**state(), "world": distributed.size()}))


def launch(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    """This file under ``accelerate launch`` with 2 CPU processes; the store in tmp_path."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        __file__, "--db", str(tmp_path / "parallel.db"), "--out", str(tmp_path), *extra,
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def one_process_run(tmp_path: Path):
    """The same run in this process (builds the cached stage 0 and prior cache the launched
    processes then reuse: all start from the same prior model)."""
    from forgetbench.runner import execute
    from forgetbench.store import Store

    db = str(tmp_path / "single.db")
    with recording_samplers():
        run_id = execute(request(), db=db, registry=registry())
    store = Store(db, read_only=True)
    return store, run_id, state()


def stored(db: Path):
    from forgetbench.store import Store

    store = Store(str(db), read_only=True)
    return store, store.get_runs()


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_give_one_row_and_the_one_process_result(tmp_path):
    single_store, single_id, single = one_process_run(tmp_path)
    done = launch(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    store, runs = stored(tmp_path / "parallel.db")
    assert len(runs) == 1
    assert runs[0]["status"] == "ok"
    run = store.get_run(runs[0]["id"])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]

    # every process saw the same global batches, results and estimator (gathered, same draws)
    assert ranks[0]["spy"] == ranks[1]["spy"]
    assert len(ranks[0]["spy"]) == STEPS
    assert len(ranks[0]["spy"][0]["index"]) == 16
    assert ranks[0]["estimator"] == ranks[1]["estimator"]

    # the compute is the global total: what one process spends on the whole batches
    expected = single_store.get_run(single_id)["compute"]
    for name in ("forwarded", "backpropagated", "extra_inference", "eval_inference"):
        assert run["compute"][name] == expected[name], name
    assert run["compute"]["forwarded"] == STEPS * 16

    # the same optimisation as one process: same draws, per-sample results equal up to the order
    # of float sums (1e-4 relative: measured at most 2e-7 over these 12 steps, while a different
    # batch or draw moves a loss by far more)
    parallel = ranks[0]["spy"]
    for one, two in zip(single["spy"], parallel, strict=True):
        assert one["index"] == two["index"]
        assert one["success"] == two["success"]
        assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-6)
    assert ranks[0]["estimator"] == single["estimator"]
    metrics = store.get_metrics([run["id"]])[run["id"]]
    expected_metrics = single_store.get_metrics([single_id])[single_id]
    assert set(metrics) == set(expected_metrics)
    for name, value in expected_metrics.items():
        assert metrics[name] == pytest.approx(value, abs=1e-4), name


@pytest.mark.slow
def test_a_failure_on_another_process_marks_the_run_failed(tmp_path):
    done = launch(tmp_path, "spy.fail_rank=1", "spy.fail_step=3")
    assert done.returncode != 0
    _, runs = stored(tmp_path / "parallel.db")
    assert len(runs) == 1
    assert runs[0]["status"] == "failed"
    assert "process 1 of 2" in runs[0]["error"]
    assert "spy: planted failure at step 3" in runs[0]["error"]
    # the main process alone built stage 0 (transformers' save_pretrained writes nothing on
    # another rank: an entry built there would lack the weights); the other loaded it
    assert sorted(p.name for p in tmp_path.glob("built*")) == ["built0"]


def test_a_launched_run_refuses_resume_and_checkpoints_before_storing(tmp_path, monkeypatch):
    from forgetbench.errors import ForgetbenchError
    from forgetbench.runner import execute

    monkeypatch.setenv("WORLD_SIZE", "2")  # as a launcher sets it (refused before joining)
    db = str(tmp_path / "results.db")
    with pytest.raises(ForgetbenchError, match="checkpoint_every is not supported"):
        execute(request({"checkpoint_every": "5"}), db=db, registry=registry())
    with pytest.raises(ForgetbenchError, match="--resume is not supported"):
        execute(None, db=db, registry=registry(), resume=1)
    assert not (tmp_path / "results.db").exists()


def _collectives(rank: int, port: int, out: str) -> None:
    """One of two processes: the helpers' collectives on hand-made tensors."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    import torch

    from forgetbench import distributed
    from forgetbench.api import Batch, Compute, PerSample
    from forgetbench.errors import ForgetbenchError

    distributed.start(use_cpu=True)
    import numpy as np

    inputs = {"x": torch.arange(12).reshape(6, 2), "host": np.arange(6), "n": 7}
    batch = Batch(inputs, *[torch.arange(6)] * 3)
    mine = distributed.shard(batch)
    outputs = PerSample(mine.ids.float() / 10, mine.ids % 2 == 0, mine.ids.float() / 100)
    gathered = distributed.gather_rows(outputs)
    shared, only_one, unused = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    shared.grad = torch.full((2,), float(rank + 1))
    if rank == 1:
        only_one.grad = torch.ones(2)
    distributed.average_gradients([shared, only_one, unused])
    counts, compute = distributed.ShardCounts(True), Compute(eval_inference=5)
    with counts.track(compute):
        compute.forwarded += 3 + rank
    distributed.ShardCounts(True).sum_into(Compute(), torch.device("cpu"))  # a no-op: zeros
    counts.sum_into(compute, torch.device("cpu"))
    try:
        distributed.check_batch(3)
        refused = ""
    except ForgetbenchError as error:
        refused = str(error)
    result = {
        "rows": mine.inputs["x"].tolist(), "n": mine.inputs["n"], "ids": mine.ids.tolist(),
        "host": mine.inputs["host"].tolist(), "index": mine.bookkeeping().index.tolist(),
        "loss": gathered.loss.tolist(), "success": gathered.success.tolist(),
        "shared": shared.grad.tolist(), "only_one": only_one.grad.tolist(),
        "unused": unused.grad, "forwarded": compute.forwarded,
        "eval": compute.eval_inference, "refused": refused,
    }  # fmt: skip
    Path(out, f"unit{rank}.json").write_text(json.dumps(result))
    distributed.leave()  # a barrier first: rank 0 hosts the store, neither leaves early
    assert (distributed.rank(), distributed.size()) == (rank, 2)


def test_collectives_shard_gather_and_average_like_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(
        _collectives, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    ranks = [json.loads((tmp_path / f"unit{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["rows"] == [[0, 1], [4, 5], [8, 9]]  # rows 0, 2, 4 of the batch
    assert ranks[1]["ids"] == [1, 3, 5]
    assert ranks[1]["host"] == [1, 3, 5]  # a task's host copy of a row tensor: sharded too
    assert ranks[1]["index"] == [1, 3, 5]  # the shard's own host bookkeeping
    assert ranks[1]["n"] == 7
    for rank in ranks:  # the global batch in its own row order, on both
        assert rank["loss"] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
        assert rank["success"] == [True, False, True, False, True, False]
        assert rank["shared"] == [1.5, 1.5]  # the mean of 1 and 2
        assert rank["only_one"] == [0.5, 0.5]  # zero where a process had no gradient
        assert rank["unused"] is None  # no gradient anywhere: none (the optimiser skips it)
        assert rank["forwarded"] == 3 + 4  # the shards' counts summed
        assert rank["eval"] == 5  # work outside the shards counted once
        assert "not a multiple of the 2 processes" in rank["refused"]


if __name__ == "__main__":  # a launched process (see launch)
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--out", required=True)
    arguments, settings = parser.parse_known_args()
    worker(arguments.db, arguments.out, settings)
