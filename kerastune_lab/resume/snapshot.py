"""The backup files: a training snapshot written and read back, without `fit`.

    snapshot.write(directory, {"phase": "train", "epoch": 1, "step": 2, ...},
                   model=model_variables(model), optimizer=model.optimizer.variables)
    found = snapshot.choose(directory)          # the newest backup that is intact
    restored = snapshot.restore(directory, model_variables(model),
                                model.optimizer.variables, path=found.path)

Two copies, so that a damaged file never loses the run:

- `latest.npz` (numpy's zip of arrays): the newest backup;
- `previous.npz`: the one before it, kept when the newest is written (the
  old `latest.npz` renamed);
- `manifest.json`, written after them: each copy's file, size and SHA-256
  (which covers every byte of the file, where the zip's own CRC-32 leaves
  its headers out), phase, epoch and step, newest first, with a SHA-256 of
  that list (a damaged manifest is not trusted);
- `state.json`, written last: a readable copy of the newest one's state.

A backup is written to a temporary name, flushed to the disk and checksummed,
then `latest.npz` becomes `previous.npz` and the temporary becomes
`latest.npz` (`os.replace`), then the manifest is replaced. A crash at any
point leaves a copy whose checksum the manifest records: `choose` matches a
copy by its checksum, under either name. It takes the newest recorded copy
that is intact and says which it skipped and why (missing, empty, another
size, a checksum that does not match). A run from before the manifest (one
`latest.npz`) is read whole instead: zip's CRC-32 checks each array.

Each `.npz` holds:

- the model's variables: all of them, or for `weights="trainable"` only the
  trainable ones and the seed states (`model_variables`), read directly,
  never through `save_own_variables` (which in Keras' LoRA layers merges the
  adapter into the kernel);
- the optimizer's variables (step count, moments);
- the metrics' variables (mid-epoch, so the epoch's logged figures match);
- the state: format and version, phase, epoch and step in it, steps per
  epoch, which weights, when, each group's variable paths and shapes;
- the random states: Python's, numpy's, Keras' global seed generator's, and
  on torch torch's own generators (CPU and CUDA).

Variables are matched back by count and shape (auto-made names such as
"adam_2" may differ between processes). `keras.callbacks.BackupAndRestore`
saves weights and optimizer only, in place, through `save_own_variables`:
hence these files.
"""

import collections
import datetime
import json
import os
import random

import keras
import numpy as np

from kerastune_lab.atomic import atomic_path, write_json
from kerastune_lab.errors import KerastuneError
from kerastune_lab.resume.copies import (  # noqa: F401  (part of this module's API)
    _FILES,
    _READ_ERRORS,
    BACKUP_FILE,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PREVIOUS_FILE,
    BackupUnreadable,
    Found,
    Skipped,
    _digest_of,
    _error,
    _fsync_directory,
    _newest,
    _read_whole,
    _sha256,
    choose,
    read_state,
)

STATE_FILE = "state.json"  # a readable copy of the newest state, written last
WEIGHTS = ("all", "trainable")
NEWEST = "newest"  # `write(previous=)`: keep the newest copy the manifest records

# What `restore` gives back to put in place later: the state read, the
# metrics' ([path, shape] list, values) or None, torch's generator states
# ({} off torch).
Restored = collections.namedtuple("Restored", ["state", "metrics", "torch_rng"])

class NotFinite(ValueError):
    """A float variable to write holds NaN or infinity: nothing was written."""

    def __init__(self, group, variable):
        super().__init__(f"{group} variable {variable.path!r} is not finite")
        self.group, self.variable = group, variable


def model_variables(model, weights="all"):
    """The variables of `model` a snapshot holds: every one (`weights="all"`),
    or the trainable ones and the seed states (`"trainable"`: a LoRA adapter,
    not its frozen base)."""
    if weights == "all":
        return list(model.variables)
    seeds = [v for v in model.non_trainable_variables
             if v.path.endswith("seed_generator_state")]
    return list(model.trainable_variables) + seeds


def write(directory, info, model, optimizer=(), metrics=(), previous=NEWEST):
    """Writes a snapshot into `directory` (made if missing) as its newest
    copy, keeping the one before as the previous copy (module docstring).

    Args:
        directory: str. The backup folder.
        info: dict. JSON values kept in the state: "phase", "epoch", "step",
            "steps_per_epoch", "weights".
        model: list of Variable. The model's (`model_variables`).
        optimizer: list of Variable. The optimizer's. Defaults to none.
        metrics: list of Variable. The metrics'. Defaults to none.
        previous: the copy to keep as the previous one: its manifest entry
            (`Found.entry`, checked when it was chosen), None to keep none
            (any other copy is removed), or `NEWEST`: the newest copy the
            manifest records. Defaults to `NEWEST`.

    Returns:
        dict: the state written (as `read_state` reads it).

    Raises:
        NotFinite: a float variable holds NaN or infinity; nothing was written.
    """
    groups = {"model": list(model), "optimizer": list(optimizer), "metrics": list(metrics)}
    arrays = {}
    for group, values in groups.items():
        for i, variable in enumerate(values):
            arrays[f"{group}.{i}"] = value = _to_numpy(variable)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                # Never replace a good backup with NaN or infinite weights.
                raise NotFinite(group, variable)
    _, python_state, python_gauss = random.getstate()
    rng = {"python": [list(python_state), python_gauss]}
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    arrays["rng.numpy"] = keys
    rng["numpy"] = [int(pos), int(has_gauss), float(gauss)]
    generator = _global_seed_generator()
    if generator is not None:
        arrays["rng.keras"] = _to_numpy(generator.state)
    arrays.update(_torch_rng_state())
    state = {
        "format": FORMAT, "version": FORMAT_VERSION, **info,
        "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        **{group: [[v.path, list(v.shape)] for v in values] for group, values in groups.items()},
        "rng": rng,
    }
    arrays["state"] = np.asarray(json.dumps(state))
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    if isinstance(previous, str):
        previous = _newest(directory)
    latest, kept = (os.path.join(directory, name) for name in _FILES)
    with atomic_path(latest) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        entry = {"file": BACKUP_FILE, "sha256": _sha256(tmp), "size": os.path.getsize(tmp),
                 **{k: state.get(k) for k in ("phase", "epoch", "step")}}
        if previous is not None and previous["file"] == BACKUP_FILE:
            if os.path.isfile(latest):
                os.replace(latest, kept)  # the newest copy becomes the previous one
                previous = dict(previous, file=PREVIOUS_FILE)
            else:
                previous = None
        if previous is None and os.path.lexists(kept):
            os.remove(kept)  # a copy no manifest will record (damaged, or of a run started over)
    # The manifest is written after the copies it names are in place.
    _fsync_directory(directory)
    backups = [entry] + ([previous] if previous is not None else [])
    write_json(os.path.join(directory, MANIFEST_FILE),
               {"format": FORMAT, "version": FORMAT_VERSION, "backups": backups,
                "sha256": _digest_of(backups)})
    write_json(os.path.join(directory, STATE_FILE), {k: v for k, v in state.items() if k != "rng"})
    return state


def restore(directory, model, optimizer=None, steps_per_epoch=None, path=None):
    """Puts the snapshot in `directory` back: the file at `path` (as
    `choose` found it), or the newest intact copy.

    Assigns `model`'s and `optimizer`'s variables (checked against the
    snapshot's by count and shape) and puts back Python's, numpy's and
    Keras' global random states. The metrics' values and torch's generator
    states are returned, to put back when training starts
    (`restore_metrics`, `set_torch_rng_state`).

    Args:
        directory: str. The backup folder.
        model: list of Variable. As written (`model_variables`).
        optimizer: list of Variable or None. The optimizer's, built.
        steps_per_epoch: int or None. Refuses a snapshot of another number
            of steps an epoch. Defaults to None: not checked.
        path: str or None. The file to read (`Found.path`). Defaults to
            None: the one `choose` finds.

    Returns:
        Restored(state, metrics, torch_rng).

    Raises:
        BackupUnreadable: no intact copy, or the file cannot be read.
        KerastuneError: the snapshot is of another model or epoch length.
    """
    if path is None:
        found = choose(directory)
        if found.path is None:
            read_state(directory)  # raises, naming what is wrong, if there were copies
            raise BackupUnreadable(f"no backup in {os.fspath(directory)!r}")
        path = found.path
    try:
        return _restore(path, model, optimizer, steps_per_epoch)
    except _READ_ERRORS as e:
        raise BackupUnreadable(f"backup {path!r} cannot be read ({_error(e)}): pass "
                               "--overwrite to start the run again", _error(e)) from None


def _restore(path, model, optimizer, steps_per_epoch):
    with np.load(path, allow_pickle=False) as f:
        state = json.loads(str(f["state"]))
        if steps_per_epoch and state["steps_per_epoch"] and (
                steps_per_epoch != state["steps_per_epoch"]):
            raise KerastuneError(
                f"backup {path!r} has {state['steps_per_epoch']} steps an epoch, "
                f"this run {steps_per_epoch}: pass --overwrite to start again")
        groups = [("model", list(model))]
        if optimizer is not None:
            groups.append(("optimizer", list(optimizer)))
        for what, variables in groups:
            for variable, value in zip(variables, _check(what, state[what], variables, f, path)):
                variable.assign(value)
        metrics = None
        if state["metrics"]:
            metrics = (state["metrics"], [f[f"metrics.{i}"] for i in range(len(state["metrics"]))])
        pos, has_gauss, gauss = state["rng"]["numpy"]
        np.random.set_state(("MT19937", f["rng.numpy"], pos, has_gauss, gauss))
        python_state, python_gauss = state["rng"]["python"]
        random.setstate((3, tuple(python_state), python_gauss))
        if "rng.keras" in f.files:
            _global_seed_generator(create=True).state.assign(f["rng.keras"])
        torch_rng = {k: f[k] for k in ("rng.torch", "rng.torch_cuda") if k in f.files}
    return Restored(state, metrics, torch_rng)


def restore_metrics(metrics, variables):
    """Assigns `Restored.metrics` to the metrics' `variables`. Returns False,
    assigning nothing, when they differ by count or shape (or there are
    none): metrics not built yet, or other metrics."""
    saved, values = metrics or ((), ())
    variables = list(variables)
    if [list(s[1]) for s in saved] != [list(v.shape) for v in variables]:
        return False
    for variable, value in zip(variables, values):
        variable.assign(value)
    return True


def set_torch_rng_state(f):
    """Puts back torch's generator states of `Restored.torch_rng`."""
    import torch

    torch.set_rng_state(torch.from_numpy(f["rng.torch"]))
    if "rng.torch_cuda" in f and torch.cuda.is_available():
        states = f["rng.torch_cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([torch.from_numpy(s) for s in states])


def _to_numpy(variable):
    value = np.asarray(keras.ops.convert_to_numpy(variable))
    if value.dtype.kind not in "biuf":  # bfloat16 and other extension dtypes
        value = value.astype("float32")  # exact; assign casts back
    return value


def _check(what, saved, variables, file, path):
    """Checks the backed-up `saved` [path, shape] pairs against `variables`
    by count and shape (auto-made names such as "adam_2" may differ)."""
    here = [[v.path, list(v.shape)] for v in variables]
    wrong = (f"{len(saved)} there, {len(here)} here" if len(saved) != len(here) else
             next((f"{a[0]!r} {tuple(a[1])} there, {b[0]!r} {tuple(b[1])} here"
                   for a, b in zip(saved, here) if list(a[1]) != b[1]), None))
    if wrong:
        raise KerastuneError(f"backup {path!r} does not match this model's {what} "
                             f"variables ({wrong}): pass --overwrite to start again")
    return [file[f"{what}.{i}"] for i in range(len(here))]


def _global_seed_generator(create=False):
    """Keras' global seed generator, or None where nothing has drawn from it
    yet. `create`: make it then (a fresh process, or after
    `keras.utils.set_random_seed`), seeded 0 (not from Python's random
    state, which is put back before it), for its state to be assigned."""
    from kerastune_lab import compat

    needed_by = "saving and restoring Keras' random state"
    generator = compat.get_global_attribute("global_seed_generator", needed_by)
    if generator is None and create:
        generator = keras.random.SeedGenerator(seed=0)
        compat.set_global_attribute("global_seed_generator", generator, needed_by)
    return generator


def _torch_rng_state():
    """Torch's global generators, as arrays: on the torch backend, layers
    without a seed of their own (Keras' Dropout among them) draw from them."""
    if keras.backend.backend() != "torch":
        return {}
    import torch

    arrays = {"rng.torch": torch.get_rng_state().numpy()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        arrays["rng.torch_cuda"] = np.stack([s.numpy() for s in torch.cuda.get_rng_state_all()])
    return arrays
