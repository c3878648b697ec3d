"""The paper-scale ``squad`` loader on tiny local files in the hub's schema, and its offline
errors (never the hub itself)."""

import json

import pytest

from forgetbench.errors import ForgetbenchError
from forgetbench_tasks.qa.squad import SquadConfig, SquadTask


def row(id_, context, question, answers, **extra):
    return {
        "id": id_,
        "context": context,
        "question": question,
        "answers": {
            "text": answers,
            "answer_start": [context.index(answer) for answer in answers],
        },
        **extra,
    }


SQUAD_TRAIN = [
    row(
        "5733be284776f41900661182",
        "Notre Dame is in Indiana.",
        "Where is it?",
        ["Indiana"],
        title="University_of_Notre_Dame",
    ),
    row(
        "5733be284776f4190066117f",
        "The Grotto is a Marian place.",
        "What is it?",
        ["Marian"],
        title="University_of_Notre_Dame",
    ),
    row(
        "56be85543aeaaa14008c9063", "Beyonce was born in 1981.", "When?", ["1981"], title="Beyonce"
    ),
]
SQUAD_VALIDATION = [
    row(
        "56be4db0acb8001400a502ec",
        "Denver won Super Bowl 50.",
        "Who won?",
        ["Denver", "Denver", "Denver won"],
        title="Super_Bowl_50",
    ),
    row(
        "56be4db0acb8001400a502ed",
        "It was played in 2016.",
        "When?",
        ["2016"],
        title="Super_Bowl_50",
    ),
]
COVID_QA = [
    row(
        id_,
        f"Paper {doc}: the virus binds ACE2 receptors.",
        "What does it bind?",
        ["ACE2 receptors"],
        document_id=doc,
        is_impossible=False,
    )
    for id_, doc in [(1, 100), (2, 100), (3, 200), (4, 300), (5, 300), (6, 400), (7, 500)]
]


@pytest.fixture
def offline_datasets(tmp_path, monkeypatch):
    """datasets in offline mode with an empty cache of its own: no hub, no shared state."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "squad-data"
    folder.mkdir()
    write_jsonl(folder / "squad_train.jsonl", SQUAD_TRAIN)
    write_jsonl(folder / "squad_validation.jsonl", SQUAD_VALIDATION)
    write_jsonl(folder / "covid_qa.jsonl", COVID_QA)
    return folder


def test_local_files_in_the_hub_schema(data_dir, offline_datasets):
    data = SquadTask(SquadConfig(data_dir=str(data_dir), new_eval_fraction=0.4)).load_data(None)
    assert [len(s) for s in (data.prior_train, data.prior_eval)] == [3, 2]
    first = data.prior_eval[0]
    assert first["answers"] == {"text": ["Denver", "Denver", "Denver won"], "answer_start": [0] * 3}
    assert first["qid"] == "56be4db0acb8001400a502ec"
    assert isinstance(first["id"], int)
    assert data.prior_train[2]["document"] == "Beyonce"
    # COVID-QA: two of five papers held out, with all of their questions
    train_docs = set(data.new_train.column("document"))
    eval_docs = set(data.new_eval.column("document"))
    assert len(eval_docs) == 2
    assert not train_docs & eval_docs
    assert len(data.new_train) + len(data.new_eval) == len(COVID_QA)
    ids = [e["id"] for split in data.splits() for e in split.examples]
    assert len(set(ids)) == len(ids)
    assert (
        data.fingerprints()
        == SquadTask(SquadConfig(data_dir=str(data_dir), new_eval_fraction=0.4))
        .load_data(None)
        .fingerprints()
    )


def test_subsampling_is_seeded_and_keeps_dataset_order(data_dir, offline_datasets):
    config = SquadConfig(data_dir=str(data_dir), prior_train_size=2)
    first = SquadTask(config).load_data(None).prior_train
    again = SquadTask(config).load_data(None).prior_train
    assert len(first) == 2
    assert first.fingerprint() == again.fingerprint()
    order = [row["id"] for row in SQUAD_TRAIN]
    assert sorted(first.column("qid"), key=order.index) == list(first.column("qid"))


def test_partitions_use_the_question_word(data_dir, offline_datasets):
    task = SquadTask(SquadConfig(data_dir=str(data_dir)))
    partitions = task.partitions(task.load_data(None))
    # where, what, when; bins follow the sorted names: what 0, when 1, where 2
    assert partitions["question_type"].tolist() == [2, 0, 1]
    assert task.question_type({"question": "In which year?"}) == "which"


def test_missing_local_file_names_every_file(data_dir, offline_datasets):
    (data_dir / "covid_qa.jsonl").unlink()
    with pytest.raises(ForgetbenchError) as error:
        SquadTask(SquadConfig(data_dir=str(data_dir))).load_data(None)
    message = str(error.value)
    assert "covid_qa.jsonl" in message
    assert "task.data_dir" in message
    assert "\n" not in message


def test_offline_without_data_is_one_line_error(offline_datasets):
    with pytest.raises(ForgetbenchError) as error:
        SquadTask().load_data(None)
    message = str(error.value)
    assert message.startswith("rajpurkar/squad (train) is not available")
    assert "--set task.data_dir=DIR" in message
    assert "squad_train.jsonl" in message
    assert "\n" not in message


def test_defaults_and_metadata():
    task = SquadTask()
    assert task.metadata.prior_metric == task.metadata.new_metric == "f1"
    assert task.metadata.family == "qa"
    assert not task.metadata.higher_is_better("loss")
    spec = task.stage0
    assert spec.base == "bert-base-uncased"
    assert spec.key["max_length"] == 384
    with pytest.raises(ValueError, match="new_eval_fraction"):
        SquadConfig(new_eval_fraction=1.0)


def test_a_squad_question_without_an_answer_is_one_line_error(data_dir, offline_datasets):
    unanswerable = row("5a8d7bf7df8bba001a0f9ab1", "No answer here.", "Why?", [])
    write_jsonl(data_dir / "squad_validation.jsonl", [*SQUAD_VALIDATION, unanswerable])
    with pytest.raises(ForgetbenchError) as error:
        SquadTask(SquadConfig(data_dir=str(data_dir))).load_data(None)
    message = str(error.value)
    assert message.startswith("squad: squad question 5a8d7bf7df8bba001a0f9ab1 has no gold answer")
    assert "\n" not in message
