"""`Backup`: the callback that backs up a run as it trains and resumes it.

    backup = Backup(run, save_every_steps=50)   # reads run/backup/ if a crash left one
    fit_resumable(model, stream, 5, backup)      # training.fit_resumable: starts where it left off

Keras' `BackupAndRestore` restores weights and optimizer but restarts an
interrupted epoch from its first batch, writes its files in place (a crash
while writing leaves a broken backup), and saves weights through each
layer's `save_own_variables`, which in Keras' LoRA layers merges the adapter
into the kernel (re-quantizing an int8 one): resumed, it would train fresh
zero adapters on a changed base. `Backup` writes a `snapshot` (one file,
atomically) at each epoch end and every `save_every_steps` steps, keeping
the one before as the previous copy, each checked by its SHA-256.

It resumes from the newest intact copy (`snapshot.choose`). Where the
newest is damaged (or missing) it says so and resumes from the previous
one; where no copy is intact, or a resumed run has none, it says it starts
over from epoch 1, and does: never a traceback for a damaged file.

It resumes mid-epoch. With a `data.stream.Stream`, whose batches are a
function of (seed, epoch, step), `start` says where the data starts; the
callback ends the resumed epoch after the batches it was missing (it sets
`stop_training` at that batch and clears it at the epoch's end, so `fit`
goes on with the next epoch): the resumed run takes the same path as an
uninterrupted one.

It also stops a run cleanly, keeping the last backup good: a loss that is
not finite raises `LossNotFinite` (epoch and step named) before anything is
saved; a signal held by `signals.handle_interrupts` is raised as
`Interrupted` once the backup of the batch it came in is written (the
check, and the step backups, run as the next batch begins).

No host wait each step. Keras reads each step's logs on the host (which
waits for the device) in the training thread, unless every callback with an
`on_train_batch_end` is `async_safe`: then it runs them in a thread of its
own (JAX and torch; TensorFlow's backend never does), several calls at
once and in any order. Here only the loss check runs there: it notes each
step's loss in an `in_order.InOrder` and checks them in step order, so the
step it names is the first whose loss is not finite. The training thread
raises `LossNotFinite` (that step named) at the next batch, and before each
backup waits for the check to reach the backup's step, so
a backup never holds weights after a loss that is not finite.
"""

import logging
import math
import os
import signal
import threading

import keras

from kerastune_lab.errors import Interrupted, KerastuneError, LossNotFinite
from kerastune_lab.in_order import InOrder
from kerastune_lab.resume import signals, snapshot
from kerastune_lab.runs import BACKUP_DIR

log = logging.getLogger("kerastune_lab")

_CHECK_WAIT_S = 60  # at a backup, the longest wait for Keras' callback thread


class Backup(keras.callbacks.Callback):
    """Backs up training to `run/backup/` and resumes from it (module docstring).

    `async_safe`: Keras may run `on_train_batch_end` in its callback thread
    (JAX, torch), so that the host does not wait for each step; the rest
    runs on the training thread.

    Args:
        run: RunDir or str. The run directory (the backup goes in its
            `backup/` folder), or the backup folder itself.
        save_every_steps: int. Also back up every this many steps of an
            epoch; 0 backs up at epoch ends only. Defaults to 0.
        weights: str. "all": every model variable; "trainable": the
            trainable ones and seed states only (LoRA: the adapter, not
            the frozen base). Defaults to "all".

    Set `phase` (e.g. "head", "finetune") before each `fit` of a run with
    several; `training.fit_resumable` does.

    Example:
    ```python
    from kerastune_lab.training import fit_resumable

    backup = Backup("runs/mine", save_every_steps=100)
    fit_resumable(model, stream, 3, backup)  # (epoch, step) from backup.start("train")
    ```
    """

    async_safe = True  # read by Keras' CallbackList: see the class docstring

    def __init__(self, run, save_every_steps=0, weights="all"):
        super().__init__()
        if (isinstance(save_every_steps, bool) or not isinstance(save_every_steps, int)
                or save_every_steps < 0):
            raise KerastuneError(f"save_every_steps={save_every_steps!r}: expected 0 (epoch "
                                 "ends only) or a positive number of steps")
        if weights not in snapshot.WEIGHTS:
            raise KerastuneError(f"Backup weights={weights!r}: expected one of "
                                 f"{snapshot.WEIGHTS}")
        self.directory = run.file(BACKUP_DIR) if hasattr(run, "file") else os.fspath(run)
        self.path = os.path.join(self.directory, snapshot.BACKUP_FILE)
        self.save_every_steps = save_every_steps
        self.weights = weights
        self.phase = "train"
        found = snapshot.choose(self.directory)
        self.state = found.state  # what a resumed run starts from (None: from the start)
        self._found = found.path  # the file it is read from
        # The copy kept as the previous one at the first backup: the one
        # resumed from, or none (then `snapshot.NEWEST`: the one written last).
        self._previous = found.entry
        self._say_what_is_resumed(found, getattr(run, "resumed", False))
        self.saved = None  # (phase, epoch, step) of the last backup written here
        self._resume = None
        self._metrics = None
        self._epoch = 0
        self._offset = 0
        self._ended_early = False
        self._torch_rng = None  # torch's generator states, put back at the first batch
        self._checked = threading.Condition()  # guards the two below
        self._steps = InOrder()  # this epoch's steps, losses checked up to `.done`
        self._not_finite = None  # (epoch, step, loss) of the first loss not finite

    @property
    def resumed_phase(self):
        """The phase the backup was written in, or None without a backup."""
        return self.state["phase"] if self.state else None

    def start(self, phase="train", first_epoch=0):
        """(epoch, step) where `phase`'s fit starts: where the backup left
        off, if it was written in `phase`; else (first_epoch, 0)."""
        if self.state and self.state["phase"] == phase:
            return self.state["epoch"], self.state["step"]
        return first_epoch, 0

    # --- Keras callback hooks ---------------------------------------------

    def on_train_begin(self, logs=None):
        signals.set_training(self)
        self._offset, self._resume, self._ended_early = 0, None, False
        self._not_finite = None
        if self.state and self.state["phase"] == self.phase:
            self._restore()
            self._resume = (self.state["epoch"], self.state["step"])
            log.info("resumed from the backup of %s (%s phase)",
                     self._describe(self.saved), self.phase)
            self.state = None

    def on_train_end(self, logs=None):
        signals.set_training(None)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._offset = epoch, 0
        if self._resume is not None:
            (first, step), self._resume = self._resume, None
            if epoch != first:
                raise RuntimeError(f"fit starts at epoch {epoch + 1} but the backup is of "
                                   f"epoch {first + 1}: pass fit the initial_epoch and data "
                                   "of Backup.start")
            if step:
                self._offset = step
                self._restore_metrics()
        with self._checked:  # Keras ran the last epoch's batch callbacks before its end
            self._steps = InOrder(done=self._offset)  # the backup's run checked those

    def on_train_batch_begin(self, batch, logs=None):
        if self._torch_rng:
            snapshot.set_torch_rng_state(self._torch_rng)
            self._torch_rng = None
        done = self._offset + batch  # steps of this epoch finished before this batch
        self._raise_if_not_finite()
        steps = self.params.get("steps")
        if self._offset and steps and done + 1 >= steps:
            # The resumed epoch had `_offset` batches already: this is its
            # last (fit checks `stop_training` after the batch).
            self._model.stop_training = True
            self._ended_early = True
        if (done and self.save_every_steps and done % self.save_every_steps == 0
                and self.saved != (self.phase, self._epoch, done)):
            self._save(self._epoch, done)
        if done and signals.pending() is not None:  # it came during the last batch
            if self.saved != (self.phase, self._epoch, done):
                self._save(self._epoch, done)
            self._interrupt()

    def on_train_batch_end(self, batch, logs=None):
        """Runs in Keras' callback thread where Keras dispatches asynchronously
        (`async_safe`): notes the first step whose loss is not finite and
        touches nothing else. The calls may come in any order: the losses
        are checked in step order."""
        loss = (logs or {}).get("loss")
        with self._checked:
            for step, loss in self._steps.note(self._offset + batch + 1, loss):
                if (self._not_finite is None and loss is not None
                        and not math.isfinite(float(loss))):
                    self._not_finite = (self._epoch, step, float(loss))
            self._checked.notify_all()

    def on_epoch_end(self, epoch, logs=None):
        if self._ended_early:
            self._model.stop_training = self._ended_early = False
        self._raise_if_not_finite()  # Keras has run every batch's callbacks by now
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._not_finite = (self._epoch, self.params.get("steps"), float(loss))
            self._raise_if_not_finite()
        self._save(epoch + 1, 0)
        if signals.pending() is not None:
            self._interrupt()

    # --- stopping, saving and restoring -----------------------------------

    def _interrupt(self):
        signum = signals.take_pending()
        log.warning("interrupted (%s): backed up %s to %s", signal.Signals(signum).name,
                    self._describe(self.saved), self.path)
        raise Interrupted(signum)

    def _raise_if_not_finite(self):
        if self._not_finite is None:
            return
        epoch, step, loss = self._not_finite
        signals.set_training(None)
        raise LossNotFinite(f"loss is {loss} at epoch {epoch + 1}, step {step} "
                            f"({self.phase} phase): training stopped; {self._kept()}")

    def _wait_checked(self, step):
        """Waits until the losses of this epoch's steps up to `step` are
        checked (Keras' callback thread may be a few steps behind)."""
        with self._checked:
            return self._checked.wait_for(lambda: self._steps.done >= step,
                                          timeout=_CHECK_WAIT_S)

    def _kept(self):
        if self.saved:
            return f"the backup of {self._describe(self.saved)} is kept in {self.path}"
        if os.path.exists(self.path):
            return f"the backup in {self.path} is kept"
        return "no backup was written"

    @staticmethod
    def _describe(saved):
        _, epoch, step = saved
        return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"

    @classmethod
    def _describe_copy(cls, entry):
        """A copy named by its manifest entry: "epoch 2, step 1 (finetune phase)"."""
        try:
            return (f"{cls._describe((None, int(entry['epoch']), int(entry['step'])))} "
                    f"({entry['phase']} phase)")
        except (KeyError, TypeError, ValueError):
            return entry.get("file", "?")

    def _say_what_is_resumed(self, found, resumed):
        """Logs a line where the run does not resume from its newest backup:
        a damaged one passed over, or none to resume from."""
        def copy(skipped):
            return (f"backup of {self._describe_copy(skipped.entry)}" if skipped.entry
                    else f"backup {skipped.file}")

        if found.path is not None:
            for skipped in found.skipped:
                log.warning("%s is damaged (%s): resuming from the previous backup, of %s",
                            copy(skipped), skipped.why, self._describe_copy(found.entry))
        elif found.skipped:
            log.warning("no usable backup in %s (%s): starting over from epoch 1",
                        self.directory, "; ".join(f"{copy(s)}: {s.why}" for s in found.skipped))
        elif resumed:
            log.warning("no backup in %s (none was written before the run stopped, or it was "
                        "deleted): starting over from epoch 1", self.directory)

    def _save(self, epoch, step):
        if step:
            self._wait_checked(step)
            self._raise_if_not_finite()
        model = self.model  # with jax, this syncs the training state back to the model
        info = {"phase": self.phase, "epoch": epoch, "step": step,
                "steps_per_epoch": self.params.get("steps"), "weights": self.weights}
        try:
            snapshot.write(self.directory, info, snapshot.model_variables(model, self.weights),
                           optimizer=model.optimizer.variables if model.optimizer else (),
                           metrics=model.metrics_variables if step else (),
                           previous=self._previous)
        except snapshot.NotFinite as e:
            signals.set_training(None)
            raise LossNotFinite(
                f"{e} at epoch {self._epoch + 1}, step {step or self.params.get('steps')} "
                f"({self.phase} phase): training stopped; {self._kept()}") from None
        self._previous = snapshot.NEWEST  # the one just written, at the next backup
        self.saved = (self.phase, epoch, step)

    def _restore_metrics(self):
        """Puts back the metrics' running totals of the resumed epoch, so its
        logged figures count all its batches. With TensorFlow, compiled
        metrics are built only by the first step: then they count the
        batches after the backup only."""
        if not snapshot.restore_metrics(self._metrics, self.model.metrics_variables):
            log.info("the metrics of the resumed epoch count the batches after the backup")

    def _restore(self):
        model = self.model
        optimizer = model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        restored = snapshot.restore(
            self.directory, snapshot.model_variables(model, self.weights),
            optimizer.variables if optimizer is not None else None,
            steps_per_epoch=self.params.get("steps"), path=self._found)
        # torch's generators are put back at the first batch: the torch
        # backend's data loader draws from them when fit starts iterating.
        self._metrics, self._torch_rng = restored.metrics, restored.torch_rng
        state = restored.state
        self.saved = (state["phase"], state["epoch"], state["step"])
