"""``finetune``: plain fine-tuning on the new task, the reference every method is compared to.

It implements no per-run hook: the engine's default loop (mean cross-entropy over new-task
batches, AdamW) is plain fine-tuning.
"""

from forgetbench.api import Method, hookimpl


class Finetune(Method):
    name = "finetune"
    description = "plain fine-tuning (the reference)"


@hookimpl
def forgetbench_register_methods(register):
    register(Finetune)
