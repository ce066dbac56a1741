"""Atomic writes: a file or folder appears whole, or not at all.

Every file is written to a temporary folder beside its target and renamed
into place (`os.replace` is atomic on POSIX and Windows), so a crash never
leaves a half-written file. The temporary folder is locked while its writer
lives; a later write to the same target removes the temporaries of writers
that were killed (`kill -9` mid-export, a power cut), and never those of a
writer still at work.
"""

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile

from kerastune_lab.errors import DISK_ERRNOS

try:
    import fcntl
except ImportError:  # Windows: leftovers stay (no lock to tell a dead writer's)
    fcntl = None


def normal_path(path):
    """`path` as the file system means it: `~` expanded, a trailing slash
    and `.`/`..` parts resolved (`out/` and `out` are the same folder)."""
    return os.path.normpath(os.path.expanduser(os.fspath(path)))


# Inside each temporary folder, from the moment it is made: only a folder
# holding it is ever taken for a killed writer's leftover.
MARK = ".kerastune-temporary"


def _lock_folder(folder):
    """An open descriptor of `folder` holding its exclusive lock (None where
    the OS or file system has no such locks)."""
    if fcntl is None:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def remove_leftovers(path):
    """Removes the temporaries that killed writers of `path` left beside it
    (`.NAME.xxxxxxxx/` folders nobody holds locked); returns their names."""
    if fcntl is None:
        return []
    parent, prefix = os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}."
    removed = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except OSError:
        return []
    for name in names:
        folder = os.path.join(parent, name)
        if (len(name) != len(prefix) + 8 or not os.path.isdir(folder) or os.path.islink(folder)
                or not os.path.isfile(os.path.join(folder, MARK))):
            continue  # not a temporary of this module (a folder of the user's, say)
        fd = _lock_folder(folder)
        if fd is None:
            continue  # a live writer holds it
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(name)
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it to `path` on success.

    Works for files and for folders (a folder that exists at `path` is
    replaced). On error the temporary is removed and `path` is untouched. An
    OSError of a full, over-quota or read-only disk names `path` (not the
    temporary), so the CLI's one-line message says which file it was.
    Temporaries of killed writers of `path` are removed first
    (`remove_leftovers`).
    """
    path = normal_path(path)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = held = None
    try:
        remove_leftovers(path)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
        held = _lock_folder(tmp)  # tells later writers this one is alive
        open(os.path.join(tmp, MARK), "w").close()
        target = os.path.join(tmp, os.path.basename(path))
        yield target
        if os.path.isdir(target) and os.path.isdir(path):
            old = path + ".old"
            os.replace(path, old)
            try:
                os.replace(target, path)
            except BaseException:
                os.replace(old, path)  # put the previous folder back
                raise
            shutil.rmtree(old)
        else:
            os.replace(target, path)
    except OSError as e:
        if e.errno in DISK_ERRNOS and (e.filename is None or tmp is None
                                       or os.fspath(e.filename).startswith(tmp)):
            e.filename = path
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if held is not None:
            os.close(held)


def write_text(path, text, sync=True):
    """Writes `text` to `path` atomically (and to the disk, unless `sync` is
    False)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())


def write_json(path, obj, sync=True):
    """Writes `obj` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n",
               sync=sync)


SUMS_FILE = "SHA256SUMS"  # in a saved model folder: `sha256sum -c SHA256SUMS` checks it


def sha256_file(path):
    """The SHA-256 of the file at `path`, in hex, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sums(folder, suffixes=(".h5",)):
    """Records the SHA-256 of each file of `folder` ending in `suffixes` in
    `folder/SHA256SUMS`, in `sha256sum`'s format (`read_sums` reads it)."""
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(suffixes)
                   and os.path.isfile(os.path.join(folder, n)))
    write_text(os.path.join(folder, SUMS_FILE),
               "".join(f"{sha256_file(os.path.join(folder, n))}  {n}\n" for n in names))


def read_sums(folder):
    """{file name: SHA-256} as `write_sums` recorded them in `folder`; {}
    without a SHA256SUMS file (a folder saved by an earlier version). A line
    that is not `<64 hex digits>  <name>` is left out."""
    try:
        with open(os.path.join(folder, SUMS_FILE), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    sums = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) and name:
            sums[name] = digest
    return sums


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


def _jsonable(value):
    if hasattr(value, "item"):  # numpy and framework scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


__all__ = ["atomic_path", "normal_path", "remove_leftovers", "write_csv", "write_json",
           "write_text"]
