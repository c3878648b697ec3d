"""One run over several processes (``accelerate launch``, ``torchrun``): data parallel.

Batch semantics: ``batch_size`` is the *global* batch. Every process draws the same global
batch (the same seeded order and the same rehearsal draws: the samplers are identical on every
process), keeps its rows ``rank, rank + W, ...`` and forwards and backpropagates only those; the
gradients are averaged over the processes before clipping and the optimiser step. A step is
then one process's step on the whole batch, up to the order of floating-point sums and the
dropout masks (drawn per process). ``batch_size`` must be a multiple of the number of processes
(equal shards: the mean of the shards' mean losses is the batch's mean loss).

Gathered every step: the per-sample results (``forgetbench_after_step`` sees the global batch,
the same on every process, so mix-cd's estimator and the rehearsal counts stay identical);
at the end: the loss curve (mean over processes) and the compute the shards spent (summed).
Every process prepares the prior model and the methods the same way; only the main process
(rank 0) evaluates and touches the results store. A failure on another process is left in the
launcher's key-value store, where the main process reads it to mark the run failed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from forgetbench.api import Batch, Compute, PerSample
from forgetbench.errors import ForgetbenchError

log = logging.getLogger("forgetbench")
FAILURE_KEY = "forgetbench/failure"
# Collectives wait this long for a peer: the main process evaluates while the others wait.
TIMEOUT = timedelta(hours=2)
BUCKET_ELEMENTS = 1 << 24  # gradients are averaged in flat buffers of at most this many values
COUNTED = ("forwarded", "backpropagated", "extra_inference", "extra_backward", "eval_inference")


def launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def start(use_cpu: bool) -> None:
    """Join the launcher's process group through accelerate (gloo on the CPU, NCCL on GPUs)."""
    if launched() and not dist.is_initialized():
        from accelerate.state import PartialState

        PartialState(cpu=use_cpu, timeout=TIMEOUT)
        if not is_main():  # one progress display: the main process's (errors still print)
            from forgetbench.progress import stderr

            stderr.quiet = True


_left: list[tuple[int, int]] = []  # (rank, size) of a process that left its group


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def size() -> int:
    """The number of processes of this run (1 without a launcher)."""
    return dist.get_world_size() if active() else (_left[0][1] if _left else 1)


def rank() -> int:
    return dist.get_rank() if active() else (_left[0][0] if _left else 0)


def leave() -> None:
    """Leave the process group together once the run is over: every process waits at a
    barrier (the others for the main process to evaluate and store), then destroys the group;
    rank and size stay readable. Both halves matter: a process that exits with the group
    still up, or destroys it while a peer is still finishing a collective with it, may abort
    in gloo's thread teardown ("terminate called without an active exception"), which the
    launcher takes for a failure and answers by stopping the main process before it stores."""
    if active():
        dist.barrier()
        _left.append((rank(), size()))
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process evaluates and stores (always, without a launcher)."""
    return rank() == 0


def broadcast(value):
    """The main process's ``value`` (any picklable object), on every process."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


_turns: dict[str, int] = {}


@contextmanager
def main_first(purpose: str):
    """The main process runs the body first, then the others: it builds the cache entries
    the body loads (stage 0, the prior cache), which the others then find. Needed, not only
    thrifty: transformers' ``save_pretrained`` writes nothing on a process of rank > 0. The
    others wait without a time limit (stage 0 may take hours; should the main process die,
    the launcher stops them). Every process must enter it for the same purposes in the same
    order."""
    if not active():
        yield
        return
    _turns[purpose] = _turns.get(purpose, 0) + 1
    key = f"forgetbench/ready/{purpose}/{_turns[purpose]}"
    store = dist.distributed_c10d._get_default_store()
    if is_main():
        yield
        store.set(key, "1")  # not on failure: the launcher stops the others
        return
    while not store.check([key]):
        time.sleep(0.2)
    yield


def seed_process(seed: int) -> None:
    """Per-process torch seed for training (dropout masks of different shards independent, as
    in one process); the methods' numpy generators (``ctx.generator``) stay identical."""
    if rank():
        digest = hashlib.sha256(f"{seed}:process:{rank()}".encode()).digest()
        torch.manual_seed(int.from_bytes(digest[:8], "little") % 2**63)


def prepare(accelerator, model, optimizer, scheduler):
    """accelerate's preparation; with several processes, without DDP's wrapper (a task's
    forward may call the model's submodules, e.g. its heads, which DDP would not see: the
    gradients are averaged by :func:`average_gradients` instead) and with the scheduler
    stepped once per global batch."""
    if size() == 1:
        return accelerator.prepare(model, optimizer, scheduler)
    from accelerate.scheduler import AcceleratedScheduler

    optimizer = accelerator.prepare_optimizer(optimizer)
    scheduler = AcceleratedScheduler(scheduler, optimizer, split_batches=True)
    return model, optimizer, scheduler


def shard(batch: Batch) -> Batch:
    """This process's rows (``rank, rank + W, ...``) of a global batch. Every tensor of the
    task's inputs has a row per example (:class:`~forgetbench.api.Batch`)."""
    start, step, rows = rank(), size(), len(batch)

    def take(value):
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
            return value[start::step].contiguous()
        if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == rows:
            return value[start::step].copy()  # a host copy of a row tensor (a task's own)
        return value

    inputs = {name: take(value) for name, value in batch.inputs.items()}
    return Batch(inputs, take(batch.ids), take(batch.is_prior), take(batch.index))


def gather_rows(outputs: PerSample) -> PerSample:
    """Per-sample results of the global batch in its row order, on the CPU, from every
    process's shard (what ``outputs.detach_cpu()`` gives one process). One collective."""
    columns = (outputs.loss, outputs.success, outputs.confidence)
    packed = torch.stack([column.detach().double() for column in columns])  # exact: [3, b]
    parts = [torch.empty_like(packed) for _ in range(size())]
    dist.all_gather(parts, packed)
    # part r holds global rows r, r + W, ...: interleave them back
    rows = torch.stack(parts, dim=2).reshape(3, -1).cpu()
    return PerSample(loss=rows[0].float(), success=rows[1].bool(), confidence=rows[2].float())


def average_gradients(parameters: list[torch.Tensor]) -> None:
    """Each gradient's mean over the processes, what DDP computes. A parameter that got no
    gradient on any process keeps none (AdamW then skips it, as one process would); one with
    a gradient on some process counts zero where it has none."""
    if not parameters:
        return
    world = size()
    present = [p.grad is not None for p in parameters]
    counts = torch.tensor(present, dtype=torch.int32, device=parameters[0].device)
    dist.all_reduce(counts)
    grads = []
    with torch.no_grad():
        for parameter, count in zip(parameters, counts.tolist(), strict=True):
            if count and parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            if count:
                grads.append(parameter.grad)
        for bucket in _buckets(grads):
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= world
            for grad, value in zip(
                bucket, torch._utils._unflatten_dense_tensors(flat, bucket), strict=True
            ):
                grad.copy_(value)


def _buckets(tensors: list[torch.Tensor]):
    """Consecutive groups of one dtype and device of at most ``BUCKET_ELEMENTS`` values."""
    bucket: list[torch.Tensor] = []
    filled = 0
    for tensor in tensors:
        fits = filled + tensor.numel() <= BUCKET_ELEMENTS
        same = bucket and (tensor.dtype, tensor.device) == (bucket[0].dtype, bucket[0].device)
        if bucket and not (fits and same):
            yield bucket
            bucket, filled = [], 0
        bucket.append(tensor)
        filled += tensor.numel()
    if bucket:
        yield bucket


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """``values`` averaged over the processes (the training-loss curve)."""
    total = values.clone()
    dist.all_reduce(total)
    return total / size()


class ShardCounts:
    """The compute a process spends on its shard during training steps, summed over the
    processes at the end (work every process repeats, like a method's setup, counts once)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.local = dict.fromkeys(COUNTED, 0)

    def track(self, compute: Compute):
        return self._track(compute) if self.enabled else nullcontext()

    @contextmanager
    def _track(self, compute: Compute):
        before = {name: getattr(compute, name) for name in COUNTED}
        yield
        for name in COUNTED:
            self.local[name] += getattr(compute, name) - before[name]

    def sum_into(self, compute: Compute, device: torch.device) -> None:
        """Replace this process's shard counts in ``compute`` by their sum over processes."""
        if not self.enabled:
            return
        mine = [int(self.local[name]) for name in COUNTED]
        total = torch.tensor(mine, dtype=torch.int64, device=device)
        dist.all_reduce(total)
        for name, own, every in zip(COUNTED, mine, total.tolist(), strict=True):
            setattr(compute, name, getattr(compute, name) - own + int(every))


def report_failure(reason: str) -> None:
    """A process other than the main one failed: leave the reason where the main process
    looks (the launcher's key-value store; never the results store)."""
    try:
        store = dist.distributed_c10d._get_default_store()
        # the first failure wins: the others follow from it (their peer left)
        store.compare_set(FAILURE_KEY, "", f"process {rank()} of {size()}: {reason}")
    except Exception as error:  # the main process may be gone already
        log.warning("could not report this process's failure to the main process: %s", error)


def peer_failure() -> str | None:
    """The reason another process left with :func:`report_failure`, if any."""
    if not active():
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        if store.check([FAILURE_KEY]):
            return store.get(FAILURE_KEY).decode()
    except Exception:
        return None
    return None


class WorkerStore:
    """What a process other than the main one has instead of the results store: it writes
    nothing; its failure goes to the main process (:func:`report_failure`)."""

    def update_run(self, *args, **kwargs) -> None:
        pass

    heartbeat = finish_run = update_run

    def get_run(self, run_id: int) -> None:
        """A worker reads no row: what the main process stores is its own."""
        return None

    def fail_run(self, run_id: int, error: str, status: str = "failed") -> None:
        if status == "failed":  # interrupted: the launcher stops it, the cause is elsewhere
            report_failure(error)


def check_batch(batch_size: int) -> None:
    """Equal shards: ``batch_size`` a multiple of the number of processes."""
    if batch_size % size():
        raise ForgetbenchError(
            f"batch_size {batch_size} is not a multiple of the {size()} processes: the global"
            f" batch is split evenly (give e.g. batch_size={size() * max(1, batch_size // size())})"
        )
