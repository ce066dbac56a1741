"""A spy on what reaches Keras: every `keras.Model.fit` call of a process.

Tests of "what the model used" (issue 30) read this record instead of the
toolkit's own logs. It wraps `keras.Model.fit` (the class attribute, so every
subclass that does not override `fit` goes through it) and, for each call,
notes:

- `class_weight` as `fit` received it (keys as strings), and whether the
  training batches carry sample weights (a third element), with the
  per-class weights those imply;
- the label counts of one epoch of the training data (`steps_per_epoch`
  batches, or the dataset's own length), read before the fit;
- the first training batch's images (uint8-exact float values), to compare
  with the validation, test and predict paths;
- the optimizer's learning rate at `on_train_batch_begin` of every batch,
  read from `model.optimizer.learning_rate` (what the update will use).

In a fresh process (`run_cli_spied` in conftest) the record is written as
JSON lines (one per fit call) and the images as .npy files beside it.
In-process, `install()` returns the list the calls are appended to.
"""

import json
import os

import numpy as np


def _batches(x, count):
    """The first `count` batches of `x` (a tf.data.Dataset or an array)."""
    if hasattr(x, "take"):
        return list(x.take(count).as_numpy_iterator())
    return []


def _implied_class_weights(batches):
    """{label: weight} from (x, y, sample_weight) batches, or None."""
    weights = {}
    for batch in batches:
        if not (isinstance(batch, tuple) and len(batch) == 3):
            return None
        _, y, sw = batch
        for label, w in zip(np.asarray(y).reshape(-1), np.asarray(sw).reshape(-1)):
            weights.setdefault(str(int(label)), set()).add(round(float(w), 6))
    if any(len(v) != 1 for v in weights.values()):
        return {k: sorted(v) for k, v in weights.items()}
    return {k: v.pop() for k, v in weights.items()}


def install(record_path=None):
    """Wraps `keras.Model.fit`; returns the list each call's record joins."""
    import keras

    calls = []
    original = keras.Model.fit

    class LearningRates(keras.callbacks.Callback):
        def __init__(self, record):
            super().__init__()
            self.record = record

        def on_train_batch_begin(self, batch, logs=None):
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            self.record["learning_rates"].append(float(rate))

    def fit(self, x=None, y=None, *args, **kwargs):
        record = {"call": len(calls), "model": type(self).__name__,
                  "class_weight": None, "learning_rates": [],
                  "initial_epoch": kwargs.get("initial_epoch", 0),
                  "epochs": kwargs.get("epochs")}
        class_weight = kwargs.get("class_weight")
        if class_weight is not None:
            record["class_weight"] = {str(int(k)): float(v) for k, v in class_weight.items()}
        steps = kwargs.get("steps_per_epoch")
        if steps is None and hasattr(x, "cardinality"):
            steps = int(x.cardinality())
        record["steps_per_epoch"] = steps
        if hasattr(x, "take") and steps and steps > 0:
            batches = _batches(x, steps)
            labels = np.concatenate([np.asarray(b[1]).reshape(-1) for b in batches])
            record["epoch_label_counts"] = {
                str(int(c)): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
            record["implied_class_weight"] = _implied_class_weights(batches)
            first = np.asarray(batches[0][0]) if isinstance(batches[0], tuple) else None
            if first is not None and first.ndim == 4:  # images
                record["first_images"] = first
        callbacks = list(kwargs.pop("callbacks", None) or [])
        kwargs["callbacks"] = callbacks + [LearningRates(record)]
        try:
            return original(self, x, y, *args, **kwargs)
        finally:
            calls.append(record)
            if record_path:
                _write(record_path, record)

    keras.Model.fit = fit
    fit.spied = original
    return calls


def _write(record_path, record):
    record = dict(record)
    images = record.pop("first_images", None)
    if images is not None:
        name = f"{os.path.basename(record_path)}.images{record['call']}.npy"
        np.save(os.path.join(os.path.dirname(record_path), name), images)
        record["first_images"] = name
    with open(record_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read(record_path):
    """The records `install(record_path)` wrote, images loaded back."""
    records = []
    with open(record_path) as f:
        for line in f:
            record = json.loads(line)
            if record.get("first_images"):
                record["first_images"] = np.load(
                    os.path.join(os.path.dirname(record_path), record["first_images"]))
            records.append(record)
    return records


def uninstall():
    import keras

    original = getattr(keras.Model.fit, "spied", None)
    if original is not None:
        keras.Model.fit = original


def assert_phases_trained_at(records, history_rows, rates, epochs):
    """Each `fit` call (one per phase, in order) ran every batch at its
    phase's learning rate, as the optimizer held it, and every row of
    history.csv records its own phase's rate.

    Args:
        records: the spy's records, one per `fit` call.
        history_rows: history.csv's rows (dicts).
        rates: {phase: learning rate}, in the order the phases ran.
        epochs: {phase: epochs}.
    """
    import pytest

    assert len(records) == len(rates), [r["model"] for r in records]
    for record, (phase, rate) in zip(records, rates.items()):
        seen = record["learning_rates"]
        assert len(seen) == epochs[phase] * record["steps_per_epoch"], (phase, len(seen))
        assert seen == pytest.approx([rate] * len(seen), rel=1e-6), (phase, rate, sorted(set(seen)))
    assert [r["phase"] for r in history_rows] == [
        p for p in rates for _ in range(epochs[p])]
    for row in history_rows:
        assert float(row["learning_rate"]) == pytest.approx(rates[row["phase"]], rel=1e-6), row
