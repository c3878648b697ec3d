"""Paper-scale text scenario ``mnli``: MultiNLI (``nyu-mll/multi_nli``, which keeps the genre
that mix-cd's ``genre`` partition uses) with bert-base-uncased as prior; new task SST-2
(``nyu-mll/glue``, ``sst2``). Needs a network once, or local JSON Lines files (``MnliTask``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from forgetbench.api import (
    ForgetbenchError,
    ModelBundle,
    RunContext,
    Split,
    TaskData,
    TaskMetadata,
    check,
    hash_dir,
    hash_json,
    subsample,
)
from forgetbench_tasks.text_classification.base import ClassificationTask, EncoderClassifier


def load_sequence_classifier(path: str, trust_remote_code: bool = False) -> ModelBundle:
    """A ready ``AutoModelForSequenceClassification`` checkpoint as prior model: its encoder and
    classifier become the encoder and prior head (pooling through the checkpoint's pooler)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        full = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=trust_remote_code
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as error:
        raise ForgetbenchError(
            f"cannot load prior model {path!r}: {error}".split("\n")[0]
        ) from None
    classifier = getattr(full, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ForgetbenchError(f"prior model {path!r}: expected a linear 'classifier' head")
    model = EncoderClassifier(full.base_model, {"prior": classifier.out_features}, "pooler")
    model.heads["prior"].load_state_dict(classifier.state_dict())
    identity = hash_dir(Path(path)) if Path(path).is_dir() else hash_json({"hub": path})
    return ModelBundle(model, tokenizer, identity, f"prior-model:{path}")


MNLI_HELP = (
    "needs the hub once (nyu-mll/multi_nli and nyu-mll/glue sst2 cached by 'datasets'), or"
    " --set task.data_dir=DIR holding mnli_train.jsonl, mnli_validation_matched.jsonl,"
    " sst2_train.jsonl and sst2_validation.jsonl in the hub schemas"
)


@dataclass
class MnliConfig:
    """Where the paper-scale data and base model come from."""

    data_dir: str | None = field(default=None, metadata={"help": "local JSON Lines files"})
    max_length: int = field(default=128, metadata={"help": "tokens per premise + hypothesis"})
    base_model: str = field(default="bert-base-uncased", metadata={"help": "stage-0 encoder"})
    prior_train_size: int | None = field(default=None, metadata={"help": "subsample MNLI train"})
    prior_eval_size: int | None = field(default=None, metadata={"help": "subsample MNLI eval"})
    stage0_steps: int = field(default=12000, metadata={"help": "about 1 epoch at batch 32"})

    def __post_init__(self):
        check(self.max_length >= 4, f"max_length must be >= 4, got {self.max_length}")
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")
        for name in ("prior_train_size", "prior_eval_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be >= 1")


def _load_hub_or_local(config: MnliConfig, local: str, hub: tuple[str, ...], split: str):
    import datasets

    if config.data_dir:
        path = Path(config.data_dir) / local
        if not path.exists():
            raise ForgetbenchError(f"missing {path}: {MNLI_HELP}")
        return datasets.load_dataset("json", data_files=str(path), split="train")
    try:
        return datasets.load_dataset(*hub, split=split)
    except Exception as error:  # offline: ConnectionError, DatasetNotFoundError, ...
        first_line = str(error).split("\n")[0][:160]
        raise ForgetbenchError(
            f"{'/'.join(hub)} not available ({first_line}); {MNLI_HELP}"
        ) from None


SPLIT_SEED = 0


def _rows(dataset, size: int | None) -> list[dict]:
    """The labelled rows (MNLI marks unlabelled ones with -1), or a seeded subsample of ``size``
    of them in file order: the file's first rows would be a few documents' pairs."""
    return subsample([row for row in dataset if int(row["label"]) >= 0], size, SPLIT_SEED)


class MnliTask(ClassificationTask):
    """Paper scale: BERT fine-tuned on MultiNLI (prior), then on SST-2 sentiment (new).

    MultiNLI rather than GLUE's copy: it keeps each pair's genre, mix-cd's ``aux`` partition.
    ``--prior-model`` takes a ready MNLI sequence-classification checkpoint (its label order
    must be entailment, neutral, contradiction, as in the dataset).
    """

    metadata = TaskMetadata(
        name="mnli",
        family="text-classification",
        description="bert-base-uncased on MultiNLI (3 classes), then SST-2 (2 classes)",
        reference="Williams et al. 2018 (MultiNLI); Socher et al. 2013 (SST-2)",
        version="2",
    )
    Config = MnliConfig
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 1000, "batch_size": 32, "lr": 2e-5}
    stage0_train: ClassVar[dict[str, Any]] = {"batch_size": 32, "lr": 2e-5}
    pooling = "cls"

    def base_model_path(self) -> str:
        return self.config.base_model

    def load_data(self, ctx: RunContext) -> TaskData:
        config = self.config
        mnli_train = _load_hub_or_local(config, "mnli_train.jsonl", ("nyu-mll/multi_nli",), "train")
        mnli_eval = _load_hub_or_local(
            config, "mnli_validation_matched.jsonl", ("nyu-mll/multi_nli",), "validation_matched"
        )
        sst_train = _load_hub_or_local(
            config, "sst2_train.jsonl", ("nyu-mll/glue", "sst2"), "train"
        )
        sst_eval = _load_hub_or_local(
            config, "sst2_validation.jsonl", ("nyu-mll/glue", "sst2"), "validation"
        )
        train_rows = _rows(mnli_train, config.prior_train_size)
        genres = sorted({row["genre"] for row in train_rows})

        def nli(rows, split):
            return Split(
                f"prior_{split}",
                [
                    {
                        "id": index,
                        "text": row["premise"],
                        "text_pair": row["hypothesis"],
                        "label": int(row["label"]),
                        "source": "prior",
                    }
                    for index, row in enumerate(rows)
                ],
            )

        def sentiment(rows, split):
            return Split(
                f"new_{split}",
                [
                    {
                        "id": int(row.get("idx", index)),
                        "text": row["sentence"],
                        "label": int(row["label"]),
                        "source": "new",
                    }
                    for index, row in enumerate(rows)
                ],
            )

        prior_train = nli(train_rows, "train")
        for example, row in zip(prior_train.examples, train_rows, strict=True):
            example["genre"] = genres.index(row["genre"])
        return TaskData(
            prior_train,
            nli(_rows(mnli_eval, config.prior_eval_size), "eval"),
            sentiment(_rows(sst_train, None), "train"),
            sentiment(_rows(sst_eval, None), "eval"),
            info={"prior_labels": 3, "new_labels": 2, "genre_names": genres},
        )

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        return {**super().partitions(data), "genre": data.prior_train.column("genre")}

    def load_prior(self, ctx: RunContext, path: str) -> ModelBundle:
        if (Path(path) / "bundle.json").exists():
            return super().load_prior(ctx, path)
        return load_sequence_classifier(path, ctx.trust_remote_code)

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        try:
            return super().build_prior(ctx, data)
        except OSError as error:
            raise ForgetbenchError(
                f"base model {self.config.base_model!r} not available offline"
                f" ({str(error).splitlines()[0][:120]}): pass --prior-model PATH (an MNLI"
                " checkpoint) or --set task.base_model=LOCAL_DIR"
            ) from None
