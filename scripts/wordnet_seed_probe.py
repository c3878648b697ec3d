"""Plain fine-tuning on ``wordnet`` over seeds, with one thing changed: docs/results.md's
"Why seed 0 collapses" table.

Usage: python scripts/wordnet_seed_probe.py DB VARIANTS SEEDS
  VARIANTS: JSON [[label, head, {--set overrides}, order_seed?], ...]; head is default | zero
  (the new head starts at zero) | nodropout (every dropout off); order_seed, when given, draws
  the new-task batch order as that seed would (the rest from the run's seed);
  e.g. '[["lr5e-5", "default", {"lr": "5e-5"}], ["order1", "default", {}, 1]]'
  SEEDS: comma-separated, e.g. 0,1,2
Prints prior/after and new/after per seed, and the forgetting's mean and std per variant.
"""

import hashlib
import json
import statistics
import sys
import time

import numpy as np
from torch import nn

from forgetbench import runner
from forgetbench.context import RunContext
from forgetbench.store import Store
from forgetbench_tasks.text_classification import base

ORIGINAL_ADD_HEAD = base.EncoderClassifier.add_head
ORIGINAL_GENERATOR = RunContext.generator
MODE = {"head": "default", "order_seed": None}


def generator(self, purpose: str) -> np.random.Generator:
    """As RunContext.generator; the engine's new-task order ("batches") from ``order_seed``."""
    if purpose != "batches" or MODE["order_seed"] is None:
        return ORIGINAL_GENERATOR(self, purpose)
    digest = hashlib.sha256(f"{MODE['order_seed']}:{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def add_head(self, name, num_labels):
    ORIGINAL_ADD_HEAD(self, name, num_labels)
    if MODE["head"] == "zero":
        nn.init.zeros_(self.heads[name].weight)
        nn.init.zeros_(self.heads[name].bias)
    elif MODE["head"] == "nodropout":
        for module in self.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0


def main(db: str, variants: list, seeds: list[int]) -> None:
    base.EncoderClassifier.add_head = add_head
    RunContext.generator = generator
    store = Store(db)
    for label, head, overrides, *order_seed in variants:
        MODE["head"], MODE["order_seed"] = head, (order_seed or [None])[0]
        forgetting = []
        for seed in seeds:
            started = time.time()
            request = runner.RunRequest(task="wordnet", seed=seed, overrides=dict(overrides))
            run_id = runner.execute(request, db=db)
            metrics = store.get_metrics([run_id])[run_id]
            before, after = metrics["prior/before/accuracy"], metrics["prior/after/accuracy"]
            forgetting.append(before - after)
            new, seconds = metrics["new/after/accuracy"], time.time() - started
            shown = f"prior {before:.4f}->{after:.4f} new {new:.4f}"
            print(f"{label:12s} seed {seed} {shown} {seconds:.0f}s")
        if len(forgetting) > 1:
            mean, std = statistics.mean(forgetting), statistics.stdev(forgetting)
            print(f"{label}: forgetting {mean:.4f} ± {std:.4f} over seeds {seeds}")


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")])
