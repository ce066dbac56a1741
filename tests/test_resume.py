"""resume.Backup and data.stream.Stream in-process, on a tiny model: a run
stopped mid-epoch and resumed from its backup ends with the weights of an
uninterrupted run; a signal is held until its batch is backed up. (The
snapshot file alone: tests/test_resume_snapshot.py; the CLI side:
tests/recipes/test_resume.py.)"""

import json
import os

import keras
import numpy as np
import pytest

from kerastune_lab.data.stream import Stream
from kerastune_lab.errors import Interrupted, KerastuneError, LossNotFinite
from kerastune_lab.resume import BACKUP_FILE, STATE_FILE, Backup, handle_interrupts
from kerastune_lab.runs import BACKUP_DIR, RunDir
from tests.faults import signal_at_batch


def _stream(seed=3, augment=()):
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(10, 4, 4, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 0).astype("int32")
    return Stream(tf.data.Dataset.from_tensor_slices((x, y)), 10, batch_size=4, seed=seed,
                  augment=augment)


def _batches(dataset, n):
    return [[part.numpy() for part in batch] for batch in dataset.take(n)]


def test_stream_epochs_are_a_function_of_seed_and_epoch():
    augment = [keras.layers.RandomFlip("horizontal", seed=1),
               keras.layers.RandomRotation(0.1, seed=1)]
    stream = _stream(augment=augment)
    assert stream.steps_per_epoch == 3
    run = _batches(stream.dataset(), 9)  # epochs 0, 1, 2
    again = _batches(_stream(augment=augment).dataset(), 9)
    for a, b in zip(run, again):
        np.testing.assert_array_equal(a[0], b[0])
    # Starting at (epoch 1, step 2) gives what an uninterrupted run sees there.
    for a, b in zip(_batches(stream.dataset(1, 2), 4), run[5:9]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # Each epoch holds every example once, in another order, augmented anew.
    labels = [np.concatenate([b[1] for b in run[e * 3:e * 3 + 3]]) for e in range(2)]
    assert sorted(labels[0]) == sorted(labels[1]) and len(labels[0]) == 10
    assert not np.array_equal(run[0][0], run[3][0])
    assert [len(b[1]) for b in _batches(stream.epoch(0), 10)] == [4, 4, 2]


def test_stream_order_ignores_tensorflow_global_seed():
    import tensorflow as tf

    orders = []
    for global_seed in (0, 5):  # 0 once made a tensor seed fail in tf.data
        tf.random.set_seed(global_seed)
        orders.append([b[1].numpy().tolist() for b in _stream().dataset(1).take(3)])
    assert orders[0] == orders[1]
    assert sorted(sum(orders[0], [])) == sorted(_stream().examples.map(lambda x, y: y)
                                                .as_numpy_iterator())


def _model():
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


class _Crash(keras.callbacks.Callback):
    def __init__(self, after):
        super().__init__()
        self.after, self.seen = after, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.after:
            raise RuntimeError("crash")


def _fit(model, stream, backup, epochs=3, extra=()):
    from kerastune_lab.training import fit_resumable

    return fit_resumable(model, stream, epochs, backup, callbacks=extra, verbose=0)


def test_backup_resumes_mid_epoch_to_the_same_weights(tmp_path, monkeypatch):
    # Every wait of a backup for the loss check must end with the step
    # checked, never by its timeout (a resumed epoch's restored steps count
    # as checked: before, each resume waited out the timeout).
    from kerastune_lab.resume import loss_check

    waits, original = [], loss_check.LossCheck.wait_checked
    monkeypatch.setattr(loss_check, "WAIT_S", 5)
    monkeypatch.setattr(loss_check.LossCheck, "wait_checked",
                        lambda self, step: waits.append(original(self, step)) or waits[-1])
    stream = _stream()
    reference = _model()
    history = _fit(reference, stream, Backup(tmp_path / "ref", save_every_steps=1))
    # Backed up at every step, the last time at the end of epoch 3.
    state = json.loads((tmp_path / "ref" / STATE_FILE).read_text())
    assert (state["phase"], state["epoch"], state["step"]) == ("train", 3, 0)

    crashed = _model()
    with pytest.raises(RuntimeError, match="crash"):
        _fit(crashed, stream, Backup(tmp_path / "b", save_every_steps=2), extra=[_Crash(6)])
    state = json.loads((tmp_path / "b" / STATE_FILE).read_text())
    # 6 batches: epoch 1 (3 steps, saved at its end), then step 2 of epoch 2 (saved),
    # then step 3 (the last of epoch 2: crashed before its epoch-end backup).
    assert (state["phase"], state["epoch"], state["step"]) == ("train", 1, 2)

    resumed = _model()
    backup = Backup(tmp_path / "b", save_every_steps=2)
    assert backup.start("train") == (1, 2)
    again = _fit(resumed, stream, backup)
    assert len(again.history["loss"]) == 2  # epochs 2 and 3, not 1
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The resumed epoch's figures count all its batches (metrics restored):
    # exactly on jax and torch; TensorFlow builds its metrics on the first step.
    if keras.backend.backend() != "tensorflow":
        np.testing.assert_allclose(again.history["loss"], history.history["loss"][1:],
                                   rtol=1e-5)
    np.testing.assert_allclose(again.history["loss"][-1], history.history["loss"][-1],
                               rtol=1e-5)
    assert waits and all(waits), waits


def test_trainable_backup_holds_no_frozen_weights(tmp_path):
    model = _model()
    model.layers[1].trainable = False
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _fit(model, _stream(), Backup(tmp_path, weights="trainable"), epochs=1)
    with np.load(tmp_path / BACKUP_FILE) as f:
        state = json.loads(str(f["state"]))
    frozen, head = model.layers[1], model.layers[3]
    paths = [p for p, _ in state["model"]]
    assert paths == [head.kernel.path, head.bias.path,
                     model.layers[2].seed_generator.state.path]  # not the frozen layer
    assert frozen.kernel.path not in paths


class _Explode(keras.callbacks.Callback):
    """Epoch 2 at learning rate 1e30: its second step's loss is not finite."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.model.optimizer.learning_rate.assign(1e30)


def test_loss_not_finite_stops_and_keeps_the_last_good_backup(tmp_path):
    model = _model()
    with pytest.raises(LossNotFinite, match=r"loss is (nan|inf) at epoch 2, step [23] \(train "
                       r"phase\).*the backup of the end of epoch 1 is kept"):
        _fit(model, _stream(), Backup(tmp_path), extra=[_Explode()])
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert (state["epoch"], state["step"]) == (1, 0)
    with np.load(tmp_path / BACKUP_FILE) as f:
        assert all(np.isfinite(f[k]).all() for k in f.files if k.startswith("model."))
    # It resumes: a fresh model continues from epoch 2 with the good weights.
    resumed = _model()
    again = _fit(resumed, _stream(), Backup(tmp_path))
    assert len(again.history["loss"]) == 2 and np.isfinite(again.history["loss"]).all()


@pytest.mark.parametrize("name, code", [("INT", 130), ("TERM", 143)])
def test_a_signal_stops_after_its_batch_is_backed_up(tmp_path, name, code):
    model = _model()
    # save_every_steps=0: only the interrupt backs up mid-epoch, at step 2 of epoch 2.
    with handle_interrupts(), signal_at_batch(name, 5):
        with pytest.raises(Interrupted) as stopped:
            _fit(model, _stream(), Backup(tmp_path))
    assert stopped.value.exit_code == code
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert (state["phase"], state["epoch"], state["step"]) == ("train", 1, 2)
    # Resumed, it ends as an uninterrupted run does.
    resumed = _model()
    assert len(_fit(resumed, _stream(), Backup(tmp_path)).history["loss"]) == 2
    reference = _model()
    _fit(reference, _stream(), Backup(tmp_path / "ref"))
    for a, b in zip(reference.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_save_every_steps_must_be_a_count(tmp_path):
    with pytest.raises(KerastuneError, match="save_every_steps=-1"):
        Backup(tmp_path, save_every_steps=-1)


IDENTITY = {"recipe": "cats_vs_dogs", "backend": "jax", "config": {"epochs": 2, "seed": 1}}


def test_unfinished_run_of_the_same_config_is_resumed(tmp_path):
    run = RunDir.create(tmp_path / "r", resume=IDENTITY)
    assert not run.resumed
    run.write_json("config.json", dict(IDENTITY))
    os.makedirs(run.file(BACKUP_DIR))
    again = RunDir.create(tmp_path / "r", resume=IDENTITY)
    assert again.resumed
    other = dict(IDENTITY, config={"epochs": 3, "seed": 1})
    with pytest.raises(KerastuneError, match=r"another config \(epochs=2 there, 3 here\)"):
        RunDir.create(tmp_path / "r", resume=other)
    with pytest.raises(KerastuneError, match="backend 'jax', not 'torch'"):
        RunDir.create(tmp_path / "r", resume=dict(IDENTITY, backend="torch"))
    # A key the recipe gained since the run started: the same run at its
    # default, another run at any other value.
    newer = {"epochs": 2, "seed": 1, "jit_compile": "auto"}
    assert RunDir.create(tmp_path / "r", resume=dict(
        IDENTITY, config=newer, defaults=dict(newer, epochs=5))).resumed
    with pytest.raises(KerastuneError, match=r"another config \(jit_compile=None there, "
                                             r"'true' here\)"):
        RunDir.create(tmp_path / "r", resume=dict(
            IDENTITY, config=dict(newer, jit_compile="true"), defaults=newer))
    with pytest.raises(KerastuneError, match="jit_compile=None there"):  # no defaults given
        RunDir.create(tmp_path / "r", resume=dict(IDENTITY, config=newer))
    run.finish()  # a finished run is not resumed, and its backup is gone
    assert not os.path.exists(run.file(BACKUP_DIR))
    with pytest.raises(KerastuneError, match="already holds a finished run"):
        RunDir.create(tmp_path / "r", resume=IDENTITY)


def test_loss_not_finite_between_backups_names_its_step(tmp_path):
    # 8 steps an epoch, backups every 3: the loss of step 5 is not finite (a NaN
    # input; no relu, which TensorFlow makes 0 of NaN), so the run stops naming
    # step 5, and the backup of step 3 is kept.
    x = np.random.default_rng(1).normal(size=(32, 4, 4, 3)).astype("float32")
    x[16:20] = np.nan  # the 5th batch of 4
    y = np.zeros(32, "int32")
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    backup = Backup(tmp_path, save_every_steps=3)
    with pytest.raises(LossNotFinite, match=r"loss is nan at epoch 1, step 5 \(train phase\)"
                       r".*the backup of epoch 1, step 3 is kept"):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, callbacks=[backup], verbose=0)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert (state["epoch"], state["step"]) == (0, 3)


def test_backup_keeps_keras_async_batch_callbacks(tmp_path):
    from keras.src.backend import IS_THREAD_SAFE
    from keras.src.callbacks.callback_list import CallbackList

    # Keras runs batch-end callbacks in a thread of its own (the host does not
    # wait for each step) only when every one with on_train_batch_end is async_safe.
    callbacks = CallbackList([Backup(tmp_path, save_every_steps=2)], model=_model())
    assert callbacks._async_train == IS_THREAD_SAFE
    assert IS_THREAD_SAFE or keras.backend.backend() == "tensorflow"


@pytest.mark.backend_independent
def test_the_resume_state_is_read_once_and_shared(tmp_path, monkeypatch):
    # A run resumed in phase "finetune": the backup, the history writer and
    # the phases all answer from the run's one ResumeState, read once.
    from kerastune_lab.finetune.two_phase import Phases
    from kerastune_lab.resume import ResumeState
    from kerastune_lab.training import HistoryWriter

    first = RunDir.create(tmp_path / "r", resume=IDENTITY)
    first.write_json("config.json", IDENTITY)  # as the runner writes it
    model = _model()
    backup = Backup(first)
    backup.phase = "finetune"
    backup.set_model(model)
    backup.set_params({"epochs": 3, "steps": 4})
    backup._save(2, 0)  # the end of epoch 2, in phase 2
    first.write_csv("history.csv", [{"epoch": 1, "phase": "head", "loss": 1.0},
                                    {"epoch": 2, "phase": "finetune", "loss": 0.5}])
    first.release()
    reads, read = [], ResumeState.read
    monkeypatch.setattr(ResumeState, "read",
                        classmethod(lambda cls, *a: reads.append(a) or read(*a)))
    run = RunDir.create(tmp_path / "r", resume=IDENTITY)
    assert run.resumed
    backup, history = Backup(run), HistoryWriter(run)
    phases = Phases(model, None, None, {"head": 1, "finetune": 2}, backup=backup)
    assert len(reads) == 1 and backup.resume is run.resume_state
    assert (run.resume_state.phase, run.resume_state.epoch, run.resume_state.step) == \
        ("finetune", 2, 0)
    assert [(r["epoch"], r["phase"]) for r in history.rows] == [(1, "head"), (2, "finetune")]
    assert not phases.to_train("head") and phases.to_train("finetune")
    assert backup.start("finetune", 1) == (2, 0) and backup.start("head") == (0, 0)
    run.release()
