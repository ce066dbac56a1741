import logging
import os

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.data import images
from kerastune_lab.errors import KerastuneError


def test_folder_loader_skips_and_counts_bad_files(tmp_path, caplog):
    root = testing.make_image_folder(tmp_path / "pets", ("cat", "dog"), per_class=10, extras=True)
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        data = images.load_image_folder(root, image_size=24, batch_size=4, val_split=0.2, seed=1)
    assert data.skipped == {"not_image": 1, "unreadable": 1}
    assert "skipped 2 file(s)" in caplog.text and "1 not an image, 1 unreadable" in caplog.text
    assert data.class_names == ["cat", "dog"]
    assert (data.num_train, data.num_val) == (16, 4)
    labels, shapes = [], set()
    for x, y in data.train:
        shapes.add(tuple(x.shape[1:]))
        labels += y.numpy().tolist()
        assert x.dtype == "float32" and float(x.numpy().max()) <= 255.0
    assert shapes == {(24, 24, 3)}
    assert sorted(labels) == [0] * 8 + [1] * 8
    val_labels = np.concatenate([y.numpy() for _, y in data.val])
    assert sorted(val_labels.tolist()) == [0, 0, 1, 1]  # stratified


def test_grayscale_rgb_and_16_bit_load_to_the_same_shape(tmp_path):
    from PIL import Image

    root = tmp_path / "mixed"
    testing.make_image_folder(root / "a", ("x",), per_class=2, mode="L", ext=".png")
    testing.make_image_folder(root / "b", ("y",), per_class=2, mode="RGB")
    folder = root / "b" / "y"
    sixteen = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype("uint16")
    Image.fromarray(sixteen).save(folder / "deep.png")
    paths = sorted(str(p) for p in root.rglob("*.*"))
    batch = images.load_images(paths, 20)
    assert batch.shape == (5, 20, 20, 3)
    deep = batch[[i for i, p in enumerate(paths) if p.endswith("deep.png")][0]]
    # 16-bit values are scaled into 0-255, and gray stays gray in all 3 channels.
    assert 200 < deep.max() <= 255 and deep.min() < 10
    np.testing.assert_allclose(deep[..., 0], deep[..., 2])


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "holds no readable image"),
    (lambda p: testing.make_image_folder(p / "one", ("cat",), per_class=3), "one class only"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is not a folder"),
])
def test_folder_errors(tmp_path, make, fragment):
    with pytest.raises(KerastuneError, match=fragment):
        images.scan_image_folder(make(tmp_path))


def test_only_bad_files_is_an_error(tmp_path):
    for name in ("cat", "dog"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "broken.jpg").write_bytes(b"\x00" * 50)
    with pytest.raises(KerastuneError, match="holds no readable image"):
        images.scan_image_folder(tmp_path)


def test_stratified_split_keeps_every_class():
    labels = [0] * 90 + [1] * 10
    train, val = images.stratified_split(labels, 0.2, seed=0)
    assert sorted(train + val) == list(range(100))
    assert sum(labels[i] for i in val) == 2 and len(val) == 20


def test_tfds_path_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    from kerastune_lab import hub

    # mock_data stands in for download_and_prepare: there is no download
    # whose hosts must resolve (none resolves on an offline machine).
    monkeypatch.setattr(hub, "check_hosts_resolve", lambda *args, **kwargs: None)

    with tfds.testing.mock_data(num_examples=6):
        data = images.load_image_data("tfds:cats_vs_dogs", image_size=16, batch_size=4)
        batches = list(data.train)
    assert data.class_names == ["cat", "dog"]
    assert tuple(batches[0][0].shape[1:]) == (16, 16, 3)
    assert sum(len(y) for _, y in batches) == 6


def test_unknown_tfds_name():
    with pytest.raises(KerastuneError, match="unknown TFDS dataset 'cats_vs_dog'.*cats_vs_dogs"):
        images.load_image_data("tfds:cats_vs_dog", image_size=16, batch_size=4)
