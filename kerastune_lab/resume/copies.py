"""A backup's two copies and their manifest: which copy is intact, and why
another is not (`choose`). The files are written by `snapshot.write`; the
layout is in `snapshot`'s docstring.
"""

import collections
import hashlib
import json
import os
import zipfile

import numpy as np

from kerastune_lab.atomic import sha256_file as _sha256
from kerastune_lab.errors import KerastuneError

BACKUP_FILE = "latest.npz"  # the newest backup: arrays and their state, one file
PREVIOUS_FILE = "previous.npz"  # the backup before it, kept as it was
MANIFEST_FILE = "manifest.json"  # each copy's SHA-256, phase, epoch, step; newest first
FORMAT = "kerastune_backup"
FORMAT_VERSION = 1
_FILES = (BACKUP_FILE, PREVIOUS_FILE)
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

# What `choose` finds: `path` and `state` of the backup to resume from (None,
# None without one), `entry` its manifest entry ({"file", "sha256", "size",
# "phase", "epoch", "step"}: pass it to `write(previous=)`), and `skipped`, the
# newer copies passed over, newest first, as `Skipped`.
Found = collections.namedtuple("Found", ["path", "state", "entry", "skipped"])
# A copy passed over: its manifest entry (None for a copy no manifest
# records), its file's name and why, in words ("latest.npz is empty").
Skipped = collections.namedtuple("Skipped", ["entry", "file", "why"])


class BackupUnreadable(KerastuneError):
    """A backup file cannot be read back (damaged, or changed since it was
    chosen): one line naming it. `why` says what is wrong, in words."""

    def __init__(self, message, why=None):
        super().__init__(message)
        self.why = why or message


def read_state(directory):
    """The state (a dict) of the backup in `directory` a run resumes from:
    the newest intact copy (`choose`). None without one.

    Raises:
        BackupUnreadable: there are backup files, but none is intact.
    """
    found = choose(directory)
    if found.path is None and found.skipped:
        first = found.skipped[0]
        raise BackupUnreadable(
            f"backup {os.path.join(os.fspath(directory), first.file)!r} cannot be read ("
            + "; ".join(s.why for s in found.skipped)
            + "): pass --overwrite to start the run again")
    return found.state


def choose(directory):
    """The backup of `directory` to resume from: the newest copy the manifest
    records whose file is intact (its size and SHA-256 as written). Never
    raises for a damaged, empty or missing file: it is passed over, and
    named in `Found.skipped`.

    A copy is looked for under either name (a crash between the two renames
    of `write` leaves the newest under `previous.npz`). Without a manifest
    (a run of an earlier version, or a manifest lost or damaged), each file,
    `latest.npz` first, is read whole: zip's CRC-32 checks every array.

    Returns:
        Found(path, state, entry, skipped).

    Raises:
        KerastuneError: a backup of another format or version.
    """
    directory = os.fspath(directory)
    entries = _read_manifest(directory)
    skipped = []
    if entries is None:
        for name in _FILES:
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                continue
            try:
                state = _read_whole(path)
            except BackupUnreadable as e:
                skipped.append(Skipped(None, name, e.why))
                continue
            entry = {"file": name, "sha256": _sha256(path), "size": os.path.getsize(path),
                     **{k: state.get(k) for k in ("phase", "epoch", "step")}}
            return Found(path, state, entry, skipped)
        return Found(None, None, None, skipped)
    digests = {}

    def intact(name, entry):
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.getsize(path) != entry["size"]:
            return False
        if name not in digests:
            try:
                digests[name] = _sha256(path)
            except OSError:
                digests[name] = None
        return digests[name] == entry["sha256"]

    for entry in entries:
        names = [entry["file"]] + [n for n in _FILES if n != entry["file"]]
        name = next((n for n in names if intact(n, entry)), None)
        if name is None:
            skipped.append(Skipped(entry, entry["file"], _why(directory, entry)))
            continue
        path = os.path.join(directory, name)
        try:
            state = _read_state_of(path)
        except BackupUnreadable as e:
            skipped.append(Skipped(entry, name, e.why))
            continue
        return Found(path, state, dict(entry, file=name), skipped)
    return Found(None, None, None, skipped)


def _digest_of(backups):
    return hashlib.sha256(json.dumps(backups, sort_keys=True).encode()).hexdigest()


def _error(e):
    """An exception in words, on one line."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fsync_directory(directory):
    """Flushes `directory`'s entries (its renames) to the disk (POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders
    finally:
        os.close(fd)


def _not_ours(path):
    return KerastuneError(f"backup {path!r} is not a kerastune backup of version "
                          f"{FORMAT_VERSION}: pass --overwrite to start the run again")


def _read_manifest(directory):
    """The manifest's entries, newest first; None without a manifest, or
    with one that is damaged (its own SHA-256 does not match).

    Raises:
        KerastuneError: the manifest of another format or version.
    """
    path = os.path.join(directory, MANIFEST_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):  # none, or not JSON
        return None
    if not isinstance(manifest, dict):
        return None
    if (manifest.get("format"), manifest.get("version")) != (FORMAT, FORMAT_VERSION):
        if manifest.get("format") == FORMAT:
            raise _not_ours(path)
        return None
    backups = manifest.get("backups")
    try:
        if manifest.get("sha256") != _digest_of(backups):
            return None
    except (TypeError, ValueError):
        return None
    if not isinstance(backups, list) or not all(
            isinstance(e, dict) and e.get("file") in _FILES and isinstance(e.get("sha256"), str)
            and isinstance(e.get("size"), int) for e in backups):
        return None
    return backups


def _newest(directory):
    """The manifest's entry of the newest copy still there, its file as found
    now, or None. An entry's own file is matched by size (its checksum was
    checked when it was written or chosen); a file under the other name (a
    crash between the two renames of `write`, or a copy deleted since) by
    its SHA-256 too: two copies of one model have the same size."""
    for entry in _read_manifest(directory) or ():
        for name in [entry["file"]] + [n for n in _FILES if n != entry["file"]]:
            path = os.path.join(directory, name)
            if not os.path.isfile(path) or os.path.getsize(path) != entry["size"]:
                continue
            try:
                if name == entry["file"] or _sha256(path) == entry["sha256"]:
                    return dict(entry, file=name)
            except OSError:
                continue
    return None


def _why(directory, entry):
    """Why the copy of manifest entry `entry` is not intact, in words."""
    name = entry["file"]
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return f"{name} is missing"
    size = os.path.getsize(path)
    if size == 0:
        return f"{name} is empty"
    if size != entry["size"]:
        return f"{name} has {size} bytes, {entry['size']} were written"
    return f"{name} does not match its SHA-256"


def _read_state_of(path, whole=False):
    """The state in the backup file `path` (format and version checked); with
    `whole`, every array is read too (zip checks each one's CRC-32).

    Raises:
        BackupUnreadable: the file cannot be read.
        KerastuneError: a backup of another format or version.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            state = json.loads(str(f["state"]))
            if whole:
                for key in f.files:
                    f[key]
    except _READ_ERRORS as e:
        why = f"{os.path.basename(path)} cannot be read ({_error(e)})"
        raise BackupUnreadable(f"backup {path!r} cannot be read ({_error(e)})", why) from None
    if not isinstance(state, dict) or (state.get("format"), state.get("version")) != (
            FORMAT, FORMAT_VERSION):
        raise _not_ours(path)
    return state


def _read_whole(path):
    return _read_state_of(path, whole=True)
