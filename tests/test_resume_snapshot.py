"""resume.snapshot alone, without `fit`: what is written is read back into
the variables and random states, and a bad snapshot is refused."""

import json
import random

import keras
import numpy as np
import pytest

from kerastune_lab.errors import KerastuneError
from kerastune_lab.resume import snapshot

INFO = {"phase": "finetune", "epoch": 1, "step": 2, "steps_per_epoch": 3, "weights": "all"}


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _values(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _fill(variables, rng):
    """Gives every variable values a fresh one does not have."""
    for v in variables:
        value = rng.integers(1, 100, v.shape) if "int" in v.dtype else rng.normal(size=v.shape)
        v.assign(np.asarray(value).astype(v.dtype))


def _draws():
    """One draw from each random state a snapshot holds."""
    draws = {"python": random.random(), "numpy": np.random.rand(3),
             "keras": keras.ops.convert_to_numpy(keras.random.uniform((3,)))}
    if keras.backend.backend() == "torch":
        import torch

        draws["torch"] = torch.rand(3).numpy()
    return draws


def test_round_trip_puts_back_weights_optimizer_metrics_and_random_states(tmp_path):
    model = _model()
    rng = np.random.default_rng(0)
    _fill(model.variables, rng)
    _fill(model.optimizer.variables, rng)
    mean = keras.metrics.Mean()
    mean.update_state([1.0, 2.0, 6.0])
    keras.random.uniform((1,))  # the global seed generator exists
    weights, moments = _values(model.variables), _values(model.optimizer.variables)

    state = snapshot.write(tmp_path, INFO, snapshot.model_variables(model),
                           optimizer=model.optimizer.variables, metrics=mean.variables)
    expected = _draws()
    assert snapshot.read_state(tmp_path) == state
    assert {k: state[k] for k in INFO} == INFO
    assert state["model"] == [[v.path, list(v.shape)] for v in model.variables]
    written = json.loads((tmp_path / snapshot.STATE_FILE).read_text())
    assert written == {k: v for k, v in state.items() if k != "rng"}

    _draws()  # the random states move on, the variables change
    for v in model.variables + model.optimizer.variables:
        v.assign(keras.ops.zeros(v.shape, v.dtype))
    restored = snapshot.restore(tmp_path, snapshot.model_variables(model),
                                model.optimizer.variables, steps_per_epoch=3)
    if restored.torch_rng:
        snapshot.set_torch_rng_state(restored.torch_rng)
    assert (keras.backend.backend() == "torch") == bool(restored.torch_rng)
    assert restored.state == state
    for a, b in zip(weights + moments, _values(model.variables + model.optimizer.variables)):
        np.testing.assert_array_equal(a, b)
    assert len(weights) == 5 and len(moments) > 2  # 2 Dense x 2 + Dropout's seed; Adam's
    paths, values = restored.metrics
    assert paths == [[v.path, list(v.shape)] for v in mean.variables]
    np.testing.assert_array_equal(values, [9.0, 3.0])  # total and count
    mean.reset_state()
    assert snapshot.restore_metrics(restored.metrics, mean.variables)
    assert float(mean.result()) == 3.0
    assert not snapshot.restore_metrics(restored.metrics, mean.variables[:1])
    again = _draws()
    assert sorted(again) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(again[key], expected[key], err_msg=key)


def test_trainable_weights_leave_out_the_frozen_ones(tmp_path):
    model = _model()
    model.layers[0].trainable = False
    variables = snapshot.model_variables(model, "trainable")
    head, dropout = model.layers[2], model.layers[1]
    assert [v.path for v in variables] == [head.kernel.path, head.bias.path,
                                           dropout.seed_generator.state.path]
    snapshot.write(tmp_path, dict(INFO, weights="trainable"), variables)
    restored = snapshot.restore(tmp_path, variables)
    assert [p for p, _ in restored.state["model"]] == [v.path for v in variables]
    assert restored.state["optimizer"] == [] and restored.metrics is None


def test_a_variable_not_finite_writes_nothing(tmp_path):
    model = _model()
    snapshot.write(tmp_path, INFO, snapshot.model_variables(model))
    before = (tmp_path / snapshot.BACKUP_FILE).read_bytes()
    head = model.layers[2]
    head.bias.assign(np.array([0.0, np.nan], "float32"))
    with pytest.raises(snapshot.NotFinite, match=f"model variable '{head.bias.path}' is not"):
        snapshot.write(tmp_path, dict(INFO, epoch=2), snapshot.model_variables(model))
    assert (tmp_path / snapshot.BACKUP_FILE).read_bytes() == before
    assert snapshot.read_state(tmp_path)["epoch"] == 1


def test_another_model_or_epoch_length_is_refused(tmp_path):
    assert snapshot.read_state(tmp_path) is None
    model = _model()
    snapshot.write(tmp_path, INFO, snapshot.model_variables(model))
    with pytest.raises(KerastuneError, match="has 3 steps an epoch, this run 4"):
        snapshot.restore(tmp_path, snapshot.model_variables(model), steps_per_epoch=4)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(5),
                              keras.layers.Dropout(0.5), keras.layers.Dense(2)])
    with pytest.raises(KerastuneError, match=r"model variables \('.*' \(3, 4\) there, "
                       r"'.*' \(3, 5\) here\)"):
        snapshot.restore(tmp_path, snapshot.model_variables(other))
    with pytest.raises(KerastuneError) as info:
        snapshot.restore(tmp_path, snapshot.model_variables(model)[:4])
    latest = str(tmp_path / snapshot.BACKUP_FILE)
    assert str(info.value).startswith(f"backup {latest!r} does not match this model's model "
                                      "variables (5 there, 4 here): pass")
    (tmp_path / snapshot.BACKUP_FILE).write_bytes(b"not a zip")
    with pytest.raises(KerastuneError, match="cannot be read"):
        snapshot.read_state(tmp_path)


def test_restore_without_a_backup_or_with_only_damaged_copies_says_which(tmp_path):
    model = _model()
    empty = tmp_path / "empty"
    with pytest.raises(snapshot.BackupUnreadable) as info:
        snapshot.restore(empty, snapshot.model_variables(model))
    assert str(info.value) == f"no backup in {str(empty)!r}"
    snapshot.write(tmp_path / "run", INFO, snapshot.model_variables(model))
    (tmp_path / "run" / snapshot.BACKUP_FILE).write_bytes(b"not a zip")
    with pytest.raises(snapshot.BackupUnreadable) as info:
        snapshot.restore(tmp_path / "run", snapshot.model_variables(model))
    latest = str(tmp_path / "run" / snapshot.BACKUP_FILE)
    size = (tmp_path / "run" / "manifest.json").read_text()
    size = json.loads(size)["backups"][0]["size"]
    assert str(info.value).startswith(
        f"backup {latest!r} cannot be read (latest.npz has 9 bytes, {size} were written): pass")


class _Planted:
    """Unpickling it makes a folder: a stand-in for code a file could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def test_a_backup_holding_pickled_objects_is_refused_never_unpickled(tmp_path):
    planted = tmp_path / "code-ran"
    path = tmp_path / "latest.npz"
    with open(path, "wb") as f:
        np.savez(f, state=np.array([_Planted(str(planted))], dtype=object))
    model = _model()
    with pytest.raises(snapshot.BackupUnreadable) as info:
        snapshot.restore(tmp_path, snapshot.model_variables(model), path=str(path))
    assert not planted.exists()
    why = "ValueError: Object arrays cannot be loaded when allow_pickle=False"
    assert info.value.why == why
    assert info.value.cli_message == (f"backup {str(path)!r} cannot be read ({why}): pass "
                                      "--overwrite to start the run again")


def test_keras_random_state_is_put_back_where_nothing_has_drawn_from_it_yet(tmp_path):
    """A resumed process whose global seed generator does not exist yet
    (`keras.utils.set_random_seed` removes it; a fresh process has none
    until something draws) still continues the written run's draws."""
    model = _model()
    keras.random.uniform((1,))  # the global seed generator exists
    snapshot.write(tmp_path, INFO, snapshot.model_variables(model))
    expected = _draws()
    keras.utils.set_random_seed(7)
    snapshot.restore(tmp_path, snapshot.model_variables(model))
    again = _draws()
    for key in ("python", "numpy", "keras"):
        np.testing.assert_array_equal(again[key], expected[key], err_msg=key)


def test_a_second_write_keeps_the_first_as_the_previous_copy(tmp_path):
    import datetime

    model = _model()
    before = datetime.datetime.now(datetime.timezone.utc)
    first = snapshot.write(tmp_path, INFO, snapshot.model_variables(model))
    snapshot.write(tmp_path, dict(INFO, epoch=2, step=0), snapshot.model_variables(model))
    saved = datetime.datetime.fromisoformat(first["saved"])
    assert saved.utcoffset() == datetime.timedelta(0)
    assert before <= saved <= datetime.datetime.now(datetime.timezone.utc)
    manifest = json.loads((tmp_path / snapshot.MANIFEST_FILE).read_text())
    assert [(b["file"], b["phase"], b["epoch"], b["step"]) for b in manifest["backups"]] == [
        (snapshot.BACKUP_FILE, "finetune", 2, 0), (snapshot.PREVIOUS_FILE, "finetune", 1, 2)]
    kept = snapshot.restore(tmp_path, snapshot.model_variables(model),
                            path=str(tmp_path / snapshot.PREVIOUS_FILE))
    assert kept.state == first


def test_a_write_keeps_no_copy_that_no_manifest_will_name(tmp_path):
    """`previous=None` keeps the new copy alone; so does a write whose copy
    to keep (chosen earlier) is gone by then: the older previous.npz goes."""
    model = _model()

    def write(epoch, **kwargs):
        snapshot.write(tmp_path, dict(INFO, epoch=epoch), snapshot.model_variables(model),
                       **kwargs)
        manifest = json.loads((tmp_path / snapshot.MANIFEST_FILE).read_text())
        return ([(b["file"], b["epoch"]) for b in manifest["backups"]],
                sorted(p.name for p in tmp_path.glob("*.npz")))

    write(1)
    assert write(2) == ([(snapshot.BACKUP_FILE, 2), (snapshot.PREVIOUS_FILE, 1)],
                        [snapshot.BACKUP_FILE, snapshot.PREVIOUS_FILE])
    assert write(3, previous=None) == ([(snapshot.BACKUP_FILE, 3)], [snapshot.BACKUP_FILE])
    write(4)
    chosen = snapshot.choose(tmp_path).entry
    assert (chosen["file"], chosen["epoch"]) == (snapshot.BACKUP_FILE, 4)
    (tmp_path / snapshot.BACKUP_FILE).unlink()
    assert write(5, previous=chosen) == ([(snapshot.BACKUP_FILE, 5)], [snapshot.BACKUP_FILE])
    assert snapshot.read_state(tmp_path)["epoch"] == 5


def test_a_bfloat16_variable_is_written_as_float32_and_put_back_exactly(tmp_path):
    variable = keras.Variable(np.array([1.5, -2.25, 3.0e-3], "float32"), dtype="bfloat16")
    expected = np.asarray(keras.ops.convert_to_numpy(variable)).astype("float32")
    snapshot.write(tmp_path, INFO, [variable])
    with np.load(tmp_path / snapshot.BACKUP_FILE, allow_pickle=False) as f:
        assert f["model.0"].dtype == np.float32
        np.testing.assert_array_equal(f["model.0"], expected)
    variable.assign(np.zeros(3, "float32"))
    snapshot.restore(tmp_path, [variable])
    assert keras.backend.standardize_dtype(variable.dtype) == "bfloat16"
    np.testing.assert_array_equal(
        np.asarray(keras.ops.convert_to_numpy(variable)).astype("float32"), expected)
