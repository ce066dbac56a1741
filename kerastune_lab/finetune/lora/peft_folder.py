"""LoRA factors in peft's own folder layout: written for, and read from, peft.

    write_peft_folder(folder, backbone_class, factors, rank=8, alpha=16)
    read_peft_folder(folder, backbone)   # (metadata, {layer path: (A, B)})

A peft LoRA adapter is `adapter_config.json` (r, lora_alpha,
target_modules, ...) and `adapter_model.safetensors`, keyed by the
transformers module the factor sits on:
`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, with A as
(r, d_in) and B as (d_out, r), the update scaled by lora_alpha / r. Ours
are A: (d_in, r), B: (r, d_out), the same scale, keyed by Keras layer path
("transformer_layer_N/self_attention/query"); the flattening of d_in and
d_out is the one KerasHub's transformers exporter gives the kernels
(`keras_hub/src/utils/transformers/export/llama3.py`), so the transposes
are the whole conversion. `MODULES` gives each Keras layer its
transformers module, for the decoders whose attention has separate
q/k/v projections (Llama 2 and 3). GPT-2 fuses them into one `c_attn`
module and is refused: export it merged instead.

Written by hand: neither peft nor KerasHub converts between the two. Only
safetensors are read (arrays, no code), never `adapter_model.bin` (pickle),
and checked before use as `adapter_file` checks its own files (the checks
both formats share are in `checks.py`).
"""

import json
import os
import re

import numpy as np

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune.lora.checks import (
    check_rank_alpha,
    expected_shapes,
    read_finite,
    short_repr,
)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# Keras layer path under transformer_layer_N -> transformers module under
# model.layers.N, for each backbone class whose layers map one to one.
_LLAMA = {
    "self_attention/query": "self_attn.q_proj",
    "self_attention/key": "self_attn.k_proj",
    "self_attention/value": "self_attn.v_proj",
    "self_attention/attention_output": "self_attn.o_proj",
    "feedforward_gate_dense": "mlp.gate_proj",
    "feedforward_intermediate_dense": "mlp.up_proj",
    "feedforward_output_dense": "mlp.down_proj",
}
MODULES = {"LlamaBackbone": _LLAMA, "Llama3Backbone": _LLAMA}
_PATH = re.compile(r"transformer_layer_(\d+)/(.+)")
_KEY = re.compile(r"base_model\.model\.model\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight")
# adapter_config.json keys (peft LoraConfig) that change what the factors
# mean, with the value under which they are what `read_peft_folder` reads.
_PLAIN = {"bias": "none", "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
          "layers_to_transform": None, "modules_to_save": None, "lora_bias": False,
          "fan_in_fan_out": False}

def modules_of(backbone_class, what):
    """The {layer suffix: module} table of `backbone_class` (a name), or a
    one-line error naming `what` and the classes there are."""
    if backbone_class not in MODULES:
        hint = (": its attention is one fused c_attn module; export the merged model "
                "(--format hf) instead" if backbone_class == "GPT2Backbone" else "")
        raise KerastuneError(f"{what}: the PEFT layout is written for "
                             f"{', '.join(sorted(MODULES))}, not {backbone_class}{hint}")
    return MODULES[backbone_class]


def module_name(backbone_class, layer_path, what="peft"):
    """The transformers module ("model.layers.0.self_attn.q_proj") of a layer path."""
    table = modules_of(backbone_class, what)
    match = _PATH.fullmatch(layer_path)
    if not match or match.group(2) not in table:
        raise KerastuneError(f"{what}: layer {layer_path!r} has no transformers module: "
                             f"expected transformer_layer_N/ one of {', '.join(table)}")
    return f"model.layers.{match.group(1)}.{table[match.group(2)]}"


def write_peft_folder(folder, backbone_class, factors, rank, alpha, base_name=None):
    """Writes `factors` ({layer path: (A, B)} in our layout) as a peft adapter.

    Args:
        folder: str. An existing, empty folder.
        backbone_class: str. The KerasHub backbone class the factors are for.
        factors: dict. {layer path: (A (d_in, r), B (r, d_out))}, numpy.
        rank, alpha: the adapter's r and alpha (scale alpha / rank).
        base_name: str or None. `base_model_name_or_path`: the Hugging Face
            name of the base, or the folder it is exported to.
    """
    from safetensors.numpy import save_file

    tensors, modules = {}, set()
    for layer_path, (a, b) in sorted(factors.items()):
        module = module_name(backbone_class, layer_path)
        modules.add(module.rsplit(".", 1)[-1])
        key = f"base_model.model.{module}"
        tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(np.asarray(a, "float32").T)
        tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(np.asarray(b, "float32").T)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path":
              base_name, "r": rank, "lora_alpha": alpha, "target_modules": sorted(modules),
              "lora_dropout": 0.0, "use_rslora": False, "init_lora_weights": True,
              "inference_mode": True, "revision": None, "layers_pattern": None, **_PLAIN}
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return folder


def is_peft_folder(path):
    """Whether `path` is a folder holding a peft adapter config."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_peft_folder(folder, backbone):
    """Reads a peft LoRA adapter folder for `backbone` into our layout.

    Checked as `load_adapter` checks our own files, before any factor is
    read: the config (r, lora_alpha, ...), the tensor names, and every
    tensor's shape (from the safetensors header) against the base's layer;
    then each tensor's values as it is read (finite, block by block).

    Returns:
        (metadata, factors): metadata as `read_adapter_metadata` gives it
        (rank, alpha, targets, layers; quantize None: any base), and
        {layer path: (A (d_in, r), B (r, d_out))} as float numpy arrays.
    """
    from safetensors import SafetensorError, safe_open

    what = f"adapter {os.fspath(folder)!r}"
    table = modules_of(type(backbone).__name__, what)
    config = _read_config(folder, what)
    weights = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise KerastuneError(f"{what} has no {WEIGHTS_FILE}: expected peft's safetensors "
                             "(adapter_model.bin, pickle, is not loaded)")
    try:
        with safe_open(weights, framework="numpy") as handle:
            metadata, keys = _peft_layout(handle, table, config, what)
            shapes = expected_shapes(backbone, metadata, folder)
            slices = {}
            for layer_path, (a_shape, b_shape) in shapes.items():
                for side, expected in (("A", a_shape), ("B", b_shape)):
                    key = keys[layer_path][side]
                    slices[key] = _checked_slice(handle, key, expected, side, layer_path,
                                                 metadata["rank"], what)
            factors = {}
            for layer_path in shapes:
                a, b = (_read_transposed(slices[keys[layer_path][side]],
                                         keys[layer_path][side], what) for side in "AB")
                factors[layer_path] = (a, b)
    except (SafetensorError, OSError) as e:
        raise KerastuneError(f"{what}: {WEIGHTS_FILE} cannot be read ({e})") from None
    return metadata, factors


def _peft_layout(handle, table, config, what):
    """(metadata, {layer path: {"A": key, "B": key}}) from the tensor names
    of the open safetensors `handle` and the checked `config`."""
    layers = {module: suffix for suffix, module in table.items()}
    keys = {}
    for key in handle.keys():
        match = _KEY.fullmatch(key)
        if not match or match.group(2) not in layers:
            raise KerastuneError(f"{what} holds {key!r}: expected LoRA factors of "
                                 f"{', '.join(sorted(layers))} as peft writes them "
                                 "(base_model.model.model.layers.N.<module>.lora_A.weight)")
        layer_path = f"transformer_layer_{match.group(1)}/{layers[match.group(2)]}"
        keys.setdefault(layer_path, {})[match.group(3)] = key
    if not keys:
        raise KerastuneError(f"{what}: {WEIGHTS_FILE} holds no tensor: expected LoRA "
                             "factors as peft writes them")
    for layer_path, pair in sorted(keys.items()):
        if set(pair) != {"A", "B"}:
            raise KerastuneError(f"{what} holds lora_A or lora_B of {layer_path!r} without "
                                 "the other: the file is damaged")
    rank, alpha = config["r"], config["lora_alpha"]
    if config.get("use_rslora"):
        alpha = alpha * rank ** 0.5  # rsLoRA scales by alpha / sqrt(r)
    targets = sorted({path.rsplit("/", 1)[-1] for path in keys})
    metadata = {"rank": rank, "alpha": alpha, "targets": targets, "layers": sorted(keys),
                "quantize": None, "base": None}
    return metadata, keys


# safetensors dtypes read as factors (BF16 through ml_dtypes, as Keras does).
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def _checked_slice(handle, key, expected, side, layer_path, rank, what):
    """The safetensors slice of `key`, its shape (peft's layout, the
    transpose of ours) checked against `expected` (ours) without reading it."""
    piece = handle.get_slice(key)
    shape, dtype = tuple(piece.get_shape()), piece.get_dtype()
    ours = tuple(reversed(shape))
    if ours != tuple(expected):
        raise KerastuneError(
            f"{what}: tensor {key!r} has shape {shape}, {side} {ours} in Keras' layout: "
            f"expected {side} {tuple(expected)} for layer {layer_path!r} (r={rank} on the "
            "base's layer)")
    if dtype not in _FLOAT_DTYPES:
        raise KerastuneError(f"{what}: tensor {key!r} holds {dtype} values: expected "
                             f"one of {', '.join(_FLOAT_DTYPES)}")
    return piece


def _read_transposed(piece, key, what):
    """The tensor of safetensors slice `piece` as float32 (or float64),
    checked finite block by block, transposed into our layout."""
    import ml_dtypes  # noqa: F401  (numpy then reads bfloat16)

    dtype = "float64" if piece.get_dtype() == "F64" else "float32"
    return read_finite(lambda start, stop: piece[start:stop], piece.get_shape(), key,
                       what, dtype=dtype).T


def peft_base_preset(folder):
    """The base a peft adapter folder names (`base_model_name_or_path`) as a
    KerasHub preset: a Hugging Face name as an hf:// handle (KerasHub
    converts transformers checkpoints), a local KerasHub preset folder as it
    is; None for none or a local transformers folder (give the preset)."""
    name = _read_config(folder, f"adapter {os.fspath(folder)!r}").get(
        "base_model_name_or_path")
    if not name:
        return None
    if os.path.isabs(name) or os.path.exists(name):
        return name if os.path.isfile(os.path.join(name, "metadata.json")) else None
    return f"hf://{name}"


def _read_config(folder, what):
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise KerastuneError(f"{what}: {CONFIG_FILE} is not a peft LoRA config (expected "
                             "peft_type LORA)")
    check_rank_alpha(config.get("r"), config.get("lora_alpha"), f"{what}: {CONFIG_FILE}",
                     names=("r", "lora_alpha"))
    name = config.get("base_model_name_or_path")
    if name is not None and not isinstance(name, str):
        raise KerastuneError(f"{what}: {CONFIG_FILE}: base_model_name_or_path="
                             f"{short_repr(name)}: expected a model name or folder (a string)")
    for key, plain in _PLAIN.items():
        if config.get(key, plain) not in (plain, None if plain == {} else plain):
            raise KerastuneError(f"{what}: {key}={config[key]!r} is not supported: expected "
                                 f"{plain!r} (plain LoRA on every layer)")
    return config
