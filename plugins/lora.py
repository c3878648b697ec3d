"""``lora``: train low-rank adapters (peft) instead of the prior model's weights.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022 (arXiv:2106.09685).
The prior model's weights stay frozen; rank-``r`` adapters ``B A`` (scaled by ``lora_alpha / r``)
are added to the target modules, and the new task's head trains in full: a fresh one, or the
one f0 already has that the task names (``Task.head_parameters``: CLIP's zero-shot class
weights for the new dataset, which plain fine-tuning trains too; before 2026-12-03 LoRA left
them frozen on CLIP).

Defaults:
- ``r=8``; the adapted modules are the task family's choice (``Task.lora_target_modules``:
  the attention ``query`` and ``value`` projections of BERT-family encoders, the paper's
  RoBERTa/DeBERTa GLUE setting, W_q and W_v); ``--set lora.target_modules=a,b`` overrides it.
  A task that implements no default, run without ``target_modules``, is refused before
  anything is stored.
- ``lora_alpha = 2r``: the design's choice (a common rule of thumb, not from the paper, which
  sets alpha to the first r it tries and leaves it there).
- ``dropout=0.1`` on the adapter input: the design's choice (peft's default is 0; the paper's
  appendix lists dropout 0.1 for its GPT-2 runs without tying it to the adapters).
- ``merge=true``: after training the adapters are merged into the weights
  (``merge_and_unload``) so the run ends with a plain model, which ``wise-ft`` needs. This
  finalizer runs first (``tryfirst``) for that reason.

peft injects the adapters into the model in place and the wrapper forwards attribute access
to the wrapped model, so the task's ``forward`` is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetbench.api import ForgetbenchError, Method, check, hookimpl


@dataclass
class LoraMethodConfig:
    r: int = field(default=8, metadata={"help": "adapter rank"})
    lora_alpha: int | None = field(
        default=None, metadata={"help": "adapter scale numerator (None: 2r)"}
    )
    dropout: float = field(default=0.1, metadata={"help": "dropout on the adapter input"})
    target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={"help": "module name suffixes to adapt (None: the task family's)"},
    )
    merge: bool = field(
        default=True, metadata={"help": "merge the adapters into the weights after training"}
    )

    def __post_init__(self):
        check(self.r >= 1, f"r must be >= 1, got {self.r}")
        check(
            self.lora_alpha is None or self.lora_alpha > 0,
            f"lora_alpha must be > 0, got {self.lora_alpha}",
        )
        check(0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
            check(len(self.target_modules) > 0, "target_modules must name at least one module")


def target_modules(ctx, model, configured: tuple[str, ...] | None) -> list[str]:
    """The configured targets, else the task family's default."""
    targets = configured or ctx.task.lora_target_modules(model)
    if not targets:
        raise no_targets(ctx.task.metadata.name)
    return list(targets)


def no_targets(task: str) -> ForgetbenchError:
    return ForgetbenchError(
        f"lora: task {task!r} names no default target modules;"
        " name them with --set lora.target_modules=NAME,NAME"
    )


class Lora(Method):
    name = "lora"
    description = "LoRA adapters (peft) on the prior model; the new head trains in full"
    Config = LoraMethodConfig

    def check_task(self, task):
        # a task with no family default and no configured targets: refused before anything runs
        if not self.config.target_modules and not task.implements("lora_target_modules"):
            raise no_targets(task.metadata.name)

    @hookimpl
    def forgetbench_wrap_model(self, ctx, model):
        from peft import LoraConfig, get_peft_model

        config = self.config
        targets = target_modules(ctx, model, config.target_modules)
        peft_config = LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha or 2 * config.r,
            lora_dropout=config.dropout,
            target_modules=targets,
        )
        try:
            wrapped = get_peft_model(model, peft_config)
        except ValueError as error:  # peft's "Target modules ... not found in the base model"
            raise ForgetbenchError(f"lora: {error}") from None
        # peft freezes everything but the adapters; the new task's head trains (a fresh one
        # has nothing to start from; CLIP's zero-shot class weights train in fine-tuning too)
        heads = set(ctx.new_param_names) | set(ctx.task.head_parameters(model))
        for name, weight in model.named_parameters():
            if name in heads:
                weight.requires_grad_(True)
        return wrapped

    @hookimpl(tryfirst=True)
    def forgetbench_finalize(self, model):
        if not self.config.merge:
            return None
        return model.merge_and_unload()


@hookimpl
def forgetbench_register_methods(register):
    register(Lora)
