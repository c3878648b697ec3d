"""Prior accuracy along plain fine-tuning on ``wordnet``, every K steps, per seed: does the
scenario's forgetting grow steadily or collapse at one step? (docs/results.md, "Scenario
stability").

Usage: python scripts/wordnet_trajectory.py DB SEEDS [K] [PRIOR_EVAL_N] [--set key=value ...]
  SEEDS: comma-separated, e.g. 0,1,2; K: steps between probes (default 10); PRIOR_EVAL_N:
  the first N prior-eval glosses probed (default 500; the run's own final evaluation still
  uses the whole split).

The probe runs in eval mode and draws no random numbers, so each run's trajectory and final
metrics are the ones ``forgetbench run`` gives for the same seed and config.
"""

import sys
import time

import torch

from forgetbench import engine, runner
from forgetbench.api import Split
from forgetbench.store import Store

ORIGINAL_AFTER_STEP = engine.TrainLoop._after_step
ORIGINAL_LOADED = runner.loaded_data
STATE: dict = {"every": 10, "n": 500, "prior_eval": None, "trace": []}


def loaded_data(*args, **kwargs):
    data = ORIGINAL_LOADED(*args, **kwargs)
    found = data[0] if isinstance(data, tuple) else data
    STATE["prior_eval"] = Split("prior_probe", found.prior_eval.examples[: STATE["n"]])
    return data


def after_step(self, step, batch, loss, outputs):
    ORIGINAL_AFTER_STEP(self, step, batch, loss, outputs)
    if self.label != "fine-tuning" or step % STATE["every"]:
        return
    model = self.accelerator.unwrap_model(self.model) if hasattr(self, "model") else None
    if model is None:
        return
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        per = self.ctx.predict(model, STATE["prior_eval"])
    model.train(was_training)
    STATE["trace"].append((step, float(per.success.float().mean()), float(per.loss.mean())))


def main(db: str, seeds: list[int], overrides: dict) -> None:
    engine.TrainLoop._after_step = after_step
    runner.loaded_data = loaded_data
    store = Store(db)
    for seed in seeds:
        STATE["trace"] = []
        started = time.time()
        run_id = runner.execute(
            runner.RunRequest(task="wordnet", seed=seed, overrides=dict(overrides)), db=db
        )
        metrics = store.get_metrics([run_id])[run_id]
        trace = " ".join(f"{s}:{acc:.3f}" for s, acc, _ in STATE["trace"])
        print(
            f"seed {seed} prior {metrics['prior/before/accuracy']:.4f}->"
            f"{metrics['prior/after/accuracy']:.4f} new {metrics['new/after/accuracy']:.4f}"
            f" ({time.time() - started:.0f}s) | {trace}",
            flush=True,
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    sets = {}
    while "--set" in args:
        i = args.index("--set")
        key, _, value = args[i + 1].partition("=")
        sets[key] = value
        del args[i : i + 2]
    if len(args) > 2:
        STATE["every"] = int(args[2])
    if len(args) > 3:
        STATE["n"] = int(args[3])
    main(args[0], [int(s) for s in args[1].split(",")], sets)
