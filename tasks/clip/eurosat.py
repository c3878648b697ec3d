"""Paper-scale CLIP scenario ``clip-eurosat`` (the LDIFS protocol with a pretrained CLIP).

- Model: open_clip ``ViT-B-32`` with pretrained weights (``pretrained``: an open_clip tag such
  as ``openai``, downloaded once with ``--online``, or a local checkpoint file); no stage 0:
  the pretrained model with its zero-shot heads is the prior model.
- Prior capability: zero-shot classification of CIFAR-10, CIFAR-100 and SVHN (test splits for
  evaluation, train splits for rehearsal); new task: EuroSAT (RGB satellite images, 10 land-use
  classes), fine-tuned from its zero-shot head.
- Data: the hub through ``datasets`` (``--online`` once; sources in :data:`HUB_SOURCES`), or
  ``--set task.data_dir=DIR`` with ``DIR/<dataset>/{train,test}/<class>/<image>`` (the
  ImageFolder layout; the class folders' names, ``_`` read as a space, are the class names).
  Any dataset name works with local folders (generic prompt templates where none are known).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from forgetbench.api import (
    ForgetbenchError,
    ModelBundle,
    TaskData,
    TaskMetadata,
    check,
    hash_file,
    hash_json,
    subsample,
)

from .base import LoadedDataset, ZeroShotImageTask
from .images import ImageDataset, make_examples, read_image_folder
from .model import create_clip, register_model_config

if TYPE_CHECKING:
    from forgetbench.api import RunContext


@dataclass(frozen=True)
class HubSource:
    """Where ``datasets`` finds one image dataset, and its column names."""

    path: str
    name: str | None
    image: str
    label: str


HUB_SOURCES = {
    "eurosat": HubSource("timm/eurosat-rgb", None, "image", "label"),
    "cifar10": HubSource("uoft-cs/cifar10", None, "img", "label"),
    "cifar100": HubSource("uoft-cs/cifar100", None, "img", "fine_label"),
    "svhn": HubSource("ufldl-stanford/svhn", "cropped_digits", "image", "label"),
}
OBJECT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a low-resolution photo of the {}.",
    "a close-up photo of a {}.",
)
TEMPLATES = {
    "eurosat": (
        "a satellite photo of {}.",
        "an aerial view of {}.",
        "a centred satellite image of {}.",
    ),
    "cifar10": OBJECT_TEMPLATES,
    "cifar100": OBJECT_TEMPLATES,
    "svhn": ('a street photo of the house number "{}".', "a photo of the digit {}."),
}
# Readable names where a source's own label names are codes (EuroSAT's are CamelCase).
CLASSNAMES = {
    "eurosat": (
        "annual crop fields",
        "a forest",
        "herbaceous vegetation",
        "a highway",
        "an industrial area",
        "a pasture",
        "a permanent crop plantation",
        "a residential area",
        "a river",
        "a sea or a lake",
    ),
}
HELP = (
    "clip-eurosat needs the hub once (--online; datasets "
    + ", ".join(s.path for s in HUB_SOURCES.values())
    + ") or --set task.data_dir=DIR holding DIR/<dataset>/{train,test}/<class>/<image>"
    " (ImageFolder layout) for the new dataset and each prior dataset"
)
WEIGHTS_HELP = (
    "pass --online once to download them, or --set task.pretrained=FILE (an open_clip"
    " checkpoint: .safetensors, or a state dict that torch.load(weights_only=True) reads)"
)


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def read_local(data_dir: str, dataset: str, split: str) -> tuple[list[str], list, list[int]]:
    """Class names, image paths and labels of ``data_dir/dataset/split`` (ImageFolder)."""
    root = Path(data_dir) / dataset / split
    if not root.is_dir():
        raise ForgetbenchError(f"missing {root}: {HELP}")
    classes, paths, labels = read_image_folder(root)
    return [name.replace("_", " ") for name in classes], paths, labels


def read_hub(dataset: str, split: str) -> tuple[list[str], list, list[int]]:
    """Class names (``_`` as a space, as in local folders and CLIP's prompts), encoded image
    bytes and labels of a hub dataset's split."""
    import datasets

    source = HUB_SOURCES.get(dataset)
    if source is None:
        raise ForgetbenchError(f"no hub source known for dataset {dataset!r}: {HELP}")
    try:
        rows = datasets.load_dataset(source.path, source.name, split=split)
    except Exception as error:  # offline: ConnectionError, DatasetNotFoundError, ...
        raise ForgetbenchError(
            f"{source.path} ({split}) is not available ({first_line(error)}); {HELP}"
        ) from None
    rows = rows.cast_column(source.image, datasets.Image(decode=False))
    images = [
        item["bytes"] if item["bytes"] is not None else Path(item["path"]).read_bytes()
        for item in rows[source.image]
    ]
    names = [name.replace("_", " ") for name in rows.features[source.label].names]
    return names, images, list(rows[source.label])  # "lawn_mower": "lawn mower", as read_local


@dataclass
class ClipEurosatConfig:
    """Model, data sources and sizes of the paper-scale CLIP scenario."""

    model: str = field(default="ViT-B-32", metadata={"help": "open_clip model name"})
    pretrained: str = field(
        default="openai", metadata={"help": "open_clip pretrained tag or checkpoint file"}
    )
    model_config: str | None = field(
        default=None, metadata={"help": "an open_clip model config (JSON file) to use instead"}
    )
    data_dir: str | None = field(default=None, metadata={"help": "local ImageFolder datasets"})
    new_dataset: str = field(default="eurosat", metadata={"help": "the fine-tuning dataset"})
    prior_datasets: tuple[str, ...] = field(
        default=("cifar10", "cifar100", "svhn"), metadata={"help": "zero-shot prior datasets"}
    )
    prior_train_per_dataset: int | None = field(
        default=5000, metadata={"help": "rehearsal pool per prior dataset"}
    )
    prior_eval_per_dataset: int | None = field(
        default=2000, metadata={"help": "zero-shot evaluation images per prior dataset"}
    )
    new_train_size: int | None = field(default=None, metadata={"help": "subsample train"})
    new_eval_size: int | None = field(default=None, metadata={"help": "subsample test"})

    def __post_init__(self):
        self.prior_datasets = tuple(self.prior_datasets)
        check(len(self.prior_datasets) >= 1, "prior_datasets needs at least one dataset")
        check(self.new_dataset not in self.prior_datasets, "new_dataset is also a prior dataset")
        for name in ("prior_train_per_dataset", "prior_eval_per_dataset", "new_train_size"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be >= 1")
        check(self.new_eval_size is None or self.new_eval_size >= 1, "new_eval_size >= 1")


class ClipEurosatTask(ZeroShotImageTask):
    """Paper scale: open_clip ViT-B-32 zero-shot on CIFAR-10/100 and SVHN, fine-tuned on EuroSAT."""

    metadata = TaskMetadata(
        name="clip-eurosat",
        family="clip-image",
        description="open_clip ViT-B-32 (pretrained): zero-shot CIFAR-10, CIFAR-100 and SVHN,"
        " fine-tuned on EuroSAT from its zero-shot head",
        reference="Mukhoti et al. 2023 (LDIFS); Wortsman et al. 2022 (WiSE-FT); Helber et"
        " al. 2019 (EuroSAT)",
        version="1",
        license="see each dataset's and checkpoint's licence",
    )
    Config = ClipEurosatConfig
    # Fine-tuning as in WiSE-FT's end-to-end recipe, scaled down (AdamW, lr 1e-5, batch 128).
    train_defaults: ClassVar[dict[str, Any]] = {
        "steps": 1000,
        "batch_size": 128,
        "lr": 1e-5,
        "weight_decay": 0.1,
        "eval_batch_size": 256,
    }

    def load_datasets(self, ctx: RunContext | None) -> tuple[list[LoadedDataset], LoadedDataset]:
        config = self.config
        prior = [
            self.dataset(name, config.prior_train_per_dataset, config.prior_eval_per_dataset)
            for name in config.prior_datasets
        ]
        new = self.dataset(config.new_dataset, config.new_train_size, config.new_eval_size)
        return prior, new

    def dataset(self, name: str, train_size: int | None, eval_size: int | None) -> LoadedDataset:
        """One dataset's train and test splits (local folders or the hub), subsampled."""
        data_dir = self.config.data_dir
        read = functools.partial(read_local, data_dir) if data_dir else read_hub
        splits = {}
        for split, size in (("train", train_size), ("test", eval_size)):
            classnames, images, labels = read(name, split)
            keep = subsample(list(range(len(labels))), size)
            splits[split] = make_examples(
                self.table,
                name,
                split,
                [images[i] for i in keep],
                [labels[i] for i in keep],
                positions=keep,
            )
            if split == "train":
                names = classnames
            elif classnames != names:
                raise ForgetbenchError(f"{name}: train and test have different classes")
        spec = ImageDataset(
            name, CLASSNAMES.get(name, tuple(names)), TEMPLATES.get(name, OBJECT_TEMPLATES[:2])
        )
        if len(spec.classnames) != len(names):
            raise ForgetbenchError(f"{name}: {len(names)} classes, expected {len(spec.classnames)}")
        return LoadedDataset(spec, splits["train"], splits["test"])

    def model_source(self) -> tuple[str, dict[str, Any]]:
        """The open_clip model name to create and its config."""
        import open_clip

        if self.config.model_config:
            path = Path(self.config.model_config)
            if not path.is_file():
                raise ForgetbenchError(f"task.model_config: no such file {path}")
            cfg = json.loads(path.read_text())
            return register_model_config(cfg), cfg
        cfg = open_clip.get_model_config(self.config.model)
        if cfg is None:
            raise ForgetbenchError(f"open_clip has no model {self.config.model!r}")
        return self.config.model, cfg

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        """The pretrained open_clip model with the zero-shot heads of every dataset."""
        name, cfg = self.model_source()
        pretrained = self.config.pretrained or None
        try:
            clip, processor = create_clip(name, pretrained=pretrained)
        except (RuntimeError, OSError, ValueError) as error:
            raise ForgetbenchError(
                f"open_clip {name} weights {pretrained!r} are not available"
                f" ({first_line(error)}): {WEIGHTS_HELP}"
            ) from None
        model = self.zero_shot_model(clip, processor, cfg)
        local = pretrained is not None and Path(pretrained).is_file()
        weights = hash_file(Path(pretrained)) if local else pretrained
        identity = hash_json({"model": cfg, "weights": weights, "heads": self.head_key()})
        return ModelBundle(model, processor, identity, f"open_clip:{name}:{pretrained}")
