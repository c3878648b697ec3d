"""Labelled image datasets for the CLIP family: images kept by key and hashed by their bytes.

An example is a small JSON-able dict ``{"id", "dataset", "label", "image", "sha256"}``:
``image`` is a key into an :class:`ImageTable` (the pixels stay out of the example, so
``Split.fingerprint`` stays cheap), ``sha256`` the digest of the image's bytes (an encoded
file's bytes, or a raw array's shape, dtype and buffer), so the split's fingerprint changes
whenever an image does.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from forgetbench.api import ForgetbenchError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageDataset:
    """One labelled image dataset as zero-shot classification reads it.

    ``classnames``: how the prompts name each class (label order); ``templates``: prompt
    templates, each with one ``{}`` for the class name. The zero-shot head of the dataset is the
    mean of the normalised text embeddings of its templates, per class.
    """

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def __post_init__(self):
        if not self.classnames:
            raise ForgetbenchError(f"image dataset {self.name!r} has no classes")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if not self.templates or bad:
            raise ForgetbenchError(
                f"image dataset {self.name!r}: every prompt template needs exactly one '{{}}'"
            )

    def prompts(self) -> list[tuple[int, str]]:
        """(label, prompt) for every class and template, class-major."""
        return [
            (label, template.format(name))
            for label, name in enumerate(self.classnames)
            for template in self.templates
        ]


def stable_id(key: str) -> int:
    """A 48-bit integer id derived from a string key (the same on every machine and run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:6], "big")


def image_digest(image: Any) -> str:
    """sha256 of an image's bytes: an encoded file (bytes or a path) or a raw array."""
    digest = hashlib.sha256()
    if isinstance(image, np.ndarray):
        digest.update(f"{image.dtype.str}{image.shape}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    elif isinstance(image, bytes):
        digest.update(image)
    else:
        digest.update(Path(image).read_bytes())
    return digest.hexdigest()


class ImageTable:
    """Images by key: uint8 arrays (H x W or H x W x 3), encoded files' bytes, or file paths
    (read when used). :meth:`pil` gives a PIL image for the model's transform."""

    def __init__(self):
        self.items: dict[str, Any] = {}

    def add(self, key: str, image: Any) -> str:
        """Store ``image`` under ``key``; returns the digest of its bytes."""
        self.items[key] = image
        return image_digest(image)

    def pil(self, key: str):
        from PIL import Image

        image = self.items[key]
        if isinstance(image, np.ndarray):
            return Image.fromarray(image)
        source = io.BytesIO(image) if isinstance(image, bytes) else image
        with Image.open(source) as opened:
            return opened.convert("RGB")


def make_examples(
    table: ImageTable,
    dataset: str,
    source: str,
    images: Sequence[Any],
    labels: Sequence[int],
    positions: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Examples for ``images`` of ``dataset``, keyed ``dataset/source/position`` (``source``:
    the file or split they come from; ``positions``: their places in it, default 0, 1, ...)."""
    positions = range(len(labels)) if positions is None else positions
    examples = []
    for position, image, label in zip(positions, images, labels, strict=True):
        key = f"{dataset}/{source}/{position}"
        examples.append(
            {
                "id": stable_id(key),
                "dataset": dataset,
                "label": int(label),
                "image": key,
                "sha256": table.add(key, image),
            }
        )
    return examples


def read_image_folder(root: Path) -> tuple[list[str], list[Path], list[int]]:
    """An ImageFolder tree ``root/<class>/<image>``: class names (sorted folder names), the
    image paths (sorted per class) and their labels."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise ForgetbenchError(
            f"no images under {root} (expected {root}/<class>/<image>.jpg|png, ImageFolder layout)"
        )
    return classes, paths, labels
