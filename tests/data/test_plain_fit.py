"""`model.fit(data.train, validation_data=data.val, epochs=3)`, the call every
Keras tutorial makes, on what each image and text loader returns: it trains
3 epochs with validation and Keras never warns that the input ran out of
data (every dataset has a known number of batches). On the backend in
KERAS_BACKEND (CI runs all three)."""

import logging
import os
import warnings

import keras
import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.data import images, text, xray

SIZE = 16


def _image_model(num_classes=2):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _text_model(num_classes=2):
    import keras_hub

    model = keras_hub.models.TextClassifier.from_preset(
        testing.tiny_preset("distilbert"), num_classes=num_classes)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _fit_as_a_keras_user(model, data, caplog):
    """The exact call, with every warning and log line recorded."""
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        # Reset the filters inside the block: something imported earlier
        # (the recipes' runner once did) may have silenced the warning.
        warnings.simplefilter("always")
        history = model.fit(data.train, validation_data=data.val, epochs=3)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [s for s in said if "ran out of data" in s], said
    assert history.epoch == [0, 1, 2]
    assert len(history.history["val_loss"]) == 3
    assert np.all(np.isfinite(history.history["loss"]))
    return history


def _mock_tfds(monkeypatch):
    from kerastune_lab import hub

    # mock_data stands in for download_and_prepare: no host to resolve.
    monkeypatch.setattr(hub, "check_hosts_resolve", lambda *args, **kwargs: None)


def test_image_folder(tmp_path, caplog):
    root = testing.make_image_folder(tmp_path / "pets", per_class=10, size=24, extras=True)
    data = images.load_image_data(str(root), SIZE, batch_size=4, val_split=0.3, seed=1,
                                  augment=images.augmentation())
    # 14 training images in batches of 4, 6 validation images: both sizes known.
    assert int(data.train.cardinality()) == 4 and int(data.val.cardinality()) == 2
    _fit_as_a_keras_user(_image_model(), data, caplog)


def test_tfds_images(monkeypatch, caplog):
    import tensorflow_datasets as tfds

    _mock_tfds(monkeypatch)
    with tfds.testing.mock_data(num_examples=10):
        data = images.load_image_data("tfds:cats_vs_dogs", SIZE, batch_size=4,
                                      augment=images.augmentation())
        # mock_data gives each split 10 examples.
        assert (data.num_train, data.num_val) == (10, 10)
        assert int(data.train.cardinality()) == 3 and int(data.val.cardinality()) == 3
        _fit_as_a_keras_user(_image_model(), data, caplog)


def test_xray_tree(tmp_path, caplog):
    root = testing.make_chest_xray(tmp_path / "chest_xray",
                                   {"train": (6, 10), "val": (1, 1), "test": (2, 2)}, size=24)
    data = xray.load_split_tree(root, SIZE, batch_size=4, val_split=0.25,
                                augment=images.augmentation(None, 0.03, 0.1, 0.1))
    assert int(data.test.cardinality()) == 1
    _fit_as_a_keras_user(_image_model(), data, caplog)


def test_text_file_and_tfds(tmp_path, monkeypatch, caplog):
    import tensorflow_datasets as tfds

    model = _text_model()  # one model for both: compiled once
    path = testing.make_review_file(str(tmp_path / "reviews.csv"), n=40)
    data = text.load_text_data(path, text_column="review", label_column="sentiment",
                               batch_size=8, val_split=0.2)
    _fit_as_a_keras_user(model, data, caplog)
    _mock_tfds(monkeypatch)
    with tfds.testing.mock_data(num_examples=24):
        data = text.load_text_data("tfds:imdb_reviews", batch_size=8, val_split=0.25)
    _fit_as_a_keras_user(model, data, caplog)


def test_train_is_a_new_epoch_each_time_and_the_stream_stays_resumable(tmp_path):
    root = testing.make_image_folder(tmp_path / "pets", per_class=8, size=24)
    data = images.load_image_data(str(root), SIZE, batch_size=4, seed=3)

    def one_pass(ds):
        return np.concatenate([x.numpy().reshape(len(x), -1)[:, :8] for x, _ in ds])

    first, second = one_pass(data.train), one_pass(data.train)
    # Every training image once an epoch, in a new order each time.
    assert len(first) == data.num_train == 12
    assert sorted(map(tuple, first)) == sorted(map(tuple, second))
    assert not np.array_equal(first, second)
    # The resumable form: epoch e depends on (seed, e) only.
    stream = data.train_stream
    assert stream.steps_per_epoch == 3
    again = images.load_image_data(str(root), SIZE, batch_size=4, seed=3).train_stream
    for a, b in zip(stream.dataset(1, 1).take(4), again.dataset(1, 1).take(4)):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())


@pytest.mark.parametrize("augment", [(), "fast", "keras"])
def test_stream_batches_do_not_depend_on_the_cache(tmp_path, augment, monkeypatch):
    monkeypatch.setenv("KERASTUNE_CACHE", str(tmp_path / "cache"))
    root = testing.make_image_folder(tmp_path / "pets", per_class=6, size=30, extras=True)
    paths, labels, _, _ = images.scan_image_folder(root)
    layers = {"fast": images.augmentation(), "keras": images.augmentation_layers(seed=1),
              (): ()}[augment]

    def batches(cache, epochs=2):
        stream = images.train_stream(paths, labels, SIZE, 4, seed=5, augment=layers,
                                     cache=cache)
        out = [b[0].numpy() for b in stream.dataset(0).take(epochs * stream.steps_per_epoch)]
        return stream, out

    plain_stream, plain = batches("none")
    assert plain_stream.cache is None
    _, file_first = batches("file")
    file_stream, file_again = batches("file")  # a later run: the images are in the file
    assert file_stream.cache.where.endswith(".u8") and file_stream.cache.kept.all()
    assert len(list((tmp_path / "cache" / "images").glob("*.u8"))) == 1
    memory_stream, memory = batches("memory", epochs=1)  # epoch 0 fills the cache
    assert memory_stream.cache.where == "memory" and memory_stream.cache.kept.all()
    for path in paths:  # epoch 1 can only come from the cache now
        os.remove(path)
    memory += [b[0].numpy() for b in memory_stream.epoch(1)]
    for other in (memory, file_first, file_again):
        assert len(other) == len(plain) == 6
        for a, b in zip(plain, other):
            np.testing.assert_array_equal(a, b)
