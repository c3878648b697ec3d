"""``lp-ft``: fit a linear probe on the prior model's frozen features, then fine-tune everything.

Kumar, Raghunathan, Jones, Ma and Liang, "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022. Their argument: through a randomly initialised
head, the first fine-tuning steps move the pretrained features in directions that head sets, and
distort them; from a head already fitted to the new task (a linear probe on the frozen
features), fine-tuning changes the features less. On `wordnet` this is what separates the seeds
on which plain fine-tuning collapses from the others (docs/results.md, "Scenario stability").

The probe is the task's own (:meth:`Task.reference_head`, the one FLOW's ``probe_init`` loads):
for text classification, a multinomial logistic regression on f0's pooled features of the
new-task training set, full-batch L-BFGS with a small L2 penalty, zero-initialised, so it draws no
random numbers (the paper's probing stage is a logistic regression too). The fine-tuning stage is
the run's own budget and optimiser; the paper tunes a lower learning rate for it, which
``--set train.lr=...`` (or a sweep over it) gives.

Only a task whose new head is fresh has a probe to fit. Where the new task starts from outputs
f0 already has (QA's span head, a translation decoder, CLIP's zero-shot head) there is nothing to
probe, and a run is refused with one line saying so rather than store plain fine-tuning under
this name: before anything is stored where the task does not implement ``reference_head`` at all
(every builtin family but text classification), at set-up where it does and returns nothing.

Stacked with ``wise-ft`` (the probe start, then a mix with f0 after training), the order
does not matter: the probe is written to the fresh head only, which WiSE-FT keeps out of theta0
(it has no prior value), so both orders mix the same endpoints (tested).

Cost: one inference pass of f0 over the new-task training set (the probe's features), charged
to every run as extra inference, a cache hit included. The probe is cached on disk
(``<cache>/plugin-lp-ft/<key>``) per prior model and new-task training split, so runs with other
seeds reuse it (a fresh head's seed does not change the features it is fitted on).
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from forgetbench.api import (
    ForgetbenchError,
    Method,
    hookimpl,
    load_entries,
    plugin_cache,
)

CACHE_VERSION = 1


class LPFT(Method):
    name = "lp-ft"
    description = "LP-FT: the new head starts from a linear probe on f0's features, then fine-tune"

    def check_task(self, task):
        if not task.implements("reference_head"):
            raise no_probe(task.metadata.name)

    @hookimpl
    def forgetbench_setup(self, ctx, model, data):
        split = data.new_train
        task = ctx.task.metadata.name

        def build(directory: Path) -> dict:
            was_training = model.training
            model.eval()
            try:
                head = ctx.task.reference_head(ctx, model, split)
            finally:
                model.train(was_training)
            if not head:
                raise no_probe(task)
            tensors = {name: value.detach().cpu().contiguous() for name, value in head.items()}
            save_file(tensors, str(directory / "probe.safetensors"))
            return {"split": split.name, "size": len(split)}

        # one pass over the split charged, whether the cache hit or the task built it (the
        # task may count its pass or serve a probe it fitted for another method: FLOW's)
        charged = ctx.compute.extra_inference + len(split)
        key = {"data": split.fingerprint(), "v": CACHE_VERSION}
        entry = plugin_cache(ctx, "lp-ft", key, build)
        ctx.compute.extra_inference = charged
        head = load_file(str(entry / "probe.safetensors"))
        load_entries(
            model, head, "lp-ft: the task's probe head", "its reference_head does not match"
        )


def no_probe(task: str) -> ForgetbenchError:
    return ForgetbenchError(
        f"lp-ft: task {task!r} gives no probe for a fresh new-task head (Task.reference_head;"
        " a task whose new task starts from the prior model's own outputs, as QA, translation"
        " and CLIP do, has none), so LP-FT would be plain fine-tuning there; use --method"
        " finetune"
    )


@hookimpl
def forgetbench_register_methods(register):
    register(LPFT)
