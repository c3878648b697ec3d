"""The CLIP image-classification family (the LDIFS protocol).

The prior capability is zero-shot classification on several image datasets: class-name
prompts through the text tower give one head per dataset (:mod:`.model`). The model is then
fine-tuned on one new dataset, starting from the new classes' zero-shot head, so
``new/before`` is zero-shot accuracy; the text tower and the logit scale stay frozen (as in
LDIFS and WiSE-FT, the image tower and the head train). Forgetting is the drop of zero-shot
accuracy on each prior dataset (``accuracy/<dataset>``) and on their mean (``accuracy``, the
main metric: every prior dataset weighs the same).

A dataset of this family is an :class:`~.images.ImageDataset` (class names, templates) plus
examples ``{"id", "dataset", "label", "image", "sha256"}`` whose images sit in the task's
:class:`~.images.ImageTable`. Subclasses implement ``load_datasets`` and ``build_prior``
(usually with :meth:`ZeroShotImageTask.zero_shot_model`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from forgetbench.api import (
    EvalResult,
    ForgetbenchError,
    ModelBundle,
    PerSample,
    Split,
    Task,
    TaskData,
    hash_dir,
    hash_json,
    module_stack,
)

from .images import ImageDataset, ImageTable
from .model import (
    ClipProcessor,
    ZeroShotClassifier,
    create_clip,
    encode_with_taps,
    lora_targets,
    register_model_config,
    zero_shot_heads,
)

if TYPE_CHECKING:
    from forgetbench.api import RunContext

BUNDLE_FORMAT = 1
TEXT_FOLDER = "text"  # an HF text tower's config and tokenizer inside a saved bundle


@dataclass
class LoadedDataset:
    """A dataset's prompts and its train and eval examples (images in the task's table)."""

    spec: ImageDataset
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]


class ZeroShotImageTask(Task):
    """Shared machinery of the CLIP family (see the module docstring)."""

    def __init__(self, config: Any = None):
        super().__init__(config)
        self.table = ImageTable()
        self.datasets: list[ImageDataset] = []

    # -- data --------------------------------------------------------------------------------

    def load_datasets(self, ctx: RunContext | None) -> tuple[list[LoadedDataset], LoadedDataset]:
        """The prior datasets and the new one, their images added to ``self.table``."""
        raise NotImplementedError

    def load_data(self, ctx: RunContext | None = None) -> TaskData:
        prior, new = self.load_datasets(ctx)
        names = [d.spec.name for d in (*prior, new)]
        if len(set(names)) != len(names):
            raise ForgetbenchError(f"{self.metadata.name}: a dataset appears twice ({names})")
        self.datasets = [d.spec for d in (*prior, new)]
        return TaskData(
            Split("prior_train", [e for d in prior for e in d.train]),
            Split("prior_eval", [e for d in prior for e in d.eval]),
            Split("new_train", new.train),
            Split("new_eval", new.eval),
            info={
                "prior_datasets": names[:-1],
                "new_dataset": names[-1],
                "classnames": {d.name: list(d.classnames) for d in self.datasets},
            },
        )

    @property
    def prior_datasets(self) -> list[ImageDataset]:
        return self.datasets[:-1]

    def head_key(self) -> list:
        """What the zero-shot heads are made of: each dataset's class names and templates."""
        return [[d.name, list(d.classnames), list(d.templates)] for d in self.datasets]

    def dataset_index(self, name: str) -> int:
        for index, dataset in enumerate(self.datasets):
            if dataset.name == name:
                return index
        raise ForgetbenchError(f"{self.metadata.name}: unknown dataset {name!r} (load_data first)")

    # -- the prior model ---------------------------------------------------------------------

    def zero_shot_model(
        self, clip: nn.Module, processor: ClipProcessor, model_cfg: dict[str, Any]
    ) -> ZeroShotClassifier:
        """``clip`` with the zero-shot heads of every dataset (heads mode)."""
        if not self.datasets:
            raise ForgetbenchError(f"{self.metadata.name}: load_data must run before the model")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        heads = zero_shot_heads(clip, processor.tokenizer, self.datasets, device)
        model = ZeroShotClassifier(clip, model_cfg, [len(d.classnames) for d in self.datasets])
        model.set_heads(torch.cat(heads[:-1]), heads[-1])
        return model

    def save_bundle(self, bundle: ModelBundle, directory: Path) -> None:
        """``clip.safetensors`` (the open_clip weights), ``model.json`` (its config and
        preprocessing), ``text/`` (an HF text tower's config and tokenizer) and ``bundle.json``."""
        clip, cfg = bundle.model.clip, json.loads(json.dumps(bundle.model.model_cfg))
        state = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
        save_file(state, str(directory / "clip.safetensors"))
        if "hf_model_name" in cfg["text_cfg"]:
            clip.text.config.save_pretrained(directory / TEXT_FOLDER)
            bundle.processor.tokenizer.save_pretrained(directory / TEXT_FOLDER)
            cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = TEXT_FOLDER
        meta = {"model_cfg": cfg, "preprocess_cfg": bundle.processor.preprocess_cfg}
        (directory / "model.json").write_text(json.dumps(meta, indent=1))
        marker = {"family": self.metadata.family, "task": self.metadata.name}
        (directory / "bundle.json").write_text(json.dumps({**marker, "format": BUNDLE_FORMAT}))

    def load_bundle(self, directory: Path) -> ModelBundle:
        """What :meth:`save_bundle` wrote (safetensors only), with this task's zero-shot heads."""
        marker = json.loads((directory / "bundle.json").read_text())
        if marker.get("family") != self.metadata.family:
            raise ForgetbenchError(
                f"{directory} holds a {marker.get('family')!r} model, not a CLIP-family one"
            )
        meta = json.loads((directory / "model.json").read_text())
        cfg = meta["model_cfg"]  # text paths made absolute: the model may be saved again
        if cfg["text_cfg"].get("hf_model_name") == TEXT_FOLDER:
            text = str((directory / TEXT_FOLDER).resolve())
            cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = text
        preprocess = {k: meta["preprocess_cfg"][k] for k in ("mean", "std", "interpolation")}
        clip, processor = create_clip(register_model_config(cfg), preprocess=preprocess)
        clip.load_state_dict(load_file(str(directory / "clip.safetensors")))
        model = self.zero_shot_model(clip, processor, cfg)
        identity = hash_json({"weights": hash_dir(directory), "heads": self.head_key()})
        return ModelBundle(model, processor, identity, f"prior-model:{directory}")

    def init_new_task(self, ctx: RunContext, bundle: ModelBundle, data: TaskData) -> nn.Module:
        """Freeze the text tower and the logit scale: the image tower and heads train. With the
        task config's ``freeze_bn``, BatchNorm keeps f0's running statistics while training."""
        for name, weight in bundle.model.named_parameters():
            weight.requires_grad_(name.startswith("clip.visual.") or name == "new_weights")
        bundle.model.frozen_norm_stats = bool(getattr(self.config, "freeze_bn", False))
        return bundle.model

    # -- one step ----------------------------------------------------------------------------

    def collate(
        self, bundle: ModelBundle, examples: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """``pixels`` (open_clip's evaluation transform), ``dataset`` and ``labels``."""
        transform = bundle.processor.transform
        pixels = [transform(self.table.pil(e["image"])) for e in examples]
        return {
            "pixels": torch.stack(pixels),
            "dataset": torch.tensor([self.dataset_index(e["dataset"]) for e in examples]),
            "labels": torch.tensor([int(e["label"]) for e in examples], dtype=torch.long),
        }

    def forward(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], with_features: bool = False
    ) -> PerSample:
        """Zero-shot logits against the heads of each sample's own dataset: cross-entropy
        loss, success = top-1 is the label, confidence = its softmax probability."""
        image, features = encode_with_taps(model, inputs["pixels"], with_features)
        image = F.normalize(image.float(), dim=-1)
        logits = model.logit_scale().float() * image @ model.class_weights().float().T
        dataset, labels = inputs["dataset"], inputs["labels"]
        allowed = model.class_dataset[None, :] == dataset[:, None]
        logits = logits.masked_fill(~allowed, torch.finfo(torch.float32).min)
        target = model.class_offset[dataset] + labels
        probability, prediction = logits.softmax(-1).max(-1)
        return PerSample(
            loss=F.cross_entropy(logits, target, reduction="none"),
            success=prediction == target,
            confidence=probability,
            features=features,
        )

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, ctx: RunContext, model: nn.Module, split: Split) -> EvalResult:
        """``accuracy/<dataset>`` (zero-shot top-1) per dataset of the split, ``accuracy``
        their unweighted mean, and the mean ``loss``."""
        results = ctx.predict(model, split)
        success = results.success.numpy().astype(bool)
        names = split.column("dataset")
        metrics = {
            f"accuracy/{d.name}": float(success[names == d.name].mean())
            for d in self.datasets
            if (names == d.name).any()
        }
        metrics["accuracy"] = float(np.mean(list(metrics.values())))
        metrics["loss"] = float(results.loss.mean())
        return EvalResult(metrics, success)

    # -- what methods read -------------------------------------------------------------------

    def partitions(self, data: TaskData) -> dict[str, np.ndarray]:
        """``dataset`` (the source dataset) and ``label`` (the class, over all datasets)."""
        examples = data.prior_train.examples
        index = np.asarray([self.dataset_index(e["dataset"]) for e in examples], dtype=np.int64)
        offsets = np.cumsum([0] + [len(d.classnames) for d in self.datasets])
        labels = np.asarray([e["label"] for e in examples], dtype=np.int64)
        return {"dataset": index, "label": offsets[index] + labels}

    def feature_taps(self) -> str:
        return (
            "the image tower's stem and evenly spaced blocks (4 taps: stem, L/3, 2L/3, L),"
            " spatially (CNN) or token (ViT) averaged"
        )

    def head_parameters(self, model: nn.Module) -> list[str]:
        """The new dataset's class weights: they train in fine-tuning, and under LoRA too."""
        return ["new_weights"]

    def lora_target_modules(self, model: nn.Module) -> list[str] | None:
        """The image tower's 1x1 convolutions and projection (EfficientNet) or its MLP
        linears (ViT), by full module name; None for other towers."""
        return lora_targets(model.clip.visual)

    def layer_stack(self, model: nn.Module) -> list[nn.Module]:
        """The image tower's blocks (ViT residual blocks, or an EfficientNet's stages), bottom
        first; the text tower, which only made the zero-shot heads, is not in it."""
        return module_stack(model.clip.visual, strict=True)
