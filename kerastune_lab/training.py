"""Callbacks that every recipe's `fit` gets.

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


def callbacks(run, history, phase, backup=None, extra=()):
    """Returns the callbacks for one `fit` call of phase `phase`: `history`,
    then `backup` (a `resume.Backup`, or None) and `extra`."""
    history.phase = phase
    if backup is None:
        return [history, *extra]
    backup.phase = phase
    return [history, backup, *extra]
