"""Presets -> KerasHub task models.

A preset is a KerasHub preset name (`resnet_50_imagenet`), a handle
(`kaggle://...`, `hf://...`, `gs://...`, `modelscope://...`) or a local
folder saved with `save_to_preset` (or a Hugging Face checkpoint folder that
KerasHub converts). Names are checked against KerasHub's list before any
download, so a typo is a one-line error that names the close ones.

Loading runs no code from the preset: every load is in Keras' safe mode
(`safe_loading`, even where a script called
`keras.config.enable_unsafe_deserialization()`), and a local preset folder or
run model is checked first (`check_preset_folder`): its configs may not name a
Lambda layer, and its weights must be in a format that cannot run code
(`.weights.h5`, safetensors), not pickle (`.bin`, `.pt`, `.pkl`) or `.keras`.
"""

import contextlib
import json
import os
import re

from kerastune_lab.atomic import SUMS_FILE, read_sums, sha256_file
from kerastune_lab.config import closest
from kerastune_lab.errors import KerastuneError
from kerastune_lab.hub.handles import CONFIG_FILE as PRESET_CONFIG
from kerastune_lab.runs import MODEL_DIR

HANDLE_SCHEMES = ("kaggle://", "hf://", "gs://", "modelscope://", "file://")


# Weight files that cannot run code when read, and those that can (pickle,
# or a whole `.keras` model archive).
SAFE_WEIGHT_SUFFIXES = (".h5", ".hdf5", ".safetensors")
UNSAFE_WEIGHT_SUFFIXES = (".keras", ".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt",
                          ".joblib", ".dill")
# Sharded-weight indexes: their weight_map names the shard files.
_SHARD_INDEXES = ("model.weights.json", "model.safetensors.index.json")


def _lambda_in(obj):
    """The first Lambda (or serialised Python lambda) named in a JSON config."""
    if isinstance(obj, dict):
        name = obj.get("class_name")
        if isinstance(name, str) and ("Lambda" in name or name == "__lambda__"):
            return name
        obj = list(obj.values())
    if isinstance(obj, list):
        return next((found for found in map(_lambda_in, obj) if found), None)
    return None


def check_preset_folder(path, what="preset folder"):
    """Refuses a preset folder that would load anything able to run code.

    Raises a one-line `KerastuneError` when a config (`*.json`) names a
    Lambda layer, when the weights are only in pickle-based or `.keras`
    files (e.g. a Hugging Face folder with only `pytorch_model.bin`), or
    when a sharded index names shards in such a format.

    Args:
        path: str. The folder.
        what: str. How errors name it ("preset folder", "run model").
    """
    safe, unsafe = [], []
    for dirpath, _, filenames in os.walk(path):
        for filename in sorted(filenames):
            file = os.path.join(dirpath, filename)
            name = os.path.relpath(file, path)
            lowered = filename.lower()
            if lowered.endswith(SAFE_WEIGHT_SUFFIXES):
                safe.append(name)
            elif lowered.endswith(UNSAFE_WEIGHT_SUFFIXES):
                unsafe.append(name)
            elif lowered.endswith(".json"):
                try:
                    with open(file, encoding="utf-8") as f:
                        config = json.load(f)
                except (OSError, ValueError):
                    raise KerastuneError(f"{what} {path!r}: {name} is not valid JSON: "
                                         "expected a folder written by save_to_preset or a "
                                         "Hugging Face checkpoint") from None
                layer = _lambda_in(config)
                if layer:
                    raise KerastuneError(
                        f"{what} {path!r}: {name} names a {layer} layer, whose Python code "
                        "would run on loading: refused (expected only KerasHub/Keras "
                        "layers)")
                if filename in _SHARD_INDEXES and isinstance(config, dict):
                    shards = config.get("weight_map", {})
                    shards = shards.values() if isinstance(shards, dict) else []
                    flat = [s for v in shards for s in (v if isinstance(v, list) else [v])]
                    bad = [s for s in flat
                           if not str(s).lower().endswith(SAFE_WEIGHT_SUFFIXES)]
                    if bad:
                        raise KerastuneError(
                            f"{what} {path!r}: {name} names weight file {bad[0]!r}: "
                            "expected .h5 or .safetensors shards")
    if unsafe and not safe:
        raise KerastuneError(
            f"{what} {path!r} holds weights only in {', '.join(unsafe[:3])}, a format that "
            "can run code when loaded: refused (expected model.weights.h5 from "
            "save_to_preset, or model.safetensors)")


def _damaged_weights(run_path, name, why):
    return KerastuneError(f"run dir {run_path!r}: {name} is damaged ({why}): expected the "
                          "weights the run saved (an HDF5 file written by save_to_preset); "
                          "re-run the recipe or restore the file")


def _hdf5_problem(error):
    """What h5py's error says of a file, in a few words."""
    text = str(error)
    cut = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if cut:
        return f"cut short: {cut.group(1)} of {cut.group(2)} bytes"
    if "signature not found" in text:
        return "not an HDF5 file"
    inner = re.search(r"\(([^()]*)\)", text)
    return (inner.group(1) if inner else text.splitlines()[0] if text else
            type(error).__name__)[:120]


def check_weights(run_path, folder=MODEL_DIR):
    """Opens each HDF5 weights file of a run's model folder (h5py, no Keras):
    one cut short, empty or holding something else is one line naming it;
    so is one whose bytes are not those the run saved (its SHA-256 against
    the folder's SHA256SUMS, `RunDir.save_model`; a folder saved by an
    earlier version has none, and only the first checks are made)."""
    model = os.path.join(run_path, folder)
    if not os.path.isdir(model):
        return
    import h5py

    sums = read_sums(model)
    for name in sorted(sums):
        if not os.path.exists(os.path.join(model, name)):
            raise _damaged_weights(run_path, f"{folder}/{name}",
                                   f"missing; {SUMS_FILE} records it")
    for name in sorted(os.listdir(model)):
        if not name.lower().endswith((".h5", ".hdf5")):
            continue
        path = os.path.join(model, name)
        if os.path.isdir(path) or os.path.getsize(path) == 0:
            raise _damaged_weights(run_path, f"{folder}/{name}",
                                   "a folder" if os.path.isdir(path) else "empty")
        try:
            with h5py.File(path, "r") as f:
                empty = not len(f.keys())
        except OSError as e:
            raise _damaged_weights(run_path, f"{folder}/{name}", _hdf5_problem(e)) from None
        if empty:
            raise _damaged_weights(run_path, f"{folder}/{name}", "an HDF5 file holding nothing")
        if name in sums and sha256_file(path) != sums[name]:
            raise _damaged_weights(run_path, f"{folder}/{name}",
                                   f"its bytes are not those whose SHA-256 {SUMS_FILE} records")


@contextlib.contextmanager
def safe_loading():
    """Runs the block with Keras' safe mode as its default, whatever the global
    setting.

    `deserialize_keras_object` (which KerasHub's `from_preset` uses for every
    config) defaults to safe mode, unless a script called
    `keras.config.enable_unsafe_deserialization()`; inside this block that
    call is undone. (Not `SafeModeScope(True)`: KerasHub then refuses to read
    a preset's own tokenizer files.) Safe mode refuses to deserialise Python
    lambdas (code); a refusal becomes a one-line `KerastuneError`.
    """
    from kerastune_lab import compat

    try:
        with compat.safe_mode_scope(None):  # None: every deserialisation defaults to safe
            yield
    except ValueError as e:
        if "safe_mode" not in str(e) or "lambda" not in str(e).lower():
            raise
        raise KerastuneError("the model's config holds a Python lambda, whose code would "
                             "run on loading: refused (expected only KerasHub/Keras "
                             "layers)") from None


def from_preset(task_cls, preset, **kwargs):
    """`task_cls.from_preset(preset, **kwargs)` in Keras' safe mode. Check the
    preset first with `resolve_preset` (which checks a local folder and
    downloads a named preset's config.json). A download that fails (the
    weights, the tokenizer files) is one `DownloadFailed` line; offline, a
    Kaggle preset that kagglehub's cache holds loads from there
    (`hub.load_preset`)."""
    from kerastune_lab import hub

    with hub.preset_download_errors(preset), safe_loading():
        return hub.load_preset(lambda p: task_cls.from_preset(p, **kwargs), preset)


def resolve_preset(preset, task_cls):
    """Checks that `preset` can name a preset for `task_cls` and returns it.

    A preset name or a `kaggle://`/`hf://` handle then has its config.json
    downloaded (`hub.fetch_preset`, cached for KerasHub), so that a preset
    that cannot be downloaded (no network, a gated model, ...) is one
    `DownloadFailed` line; an unknown name is a `KerastuneError` before any
    download.

    Args:
        preset: str. A preset name, handle, or local folder.
        task_cls: a KerasHub task class, e.g. `keras_hub.models.ImageClassifier`.
    """
    from kerastune_lab import hub

    if preset.startswith(HANDLE_SCHEMES):
        return hub.fetch_preset(preset)
    path = os.path.expanduser(preset)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, PRESET_CONFIG)):
            raise KerastuneError(
                f"preset folder {preset!r} has no {PRESET_CONFIG}: expected a folder "
                "written by save_to_preset or a Hugging Face checkpoint"
            )
        check_preset_folder(path)
        return path
    if os.path.isfile(path):
        raise KerastuneError(
            f"preset {preset!r} is a file: expected a preset name, a handle, or a preset "
            "folder written by save_to_preset (.keras and pickle files are not loaded)")
    known = task_cls.presets
    if preset in known:
        return hub.fetch_preset(preset)
    looks_like_path = os.sep in preset or preset.startswith(".")
    where = "folder does not exist" if looks_like_path else "not a known preset"
    raise KerastuneError(
        f"unknown preset {preset!r} for {task_cls.__name__} ({where})"
        f"{closest(preset, known)}; see `kerastune presets`"
    )


def load_task(task_cls, preset, **kwargs):
    """Loads `task_cls.from_preset(preset, **kwargs)` after `resolve_preset`,
    in Keras' safe mode."""
    return from_preset(task_cls, resolve_preset(preset, task_cls), **kwargs)


def load_image_classifier(preset, num_classes, **kwargs):
    """Loads a KerasHub image classifier with a new `num_classes` head.

    The backbone (and its preprocessor) come from the preset; the head is
    freshly initialised, since the preset's head was trained for other
    classes.
    """
    import keras_hub

    return load_task(keras_hub.models.ImageClassifier, preset, num_classes=num_classes, **kwargs)


def load_run_model(run, task_cls, **kwargs):
    """Loads the model saved in a run directory (a preset folder).

    A model trained under a mixed-precision policy loads in float32 (its
    weights are float32 anyway) unless `dtype=` says otherwise: KerasHub
    cannot load a saved "mixed_*" policy back by itself.
    """
    path = run.model_path
    if not os.path.isdir(path):
        raise KerastuneError(f"run dir {run.path!r} holds no {MODEL_DIR}/ folder: was the run "
                             "finished?")
    if not os.path.exists(os.path.join(path, PRESET_CONFIG)):
        raise KerastuneError(f"run dir {run.path!r}: {MODEL_DIR}/ has no {PRESET_CONFIG}: "
                             "expected a model saved by the run (save_to_preset)")
    check_preset_folder(path, "run model")
    check_weights(run.path)
    if "dtype" not in kwargs:
        with open(os.path.join(path, PRESET_CONFIG), encoding="utf-8") as f:
            config = json.load(f)
        dtype = config.get("config", {}).get("dtype") if isinstance(config, dict) else None
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if str(name).startswith("mixed_"):
            kwargs["dtype"] = "float32"
    try:
        with safe_loading():
            return task_cls.from_preset(path, **kwargs)
    except (ValueError, KeyError, OSError) as e:
        # Weights that are not the model's (an HDF5 file of another model,
        # layers missing), a config that does not build it: the folder, not
        # the command, is at fault. A disk or permission error (an OSError
        # with an errno) is the machine's.
        if isinstance(e, OSError) and e.errno is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise KerastuneError(
            f"run dir {run.path!r}: model/ cannot be loaded ({type(e).__name__}: {first}): "
            "expected the model the run saved (save_to_preset); re-run the recipe or restore "
            "the folder") from None


def preset_max_sequence_length(preset):
    """The longest sequence the backbone of `preset` (resolved:
    `resolve_preset`) takes, read from its config alone (nothing built, no
    weights): `max_sequence_length` of a KerasHub preset's config.json; None
    where the config names no limit (rotary position embeddings, a
    converted Hugging Face checkpoint) or cannot be read here."""
    from kerastune_lab import compat

    try:
        loader = compat.preset_loader(preset)
        config = loader.config.get("config", {}) if compat.is_keras_preset_loader(loader) else {}
    except Exception:  # the load itself says what is wrong, in its own words
        return None
    longest = config.get("max_sequence_length") if isinstance(config, dict) else None
    return longest if isinstance(longest, int) and not isinstance(longest, bool) else None


def check_sequence_length(sequence_length, preset, shown=None, model=None):
    """Raises a one-line `KerastuneError` when `sequence_length` is longer
    than the preset's backbone takes: checked from the preset's config
    before its weights load (`preset_max_sequence_length`), or, given the
    loaded `model`, from its backbone (for presets whose config does not
    say).

    Args:
        sequence_length: int. The recipe's `sequence_length`.
        preset: str. The preset, resolved (`resolve_preset`).
        shown: str or None. The preset as the user named it, for the message.
        model: a loaded KerasHub task, or None.
    """
    longest = (getattr(model.backbone, "max_sequence_length", None) if model is not None
               else preset_max_sequence_length(preset))
    if isinstance(longest, int) and sequence_length > longest:
        raise KerastuneError(
            f"sequence_length={sequence_length}: expected at most {longest} tokens, the "
            f"longest sequence preset {shown or preset!r} takes (its max_sequence_length)")


@contextlib.contextmanager
def detached_preprocessor(task):
    """Runs the block with `task.preprocessor = None`, then puts it back.

    With no preprocessor a KerasHub task takes already-tokenised inputs in
    `fit`, `evaluate`, `predict` and `generate` (for a CausalLM: x =
    {"token_ids", "padding_mask"}, y, sample_weight); keep the preprocessor
    attached for `save_to_preset`, which saves its tokenizer.
    """
    preprocessor = task.preprocessor
    task.preprocessor = None
    try:
        yield task
    finally:
        task.preprocessor = preprocessor
