"""The predict and stream cases that mutmut found untested (tests/README.md,
"Mutation testing"): kerastune_lab/predict.py and
kerastune_lab/data/stream.py, called in process on tiny inputs, each
checked against values computed here."""

import json
import logging
import os

import numpy as np
import pytest

from kerastune_lab import predict
from kerastune_lab.data.stream import EPOCH_STRIDE, Stream, _key_seed
from tests.conftest import raises_one_line


@pytest.mark.backend_independent
def test_decide_applies_the_threshold_to_its_positive_class_only():
    """Positive "b" wins at or above the threshold, else the best of the others."""
    probs = np.array([[0.5, 0.3, 0.2],    # b at the threshold: b
                      [0.1, 0.29, 0.61],  # b just below: c
                      [0.3, 0.6, 0.1],    # b the argmax
                      [0.2, 0.7, 0.1]])   # b above: b
    names = ["a", "b", "c"]
    threshold = {"positive_class": "b", "threshold": 0.3}
    assert predict.decide(probs, names, threshold).tolist() == [1, 2, 1, 1]
    # b, the argmax at 0.6, is below 0.65: the best of a and c.
    high = {"positive_class": "b", "threshold": 0.65}
    assert predict.decide(probs, names, high).tolist() == [0, 2, 0, 1]
    assert predict.decide(probs, names).tolist() == [0, 2, 1, 1]
    assert predict.decide(probs.tolist(), tuple(names), threshold).tolist() == [1, 2, 1, 1]


# --- predict.py: a run made here, its model replaced by `_ChannelModel` (logits:
# each channel's mean / 50), solid-colour PNGs at the run's size: exact probabilities.

SIZE = 8
NAMES = ["red", "green", "blue"]
COLOURS = {"red": [(200, 10, 10), (150, 120, 0)], "green": [(0, 220, 30)],
           "blue": [(20, 40, 250), (90, 0, 160)]}


def _logits(images):
    return np.asarray(images, "float64").mean(axis=(1, 2)) / 50.0


def _expected_probs(colours):
    """Softmax of the float32 logits of solid images of `colours`."""
    logits = (np.asarray(colours, "float64") / 50.0).astype("float32").astype("float64")
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class _ChannelModel:
    """Logits from pixels (float32, as a Keras model returns them)."""

    def __init__(self):
        self.calls, self.loaded = [], []

    def predict(self, images, batch_size=None, verbose="auto"):
        self.calls.append(("predict", len(images), batch_size, verbose))
        return _logits(images).astype("float32")

    def predict_on_batch(self, x):
        self.calls.append(("predict_on_batch", len(x)))
        return _logits(x).astype("float32")


@pytest.fixture
def fake_model(monkeypatch):
    """Replaces `models.load_run_model`; records what it was asked for."""
    from kerastune_lab import models

    model = _ChannelModel()

    def load_run_model(run, task_cls, **kwargs):
        model.loaded.append((run.path, task_cls, kwargs))
        return model

    monkeypatch.setattr(models, "load_run_model", load_run_model)
    return model


def _solid_png(path, colour):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), colour).save(path)
    return str(path)


def _make_run(path, names=NAMES, config=None, threshold=None, kind="image_classifier"):
    from kerastune_lab.runs import CONFIG, LABELS, THRESHOLD, RunDir

    run = RunDir.create(str(path), kind=kind)
    run.write_json(CONFIG, {"config": {"image_size": SIZE, **(config or {})}})
    if names is not None:
        run.write_json(LABELS, names)
    if threshold is not None:
        run.write_json(THRESHOLD, threshold)
    run.finish()
    return str(path)


def _make_data(root, classes=("red", "green", "blue")):
    """root/<class>/<n>.png: (paths, colours, classes), sorted as scanned."""
    paths, colours, classes_of = [], [], []
    for name in sorted(classes):
        for n, colour in enumerate(COLOURS[name]):
            paths.append(_solid_png(root / name / f"{n}.png", colour))
            colours.append(colour)
            classes_of.append(name)
    return paths, colours, classes_of


def _image_paths(tmp_path):  # the last two: P(green) 0.45 < P(red); green the argmax at 0.34
    colours = [(200, 10, 10), (0, 220, 30), (20, 40, 250), (125, 120, 10), (60, 61, 59)]
    return [_solid_png(tmp_path / "in" / f"{n}.png", c) for n, c in enumerate(colours)], colours


@pytest.fixture
def log_messages():
    """The "kerastune_lab" logger's messages (the CLI stops its propagation)."""
    logger, messages = logging.getLogger("kerastune_lab"), []
    handler, level = logging.Handler(logging.DEBUG), logger.level
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_predict_images_prints_labels_json_of_the_argmax_with_its_probability(
        tmp_path, fake_model, log_messages):
    import keras_hub

    run = _make_run(tmp_path / "run")
    paths, colours = _image_paths(tmp_path)
    probs = _expected_probs(colours)
    top = probs.argmax(-1)  # [0, 1, 2, 0, 1]
    out = predict.predict_images(run, paths, batch_size=3)
    assert [(p, label) for p, label, _ in out] == [(p, NAMES[i]) for p, i in zip(paths, top)]
    np.testing.assert_allclose([score for *_, score in out], probs[np.arange(5), top],
                               rtol=1e-13, atol=0)
    assert all(type(score) is float for *_, score in out)
    assert fake_model.calls == [("predict", 5, 3, 0)] and log_messages == []
    assert fake_model.loaded == [(run, keras_hub.models.ImageClassifier, {"compile": False})]
    # The label is labels.json's name at the argmax, whatever the order.
    (tmp_path / "run" / "labels.json").write_text(json.dumps(["blue", "red", "green"]))
    assert [label for _, label, _ in predict.predict_images(run, paths)] == [
        ["blue", "red", "green"][i] for i in top]
    assert fake_model.calls[-1] == ("predict", 5, 32, 0)


def test_predict_images_applies_the_runs_threshold(tmp_path, fake_model, log_messages):
    threshold = {"positive_class": "green", "threshold": 0.4, "target_recall": 0.9,
                 "chosen_on": "val", "val": {"recall": 0.95, "precision": 0.5}}
    run = _make_run(tmp_path / "run", threshold=threshold)
    paths, colours = _image_paths(tmp_path)
    probs = _expected_probs(colours)
    others = np.where(np.arange(3) == 1, -1.0, probs)
    chosen = np.where(probs[:, 1] >= 0.4, 1, others.argmax(-1))
    # Green though red is the argmax (0.45), red though green is (0.34).
    assert chosen.tolist() == [0, 1, 2, 1, 0] != probs.argmax(-1).tolist()
    out = predict.predict_images(run, paths)
    assert [label for _, label, _ in out] == [NAMES[i] for i in chosen]
    np.testing.assert_allclose([score for *_, score in out], probs[np.arange(5), chosen],
                               rtol=1e-13, atol=0)
    assert log_messages == [
        "decision threshold 0.4000 on P(green), from threshold.json (chosen on the val "
        "split for recall 0.9): green when its probability reaches it"]


@pytest.mark.parametrize("what", ["text run", "no labels"])
def test_open_image_run_refuses_a_run_that_is_not_image_classification(tmp_path, what):
    run = _make_run(tmp_path / "run", kind="text_classifier" if what == "text run" else
                    "image_classifier", names=None if what == "no labels" else NAMES)
    for call in (predict.open_image_run, lambda r: predict.predict_images(r, ["x.png"])):
        raises_one_line(lambda: call(run), repr(run), "is not an image-classification run")

    path = _make_run(tmp_path / "run2", names=["b", "a"], config={"image_size": 5})
    run, size, names = predict.open_image_run(path)
    assert (run.path, run.kind, size, names) == (path, "image_classifier", 5, ["b", "a"])
    (tmp_path / "run2" / "config.json").write_text('{"config": {}}')  # no image_size
    raises_one_line(lambda: predict.open_image_run(path), f"run dir {path!r}: config.json")


def test_predict_dataset_labels_from_the_data_probabilities_in_float64():
    colours = [(200, 10, 10), (0, 220, 30), (20, 40, 250)]
    images = np.stack([np.full((2, 2, 3), c, "float32") for c in colours])
    model = _ChannelModel()
    batches = [(images[:2], np.array([2, 0], "int32")), (images[2:], np.array([1], "int32"))]
    labels, probs = predict.predict_dataset(model, batches)
    assert labels.dtype == np.int64 and labels.tolist() == [2, 0, 1]
    assert probs.dtype == np.float64 and np.allclose(probs, _expected_probs(colours), 1e-13, 0)
    assert model.calls == [("predict_on_batch", 2), ("predict_on_batch", 1)]
    raises_one_line(lambda: predict.predict_dataset(_ChannelModel(), []),
                    "the dataset to predict on holds no readable example")

    class Fixed:  # logits of 1000 overflow exp() unless their maximum is taken off
        def predict_on_batch(self, x):
            return np.array([[1000.0, 999.0, 0.0], [-5.0, -5.0, -1005.0]], "float32")

    _, probs = predict.predict_dataset(Fixed(), [(np.zeros((2, 1)), np.array([0, 1]))])
    e = np.exp([0.0, -1.0]) / np.exp([0.0, -1.0]).sum()
    np.testing.assert_allclose(probs, [[e[0], e[1], 0.0],
                                       [0.5, 0.5, 0.0]], rtol=1e-13, atol=1e-300)


# --- evaluate_image_folder ------------------------------------------------

def _expected_summary(tmp_path, y_true, colours, **kwargs):
    """evaluate_classifier's summary, with the arguments expected of the evaluation."""
    from kerastune_lab.evaluate import evaluate_classifier
    from kerastune_lab.runs import RunDir

    where = RunDir.create(str(tmp_path / f"expected-{len(list(tmp_path.iterdir()))}"))
    summary = evaluate_classifier(where, y_true, _expected_probs(colours), NAMES,
                                  prefix="test", **kwargs)
    where.discard()
    return json.loads(json.dumps(summary))


def test_evaluate_image_folder_writes_what_the_run_scores_on_the_folder(
        tmp_path, fake_model):
    import datetime

    import keras_hub

    run = _make_run(tmp_path / "run")
    # Two of the run's three classes, listed blue then red: labels 2 and 0.
    paths, colours, _ = _make_data(tmp_path / "holdout", ("red", "blue"))
    out = predict.evaluate_image_folder(run, str(tmp_path / "holdout") + os.sep, batch_size=3)
    assert out.path == os.path.join(run, "eval-holdout") and out.finished
    assert fake_model.calls == [("predict_on_batch", 3), ("predict_on_batch", 1)]
    assert fake_model.loaded == [(run, keras_hub.models.ImageClassifier, {"compile": False})]
    data = str(tmp_path / "holdout")
    expected = _expected_summary(tmp_path, [2, 2, 0, 0], colours)
    assert out.read_json("metrics.json") == {**expected, "evaluation_data": data}
    evaluation = out.read_json("evaluation.json")
    when = datetime.datetime.fromisoformat(evaluation.pop("time"))
    assert when.utcoffset() == datetime.timedelta(0)
    assert evaluation == {"run": run, "data": data, "num_images": 4,
                          "skipped": {"not_image": 0, "unreadable": 0}}
    report = (tmp_path / "run" / "eval-holdout" / "report.md").read_text()
    assert f"Evaluation of run on {data}" in report
    assert f"model: {os.path.join(run, 'model')}" in report
    assert "4 images, skipped 0 unreadable or non-image files" in report
    assert not os.path.exists(os.path.join(run, "metrics.json"))  # the run's own: untouched


def test_evaluate_image_folder_applies_the_runs_threshold(tmp_path, fake_model):
    import pathlib

    from kerastune_lab.evaluate.classification import choose_threshold, saved_threshold

    # Chosen on other images than those evaluated: P(green) of (60, 61, 59).
    val = [(0, 220, 30), (60, 61, 59), (125, 120, 10), (200, 10, 10)]
    point = choose_threshold([1, 1, 0, 0], _expected_probs(val), NAMES, "green", 0.9)
    point = json.loads(json.dumps(point))
    run = _make_run(tmp_path / "run", threshold=point,
                    config={"positive_class": "green", "target_recall": 0.6})
    _, colours, classes = _make_data(tmp_path / "d")
    y = [NAMES.index(c) for c in classes]
    data = pathlib.Path(tmp_path / "d")

    def metrics(name, **kwargs):
        out = predict.evaluate_image_folder(run, data, name=name, **kwargs)
        return out.read_json("metrics.json")

    # The run's threshold, with its positive class and target recall.
    expected = _expected_summary(tmp_path, y, colours, positive_class="green",
                                 target_recall=0.9, threshold=saved_threshold(point))
    assert expected["test_threshold"] == point["threshold"] == _expected_probs(val)[1, 1]
    assert metrics("a") == {**expected, "evaluation_data": str(data)}
    assert metrics("a2", positive_class="green") == {**expected, "evaluation_data": str(data)}
    # Another positive class: no threshold of the run; the config's recall.
    expected = _expected_summary(tmp_path, y, colours, positive_class="red", target_recall=0.6)
    assert metrics("b", positive_class="red") == {**expected, "evaluation_data": str(data)}
    # A target recall of its own: chosen on this data, for the config's class.
    expected = _expected_summary(tmp_path, y, colours, positive_class="green",
                                 target_recall=0.7)
    assert metrics("c", target_recall=0.7) == {**expected, "evaluation_data": str(data)}


def test_evaluate_image_folder_without_threshold_takes_the_configs_settings(
        tmp_path, fake_model):
    _, colours, classes = _make_data(tmp_path / "d")
    y = [NAMES.index(c) for c in classes]
    for n, (config, kwargs) in enumerate([
            ({"positive_class": "red", "target_recall": 0.6}, {}),
            ({"positive_class": "", "target_recall": 0}, {}),
            ({}, {"positive_class": "blue", "target_recall": 0.5})]):
        run = _make_run(tmp_path / f"run{n}", config=config)
        out = predict.evaluate_image_folder(run, tmp_path / "d", **kwargs)
        expected = _expected_summary(
            tmp_path, y, colours,
            positive_class=kwargs.get("positive_class", config.get("positive_class") or None),
            target_recall=kwargs.get("target_recall", config.get("target_recall") or None))
        assert out.read_json("metrics.json") == {**expected,
                                                 "evaluation_data": str(tmp_path / "d")}


def test_evaluate_image_folder_names_and_overwrite(tmp_path, fake_model, monkeypatch):
    run = _make_run(tmp_path / "run")
    for n in range(33):  # batches of 32 and 1 by default
        _solid_png(tmp_path / "home" / "pics" / "red" / f"{n:02d}.png", (200, n, 10))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = predict.evaluate_image_folder(run, "~/pics")
    assert out.path == os.path.join(run, "eval-pics")
    assert fake_model.calls == [("predict_on_batch", 32), ("predict_on_batch", 1)]
    raises_one_line(lambda: predict.evaluate_image_folder(run, "~/pics"),
                    repr(out.path), "already holds an evaluation")
    first = out.read_json("evaluation.json")["time"]
    again = predict.evaluate_image_folder(run, "~/pics", overwrite=True).read_json(
        "evaluation.json")
    assert again["time"] != first and again["data"] == str(tmp_path / "home" / "pics")
    mine = predict.evaluate_image_folder(run, "~/pics", name="mine", batch_size=1)
    assert mine.path == os.path.join(run, "eval-mine")
    assert fake_model.calls[4:] == [("predict_on_batch", 1)] * 33
    for name in ("a" + os.sep + "b", ".hidden"):
        raises_one_line(lambda: predict.evaluate_image_folder(run, "~/pics", name=name),
                        repr(name), "expected a plain folder name")
    assert sorted(d for d in os.listdir(run) if d.startswith("eval-")) == [
        "eval-mine", "eval-pics"]


@pytest.mark.parametrize("batch_size", [0, -1, True, 2.0, "2", None])
def test_evaluate_image_folder_batch_size_must_be_a_count(batch_size):
    raises_one_line(lambda: predict.evaluate_image_folder("nowhere", "d", batch_size=batch_size),
                    f"batch_size={batch_size!r}", "expected a whole number, 1 or more")


def test_evaluate_image_folder_refuses_other_classes_and_leaves_nothing_when_it_fails(
        tmp_path, fake_model, monkeypatch):
    from kerastune_lab import evaluate

    run = _make_run(tmp_path / "run", names=["red", "blue"])
    _make_data(tmp_path / "d", ("red", "green"))
    raises_one_line(lambda: predict.evaluate_image_folder(run, tmp_path / "d"),
                    "['green', 'red']", "['red', 'blue']", "expected class subfolders")
    assert fake_model.loaded == []
    _make_data(tmp_path / "e", ("red",))
    monkeypatch.setattr(evaluate, "evaluate_classifier", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        predict.evaluate_image_folder(run, tmp_path / "e")
    assert [f for f in os.listdir(run) if f.startswith("eval-")] == []


# --- data/stream.py -------------------------------------------------------

def _examples(n=10):
    """(image, label) k: a uint8 1x2 image [k, 100 + k] (mirrored: [100 + k, k])."""
    import tensorflow as tf

    x = np.stack([np.arange(n), 100 + np.arange(n)], -1).reshape(n, 1, 2, 1).astype("uint8")
    return tf.data.Dataset.from_tensor_slices((x, np.arange(n, dtype="int32")))


def _labels(dataset):  # of each batch
    return [np.asarray(batch[1]).tolist() for batch in dataset]


def test_each_batch_is_augmented_with_the_key_of_seed_epoch_and_index():
    stream = Stream(_examples(), 10, 4, seed=7, augment=lambda images, key: key)
    batches = [[np.asarray(t).tolist() for t in b] for b in stream.dataset(2, 1).take(4)]
    assert [b[0] for b in batches] == [[7, 2 * EPOCH_STRIDE + 1], [7, 2 * EPOCH_STRIDE + 2],
                                       [7, 3 * EPOCH_STRIDE], [7, 3 * EPOCH_STRIDE + 1]]
    assert [len(b) for b in batches] == [2] * 4 and [len(b[1]) for b in batches] == [4, 2, 4, 4]


def test_uint8_images_come_out_float32_with_their_values_and_epoch_0_first():
    stream = Stream(_examples(), 10, 4, seed=1)
    batches = list(stream)
    assert [len(b) for b in batches] == [2] * 3
    for x, y in batches:
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x.reshape(-1, 2), np.stack([y, 100 + y], -1))
    assert _labels(batches) == _labels(stream.epoch(0)) != _labels(stream.epoch(1))
    # seed defaults to 0; a shuffle buffer of 1 keeps the examples' order.
    assert _labels(Stream(_examples(), 10, 4).epoch(0)) == _labels(
        Stream(_examples(), 10, 4, seed=0).epoch(0)) != _labels(stream.epoch(0))
    assert _labels(Stream(_examples(), 10, 4, seed=1, shuffle_buffer=1).epoch(0)) == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_augmentation_layers_given_as_any_iterable_flip_some_images():
    import keras

    def images(augment):
        stream = Stream(_examples(), 10, 4, seed=2, augment=augment)
        return [[np.asarray(b[0]).reshape(-1, 2).tolist() for b in stream.epoch(e)]
                for e in (0, 0, 3)]

    layers = [keras.layers.RandomFlip("horizontal", seed=1)]
    out = images(iter(layers))
    assert out == images(tuple(layers)) == images(layers) and out[0] == out[1]
    rows = [row for epoch in out for batch in epoch for row in batch]
    assert all(sorted(row) == [min(row), min(row) + 100] for row in rows)  # or its mirror
    assert 0 < sum(row[0] > row[1] for row in rows) < len(rows)


def test_key_seeds_are_a_function_of_the_key_the_layer_and_the_draw():
    import tensorflow as tf

    key = tf.constant([5, 3 * EPOCH_STRIDE + 2], tf.int64)
    for index in (0, 2):
        generator = _key_seed(key, index)
        assert [np.asarray(generator.next()).tolist() for _ in range(3)] == [
            [5 + 7919 * index, (3 * EPOCH_STRIDE + 2) * 64 + draw] for draw in (1, 2, 3)]


def test_as_dataset_is_the_epoch_drawn_from_the_seed_each_pass():
    import tensorflow as tf

    stream = Stream(_examples(), 10, 4, seed=3)  # a first draw over 2 ** 31
    dataset = stream.as_dataset()
    assert int(dataset.cardinality()) == 3
    draws = tf.data.Dataset.random(seed=3, rerandomize_each_iteration=True).take(1)
    passes = []
    for _ in range(2):
        epoch = EPOCH_STRIDE + int(next(iter(draws))) % 2 ** 31
        passes.append(_labels(dataset))
        assert passes[-1] == _labels(stream.epoch(epoch))
    assert passes[0] != passes[1]


def test_epoch_e_is_the_examples_shuffled_with_seed_times_stride_plus_e():
    import tensorflow as tf

    tf.random.set_seed(None)  # eager shuffles then use TensorFlow's default graph seed
    expected = [list(tf.data.Dataset.range(10).shuffle(
        10, seed=3 * EPOCH_STRIDE + e, reshuffle_each_iteration=False).as_numpy_iterator())
        for e in (0, 2)]
    stream = Stream(_examples(), 10, 4, seed=3)
    assert [sum(_labels(stream.epoch(e)), []) for e in (0, 2)] == expected


def test_under_a_distribution_every_batch_is_whole(monkeypatch):
    import keras

    stream = Stream(_examples(), 10, 4, seed=2)
    order = sum(_labels(stream.epoch(0)), [])
    monkeypatch.setattr(keras.distribution, "distribution", lambda: "a distribution")
    assert _labels(stream.epoch(0)) == [order[:4], order[4:8], order[8:] + order[:2]]
    assert [len(b) for b in _labels(stream.as_dataset())] == [4, 4, 4]


def test_evaluate_image_folder_of_the_root_folder_is_named_data(tmp_path, fake_model, monkeypatch):
    """The folder `/` has no name of its own: its evaluation is eval-data.
    (The scan of `/` is played by a small folder's.)"""
    from kerastune_lab.data import images

    run = _make_run(tmp_path / "run")
    _solid_png(tmp_path / "d" / "red" / "0.png", (200, 0, 10))
    scan, seen = images.scan_image_folder, []

    def scan_root(data, **kwargs):
        seen.append(data)
        return scan(str(tmp_path / "d"), **kwargs)

    monkeypatch.setattr(images, "scan_image_folder", scan_root)
    out = predict.evaluate_image_folder(run, os.sep)
    assert seen == [os.sep] and out.path == os.path.join(run, "eval-data")
    assert sorted(d for d in os.listdir(run) if d.startswith("eval-")) == ["eval-data"]
