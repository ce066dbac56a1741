"""An adapter with its base preset: loaded on top of it, or merged into it.

    causal_lm, metadata = load_with_adapter("run/adapter.lora.h5")
    save_merged_preset("run/adapter.lora.h5", "merged/")  # plain keras_hub preset

`load_with_adapter` gives back the model as it was at the end of training
(the base quantized as recorded, the adapter on top); `merge_adapter` folds
the update into a float base's kernels, so the result is a plain KerasHub
model that saves and loads without this package.
"""

import os

import numpy as np
from keras import ops

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import backbone_of, layer_paths, lora_state
from kerastune_lab.finetune.lora.adapter_file import (
    check_base,
    load_adapter,
    read_adapter_metadata,
    read_checked_factors,
)
from kerastune_lab.finetune.lora.checks import expected_shapes
from kerastune_lab.finetune.lora.layers import Factorisation
from kerastune_lab.finetune.lora.peft_folder import is_peft_folder, peft_base_preset
from kerastune_lab.finetune.lora.targets import PROJECTION_CLASSES
from kerastune_lab.finetune.quantize import load_quantized, quantization_mode
from kerastune_lab.runs import atomic_path


def load_with_adapter(adapter, preset=None, task_cls=None, dtype=None, **kwargs):
    """Loads the base an adapter was trained on, quantized as recorded, with the
    adapter on top: the model as it was at the end of training.

    The base is quantized while it loads (`quantize.load_quantized`).

    Args:
        adapter: str. A file written by `save_adapter`, or a peft adapter
            folder (its base: `base_model_name_or_path`, not quantized).
        preset: str. The base preset (name, handle or folder). Defaults to
            the one the adapter records.
        task_cls: the KerasHub task class. Defaults to
            `keras_hub.models.CausalLM`.
        dtype: str or None. The base's float dtype ("bfloat16", "float32").
            Defaults to Keras' global dtype policy.
        **kwargs: for `from_preset`.

    Returns:
        (task, metadata): the model and the adapter's metadata dict.

    Example:
    ```python
    causal_lm, _ = load_with_adapter("runs/lora_chat-20250101-120000/adapter.lora.h5")
    ```
    """
    task_cls, metadata, preset = _base_of(adapter, preset, task_cls)
    task = load_quantized(task_cls, preset, metadata["quantize"], dtype=dtype, **kwargs)
    return task, load_adapter(task, adapter)


def merge_adapter(model, path):
    """Folds the adapter at `path` into a plain float model's kernels, in place.

    Each target kernel W becomes W + alpha / rank * A B (computed in float64,
    stored in W's dtype); the model keeps its plain layers, so it saves and
    loads like any KerasHub model.

    An adapter trained on an int8 (or int4) base merges into the float
    base's kernels: the merged model equals the float base with the adapter
    on top, and differs from the quantized model it was trained with by the
    quantization error of the base.

    The adapter is checked as `load_adapter` checks it (metadata, every
    factor's shape against the base's layer, finite values) before any
    kernel changes, and each merged kernel is checked finite in W's dtype
    before it is assigned: a failure is a one-line `KerastuneError`; after
    one about a merged kernel, the kernels before it in the file are merged
    (load the base again).

    Args:
        model: a KerasHub backbone or task, loaded from the base preset
            without quantizing and without LoRA.
        path: str. A file written by `save_adapter`.
    """
    import h5py

    path = os.fspath(path)
    metadata = read_adapter_metadata(path)
    backbone = backbone_of(model)
    check_base(metadata, backbone, path)
    if lora_state(backbone) is not None or quantization_mode(backbone) != "none":
        raise KerastuneError(f"merge {path!r}: expected a plain float base (no LoRA, "
                             "not quantized), as loaded from the preset")
    layers = layer_paths(backbone)
    for layer_path in metadata["layers"]:
        if type(layers.get(layer_path)) not in PROJECTION_CLASSES:
            raise KerastuneError(f"adapter {path!r} names layer {layer_path!r}, "
                                 "where the base has no Dense/EinsumDense layer")
    shapes = expected_shapes(backbone, metadata, path)
    with h5py.File(path, "r") as f:
        factors = read_checked_factors(f, metadata, shapes, path)
    scale = metadata["alpha"] / metadata["rank"]
    for layer_path, (a, b) in factors.items():
        layer = layers[layer_path]
        kernel = layer.kernel
        base = ops.convert_to_numpy(ops.cast(kernel, "float32")).astype("float64")
        if not np.isfinite(base).all():
            raise KerastuneError(f"merge {path!r}: the base's kernel of layer "
                                 f"{layer_path!r} holds NaN or inf: expected a finite "
                                 "base (load the preset again)")
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            base += Factorisation.of(layer).delta(a, b, scale)
            merged = ops.cast(base.astype("float32"), kernel.dtype)
        if not bool(ops.convert_to_numpy(ops.all(ops.isfinite(merged)))):
            raise KerastuneError(
                f"merge {path!r}: the merged kernel of layer {layer_path!r} holds NaN "
                f"or inf in {kernel.dtype}: expected finite values (the update "
                f"alpha / rank * A B, scale {scale:g}, is too large for the kernel's dtype)")
        kernel.assign(merged)
    return model


def save_merged_preset(adapter, output, preset=None, task_cls=None):
    """Loads the base, merges `adapter` into it, saves a preset folder at `output`.

    Plain `keras_hub` loads the result: `task_cls.from_preset(output)`.

    Args:
        adapter: str. A file written by `save_adapter`.
        output: str. The folder to write (replaced atomically).
        preset: str. The base preset (name, handle or folder), loaded in
            float. Defaults to the one the adapter records.
        task_cls: the KerasHub task class to load. Defaults to
            `keras_hub.models.CausalLM`.
    """
    task = merged_model(adapter, preset, task_cls)
    with atomic_path(output) as tmp:
        task.save_to_preset(tmp)
    return output


def load_float_base(adapter, preset=None, task_cls=None):
    """(task, metadata): the float base an adapter file was trained on, as
    its preset stores it (not quantized, no LoRA).

    Args:
        adapter: str. A file written by `save_adapter`.
        preset, task_cls: as for `save_merged_preset`.
    """
    from kerastune_lab.models import from_preset

    task_cls, metadata, preset = _base_of(adapter, preset, task_cls)
    return from_preset(task_cls, preset), metadata


def merged_model(adapter, preset=None, task_cls=None):
    """The float base with `adapter` merged into its kernels (`merge_adapter`):
    a plain KerasHub task. Arguments as for `save_merged_preset`."""
    task, _ = load_float_base(adapter, preset, task_cls)
    return merge_adapter(task, adapter)


def _base_of(adapter, preset, task_cls):
    """(task class, adapter metadata, resolved base preset) of an adapter file:
    `preset` if given, else the one the adapter records. A bad file fails
    here, before anything loads."""
    import keras_hub

    from kerastune_lab.models import resolve_preset

    task_cls = task_cls or keras_hub.models.CausalLM
    if os.path.isdir(adapter) and is_peft_folder(adapter):
        # A peft folder: its base, not quantized; checked when it loads.
        metadata = {"quantize": "none", "base": None}
        preset = preset or peft_base_preset(adapter)
    else:
        metadata = read_adapter_metadata(adapter)
        preset = preset or metadata["base"]["preset"]
    if not preset:
        raise KerastuneError(f"adapter {os.fspath(adapter)!r} records no base preset: "
                             "expected preset=... (--preset)")
    return task_cls, metadata, resolve_preset(preset, task_cls)
