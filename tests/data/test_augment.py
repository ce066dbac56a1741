"""Augmentation inside the training model (`Augmented`): in training only,
seeded, in float32 under mixed precision, training the classifier itself,
which saves and loads without it. The per-batch augmentation of the input
pipeline (`Augmentation`): seeded by its key, the geometry right (a zoom or
rotation near 0 gives the image back, or its mirror), on uint8 and float
input."""

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.data import images
from kerastune_lab.data.augment import Augmentation, Augmented


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


# The augmentation inside the training model (`Augmented`, what the recipes use).

def _classifier():
    import keras_hub

    from kerastune_lab.models import from_preset

    return from_preset(keras_hub.models.ImageClassifier, testing.tiny_preset("resnet"),
                       num_classes=2)


def _numpy(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def _compile(trainer):
    import keras

    trainer.compile(keras.optimizers.Adam(1e-2),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def test_augmented_augments_in_training_and_not_at_inference():
    from kerastune_lab.finetune import two_phase

    model = _classifier()
    trainer = Augmented(model, images.augmentation_layers("horizontal", 0.1, 0.1, seed=1))
    x = _images(8, 32, "float32")
    expected = model.predict(x, verbose=0)  # the task's own preprocessor, in tf.data
    inference = _numpy(trainer(x, training=False))
    np.testing.assert_allclose(inference, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_numpy(trainer.predict(x, verbose=0)), expected, atol=1e-4)
    # uint8 batches (4 times less to copy to the device) give the same.
    np.testing.assert_allclose(_numpy(trainer(x.astype("uint8"), training=False)), expected,
                               rtol=1e-4, atol=1e-4)
    two_phase.set_backbone_trainable(trainer, False)  # BatchNorm statistics kept
    training = _numpy(trainer(x, training=True))
    assert np.abs(training - inference).max(axis=1).min() > 1e-4  # each image changed
    np.testing.assert_allclose(_numpy(trainer(x, training=False)), inference, atol=1e-5)


def _apply(layers, x):
    for layer in layers:
        x = layer(x, training=True)
    return _numpy(x)


def test_same_seed_same_augmentation_other_seed_other():
    x = _images(8, 32, "float32")
    a = _apply(images.augmentation_layers("horizontal", 0.1, 0.1, 0.2, seed=3), x)
    np.testing.assert_allclose(
        a, _apply(images.augmentation_layers("horizontal", 0.1, 0.1, 0.2, seed=3), x), atol=1e-4)
    assert not np.allclose(
        a, _apply(images.augmentation_layers("horizontal", 0.1, 0.1, 0.2, seed=4), x), atol=1)
    seeds = [layer.seed for layer in images.augmentation_layers("vertical", 0.1, 0.1, 0.1, 7)]
    assert len(set(seeds)) == 4  # one each: the flip and the angle are not drawn alike


def test_augmentation_layers_xray_contrast_keeps_gray_images_gray_and_in_range():
    layers = images.augmentation_layers(None, 0.03, 0.1, 0.1, seed=2)
    assert [type(layer).__name__ for layer in layers] == [
        "RandomRotation", "RandomZoom", "RandomContrast"]
    gray = np.repeat(_images(6, 32, "float32")[..., :1], 3, axis=-1)
    out = _apply(layers, gray)
    assert 0 <= out.min() and out.max() <= 255 and not np.allclose(out, gray, atol=1)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-3)
    assert {layer.compute_dtype for layer in layers} == {"float32"}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"flip": "diagonal"}, "flip='diagonal'"), ({"zoom": 1.0}, "zoom=1.0")])
def test_augmentation_layers_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        images.augmentation_layers(**kwargs)


def test_fit_trains_the_model_itself_which_saves_and_loads_without_augmentation(tmp_path):
    import json

    import keras_hub

    from kerastune_lab.finetune import two_phase
    from kerastune_lab.models import load_run_model
    from kerastune_lab.runs import RunDir

    model = _classifier()
    weights = len(model.weights)
    trainer = Augmented(model, images.augmentation_layers(seed=5))
    assert trainer.backbone is model.backbone
    x, y = _images(8, 32, "float32"), np.array([0, 1] * 4)
    before = model.predict(x, verbose=0)
    two_phase.fine_tune(trainer, (x, y), None, head_epochs=1, head_learning_rate=1e-2,
                        epochs=1, learning_rate=1e-3, batch_size=4, verbose=0)
    # Training the trainer trained the model; the model holds no augmentation.
    after = model.predict(x, verbose=0)
    assert not np.allclose(before, after, atol=1e-4)
    assert len(model.weights) == weights
    assert [v.path for v in trainer.trainable_weights] == \
        [v.path for v in model.trainable_weights]
    seeds = [v for v in trainer.non_trainable_variables if "seed_generator" in v.path]
    assert len(seeds) == 3  # flip, rotation, zoom: in a backup of the trainer
    assert not [v for v in model.variables if "seed_generator" in v.path]

    run = RunDir.create(str(tmp_path / "run"))
    run.save_model(model)
    config = "".join(p.read_text() for p in (tmp_path / "run" / "model").glob("*.json"))
    assert "Random" not in config and "Augmented" not in config
    loaded = load_run_model(run, keras_hub.models.ImageClassifier, compile=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), after, rtol=1e-4, atol=1e-4)
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())[
        "class_name"].endswith("Backbone")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _classifier()
        layers = images.augmentation_layers(seed=1)
        trainer = Augmented(model, layers)
        _compile(trainer)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert {layer.compute_dtype for layer in layers} == {"float32"}
    assert trainer.dtype_policy.name == policy
    scaled = isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16")  # float16: the loss is scaled
    if policy == "mixed_bfloat16":  # float16 convolutions need a GPU on some backends
        x, y = _images(4, 32, "float32"), np.array([0, 1] * 2)
        loss = trainer.train_on_batch(x, y)
        assert np.isfinite(loss)
