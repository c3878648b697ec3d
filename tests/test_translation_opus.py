"""The paper-scale scenario ``m2m100`` on local OPUS-schema files, with a tiny Marian saved by
``save_pretrained`` as its model: the loader, its one-line errors, and runs of finetune and
mixcd through the CLI into a real SQLite store."""

import json
import os
import subprocess
import sys

import pytest
from translation_helpers import save_tiny_marian, write_opus

from forgetbench.api import ForgetbenchError
from forgetbench_tasks.translation import M2M100Task
from forgetbench_tasks.translation.opus import opus_config

PAIRS = ["en-de", "en-fr", "en-es"]


def test_opus_config_names_the_pair_in_alphabetical_order():
    assert opus_config("en-de") == "de-en"
    assert opus_config("en-fr") == "en-fr"


def test_the_loader_reads_local_files_in_the_opus_schema(tmp_path):
    write_opus(tmp_path, PAIRS)
    task = M2M100Task(M2M100Task.Config(data_dir=str(tmp_path), prior_train_size=20))
    data = task.load_data()
    assert [len(s) for s in data.splits()] == [40, 12, 36, 6]
    assert {e["pair"] for e in data.prior_train.examples} == {"en-de", "en-fr"}
    assert {e["pair"] for e in data.new_eval.examples} == {"en-es"}
    first = data.prior_eval.examples[0]
    assert (first["source"], first["target"]) == ("open the file", "die Datei öffnen")
    assert data.provenance["sacrebleu_bleu"].startswith("nrefs:1|")
    # the same files give the same examples and ids
    assert task.load_data().prior_train.examples == data.prior_train.examples


def test_missing_local_files_and_offline_hub_are_one_line_errors(tmp_path, monkeypatch):
    write_opus(tmp_path, ["en-de", "en-fr"])
    task = M2M100Task(M2M100Task.Config(data_dir=str(tmp_path)))
    with pytest.raises(ForgetbenchError, match=r"missing .*en-es-train\.jsonl") as error:
        task.load_data()
    assert "\n" not in str(error.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ForgetbenchError, match=r"task\.data_dir=DIR") as error:
        M2M100Task().load_data()
    assert "\n" not in str(error.value)


def cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "forgetbench", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def test_a_tiny_marian_runs_finetune_and_mixcd_through_the_cli(tmp_path):
    data_dir = write_opus(tmp_path / "opus", PAIRS)
    model_dir = save_tiny_marian(tmp_path / "marian")
    env = {
        **os.environ,
        "FORGETBENCH_CACHE": str(tmp_path / "cache"),
        "FORGETBENCH_DB": str(tmp_path / "results.db"),
    }
    settings = [
        "--set", f"task.data_dir={data_dir}", "--set", f"task.model={model_dir}",
        "--set", "task.max_target_tokens=24", "--set", "batch_size=8", "--steps", "3",
    ]  # fmt: skip
    for method in ("finetune", "mixcd"):
        done = cli(env, "run", "--task", "m2m100", "--method", method, *settings)
        assert done.returncode == 0, done.stderr
    for run_id, method in ((1, "finetune"), (2, "mixcd")):
        run = json.loads(cli(env, "show", str(run_id), "--json").stdout)
        assert run["status"] == "ok"
        assert run["methods"].startswith(method)
        assert run["family"] == "translation"
        assert run["prior_metric"] == "bleu"
        metrics = run["metrics"]
        for name in ("bleu", "chrf", "bleu_en-de", "chrf_en-fr", "loss"):
            assert f"prior/before/{name}" in metrics
        assert "new/after/chrf_en-es" in metrics
        assert 0.0 <= metrics["prior/derived/cd_rate"] <= 1.0
        assert run["data_fingerprints"]["sacrebleu_chrf"].startswith("nrefs:1|")
        assert run["model"].startswith("pretrained:")
    # the same prior model and data: the two runs start from the same point
    first = json.loads(cli(env, "show", "1", "--json").stdout)["metrics"]
    second = json.loads(cli(env, "show", "2", "--json").stdout)["metrics"]
    assert first["prior/before/loss"] == pytest.approx(second["prior/before/loss"])
