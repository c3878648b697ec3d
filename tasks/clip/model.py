"""open_clip models as zero-shot classifiers, their feature taps and LoRA targets.

:class:`ZeroShotClassifier` wraps an open_clip model (``clip``) with one zero-shot head per
dataset of the scenario: the mean normalised text embedding of each class's prompts. It has
two modes:

- **aligning** (stage 0 of an offline scenario): the heads are recomputed from the text tower
  at every step, so the contrastive image-to-prompt loss trains both towers. The text
  transformer is locked (its pooled outputs for the prompts are computed once and kept as a
  buffer); the text projection, the logit scale and the whole image tower train.
- **heads** (fine-tuning): the prior datasets' heads are fixed buffers (zero-shot
  classification through the unchanged text tower) and the new dataset's head is a parameter
  initialised with its zero-shot weights, so ``new/before`` is zero-shot accuracy. The new
  head belongs to the prior model f0 (it is its zero-shot classifier), so WiSE-FT interpolates
  it and L2-SP anchors it to its zero-shot value.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from forgetbench.api import ForgetbenchError, hash_json, tap_layers

from .images import ImageDataset

TEXT_BATCH = 256
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp of the learned temperature
_CONFIG_FOLDER: Path | None = None


@dataclass(frozen=True)
class ClipProcessor:
    """What ``collate`` and the zero-shot heads need: open_clip's evaluation image transform,
    its tokenizer and the preprocessing config (mean, std, size, interpolation)."""

    transform: Any
    tokenizer: Any
    preprocess_cfg: dict[str, Any]


def register_model_config(model_cfg: dict[str, Any]) -> str:
    """Register an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``) with
    ``open_clip.add_model_config``; returns its name (derived from the config's content)."""
    import open_clip

    global _CONFIG_FOLDER
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in model_cfg]
    if missing:
        raise ForgetbenchError(f"an open_clip model config needs {', '.join(missing)}")
    name = f"forgetbench-{hash_json(model_cfg)[:16]}"
    if name not in open_clip.list_models():
        if _CONFIG_FOLDER is None:
            _CONFIG_FOLDER = Path(tempfile.mkdtemp(prefix="forgetbench-open-clip-"))
        path = _CONFIG_FOLDER / f"{name}.json"
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
    return name


def create_clip(
    name: str,
    pretrained: str | None = None,
    pretrained_text: bool = False,
    preprocess: dict[str, Any] | None = None,
) -> tuple[nn.Module, ClipProcessor]:
    """An open_clip model by config name, with its evaluation transform and tokenizer.

    ``pretrained``: an open_clip tag or a local checkpoint file; ``pretrained_text``: load an HF
    text tower's own weights; ``preprocess``: overrides of mean/std/interpolation.
    """
    import open_clip

    preprocess = preprocess or {}
    # open_clip logs "initialized partially/randomly" whenever no full checkpoint is loaded at
    # creation; ours are loaded right after (tower weights, a saved bundle), so it misleads.
    logging.disable(logging.WARNING)
    try:
        clip, _, transform = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained,
            pretrained_text=pretrained_text,
            image_mean=preprocess.get("mean"),
            image_std=preprocess.get("std"),
            image_interpolation=preprocess.get("interpolation"),
        )
    finally:
        logging.disable(logging.NOTSET)
    tokenizer = open_clip.get_tokenizer(name)
    return clip, ClipProcessor(transform, tokenizer, dict(clip.visual.preprocess_cfg))


# -- the zero-shot classifier ------------------------------------------------------------------


class ZeroShotClassifier(nn.Module):
    """An open_clip model and the zero-shot heads of ``class_counts[d]`` classes per dataset d
    (see the module docstring). Class ``c`` of dataset ``d`` is column
    ``class_offset[d] + c`` of the logits; a sample's logits are restricted to its dataset."""

    def __init__(self, clip: nn.Module, model_cfg: dict[str, Any], class_counts: Sequence[int]):
        super().__init__()
        self.clip = clip
        self.model_cfg = model_cfg
        self.class_counts = [int(n) for n in class_counts]
        counts = torch.tensor(self.class_counts)
        dataset_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
        self.register_buffer("class_dataset", dataset_of, persistent=False)
        self.register_buffer("class_offset", counts.cumsum(0) - counts, persistent=False)
        self.aligning = False
        self.frozen_norm_stats = False

    def train(self, mode: bool = True) -> ZeroShotClassifier:
        """As :meth:`nn.Module.train`; with ``frozen_norm_stats`` the BatchNorm layers stay in
        eval mode: they normalise with f0's running statistics and never update them (their
        affine weights still train)."""
        super().train(mode)
        if mode and self.frozen_norm_stats:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def align_with_prompts(self, pooled: torch.Tensor, prompt_class: torch.Tensor) -> None:
        """Aligning mode: ``pooled`` [P, W] locked text features of the prompts (before the
        text projection), ``prompt_class`` [P] the (global) class of each prompt."""
        self.register_buffer("prompt_pooled", pooled, persistent=False)
        self.register_buffer("prompt_class", prompt_class, persistent=False)
        self.aligning = True

    def set_heads(self, prior: torch.Tensor, new: torch.Tensor) -> None:
        """Heads mode: fixed prior heads [C_prior, D] and the trainable new head [C_new, D]."""
        self.register_buffer("prior_weights", prior.clone())
        self.new_weights = nn.Parameter(new.clone())
        self.aligning = False

    def class_weights(self) -> torch.Tensor:
        """[C, D] the zero-shot head of every class of every dataset."""
        if not self.aligning:
            return torch.cat([self.prior_weights, self.new_weights])
        text = F.normalize(self.clip.text.proj(self.prompt_pooled), dim=-1)
        total = text.new_zeros(len(self.class_dataset), text.shape[1])
        # the normalised sum is the normalised mean over each class's templates
        return F.normalize(total.index_add(0, self.prompt_class, text), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)


def zero_shot_heads(
    clip: nn.Module, tokenizer, datasets: Sequence[ImageDataset], device: torch.device
) -> list[torch.Tensor]:
    """Each dataset's zero-shot head [C_d, D] (on the CPU): per class, the normalised mean of
    the normalised text embeddings of its prompts, computed in eval mode."""
    was_training = clip.training
    clip.eval().to(device)
    heads = []
    try:
        with torch.no_grad():
            for dataset in datasets:
                prompts = [prompt for _, prompt in dataset.prompts()]
                tokens = tokenizer(prompts)
                embedded = torch.cat(
                    [
                        clip.encode_text(tokens[i : i + TEXT_BATCH].to(device)).float()
                        for i in range(0, len(prompts), TEXT_BATCH)
                    ]
                )
                embedded = F.normalize(embedded, dim=-1)
                per_class = embedded.view(len(dataset.classnames), len(dataset.templates), -1)
                heads.append(F.normalize(per_class.mean(1), dim=-1).cpu())
    finally:
        clip.cpu().train(was_training)
    return heads


def pooled_prompts(
    clip: nn.Module, tokenizer, datasets: Sequence[ImageDataset]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The locked text features [P, W] (before the projection) of every prompt of
    ``datasets`` and each prompt's global class [P], for aligning mode (HF text towers)."""
    text = getattr(clip, "text", None)
    if text is None or not hasattr(text, "proj"):
        raise ForgetbenchError(
            "stage-0 alignment needs an open_clip model with a Hugging Face text tower"
            " (text_cfg.hf_model_name)"
        )
    prompts, classes, offset = [], [], 0
    for dataset in datasets:
        for label, prompt in dataset.prompts():
            prompts.append(prompt)
            classes.append(offset + label)
        offset += len(dataset.classnames)
    projection, text.proj = text.proj, nn.Identity()
    was_training = text.training
    text.eval()
    try:
        with torch.no_grad():
            tokens = tokenizer(prompts)
            batches = [tokens[i : i + TEXT_BATCH] for i in range(0, len(prompts), TEXT_BATCH)]
            pooled = torch.cat([text(batch).float() for batch in batches])
    finally:
        text.proj = projection
        text.train(was_training)
    return pooled, torch.tensor(classes, dtype=torch.long)


# -- what methods read -------------------------------------------------------------------------


def image_tap_modules(visual: nn.Module) -> list[nn.Module]:
    """The image tower's LDIFS taps: the stem and evenly spaced blocks (``tap_layers``: 4
    taps, the stem, blocks L/3 and 2L/3 and the last block). timm CNNs with ``bn1`` and
    ``blocks`` (EfficientNet family) and open_clip's VisionTransformer are known."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "bn1"):
        stem, blocks = trunk.bn1, list(trunk.blocks)
    elif hasattr(visual, "transformer") and hasattr(visual, "ln_pre"):
        stem, blocks = visual.ln_pre, list(visual.transformer.resblocks)
    else:
        raise ForgetbenchError(
            f"no feature taps known for the image tower {type(visual).__name__}"
            " (known: timm EfficientNet-style trunks, open_clip VisionTransformer)"
        )
    return [stem if i == 0 else blocks[i - 1] for i in tap_layers(len(blocks))]


def pool_tap(output: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] feature maps -> spatial mean [B, C]; [B, N, D] tokens -> token mean."""
    return output.mean(dim=(2, 3)) if output.dim() == 4 else output.mean(dim=1)


def encode_with_taps(
    model: nn.Module, pixels: torch.Tensor, with_features: bool
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """Image embeddings [B, D] and, with ``with_features``, the pooled taps (forward hooks)."""
    if not with_features:
        return model.clip.encode_image(pixels), None
    features: list[torch.Tensor] = []
    handles = [
        module.register_forward_hook(lambda _m, _i, output: features.append(pool_tap(output)))
        for module in image_tap_modules(model.clip.visual)
    ]
    try:
        image = model.clip.encode_image(pixels)
    finally:
        for handle in handles:
            handle.remove()
    return image, features


# Leaf module names LoRA adapts in each known image tower: the 1x1 convolutions of
# EfficientNet's blocks and head plus the projection (timm), the MLP of every transformer
# block (open_clip ViT, whose attention is one nn.MultiheadAttention: its out_proj is not
# called as a module, so an adapter there would never run).
LORA_LEAVES = {
    "timm": ("conv_pw", "conv_pwl", "conv_head", "proj"),
    "vit": ("c_fc", "c_proj"),
}


def lora_targets(visual: nn.Module, prefix: str = "clip.visual.") -> list[str] | None:
    """Full names of the image tower's modules LoRA adapts (None for unknown towers)."""
    kind = "timm" if hasattr(visual, "trunk") else "vit" if hasattr(visual, "ln_pre") else None
    if kind is None:
        return None
    leaves = LORA_LEAVES[kind]
    names = [
        prefix + name
        for name, module in visual.named_modules()
        if name.rsplit(".", 1)[-1] in leaves and isinstance(module, nn.Linear | nn.Conv2d)
    ]
    return names or None
