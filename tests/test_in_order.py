"""Keras runs the batch-end calls of `async_safe` callbacks in a thread pool,
several at once and in any order: the callbacks that need the steps in order
(the loss check of `resume.Backup`, the batch curves of
`training.TensorBoard`) act on them in step order all the same. Here the
calls come in a chosen order, from a thread other than the training one, as
Keras' pool makes them."""

import threading

import keras
import numpy as np
import pytest

from kerastune_lab import training
from kerastune_lab.errors import LossNotFinite
from kerastune_lab.in_order import InOrder
from kerastune_lab.resume import Backup
from tests.test_run_settings import scalars


@pytest.mark.backend_independent
def test_steps_are_released_in_order_once_the_gap_is_filled():
    steps = InOrder(done=2)
    assert steps.note(5, "e") == []
    assert steps.note(4, "d") == []
    assert steps.pending() == ["d", "e"]
    assert steps.note(3, "c") == [(3, "c"), (4, "d"), (5, "e")]
    assert steps.done == 5
    assert steps.note(2, "again") == [] and steps.done == 5  # a step before `done`
    assert steps.note(6) == [(6, None)] and steps.pending() == []


def _from_another_thread(call, *args_list):
    """Makes the calls one after another in a thread that is not this one
    (Keras' pool), as the list orders them."""
    def calls():
        for args in args_list:
            call(*args)

    thread = threading.Thread(target=calls)
    thread.start()
    thread.join()


def _model():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


@pytest.mark.backend_independent
def test_the_loss_check_names_the_first_step_not_finite_when_a_later_one_came_first(tmp_path):
    backup = Backup(tmp_path)
    backup.set_model(_model())
    backup.set_params({"epochs": 1, "steps": 8})
    backup.on_train_begin()
    backup.on_epoch_begin(0)
    # Steps 1-4 finite, 5 and 6 not: 6's call runs before 5's.
    _from_another_thread(backup.on_train_batch_end, *[(b, {"loss": 1.0}) for b in range(4)],
                         (5, {"loss": float("inf")}), (4, {"loss": float("nan")}))
    with pytest.raises(LossNotFinite, match=r"loss is nan at epoch 1, step 5 \(train phase\)"):
        backup.on_train_batch_begin(6)


@pytest.mark.backend_independent
def test_the_loss_check_counts_a_step_checked_only_when_those_before_it_are(tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr("kerastune_lab.resume.loss_check.WAIT_S", 0.05)
    backup = Backup(tmp_path)
    backup.set_model(_model())
    backup.set_params({"epochs": 1, "steps": 8})
    backup.on_train_begin()
    backup.on_epoch_begin(0)
    _from_another_thread(backup.on_train_batch_end, (2, {"loss": 1.0}), (1, {"loss": 1.0}))
    assert not backup.loss_check.wait_checked(3)  # step 1 is not checked: nor are 2 and 3
    _from_another_thread(backup.on_train_batch_end, (0, {"loss": 1.0}))
    assert backup.loss_check.wait_checked(3)


@pytest.mark.backend_independent
def test_tensorboard_writes_batch_points_in_step_order(tmp_path):
    board = training.TensorBoard(str(tmp_path), update_freq=1, first_step=10)
    board.set_model(_model())
    board.set_params({"epochs": 1, "steps": 4})
    board.on_train_begin()
    board.on_epoch_begin(0)
    order = [1, 2, 3, 0]  # the pool runs batch 0's end-call last
    for batch in range(4):
        board.on_train_batch_begin(batch)
        _from_another_thread(board.on_train_batch_end, (order[batch], {"loss": order[batch]}))
    board.on_epoch_end(0, {"loss": 0.5})
    board.on_train_end()
    points = scalars(tmp_path / "train")["batch_loss"]
    assert [step for step, _ in points] == [11, 12, 13, 14]
    assert [value for _, value in points] == pytest.approx([0.0, 1.0, 2.0, 3.0])


def test_in_a_real_fit_the_batch_curve_has_every_step_once_in_order(tmp_path):
    x = np.random.default_rng(0).random((64, 2)).astype("float32")
    model = _model()
    board = training.TensorBoard(str(tmp_path), update_freq=1)
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[board])
    assert [step for step, _ in scalars(tmp_path / "train")["batch_loss"]] == \
        list(range(1, 33))
