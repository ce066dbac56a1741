"""The batched torch `affine_transform` (`data/torch_affine.py`) gives Keras'
own torch `affine_transform`'s values, for each fill mode and interpolation,
on a batch of images with a different rotation and zoom each; `Augmented`
uses it on torch, with the same augmentation as Keras' own, and puts Keras'
own back afterwards. Torch-only code: skipped on the other backends."""

import keras
import numpy as np
import pytest

from kerastune_lab.data import images, torch_affine
from kerastune_lab.data.augment import Augmented

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch",
                                reason="torch-only code: replaces Keras' torch affine_transform")


def _batch(dtype, n=6, height=19, width=27, seed=0):
    """Random images (not square: a swapped axis shows) and rotation + zoom
    transforms (plus a shift, so some samples fall outside), one per image."""
    import torch

    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0, 255, (n, height, width, 3))
    angle, zoom = rng.uniform(-1.0, 1.0, n), rng.uniform(0.7, 1.3, n)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a0, a1 = np.cos(angle) * zoom, -np.sin(angle) * zoom
    b0, b1 = np.sin(angle) * zoom, np.cos(angle) * zoom
    a2 = cx - a0 * cx - a1 * cy + rng.uniform(-4, 4, n)
    b2 = cy - b0 * cx - b1 * cy + rng.uniform(-4, 4, n)
    zeros = np.zeros(n)
    transform = np.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], 1)
    return (torch.tensor(pixels).to(getattr(torch, dtype)),
            torch.tensor(transform, dtype=torch.float32))


def _keras_own(*args, **kwargs):
    from keras.src.backend.torch import image

    assert image.affine_transform is not torch_affine.affine_transform
    return image.affine_transform(*args, **kwargs)


@pytest.mark.parametrize("fill_mode", ["reflect", "constant", "nearest", "wrap", "mirror"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_equals_keras_own_affine_transform(fill_mode, interpolation, dtype):
    x, transform = _batch(dtype)
    # Keras' own writes into the transform it is given: a copy each.
    expected = _keras_own(x, transform.clone(), interpolation, fill_mode, fill_value=9.0)
    got = torch_affine.affine_transform(x, transform.clone(), interpolation, fill_mode,
                                        fill_value=9.0)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got.float().numpy(), expected.float().numpy(), atol=1e-4)
    assert not np.allclose(got.float().numpy(), x.float().numpy(), atol=1)  # it moved


def test_one_image_and_channels_first_as_keras():
    x, transform = _batch("float32", n=1)
    expected = _keras_own(x[0], transform[0].clone(), fill_mode="reflect")
    got = torch_affine.affine_transform(x[0], transform[0].clone(), fill_mode="reflect")
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)
    first = x.permute(0, 3, 1, 2)
    got = torch_affine.affine_transform(first, transform.clone(), fill_mode="wrap",
                                        data_format="channels_first")
    expected = _keras_own(first, transform.clone(), fill_mode="wrap",
                          data_format="channels_first")
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_bad_arguments():
    x, transform = _batch("float32", n=1)
    with pytest.raises(ValueError, match="fill_mode='edge'"):
        torch_affine.affine_transform(x, transform, fill_mode="edge")
    with pytest.raises(ValueError, match="interpolation='bicubic'"):
        torch_affine.affine_transform(x, transform, interpolation="bicubic")


def _identity_model():
    inputs = keras.Input((32, 32, 3))
    return keras.Model(inputs, keras.layers.Identity()(inputs))


def test_augmented_uses_it_with_keras_augmentation_and_restores_keras_own(monkeypatch):
    from keras.src.backend.torch import image

    keras_own = image.affine_transform
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("fill_mode"))
        return torch_affine.affine_transform.__wrapped__(*args, **kwargs)

    counted.__wrapped__ = torch_affine.affine_transform
    monkeypatch.setattr(torch_affine, "affine_transform", counted)
    x = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    trainer = Augmented(_identity_model(), images.augmentation_layers(
        "horizontal", 0.1, 0.1, seed=3))
    out = keras.ops.convert_to_numpy(trainer(x, training=True))
    assert calls == ["reflect", "reflect"]  # RandomRotation, RandomZoom
    assert image.affine_transform is keras_own
    # The same seeds through Keras' own layers alone: the same images.
    expected = x
    for layer in images.augmentation_layers("horizontal", 0.1, 0.1, seed=3):
        expected = layer(expected, training=True)
    expected = keras.ops.convert_to_numpy(expected)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert np.abs(out - x).max(axis=(1, 2, 3)).min() > 1  # each image changed
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trainer(x, training=False)), x)
