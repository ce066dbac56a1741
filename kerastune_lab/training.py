"""Training: `fit_resumable`, the one `fit` call of every recipe, and the
callbacks it gets.

`fit_resumable(model, train, epochs, backup=backup, callbacks=[history])` is
`model.fit` started where a `resume.Backup` left off: it asks the backup for
the (epoch, step) of its phase, takes that epoch's batches from that step of a
`data.stream.Stream`, passes `initial_epoch`, and adds the backup to the
callbacks. Written once here, so that no recipe can resume with a mismatched
`initial_epoch`.

Keras' `CSVLogger` appends to its file as it goes, so a crash can leave a
half-written line; `HistoryWriter` rewrites `history.csv` atomically at each
epoch end instead, and marks each row with the phase that produced it. In a
resumed run it starts from the rows already there (a row written again, for
an epoch done again, replaces the old one).
"""

import os
import sys
import time
import warnings

import keras

# tf.data pipelines are shuffled and may drop unreadable files, so Keras'
# notes about `shuffle=` and about running out of data at an unknown
# cardinality are noise for every recipe.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed")
warnings.filterwarnings("ignore", message=r"Your input ran out of data")


def fit_verbosity():
    """Progress bars in a terminal; one line per epoch in a log or a pipe."""
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
        self.rows = []
        self._start = None
        if os.path.exists(run.file("history.csv")):  # a resumed run
            from kerastune_lab.runs import read_csv

            self.rows = read_csv(run.file("history.csv"))
            for row in self.rows:
                row["epoch"] = int(row["epoch"])

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
        self.run.write_csv("history.csv", self.rows)


def fit_resumable(model, train, epochs, backup=None, phase="train", first_epoch=0,
                  callbacks=(), **fit_kwargs):
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
    if isinstance(train, Stream):
        fit_kwargs["steps_per_epoch"] = train.steps_per_epoch
        train = train.dataset(epoch, step)
    elif step:
        raise ValueError("resuming mid-epoch needs the training data as a data.stream.Stream")
    fit_kwargs.setdefault("verbose", fit_verbosity())
    return model.fit(train, initial_epoch=epoch, epochs=epochs, callbacks=callbacks,
                     **fit_kwargs)
