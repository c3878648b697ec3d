"""The run context: what a task and a method may read about the current run, and the one place
where inference is batched, autocast and counted (so compute accounting stays in the core)."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from forgetbench import distributed
from forgetbench.api import (
    Batch,
    Compute,
    ModelBundle,
    PerSample,
    PriorPredictions,
    Split,
    Task,
    plugin_key,
)
from forgetbench.cache import cached_dir
from forgetbench.config import TrainConfig
from forgetbench.errors import ForgetbenchError
from forgetbench.progress import progress

if TYPE_CHECKING:
    from accelerate import Accelerator


def make_batch(
    task: Task, bundle: ModelBundle, examples: list[dict], indices, is_prior: np.ndarray
) -> Batch:
    """The task's inputs for ``examples`` plus the engine's bookkeeping (on the CPU)."""
    return Batch(
        inputs=task.collate(bundle, examples),
        ids=torch.tensor([int(e["id"]) for e in examples], dtype=torch.long),
        is_prior=torch.as_tensor(np.asarray(is_prior, dtype=bool)),
        index=torch.as_tensor(np.asarray(indices, dtype=np.int64)),
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``batch`` on ``device``; to a GPU through pinned memory without waiting for the copy
    (the device's stream orders it before the kernels that read it)."""
    if torch.device(device).type != "cuda":
        return batch.to(device)
    move = lambda t: t.pin_memory().to(device, non_blocking=True)  # noqa: E731
    inputs = {k: move(v) if isinstance(v, torch.Tensor) else v for k, v in batch.inputs.items()}
    return Batch(inputs, move(batch.ids), move(batch.is_prior), move(batch.index), host=batch.host)


def length_order(split: Split) -> np.ndarray:
    """Positions of ``split`` by increasing length of the examples' text and sequence fields
    (characters or items: a proxy for tokens any family shares), stable; examples without
    such fields (images) keep split order."""
    sized = (str, list, tuple)
    lengths = [sum(len(v) for v in e.values() if isinstance(v, sized)) for e in split.examples]
    return np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")


def evaluation_order(split: Split, device: torch.device | str) -> np.ndarray:
    """The order :meth:`RunContext.predict` batches a split in: on a GPU by length (less
    padding, the same per-example results up to float rounding); on the CPU in split order,
    which keeps CPU results bit for bit (padding changes the last bits of a float)."""
    if torch.device(device).type == "cpu":
        return np.arange(len(split))
    return length_order(split)


class RunContext:
    """Read-only for plugins. Built once per run by the runner (stage 0 gets its own).

    Attributes: ``run_id``, ``seed``, ``device``, ``task``, ``train`` (the
    :class:`~forgetbench.config.TrainConfig` budget), ``cache_dir``, ``compute`` (a method adds
    inference it spends of its own through :meth:`forward` / :meth:`predict` with
    ``extra=True``), ``logger``, ``trust_remote_code`` and, once the prior model is loaded,
    ``bundle`` (the :class:`~forgetbench.api.ModelBundle`) and ``new_param_names`` (parameters
    the new task added, e.g. a fresh head).
    """

    def __init__(
        self,
        *,
        run_id: int | None,
        seed: int,
        task: Task,
        train: TrainConfig,
        device: torch.device,
        compute: Compute | None = None,
        logger: logging.Logger | None = None,
        cache_dir: Path | None = None,
        trust_remote_code: bool = False,
        accelerator: Accelerator | None = None,
    ):
        self.run_id = run_id
        self.seed = seed
        self.task = task
        self.train = train
        self.device = device
        self.compute = compute if compute is not None else Compute()
        self.logger = logger or logging.getLogger("forgetbench")
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        self.accelerator = accelerator
        self.bundle: ModelBundle | None = None
        self.new_param_names: frozenset[str] = frozenset()
        self.prior_cache: PriorCache | None = None

    def attach(self, bundle: ModelBundle, new_param_names: frozenset[str], prior_train: Split):
        """Bind the prior model (the runner does this once, before any method sees the ctx)."""
        self.bundle = bundle
        self.new_param_names = new_param_names
        self.prior_cache = PriorCache(self, prior_train)

    def for_stage0(
        self, train: TrainConfig, accelerator: Accelerator, bundle: ModelBundle
    ) -> RunContext:
        """The context stage 0 trains ``bundle`` under: seed 0 and compute of its own (the
        prior model belongs to the scenario, not to a run)."""
        stage_ctx = RunContext(
            run_id=None,
            seed=0,
            task=self.task,
            train=train,
            device=accelerator.device,
            logger=self.logger,
            cache_dir=self.cache_dir,
            trust_remote_code=self.trust_remote_code,
            accelerator=accelerator,
        )
        stage_ctx.bundle = bundle
        return stage_ctx

    def generator(self, purpose: str) -> np.random.Generator:
        """A numpy generator derived from the run seed and a purpose string."""
        digest = hashlib.sha256(f"{self.seed}:{purpose}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def autocast(self):
        """The run's mixed-precision context (a no-op without an accelerator)."""
        return self.accelerator.autocast() if self.accelerator is not None else nullcontext()

    def _count(self, n: int, extra: bool) -> None:
        if extra:
            self.compute.extra_inference += n
        else:
            self.compute.eval_inference += n

    def count_extra(self, forward: int = 0, backward: int = 0) -> None:
        """Charge a method's own work to the run: ``forward`` samples of extra inference and
        ``backward`` samples of extra backward passes (``Compute.extra_backward``).

        Inference through :meth:`forward`, :meth:`predict` or :meth:`batches` with
        ``extra=True`` is counted already; use this for backward passes (e.g. EWC's Fisher:
        one per sample) and for work a cache hit skipped (charged as if it ran)."""
        if forward < 0 or backward < 0:
            raise ValueError(f"counts must be >= 0, got forward={forward}, backward={backward}")
        self.compute.extra_inference += forward
        self.compute.extra_backward += backward

    def chunks(
        self, split: Split, batch_size: int | None = None, extra: bool = False
    ) -> Iterator[tuple[range, list[dict[str, Any]]]]:
        """(indices, examples) chunks over a whole split in order, counted as evaluation
        inference (``extra=True``: as the calling method's extra inference)."""
        size = batch_size or self.train.eval_batch_size
        for start in range(0, len(split), size):
            indices = range(start, min(start + size, len(split)))
            self._count(len(indices), extra)
            yield indices, [split[i] for i in indices]

    def batches(
        self, split: Split, batch_size: int | None = None, extra: bool = False
    ) -> Iterator[Batch]:
        """Collated batches (:class:`~forgetbench.api.Batch`) over a whole split, in split
        order, on the run's device.

        ``split`` is any :class:`~forgetbench.api.Split`: one of the run's four or a subset
        built from one (``Split("prior_fisher", data.prior_train.examples[:256])``).
        ``batch.is_prior`` is True for every row when the split's name starts with ``prior``
        (the prior task's examples, forwarded through the prior head), else False;
        ``batch.index`` is the position in ``split``. No ``no_grad`` here: wrap the loop in
        ``torch.inference_mode()`` for inference, or leave gradients on to backpropagate. Each
        batch is counted when it is yielded: as evaluation inference, or with ``extra=True``
        as the calling method's extra inference (``Compute.extra_inference``, one per
        example); backward passes are counted with :meth:`count_extra`.
        ``batch_size`` defaults to ``train.eval_batch_size``."""
        is_prior = split.name.startswith("prior")
        for indices, examples in self.chunks(split, batch_size, extra):
            batch = make_batch(self.task, self.bundle, examples, indices, [is_prior] * len(indices))
            yield to_device(batch, self.device)

    def forward(
        self,
        model: torch.nn.Module,
        batch: Batch,
        with_features: bool = False,
        extra: bool = False,
    ) -> PerSample:
        """The task's forward pass on one batch under the run's autocast: a
        :class:`~forgetbench.api.PerSample` on the batch's device, attached to the graph unless
        the caller disabled gradients. ``extra=True`` counts the batch as the calling method's
        extra inference (one per example); the model's train/eval mode is the caller's."""
        if extra:
            self.compute.extra_inference += len(batch)
        with self.autocast():
            return self.task.forward(model, batch.inputs, with_features=with_features)

    def predict(
        self, model: torch.nn.Module, split: Split, extra: bool = False, label: str | None = None
    ) -> PerSample:
        """Per-sample results of ``model`` over a whole split (or a subset: see
        :meth:`batches`), detached on the CPU in split order (``loss``, ``success``,
        ``confidence``; no features or logits).

        Runs in eval mode (the model's mode is restored) under ``torch.inference_mode()``: no
        gradients. Counted as evaluation inference, or with ``extra=True`` as the calling
        method's extra inference, one per example. ``label`` shows a progress line."""
        was_training = model.training
        model.eval()
        outputs = []
        size = self.train.eval_batch_size
        order = evaluation_order(split, self.device)
        bar = progress(label or "", math.ceil(len(split) / size), label is not None)
        try:
            with torch.inference_mode(), bar as step:
                for start in range(0, len(split), size):
                    batch = self._batch_of(split, order[start : start + size], extra)
                    with self.autocast():
                        out = self.task.forward(model, batch.inputs)
                    outputs.append(PerSample(out.loss, out.success, out.confidence))
                    step()
        finally:
            model.train(was_training)
        result = PerSample.concat(outputs).detach_cpu()  # one wait for the device, at the end
        inverse = torch.as_tensor(np.argsort(order, kind="stable"))
        return PerSample(result.loss[inverse], result.success[inverse], result.confidence[inverse])

    def _batch_of(self, split: Split, index: np.ndarray, extra: bool) -> Batch:
        """The examples of ``split`` at ``index``, collated, counted, on the run's device."""
        self._count(len(index), extra)
        is_prior = [split.name.startswith("prior")] * len(index)
        batch = make_batch(self.task, self.bundle, [split[int(i)] for i in index], index, is_prior)
        return to_device(batch, self.device)

    def prior_predictions(self) -> PriorPredictions:
        """The prior model's per-sample results on the prior train set, from the shared cache.
        Only before training starts (in ``forgetbench_setup`` or ``forgetbench_prior_sampler``)."""
        if self.prior_cache is None:
            raise ForgetbenchError("prior predictions are not available before the prior model")
        return self.prior_cache.get()


class PriorCache:
    """f0's per-sample loss, success and confidence on the prior train set.

    Keyed by the prior model's identity, the split's fingerprint, the task (class, version,
    config, source code) and the evaluation settings; shared on disk by every run and method.
    Building it is one inference pass; a method that relies on it charges that pass to its own
    compute (a cache hit must not change a run's reported cost). Only valid while the model is
    still f0: a first request after training started is refused.
    """

    def __init__(self, ctx: RunContext, split: Split):
        self.ctx = ctx
        self.split = split
        self.value: PriorPredictions | None = None
        self.frozen = False

    def freeze(self) -> None:
        """Training starts: the model is no longer f0."""
        self.frozen = True

    def get(self) -> PriorPredictions:
        if self.value is None:
            if self.frozen:
                raise ForgetbenchError(
                    "prior predictions must be requested before training (in setup or"
                    " prior_sampler)"
                )
            self.value = self._load()
        return self.value

    def _load(self) -> PriorPredictions:
        bundle = self.ctx.bundle
        # f0, the task (what its forward reads: max_length, a success threshold, ...; its
        # code) and the settings that change the numbers (precision, device, ...), as a plugin's
        key = plugin_key(self.ctx, {"data": self.split.fingerprint(), "v": 3})

        def build(directory: Path) -> dict:
            # Inference here is the cache's, not a run's: counted by whoever relies on it.
            counting = self.ctx.compute
            self.ctx.compute = Compute()
            try:
                result = self.ctx.predict(bundle.model, self.split, label="prior cache")
            finally:
                self.ctx.compute = counting
            tensors = {
                "loss": result.loss.contiguous(),
                "success": result.success.to(torch.uint8),
                "confidence": result.confidence.contiguous(),
            }
            save_file(tensors, str(directory / "predictions.safetensors"))
            return {"model": bundle.identity, "split": self.split.name, "size": len(self.split)}

        with distributed.main_first("prior-cache"):  # built once, by the main process
            entry = cached_dir("prior-predictions", key, build)
        tensors = load_file(str(entry / "predictions.safetensors"))
        return PriorPredictions(
            loss=tensors["loss"].numpy(),
            success=tensors["success"].numpy().astype(bool),
            confidence=tensors["confidence"].numpy(),
        )
