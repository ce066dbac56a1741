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

It also stops a run cleanly, keeping the last backup good: its
`loss_check` (`loss_check.LossCheck`, whose batch-end call is the only one
that may run in Keras' callback threads) raises `LossNotFinite` (epoch and
step named) before anything is saved after that step; a signal held by
`signals.handle_interrupts` is raised as `Interrupted` once the backup of the
batch it came in is written (the check, and the step backups, run as the
next batch begins).

What it resumes from is the run's `state.ResumeState`, read once
(`RunDir.resume_state`); the callback restores from it at the first fit of
the backup's phase.
"""

import logging
import os
import signal

import keras

from kerastune_lab.errors import Interrupted, KerastuneError, LossNotFinite
from kerastune_lab.resume import signals, snapshot
from kerastune_lab.resume.loss_check import LossCheck
from kerastune_lab.resume.state import ResumeState, describe
from kerastune_lab.runs import BACKUP_DIR

log = logging.getLogger("kerastune_lab")


class Backup(keras.callbacks.Callback):
    """Backs up training to `run/backup/` and resumes from it (module docstring).

    `async_safe`: Keras may run `on_train_batch_end` in its callback threads
    (JAX, torch), so that the host does not wait for each step; there it
    only hands the step's loss to `loss_check`; the rest runs on the
    training thread.

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
        # What the run resumes from: the run's, read once; else this folder's.
        self.resume = getattr(run, "resume_state", None) or ResumeState.read(self.directory)
        found = self.resume.found
        # The copy kept as the previous one at the first backup: the one
        # resumed from, or none (then `snapshot.NEWEST`: the one written last).
        self._previous = found.entry
        self.resume.say_what_is_resumed(self.directory, getattr(run, "resumed", False))
        self.loss_check = LossCheck(kept=self._kept)
        self.phase = "train"
        self.restored = False  # the backup was restored by a fit (then it starts afresh)
        self.saved = None  # (phase, epoch, step) of the last backup written here
        self._resume = None
        self._metrics = None
        self._epoch = 0
        self._offset = 0
        self._ended_early = False
        self._torch_rng = None  # torch's generator states, put back at the first batch

    @property
    def phase(self):
        """The phase being trained: recorded in each backup, named in messages."""
        return self.loss_check.phase

    @phase.setter
    def phase(self, phase):
        self.loss_check.phase = phase

    def start(self, phase="train", first_epoch=0):
        """(epoch, step) where `phase`'s fit starts: where the backup left
        off, if it was written in `phase` and not restored yet; else
        (first_epoch, 0)."""
        if self.restored:
            return first_epoch, 0
        return self.resume.start(phase, first_epoch)

    def set_model(self, model):
        super().set_model(model)
        self.loss_check.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.loss_check.set_params(params)

    # --- Keras callback hooks ---------------------------------------------

    def on_train_begin(self, logs=None):
        signals.set_training(self)
        self._offset, self._resume, self._ended_early = 0, None, False
        self.loss_check.on_train_begin(logs)
        if not self.restored and self.resume.phase == self.phase:
            self._restore()
            self._resume = (self.resume.epoch, self.resume.step)
            log.info("resumed from the backup of %s (%s phase)",
                     describe(self.saved), self.phase)
            self.restored = True

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
        self.loss_check.start_epoch(epoch, self._offset)  # the backup's run checked those

    def on_train_batch_begin(self, batch, logs=None):
        if self._torch_rng:
            snapshot.set_torch_rng_state(self._torch_rng)
            self._torch_rng = None
        done = self._offset + batch  # steps of this epoch finished before this batch
        self._check_loss()
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
        """Runs in Keras' callback threads where Keras dispatches
        asynchronously (`async_safe`): hands the loss to `loss_check` and
        touches nothing else."""
        self.loss_check.on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self._ended_early:
            self._model.stop_training = self._ended_early = False
        self._check_loss(epoch, logs)
        self._save(epoch + 1, 0)
        if signals.pending() is not None:
            self._interrupt()

    # --- stopping, saving and restoring -----------------------------------

    def _interrupt(self):
        signum = signals.take_pending()
        log.warning("interrupted (%s): backed up %s to %s", signal.Signals(signum).name,
                    describe(self.saved), self.path)
        raise Interrupted(signum)

    def _check_loss(self, epoch=None, logs=None):
        """`loss_check`'s check (at an epoch's end: of the epoch's loss too);
        a loss not finite ends the fit, and no signal is held after it."""
        try:
            if epoch is None:
                self.loss_check.raise_if_not_finite()
            else:
                self.loss_check.on_epoch_end(epoch, logs)
        except LossNotFinite:
            signals.set_training(None)
            raise

    def _kept(self):
        if self.saved:
            return f"the backup of {describe(self.saved)} is kept in {self.path}"
        if os.path.exists(self.path):
            return f"the backup in {self.path} is kept"
        return "no backup was written"

    def _save(self, epoch, step):
        if step:  # Keras' callback threads may be a few steps behind
            self.loss_check.wait_checked(step)
            self._check_loss()
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
            raise self.loss_check.error(str(e), self._epoch,
                                        step or self.params.get("steps")) from None
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
            steps_per_epoch=self.params.get("steps"), path=self.resume.found.path)
        # torch's generators are put back at the first batch: the torch
        # backend's data loader draws from them when fit starts iterating.
        self._metrics, self._torch_rng = restored.metrics, restored.torch_rng
        state = restored.state
        self.saved = (state["phase"], state["epoch"], state["step"])
