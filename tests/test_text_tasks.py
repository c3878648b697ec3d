"""The text-classification family: WordNet and chatterbot readers, the MNLI loader on local
files in the hub schema, and its offline error."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from forgetbench.api import fit_probe, tap_layers
from forgetbench.errors import ForgetbenchError
from forgetbench.runner import RunRequest, execute
from forgetbench.store import Store
from forgetbench_tasks.text_classification.wordnet import (
    LEXNAMES,
    read_chatterbot,
    read_wordnet,
    split_examples,
)

WORDNET_LINES = {
    "noun": [
        "  1 This software and database is being provided to you, the LICENSEE, by  ",
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to exist  ",
        '00015388 05 n 01 animal 0 001 @ 00004475 n 0000 | a living organism; "animals move"  ',
    ],
    "verb": ["00001740 29 v 01 breathe 0 001 @ 00002325 v 0000 | draw air into the lungs  "],
    "adj": ["00001740 00 a 01 able 0 001 ! 00002098 a 0101 | having the necessary means  "],
    "adv": ["00001837 02 r 01 barely 0 000 | only just  "],
}


def write_wordnet(root):
    for pos, lines in WORDNET_LINES.items():
        (root / f"data.{pos}").write_text("\n".join(lines) + "\n")


def test_read_wordnet_parses_glosses_and_supersenses(tmp_path):
    write_wordnet(tmp_path)
    examples = read_wordnet(tmp_path)
    assert len(examples) == 5  # the licence header is skipped
    by_text = {e["text"]: e for e in examples}
    animal = by_text['a living organism; "animals move"']
    assert LEXNAMES[animal["label"]] == "noun.animal"
    assert LEXNAMES[by_text["draw air into the lungs"]["label"]] == "verb.body"
    assert LEXNAMES[by_text["only just"]["label"]] == "adv.all"
    assert len({e["id"] for e in examples}) == 5  # same offset in two files, distinct ids


def test_missing_wordnet_says_what_to_install(tmp_path):
    with pytest.raises(ForgetbenchError, match="apt-get install wordnet-base"):
        read_wordnet(tmp_path)


def test_lexnames_are_the_45_supersenses():
    assert len(LEXNAMES) == 45
    assert LEXNAMES[3] == "noun.Tops"
    assert LEXNAMES[44] == "adj.ppl"


def test_real_chatterbot_corpus():
    examples, topics = read_chatterbot()
    assert len(topics) >= 15
    assert len(examples) > 1500  # 1,901 distinct utterances in chatterbot-corpus 1.3
    assert len({e["text"] for e in examples}) == len(examples)
    assert {e["label"] for e in examples} == set(range(len(topics)))


def test_split_is_fixed_and_disjoint():
    examples = [{"id": i, "text": str(i), "label": i % 3} for i in range(100)]
    train, held_out = split_examples(examples, 20, None, "new", seed=0)
    again, _ = split_examples(examples, 20, None, "new", seed=0)
    assert train.fingerprint() == again.fingerprint()
    assert len(held_out) == 20
    assert not {e["id"] for e in train.examples} & {e["id"] for e in held_out.examples}
    assert all(e["source"] == "new" for e in train.examples)


def test_a_smaller_eval_split_leaves_the_train_split_and_stage_0_as_they_are():
    """Each offline task's splitters: shrinking an eval split to the default size or below
    (a quicker run) keeps the train split, which stage 0's cache key hashes, and draws the eval
    split as a subset of the default one; a larger one still never overlaps the train split."""
    from forgetbench_tasks.clip.offline import held_out
    from forgetbench_tasks.qa.wordnet import split_by_lemma

    examples = [{"id": i, "text": str(i), "label": i % 3} for i in range(100)]

    def ids(split):
        return {e["id"] for e in split.examples}

    default_train, default_eval = split_examples(examples, 20, None, "prior", 0, reserve=20)
    train, small = split_examples(examples, 5, None, "prior", 0, reserve=20)
    assert train.fingerprint() == default_train.fingerprint()
    assert ids(small) < ids(default_eval)
    train, large = split_examples(examples, 30, None, "prior", 0, reserve=20)
    assert not ids(train) & ids(large)
    assert len(train) == 70

    qa_train, qa_eval = split_by_lemma(examples, 20, 50, "prior", reserve=20)
    train, small = split_by_lemma(examples, 5, 50, "prior", reserve=20)
    assert (train.fingerprint(), ids(small) < ids(qa_eval)) == (qa_train.fingerprint(), True)

    clip_train, clip_eval = held_out(100, 20, reserve=20)
    train, small = held_out(100, 5, reserve=20)
    assert train.tolist() == clip_train.tolist()
    assert set(small.tolist()) < set(clip_eval.tolist())


def test_split_indices_falls_back_where_the_data_has_no_room_for_the_default_train_split():
    from forgetbench.api import split_indices

    default_train, default_eval = split_indices(30, 10, 15, reserve=10)
    train, small = split_indices(30, 4, 15, reserve=10)
    assert train.tolist() == default_train.tolist()
    assert set(small.tolist()) < set(default_eval.tolist())
    # 30 - 20 leaves 10 for a train split of 15: it starts right after the eval split
    train, evaluation = split_indices(30, 4, 15, reserve=20)
    assert len(train) == 15
    assert not set(train.tolist()) & set(evaluation.tolist())
    assert set(train.tolist()) | set(evaluation.tolist()) < set(range(30))


def test_tap_layers_spread_from_embeddings_to_last():
    assert tap_layers(6) == [0, 2, 4, 6]
    assert tap_layers(12) == [0, 4, 8, 12]


# -- MNLI on small local files in the hub schema -------------------------------------------------

GENRES = ["fiction", "government", "travel"]


def write_mnli_files(directory, count=48):
    nli, sentiment = [], []
    for i in range(count):
        label = i % 3
        nli.append(
            {
                "promptID": i,
                "pairID": f"{i}e",
                "premise": f"the cat sat {i}",
                "hypothesis": ["a cat sat", "a dog ran", "nothing sat"][label],
                "genre": GENRES[i % 3],
                "label": label,
            }
        )
        sentiment.append({"idx": i, "sentence": ["good fun", "bad film"][i % 2], "label": i % 2})
    nli.append({**nli[0], "label": -1})  # unlabelled rows are dropped, as in the hub data
    for name, rows in [
        ("mnli_train", nli),
        ("mnli_validation_matched", nli[:12]),
        ("sst2_train", sentiment),
        ("sst2_validation", sentiment[:10]),
    ]:
        (directory / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def write_tiny_bert(directory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["the", "cat", "sat", "a", "dog", "ran", "nothing", "good", "fun", "bad", "film"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[str(i) for i in range(60)]]
    directory.mkdir()
    (directory / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    BertModel(config).save_pretrained(directory)


def test_mnli_loader_runs_end_to_end_on_local_files(tmp_path, db):
    write_mnli_files(tmp_path)
    write_tiny_bert(tmp_path / "bert")
    overrides = {
        "task.data_dir": str(tmp_path),
        "task.base_model": str(tmp_path / "bert"),
        "task.stage0_steps": "3",
        "batch_size": "8",
        "max_length": "16",
    }
    overrides["mixcd.partitions"] = "genre,label"
    request = RunRequest(task="mnli", methods=["mixcd"], steps=3, overrides=overrides)
    run_id = execute(request, db=db)
    store = Store(db)
    run = store.get_run(run_id)
    assert run["status"] == "ok"
    assert set(run["data_fingerprints"]) == {"prior_train", "prior_eval", "new_train", "new_eval"}
    values = store.get_metrics([run_id])[run_id]
    assert 0.0 <= values["prior/after/accuracy"] <= 1.0
    # cells come from genre x label: at most 3 x 3
    assert 1 <= values["run/derived/cells"] <= 9


def test_mnli_sizes_draw_a_seeded_sample_not_the_first_rows(tmp_path):
    """``prior_train_size`` subsamples across the whole file (the first rows of MultiNLI's are
    a few documents' pairs), the same rows on every load, unlabelled rows never among them."""
    from forgetbench_tasks.text_classification.mnli import MnliConfig, MnliTask

    write_mnli_files(tmp_path, count=300)
    config = MnliConfig(data_dir=str(tmp_path), prior_train_size=30, prior_eval_size=5)
    data = MnliTask(config).load_data(None)
    premises = [example["text"] for example in data.prior_train.examples]
    numbers = [int(text.rsplit(" ", 1)[1]) for text in premises]
    assert len(numbers) == 30
    assert numbers == sorted(set(numbers))
    assert max(numbers) > 150  # drawn from the whole file, not its head
    assert len(data.prior_eval) == 5
    assert len(data.new_train) == 300
    again = MnliTask(config).load_data(None)
    assert again.prior_train.fingerprint() == data.prior_train.fingerprint()
    whole = MnliTask(MnliConfig(data_dir=str(tmp_path))).load_data(None)
    assert len(whole.prior_train) == 300  # the unlabelled row is dropped


def test_mnli_missing_local_file_is_one_clear_error(tmp_path, db):
    with pytest.raises(ForgetbenchError, match=r"mnli_train\.jsonl"):
        execute(RunRequest(task="mnli", overrides={"task.data_dir": str(tmp_path)}), db=db)
    assert Store(db).get_runs()[0]["status"] == "failed"


def test_mnli_offline_cli_fails_with_one_line(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "FORGETBENCH_CACHE": str(tmp_path / "cache"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "forgetbench",
            "run",
            "--task",
            "mnli",
            "--db",
            str(tmp_path / "r.db"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "nyu-mll/multi_nli" in lines[0]
    assert "task.data_dir" in lines[0]


def test_real_wordnet_has_every_synset_and_supersense():
    examples = read_wordnet()
    assert len(examples) == 117_659
    assert {e["label"] for e in examples} == set(range(45))
    assert len({e["id"] for e in examples}) == len(examples)


def test_heavily_penalised_probe_predicts_class_frequencies():
    # With the weights forced to ~0 only the bias fits: p(class) = its frequency, so each
    # sample's loss is -log(frequency of its label).
    features = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
    losses, _, _ = fit_probe(features, labels, classes=3, steps=100, l2=1e6)
    expected = [-math.log(6 / 8)] * 6 + [-math.log(1 / 8)] * 2
    assert losses.tolist() == pytest.approx(expected, abs=1e-3)


def test_probe_separates_separable_features():
    labels = torch.arange(30) % 3
    noise = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    features = torch.nn.functional.one_hot(labels, 3).float() * 4 + 0.1 * noise
    losses, _, _ = fit_probe(features, labels, classes=3, steps=100, l2=1e-3)
    assert losses.max().item() < 0.1


def test_probe_weights_reproduce_its_losses_as_a_linear_head():
    """FLOW's probe_init loads the probe into the new head: as an nn.Linear it gives the
    probe's losses."""
    labels = torch.arange(30) % 3
    noise = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    features = torch.nn.functional.one_hot(labels, 3).float() * 2 + 0.5 * noise
    losses, weight, bias = fit_probe(features, labels, classes=3, steps=100, l2=1e-3)
    head = torch.nn.Linear(3, 3)
    with torch.no_grad():
        head.weight.copy_(weight.T)
        head.bias.copy_(bias)
        as_head = torch.nn.functional.cross_entropy(head(features), labels, reduction="none")
    assert torch.allclose(as_head, losses, atol=1e-6)
