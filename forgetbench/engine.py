"""The training engine: seeding, the device, the batch stream and the training loop."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState

from forgetbench import distributed
from forgetbench.api import Batch, PerSample, PriorSampler, Split
from forgetbench.checkpoint import Checkpointer
from forgetbench.config import TrainConfig
from forgetbench.context import RunContext, make_batch, to_device
from forgetbench.errors import ForgetbenchError
from forgetbench.progress import progress

log = logging.getLogger("forgetbench")
# Steps whose losses wait on the device before the curve takes them (one transfer each time).
CURVE_FLUSH = 256


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; ask torch for deterministic kernels where they exist.

    Deterministic mode would also fill every new tensor's memory with NaN (a debugging aid
    that catches reads of uninitialised memory at the cost of a write of every allocation,
    docs/performance.md): turned off, since no kernel here reads memory it did not write, and
    the results are the same bit for bit (tests/test_invariance.py)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def uses_tf32(train: TrainConfig) -> bool:
    """Whether fp32 matrix products of a run use TF32: on an Ampere or newer GPU, unless
    ``FORGETBENCH_TF32=0``. Recorded with the run's versions (``torch.tf32``)."""
    if os.environ.get("FORGETBENCH_TF32", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if train.device == "cpu" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability()[0] >= 8


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA matmuls and convolutions (the CPU's fp32 is untouched)."""
    precision = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.conv.fp32_precision = precision


def check_device(train: TrainConfig) -> None:
    """``device=cuda`` needs a CUDA device: refused before a run starts, not after."""
    if train.device == "cuda" and not torch.cuda.is_available():
        raise ForgetbenchError("device=cuda was asked for but no CUDA device is available")


def uses_cpu(train: TrainConfig) -> bool:
    """Whether a run trains on the CPU: ``device=cpu``, or ``auto`` without a CUDA device."""
    return train.device == "cpu" or (train.device == "auto" and not torch.cuda.is_available())


def make_accelerator(train: TrainConfig) -> Accelerator:
    """accelerate handles device placement and mixed precision; ``device=cpu`` forces the CPU."""
    check_device(train)
    use_cpu = uses_cpu(train)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != train.mixed_precision:
        # accelerate keeps one process-wide state and refuses another precision (stage 0
        # and a run, or several runs in one process): start it afresh
        AcceleratorState._reset_state()
    device = PartialState._shared_state.get("device")
    if (
        device is not None
        and (device.type == "cpu") != use_cpu
        and state.get("num_processes", 1) == 1
    ):
        AcceleratorState._reset_state(reset_partial_state=True)  # and another device
    set_tf32(uses_tf32(train))
    return Accelerator(cpu=use_cpu, mixed_precision=train.mixed_precision)


def plain_steps(accelerator: Accelerator) -> bool:
    """Whether accelerate's ``backward`` and its optimiser and scheduler wrappers' ``step`` do
    nothing beyond plain PyTorch's here: no loss scaler (fp16), one optimiser step per batch,
    and none of the engines that step by themselves. Then the loop calls PyTorch's directly:
    the same arithmetic (accelerate divides the loss by 1), without the wrapper's host work,
    which a GPU step waits on (its optimiser probes for an optional package twice a step)."""
    from accelerate.utils import DistributedType

    return (
        accelerator.scaler is None
        and accelerator.gradient_accumulation_steps == 1
        and accelerator.distributed_type
        not in (
            DistributedType.DEEPSPEED,
            DistributedType.MEGATRON_LM,
            DistributedType.XLA,
            DistributedType.FSDP,
        )
    )


def linear_warmup_decay(optimizer, steps: int, warmup_ratio: float):
    warmup = int(steps * warmup_ratio)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (steps - step) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: torch.nn.Module, train: TrainConfig):
    # No weight decay on biases and norms (standard BERT fine-tuning practice).
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=train.lr)


class BatchStream:
    """Endless, seeded, epoch-wise shuffled order over a split (the new-task data)."""

    def __init__(self, size: int, rng: np.random.Generator, name: str = "training split"):
        if size <= 0:  # take() would never return
            raise ForgetbenchError(f"cannot train on {name}: it has {size} examples")
        self.size, self.rng = size, rng
        self.order: np.ndarray = rng.permutation(size)
        self.position = 0

    def state_dict(self) -> dict:
        return {
            "order": self.order.tolist(),
            "position": self.position,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.order = np.asarray(state["order"], dtype=np.int64)
        self.position = int(state["position"])
        self.rng.bit_generator.state = state["rng"]

    def take(self, n: int) -> np.ndarray:
        taken = []
        while n > 0:
            if self.position >= self.size:
                self.order, self.position = self.rng.permutation(self.size), 0
            chunk = self.order[self.position : self.position + n]
            taken.append(chunk)
            self.position += len(chunk)
            n -= len(chunk)
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)


def combine_loss(ctx: RunContext, hooks, model, batch: Batch, outputs: PerSample) -> torch.Tensor:
    """Mean of per-sample losses times the methods' weights (multiplied), plus their
    regularisers (summed)."""
    losses = outputs.loss.float()
    if hooks is None:
        return losses.mean()
    weights = None  # all ones: (1 * loss).mean() is loss.mean() bit for bit, without two kernels
    for result in hooks.forgetbench_sample_weights(ctx=ctx, batch=batch, losses=losses):
        if result is not None:
            result = result.to(losses.device, losses.dtype, non_blocking=True)
            weights = result if weights is None else weights * result
    loss = losses.mean() if weights is None else (weights * losses).mean()
    for penalty in hooks.forgetbench_regularizer(
        ctx=ctx, model=model, batch=batch, outputs=outputs
    ):
        if penalty is not None:
            loss = loss + penalty
    return loss


@dataclass
class TrainLoop:
    """Fine-tune a model on ``train_split`` for ``ctx.train.steps`` steps.

    Each batch has ``batch_size`` slots; a prior sampler, when given, fills
    ``sampler.count(batch_size)`` of them with prior-train examples. The loss is
    :func:`combine_loss`. With a ``checkpointer``, the loop saves its complete state every
    ``checkpointer.every`` steps and, when a checkpoint exists, continues from it exactly where
    it stopped.

    With ``sharded`` under a launcher of several processes, each process trains on its rows of
    every global batch and the gradients are averaged (:mod:`forgetbench.distributed`); not
    sharded (stage 0), every process trains on the whole batch, the same way.
    """

    ctx: RunContext
    accelerator: Accelerator
    train_split: Split
    hooks: Any = None
    sampler: PriorSampler | None = None
    prior_split: Split | None = None
    needs_features: bool = False
    label: str = "training"
    train_is_prior: bool = False  # stage 0 trains on the prior task itself
    sharded: bool = False  # under a launcher, each process trains on its shard of each batch
    checkpointer: Checkpointer | None = None
    curve: list[tuple[str, int, float]] = field(default_factory=list)

    def run(self, model: torch.nn.Module) -> tuple[torch.nn.Module, list[tuple[str, int, float]]]:
        """Train; returns the trained (unwrapped) model and the loss curve.

        The loop never waits for the device except where a method asks for per-sample results
        (``forgetbench_after_step``): the losses of the curve stay on the device until a
        checkpoint or the end, and batches go to a GPU from pinned memory without blocking,
        so the host prepares the next batch while the device computes."""
        done = self._prepare(model)
        with progress(self.label, self.ctx.train.steps) as advance:
            advance(done)
            for step in range(done + 1, self.ctx.train.steps + 1):
                batch = self._next_batch()
                with self.counts.track(self.ctx.compute):
                    loss, outputs = self._step(batch)
                self._after_step(step, batch, loss, outputs)
                advance()
        self._flush_curve()
        self.counts.sum_into(self.ctx.compute, self.accelerator.device)
        return self.accelerator.unwrap_model(self.model), self.curve

    def _prepare(self, model: torch.nn.Module) -> int:
        """Optimiser, schedule, data order, sampler generator; restore a checkpoint if any.
        Returns the number of steps already done."""
        train = self.ctx.train
        model.train()
        optimizer = make_optimizer(model, train)
        scheduler = linear_warmup_decay(optimizer, train.steps, train.warmup_ratio)
        self.model, self.optimizer, self.scheduler = distributed.prepare(
            self.accelerator, model, optimizer, scheduler
        )
        self.world = distributed.size() if self.sharded else 1
        self.plain = plain_steps(self.accelerator)  # the wrappers stay for checkpoints, fp16
        self.counts = distributed.ShardCounts(self.world > 1)
        if self.world > 1:
            distributed.seed_process(self.ctx.seed)
        self.stream = BatchStream(
            len(self.train_split), self.ctx.generator("batches"), self.train_split.name
        )
        self.sample_rng = self.ctx.generator("prior-sampler")
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.pending: list[tuple[int, torch.Tensor]] = []  # (step, loss) not yet in the curve
        self.observed = self.hooks is not None and bool(
            self.hooks.forgetbench_after_step.get_hookimpls()
        )
        if self.checkpointer is None:
            return 0
        unwrapped = self.accelerator.unwrap_model(self.model)
        restored = self.checkpointer.restore(unwrapped, self.optimizer, self.scheduler)
        if restored is None:
            return 0
        done, loop = restored
        self.stream.load_state_dict(loop["stream"])
        self.sample_rng.bit_generator.state = loop["sample_rng"]
        if self.sampler is not None:
            self.sampler.load_state_dict(loop["sampler"])
        self.curve = [tuple(point) for point in loop["curve"]]
        self.ctx.logger.warning("resuming %s from its checkpoint at step %d", self.label, done)
        return done

    def _next_batch(self) -> Batch:
        """New-task examples, then the sampler's prior examples (on the CPU)."""
        batch_size = self.ctx.train.batch_size
        n_prior = self.sampler.count(batch_size) if self.sampler is not None else 0
        new_index = self.stream.take(batch_size - n_prior)
        examples = [self.train_split[int(i)] for i in new_index]
        indices = list(new_index)
        if n_prior:
            prior_index = self.sampler.sample(n_prior, self.sample_rng)
            examples += [self.prior_split[int(i)] for i in prior_index]
            indices += list(prior_index)
        is_prior = np.arange(len(examples)) >= len(new_index)
        is_prior |= self.train_is_prior
        return make_batch(self.ctx.task, self.ctx.bundle, examples, indices, is_prior)

    def _step(self, batch: Batch) -> tuple[torch.Tensor, PerSample]:
        """Forward, loss, backward, clip, optimiser and schedule steps (on this process's
        shard of the batch, the gradients averaged over the processes, when sharded)."""
        if self.world > 1:
            batch = distributed.shard(batch)
        on_device = to_device(batch, self.accelerator.device)
        with self.accelerator.autocast():
            outputs = self.ctx.task.forward(
                self.model, on_device.inputs, with_features=self.needs_features
            )
            loss = combine_loss(self.ctx, self.hooks, self.model, on_device, outputs)
        optimizer, scheduler = self.optimizer, self.scheduler
        if self.plain:  # PyTorch's own, under accelerate's wrappers (plain_steps)
            optimizer, scheduler = optimizer.optimizer, scheduler.scheduler
            loss.backward()
        else:
            self.accelerator.backward(loss)
        if self.world > 1:
            distributed.average_gradients(self.parameters)
        if self.ctx.train.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.parameters, self.ctx.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        self.ctx.compute.forwarded += len(batch)
        self.ctx.compute.backpropagated += len(batch)
        return loss, outputs

    def _after_step(self, step: int, batch: Batch, loss: torch.Tensor, outputs: PerSample):
        """Hooks observe the step; the curve and the checkpoint record it."""
        if self.observed:  # per-sample results on the CPU: the one wait for the device
            self.hooks.forgetbench_after_step(
                ctx=self.ctx,
                step=step,
                model=self.model,
                batch=batch,
                per_sample=(
                    distributed.gather_rows(outputs) if self.world > 1 else outputs.detach_cpu()
                ),
            )
        self.pending.append((step, loss.detach()))
        if len(self.pending) >= CURVE_FLUSH:
            self._flush_curve()
        if self.checkpointer is not None and self.checkpointer.due(step, self.ctx.train.steps):
            self._flush_curve()
            loop = {
                "stream": self.stream.state_dict(),
                "sample_rng": self.sample_rng.bit_generator.state,
                "sampler": self.sampler.state_dict() if self.sampler is not None else {},
                "curve": self.curve,
            }
            unwrapped = self.accelerator.unwrap_model(self.model)
            self.checkpointer.save(step, unwrapped, self.optimizer, self.scheduler, loop)

    def _flush_curve(self) -> None:
        """Move the pending losses to the curve (one transfer from the device)."""
        if self.pending:
            values = torch.stack([loss.double() for _, loss in self.pending])
            if self.world > 1:  # each process's loss is its shard's: their mean is the batch's
                values = distributed.mean_over_processes(values)
            values = values.tolist()
            steps = [step for step, _ in self.pending]
            self.curve += [("train/loss", s, v) for s, v in zip(steps, values, strict=True)]
            self.pending = []


def elapsed(since: float) -> float:
    return round(time.perf_counter() - since, 3)
