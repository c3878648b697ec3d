"""The translation family's model side on a tiny Marian from a config: collation, the
teacher-forced per-sample results, generation, saving and loading, what methods read."""

import pytest
import torch
import torch.nn.functional as F
from translation_helpers import LANGUAGES, examples, fit, tiny_bundle

from forgetbench.api import Split, TaskData
from forgetbench_tasks.translation import GettextMTTask
from forgetbench_tasks.translation.base import IGNORE, shift_right, truncate


@pytest.fixture
def task():
    return GettextMTTask(GettextMTTask.Config(max_source_tokens=64, max_target_tokens=64))


@pytest.fixture
def bundle():
    return tiny_bundle()


def test_the_target_language_tag_leads_the_source_and_decodes_away(task, bundle):
    tokenizer = bundle.processor
    rows = task.encode_sources(bundle, [examples("fr")[0]])
    assert rows[0][0] == tokenizer.convert_tokens_to_ids(">>fr<<")
    assert rows[0][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(rows[0], skip_special_tokens=True) == "open the file"
    target = task.encode_targets(bundle, [examples("de")[8]])[0]
    assert tokenizer.decode(target, skip_special_tokens=True) == examples("de")[8]["target"]


def test_collate_pads_labels_and_shifts_them_right(task, bundle):
    batch = task.collate(bundle, examples("de")[:4])
    labels, decoder = batch["labels"], batch["decoder_input_ids"]
    pad = bundle.model.config.pad_token_id
    assert labels.shape == decoder.shape
    assert labels.shape[0] == 4
    assert (decoder[:, 0] == bundle.model.config.decoder_start_token_id).all()
    real = labels != IGNORE
    assert torch.equal(decoder[:, 1:][real[:, :-1]], labels[:, :-1][real[:, :-1]])
    assert (batch["attention_mask"] == (batch["input_ids"] != pad)).all()
    assert shift_right(torch.tensor([[5, 6, IGNORE]]), 0, 0).tolist() == [[0, 5, 6]]
    assert truncate([1, 2, 3, 4, 9], 3) == [1, 2, 9]  # keeps end of sentence


@torch.no_grad()
def test_per_sample_loss_is_the_token_mean_and_independent_of_the_batch(task, bundle):
    model = bundle.model.eval()
    chosen = examples("de")[:3] + examples("es")[8:9]
    together = task.forward(model, task.collate(bundle, chosen))
    for i, example in enumerate(chosen):
        alone_inputs = task.collate(bundle, [example])
        alone = task.forward(model, alone_inputs)
        assert alone.loss[0] == pytest.approx(float(together.loss[i]), abs=1e-5)
        logits = model(**{k: alone_inputs[k] for k in ("input_ids", "decoder_input_ids")}).logits
        reference = F.cross_entropy(logits[0], alone_inputs["labels"][0])
        assert alone.loss[0] == pytest.approx(float(reference), abs=1e-5)
    assert ((together.confidence > 0) & (together.confidence <= 1)).all()


def test_success_is_token_accuracy_over_the_threshold(bundle):
    model = bundle.model.eval()
    chosen = examples("fr")[:3]
    strict = GettextMTTask(GettextMTTask.Config(success_token_accuracy=1.0))
    lenient = GettextMTTask(GettextMTTask.Config(success_token_accuracy=0.01))
    inputs = strict.collate(bundle, chosen)
    assert not strict.forward(model, inputs).success.any()  # an untrained model
    fit(bundle, chosen, 60)  # a model that learned the pairs gets them right token by token
    assert strict.forward(model, inputs).success.all()
    assert lenient.forward(model, inputs).success.all()


def test_features_are_six_taps_of_encoder_and_decoder(task, bundle):
    out = task.forward(bundle.model, task.collate(bundle, examples("de")[:3]), with_features=True)
    assert len(out.features) == 6
    assert all(f.shape == (3, 32) for f in out.features)
    assert task.lora_target_modules(bundle.model) == ["q_proj", "v_proj"]


def test_lang_pair_partition(task):
    prior = Split("prior_train", examples("fr") + examples("de"))
    data = TaskData(prior, prior, Split("new_train", []), Split("new_eval", []))
    bins = task.partitions(data)["lang_pair"]
    assert bins.tolist() == [1] * 12 + [0] * 12  # en-de before en-fr


def test_bundle_round_trip_keeps_weights_tokenizer_and_style(task, bundle, tmp_path):
    task.save_bundle(bundle, tmp_path)
    assert (tmp_path / "model" / "model.safetensors").exists()
    loaded = task.load_bundle(tmp_path)
    assert loaded.extras == {"lang_style": "tag"}
    assert loaded.processor.get_vocab() == bundle.processor.get_vocab()
    inputs = task.collate(bundle, examples("de")[:2])
    expected = task.forward(bundle.model.eval(), inputs).loss
    assert torch.allclose(task.forward(loaded.model.eval(), inputs).loss, expected, atol=1e-6)


def test_the_vocabulary_has_a_tag_per_language():
    vocab = tiny_bundle().processor.get_vocab()
    assert all(f">>{lang}<<" in vocab for lang in LANGUAGES)
