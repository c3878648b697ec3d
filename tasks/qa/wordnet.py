"""Offline QA scenario ``wordnet-qa``: templated questions over real WordNet 3.0 text.

The contexts are real: one WordNet lemma's senses, in WordNet's sense order (Debian
``wordnet-base``), each with its definition, synonyms and example sentences, e.g.::

    bank (noun, sense 1): sloping land (especially the slope beside a body of water).
    Examples: "they pulled the canoe up on the bank"; "he sat on the bank of the river ...".

The questions are templates, and every answer is a span of the context:

- prior task (stage 0), polysemous **nouns**: the definition of sense k, or a synonym of sense k;
- new task, polysemous **verbs**: an example sentence of a sense, the sense named either by
  its number or by its definition (quoted in the question).

So the new task changes the part of speech, the question templates and the answer type (an
example sentence where the prior asked for a definition or a synonym of the same "sense k"),
which is what makes plain fine-tuning forget. Splits are by lemma (no lemma is both in train and
eval), fixed by seed 0 and the split sizes; one question per lemma.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
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
    split_indices,
)
from forgetbench_tasks.offline_models import minilm_l6_path

from .base import SpanQATask, stable_id

if TYPE_CHECKING:
    from forgetbench.api import RunContext

WORDNET_DIR = "/usr/share/wordnet"
SPLIT_SEED = 0
PRIOR_TEMPLATES = {
    "definition": 'What does the noun "{lemma}" mean in sense {sense}?',
    "synonym": 'What is a synonym of the noun "{lemma}" in sense {sense}?',
}
NEW_TEMPLATES = {
    "example_by_sense": 'Which sentence uses the verb "{lemma}" in sense {sense}?',
    "example_by_definition": 'Give an example of "{lemma}" used to mean "{definition}".',
}
# Definitions quoted in a question stay short enough to leave room for the context.
MAX_QUOTED_WORDS = 40


# -- reading WordNet ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its words (spaces for underscores), definition and examples."""

    offset: int
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into its definition and its quoted example sentences.

    Parts are separated by "; "; a part that opens with a quote is an example (text after its
    closing quote, such as an attribution, is dropped); the others make the definition.
    """
    definition, examples = [], []
    for part in gloss.strip().split("; "):
        quoted = re.match(r'"([^"]+)"', part.strip())
        if quoted:
            examples.append(quoted.group(1).strip())
        elif part.strip():
            definition.append(part.strip())
    return "; ".join(definition), tuple(examples)


def clean_word(word: str) -> str:
    """A data-file word as text: underscores to spaces, adjective markers like (a) dropped."""
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")


def data_lines(path: Path) -> Iterator[str]:
    """The lines of a WordNet data or index file, without the licence header."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.startswith("  ") and line.strip():
                yield line


def read_synsets(root: Path, pos: str) -> dict[int, Synset]:
    """``data.<pos>``: synsets by byte offset.

    A line is ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...]
    [frames ...] | gloss``; ``w_cnt`` is two hexadecimal digits.
    """
    synsets = {}
    for line in data_lines(root / f"data.{pos}"):
        fields, _, gloss = line.partition(" | ")
        parts = fields.split()
        count = int(parts[3], 16)
        words = tuple(clean_word(parts[4 + 2 * i]) for i in range(count))
        definition, examples = parse_gloss(gloss)
        synsets[int(parts[0])] = Synset(int(parts[0]), words, definition, examples)
    return synsets


def read_index(root: Path, pos: str) -> dict[str, list[int]]:
    """``index.<pos>``: each lemma's synset offsets in WordNet's sense order.

    A line is ``lemma pos synset_cnt p_cnt [ptr ...] sense_cnt tagsense_cnt offset ...``; the
    last ``synset_cnt`` fields are the offsets.
    """
    senses = {}
    for line in data_lines(root / f"index.{pos}"):
        parts = line.split()
        count = int(parts[2])
        senses[parts[0].replace("_", " ")] = [int(offset) for offset in parts[-count:]]
    return senses


def read_wordnet(root: Path, pos: str) -> tuple[dict[str, list[int]], dict[int, Synset]]:
    """Index and synsets of one part of speech; a one-line error when the files are missing."""
    missing = [name for name in (f"data.{pos}", f"index.{pos}") if not (root / name).exists()]
    if missing:
        raise ForgetbenchError(
            f"WordNet files missing under {root} ({', '.join(missing)}): install them with"
            " 'apt-get install wordnet-base' or --set task.wordnet_dir=DIR"
        )
    return read_index(root, pos), read_synsets(root, pos)


# -- building examples -------------------------------------------------------------------------


@dataclass
class Sense:
    """Where one sense's parts sit in a context: character spans of its definition, synonyms
    and examples."""

    number: int
    definition: tuple[int, str]
    synonyms: list[tuple[int, str]] = field(default_factory=list)
    examples: list[tuple[int, str]] = field(default_factory=list)


class ContextWriter:
    """Appends text to a context and remembers where each answerable piece starts."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def span(self, text: str) -> tuple[int, str]:
        start = len(self.text)
        self.text += text
        return start, text


def sentence_end(text: str) -> str:
    return "" if text.endswith((".", "!", "?")) else "."


def build_context(lemma: str, pos: str, synsets: list[Synset]) -> tuple[str, list[Sense]]:
    """One line per sense: ``<lemma> (<pos>, sense k): <definition>. Synonyms: a, b.
    Examples: "..."; "...".`` (the last two only when the sense has them)."""
    writer = ContextWriter()
    senses = []
    for number, synset in enumerate(synsets, start=1):
        writer.write(f"{lemma} ({pos}, sense {number}): ")
        sense = Sense(number, writer.span(synset.definition))
        writer.write(sentence_end(synset.definition))
        synonyms = [w for w in dict.fromkeys(synset.words) if w.lower() != lemma.lower()]
        if synonyms:
            writer.write(" Synonyms: ")
            for i, word in enumerate(synonyms):
                writer.write(", " if i else "")
                sense.synonyms.append(writer.span(word))
            writer.write(".")
        if synset.examples:
            writer.write(" Examples: ")
            for i, example in enumerate(synset.examples):
                writer.write('; "' if i else '"')
                sense.examples.append(writer.span(example))
                writer.write('"')
            writer.write(".")
        writer.write("\n")
        senses.append(sense)
    return writer.text.rstrip("\n"), senses


def answers_of(spans: list[tuple[int, str]]) -> dict[str, list]:
    return {"text": [text for _, text in spans], "answer_start": [start for start, _ in spans]}


def prior_question(
    senses: list[Sense], rng: np.random.Generator
) -> tuple[str, Sense, dict[str, list]]:
    """A noun question: sense k's definition, or (a third of the time, when it has any) one of
    its synonyms (every synonym is a gold answer)."""
    sense = senses[int(rng.integers(len(senses)))]
    if sense.synonyms and rng.random() < 1 / 3:
        return "synonym", sense, answers_of(sense.synonyms)
    return "definition", sense, answers_of([sense.definition])


def new_question(
    senses: list[Sense], rng: np.random.Generator
) -> tuple[str, Sense, dict[str, list]] | None:
    """A verb question: an example sentence of a sense that has some (every example of that
    sense is a gold answer), the sense named by number or by its quoted definition."""
    with_examples = [s for s in senses if s.examples]
    if not with_examples:
        return None
    sense = with_examples[int(rng.integers(len(with_examples)))]
    template = "example_by_sense" if rng.random() < 0.5 else "example_by_definition"
    if template == "example_by_definition" and len(sense.definition[1].split()) > MAX_QUOTED_WORDS:
        template = "example_by_sense"
    return template, sense, answers_of(sense.examples)


def make_example(kind: str, lemma: str, pos: str, synsets: list[Synset]) -> dict[str, Any] | None:
    """The question of one lemma (``kind``: prior or new), or None when it has none to ask.

    The choice of sense and template is seeded by the lemma itself, so a lemma's question does
    not change when the split sizes do.
    """
    context, senses = build_context(lemma, pos, synsets)
    rng = np.random.default_rng(stable_id(f"{pos}:{lemma}"))
    ask = prior_question if kind == "prior" else new_question
    asked = ask(senses, rng)
    if asked is None:
        return None
    template, sense, answers = asked
    templates = PRIOR_TEMPLATES if kind == "prior" else NEW_TEMPLATES
    question = templates[template].format(
        lemma=lemma, sense=sense.number, definition=sense.definition[1]
    )
    return {
        "id": stable_id(f"wordnet-qa:{pos}:{lemma}"),
        "question": question,
        "context": context,
        "answers": answers,
        "lemma": lemma,
        "pos": pos,
        "template": template,
        "sense": sense.number,
    }


def lemma_examples(kind: str, root: Path, pos: str, max_senses: int) -> Iterator[dict[str, Any]]:
    """Questions over every polysemous lemma of ``pos`` (its first ``max_senses`` senses), in
    alphabetical order of the lemmas."""
    index, synsets = read_wordnet(root, pos)
    for lemma in sorted(index):
        offsets = index[lemma]
        if len(offsets) < 2:
            continue  # one sense: "sense k" would not mean anything
        example = make_example(kind, lemma, pos, [synsets[o] for o in offsets[:max_senses]])
        if example is not None:
            yield example


def split_by_lemma(
    examples: list[dict[str, Any]], eval_size: int, train_size: int, name: str, reserve: int = 0
) -> tuple[Split, Split]:
    """A fixed seeded split (one question per lemma, so no lemma crosses it), by
    :func:`forgetbench.api.split_indices`: with ``reserve`` the default eval size, a smaller
    eval split leaves the train split (and the cached stage 0) as they are."""
    if len(examples) < eval_size + 1:
        raise ForgetbenchError(
            f"wordnet-qa: only {len(examples)} {name} questions for an eval split of {eval_size}"
        )
    train, evaluation = split_indices(len(examples), eval_size, train_size, SPLIT_SEED, reserve)
    return (
        Split(f"{name}_train", [examples[i] for i in train]),
        Split(f"{name}_eval", [examples[i] for i in evaluation]),
    )


# -- the task ----------------------------------------------------------------------------------


@dataclass
class WordnetQAConfig:
    """Sizes, windows and stage-0 budget of the offline QA scenario."""

    wordnet_dir: str = field(default=WORDNET_DIR, metadata={"help": "WordNet 3.0 dict folder"})
    prior_train_size: int = field(default=4000, metadata={"help": "noun questions, stage 0"})
    prior_eval_size: int = field(default=500, metadata={"help": "held-out noun questions"})
    new_train_size: int = field(default=2000, metadata={"help": "verb questions"})
    new_eval_size: int = field(default=500, metadata={"help": "held-out verb questions"})
    max_senses: int = field(default=8, metadata={"help": "senses per context (WordNet order)"})
    max_length: int = field(default=128, metadata={"help": "tokens per window"})
    stride: int = field(default=32, metadata={"help": "tokens shared by adjacent windows"})
    max_answer_tokens: int = field(default=64, metadata={"help": "longest decoded answer"})
    stage0_steps: int = field(default=400, metadata={"help": "stage-0 steps at batch 16"})
    base_model: str = field(default="", metadata={"help": "HF folder; empty: PyPI MiniLM-L6"})

    def __post_init__(self):
        for name in ("prior_train_size", "prior_eval_size", "new_train_size", "new_eval_size"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1")
        check(self.max_senses >= 2, "max_senses must be >= 2")
        check(self.max_length >= 32, "max_length must be >= 32")
        check(0 <= self.stride < self.max_length // 2, "stride must be in [0, max_length / 2)")
        check(self.max_answer_tokens >= 1, "max_answer_tokens must be >= 1")
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")


class WordnetQATask(SpanQATask):
    """Offline extractive QA: MiniLM-L6 trained on WordNet noun questions (stage 0), then
    fine-tuned on WordNet verb questions with a different answer type."""

    metadata = TaskMetadata(
        name="wordnet-qa",
        family="qa",
        description="MiniLM-L6 span QA: templated questions over real WordNet 3.0 sense"
        " inventories; nouns (definition, synonym) then verbs (example sentences)",
        prior_metric="f1",
        new_metric="f1",
        lower_is_better=frozenset({"loss"}),
        reference="WordNet 3.0 (Princeton University); questions templated by forgetbench",
        version="1",
        dataset_revision="wordnet-3.0",
        license="WordNet 3.0 license (BSD-like)",
        offline=True,
    )
    Config = WordnetQAConfig
    # The budget at which plain fine-tuning forgets clearly (docs/tasks_qa.md).
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 100,
        "batch_size": 16,
        "lr": 1e-4,
        "eval_batch_size": 64,
    }

    def base_model(self) -> str:
        if self.config.base_model:
            return self.config.base_model
        return minilm_l6_path()

    def stage0_train(self) -> TrainConfig:
        return TrainConfig(steps=self.config.stage0_steps, batch_size=16, lr=1e-4)

    def load_data(self, ctx: RunContext | None = None) -> TaskData:
        """Noun questions (prior) and verb questions (new), split by lemma."""
        config, root = self.config, Path(self.config.wordnet_dir)
        nouns = list(lemma_examples("prior", root, "noun", config.max_senses))
        verbs = list(lemma_examples("new", root, "verb", config.max_senses))
        defaults = type(config)()
        prior_train, prior_eval = split_by_lemma(
            nouns, config.prior_eval_size, config.prior_train_size, "prior",
            defaults.prior_eval_size,
        )  # fmt: skip
        new_train, new_eval = split_by_lemma(
            verbs, config.new_eval_size, config.new_train_size, "new", defaults.new_eval_size
        )
        info = {"prior_pos": "noun", "new_pos": "verb", "wordnet_dir": str(root)}
        return TaskData(prior_train, prior_eval, new_train, new_eval, info=info)

    def question_type(self, example: dict[str, Any]) -> str:
        return example["template"]

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        """The family's schemes plus ``sense``: the asked sense's rank (1, 2, 3, 4+), since later
        senses sit further into the context (and more often in a later window)."""
        senses = data.prior_train.column("sense")
        return {**super().partitions(data), "sense": np.minimum(senses, 4).astype(np.int64) - 1}
