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
"""

import json
import os

from keras import ops

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import backbone_of, lora_state
from kerastune_lab.finetune.lora.layers import enable_lora
from kerastune_lab.finetune.lora.peft_folder import (
    CONFIG_FILE,
    is_peft_folder,
    read_peft_folder,
)
from kerastune_lab.finetune.quantize import quantization_mode, quantize
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
    """Returns the metadata dict recorded in the adapter file at `path`."""
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
    except (OSError, KeyError, ValueError):
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise KerastuneError(f"adapter {path!r} is not a kerastune LoRA adapter: "
                             f"expected a {ADAPTER_SUFFIX} file from save_adapter")
    if metadata.get("version") != FORMAT_VERSION:
        raise KerastuneError(f"adapter {path!r} has format version "
                             f"{metadata.get('version')}: expected {FORMAT_VERSION}")
    return metadata


def read_adapter_factors(path):
    """Returns (metadata, {layer path: (A, B)}) of the adapter file at `path`
    (numpy, A: (d_in, r), B: (r, d_out)), with no model."""
    import h5py

    metadata = read_adapter_metadata(path)
    factors = {}
    with h5py.File(path, "r") as f:
        for layer_path in metadata["layers"]:
            try:
                group = f[f"layers/{layer_path}"]
                factors[layer_path] = (group["lora_a"][()], group["lora_b"][()])
            except KeyError:
                raise KerastuneError(f"adapter {os.fspath(path)!r} has no weights for "
                                     f"layer {layer_path!r}: the file is damaged") from None
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


def read_factors(f, layer_path, factorisation, rank, path):
    """Returns A and B (numpy) of `layer_path` from the open adapter file `f`,
    checked against the shapes `factorisation` gives for `rank`."""
    try:
        group = f[f"layers/{layer_path}"]
        a, b = group["lora_a"][()], group["lora_b"][()]
    except KeyError:
        raise KerastuneError(f"adapter {path!r} has no weights for layer "
                             f"{layer_path!r}: the file is damaged or for another base")
    return _checked((a, b), factorisation, rank, layer_path, path)


def load_adapter(model, path, quantize_base=True):
    """Puts the adapter at `path` on `model`'s backbone.

    A backbone without LoRA gets it as recorded (rank, alpha, targets); one
    with LoRA must match. A different base class or shape config, rank,
    alpha, targets or layer shapes is a one-line `KerastuneError`.

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

    backbone = backbone_of(model)
    if os.path.isdir(path):
        if not is_peft_folder(path):
            raise KerastuneError(f"adapter {os.fspath(path)!r} is a folder without "
                                 f"{CONFIG_FILE}: expected a {ADAPTER_SUFFIX} file or a "
                                 "peft adapter folder")
        metadata, factors = read_peft_folder(path, backbone)
        _put_factors(backbone, metadata, path, lambda p, f, r: _checked(
            factors[p], f, r, p, path))
        return metadata
    metadata = read_adapter_metadata(path)
    check_base(metadata, backbone, path)
    mode, recorded = quantization_mode(backbone), metadata["quantize"]
    if mode != recorded and not (mode == "none" and not quantize_base):
        if mode != "none" or lora_state(backbone) is not None:
            raise KerastuneError(f"adapter {path!r} was trained with "
                                 f"quantize={recorded}, but the base has "
                                 f"quantize={mode}: load the base and quantize it "
                                 "as recorded")
        quantize(backbone, recorded)
    with h5py.File(path, "r") as f:
        _put_factors(backbone, metadata, path,
                     lambda p, fac, r: read_factors(f, p, fac, r, path))
    return metadata


def _put_factors(backbone, metadata, path, factors_of):
    """Enables LoRA as `metadata` records (or checks the LoRA there is) and
    assigns A, B of each layer from `factors_of(layer path, factorisation, rank)`."""
    state = lora_state(backbone)
    if state is None:
        enable_lora(backbone, metadata["rank"], metadata["alpha"], metadata["targets"])
        state = lora_state(backbone)
    for key, value in (("rank", state.rank), ("alpha", state.alpha),
                       ("targets", list(state.targets))):
        if metadata[key] != value:
            raise KerastuneError(f"adapter {path!r} has lora {key}={metadata[key]}, "
                                 f"but the model has {key}={value}: enable LoRA as "
                                 "recorded, or load it onto a model without LoRA")
    if sorted(state.layers) != metadata["layers"]:
        raise KerastuneError(f"adapter {path!r} holds layers "
                             f"{metadata['layers'][:3]}..., which are not the model's "
                             "LoRA layers: load it onto its own base")
    for layer_path, layer in state.layers.items():
        a, b = factors_of(layer_path, layer.lora_factorisation, state.rank)
        layer.lora_a.assign(a)
        layer.lora_b.assign(b)


def _checked(factors, factorisation, rank, layer_path, path):
    """`factors` (A, B) of `layer_path`, checked against the base's shapes."""
    a, b = factors
    expected = factorisation.shapes(rank)
    if (a.shape, b.shape) != expected:
        raise KerastuneError(f"adapter {os.fspath(path)!r} holds shapes {a.shape}, "
                             f"{b.shape} for layer {layer_path!r}, but the base expects "
                             f"{expected[0]}, {expected[1]}")
    return a, b
