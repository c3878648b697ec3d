"""``fortunes``: a new dataset of the text-classification family as a third-party task plugin.

The scenario keeps the offline ``wordnet`` prior task (all-MiniLM-L6-v2 fine-tuned on WordNet
gloss -> supersense, so its stage 0 is shared with ``wordnet`` through the core's cache) and
fine-tunes on a new task: which fortune-cookie file a fortune comes from, over eight categories
of Debian's ``fortunes`` package (``/usr/share/games/fortunes``; BSD-style licence, see
``/usr/share/doc/fortunes/copyright``). The task is metadata plus a loader: everything else
(stage 0, the fresh head, collation, the per-sample forward, evaluation) is the family's.

Imports: ``forgetbench.api`` and the family package ``forgetbench_tasks.text_classification``
(its ``__all__``: the family base classes and builtin tasks are the stable surface a task of a
known family builds on; its submodules are not).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgetbench.api import (
    ForgetbenchError,
    RunContext,
    Split,
    TaskData,
    TaskMetadata,
    check,
    hookimpl,
)
from forgetbench_tasks.text_classification import WordnetTask

FORTUNES_DIR = Path("/usr/share/games/fortunes")
CATEGORIES = ("art", "computers", "education", "food", "law", "politics", "science", "sports")
OVERSTRIKE = re.compile(".\x08")  # "_\bx": underlined x on a teletype


def read_fortunes(
    root: Path = FORTUNES_DIR, categories: tuple[str, ...] = CATEGORIES, per_category: int = 200
) -> list[dict[str, Any]]:
    """The first ``per_category`` distinct fortunes of each category file, labelled by file.

    A fortune file holds fortunes separated by lines ``%``; overstruck characters are
    reduced to the character and whitespace to single spaces. A text found in two files is
    kept once, under the first.
    """
    missing = [name for name in categories if not (root / name).is_file()]
    if missing:
        raise ForgetbenchError(
            f"fortune files missing under {root} ({', '.join(missing)}):"
            " install them with 'apt-get install fortunes'"
        )
    seen: set[str] = set()
    examples = []
    for label, name in enumerate(categories):
        raw = (root / name).read_text(encoding="utf-8", errors="replace")
        kept = 0
        for chunk in re.split(r"^%$", raw, flags=re.MULTILINE):
            text = " ".join(OVERSTRIKE.sub("", chunk).split())
            if not text or text in seen or kept == per_category:
                continue
            seen.add(text)
            kept += 1
            identity = zlib.crc32(f"{name}\t{text}".encode())
            examples.append({"id": identity, "text": text, "label": label})
    return examples


def split_new(examples: list[dict], eval_fraction: float) -> tuple[Split, Split]:
    """A fixed seeded train/eval split (it defines the task, so it does not follow the run)."""
    order = np.random.default_rng(0).permutation(len(examples))
    cut = round(len(examples) * eval_fraction)
    tagged = [{**example, "source": "new"} for example in examples]
    return (
        Split("new_train", [tagged[i] for i in sorted(order[cut:])]),
        Split("new_eval", [tagged[i] for i in sorted(order[:cut])]),
    )


@dataclass
class FortunesConfig(WordnetTask.Config):
    per_category: int = field(default=200, metadata={"help": "fortunes kept per category"})

    def __post_init__(self):
        super().__post_init__()
        check(self.per_category >= 5, f"per_category must be >= 5, got {self.per_category}")


class FortunesTask(WordnetTask):
    """WordNet supersenses (prior), then fortune-cookie categories (new)."""

    metadata = TaskMetadata(
        name="fortunes",
        family="text-classification",
        description="MiniLM-L6 fine-tuned on WordNet gloss->supersense (45 classes), then on"
        " Debian fortune-cookie categories (8 classes)",
        reference="WordNet 3.0 (Princeton); Debian fortunes 1.99.1",
        version="1",
        offline=True,
    )
    Config = FortunesConfig

    def load_data(self, ctx: RunContext) -> TaskData:
        prior = super().load_data(ctx)
        fortunes = read_fortunes(per_category=self.config.per_category)
        new_train, new_eval = split_new(fortunes, self.config.new_eval_fraction)
        info = {**prior.info, "new_labels": len(CATEGORIES), "new_label_names": list(CATEGORIES)}
        return dataclasses.replace(prior, new_train=new_train, new_eval=new_eval, info=info)


@hookimpl
def forgetbench_register_tasks(register):
    register(FortunesTask)
