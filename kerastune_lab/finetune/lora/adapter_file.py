"""The LoRA adapter file (`.lora.h5`): writing it, reading it onto a model.

    save_adapter(causal_lm, "run/adapter.lora.h5", preset="llama2_7b_en")
    read_adapter_metadata("run/adapter.lora.h5")    # {"rank": 8, ...}
    load_adapter(fresh_causal_lm, "run/adapter.lora.h5")  # quantizes as recorded

An h5 file holding the factors only, never the base: A and B of each LoRA
layer under "layers/<layer path>/lora_a" and ".../lora_b", keyed by layer
path rather than by index (KerasHub issue #2701), and a JSON "metadata"
attribute recording rank, alpha, targets, the quantize mode and the base
(class, preset, shape config) it was trained on, so a mismatched base is a
one-line error. Adapters are read only from h5 (arrays, no code), never
pickle. `load_adapter` also reads a peft adapter folder (`peft_folder.py`).

An adapter is checked before anything is allocated or changed for it: its
metadata (types and values: rank a positive int up to MAX_RANK, alpha a
finite positive number, ...), then each factor's shape against the base's
layer (from the h5 dataset's shape, no data read), then each factor's
values as they are read (finite, block by block). Each failure is a
one-line `KerastuneError` naming the file, the field or factor and what
was expected; the model is left as it was. The checks both formats share
are in `peft_folder.py`, which this module imports.
"""

import json
import os

from keras import ops

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import backbone_of, lora_state
from kerastune_lab.finetune.lora.checks import (
    check_rank_alpha,
    expected_shapes,
    read_finite,
    short_repr,
)
from kerastune_lab.finetune.lora.layers import enable_lora
from kerastune_lab.finetune.lora.peft_folder import CONFIG_FILE, is_peft_folder, read_peft_folder
from kerastune_lab.finetune.quantize import QUANTIZE_MODES, quantization_mode, quantize
from kerastune_lab.runs import atomic_path

ADAPTER_SUFFIX = ".lora.h5"
FORMAT = "kerastune_lora"
FORMAT_VERSION = 1
# Base-config keys that do not change weight shapes.
_NOT_SHAPE = ("name", "trainable", "dtype")


def _base_info(backbone, preset=None):
    config = backbone.get_config()
    shape = {k: v for k, v in sorted(config.items())
             if k not in _NOT_SHAPE and isinstance(v, (int, bool))}
    return {"class_name": type(backbone).__name__, "preset": preset, "shape": shape}


def save_adapter(model, path, preset=None):
    """Writes the LoRA weights of `model` (nothing else) to an h5 file.

    Weights are stored under their layer path ("layers/<path>/lora_a"), and
    the file's "metadata" attribute (JSON) records rank, alpha, targets,
    quantize mode and the base (class, preset, shape config).

    Args:
        model: a KerasHub backbone or task with LoRA enabled.
        path: str. The file, ending in ".lora.h5".
        preset: str. The base preset's name or handle, recorded for loading.
    """
    import h5py

    state = lora_state(model)
    if state is None:
        raise KerastuneError("save_adapter: the model has no LoRA: call "
                             "enable_lora first")
    path = os.fspath(path)
    if not path.endswith(ADAPTER_SUFFIX):
        raise KerastuneError(f"adapter path {path!r}: expected a name ending in "
                             f"{ADAPTER_SUFFIX}")
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "rank": state.rank,
                "alpha": state.alpha, "targets": list(state.targets),
                "quantize": quantization_mode(model), "layers": sorted(state.layers),
                "base": _base_info(backbone_of(model), preset)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["metadata"] = json.dumps(metadata)
            for layer_path, layer in sorted(state.layers.items()):
                group = f.create_group(f"layers/{layer_path}")
                group["lora_a"] = ops.convert_to_numpy(layer.lora_a)
                group["lora_b"] = ops.convert_to_numpy(layer.lora_b)
    return path


def read_adapter_metadata(path):
    """Returns the metadata dict recorded in the adapter file at `path`,
    checked: every field of the expected type, rank and alpha in range."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KerastuneError(f"adapter {path!r} does not exist: expected a "
                             f"{ADAPTER_SUFFIX} file")
    if not path.lower().endswith(".h5"):
        # Adapters are read only from h5 (arrays, no code), never pickle.
        raise KerastuneError(f"adapter {path!r}: expected an h5 file ({ADAPTER_SUFFIX} "
                             "from save_adapter); other formats are not loaded")
    try:
        with h5py.File(path, "r") as f:
            metadata = json.loads(f.attrs["metadata"])
    except (OSError, KeyError, ValueError, TypeError):
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise KerastuneError(f"adapter {path!r} is not a kerastune LoRA adapter: "
                             f"expected a {ADAPTER_SUFFIX} file from save_adapter")
    if metadata.get("version") != FORMAT_VERSION:
        raise KerastuneError(f"adapter {path!r} has format version "
                             f"{short_repr(metadata.get('version'))}: expected {FORMAT_VERSION}")
    _check_metadata(metadata, f"adapter {path!r}")
    return metadata


def _check_metadata(metadata, what):
    """Raises unless each field `save_adapter` records has its type and range."""

    def bad(field, value, expected):
        raise KerastuneError(f"{what}: metadata {field}={short_repr(value)}: expected {expected}")

    def strings(value):
        return (isinstance(value, list) and value
                and all(isinstance(v, str) and v for v in value))

    check_rank_alpha(metadata.get("rank"), metadata.get("alpha"), what)
    if not strings(metadata.get("targets")):
        bad("targets", metadata.get("targets"), "a list of layer names (strings)")
    layers = metadata.get("layers")
    if not strings(layers) or len(set(layers)) != len(layers):
        bad("layers", layers, "a list of distinct layer paths (strings)")
    if metadata.get("quantize") not in QUANTIZE_MODES:
        bad("quantize", metadata.get("quantize"), f"one of {', '.join(QUANTIZE_MODES)}")
    base = metadata.get("base")
    if not isinstance(base, dict):
        bad("base", base, "a dict (class_name, preset, shape)")
    if not isinstance(base.get("class_name"), str):
        bad("base.class_name", base.get("class_name"), "a backbone class name (a string)")
    if base.get("preset") is not None and not isinstance(base["preset"], str):
        bad("base.preset", base["preset"], "a preset name, handle or folder (a string)")
    shape = base.get("shape")
    if not isinstance(shape, dict) or not all(
            isinstance(v, (int, bool)) for v in shape.values()):
        bad("base.shape", shape, "a dict of integer config values")


def read_adapter_factors(path):
    """Returns (metadata, {layer path: (A, B)}) of the adapter file at `path`
    (numpy, A: (d_in, r), B: (r, d_out)), with no model.

    With no base to compare with, each pair is checked against the rank the
    file records (A: (d_in, rank), B: (rank, d_out)), and for finite values.
    """
    import h5py

    metadata = read_adapter_metadata(path)
    what, rank = f"adapter {os.fspath(path)!r}", metadata["rank"]
    with h5py.File(path, "r") as f:
        datasets = {}
        for layer_path in sorted(metadata["layers"]):
            a, b = (_dataset(f, f"{layer_path}/{name}", what) for name in ("lora_a", "lora_b"))
            if (len(a.shape) != 2 or len(b.shape) != 2 or a.shape[1] != rank
                    or b.shape[0] != rank):
                raise KerastuneError(
                    f"{what}: lora factors of {layer_path!r} have shapes {a.shape}, "
                    f"{b.shape}: expected (d_in, {rank}), ({rank}, d_out) for the "
                    f"recorded rank {rank}")
            datasets[layer_path] = a, b
        factors = {layer_path: (_read_h5(a, f"{layer_path}/lora_a", what),
                                _read_h5(b, f"{layer_path}/lora_b", what))
                   for layer_path, (a, b) in datasets.items()}
    return metadata, factors


def check_base(metadata, backbone, path):
    """Raises unless `backbone` has the class and shape config the adapter
    at `path` (its `metadata`) was trained on."""
    saved, here = metadata["base"], _base_info(backbone)
    what = f"adapter {path!r} was trained on a {saved['class_name']}"
    if saved.get("preset"):
        what += f" ({saved['preset']})"
    if saved["class_name"] != here["class_name"]:
        raise KerastuneError(f"{what}, but the base is a {here['class_name']}: "
                             "load it onto the base it was trained on")
    for key in sorted(set(saved["shape"]) | set(here["shape"])):
        old, new = saved["shape"].get(key), here["shape"].get(key)
        if old != new:
            raise KerastuneError(f"{what} with {key}={old}, but the base has "
                                 f"{key}={new}: load it onto the base it was "
                                 "trained on")


def check_shape(shape, expected, name, what, rank):
    """Raises unless factor `name` of shape `shape` has the `expected` one."""
    if tuple(shape) != tuple(expected):
        raise KerastuneError(f"{what}: lora factor {name!r} has shape {tuple(shape)}: "
                             f"expected {tuple(expected)} (rank {rank} on the base's layer)")


def _dataset(f, name, what):
    """The h5 dataset "layers/<name>" of the open adapter file `f`."""
    import h5py

    dataset = f.get(f"layers/{name}")
    if not isinstance(dataset, h5py.Dataset):
        raise KerastuneError(f"{what}: lora factor {name!r} is missing: the file is "
                             "damaged or for another base")
    if dataset.dtype.kind != "f":
        raise KerastuneError(f"{what}: lora factor {name!r} holds {dataset.dtype} "
                             "values: expected floating point")
    return dataset


def _read_h5(dataset, name, what):
    """The checked-shape h5 `dataset` as numpy, checked finite block by block."""
    return read_finite(lambda start, stop: dataset[start:stop], dataset.shape, name, what)


def read_checked_factors(f, metadata, shapes, path):
    """{layer path: (A, B)} (numpy) read from the open adapter file `f`:
    every factor's shape checked against `shapes` (`expected_shapes`)
    before any is read, then each read checking its values are finite."""
    what = f"adapter {os.fspath(path)!r}"
    datasets = {}
    for layer_path, pair in shapes.items():
        datasets[layer_path] = []
        for suffix, expected in zip(("lora_a", "lora_b"), pair):
            name = f"{layer_path}/{suffix}"
            dataset = _dataset(f, name, what)
            check_shape(dataset.shape, expected, name, what, metadata["rank"])
            datasets[layer_path].append((name, dataset))
    return {layer_path: tuple(_read_h5(dataset, name, what) for name, dataset in pair)
            for layer_path, pair in datasets.items()}


def load_adapter(model, path, quantize_base=True):
    """Puts the adapter at `path` on `model`'s backbone.

    A backbone without LoRA gets it as recorded (rank, alpha, targets); one
    with LoRA must match. A different base class or shape config, rank,
    alpha, targets or layer shapes, damaged metadata, a missing factor or
    one holding NaN or inf is a one-line `KerastuneError`, raised before the
    model is changed (quantized, given LoRA) or anything is allocated for
    the adapter.

    Args:
        model: a KerasHub backbone or task, loaded from the base preset.
        path: str. A file written by `save_adapter`, or a peft LoRA adapter
            folder (`adapter_config.json`, `adapter_model.safetensors`: see
            `peft_folder`) for a Llama-class base of the same shape; its
            factors are checked against the base's layer shapes, and the
            base is used as it is (peft records no quantize mode).
        quantize_base: bool. Quantize an unquantized base as the adapter
            records (True), or keep it as it is (False: for example a float
            base under an adapter trained on int8). A base quantized in
            another mode is an error either way.

    Returns:
        The adapter's metadata dict.
    """
    import h5py

    path = os.fspath(path)
    backbone = backbone_of(model)
    if os.path.isdir(path):
        if not is_peft_folder(path):
            raise KerastuneError(f"adapter {path!r} is a folder without "
                                 f"{CONFIG_FILE}: expected a {ADAPTER_SUFFIX} file or a "
                                 "peft adapter folder")
        metadata, factors = read_peft_folder(path, backbone)  # checked as ours are
        _put_factors(backbone, metadata, factors)
        return metadata
    metadata = read_adapter_metadata(path)
    check_base(metadata, backbone, path)
    mode, recorded = quantization_mode(backbone), metadata["quantize"]
    quantize_now = mode != recorded and not (mode == "none" and not quantize_base)
    if quantize_now and (mode != "none" or lora_state(backbone) is not None):
        raise KerastuneError(f"adapter {path!r} was trained with "
                             f"quantize={recorded}, but the base has "
                             f"quantize={mode}: load the base and quantize it "
                             "as recorded")
    shapes = expected_shapes(backbone, metadata, path)
    with h5py.File(path, "r") as f:
        factors = read_checked_factors(f, metadata, shapes, path)
    if quantize_now:
        quantize(backbone, recorded)
    _put_factors(backbone, metadata, factors)
    return metadata


def _put_factors(backbone, metadata, factors):
    """Enables LoRA as `metadata` records (unless `expected_shapes` found it
    there as recorded) and assigns the checked A, B of each layer."""
    state = lora_state(backbone)
    if state is None:
        enable_lora(backbone, metadata["rank"], metadata["alpha"], metadata["targets"])
        state = lora_state(backbone)
    for layer_path, layer in state.layers.items():
        a, b = factors[layer_path]
        layer.lora_a.assign(a)
        layer.lora_b.assign(b)
