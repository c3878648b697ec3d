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
    marian = bundle.model.model
    stack = task.layer_stack(bundle.model)
    assert stack == [*marian.encoder.layers, *marian.decoder.layers]  # encoder first
    assert len(marian.encoder.layers) > 0
    assert len(marian.decoder.layers) > 0


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


class LanguageCodeTokenizer:
    """M2M100's tokenizer interface (``src_lang`` / ``tgt_lang``, ``get_lang_id``, language
    token first) over a BPE vocabulary, since M2M100's own tokenizer needs sentencepiece files."""

    def __init__(self, fast):
        self.fast, self.src_lang, self.tgt_lang = fast, "en", "en"
        fast.add_special_tokens(
            {"additional_special_tokens": [f"__{x}__" for x in ["en", "de", "es"]]}
        )

    def get_lang_id(self, lang):
        return self.fast.convert_tokens_to_ids(f"__{lang}__")

    def __call__(self, texts=None, text_target=None, truncation=False):
        lang = self.src_lang if text_target is None else self.tgt_lang
        rows = self.fast(texts if text_target is None else text_target)["input_ids"]
        return {"input_ids": [[self.get_lang_id(lang), *row] for row in rows]}

    def batch_decode(self, ids, skip_special_tokens=False):
        return self.fast.batch_decode(ids, skip_special_tokens=skip_special_tokens)


def test_m2m_style_puts_language_tokens_first_and_forces_the_target_one(task):
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    from forgetbench.api import ModelBundle
    from forgetbench_tasks.translation.base import lang_style_of

    tokenizer = LanguageCodeTokenizer(tiny_bundle().processor)
    assert lang_style_of(tokenizer) == "m2m"
    fast = tokenizer.fast
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=len(fast), d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id, decoder_start_token_id=fast.eos_token_id,
        bos_token_id=fast.eos_token_id,
    )  # fmt: skip
    bundle = ModelBundle(
        M2M100ForConditionalGeneration(config).eval(), tokenizer, extras={"lang_style": "m2m"}
    )
    chosen = [examples("de")[0], examples("es")[1]]
    batch = task.collate(bundle, chosen)
    assert batch["input_ids"][:, 0].tolist() == [tokenizer.get_lang_id("en")] * 2
    assert batch["labels"][:, 0].tolist() == [tokenizer.get_lang_id(x) for x in ("de", "es")]
    assert (batch["decoder_input_ids"][:, 0] == fast.eos_token_id).all()

    class Context:  # what translate reads of a RunContext
        device = torch.device("cpu")

        def __init__(self):
            self.bundle = bundle

        def autocast(self):
            return torch.autocast("cpu", enabled=False)

    seen = []
    generate = bundle.model.generate

    def spy(**options):
        seen.append(options["forced_bos_token_id"])
        return generate(**options)

    bundle.model.generate = spy
    texts = task.translate(Context(), bundle.model, chosen)
    assert len(texts) == 2
    assert seen == [tokenizer.get_lang_id("de"), tokenizer.get_lang_id("es")]
