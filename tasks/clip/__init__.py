"""Task family ``clip-image``: zero-shot image classification with open_clip (LDIFS protocol).

- ``clip-offline`` (offline): EfficientNet-Lite0 + MiniLM-L6 aligned in stage 0 on
  Fashion-MNIST, MNIST-5k and digits; fine-tuned on textile defect images.
- ``clip-eurosat`` (paper scale): open_clip ViT-B-32 (pretrained), zero-shot on CIFAR-10,
  CIFAR-100 and SVHN; fine-tuned on EuroSAT.

See docs/tasks_clip.md.
"""

from forgetbench.api import hookimpl

from .base import ZeroShotImageTask
from .eurosat import ClipEurosatTask
from .offline import ClipOfflineTask

__all__ = ["ClipEurosatTask", "ClipOfflineTask", "ZeroShotImageTask"]


@hookimpl
def forgetbench_register_tasks(register):
    register(ClipOfflineTask)
    register(ClipEurosatTask)
