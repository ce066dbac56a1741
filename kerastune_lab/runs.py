"""Run directories: where every result of a run is written.

    runs/<recipe>-<UTC time>/
      config.json     resolved config, backend, package versions, command
      history.csv     one row per epoch (with its phase)
      metrics.json    final figures
      training_curves.png
      model/          the trained model as a KerasHub preset (`from_preset`)
      labels.json     class names, index order
      FINISHED        written last: the run completed
      FAILED          the run stopped on an error: its line and the exit code
                      (kept only where something was trained: see `RunDir.fail`)
      kerastune_run.json  written first: this folder is a run of this toolkit
                      (recipe, time, version); only such a folder is resumed
                      or replaced by --overwrite (`is_run`)
      .lock           while a process writes the run: an OS lock on it (with
                      the PID) keeps a second process out (`RunLock`)

Every file is written to a temporary name in the same folder and renamed into
place (`os.replace` is atomic on POSIX and Windows), so a crash never leaves a
half-written file; the model folder is saved whole, then renamed.
"""

import csv
import datetime
import importlib.metadata
import json
import os
import shutil

from kerastune_lab.atomic import (  # noqa: F401  (part of this module's API)
    _jsonable,
    atomic_path,
    normal_path,
    write_csv,
    write_json,
    write_text,
)
from kerastune_lab.errors import KerastuneError
from kerastune_lab.run_guard import (  # noqa: F401  (part of this module's API)
    BACKUP_DIR,
    FAILED,
    FINISHED,
    LOCK_FILE,
    MARKER,
    RunLock,
    check_not_foreign,
    check_not_in_use,
    holds_files,
    is_run,
    lock_holder,
)
from kerastune_lab.settings import RunSettings

REPLACED = ".replaced"  # suffix of a run set aside by --overwrite
# A run directory is refused when its disk has less free space than this (MB);
# the environment variable KERASTUNE_MIN_FREE_MB overrides it.
MIN_FREE_MB = 100
PACKAGES = ("keras", "keras-hub", "tensorflow", "jax", "jaxlib", "torch",
            "tensorflow-datasets", "kerastune_lab")


def package_versions():
    """Returns {package: version} for the packages a run depends on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


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
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
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


def default_run_dir(recipe_name, root="runs"):
    """Returns `runs/<recipe>-<UTC time>`."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{recipe_name}-{stamp}")


def _lock_run(path):
    """`RunLock.acquire` of an existing run folder; None where the lock file
    cannot be made (a read-only folder: `check_writable` then says so),
    unless another process holds it."""
    try:
        return RunLock.acquire(path)
    except OSError:
        check_not_in_use(path)
        return None


class RunDir:
    """A run directory. Create one with `RunDir.create(path)`.

    Example:

    ```python
    run = RunDir.create("runs/mine")
    run.write_json("metrics.json", {"val_accuracy": 0.93})
    run.finish()
    ```
    """

    def __init__(self, path):
        self.path = normal_path(path)
        self.resumed = False  # an unfinished run, reused by `create(resume=...)`
        self.lock = None  # the `RunLock` of a run made by `create`, until `release`
        # What the runner chose for the run (precision, jit_compile, TensorBoard
        # folder): `training.run_settings` under `kerastune run`, set before main.
        self.settings = RunSettings()

    def __repr__(self):
        return f"RunDir({self.path!r})"

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def finished(self):
        return os.path.exists(self.file(FINISHED))

    @classmethod
    def create(cls, path, overwrite=False, min_free_mb=None, resume=None):
        """Makes the folder, refusing to reuse one that holds a run, and
        locks it (`RunLock`) until `finish`, `discard` or `release`.

        Checks first that the folder can be written and that its disk has
        `min_free_mb` free (`check_writable`), so a run fails before it
        trains rather than when it saves. A folder that holds files but is
        not a run (`is_run`) is refused, --overwrite or not, and left as it
        is; so is a run that another process holds.

        Args:
            path: str. The folder to create.
            overwrite: bool. Replace a run that is already there (set aside
                until the new one finishes). Defaults to `False`.
            min_free_mb: float or None. Free space the disk must have, in MB.
                Defaults to $KERASTUNE_MIN_FREE_MB, else `MIN_FREE_MB`.
            resume: dict or None. {"recipe", "backend", "config"} of the run
                to make (and "defaults", see `_resumable`): an unfinished run
                of the same ones at `path` is reused (`resumed` is True), one
                of others is an error.
        """
        path = normal_path(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise KerastuneError(f"output dir {path!r} exists and is not a folder")
        check_not_foreign(path, overwrite)
        busy = holds_files(path)
        if busy and not overwrite and os.path.exists(os.path.join(path, FINISHED)):
            raise KerastuneError(f"output dir {path!r} already holds a finished run; choose "
                                 "another --output-dir or pass --overwrite")
        held = _lock_run(path) if busy else None  # a run: locked before it is looked into
        try:
            run = cls._create(path, busy, held, overwrite, min_free_mb, resume)
        except BaseException:
            if held is not None:
                held.release()
            raise
        if held is not None and held is not run.lock:
            held.release()  # the lock of the run set aside or removed
        return run

    @classmethod
    def _create(cls, path, busy, held, overwrite, min_free_mb, resume):
        recipe = (resume or {}).get("recipe")
        resumed = bool(busy and not overwrite and resume is not None
                       and _resumable(path, resume))
        if resumed:
            check_writable(path, min_free_mb)
            run = cls(path)
            run.resumed, run.lock = True, held
            if not os.path.exists(run.file(MARKER)):  # a run of an earlier version
                run._write_marker(recipe)
            return run
        if busy and not overwrite:
            what = ("a finished run" if os.path.exists(os.path.join(path, FINISHED))
                    else "an unfinished run")
            raise KerastuneError(
                f"output dir {path!r} already holds {what}; choose another "
                "--output-dir or pass --overwrite"
            )
        check_writable(path, min_free_mb, set_aside=busy)
        replaced = path + REPLACED
        if busy and os.path.lexists(replaced) and not (os.path.isdir(replaced)
                                                       and is_run(replaced)):
            raise KerastuneError(
                f"output dir {path!r} cannot be set aside for --overwrite: {replaced!r} "
                "exists and is not a kerastune run; move it away or choose another "
                "--output-dir")
        if busy and os.path.isdir(replaced) and not os.path.exists(
                os.path.join(path, FINISHED)):
            # The unfinished run of an earlier --overwrite: the finished run
            # it replaced stays set aside.
            shutil.rmtree(path)
        elif busy:
            # Set aside, not deleted, until the new run finishes (`finish`).
            shutil.rmtree(replaced, ignore_errors=True)  # a run (checked above)
            os.replace(path, replaced)
            if held is not None:  # its lock file went with it
                held.path = os.path.join(replaced, LOCK_FILE)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise KerastuneError(f"output dir {path!r} cannot be created: {e.strerror}")
        if not os.access(path, os.W_OK):
            raise KerastuneError(f"output dir {path!r} is not writable")
        run = cls(path)
        run.lock = RunLock.acquire(path)  # refused if another process took it meanwhile
        try:
            run._write_marker(recipe)
        except BaseException:
            run.discard()  # nothing here yet: put back the run it replaced, if any
            raise
        return run

    def _write_marker(self, recipe=None):
        from kerastune_lab import __version__

        # Atomic, not synced: its being there is what counts, and the run's
        # first synced file (config.json) is the one a full disk names.
        write_json(self.file(MARKER), {
            "recipe": recipe,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "kerastune_lab": __version__}, sync=False)

    def release(self):
        """Lets other processes use the folder (`RunLock`); idempotent.
        `run_recipe` calls it as it ends, whatever the end."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @classmethod
    def open(cls, path):
        """Opens a finished run directory for reading (predict, evaluate)."""
        path = normal_path(path)
        if not os.path.isdir(path):
            raise KerastuneError(f"run dir {path!r} does not exist")
        if not os.path.exists(os.path.join(path, "config.json")):
            raise KerastuneError(f"run dir {path!r} has no config.json: not a kerastune run")
        return cls(path)

    def write_json(self, name, obj):
        write_json(self.file(name), obj)

    def write_text(self, name, text):
        write_text(self.file(name), text)

    def write_csv(self, name, rows):
        write_csv(self.file(name), rows)

    def read_json(self, name):
        with open(self.file(name), encoding="utf-8") as f:
            return json.load(f)

    def update_json(self, name, **values):
        """Adds keys to a JSON file (creating it), atomically."""
        data = self.read_json(name) if os.path.exists(self.file(name)) else {}
        data.update(values)
        self.write_json(name, data)
        return data

    def save_model(self, model, name="model"):
        """Saves a KerasHub task as a preset folder, atomically."""
        with atomic_path(self.file(name)) as tmp:
            model.save_to_preset(tmp)

    @property
    def trained(self):
        """Whether training left something here: a backup, a history or a model."""
        return any(os.path.exists(self.file(name))
                   for name in (BACKUP_DIR, "history.csv", "model"))

    def fail(self, line, exit_code):
        """Records a run that stopped on an error, or removes it.

        A run with something trained in it (`trained`), or an unfinished run
        that was being resumed, is kept and marked with `FAILED` (the error
        line, then `exit code: N`): the same command resumes it from its
        backup. A new run with nothing trained is removed, and the run it
        replaced (`--overwrite`) is put back: it would only look like a run.

        Returns:
            bool. True when the folder was kept.
        """
        if not (self.trained or self.resumed):
            self.discard()
            return False
        self.write_text(FAILED, f"{line}\nexit code: {exit_code}\n")
        return True

    def finish(self):
        """Marks the run finished; drops its training backup, a `FAILED` mark
        of an earlier attempt and the run it replaced, if any."""
        if os.path.exists(self.file(FAILED)):
            os.remove(self.file(FAILED))
        self.write_text(FINISHED, datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n")
        shutil.rmtree(self.file(BACKUP_DIR), ignore_errors=True)
        if is_run(self.path + REPLACED):  # only a run set aside, never a folder of the user's
            shutil.rmtree(self.path + REPLACED, ignore_errors=True)
        self.release()  # finished: nothing more is written

    def discard(self):
        """Removes this unfinished run and puts back the run it replaced."""
        shutil.rmtree(self.path, ignore_errors=True)
        if os.path.isdir(self.path + REPLACED) and is_run(self.path + REPLACED):
            os.replace(self.path + REPLACED, self.path)
        self.release()


def read_csv(path):
    """Reads a CSV written by `write_csv`; numbers come back as floats."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                pass
    return rows
