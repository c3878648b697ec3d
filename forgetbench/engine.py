"""The run engine: seeding, batching, the training loop, evaluation, the prior cache."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file

from forgetbench.api import Compute, PerSample, PriorPredictions, PriorSampler, RunContext, Split
from forgetbench.cache import cached_dir, hash_json
from forgetbench.checkpoint import Checkpointer
from forgetbench.config import TrainConfig

log = logging.getLogger("forgetbench")
stderr = Console(stderr=True)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; ask torch for deterministic kernels where they exist."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def make_accelerator(train: TrainConfig) -> Accelerator:
    """accelerate handles device placement and mixed precision; ``device=cpu`` forces the CPU."""
    use_cpu = train.device == "cpu" or (train.device == "auto" and not torch.cuda.is_available())
    if train.device == "cuda" and not torch.cuda.is_available():
        from forgetbench.errors import ForgetbenchError

        raise ForgetbenchError("device=cuda was asked for but no CUDA device is available")
    return Accelerator(cpu=use_cpu, mixed_precision=train.mixed_precision)


@contextmanager
def progress(description: str, total: int, enabled: bool = True):
    """A rich progress bar on stderr; yields ``advance()``. Off a terminal (CI, logs) it prints
    a plain line at every tenth of the work instead."""
    if enabled and not stderr.is_terminal:
        done = [0]
        started = time.perf_counter()

        def advance(n: int = 1) -> None:
            before, done[0] = done[0], done[0] + n
            if total >= 20 and done[0] * 10 // total > before * 10 // total:
                stderr.print(
                    f"{description}: {done[0]}/{total} ({time.perf_counter() - started:.0f} s)",
                    highlight=False,
                )

        yield advance
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
        disable=not enabled,
    )
    with bar:
        task_id = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task_id, n)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate_examples(task, tokenizer, examples: Sequence[dict], indices: Sequence[int]) -> dict:
    """The task's collate plus the engine's bookkeeping: ids, is_prior, index into the split."""
    batch = task.collate(examples, tokenizer)
    batch["ids"] = torch.tensor([int(e["id"]) for e in examples], dtype=torch.long)
    batch["is_prior"] = torch.tensor([e["source"] == "prior" for e in examples], dtype=torch.bool)
    batch["index"] = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    return batch


def eval_batches(
    task,
    tokenizer,
    split: Split,
    batch_size: int,
    device: torch.device,
    counter: Compute | None = None,
) -> Iterator[dict]:
    """Batches over a whole split in order, for inference."""
    for start in range(0, len(split), batch_size):
        indices = range(start, min(start + batch_size, len(split)))
        examples = [split[i] for i in indices]
        if counter is not None:
            counter.eval_inference += len(examples)
        yield to_device(collate_examples(task, tokenizer, examples, list(indices)), device)


@torch.inference_mode()
def predict(
    task,
    model,
    tokenizer,
    split: Split,
    batch_size: int,
    device: torch.device,
    label: str = "predicting",
) -> PerSample:
    """Per-sample results of ``model`` (eval mode) over a whole split, on CPU."""
    model.eval()
    outputs = []
    with progress(label, math.ceil(len(split) / batch_size)) as advance:
        for batch in eval_batches(task, tokenizer, split, batch_size, device):
            outputs.append(task.forward(model, batch).detach_cpu())
            advance()
    return PerSample(
        loss=torch.cat([o.loss for o in outputs]),
        correct=torch.cat([o.correct for o in outputs]),
        confidence=torch.cat([o.confidence for o in outputs]),
    )


def prior_predictions(
    task,
    model,
    tokenizer,
    split: Split,
    model_identity: str,
    train: TrainConfig,
    device: torch.device,
) -> PriorPredictions:
    """The prior cache: f0's per-sample loss, correctness and confidence on ``split``.

    Keyed by the prior model's identity and the split's fingerprint, shared by every run and
    method. Building it is one inference pass; a method that relies on it charges that pass to
    its own compute (the cache hit/miss must not change a run's reported cost).
    """
    key = hash_json({"model": model_identity, "data": split.fingerprint(), "v": 1})

    def build(directory: Path) -> dict:
        result = predict(
            task, model, tokenizer, split, train.eval_batch_size, device, "prior cache"
        )
        save_file(
            {
                "loss": result.loss.contiguous(),
                "correct": result.correct.to(torch.uint8),
                "confidence": result.confidence.contiguous(),
            },
            str(directory / "predictions.safetensors"),
        )
        return {"model": model_identity, "split": split.name, "size": len(split)}

    entry = cached_dir("prior-predictions", key, build)
    tensors = load_file(str(entry / "predictions.safetensors"))
    return PriorPredictions(
        loss=tensors["loss"].numpy(),
        correct=tensors["correct"].numpy().astype(bool),
        confidence=tensors["confidence"].numpy(),
        labels=split.column("label") if split.examples and "label" in split[0] else np.array([]),
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

    def __init__(self, size: int, rng: np.random.Generator):
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


def train_loop(
    task,
    model,
    tokenizer,
    train_split: Split,
    ctx: RunContext,
    accelerator: Accelerator,
    hooks=None,
    sampler: PriorSampler | None = None,
    prior_split: Split | None = None,
    needs_features: bool = False,
    label: str = "training",
    checkpointer: Checkpointer | None = None,
) -> tuple[torch.nn.Module, list[tuple[str, int, float]]]:
    """Fine-tune ``model`` on ``train_split`` for ``ctx.train.steps`` steps.

    Each batch has ``batch_size`` slots; a prior sampler, when given, fills
    ``sampler.count(batch_size)`` of them with prior-train examples. The loss is the mean of
    per-sample losses times the methods' weights (multiplied) plus their regularisers (summed).
    With a ``checkpointer``, the loop saves its complete state every ``checkpointer.every``
    steps and, when a checkpoint exists, continues from it exactly where it stopped.
    Returns the trained (unwrapped) model and the loss curve.
    """
    train = ctx.train
    model.train()
    optimizer = make_optimizer(model, train)
    scheduler = linear_warmup_decay(optimizer, train.steps, train.warmup_ratio)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    stream = BatchStream(len(train_split), ctx.generator("batches"))
    sample_rng = ctx.generator("prior-sampler")
    curve: list[tuple[str, int, float]] = []
    parameters = [p for p in model.parameters() if p.requires_grad]
    done = 0
    if checkpointer is not None and checkpointer.exists():
        done, loop = checkpointer.restore(accelerator.unwrap_model(model), optimizer, scheduler)
        stream.load_state_dict(loop["stream"])
        sample_rng.bit_generator.state = loop["sample_rng"]
        if sampler is not None:
            sampler.load_state_dict(loop["sampler"])
        curve = [tuple(point) for point in loop["curve"]]
        ctx.logger.warning("resuming %s from its checkpoint at step %d", label, done)
    with progress(label, train.steps) as advance:
        advance(done)
        for step in range(done + 1, train.steps + 1):
            n_prior = sampler.count(train.batch_size) if sampler is not None else 0
            new_index = stream.take(train.batch_size - n_prior)
            examples = [train_split[int(i)] for i in new_index]
            indices = list(new_index)
            if n_prior:
                prior_index = sampler.sample(n_prior, sample_rng)
                examples += [prior_split[int(i)] for i in prior_index]
                indices += list(prior_index)
            batch = collate_examples(task, tokenizer, examples, indices)
            on_device = to_device(batch, accelerator.device)
            with accelerator.autocast():
                outputs = task.forward(model, on_device, with_features=needs_features)
                loss = _combine_loss(ctx, hooks, model, on_device, outputs)
            accelerator.backward(loss)
            if train.max_grad_norm:
                accelerator.clip_grad_norm_(parameters, train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ctx.compute.forwarded += len(examples)
            ctx.compute.backpropagated += len(examples)
            if hooks is not None:
                hooks.forgetbench_after_step(
                    ctx=ctx, step=step, model=model, batch=batch, per_sample=outputs.detach_cpu()
                )
            curve.append(("train/loss", step, float(loss.detach())))
            if checkpointer is not None and checkpointer.due(step, train.steps):
                loop = {
                    "stream": stream.state_dict(),
                    "sample_rng": sample_rng.bit_generator.state,
                    "sampler": sampler.state_dict() if sampler is not None else {},
                    "curve": curve,
                }
                checkpointer.save(step, accelerator.unwrap_model(model), optimizer, scheduler, loop)
            advance()
    return accelerator.unwrap_model(model), curve


def train_stage0(task, model, tokenizer, prior_train: Split, ctx: RunContext):
    """Stage 0: fine-tune ``model`` on the prior task with ``task.stage0``, seed 0 (the prior
    model belongs to the scenario, not to a run; its compute is not the run's)."""
    stage_ctx = dataclasses.replace(ctx, seed=0, train=task.stage0, compute=Compute())
    accelerator = make_accelerator(task.stage0)
    model, _ = train_loop(
        task,
        model.to(accelerator.device),
        tokenizer,
        prior_train,
        stage_ctx,
        accelerator,
        label="stage 0",
    )
    return model


def _combine_loss(ctx, hooks, model, batch, outputs: PerSample) -> torch.Tensor:
    losses = outputs.loss.float()
    if hooks is None:
        return losses.mean()
    weights = torch.ones_like(losses)
    for result in hooks.forgetbench_sample_weights(ctx=ctx, batch=batch, losses=losses):
        if result is not None:
            weights = weights * result.to(losses.device, losses.dtype)
    loss = (weights * losses).mean()
    for penalty in hooks.forgetbench_regularizer(
        ctx=ctx, model=model, batch=batch, outputs=outputs
    ):
        if penalty is not None:
            loss = loss + penalty
    return loss


def elapsed(since: float) -> float:
    return round(time.perf_counter() - since, 3)
