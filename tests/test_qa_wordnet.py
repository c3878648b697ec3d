"""The offline QA scenario's builder, on a fixture in WordNet 3.0's file format."""

from pathlib import Path

import numpy as np
import pytest

from forgetbench.errors import ForgetbenchError
from forgetbench_tasks.qa.wordnet import (
    WordnetQAConfig,
    WordnetQATask,
    build_context,
    parse_gloss,
    read_index,
    read_synsets,
)

FIXTURE = Path(__file__).parent / "fixtures" / "qa" / "wordnet"
REAL_WORDNET = Path("/usr/share/wordnet")


def fixture_task(**sizes) -> WordnetQATask:
    config = dict(prior_train_size=4, prior_eval_size=2, new_train_size=3, new_eval_size=1)
    return WordnetQATask(WordnetQAConfig(wordnet_dir=str(FIXTURE), **{**config, **sizes}))


def assert_answers_are_spans(example: dict) -> None:
    answers = example["answers"]
    assert answers["text"]
    for text, start in zip(answers["text"], answers["answer_start"], strict=True):
        assert example["context"][start : start + len(text)] == text


def test_parse_gloss_separates_definition_and_examples():
    definition, examples = parse_gloss(
        'play a role or part; "Gielgud played Hamlet"; "She wants to act Lady Macbeth" - Bard'
    )
    assert definition == "play a role or part"
    assert examples == ("Gielgud played Hamlet", "She wants to act Lady Macbeth")
    assert parse_gloss("lifts and moves heavy objects  \n") == ("lifts and moves heavy objects", ())


def test_reader_skips_the_licence_header_and_keeps_sense_order():
    index = read_index(FIXTURE, "noun")
    synsets = read_synsets(FIXTURE, "noun")
    assert index["bank"] == [1000, 1100, 1200]
    assert "  1" not in index
    assert len(synsets) == 14
    financial = synsets[1100]
    assert financial.words == ("depository financial institution", "bank", "banking company")
    assert financial.examples == ("he cashed a check at the bank",)
    assert index["ant bear"] == [7000]  # underscores become spaces


def test_context_holds_every_part_at_its_recorded_offset():
    synsets = read_synsets(FIXTURE, "noun")
    context, senses = build_context("bank", "noun", [synsets[o] for o in (1000, 1100, 1200)])
    assert context.splitlines()[1].startswith("bank (noun, sense 2): a financial institution")
    assert [s.number for s in senses] == [1, 2, 3]
    second = senses[1]
    assert [word for _, word in second.synonyms] == [
        "depository financial institution",
        "banking company",
    ]
    for start, text in [second.definition, *second.synonyms, *second.examples]:
        assert context[start : start + len(text)] == text


def test_fixture_scenario_splits_by_lemma_and_asks_templated_questions():
    data = fixture_task().load_data(None)
    prior = data.prior_train.examples + data.prior_eval.examples
    new = data.new_train.examples + data.new_eval.examples
    # polysemous lemmas only (aardvark and exist have one sense; molt has no example sentence)
    assert sorted(e["lemma"] for e in prior) == ["bank", "bass", "crane", "mouse", "pitch", "seal"]
    assert sorted(e["lemma"] for e in new) == ["break", "drive", "play", "run"]
    assert (len(data.prior_train), len(data.prior_eval)) == (4, 2)
    assert (len(data.new_train), len(data.new_eval)) == (3, 1)
    assert {e["template"] for e in prior} <= {"definition", "synonym"}
    assert {e["template"] for e in new} <= {"example_by_sense", "example_by_definition"}
    for example in prior + new:
        assert_answers_are_spans(example)
        assert f'"{example["lemma"]}"' in example["question"]
        assert isinstance(example["id"], int)
    assert len({e["id"] for e in prior + new}) == len(prior + new)


def test_fixture_scenario_is_deterministic():
    first, second = fixture_task().load_data(None), fixture_task().load_data(None)
    assert first.fingerprints() == second.fingerprints()


def test_new_questions_ask_for_example_sentences_of_the_named_sense():
    data = fixture_task().load_data(None)
    for example in data.new_train.examples + data.new_eval.examples:
        line = example["context"].splitlines()[example["sense"] - 1]
        assert line.startswith(f"{example['lemma']} (verb, sense {example['sense']})")
        assert all(f'"{text}"' in line for text in example["answers"]["text"])


def test_partitions_are_integer_bins_per_prior_train_example():
    task = fixture_task()
    data = task.load_data(None)
    partitions = task.partitions(data)
    assert set(partitions) == {"question_type", "answer_length", "sense"}
    for bins in partitions.values():
        assert bins.shape == (len(data.prior_train),)
        assert bins.dtype == np.int64
        assert bins.min() >= 0


def test_missing_wordnet_is_one_line_error(tmp_path):
    task = WordnetQATask(WordnetQAConfig(wordnet_dir=str(tmp_path)))
    with pytest.raises(ForgetbenchError, match="apt-get install wordnet-base") as error:
        task.load_data(None)
    assert "\n" not in str(error.value)


def test_too_few_lemmas_for_the_eval_split_is_an_error():
    with pytest.raises(ForgetbenchError, match="only 6 prior questions"):
        fixture_task(prior_eval_size=6).load_data(None)


@pytest.mark.parametrize(
    ("bad", "message"),
    [({"stride": 64}, "stride"), ({"max_senses": 1}, "max_senses"), ({"new_eval_size": 0}, "new_")],
)
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        WordnetQAConfig(**bad)


@pytest.mark.skipif(not (REAL_WORDNET / "data.noun").exists(), reason="wordnet-base not installed")
def test_real_wordnet_scenario():
    task = WordnetQATask()
    data = task.load_data(None)
    sizes = [len(split) for split in data.splits()]
    assert sizes == [4000, 500, 2000, 500]
    for train, evaluation in ((data.prior_train, data.prior_eval), (data.new_train, data.new_eval)):
        assert not set(train.column("lemma")) & set(evaluation.column("lemma"))
    for split in data.splits():
        for example in split.examples:
            assert_answers_are_spans(example)
    assert set(data.prior_train.column("pos")) == {"noun"}
    assert set(data.new_train.column("pos")) == {"verb"}
