"""Offline translation scenario ``gettext-mt``: parallel UI strings from Debian's gettext
catalogues, a small Marian trained from scratch in stage 0.

Data: the German, French and Spanish ``.mo`` catalogues owned by the packages pinned in
``debian-packages.txt`` (next to this file; ``scripts/debian_data.sh`` installs them). English
msgids are the sources. Pairs are normalised (mnemonic underscores dropped, whitespace runs to
one space), then dropped when untranslated (empty or equal to the source), format-only (no word
once ``%s``, ``{0}``... are removed) or longer than the caps; duplicates across catalogues keep
their most frequent translation. The split is by English source (a hash of its lower-cased
words), so a source sits on the same side for every pair and never leaks from training into
evaluation. The fingerprint of what was read (package versions, sha256 of every file) is stored
with each run.

Prior task: en->de and en->fr, a ``>>de<<`` / ``>>fr<<`` tag in front of the source. New task:
en->es (tag ``>>es<<``, never seen in stage 0). Stage 0 trains a BPE vocabulary (``tokenizers``)
on the training texts of all pairs and a ``MarianMTModel`` from a config (about 2M parameters
at the defaults) on the prior pairs; the core caches the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from forgetbench.api import (
    ForgetbenchError,
    ModelBundle,
    Split,
    Stage0Spec,
    TaskData,
    TaskMetadata,
    TrainConfig,
    check,
    hash_json,
    subsample,
)

from . import catalogues
from .base import TAG, Seq2SeqTask, make_example
from .metrics import signatures

if TYPE_CHECKING:
    from forgetbench.api import RunContext

PACKAGES_FILE = Path(__file__).with_name("debian-packages.txt")
SPLIT_SEED = 0
SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")


def pinned_packages(path: Path = PACKAGES_FILE) -> list[str]:
    """Package names of a ``debian-packages.txt`` (``#`` starts a comment)."""
    names = []
    for line in path.read_text().splitlines():
        names += line.split("#", 1)[0].split()
    return names


def pairs_by_language(
    segments: list[catalogues.Segment], languages: list[str], eval_share: float
) -> dict[str, dict[str, list[tuple[str, str]]]]:
    """Per language, its (source, target) pairs on each side of the split (``train`` /
    ``eval``), in source order."""
    sides: dict[str, dict[str, list]] = {lang: {"train": [], "eval": []} for lang in languages}
    for segment in segments:
        side = "eval" if catalogues.is_held_out(segment.source, eval_share) else "train"
        for lang in languages:
            if lang in segment.targets:
                sides[lang][side].append((segment.source, segment.targets[lang]))
    return sides


def split_seed(purpose: str) -> list[int]:
    """The subsample seed of one language's (or pair's) side: its own stream, so resizing one
    split leaves the others' draws alone."""
    digest = catalogues.hashlib.sha256(purpose.encode()).digest()
    return [SPLIT_SEED, int.from_bytes(digest[:4], "big")]


def train_tokenizer(texts: list[str], vocab_size: int, languages: list[str]):
    """A BPE vocabulary trained on ``texts`` (SentencePiece-style word boundaries, so decoding
    restores the spacing), with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and one tag token per
    target language; sequences end with ``</s>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    tags = [TAG.format(lang=lang) for lang in languages]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIAL_TOKENS, *tags],
        limit_alphabet=300,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=tags,
    )


@dataclass
class GettextMTConfig:
    """Data, model size, decoding and stage-0 budget of the offline translation scenario."""

    prior_languages: tuple[str, ...] = field(
        default=("de", "fr"), metadata={"help": "prior pairs en->xx (stage 0)"}
    )
    new_language: str = field(default="es", metadata={"help": "the new pair en->xx"})
    eval_share: float = field(default=0.03, metadata={"help": "English sources held out"})
    prior_eval_size: int = field(default=300, metadata={"help": "held-out pairs per prior pair"})
    new_eval_size: int = field(default=300, metadata={"help": "held-out new-pair examples"})
    prior_train_size: int | None = field(default=None, metadata={"help": "per prior pair"})
    new_train_size: int | None = field(default=None, metadata={"help": "new-pair examples"})
    max_words: int = field(default=16, metadata={"help": "longest English source, in words"})
    max_chars: int = field(default=100, metadata={"help": "longest side, in characters"})
    vocab_size: int = field(default=5000, metadata={"help": "BPE vocabulary, shared"})
    d_model: int = field(default=128, metadata={"help": "Marian width"})
    layers: int = field(default=3, metadata={"help": "encoder and decoder layers (each)"})
    heads: int = field(default=4, metadata={"help": "attention heads"})
    ffn_dim: int = field(default=512, metadata={"help": "feed-forward width"})
    max_source_tokens: int = field(default=32, metadata={"help": "source tokens, tag included"})
    max_target_tokens: int = field(default=32, metadata={"help": "reference / generated tokens"})
    num_beams: int = field(default=1, metadata={"help": "1: greedy decoding"})
    success_chrf: float = field(default=50.0, metadata={"help": "sentence chrF of a success"})
    success_token_accuracy: float = field(
        default=0.5, metadata={"help": "teacher-forced token accuracy of a training success"}
    )
    stage0_steps: int = field(default=1500, metadata={"help": "stage-0 steps at batch 64"})
    stage0_lr: float = field(default=1.5e-3, metadata={"help": "stage-0 peak learning rate"})

    def __post_init__(self):
        self.prior_languages = tuple(self.prior_languages)
        languages = [*self.prior_languages, self.new_language]
        check(len(self.prior_languages) >= 1, "prior_languages needs at least one language")
        check(len(set(languages)) == len(languages), "the new language must not be a prior one")
        check("en" not in languages, "sources are English: target languages must differ")
        check(0 < self.eval_share < 0.5, "eval_share must be in (0, 0.5)")
        for name in ("prior_eval_size", "new_eval_size", "max_words", "max_chars", "layers"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        for name in ("prior_train_size", "new_train_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be >= 1")
        check(self.vocab_size >= 100, "vocab_size must be >= 100")
        check(self.d_model % self.heads == 0, "d_model must be a multiple of heads")
        check(self.max_source_tokens >= 4 and self.max_target_tokens >= 4, "token caps >= 4")
        check(self.num_beams >= 1, "num_beams must be >= 1")
        check(0 <= self.success_chrf <= 100, "success_chrf must be in [0, 100]")
        check(0 < self.success_token_accuracy <= 1, "success_token_accuracy must be in (0, 1]")
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")
        check(self.stage0_lr > 0, "stage0_lr must be > 0")


class GettextMTTask(Seq2SeqTask):
    """Offline multilingual MT: a small Marian trained on en->de and en->fr UI strings from
    Debian's gettext catalogues (stage 0), then fine-tuned on en->es."""

    metadata = TaskMetadata(
        name="gettext-mt",
        family="translation",
        description="Marian (~2M, from scratch) on Debian gettext catalogues: en->de and en->fr"
        " (stage 0), then en->es; sacrebleu BLEU/chrF",
        prior_metric="bleu",
        new_metric="bleu",
        lower_is_better=frozenset({"loss"}),
        reference="Debian 12 gettext catalogues (.mo) of the packages in debian-packages.txt",
        version="1",
        dataset_revision="debian-12-gettext",
        license="the catalogues' own licences (GPL/LGPL family, see /usr/share/doc/<package>)",
        offline=True,
    )
    Config = GettextMTConfig
    # The budget at which plain fine-tuning on en->es costs the prior pairs (docs).
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 300,
        "batch_size": 32,
        "lr": 5e-4,
        "eval_batch_size": 100,
    }

    def languages(self) -> list[str]:
        return [*self.config.prior_languages, self.config.new_language]

    def load_data(self, ctx: RunContext | None = None) -> TaskData:
        """Pairs from the pinned packages' catalogues, split by English source."""
        config = self.config
        found, versions = catalogues.pinned_catalogues(pinned_packages(), self.languages())
        read = list(catalogues.read_catalogues(found))
        segments = catalogues.collect_segments(
            ((c.language, entries) for c, _, entries in read), config.max_words, config.max_chars
        )
        sides = pairs_by_language(segments, self.languages(), config.eval_share)
        splits = {"prior_train": [], "prior_eval": [], "new_train": [], "new_eval": []}
        for lang in self.languages():
            role = "new" if lang == config.new_language else "prior"
            train_size = getattr(config, f"{role}_train_size")
            eval_size = getattr(config, f"{role}_eval_size")
            for side, size in (("train", train_size), ("eval", eval_size)):
                chosen = subsample(sides[lang][side], size, split_seed(f"{lang}:{side}"))
                splits[f"{role}_{side}"] += [
                    make_example(s, t, "en", lang, "gettext") for s, t in chosen
                ]
        self._check_sizes(splits)
        fingerprint = catalogues.fingerprint(versions, [(c, data) for c, data, _ in read])
        return TaskData(
            *(Split(name, examples) for name, examples in splits.items()),
            info={"packages": versions, "files": len(read), "segments": len(segments)},
            provenance={
                "catalogues": fingerprint,
                "debian_packages": " ".join(f"{p}={v}" for p, v in sorted(versions.items())),
                **{f"sacrebleu_{k}": v for k, v in signatures(self.languages()).items()},
            },
        )

    def _check_sizes(self, splits: dict[str, list]) -> None:
        for name, examples in splits.items():
            if not examples:
                raise ForgetbenchError(
                    f"gettext-mt: no {name} pairs in the catalogues of the pinned packages"
                    " (check task.eval_share and the sizes)"
                )

    # -- the prior model ---------------------------------------------------------------------

    def model_settings(self) -> dict[str, Any]:
        """What determines the untrained model and its vocabulary."""
        c = self.config
        return {
            "vocab_size": c.vocab_size,
            "d_model": c.d_model,
            "layers": c.layers,
            "heads": c.heads,
            "ffn_dim": c.ffn_dim,
            "max_source_tokens": c.max_source_tokens,
            "max_target_tokens": c.max_target_tokens,
            "languages": self.languages(),
            "tokenizer": "bpe-metaspace-v1",
        }

    @property
    def stage0(self) -> Stage0Spec:
        return Stage0Spec(
            train=TrainConfig(
                steps=self.config.stage0_steps, batch_size=64, lr=self.config.stage0_lr
            ),
            base=hash_json({"marian-from-config": self.model_settings()}),
            # the vocabulary also reads the new pair's training texts
            key={
                "success_token_accuracy": self.config.success_token_accuracy,
                "new_train": [self.config.new_language, self.config.new_train_size],
                "split": [self.config.eval_share, self.config.max_words, self.config.max_chars],
            },
        )

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        """A BPE vocabulary trained on every training text (sources and targets of all pairs,
        so the new language's words have tokens), and an untrained Marian of the config's size."""
        from transformers import MarianConfig, MarianMTModel

        texts = sorted(
            {e[key] for split in (data.prior_train, data.new_train) for e in split.examples
             for key in ("source", "target")}
        )  # fmt: skip
        tokenizer = train_tokenizer(texts, self.config.vocab_size, self.languages())
        c = self.config
        config = MarianConfig(
            vocab_size=len(tokenizer),
            d_model=c.d_model,
            encoder_layers=c.layers,
            decoder_layers=c.layers,
            encoder_attention_heads=c.heads,
            decoder_attention_heads=c.heads,
            encoder_ffn_dim=c.ffn_dim,
            decoder_ffn_dim=c.ffn_dim,
            max_position_embeddings=max(c.max_source_tokens, c.max_target_tokens) + 2,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
            activation_function="swish",
            scale_embedding=True,
            dropout=0.1,
        )
        model = MarianMTModel(config)
        model.generation_config.bad_words_ids = [[tokenizer.pad_token_id]]
        return ModelBundle(
            model,
            tokenizer,
            identity=self.stage0.base,
            source="marian-from-config",
            extras={"lang_style": "tag"},
        )
