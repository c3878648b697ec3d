"""Tiny open_clip models and image datasets built in code, for the CLIP family's tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# A 2-layer ViT and a 1-layer text transformer (open_clip's own tokenizer, shipped with it).
TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Three small datasets whose classes differ by colour, orientation and brightness.
DATASETS = {
    "colours": ("red_square", "blue_square", "green_square"),
    "stripes": ("horizontal_stripes", "vertical_stripes"),
    "tiles": ("dark_tile", "bright_tile"),
}


def draw(dataset: str, label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One RGB uint8 image of ``label`` in ``dataset``, with noise so no two are equal."""
    image = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
    if dataset == "colours":
        image[8:24, 8:24, label] = 220
    elif dataset == "stripes":
        lines = image[::4] if label == 0 else image[:, ::4]
        lines[...] = 200
    else:
        image += np.uint8(150 * label)
    return image


def write_image_folders(root: Path, per_class: int = 6) -> Path:
    """``root/<dataset>/{train,test}/<class>/<n>.png`` for every tiny dataset."""
    rng = np.random.default_rng(0)
    for dataset, classes in DATASETS.items():
        for split in ("train", "test"):
            for label, name in enumerate(classes):
                folder = root / dataset / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for n in range(per_class):
                    Image.fromarray(draw(dataset, label, rng)).save(folder / f"{n}.png")
    return root


def write_tiny_checkpoint(folder: Path) -> tuple[Path, Path]:
    """The tiny ViT's config (JSON) and seeded random weights (safetensors): a stand-in for a
    pretrained open_clip checkpoint."""
    from safetensors.torch import save_file

    from forgetbench_tasks.clip.model import create_clip, register_model_config

    config = folder / "tiny-vit.json"
    config.write_text(json.dumps(TINY_VIT))
    torch.manual_seed(0)
    clip, _ = create_clip(register_model_config(TINY_VIT))
    weights = folder / "tiny-vit.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(weights))
    return config, weights


def tiny_settings(data_dir: Path, config: Path, weights: Path) -> dict[str, str]:
    """``--set`` values running clip-eurosat on the tiny folders and checkpoint."""
    return {
        "data_dir": str(data_dir),
        "model_config": str(config),
        "pretrained": str(weights),
        "prior_datasets": "colours,stripes",
        "new_dataset": "tiles",
    }
