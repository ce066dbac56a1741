"""What keeps a run folder safe: only runs are replaced, one writer at a time,
and only where the disk can take it.

`is_run` tells a run of this toolkit (it holds `MARKER`, written when the
folder is made, or is a run of an earlier version) from a folder of the
user's own, which a run never writes into or replaces (`check_not_foreign`).

`RunLock` holds an OS file lock on the folder's `.lock` file (with the
holder's PID) from `RunDir.create` to the end of the run; a second process
is refused with one line naming the first one's PID. The OS frees the lock
when the process dies, however it dies, so a `kill -9` never leaves a stale
lock behind.

`check_writable` refuses a run folder that cannot be written, or whose disk
is nearly full, before anything trains; `_resumable` an unfinished run of
another recipe, backend or config.

The names of a run's files are `runs.py`'s; the few this module looks for
are defined here (it cannot import `runs`, which imports it) and re-exported
there.
"""

import errno
import json
import logging
import os
import shutil
import time

from kerastune_lab.atomic import _jsonable
from kerastune_lab.errors import KerastuneError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

LOCK_FILE = ".lock"  # locked while a process writes the run (`RunLock`)
# Written when a run folder is created: only a folder holding it (or a run of
# an earlier version, see `is_run`) is a run that --overwrite may replace. Not
# a dot-file: a finished run holds no hidden files (those are temporaries).
MARKER = "kerastune_run.json"
# The marks an earlier version's run holds (see `is_run`).
FINISHED, FAILED, BACKUP_DIR = "FINISHED", "FAILED", "backup"
CONFIG, LOG, EVALUATION = "config.json", "log.txt", "evaluation.json"
# A run directory is refused when its disk has less free space than this (MB);
# the environment variable KERASTUNE_MIN_FREE_MB overrides it.
MIN_FREE_MB = 100


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_run(path):
    """Whether the folder `path` is a run (or an evaluation) made by this
    toolkit: one that holds `MARKER`, or a run of an earlier version.

    Runs made before the marker existed count when they hold what only
    `RunDir` and `run_recipe` wrote together: a `config.json` beside one of
    the marks only `RunDir` writes, `FINISHED`, `FAILED` or `backup/`; a
    `config.json` as `run_recipe` writes it (a JSON object with "recipe"
    and "config") beside `log.txt` (an unfinished run killed before its
    first backup); or an `evaluation.json` beside `FINISHED` (an `eval-NAME`
    folder of `kerastune evaluate`). A user's own folder is very unlikely
    to hold such a pair, while refusing them would leave the runs of
    earlier versions impossible to resume or to replace with --overwrite.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, MARKER)):
        return True
    finished = os.path.exists(os.path.join(path, FINISHED))
    if os.path.isfile(os.path.join(path, CONFIG)):
        if finished or os.path.exists(os.path.join(path, FAILED)) or os.path.isdir(
                os.path.join(path, BACKUP_DIR)):
            return True
        config = _read_json(os.path.join(path, CONFIG))
        if (os.path.isfile(os.path.join(path, LOG)) and isinstance(config, dict)
                and "recipe" in config and isinstance(config.get("config"), dict)):
            return True
    return finished and os.path.isfile(os.path.join(path, EVALUATION))


def _contents(path):
    """The names in the folder `path`, its lock file left out (empty when
    `path` is not a folder)."""
    try:
        return sorted(name for name in os.listdir(path) if name != LOCK_FILE)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _describe(path, names, most=2):
    """"thesis.txt and 2 more": what the folder holds, on one line."""
    shown = []
    for name in names[:most]:
        name += "/" if os.path.isdir(os.path.join(path, name)) else ""
        shown.append(name if name.isprintable() else repr(name))
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def check_not_foreign(path, overwrite=False):
    """Raises a one-line `KerastuneError` when the folder `path` holds files
    but is not a run (`is_run`): a run never writes into, nor replaces, a
    folder of the user's own. A missing or empty folder is fine."""
    path = os.fspath(path)
    names = _contents(path)
    if not names or is_run(path):
        return
    fix = ("choose another --output-dir; --overwrite replaces only run folders" if overwrite
           else "choose another --output-dir (a new or empty folder)")
    raise KerastuneError(f"output dir {path!r} is not a kerastune run (it holds "
                         f"{_describe(path, names)}): {fix}")


def holds_files(path):
    """Whether the folder `path` holds anything but its lock file."""
    return bool(_contents(path))


def _in_use(path, pid):
    return KerastuneError(f"output dir {os.fspath(path)!r} is in use by another kerastune "
                          f"process (PID {pid or 'unknown'}): wait for it or choose another "
                          "--output-dir")


# Windows: `msvcrt.locking` locks bytes, and a locked byte cannot be read:
# the lock is on a byte far past the PID, which stays readable.
_WINDOWS_LOCKED_BYTE = 1 << 20
_NO_LOCKS = {errno.ENOLCK} | {getattr(errno, n) for n in ("ENOTSUP", "EOPNOTSUPP")
                              if hasattr(errno, n)}


def _try_lock(fd, shared=False):
    """Takes the lock of the open file `fd` without waiting: True when taken,
    False when another process holds it, None where the file system has no
    locks (some network file systems)."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        else:
            os.lseek(fd, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError as e:
        if e.errno in _NO_LOCKS:
            return None
        if fcntl is None or e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise


def _unlock(fd):
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, _WINDOWS_LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _read_pid(fd, wait=0.5):
    """The PID written in a lock file (the holder writes it just after it
    locks: waits up to `wait` seconds for it), or None."""
    deadline = time.monotonic() + wait
    while True:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
        if text.isdigit() or time.monotonic() > deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.02)


def _same_file(fd, path):
    """Whether the open file `fd` is still the file at `path` (a holder
    removes the lock file as it lets go: see `RunLock.release`)."""
    if fcntl is None:
        return True  # the file is not removed on Windows
    try:
        here, there = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def lock_holder(path):
    """The PID of the process that holds the lock of the run folder `path`
    (`RunLock`), 0 when its PID is unknown, None when none holds it. Looks
    only: creates nothing."""
    try:
        fd = os.open(os.path.join(os.fspath(path), LOCK_FILE), os.O_RDONLY)
    except OSError:
        return None  # no lock file: nobody holds it (a holder creates it first)
    try:
        taken = _try_lock(fd, shared=fcntl is not None)
        if taken:
            _unlock(fd)
        return None if taken is not False else (_read_pid(fd) or 0)
    finally:
        os.close(fd)


def check_not_in_use(path):
    """Raises the one-line `KerastuneError` that names the process holding
    the run folder `path` (`RunLock`), if one does; looks only."""
    pid = lock_holder(path)
    if pid is not None and pid != os.getpid():
        raise _in_use(path, pid)


class RunLock:
    """The OS lock of a run folder: held while one process writes the run.

    An advisory lock (`fcntl.flock`; `msvcrt.locking` on Windows) on the
    folder's `.lock` file, which holds the holder's PID. The OS frees it when
    the process ends, however it ends (`kill -9` included), so a lock is
    never stale: a lock file left behind by a killed process is simply taken
    again. Released (`release`), the lock file is removed.

    The lock keeps other processes out. Within one process (a notebook, a
    test), a second `RunDir.create` of a folder the process holds already
    goes ahead without a lock of its own (`acquire` returns None): the
    first one's lock still keeps the other processes out.
    """

    def __init__(self, path, fd):
        self.path = path  # the lock file (moved with its folder: see RunDir.create)
        self.fd = fd

    @classmethod
    def acquire(cls, folder):
        """Locks the run folder `folder` (which must exist), or raises the
        one-line `KerastuneError` that names the process holding it; None
        when this process holds it already. Only the lock file is created
        or written."""
        path = os.path.join(os.fspath(folder), LOCK_FILE)
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for wait in (0.01, 0.05, 0):  # rides out another's look (`lock_holder`)
                    taken = _try_lock(fd)
                    if taken is not False:
                        break
                    time.sleep(wait)
                if taken is False:
                    pid = _read_pid(fd)
                    if pid == os.getpid():
                        os.close(fd)
                        return None  # this process holds it already (see the class)
                    raise _in_use(folder, pid)
                if taken is None:
                    logging.getLogger("kerastune_lab").warning(
                        "the file system of %s has no file locks: two runs could write it at "
                        "once", folder)
                # A holder removes the file as it lets go: the lock must be
                # the one of the file that is there now.
                if _same_file(fd, path):
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
                    return cls(path, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise _in_use(folder, None)  # taken and let go 100 times in a row: busy

    def release(self):
        """Lets the folder go (idempotent)."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                os.remove(self.path)  # while still held, so no one holds the removed file
        except OSError:
            pass
        finally:
            os.close(self.fd)  # frees the lock
            self.fd = None

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def _existing_ancestor(path):
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def min_free_mb():
    """The free space a run directory's disk must have: $KERASTUNE_MIN_FREE_MB
    or `MIN_FREE_MB`."""
    text = os.environ.get("KERASTUNE_MIN_FREE_MB")
    if text is None:
        return MIN_FREE_MB
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value >= 0:
        raise KerastuneError(f"KERASTUNE_MIN_FREE_MB={text!r}: expected a number of MB, 0 "
                             "or more")
    return value


def check_writable(path, min_free=None, set_aside=False):
    """Raises a one-line `KerastuneError` unless a run directory can be written
    at `path`: the folder (or the nearest folder above it that exists) must
    be writable, and its disk must have `min_free` MB free.

    Args:
        path: str. The run directory, existing or not.
        min_free: float or None. MB. Defaults to `min_free_mb()`.
        set_aside: bool. An existing `path` will be renamed (--overwrite), so
            its parent must be writable too.
    """
    path = os.path.abspath(os.fspath(path))
    min_free = min_free_mb() if min_free is None else min_free
    where = _existing_ancestor(path if not set_aside else os.path.dirname(path))
    if not os.path.isdir(where):
        raise KerastuneError(f"output dir {path!r} cannot be created: {where!r} is a file, "
                             "expected a folder")
    for folder in {where, path} if os.path.isdir(path) else {where}:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise KerastuneError(f"output dir {path!r} cannot be written: {folder!r} is not "
                                 "writable; choose another --output-dir")
    free = shutil.disk_usage(where).free / 2**20
    if free < min_free:
        raise KerastuneError(
            f"output dir {path!r}: only {free:.0f} MB free on its disk, expected at least "
            f"{min_free:g} MB (free some space, choose another --output-dir, or set "
            "KERASTUNE_MIN_FREE_MB)")


def _normal(value):
    return json.loads(json.dumps(value, default=_jsonable))


def _resumable(path, identity):
    """Whether `path` holds an unfinished run of `identity` ({"recipe",
    "backend", "config"}, and optionally "defaults": the recipe's config
    before overrides) to resume. False for a finished run or a folder
    without a kerastune config.json; a one-line `KerastuneError` for an
    unfinished run of another recipe, backend or config. A key the saved
    config lacks (added to the recipe since) counts as the same when it is
    at its default here."""
    if os.path.exists(os.path.join(path, FINISHED)):
        return False
    try:
        with open(os.path.join(path, CONFIG), encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        return False
    fix = "run its own command to resume it, or pass --overwrite to start again"
    for key in ("recipe", "backend"):
        if saved.get(key) != identity[key]:
            raise KerastuneError(f"output dir {path!r} holds an unfinished run with "
                                 f"{key} {saved.get(key)!r}, not {identity[key]!r}: {fix}")
    old, new = saved["config"], _normal(identity["config"])
    defaults = _normal(identity.get("defaults") or {})
    for key in sorted(set(old) | set(new)):
        if key not in old and key in defaults and new.get(key) == defaults[key]:
            continue  # a key the recipe gained since the run started, at its default
        if old.get(key) != new.get(key):
            raise KerastuneError(f"output dir {path!r} holds an unfinished run with another "
                                 f"config ({key}={old.get(key)!r} there, {new.get(key)!r} "
                                 f"here): {fix}")
    return True


__all__ = ["LOCK_FILE", "MARKER", "MIN_FREE_MB", "RunLock", "check_not_foreign",
           "check_not_in_use", "check_writable", "holds_files", "is_run", "lock_holder",
           "min_free_mb"]
