"""`Backup`: the callback that backs up a run as it trains and resumes it.

    backup = Backup(run, save_every_steps=50)   # reads run/backup/ if a crash left one
    fit_resumable(model, stream, 5, backup)      # training.fit_resumable: starts where it left off

Keras' `BackupAndRestore` restores weights and optimizer but restarts an
interrupted epoch from its first batch, writes its files in place (a crash
while writing leaves a broken backup), and saves weights through each
layer's `save_own_variables`, which in Keras' LoRA layers merges the adapter
into the kernel (re-quantizing an int8 one): resumed, it would train fresh
zero adapters on a changed base. `Backup` writes a `snapshot` (one file,
atomically) at each epoch end and every `save_every_steps` steps.

It resumes mid-epoch. With a `data.stream.Stream`, whose batches are a
function of (seed, epoch, step), `start` says where the data starts; the
callback ends the resumed epoch after the batches it was missing (it sets
`stop_training` at that batch and clears it at the epoch's end, so `fit`
goes on with the next epoch): the resumed run takes the same path as an
uninterrupted one.

It also stops a run cleanly, keeping the last backup good: a loss that is
not finite raises `LossNotFinite` (epoch and step named) before anything is
saved; a signal held by `signals.handle_interrupts` is raised as
`Interrupted` once the backup of its batch is written.
"""

import logging
import math
import os
import signal

import keras

from kerastune_lab.errors import Interrupted, KerastuneError, LossNotFinite
from kerastune_lab.resume import signals, snapshot
from kerastune_lab.runs import BACKUP_DIR

log = logging.getLogger("kerastune_lab")


class Backup(keras.callbacks.Callback):
    """Backs up training to `run/backup/` and resumes from it (module docstring).

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
        self.state = snapshot.read_state(self.directory)  # what a resumed run starts from
        self.saved = None  # (phase, epoch, step) of the last backup written here
        self._resume = None
        self._metrics = None
        self._epoch = 0
        self._offset = 0
        self._ended_early = False
        self._torch_rng = None  # torch's generator states, put back at the first batch

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
        if self._resume is None:
            return
        (first, step), self._resume = self._resume, None
        if epoch != first:
            raise RuntimeError(f"fit starts at epoch {epoch + 1} but the backup is of epoch "
                               f"{first + 1}: pass fit the initial_epoch and data of "
                               "Backup.start")
        if step:
            self._offset = step
            self._restore_metrics()

    def on_train_batch_begin(self, batch, logs=None):
        if self._torch_rng:
            snapshot.set_torch_rng_state(self._torch_rng)
            self._torch_rng = None

    def on_train_batch_end(self, batch, logs=None):
        step = self._offset + batch + 1
        self._check_loss(logs, step)
        steps = self.params.get("steps")
        last = bool(steps) and step >= steps
        if self.save_every_steps and step % self.save_every_steps == 0 and not last:
            self._save(self._epoch, step)
        if signals.pending() is not None and not last:
            if self.saved != (self.phase, self._epoch, step):
                self._save(self._epoch, step)
            self._interrupt()
        if self._offset and last:
            # The resumed epoch had `_offset` batches already: end it here.
            self._model.stop_training = True
            self._ended_early = True

    def on_epoch_end(self, epoch, logs=None):
        if self._ended_early:
            self._model.stop_training = self._ended_early = False
        self._check_loss(logs, self.params.get("steps"))
        self._save(epoch + 1, 0)
        if signals.pending() is not None:
            self._interrupt()

    # --- stopping, saving and restoring -----------------------------------

    def _interrupt(self):
        signum = signals.take_pending()
        log.warning("interrupted (%s): backed up %s to %s", signal.Signals(signum).name,
                    self._describe(self.saved), self.path)
        raise Interrupted(signum)

    def _check_loss(self, logs, step):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        signals.set_training(None)
        raise LossNotFinite(f"loss is {float(loss)} at epoch {self._epoch + 1}, step {step} "
                            f"({self.phase} phase): training stopped; {self._kept()}")

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

    def _save(self, epoch, step):
        model = self.model  # with jax, this syncs the training state back to the model
        info = {"phase": self.phase, "epoch": epoch, "step": step,
                "steps_per_epoch": self.params.get("steps"), "weights": self.weights}
        try:
            snapshot.write(self.directory, info, snapshot.model_variables(model, self.weights),
                           optimizer=model.optimizer.variables if model.optimizer else (),
                           metrics=model.metrics_variables if step else ())
        except snapshot.NotFinite as e:
            signals.set_training(None)
            raise LossNotFinite(
                f"{e} at epoch {self._epoch + 1}, step {step or self.params.get('steps')} "
                f"({self.phase} phase): training stopped; {self._kept()}") from None
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
            steps_per_epoch=self.params.get("steps"))
        # torch's generators are put back at the first batch: the torch
        # backend's data loader draws from them when fit starts iterating.
        self._metrics, self._torch_rng = restored.metrics, restored.torch_rng
        state = restored.state
        self.saved = (state["phase"], state["epoch"], state["step"])
