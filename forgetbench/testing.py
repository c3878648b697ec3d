"""Mock tasks for tests: tiny models built from configs and tiny data built in code.

``TinyTextTask`` is a complete two-stage text-classification scenario that runs in seconds on
a CPU with no files: token-id "sentences", a 2-layer BERT built from a config, and planted
rules (each label has a marker token placed three times in the sentence). Plugin
authors can use it to test a method end to end through the real engine and store.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from forgetbench import engine
from forgetbench.api import ModelBundle, RunContext, Split, TaskData, TaskMetadata
from forgetbench.cache import hash_json
from forgetbench.config import TrainConfig, check, config_dict
from forgetbench.registry import Registry, get_registry
from forgetbench_tasks.text_classification import ClassificationTask, EncoderClassifier

VOCAB = 64
PAD = 0


def tiny_encoder(hidden: int = 32, layers: int = 2, seed: int = 0):
    """A randomly initialised BertModel small enough for unit tests."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        pad_token_id=PAD,
    )
    return BertModel(config, add_pooling_layer=False)


def _make_examples(count: int, source: str, classes: int, seed: int, offset: int) -> list[dict]:
    """Random token sequences with the label's marker token at three positions. Prior markers
    are tokens 2, 3, ..., new-task markers start at 10; filler tokens are 20..63."""
    rng = np.random.default_rng(seed)
    base = 2 if source == "prior" else 2 + 8
    examples = []
    for index in range(count):
        length = int(rng.integers(6, 16))
        tokens = rng.integers(20, VOCAB, size=length)
        label = int(rng.integers(classes))
        positions = rng.choice(length, size=3, replace=False)
        tokens[positions] = base + label
        aux = int(rng.integers(3))
        examples.append(
            {
                "id": offset + index,
                "tokens": [1, *tokens.tolist()],
                "label": label,
                "source": source,
                "aux": aux,
            }
        )
    return examples


@dataclass
class TinyConfig:
    prior_train_size: int = 256
    prior_eval_size: int = 128
    new_train_size: int = 256
    new_eval_size: int = 128
    prior_classes: int = 4
    new_classes: int = 3
    stage0_steps: int = 30
    hidden: int = field(default=32, metadata={"help": "encoder width"})

    def __post_init__(self):
        check(self.prior_classes >= 2 and self.new_classes >= 2, "need at least 2 classes")
        check(self.stage0_steps >= 0, "stage0_steps must be >= 0")


_STAGE0: dict[str, EncoderClassifier] = {}


class TinyTextTask(ClassificationTask):
    """A mock text-classification scenario (tiny BERT, token ids, planted rules)."""

    metadata = TaskMetadata(
        name="tiny",
        family="text-classification",
        description="mock task for tests",
        version="1",
        offline=True,
    )
    Config = TinyConfig
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 20,
        "batch_size": 16,
        "lr": 1e-3,
        "eval_batch_size": 64,
    }

    @property
    def stage0(self) -> TrainConfig:
        return TrainConfig(steps=self.config.stage0_steps, batch_size=16, lr=3e-3)

    def load_data(self, ctx: RunContext) -> TaskData:
        c = self.config
        prior = _make_examples(
            c.prior_train_size + c.prior_eval_size, "prior", c.prior_classes, seed=1, offset=0
        )
        new = _make_examples(
            c.new_train_size + c.new_eval_size, "new", c.new_classes, seed=2, offset=100_000
        )
        prior_train = Split("prior_train", prior[: c.prior_train_size])
        return TaskData(
            prior_train,
            Split("prior_eval", prior[c.prior_train_size :]),
            Split("new_train", new[: c.new_train_size]),
            Split("new_eval", new[c.new_train_size :]),
            prior_aux=prior_train.column("aux"),
            info={"prior_labels": c.prior_classes, "new_labels": c.new_classes},
        )

    def prepare_prior(self, ctx: RunContext, data: TaskData, prior_model) -> ModelBundle:
        identity = hash_json({"tiny": config_dict(self.config)})
        if identity not in _STAGE0:  # stage 0 is deterministic: train it once per process
            model = EncoderClassifier(
                tiny_encoder(self.config.hidden), {"prior": self.config.prior_classes}
            )
            if self.stage0.steps:
                model = engine.train_stage0(self, model, None, data.prior_train, ctx)
            _STAGE0[identity] = model.cpu()
        return ModelBundle(copy.deepcopy(_STAGE0[identity]), None, identity, "tiny")

    def collate(self, examples: Sequence[dict[str, Any]], tokenizer) -> dict:
        width = max(len(e["tokens"]) for e in examples)
        ids = torch.full((len(examples), width), PAD, dtype=torch.long)
        for row, example in enumerate(examples):
            ids[row, : len(example["tokens"])] = torch.tensor(example["tokens"])
        return {
            "input_ids": ids,
            "attention_mask": (ids != PAD).long(),
            "labels": torch.tensor([e["label"] for e in examples]),
        }


def registry_with(*extra_methods: type, tasks: tuple[type, ...] = ()) -> Registry:
    """The installed registry plus the tiny task and any extra method/task classes."""
    installed = get_registry()
    registry = Registry(dict(installed.methods), dict(installed.tasks), list(installed.problems))
    registry.add_task(TinyTextTask, "forgetbench.testing")
    for cls in tasks:
        registry.add_task(cls, "test")
    for cls in extra_methods:
        registry.add_method(cls, "test")
    return registry
