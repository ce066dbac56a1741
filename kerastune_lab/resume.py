"""Back up a run as it trains, resume it after a crash, stop it cleanly.

    backup = Backup(run, save_every_steps=50)   # reads run/backup/ if a crash left one
    epoch, step = backup.start("train")         # (0, 0), or where the backup left off
    model.fit(stream.dataset(epoch, step), steps_per_epoch=stream.steps_per_epoch,
              initial_epoch=epoch, epochs=5, callbacks=[backup])

Keras' `BackupAndRestore` restores weights and optimizer but restarts an
interrupted epoch from its first batch, writes its files in place (a crash
while writing leaves a broken backup), and saves weights through each
layer's `save_own_variables`, which in Keras' LoRA layers merges the adapter
into the kernel (re-quantizing an int8 one): resumed, it would train fresh
zero adapters on a changed base. `Backup` writes one file, atomically
(`runs.atomic_path`), at each epoch end and every `save_every_steps` steps:

- the model's variables (`weights="all"`), or only its trainable ones and
  its seed states (`weights="trainable"`: a LoRA adapter, not the frozen
  base), read directly, never merged;
- the optimizer's variables (step count, moments);
- mid-epoch, the metrics' variables, so the epoch's logged figures match;
- the phase, the epoch and the step in it, and the random states (Keras'
  global seed generator, numpy's, Python's, and on torch torch's own).

It resumes mid-epoch. With a `data.stream.Stream`, whose batches are a
function of (seed, epoch, step), `start` says where the data starts; the
callback ends the resumed epoch after the batches it was missing (it sets
`stop_training` at that batch and clears it at the epoch's end, so `fit`
goes on with the next epoch): the resumed run takes the same path as an
uninterrupted one.

It also stops a run cleanly, keeping the last backup good:

- a loss that is not finite raises `LossNotFinite` (epoch and step named)
  before anything is saved;
- SIGINT or SIGTERM under `handle_interrupts` (as `kerastune run` does) is
  held until the current batch ends: the backup is written, then
  `Interrupted` is raised (exit code 130 or 143). A second signal stops at
  once; so does one that comes when no `Backup` is training.
"""

import contextlib
import datetime
import json
import logging
import math
import os
import random
import signal
import threading
import zipfile

import keras
import numpy as np

from kerastune_lab.errors import Interrupted, KerastuneError, LossNotFinite, RunStopped  # noqa: F401
from kerastune_lab.runs import BACKUP_DIR, atomic_path, write_json

log = logging.getLogger("kerastune_lab")

BACKUP_FILE = "latest.npz"  # arrays and their state, one file
STATE_FILE = "state.json"  # a readable copy of the state, written after BACKUP_FILE
FORMAT = "kerastune_backup"
FORMAT_VERSION = 1
WEIGHTS = ("all", "trainable")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Tests only: "KILL@5" (or INT, TERM) sends that signal to this process at the
# end of its 5th training batch (counted over every fit of the process).
TEST_SIGNAL_ENV = "KERASTUNE_TEST_SIGNAL"


class _Signals:
    installed = False  # handle_interrupts is active
    training = None  # the Backup callback whose fit is running
    pending = None  # a signal held until the end of the batch
    batches = 0  # batches trained in this process (test hook)


def _on_signal(signum, frame):
    if _Signals.training is not None and _Signals.pending is None:
        _Signals.pending = signum
        log.warning("%s: stopping after this batch, once the backup is written "
                    "(again to stop at once)", signal.Signals(signum).name)
        return
    _Signals.training = None
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_interrupts():
    """While active, SIGINT and SIGTERM raise `Interrupted`; during a `fit`
    with a `Backup` callback, at the end of the current batch, after a backup.
    (Outside the main thread, signals cannot be handled: does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _Signals.installed, _Signals.pending = True, None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Signals.installed, _Signals.pending, _Signals.training = False, None, None


def _test_hook():
    spec = os.environ.get(TEST_SIGNAL_ENV)
    if not spec:
        return
    _Signals.batches += 1
    name, _, after = spec.partition("@")
    if _Signals.batches == int(after):
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))


def read_state(directory):
    """The state of the backup in `directory` (a dict), or None without one."""
    path = os.path.join(os.fspath(directory), BACKUP_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            state = json.loads(str(f["state"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise KerastuneError(f"backup {path!r} cannot be read ({type(e).__name__}): pass "
                             "--overwrite to start the run again") from None
    if state.get("format") != FORMAT or state.get("version") != FORMAT_VERSION:
        raise KerastuneError(f"backup {path!r} is not a kerastune backup of version "
                             f"{FORMAT_VERSION}: pass --overwrite to start the run again")
    return state


def _to_numpy(variable):
    value = np.asarray(keras.ops.convert_to_numpy(variable))
    if value.dtype.kind not in "biuf":  # bfloat16 and other extension dtypes
        value = value.astype("float32")  # exact; assign casts back
    return value


def _check(what, saved, variables, file, path):
    """Checks the backed-up `saved` [path, shape] pairs against `variables`
    by count and shape (auto-made names such as "adam_2" may differ)."""
    here = [[v.path, list(v.shape)] for v in variables]
    wrong = (f"{len(saved)} there, {len(here)} here" if len(saved) != len(here) else
             next((f"{a[0]!r} {tuple(a[1])} there, {b[0]!r} {tuple(b[1])} here"
                   for a, b in zip(saved, here) if list(a[1]) != b[1]), None))
    if wrong:
        raise KerastuneError(f"backup {path!r} does not match this model's {what} "
                             f"variables ({wrong}): pass --overwrite to start again")
    return [file[f"{what}.{i}"] for i in range(len(here))]


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
    several; `training.callbacks` does.

    Example:
    ```python
    backup = Backup("runs/mine", save_every_steps=100)
    epoch, step = backup.start("train")
    model.fit(stream.dataset(epoch, step), steps_per_epoch=stream.steps_per_epoch,
              initial_epoch=epoch, epochs=3, callbacks=[backup])
    ```
    """

    def __init__(self, run, save_every_steps=0, weights="all"):
        super().__init__()
        if (isinstance(save_every_steps, bool) or not isinstance(save_every_steps, int)
                or save_every_steps < 0):
            raise KerastuneError(f"save_every_steps={save_every_steps!r}: expected 0 (epoch "
                                 "ends only) or a positive number of steps")
        if weights not in WEIGHTS:
            raise KerastuneError(f"Backup weights={weights!r}: expected one of {WEIGHTS}")
        self.directory = run.file(BACKUP_DIR) if hasattr(run, "file") else os.fspath(run)
        self.path = os.path.join(self.directory, BACKUP_FILE)
        self.save_every_steps = save_every_steps
        self.weights = weights
        self.phase = "train"
        self.state = read_state(self.directory)  # what a resumed run starts from
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
        _Signals.training = self
        self._offset, self._resume, self._ended_early = 0, None, False
        if self.state and self.state["phase"] == self.phase:
            self._restore()
            self._resume = (self.state["epoch"], self.state["step"])
            log.info("resumed from the backup of %s (%s phase)",
                     self._describe(self.saved), self.phase)
            self.state = None

    def on_train_end(self, logs=None):
        _Signals.training = None

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
            _set_torch_rng_state(self._torch_rng)
            self._torch_rng = None

    def on_train_batch_end(self, batch, logs=None):
        step = self._offset + batch + 1
        self._check_loss(logs, step)
        steps = self.params.get("steps")
        last = bool(steps) and step >= steps
        if self.save_every_steps and step % self.save_every_steps == 0 and not last:
            self._save(self._epoch, step)
        _test_hook()
        if _Signals.pending is not None and not last:
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
        if _Signals.pending is not None:
            self._interrupt()

    # --- saving and restoring ---------------------------------------------

    def _interrupt(self):
        signum, _Signals.pending, _Signals.training = _Signals.pending, None, None
        log.warning("interrupted (%s): backed up %s to %s", signal.Signals(signum).name,
                    self._describe(self.saved), self.path)
        raise Interrupted(signum)

    def _check_loss(self, logs, step):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        _Signals.training = None
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

    def _variables(self, model):
        if self.weights == "all":
            return list(model.variables)
        seeds = [v for v in model.non_trainable_variables
                 if v.path.endswith("seed_generator_state")]
        return list(model.trainable_variables) + seeds

    def _save(self, epoch, step):
        model = self.model  # with jax, this syncs the training state back to the model
        variables = self._variables(model)
        optimizer = list(model.optimizer.variables) if model.optimizer else []
        metrics = list(model.metrics_variables) if step else []
        arrays = {}
        for group, values in (("model", variables), ("optimizer", optimizer),
                              ("metrics", metrics)):
            for i, variable in enumerate(values):
                arrays[f"{group}.{i}"] = value = _to_numpy(variable)
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    # Never replace a good backup with NaN or infinite weights.
                    _Signals.training = None
                    raise LossNotFinite(
                        f"{group} variable {variable.path!r} is not finite at epoch "
                        f"{self._epoch + 1}, step {step or self.params.get('steps')} "
                        f"({self.phase} phase): training stopped; {self._kept()}")
        _, python_state, python_gauss = random.getstate()
        rng = {"python": [list(python_state), python_gauss]}
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        arrays["rng.numpy"] = keys
        rng["numpy"] = [int(pos), int(has_gauss), float(gauss)]
        generator = _global_seed_generator()
        if generator is not None:
            arrays["rng.keras"] = _to_numpy(generator.state)
        arrays.update(_torch_rng_state())
        state = {
            "format": FORMAT, "version": FORMAT_VERSION,
            "phase": self.phase, "epoch": epoch, "step": step,
            "steps_per_epoch": self.params.get("steps"), "weights": self.weights,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "model": [[v.path, list(v.shape)] for v in variables],
            "optimizer": [[v.path, list(v.shape)] for v in optimizer],
            "metrics": [[v.path, list(v.shape)] for v in metrics],
            "rng": rng,
        }
        arrays["state"] = np.asarray(json.dumps(state))
        os.makedirs(self.directory, exist_ok=True)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
        write_json(os.path.join(self.directory, STATE_FILE),
                   {k: v for k, v in state.items() if k != "rng"})
        self.saved = (self.phase, epoch, step)

    def _restore_metrics(self):
        """Puts back the metrics' running totals of the resumed epoch, so its
        logged figures count all its batches. With TensorFlow, compiled
        metrics are built only by the first step: then they count the
        batches after the backup only."""
        saved, values = self._metrics or ((), ())
        variables = list(self.model.metrics_variables)
        if [list(s[1]) for s in saved] != [list(v.shape) for v in variables]:
            log.info("the metrics of the resumed epoch count the batches after the backup")
            return
        for variable, value in zip(variables, values):
            variable.assign(value)

    def _restore(self):
        model = self.model
        optimizer = model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(model.trainable_variables)
        with np.load(self.path, allow_pickle=False) as f:
            state = json.loads(str(f["state"]))
            steps = self.params.get("steps")
            if steps and state["steps_per_epoch"] and steps != state["steps_per_epoch"]:
                raise KerastuneError(
                    f"backup {self.path!r} has {state['steps_per_epoch']} steps an epoch, "
                    f"this run {steps}: pass --overwrite to start again")
            groups = [("model", self._variables(model))]
            if optimizer is not None:
                groups.append(("optimizer", list(optimizer.variables)))
            for what, variables in groups:
                for variable, value in zip(variables, _check(what, state[what], variables, f,
                                                             self.path)):
                    variable.assign(value)
            self._metrics = None
            if state["metrics"]:
                self._metrics = (state["metrics"],
                                 [f[f"metrics.{i}"] for i in range(len(state["metrics"]))])
            pos, has_gauss, gauss = state["rng"]["numpy"]
            np.random.set_state(("MT19937", f["rng.numpy"], pos, has_gauss, gauss))
            python_state, python_gauss = state["rng"]["python"]
            random.setstate((3, tuple(python_state), python_gauss))
            generator = _global_seed_generator()
            if generator is not None and "rng.keras" in f.files:
                generator.state.assign(f["rng.keras"])
            # Put back at the first batch: the torch backend's data loader
            # draws from torch's generator when fit starts iterating.
            self._torch_rng = {k: f[k] for k in ("rng.torch", "rng.torch_cuda") if k in f.files}
        self.saved = (state["phase"], state["epoch"], state["step"])


def _global_seed_generator():
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("global_seed_generator")



def _torch_rng_state():
    """Torch's global generators, as arrays: on the torch backend, layers
    without a seed of their own (Keras' Dropout among them) draw from them."""
    if keras.backend.backend() != "torch":
        return {}
    import torch

    arrays = {"rng.torch": torch.get_rng_state().numpy()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        arrays["rng.torch_cuda"] = np.stack([s.numpy() for s in torch.cuda.get_rng_state_all()])
    return arrays


def _set_torch_rng_state(f):
    import torch

    torch.set_rng_state(torch.from_numpy(f["rng.torch"]))
    if "rng.torch_cuda" in f and torch.cuda.is_available():
        states = f["rng.torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.from_numpy(s) for s in states])
