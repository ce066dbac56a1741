"""The per-batch augmentation: seeded by its key, the geometry right (a zoom
or rotation near 0 gives the image back, or its mirror), on uint8 and float
input."""

import numpy as np
import pytest

from kerastune_lab.data.augment import Augmentation


def _images(n=16, size=20, dtype="uint8"):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3)).astype(dtype)


def _key(a, b):
    import tensorflow as tf

    return tf.constant([a, b], tf.int64)


def _each_is_itself_or_mirrored(out, images, axis=2, atol=0.5):
    same = np.abs(out - images).max(axis=(1, 2, 3)) <= atol
    mirrored = np.abs(out - np.flip(images, axis)).max(axis=(1, 2, 3)) <= atol
    assert np.all(same | mirrored), (same, mirrored)
    return same, mirrored


@pytest.mark.parametrize("augment", [
    Augmentation("horizontal", 0, 0), Augmentation("horizontal", 1e-7, 1e-7),
    Augmentation("horizontal", 0, 1e-7)], ids=["flip", "rotation", "zoom"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_near_zero_geometry_gives_the_image_or_its_mirror(augment, dtype):
    images = _images(dtype=dtype)
    out = augment(images, _key(1, 2)).numpy()
    assert out.dtype == np.float32 and out.shape == images.shape
    # uint8 resampled by the projective transform is rounded down: within 1.
    same, mirrored = _each_is_itself_or_mirrored(out, images.astype("float32"), atol=1.0)
    assert same.any() and mirrored.any()  # both drawn among 16


def test_vertical_flip():
    images = _images()
    out = Augmentation("vertical", 0, 0)(images, _key(3, 4)).numpy()
    same, mirrored = _each_is_itself_or_mirrored(out, images.astype("float32"), axis=1)
    assert same.any() and mirrored.any()


def test_same_key_same_batch_other_key_other_batch():
    images = _images()
    augment = Augmentation("horizontal", 0.1, 0.1, 0.2)
    a = augment(images, _key(7, 0)).numpy()
    np.testing.assert_array_equal(a, augment(images, _key(7, 0)).numpy())
    assert not np.allclose(a, augment(images, _key(7, 1)).numpy())
    assert 0 <= a.min() and a.max() <= 255


def test_zoom_in_magnifies_the_centre():
    # A bright centre square, zoomed in 0.5-0.6 times its size, fills more pixels.
    images = np.zeros((4, 40, 40, 3), "uint8")
    images[:, 15:25, 15:25] = 255
    out = Augmentation(None, 0, 0.45)(images, _key(0, 5)).numpy()
    # Zoom factors in 1 +- 0.45: smaller than 1 magnifies, larger shrinks.
    assert {int(np.sum(o[..., 0] > 128)) != 100 for o in out} == {True}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"flip": "diagonal"}, "flip='diagonal'"), ({"zoom": 1.0}, "zoom=1.0"),
    ({"rotation": -0.1}, "rotation=-0.1"), ({"contrast": 2}, "contrast=2")])
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Augmentation(**kwargs)
