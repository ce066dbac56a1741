"""Training: `fit_resumable`, the one `fit` call of every recipe, and the
callbacks it gets.

`fit_resumable(model, train, epochs, backup=backup, callbacks=[history])` is
`model.fit` started where a `resume.Backup` left off: it asks the backup for
the (epoch, step) of its phase, takes that epoch's batches from that step of a
`data.stream.Stream`, passes `initial_epoch`, and adds the backup to the
callbacks. Written once here, so that no recipe can resume with a mismatched
`initial_epoch`.

`run_settings(config, run)` is what the runner decides for a recipe run, once,
as one `settings.RunSettings` handed to the recipe as `run.settings`:
- the dtype policy of the config's `precision` ("auto" picks it from the
  accelerator: `backend.auto_precision`; a resumed run keeps the one it
  started in), recorded in `config.json` and the log; the runner sets it
  around `main` with `dtype_policy` and puts the previous one back;
- the `jit_compile` of the config's key (`choose_jit_compile`), which the
  recipe passes to the compile helpers
  (`finetune.two_phase.compile_classifier`, `finetune.causal_lm.compile_causal_lm`);
- the run's `tensorboard/` folder, which the recipe passes to
  `fit_resumable(tensorboard=...)`: scalars per epoch (`epoch_loss`, ...,
  `epoch_learning_rate`, validation in `validation/`) and about 50 times an
  epoch (`batch_loss`, ...). Their steps count the batches of the whole
  run, so a second phase or a resumed run continues the curves.
No setting is read from a module global: a notebook making the same calls
with the same arguments trains the same way.

Keras' `CSVLogger` appends to its file as it goes, so a crash can leave a
half-written line; `HistoryWriter` rewrites `history.csv` atomically at each
epoch end instead, and marks each row with the phase that produced it. In a
resumed run it starts from the rows already there (a row written again, for
an epoch done again, replaces the old one).
"""

import contextlib
import logging
import sys
import threading
import time
import warnings

import keras

from kerastune_lab import backend
from kerastune_lab.errors import KerastuneError
from kerastune_lab.in_order import InOrder
from kerastune_lab.runs import CONFIG, HISTORY, TENSORBOARD_DIR

log = logging.getLogger("kerastune_lab")

# tf.data pipelines are shuffled, so Keras' note about `shuffle=` is noise
# for every recipe. (Keras' "Your input ran out of data" is not hidden: every
# dataset of `kerastune_lab.data` has a known number of batches.)
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")


def fit_verbosity():
    """Progress bars in a terminal; one line per epoch in a log or a pipe;
    none in processes other than 0 of several (`processes`): process 0's
    figures are the run's."""
    from kerastune_lab.processes import process_index

    if process_index():
        return 0
    return 1 if sys.stdout.isatty() else 2


class HistoryWriter(keras.callbacks.Callback):
    """Keeps one row per epoch and rewrites `history.csv` after each.

    Args:
        run: RunDir. Where `history.csv` goes.
        phase: str. Written in the `phase` column. Set it between `fit` calls.
    """

    def __init__(self, run, phase="train"):
        super().__init__()
        self.run = run
        self.phase = phase
        # A resumed run's rows so far, from its resume state (read once).
        self.rows = [dict(row) for row in run.resume_state.history]
        self._start = None

    def last(self, phase):
        """The last row of `phase` (a dict), or None."""
        return next((r for r in reversed(self.rows) if r["phase"] == phase), None)

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "phase": self.phase}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["seconds"] = round(time.perf_counter() - self._start, 3)
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        self.run.write_csv(HISTORY, self.rows)


class ReplicatedValidation(keras.callbacks.Callback):
    """The validation of a `fit` under a `keras.distribution`: at each epoch
    end, `model.evaluate(data)` with each batch whole on every device
    (`distribute.replicated_inputs`), its figures added to the epoch's logs
    as `val_*` for the callbacks after it (history.csv, backups,
    TensorBoard, the progress line). Keras' own validation would split every
    batch over the devices, and JAX refuses a last batch of an odd size.

    Args:
        data: the validation data: a dataset, or an `(x, y)` tuple.
    """

    def __init__(self, data):
        super().__init__()
        self.data = data

    def on_epoch_end(self, epoch, logs=None):
        from kerastune_lab.distribute import replicated_inputs

        data = self.data if isinstance(self.data, tuple) else (self.data,)
        with replicated_inputs():
            results = self.model.evaluate(*data, verbose=0, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})


JIT_COMPILE = ("auto", "true", "false")  # the values of a recipe's `jit_compile` key
# What "auto" means on torch: eager. torch.compile (jit_compile=True) won on
# no recipe model enough to pay its minutes of compiling per process (ResNet
# 1.2x, the others even or slower on a CPU; README, "The torch backend
# beside plain torch").
TORCH_AUTO_JIT_COMPILE = False


def choose_jit_compile(requested="auto", backend_name=None):
    """The `jit_compile` argument of the recipes' `model.compile`.

    "auto" is Keras' own "auto" on jax and tensorflow (XLA where Keras
    supports it; tensorflow keeps it off on a CPU) and `TORCH_AUTO_JIT_COMPILE`
    on torch. "true" / "false" (or a bool) is the user's choice, passed on.

    Args:
        requested: "auto", "true", "false" (a recipe's `jit_compile` key) or
            a bool.
        backend_name: str or None. Defaults to Keras' backend.

    Returns:
        True, False or "auto".
    """
    if isinstance(requested, bool):
        return requested
    if requested not in JIT_COMPILE:
        raise KerastuneError(f"jit_compile={requested!r}: expected one of "
                             + ", ".join(JIT_COMPILE))
    if requested != "auto":
        return requested == "true"
    if (backend_name or keras.config.backend()) == "torch":
        return TORCH_AUTO_JIT_COMPILE
    return "auto"


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, scalars only, whose batch-level steps are
    the run's: `first_step` (epoch * steps per epoch + step where the fit
    starts) plus the batches since, where Keras' own counts from 0 at each
    `fit`. It does no work on the batches it does not record (Keras' own
    switches its writers at every batch).

    `async_safe` (as `resume.Backup`): where Keras runs `on_train_batch_end`
    in its callback threads (several at once, in any order), so that the host
    does not wait for each step, it only notes the step's figures there, in
    an `in_order.InOrder`; the training thread writes those released in step
    order, as the next batch begins and at each epoch's end. In Keras' own
    thread it writes at once. Each write is flushed: a fit stopped by an
    exception (Ctrl-C, a loss not finite) never reaches `on_train_end`.

    Args:
        log_dir: str. The folder of the event files (`train/`, `validation/`).
        update_freq: int. Write batch-level scalars every this many steps.
        first_step: int. The run's step before the fit's first batch.
    """

    async_safe = True  # read by Keras' CallbackList: see the class docstring

    def __init__(self, log_dir, update_freq=10, first_step=0):
        # "epoch" for Keras' part: epoch scalars only, no writer switching.
        super().__init__(log_dir, write_graph=False, update_freq="epoch")
        self.every = update_freq
        self.first_step = first_step
        self._steps = InOrder(done=first_step)  # every step, noted in any order
        self._points = []  # (step, logs) released in order, not yet written
        self._lock = threading.Lock()
        self._epoch_base = first_step
        self._thread = None

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._global_train_batch = self.first_step
        self._steps, self._points = InOrder(done=self.first_step), []
        self._thread = threading.get_ident()

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._epoch_base = self._global_train_batch

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        self._write()

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_base + batch + 1
        with self._lock:
            for step, noted in self._steps.note(step, None if step % self.every
                                                else dict(logs or {})):
                if noted is not None:
                    self._points.append((step, noted))
        if threading.get_ident() == self._thread:
            self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()  # Keras has run every batch's callbacks by now
        super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        self._write()
        super().on_train_end(logs)

    def _write(self):
        with self._lock:
            ready, self._points = self._points, []
        if not ready:
            return
        with self._train_writer.as_default():
            for step, logs in ready:
                for name, value in logs.items():
                    self.summary.scalar(f"batch_{name}", value, step=step)
        self._train_writer.flush()


def tensorboard_callback(log_dir, epoch=0, step=0, steps_per_epoch=None):
    """A `TensorBoard` writing about 50 batch-level points an epoch (every
    step on short epochs; every 10 steps when the epoch's length is unknown)."""
    every = max(1, steps_per_epoch // 50) if steps_per_epoch else 10
    return TensorBoard(log_dir, every, epoch * (steps_per_epoch or 0) + step)


def _precision(config, run):
    """(policy, why) for the run from `config.precision`; None without the key."""
    requested = getattr(config, "precision", None)
    if requested is None:
        return None
    recorded = run.read_json(CONFIG).get("precision") if run.resumed else None
    if recorded:  # a resumed run goes on in the precision it started in
        return recorded, "the precision the run started in"
    return backend.choose_precision(requested, backend.accelerators(),
                                    getattr(config, "quantize", "none"))


def run_settings(config, run):
    """The `settings.RunSettings` of a recipe run: the dtype policy of
    `config.precision` (recorded in config.json as "precision" and
    "accelerator", and logged), the `jit_compile` of `config.jit_compile`
    (where the config has these keys), and the run's TensorBoard folder.

    Args:
        config: the recipe's Config.
        run: RunDir.
    """
    from kerastune_lab.settings import RunSettings

    policy = None
    chosen = _precision(config, run)
    if chosen is not None:
        policy, why = chosen
        accelerator = backend.describe(backend.accelerators())
        log.info("precision: %s (%s); accelerator: %s", policy, why, accelerator)
        run.update_json(CONFIG, precision=policy, accelerator=accelerator)
    return RunSettings(precision=policy,
                       jit_compile=choose_jit_compile(getattr(config, "jit_compile", "auto")),
                       tensorboard=run.file(TENSORBOARD_DIR))


@contextlib.contextmanager
def dtype_policy(policy):
    """Keras' global dtype policy set to `policy` (a name; None leaves it)
    inside the block, the previous one put back after it."""
    previous = keras.mixed_precision.global_policy()
    try:
        if policy is not None:
            keras.mixed_precision.set_global_policy(policy)
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def fit_resumable(model, train, epochs, backup=None, phase="train", first_epoch=0,
                  callbacks=(), tensorboard=None, whole_batches=False, **fit_kwargs):
    """`model.fit` of one phase, from where `backup` left off in it.

    Args:
        model: a compiled Keras model.
        train: a `data.stream.Stream` (resumable mid-epoch), or anything
            `model.fit` takes (resumable at epoch ends only).
        epochs: int. The epoch to stop after, counted over all phases (as
            Keras' `epochs=`).
        backup: a `resume.Backup`, or None. Added to the callbacks; the fit
            starts at its (epoch, step) when it was written in `phase`.
        phase: str. The phase's name, recorded by the backup and set as the
            `phase` of each callback that has one (a `HistoryWriter` writes it
            into `history.csv`).
        first_epoch: int. Where the phase starts without a backup.
        callbacks: list of Keras callbacks.
        tensorboard: str or None. A folder for TensorBoard logs
            (`TensorBoard`; a recipe passes `run.settings.tensorboard`), None
            for none.
        whole_batches: bool. Under a `keras.distribution`: every batch of
            `validation_data` splits evenly over the devices (e.g.
            `distribute.fill_windows`), so Keras' own validation runs split;
            else it runs with each batch whole on every device
            (`ReplicatedValidation`).
        **fit_kwargs: for `model.fit` (`validation_data`, `class_weight`,
            `y`, ...). `verbose` defaults to `fit_verbosity()`.

    Returns:
        The Keras `History`.
    """
    from kerastune_lab.data.stream import Stream

    callbacks = list(callbacks)
    for callback in callbacks:
        if hasattr(callback, "phase"):  # HistoryWriter: the phase column
            callback.phase = phase
    epoch, step = (first_epoch, 0)
    if backup is not None:
        backup.phase = phase
        callbacks.append(backup)
        epoch, step = backup.start(phase, first_epoch)
        if epoch >= epochs:  # e.g. a script run a second time: say so, not 0 epochs silently
            log.warning("phase %r is trained already: the backup in %s is at epoch %d of "
                        "%d, so nothing is left to train. To train again, use another "
                        "folder or remove that one", phase, backup.directory, epoch, epochs)
    if isinstance(train, Stream):
        fit_kwargs["steps_per_epoch"] = train.steps_per_epoch
        train = train.dataset(epoch, step)
    elif step:
        raise ValueError("resuming mid-epoch needs the training data as a data.stream.Stream "
                         "(a loader's `data.train_stream`)")
    if tensorboard:  # first: a later callback may stop the fit at a batch's end
        callbacks.insert(0, tensorboard_callback(tensorboard, epoch, step,
                                                 fit_kwargs.get("steps_per_epoch")))
    fit_kwargs.setdefault("verbose", fit_verbosity())
    if fit_kwargs.get("validation_data") is not None and keras.distribution.distribution():
        if whole_batches:  # every batch splits over the devices (of every process)
            from kerastune_lab.distribute import own_rows

            fit_kwargs["validation_data"] = own_rows(fit_kwargs["validation_data"])
        else:  # first, so that every callback after it sees val_* in the logs
            callbacks.insert(0, ReplicatedValidation(fit_kwargs.pop("validation_data")))
    if hasattr(train, "element_spec"):  # a tf.data pipeline, shuffled already (a Stream's is)
        fit_kwargs.setdefault("shuffle", False)  # else Keras warns that it ignores shuffle=True
    return model.fit(train, initial_epoch=epoch, epochs=epochs, callbacks=callbacks,
                     **fit_kwargs)
