"""The train/val/test tree loader, on the generated chest_xray layout."""

import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from kerastune_lab import testing
from kerastune_lab.data import xray
from kerastune_lab.errors import KerastuneError

COUNTS = {"train": (6, 14), "val": (1, 1), "test": (3, 5)}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return testing.make_chest_xray(tmp_path_factory.mktemp("data") / "chest_xray", COUNTS,
                                   size=24)


def _labels(dataset):
    return np.concatenate([y.numpy() for _, y in dataset]).tolist()


def test_generated_tree_mixes_grayscale_rgb_and_16_bit(tree):
    modes = {}
    for path in sorted((tree / "train").rglob("*.*")):
        with Image.open(path) as image:
            modes.setdefault((path.suffix, image.mode), 0)
            modes[(path.suffix, image.mode)] += 1
    # 8-bit gray and RGB JPEG; 16-bit gray PNG; 16-bit RGB PNG (read as RGB by Pillow).
    assert set(modes) == {(".jpeg", "L"), (".jpeg", "RGB"), (".png", "I;16"), (".png", "RGB")}
    with open(sorted((tree / "train" / "NORMAL").glob("*.png"))[1], "rb") as f:
        assert f.read(26)[24] == 16  # IHDR bit depth of the RGB PNG


def test_grayscale_rgb_and_16_bit_files_load_to_the_same_shape(tree):
    data = xray.load_split_tree(tree, image_size=20, batch_size=64, min_val_images=2)
    batch, labels = next(iter(data.test))
    assert tuple(batch.shape) == (8, 20, 20, 3) and batch.dtype == "float32"
    pixels = batch.numpy()
    # Every kind decodes to gray on 3 equal channels, in the 0-255 range, with
    # the same brightness as its 8-bit version would have.
    np.testing.assert_allclose(pixels[..., 0], pixels[..., 2], atol=1e-3)
    assert 0 <= pixels.min() and 100 < pixels.max() <= 255
    means = pixels.mean(axis=(1, 2, 3))
    assert means.max() - means.min() < 60
    assert labels.numpy().tolist() == [0] * 3 + [1] * 5


def test_small_val_is_replaced_by_a_stratified_carve(tree, caplog):
    with caplog.at_level(logging.INFO, logger="kerastune_lab"):
        data = xray.load_split_tree(tree, image_size=16, batch_size=8, val_split=0.25, seed=1)
    assert data.validation["source"] == "train"
    assert "holds 2 image(s), fewer than min_val_images=100" in data.validation["reason"]
    assert "carved a stratified 0.25 of train" in caplog.text
    assert data.counts == {"train": {"NORMAL": 4, "PNEUMONIA": 10},
                           "val": {"NORMAL": 2, "PNEUMONIA": 4},
                           "test": {"NORMAL": 3, "PNEUMONIA": 5}}
    assert sorted(_labels(data.val)) == [0, 0, 1, 1, 1, 1]
    assert sorted(_labels(data.train)) == sorted(data.train_labels.tolist()) == [0] * 4 + [1] * 10


def test_a_big_enough_val_is_used(tree):
    data = xray.load_split_tree(tree, image_size=16, batch_size=8, min_val_images=2)
    assert data.validation == {"source": "val", "num_images": 2}
    assert sorted(_labels(data.val)) == [0, 1]
    assert data.num_train == 20


def test_oversampling_evens_the_training_classes(tree):
    data = xray.load_split_tree(tree, image_size=16, batch_size=8, min_val_images=2,
                                oversample=True)
    assert np.bincount(data.train_labels).tolist() == [14, 14]
    assert sorted(_labels(data.train)) == [0] * 14 + [1] * 14
    assert data.counts["train"] == {"NORMAL": 6, "PNEUMONIA": 14}  # files, not repeats


def _copy(tree, tmp_path):
    return shutil.copytree(tree, tmp_path / "copy")


@pytest.mark.parametrize("change, fragment", [
    (lambda r: shutil.rmtree(r / "test" / "NORMAL"), "split 'test'"),
    (lambda r: shutil.rmtree(r / "train" / "PNEUMONIA"), "has no PNEUMONIA subfolder"),
    (lambda r: os.rename(r / "val" / "NORMAL", r / "val" / "normal"), "has no NORMAL subfolder"),
    (lambda r: os.makedirs(r / "test" / "COVID"), "split 'test' has classes"),
    (lambda r: shutil.rmtree(r / "test"), "has no 'test' folder"),
    (lambda r: [os.remove(p) for p in (r / "train" / "NORMAL").iterdir()],
     "NORMAL' holds no readable image: every class needs training images"),
    (lambda r: [p.write_bytes(b"\xff\xd8 broken") for p in (r / "test").rglob("*.*")],
     "holds no readable image"),
])
def test_bad_trees(tree, tmp_path, change, fragment):
    root = _copy(tree, tmp_path)
    change(root)
    with pytest.raises(KerastuneError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        xray.load_split_tree(root, image_size=16, batch_size=8)


def test_missing_val_folder_is_carved_from_train(tree, tmp_path):
    root = _copy(tree, tmp_path)
    shutil.rmtree(root / "val")
    data = xray.load_split_tree(root, image_size=16, batch_size=8)
    assert "has no 'val' folder" in data.validation["reason"]


def test_test_split_of_one_class_warns(tree, tmp_path, caplog):
    root = _copy(tree, tmp_path)
    for path in (root / "test" / "NORMAL").iterdir():
        os.remove(path)
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        data = xray.load_split_tree(root, image_size=16, batch_size=8)
    assert "holds no image of NORMAL" in caplog.text
    assert _labels(data.test) == [1] * 5
