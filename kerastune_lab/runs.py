"""Run directories: where every result of a run is written.

    runs/<recipe>-<UTC time>/
      config.json     resolved config, backend, package versions, command
      history.csv     one row per epoch (with its phase)
      metrics.json    final figures
      training_curves.png
      model/          the trained model as a KerasHub preset (`from_preset`)
      labels.json     class names, index order
      FINISHED        written last: the run completed

Every file is written to a temporary name in the same folder and renamed into
place (`os.replace` is atomic on POSIX and Windows), so a crash never leaves a
half-written file; the model folder is saved whole, then renamed.
"""

import contextlib
import csv
import datetime
import importlib.metadata
import io
import json
import os
import shutil
import tempfile

from kerastune_lab.errors import KerastuneError

FINISHED = "FINISHED"
REPLACED = ".replaced"  # suffix of a run set aside by --overwrite
PACKAGES = ("keras", "keras-hub", "tensorflow", "jax", "jaxlib", "torch",
            "tensorflow-datasets", "kerastune_lab")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it to `path` on success.

    Works for files and for folders (a folder that exists at `path` is
    replaced). On error the temporary is removed and `path` is untouched.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    target = os.path.join(tmp, os.path.basename(path))
    try:
        yield target
        if os.path.isdir(target) and os.path.isdir(path):
            old = path + ".old"
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, obj):
    """Writes `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_csv(path, rows):
    """Writes a list of dicts as CSV (columns in first-seen order) atomically."""
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _jsonable(value):
    if hasattr(value, "item"):  # numpy and framework scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def package_versions():
    """Returns {package: version} for the packages a run depends on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def default_run_dir(recipe_name, root="runs"):
    """Returns `runs/<recipe>-<UTC time>`."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{recipe_name}-{stamp}")


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
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunDir({self.path!r})"

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def finished(self):
        return os.path.exists(self.file(FINISHED))

    @classmethod
    def create(cls, path, overwrite=False):
        """Makes the folder, refusing to reuse one that holds a run.

        Args:
            path: str. The folder to create.
            overwrite: bool. Replace a folder that already holds files.
                Defaults to `False`.
        """
        path = os.fspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise KerastuneError(f"output dir {path!r} exists and is not a folder")
        if os.path.isdir(path) and os.listdir(path):
            what = "a finished run" if os.path.exists(os.path.join(path, FINISHED)) else "files"
            if not overwrite:
                raise KerastuneError(
                    f"output dir {path!r} already holds {what}; choose another "
                    "--output-dir or pass --overwrite"
                )
            # Set aside, not deleted, until the new run finishes (`finish`).
            shutil.rmtree(path + REPLACED, ignore_errors=True)
            os.replace(path, path + REPLACED)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise KerastuneError(f"output dir {path!r} cannot be created: {e.strerror}")
        if not os.access(path, os.W_OK):
            raise KerastuneError(f"output dir {path!r} is not writable")
        return cls(path)

    @classmethod
    def open(cls, path):
        """Opens a finished run directory for reading (predict, evaluate)."""
        path = os.fspath(path)
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

    def finish(self):
        """Marks the run finished and drops the run it replaced, if any."""
        self.write_text(FINISHED, datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n")
        shutil.rmtree(self.path + REPLACED, ignore_errors=True)

    def discard(self):
        """Removes this unfinished run and puts back the run it replaced."""
        shutil.rmtree(self.path, ignore_errors=True)
        if os.path.isdir(self.path + REPLACED):
            os.replace(self.path + REPLACED, self.path)


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
