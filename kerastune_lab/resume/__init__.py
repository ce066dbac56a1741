"""Back up a run as it trains, resume it after a crash, stop it cleanly.

- `backup.Backup`: the Keras callback that writes the backup and resumes
  from it, mid-epoch;
- `state.ResumeState`: what a run resumes from (the backup's phase, epoch
  and step, history.csv's rows), read once (`RunDir.resume_state`) and
  handed to whoever asks;
- `loss_check.LossCheck`: the callback that stops a fit at the first step
  whose loss is not finite (a `Backup` holds one);
- `snapshot`: the backup files, written and read back (weights, optimizer
  and metrics variables, phase, epoch and step, random states): the newest
  and the previous copy, each checked by its SHA-256 in a manifest;
- `signals`: SIGINT and SIGTERM held until the current batch ends
  (`handle_interrupts`).

The names below are the ones imported from `kerastune_lab.resume`.
"""

from kerastune_lab.errors import Interrupted, KerastuneError, LossNotFinite, RunStopped
from kerastune_lab.resume.backup import Backup
from kerastune_lab.resume.loss_check import LossCheck
from kerastune_lab.resume.signals import SIGNALS, handle_interrupts
from kerastune_lab.resume.snapshot import (
    BACKUP_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PREVIOUS_FILE,
    STATE_FILE,
    WEIGHTS,
    BackupUnreadable,
    read_state,
)
from kerastune_lab.resume.state import ResumeState

__all__ = [
    "BACKUP_FILE", "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "PREVIOUS_FILE", "SIGNALS",
    "STATE_FILE", "WEIGHTS", "Backup", "BackupUnreadable", "Interrupted", "KerastuneError",
    "LossCheck", "LossNotFinite", "ResumeState", "RunStopped", "handle_interrupts", "read_state",
]
