"""`ResumeState`: where a run resumes, read once when its folder is opened.

    state = run.resume_state        # RunDir: read on first use, then kept
    state.phase, state.epoch, state.step   # of the backup (None, 0, 0: none)
    state.history                   # history.csv's rows, for HistoryWriter
    state.start("finetune", 2)      # (epoch, step) where that phase's fit starts
    state.past("head", ["head", "finetune"])  # the backup is of a later phase

One object answers every question about the resume; `resume.Backup` (which
restores the weights from `state.found`), `training.HistoryWriter` (the rows
already written), `training.fit_resumable` (where the data starts) and
`finetune.two_phase.Phases` (which phases are done) are handed it, instead of
each reading the files again.
"""

import dataclasses
import logging
import os

from kerastune_lab.resume import snapshot

log = logging.getLogger("kerastune_lab")


def describe(saved):
    """A backup's place in words, from (phase, epoch, step): "epoch 2, step 3"
    or "the end of epoch 1"."""
    _, epoch, step = saved
    return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"


def describe_copy(entry):
    """A copy named by its manifest entry: "epoch 2, step 1 (finetune phase)"."""
    try:
        where = describe((None, int(entry["epoch"]), int(entry["step"])))
        return f"{where} ({entry['phase']} phase)"
    except (KeyError, TypeError, ValueError):
        return entry.get("file", "?")


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """What a run resumes from (module docstring).

    Attributes:
        found: `snapshot.Found`. The backup chosen (`path` None: none), its
            manifest entry and the damaged copies passed over.
        history: list of dict. The rows of `history.csv` (epoch an int).
    """

    found: snapshot.Found
    history: tuple = ()

    @classmethod
    def read(cls, backup_dir, history_csv=None):
        """Reads the backup in `backup_dir` (the newest intact copy) and the
        rows of `history_csv` where it exists."""
        rows = ()
        if history_csv is not None and os.path.exists(history_csv):
            from kerastune_lab.atomic import read_csv

            rows = tuple(dict(row, epoch=int(row["epoch"])) for row in read_csv(history_csv))
        return cls(snapshot.choose(backup_dir), rows)

    @property
    def phase(self):
        """The phase the backup was written in; None without a backup."""
        return self.found.state["phase"] if self.found.state else None

    @property
    def epoch(self):
        return self.found.state["epoch"] if self.found.state else 0

    @property
    def step(self):
        return self.found.state["step"] if self.found.state else 0

    def start(self, phase="train", first_epoch=0):
        """(epoch, step) where `phase`'s fit starts: where the backup left
        off, if it was written in `phase`; else (first_epoch, 0)."""
        if self.phase == phase:
            return self.epoch, self.step
        return first_epoch, 0

    def past(self, phase, order):
        """Whether the backup is of a phase after `phase` in `order` (then
        `phase`'s result is in the backup: it is not trained again)."""
        return (self.phase in order and phase in order
                and order.index(self.phase) > order.index(phase))

    def say_what_is_resumed(self, directory, resumed):
        """Logs a line where the run does not resume from its newest backup
        in `directory`: a damaged one passed over, or none to resume from
        (`resumed`: the run was asked to resume)."""
        found = self.found

        def copy(skipped):
            return (f"backup of {describe_copy(skipped.entry)}" if skipped.entry
                    else f"backup {skipped.file}")

        if found.path is not None:
            for skipped in found.skipped:
                log.warning("%s is damaged (%s): resuming from the previous backup, of %s",
                            copy(skipped), skipped.why, describe_copy(found.entry))
        elif found.skipped:
            log.warning("no usable backup in %s (%s): starting over from epoch 1",
                        directory, "; ".join(f"{copy(s)}: {s.why}" for s in found.skipped))
        elif resumed:
            log.warning("no backup in %s (none was written before the run stopped, or it was "
                        "deleted): starting over from epoch 1", directory)
