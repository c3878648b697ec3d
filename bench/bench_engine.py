"""Benchmark: forgetbench's training loop against a bare PyTorch loop and the Hugging Face
``Trainer`` on the same model, data, batches and steps.

The model is the offline ``wordnet`` scenario's (MiniLM-L6 with a fresh 21-class head), the
data its new task (chatterbot-corpus utterances), batch 32, max length 48, dynamic padding,
AdamW with linear warm-up and decay, gradient clipping at 1. All three loops see the same
batches in the same order (forgetbench's seeded data order). Each figure is the steady-state
samples/s (steps after the warm-up, median); ratios are paired step by step (the loops run
interleaved, each step on the same batch at about the same moment: see bench/common.py).

    .venv/bin/python bench/bench_engine.py [--quick] [--device auto|cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from bench.common import (
    Baton,
    Row,
    add_common_args,
    base_model,
    chunk_size,
    describe,
    loop_length,
    median_step,
    paired_ratio,
    pick_device,
    print_table,
    quiet_progress,
    wordnet_task,
)
from forgetbench.api import TrainConfig, masked_mean
from forgetbench.context import RunContext
from forgetbench.engine import (
    BatchStream,
    TrainLoop,
    linear_warmup_decay,
    make_accelerator,
    make_optimizer,
    seed_everything,
    set_tf32,
    uses_tf32,
)
from forgetbench_tasks.text_classification import base as routing

LR = 1e-4
ONE_HEAD = routing.one_head


class Setup:
    """The scenario's model, data and tokenizer, and the batch order every loop follows."""

    def __init__(self, device: torch.device, steps: int, batch_size: int, max_length: int = 48):
        self.device, self.steps, self.batch_size = device, steps, batch_size
        self.task, self.data = wordnet_task(max_length=max_length, prior_train_size=256)
        self.bundle, self.template = base_model(self.task, self.data)
        self.max_length = max_length
        ctx = self.context(TrainConfig(steps=steps, batch_size=batch_size))
        stream = BatchStream(len(self.data.new_train), ctx.generator("batches"))
        self.order = [stream.take(batch_size) for _ in range(steps)]

    def context(self, train: TrainConfig, accelerator=None) -> RunContext:
        ctx = RunContext(
            run_id=None,
            seed=0,
            task=self.task,
            train=train,
            device=accelerator.device if accelerator else self.device,
            accelerator=accelerator,
        )
        ctx.bundle = self.bundle
        return ctx

    def fresh_model(self) -> nn.Module:
        return copy.deepcopy(self.template).to(self.device).train()

    def tokenize(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        encoded = self.bundle.processor(
            [e["text"] for e in examples],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = dict(encoded)
        inputs["labels"] = torch.tensor([e["label"] for e in examples])
        return inputs


def new_head_logits(model, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
    """The scenario model's new-task logits, written out plainly."""
    output = model.encoder(
        input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
    )
    pooled = model.dropout(masked_mean(output.last_hidden_state, attention_mask))
    return model.heads["new"](pooled)


def autocast(device: torch.device, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def bare_loop(setup: Setup, clock, precision: str = "no") -> None:
    """A plain PyTorch loop: tokenize, move, forward, backward, clip, step."""
    model = setup.fresh_model()
    train = TrainConfig(steps=setup.steps, batch_size=setup.batch_size, lr=LR)
    optimizer = make_optimizer(model, train)
    scheduler = linear_warmup_decay(optimizer, train.steps, train.warmup_ratio)
    scaler = torch.amp.GradScaler(setup.device.type, enabled=precision == "fp16")
    examples = setup.data.new_train.examples
    for step, index in enumerate(setup.order, start=1):
        inputs = setup.tokenize([examples[i] for i in index])
        inputs = {k: v.to(setup.device) for k, v in inputs.items()}
        labels = inputs.pop("labels")
        with autocast(setup.device, precision):
            loss = F.cross_entropy(new_head_logits(model, **inputs).float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clock.mark(step)


class OrderedExamples(torch.utils.data.IterableDataset):
    """The shared batch order, flattened, for the Trainer."""

    def __init__(self, setup: Setup):
        self.examples = setup.data.new_train.examples
        self.order = [int(i) for index in setup.order for i in index]

    def __iter__(self):
        return (self.examples[i] for i in self.order)


class TrainerModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, token_type_ids=None):
        logits = new_head_logits(self.model, input_ids, attention_mask, token_type_ids)
        return {"loss": F.cross_entropy(logits.float(), labels), "logits": logits}


def trainer_loop(setup: Setup, clock, precision: str = "no") -> None:
    """transformers' Trainer with the same optimiser, schedule and clipping."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.mark(state.global_step)

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=setup.steps,
            per_device_train_batch_size=setup.batch_size,
            learning_rate=LR,
            weight_decay=0.01,
            warmup_steps=0.1,
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            optim="adamw_torch",
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=setup.device.type == "cpu",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            seed=0,
        )
        trainer = Trainer(
            model=TrainerModel(setup.fresh_model()),
            args=args,
            train_dataset=OrderedExamples(setup),
            data_collator=setup.tokenize,
            callbacks=[Marks()],
        )
        trainer.train()


class TimedLoop(TrainLoop):
    clock = None

    def _after_step(self, step, batch, loss, outputs):
        super()._after_step(step, batch, loss, outputs)
        self.clock.mark(step)


def forgetbench_loop(setup: Setup, clock, precision: str = "no") -> None:
    """forgetbench's TrainLoop running the ``finetune`` method, as ``forgetbench run`` does."""
    from forgetbench.registry import run_plugin_manager
    from forgetbench_plugins.finetune import Finetune

    train = TrainConfig(
        steps=setup.steps,
        batch_size=setup.batch_size,
        lr=LR,
        device=setup.device.type,
        mixed_precision=precision,
    )
    accelerator = make_accelerator(train)
    ctx = setup.context(train, accelerator)
    hooks = run_plugin_manager([Finetune()]).hook
    loop = TimedLoop(ctx, accelerator, setup.data.new_train, hooks=hooks, label="bench")
    loop.clock = clock
    loop.run(setup.fresh_model())


LOOPS = {
    "bare loop": bare_loop,
    "HF Trainer": trainer_loop,
    "forgetbench finetune": forgetbench_loop,
}


def as_now() -> None:
    """forgetbench's settings: no NaN fill of new tensors, one-head batches not routed."""
    torch.utils.deterministic.fill_uninitialized_memory = False
    routing.one_head = ONE_HEAD


def fill_on() -> None:
    torch.utils.deterministic.fill_uninitialized_memory = True


def routed() -> None:
    """Every batch's rows routed to their heads, as before 2026-12-04 (a gather, index copies,
    the row index sent to the device), even where all rows have one head."""
    as_now()
    routing.one_head = lambda inputs: None


def run(args) -> tuple[list[Row], str]:
    if not args.verbose:
        quiet_progress()
    device = pick_device(args.device)
    seed_everything(0)  # forgetbench's settings (deterministic kernels) for every loop alike
    if args.nondeterministic:
        torch.use_deterministic_algorithms(False)
    # every loop under forgetbench's TF32 default from its first step (forgetbench's loop sets
    # it process-wide when it starts, after the others' first steps)
    set_tf32(uses_tf32(TrainConfig(device=device.type)))
    steps, warmup = loop_length(device, args.quick, args.steps)
    chunk = chunk_size(device, steps - warmup)
    setup = Setup(device, steps, args.batch_size)
    loops = {
        name: (lambda clock, loop=loop: loop(setup, clock, args.precision))
        for name, loop in LOOPS.items()
    }
    on_turn = {name: as_now for name in loops}
    if args.ablation:  # what forgetbench's old settings cost: the NaN fill, the row routing
        loops["bare loop, NaN fill on"] = loops["bare loop"]
        on_turn["bare loop, NaN fill on"] = fill_on
        loops["forgetbench, rows routed"] = loops["forgetbench finetune"]
        on_turn["forgetbench, rows routed"] = routed
    # one round on a GPU moved the ratios by about 3 points between invocations (0.934-0.980 on
    # an H200, docs/performance.md); three rounds (30 paired chunks) by default there
    repeats = args.repeats or (3 if device.type == "cuda" else 1)
    rounds = [Baton(device, warmup, steps, chunk).run(loops, on_turn) for _ in range(repeats)]
    rows = []
    for name in loops:  # speed ratios: bare-loop time over this loop's, step by step
        rate = args.batch_size / median_step(rounds, name)
        speed = paired_ratio(rounds, "bare loop", name)
        rows.append(Row("engine", f"{name} [{args.precision}]", rate, "samples/s", speed))
    rows[2].target = ">=0.95"
    ratio = paired_ratio(rounds, "HF Trainer", "forgetbench finetune")
    rows.append(Row("engine", "forgetbench / HF Trainer", ratio, "x", ratio, ">=1.0"))
    return rows, describe(device)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also the bare loop with the NaN fill on, forgetbench with every batch's rows routed",
    )
    parser.add_argument(
        "--nondeterministic", action="store_true", help="without torch's deterministic kernels"
    )
    return parser


def main(argv=None) -> list[Row]:
    args = parser().parse_args(argv)
    rows, device = run(args)
    print_table(rows, device, "engine overhead")
    return rows


if __name__ == "__main__":
    main()
