"""`LossCheck`: the callback that stops a fit whose loss is not finite,
naming the first step whose loss is NaN or infinite.

    model.fit(data, epochs=3, callbacks=[LossCheck()])
    # LossNotFinite: loss is nan at epoch 1, step 5 (train phase): training stopped

Keras' `TerminateOnNaN` stops after the batch and says nothing of where.
Here the check costs the host no wait: Keras reads each step's logs on the
host (which waits for the device) in the training thread, unless every
callback with an `on_train_batch_end` is `async_safe`; then it runs them in
a thread pool of its own (JAX and torch; TensorFlow's backend never does),
several calls at once and in any order. So `on_train_batch_end` only notes
each step's loss, in an `in_order.InOrder`, and checks them in step order;
the training thread raises `LossNotFinite` at the next batch, and at each
epoch's end (when Keras has run every batch's callbacks).

`resume.Backup` holds one and, before writing a backup, waits for the check
to reach the backup's step (`wait_checked`), so that a backup never holds
weights after a loss that is not finite; the message then says which backup
is kept.
"""

import math
import threading

import keras

from kerastune_lab.errors import LossNotFinite
from kerastune_lab.in_order import InOrder

WAIT_S = 60  # `wait_checked`'s longest wait for Keras' callback threads


class LossCheck(keras.callbacks.Callback):
    """Stops a fit at the first step whose loss is not finite (module
    docstring). `async_safe`: its batch-end call may run in Keras' threads.

    Args:
        kept: callable or None. Says what is kept (a backup) at the end of
            the message: "the backup of epoch 1, step 3 is kept in ...".
        phase: str. The phase named in the message.
    """

    async_safe = True  # read by Keras' CallbackList: see the module docstring

    def __init__(self, kept=None, phase="train"):
        super().__init__()
        self.kept = kept
        self.phase = phase
        self._checked = threading.Condition()  # guards the two below
        self._steps = InOrder()  # this epoch's steps, losses checked up to `.done`
        self._not_finite = None  # (epoch, step, loss) of the first loss not finite
        self._epoch = 0
        self._offset = 0

    def start_epoch(self, epoch, done=0):
        """Starts `epoch`'s count after `done` steps already checked (a run
        resumed mid-epoch: the run that wrote the backup checked them)."""
        with self._checked:
            self._epoch, self._offset = epoch, done
            self._steps = InOrder(done=done)

    def on_train_begin(self, logs=None):
        with self._checked:
            self._not_finite = None

    def on_epoch_begin(self, epoch, logs=None):
        self.start_epoch(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        self.raise_if_not_finite()

    def on_train_batch_end(self, batch, logs=None):
        """Notes the step's loss; the losses are checked in step order, so
        the first not finite is the one named, whatever order the calls
        come in."""
        loss = (logs or {}).get("loss")
        with self._checked:
            for step, loss in self._steps.note(self._offset + batch + 1, loss):
                if (self._not_finite is None and loss is not None
                        and not math.isfinite(float(loss))):
                    self._not_finite = (self._epoch, step, float(loss))
            self._checked.notify_all()

    def on_epoch_end(self, epoch, logs=None):
        self.raise_if_not_finite()  # Keras has run every batch's callbacks by now
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._not_finite = (self._epoch, self.params.get("steps"), float(loss))
            self.raise_if_not_finite()

    def wait_checked(self, step):
        """Waits (at most `WAIT_S`) until the losses of this epoch's steps up
        to `step` are checked; returns whether they are."""
        with self._checked:
            return self._checked.wait_for(lambda: self._steps.done >= step, timeout=WAIT_S)

    def raise_if_not_finite(self):
        """Raises `LossNotFinite` where a step's loss was not finite."""
        if self._not_finite is not None:
            epoch, step, loss = self._not_finite
            raise self.error(f"loss is {loss}", epoch, step)

    def error(self, what, epoch, step):
        """The `LossNotFinite` to raise: "`what` at epoch E, step S (phase):
        training stopped", and what is kept."""
        kept = f"; {self.kept()}" if self.kept else ""
        return LossNotFinite(f"{what} at epoch {epoch + 1}, step {step} ({self.phase} phase): "
                             f"training stopped{kept}")
