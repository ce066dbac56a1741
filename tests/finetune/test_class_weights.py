"""Class weights: what they are, and that `fit` really uses them."""

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from kerastune_lab import testing
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune import class_weights, two_phase
from kerastune_lab.models import load_image_classifier

NAMES = ["NORMAL", "PNEUMONIA"]


def test_balanced_is_scikit_learns():
    labels = [0] * 30 + [1] * 90 + [2] * 5
    weights = class_weights.class_weights(labels, "balanced", ["a", "b", "c"])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.asarray(labels))
    assert list(weights) == [0, 1, 2]
    np.testing.assert_allclose([weights[c] for c in range(3)], expected)
    # Each class carries the same total weight.
    np.testing.assert_allclose([weights[c] * labels.count(c) for c in range(3)], 125 / 3)
    assert class_weights.by_name(weights, ["a", "b", "c"])["c"] == pytest.approx(125 / 15)


def test_none_and_explicit_mappings():
    labels = [0, 0, 1]
    assert class_weights.class_weights(labels, "none", NAMES) is None
    assert class_weights.by_name(None, NAMES) is None
    by_name = class_weights.class_weights(labels, {"PNEUMONIA": 1, "NORMAL": 3.0}, NAMES)
    assert by_name == {0: 3.0, 1: 1.0}
    assert class_weights.class_weights(labels, {0: 2.5, 1: 1.0}, NAMES) == {0: 2.5, 1: 1.0}


@pytest.mark.parametrize("setting, fragment", [
    ("balance", "expected 'balanced', 'none' or a mapping"),
    ({"NORMAL": 1.0}, "no weight for class(es) PNEUMONIA"),
    ({"NORMAL": 1.0, "COVID": 2.0}, "unknown class 'COVID'"),
    ({"NORMAL": 1.0, "PNEUMONIA": -1.0}, "expected a positive number"),
    ({"NORMAL": 1.0, "PNEUMONIA": "x"}, "expected a positive number"),
])
def test_bad_settings(setting, fragment):
    with pytest.raises(KerastuneError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        class_weights.class_weights([0, 1, 1], setting, NAMES)


def test_the_defaults_balanced_and_classes_from_the_labels():
    # setting defaults to "balanced"; without class_names the classes are
    # 0..max label, named by their index in messages (mutants found both
    # untested).
    labels = [0, 0, 0, 1, 2, 2]
    assert class_weights.class_weights(labels) == pytest.approx({0: 2 / 3, 1: 2.0, 2: 1.0})
    assert class_weights.class_weights(labels, "BALANCED ") == \
        class_weights.class_weights(labels, "balanced", ["a", "b", "c"])
    with pytest.raises(KerastuneError, match=r"no training example of class\(es\) 1$"):
        class_weights.class_weights([0, 2], "balanced")
    assert class_weights.class_weights([0, 1], {0: 1.5, 1: 2.0}) == {0: 1.5, 1: 2.0}
    with pytest.raises(KerastuneError, match=r"unknown class 2; classes: 0, 1$"):
        class_weights.class_weights([0, 1], {0: 1.0, 1: 1.0, 2: 1.0})
    with pytest.raises(KerastuneError, match=r"e\.g\. \{'0': 1\.0, \.\.\.\}"):
        class_weights.class_weights([0, 1], "inverse")


@pytest.mark.parametrize("key", [2, -1, True])
def test_an_index_key_must_be_a_class(key):
    setting = {0: 1.0, key: 1.0} if key is True else {0: 1.0, 1: 1.0, key: 1.0}
    with pytest.raises(KerastuneError, match=f"unknown class {key!r}"):
        class_weights.class_weights([0, 1], setting, NAMES)


@pytest.mark.parametrize("weight", [0, 0.0, False, None, float("nan")])
def test_a_weight_must_be_positive(weight):
    with pytest.raises(KerastuneError, match="expected a positive number"):
        class_weights.class_weights([0, 1], {"NORMAL": 1.0, "PNEUMONIA": weight}, NAMES)


def test_by_name_rounds_to_six_digits():
    assert class_weights.by_name({0: 1 / 3, 1: 2.0}, NAMES) == {"NORMAL": 0.333333,
                                                                "PNEUMONIA": 2.0}


def test_oversample_seed_defaults_to_0():
    labels = np.array([0] * 5 + [1] * 2)
    np.testing.assert_array_equal(class_weights.oversample(labels),
                                  class_weights.oversample(labels, seed=0))
    assert not np.array_equal(class_weights.oversample(labels),
                              class_weights.oversample(labels, seed=1))


def test_balanced_needs_every_class():
    with pytest.raises(KerastuneError, match="no training example of class.*PNEUMONIA"):
        class_weights.class_weights([0, 0], "balanced", NAMES)


def test_oversample_evens_the_classes_and_keeps_every_example():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 3)
    order = class_weights.oversample(labels, seed=3)
    assert np.bincount(labels[order]).tolist() == [7, 7, 7]
    assert set(order.tolist()) == set(range(12))  # nothing left out
    np.testing.assert_array_equal(order, class_weights.oversample(labels, seed=3))
    # Balanced weights on oversampled labels are all 1: the two do not stack.
    weights = class_weights.class_weights(labels[order], "balanced", ["a", "b", "c"])
    assert weights == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})


def _xrays(n_normal, n_pneumonia, seed):
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_normal + [1] * n_pneumonia, "int32")
    x = np.stack([testing.xray_image(bool(label), rng, size=32) for label in y])
    order = rng.permutation(len(y))
    return np.repeat(x[..., None], 3, axis=-1).astype("float32")[order], y[order]


def _minority_recall_and_balanced_accuracy(setting):
    import keras

    # 9:1, the minority class learnable but overlapping the majority.
    x, y = _xrays(135, 15, seed=0)
    x_test, y_test = _xrays(50, 50, seed=1)
    keras.utils.set_random_seed(0)
    model = load_image_classifier(testing.tiny_preset("resnet"), num_classes=2)
    weights = class_weights.class_weights(y, setting, NAMES)
    # The head on a frozen backbone, full batches: a convex, steady fit.
    two_phase.fine_tune(model, (x, y), None, head_epochs=20, head_learning_rate=0.1, epochs=0,
                        learning_rate=0.0, batch_size=len(y), verbose=0, class_weight=weights)
    predicted = model.predict(x_test, batch_size=100, verbose=0).argmax(axis=-1)
    recalls = [float(np.mean(predicted[y_test == c] == c)) for c in (0, 1)]
    return recalls[1], float(np.mean(recalls))


def test_balanced_weights_find_the_minority_class():
    recall_none, balanced_accuracy_none = _minority_recall_and_balanced_accuracy("none")
    recall_balanced, balanced_accuracy = _minority_recall_and_balanced_accuracy("balanced")
    assert recall_balanced >= recall_none + 0.4, (recall_none, recall_balanced)
    # ... by learning it, not by calling everything the minority class.
    assert balanced_accuracy >= 0.75 and balanced_accuracy > balanced_accuracy_none, (
        balanced_accuracy_none, balanced_accuracy)
