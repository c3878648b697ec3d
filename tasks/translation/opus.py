"""Paper-scale translation scenario ``m2m100``: a pretrained multilingual model (M2M100 418M by
default) keeps its prior pairs (en->de, en->fr) while fine-tuned on a new pair (en->es), all
from OPUS-100.

- Data: ``Helsinki-NLP/opus-100`` through ``datasets`` (Zhang et al. 2020; one config per
  pair, named by its two codes in alphabetical order, e.g. ``de-en``; rows
  ``{"translation": {"de": ..., "en": ...}}``; splits ``train``, ``validation``, ``test``).
  Training examples come from ``train`` (subsampled with seed 0), evaluation from ``test``.
- Model: any transformers encoder-decoder by hub id or local folder (``task.model``). M2M100's
  tokenizer (language codes) selects the ``m2m`` style; other models need ``>>xx<<`` tag tokens
  (multilingual opus-mt). No stage 0: the pretrained model is f0.

Offline: ``--set task.data_dir=DIR`` reads ``<config>-<split>.jsonl`` (JSON Lines, one hub row
per line, e.g. ``de-en-train.jsonl``, ``de-en-test.jsonl``) and ``--set task.model=DIR`` a
folder saved with ``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from forgetbench.api import (
    ForgetbenchError,
    ModelBundle,
    Split,
    TaskData,
    TaskMetadata,
    check,
    hash_dir,
    hash_json,
    subsample,
)

from .base import Seq2SeqTask, check_tags, lang_style_of, load_seq2seq, make_example
from .gettext_mt import split_seed
from .metrics import pair_target, signatures

if TYPE_CHECKING:
    from forgetbench.api import RunContext

OPUS_HUB = "Helsinki-NLP/opus-100"


def opus_config(pair: str) -> str:
    """OPUS-100's config name of a pair: its two codes in alphabetical order (``de-en``)."""
    return "-".join(sorted(pair.split("-")))


def help_line(pairs: list[str]) -> str:
    files = [f"{opus_config(p)}-{s}.jsonl" for p in pairs for s in ("train", "test")]
    return (
        f"needs the hub once ({OPUS_HUB} cached by 'datasets', pass --online), or --set"
        f" task.data_dir=DIR holding {', '.join(files)} (JSON Lines in the OPUS schema:"
        ' {"translation": {"en": ..., "xx": ...}})'
    )


def load_rows(data_dir: str | None, pair: str, split: str, pairs: list[str]) -> list[dict]:
    """Rows of one pair's split: from ``data_dir`` when given, else from the hub."""
    import datasets

    if data_dir:
        path = Path(data_dir) / f"{opus_config(pair)}-{split}.jsonl"
        if not path.is_file():
            raise ForgetbenchError(f"missing {path}: m2m100 {help_line(pairs)}")
        return datasets.load_dataset("json", data_files=str(path), split="train").to_list()
    try:
        return datasets.load_dataset(OPUS_HUB, opus_config(pair), split=split).to_list()
    except Exception as error:  # offline: ConnectionError, DatasetNotFoundError, ...
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ForgetbenchError(
            f"{OPUS_HUB} ({opus_config(pair)}, {split}) is not available ({first}); m2m100"
            f" {help_line(pairs)}"
        ) from None


def pair_examples(rows: list[dict], pair: str) -> list[dict]:
    """Examples of ``pair`` (source->target) from OPUS rows; empty sides are dropped."""
    src, tgt = pair.split("-")
    examples = []
    for row in rows:
        sides = row["translation"]
        source, target = str(sides.get(src) or "").strip(), str(sides.get(tgt) or "").strip()
        if source and target:
            examples.append(make_example(source, target, src, tgt, "opus-100"))
    return examples


@dataclass
class M2M100Config:
    """Model, data, pairs and decoding of the paper-scale translation scenario."""

    model: str = field(default="facebook/m2m100_418M", metadata={"help": "hub id or folder"})
    data_dir: str | None = field(default=None, metadata={"help": "local OPUS JSON Lines"})
    prior_pairs: tuple[str, ...] = field(default=("en-de", "en-fr"), metadata={"help": "f0's"})
    new_pair: str = field(default="en-es", metadata={"help": "the fine-tuning pair"})
    prior_train_size: int = field(default=20000, metadata={"help": "per prior pair (rehearsal)"})
    prior_eval_size: int = field(default=500, metadata={"help": "per prior pair, from test"})
    new_train_size: int = field(default=50000, metadata={"help": "new-pair training pairs"})
    new_eval_size: int = field(default=500, metadata={"help": "new-pair pairs, from test"})
    max_source_tokens: int = field(default=128, metadata={"help": "source tokens"})
    max_target_tokens: int = field(default=128, metadata={"help": "reference / generated"})
    num_beams: int = field(default=1, metadata={"help": "1: greedy decoding"})
    success_chrf: float = field(default=50.0, metadata={"help": "sentence chrF of a success"})
    success_token_accuracy: float = field(
        default=0.5, metadata={"help": "teacher-forced token accuracy of a training success"}
    )

    def __post_init__(self):
        self.prior_pairs = tuple(self.prior_pairs)
        pairs = [*self.prior_pairs, self.new_pair]
        check(len(self.prior_pairs) >= 1, "prior_pairs needs at least one pair")
        for pair in pairs:
            check(len(pair.split("-")) == 2 and all(pair.split("-")), f"bad pair {pair!r}")
        check(len(set(pairs)) == len(pairs), "the new pair must not be a prior pair")
        for name in ("prior_train_size", "prior_eval_size", "new_train_size", "new_eval_size"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        check(self.max_source_tokens >= 4 and self.max_target_tokens >= 4, "token caps >= 4")
        check(self.num_beams >= 1, "num_beams must be >= 1")
        check(0 <= self.success_chrf <= 100, "success_chrf must be in [0, 100]")
        check(0 < self.success_token_accuracy <= 1, "success_token_accuracy must be in (0, 1]")


class M2M100Task(Seq2SeqTask):
    """Paper scale: M2M100 (418M) on OPUS-100, prior pairs en->de and en->fr, new pair en->es."""

    metadata = TaskMetadata(
        name="m2m100",
        family="translation",
        description="M2M100 418M on OPUS-100: keep en->de and en->fr while fine-tuning on"
        " en->es; sacrebleu BLEU/chrF",
        prior_metric="bleu",
        new_metric="bleu",
        lower_is_better=frozenset({"loss"}),
        reference="Fan et al. 2021 (M2M-100); Zhang et al. 2020 (OPUS-100)",
        version="1",
        license="MIT (M2M100 weights); OPUS-100: the licences of its source corpora",
    )
    Config = M2M100Config
    # A short fine-tuning run at a learning rate usual for M2M100/opus-mt fine-tuning.
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1000,
        "batch_size": 32,
        "lr": 5e-5,
        "eval_batch_size": 64,
    }

    def pairs(self) -> list[str]:
        return [*self.config.prior_pairs, self.config.new_pair]

    def load_data(self, ctx: RunContext | None = None) -> TaskData:
        """OPUS-100 train (subsampled) and test splits of every pair."""
        config, pairs = self.config, self.pairs()
        splits: dict[str, list] = {
            "prior_train": [],
            "prior_eval": [],
            "new_train": [],
            "new_eval": [],
        }
        for pair in pairs:
            role = "new" if pair == config.new_pair else "prior"
            for side, hub_split in (("train", "train"), ("eval", "test")):
                rows = load_rows(config.data_dir, pair, hub_split, pairs)
                size = getattr(config, f"{role}_{side}_size")
                splits[f"{role}_{side}"] += subsample(
                    pair_examples(rows, pair), size, split_seed(f"{pair}:{side}")
                )
        return TaskData(
            *(Split(name, examples) for name, examples in splits.items()),
            info={"dataset": OPUS_HUB if not config.data_dir else config.data_dir},
            provenance={
                f"sacrebleu_{k}": v
                for k, v in signatures(pair_target(pair) for pair in pairs).items()
            },
        )

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        """The pretrained model itself (it already translates the prior pairs)."""
        return self.load_pretrained(ctx, self.config.model)

    def load_prior(self, ctx: RunContext, path: str) -> ModelBundle:
        """``--prior-model``: a bundle folder, or any transformers seq2seq checkpoint."""
        if (Path(path) / "bundle.json").exists():
            return self.load_bundle(Path(path))
        return self.load_pretrained(ctx, path)

    def load_pretrained(self, ctx: RunContext, name: str) -> ModelBundle:
        try:
            model, tokenizer = load_seq2seq(name, ctx.trust_remote_code, None)
        except (OSError, ValueError, ImportError) as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise ForgetbenchError(
                f"model {name!r} not available ({first}): pass --set task.model=DIR (a"
                " transformers seq2seq checkpoint saved with save_pretrained), or --online"
                " once to cache it; M2M100's tokenizer also needs 'pip install sentencepiece'"
            ) from None
        style = lang_style_of(tokenizer)
        if style == "tag":
            check_tags(tokenizer, [p.split("-")[1] for p in self.pairs()])
        identity = hash_dir(Path(name)) if Path(name).is_dir() else hash_json({"hub": name})
        return ModelBundle(
            model, tokenizer, identity=identity, source=f"pretrained:{name}",
            extras={"lang_style": style},
        )  # fmt: skip
