"""Paper-scale QA scenario ``squad``: SQuAD v1.1 as the prior task, COVID-QA as the new one.

- Prior: SQuAD v1.1 (``rajpurkar/squad``; Wikipedia articles, crowd-sourced questions), train
  for stage 0 and validation (several gold answers per question) for evaluation.
- New: COVID-QA (``deepset/covid_qa_deepset``; 2,019 questions written by biomedical experts
  over 147 scientific articles about COVID-19, Möller et al. 2020), the same SQuAD schema plus
  ``document_id``. It ships one split: forgetbench holds out ``new_eval_fraction`` of the
  *articles* (seed 0), so no article is in both splits. A domain shift (encyclopedia ->
  scientific papers, much longer contexts) on the same task format.
- Base model: ``bert-base-uncased``; ``--prior-model`` also takes a ready SQuAD checkpoint
  (any transformers question-answering model with a fast tokenizer).

Offline: ``--set task.data_dir=DIR`` reads ``squad_train.jsonl``, ``squad_validation.jsonl``
and ``covid_qa.jsonl`` (JSON Lines, one hub row per line) from DIR.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from forgetbench.api import (
    ForgetbenchError,
    Split,
    TaskData,
    TaskMetadata,
    TrainConfig,
    check,
    subsample,
)

from .base import SpanQATask, first_line, stable_id

if TYPE_CHECKING:
    from forgetbench.api import RunContext

SPLIT_SEED = 0
SQUAD_HUB = "rajpurkar/squad"
COVID_QA_HUB = "deepset/covid_qa_deepset"
LOCAL_FILES = {
    "prior_train": "squad_train.jsonl",
    "prior_eval": "squad_validation.jsonl",
    "new": "covid_qa.jsonl",
}
HELP = (
    f"needs the hub once ({SQUAD_HUB} and {COVID_QA_HUB} cached by 'datasets'), or --set"
    f" task.data_dir=DIR holding {', '.join(LOCAL_FILES.values())} (JSON Lines in the hub"
    " schema: id, question, context, answers {text, answer_start}; covid_qa.jsonl also"
    " document_id)"
)


def load_rows(data_dir: str | None, local_name: str, hub: str, split: str) -> list[dict]:
    """Rows of a hub split, or of ``data_dir/local_name`` when a data folder is given."""
    import datasets

    if data_dir:
        path = Path(data_dir) / local_name
        if not path.is_file():
            raise ForgetbenchError(f"missing {path}: squad {HELP}")
        return datasets.load_dataset("json", data_files=str(path), split="train").to_list()
    try:
        return datasets.load_dataset(hub, split=split).to_list()
    except Exception as error:  # offline: ConnectionError, DatasetNotFoundError, ...
        raise ForgetbenchError(
            f"{hub} ({split}) is not available ({first_line(error)}); squad {HELP}"
        ) from None


def to_example(row: dict[str, Any], source: str) -> dict[str, Any]:
    """A hub row as a task example (the dataset's own id kept as ``qid``); a question without a
    gold answer (SQuAD v2.0's unanswerable ones) is an error: v1.1's metrics need one."""
    answers = row["answers"]
    if not answers["text"]:
        raise ForgetbenchError(
            f"squad: {source} question {row['id']} has no gold answer (extractive QA here is"
            " SQuAD v1.1: every question has one; drop unanswerable questions from the file)"
        )
    return {
        "id": stable_id(f"{source}:{row['id']}"),
        "qid": str(row["id"]),
        "question": row["question"],
        "context": row["context"],
        "answers": {
            "text": [str(text) for text in answers["text"]],
            "answer_start": [int(start) for start in answers["answer_start"]],
        },
        "document": str(row.get("title") or row.get("document_id") or ""),
    }


def sample(examples: list[dict], size: int | None, name: str) -> Split:
    """The split itself, or a seeded subsample of ``size`` examples kept in dataset order."""
    return Split(name, subsample(examples, size, SPLIT_SEED))


def split_by_document(examples: list[dict], eval_fraction: float) -> tuple[Split, Split]:
    """Hold out a seeded share of the documents (all of their questions) for evaluation."""
    documents = sorted({e["document"] for e in examples})
    order = np.random.default_rng(SPLIT_SEED).permutation(len(documents))
    held_out = {documents[i] for i in order[: max(1, round(eval_fraction * len(documents)))]}
    if len(held_out) == len(documents):
        raise ForgetbenchError("squad: the new task needs at least two documents to split")
    train = [e for e in examples if e["document"] not in held_out]
    evaluation = [e for e in examples if e["document"] in held_out]
    return Split("new_train", train), Split("new_eval", evaluation)


@dataclass
class SquadConfig:
    """Where the paper-scale data and base model come from; windows; stage-0 budget."""

    data_dir: str | None = field(default=None, metadata={"help": "local JSON Lines files"})
    base_model: str = field(default="bert-base-uncased", metadata={"help": "stage-0 encoder"})
    prior_train_size: int | None = field(default=None, metadata={"help": "subsample SQuAD"})
    prior_eval_size: int | None = field(default=None, metadata={"help": "subsample SQuAD val"})
    new_eval_fraction: float = field(default=0.2, metadata={"help": "COVID-QA held-out papers"})
    max_length: int = field(default=384, metadata={"help": "tokens per window"})
    stride: int = field(default=128, metadata={"help": "tokens shared by adjacent windows"})
    max_answer_tokens: int = field(default=30, metadata={"help": "longest decoded answer"})
    stage0_steps: int = field(default=5500, metadata={"help": "about 2 epochs at batch 32"})

    def __post_init__(self):
        for name in ("prior_train_size", "prior_eval_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be >= 1")
        check(0 < self.new_eval_fraction < 1, "new_eval_fraction must be in (0, 1)")
        check(self.max_length >= 32, "max_length must be >= 32")
        check(0 <= self.stride < self.max_length // 2, "stride must be in [0, max_length / 2)")
        check(self.max_answer_tokens >= 1, "max_answer_tokens must be >= 1")
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")


class SquadTask(SpanQATask):
    """Paper scale: BERT fine-tuned on SQuAD v1.1 (prior), then on COVID-QA (new)."""

    metadata = TaskMetadata(
        name="squad",
        family="qa",
        description="bert-base-uncased span QA: SQuAD v1.1 (Wikipedia), then COVID-QA"
        " (biomedical papers)",
        prior_metric="f1",
        new_metric="f1",
        lower_is_better=frozenset({"loss"}),
        reference="Rajpurkar et al. 2016 (SQuAD v1.1); Möller et al. 2020 (COVID-QA)",
        version="1",
        license="CC BY-SA 4.0 (SQuAD); Apache-2.0 (COVID-QA)",
    )
    Config = SquadConfig
    # Devlin et al.'s SQuAD recipe (lr 3e-5, batch 32); about 10 epochs of COVID-QA's papers.
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 500,
        "batch_size": 32,
        "lr": 3e-5,
        "eval_batch_size": 128,
    }

    def base_model(self) -> str:
        return self.config.base_model

    def stage0_train(self) -> TrainConfig:
        return TrainConfig(steps=self.config.stage0_steps, batch_size=32, lr=3e-5)

    def load_data(self, ctx: RunContext | None = None) -> TaskData:
        """SQuAD train/validation and COVID-QA split by article."""
        config = self.config
        squad_train = load_rows(config.data_dir, LOCAL_FILES["prior_train"], SQUAD_HUB, "train")
        squad_eval = load_rows(config.data_dir, LOCAL_FILES["prior_eval"], SQUAD_HUB, "validation")
        covid = load_rows(config.data_dir, LOCAL_FILES["new"], COVID_QA_HUB, "train")
        new_train, new_eval = split_by_document(
            [to_example(row, "covid_qa") for row in covid if row["answers"]["text"]],
            config.new_eval_fraction,
        )
        prior_train = [to_example(row, "squad") for row in squad_train]
        prior_eval = [to_example(row, "squad") for row in squad_eval]
        return TaskData(
            sample(prior_train, config.prior_train_size, "prior_train"),
            sample(prior_eval, config.prior_eval_size, "prior_eval"),
            new_train,
            new_eval,
            info={"prior_dataset": SQUAD_HUB, "new_dataset": COVID_QA_HUB},
        )
