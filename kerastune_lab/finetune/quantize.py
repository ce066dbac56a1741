"""Quantizing a KerasHub backbone before LoRA, and reading back how it was.

    quantize(model, "int8")      # backbone.quantize("int8"), checked first
    quantization_mode(model)     # "int8"

A thin layer over Keras' own `Model.quantize`: it names the modes this
project trains LoRA on, turns an unknown mode into a one-line
`KerastuneError`, and reads the mode back from the layers (Keras keeps it in
each layer's dtype policy), so an adapter can record the base it was trained
on.

int8 here is weight-only (int8 kernels, float activations), as QLoRA keeps
its activations in bfloat16. Keras' default int8 also quantizes each
layer's inputs to int8 on every call, which drowns the small early LoRA
updates: on the tiny Llama the loss stays flat for 6 steps with Keras'
default int8 (its own `enable_lora` and ours alike), while it falls with
weight-only int8 as fast as on the float base. Keras' default stays
available as "int8_dynamic" (so a base quantized with a plain
`backbone.quantize("int8")` is recorded as such and reloaded the same way).
int4 is weight-only in Keras already.

Quantizing while loading (`load_quantized`): `from_preset` then `quantize`
holds the whole float base in memory first (a 7B model is 13.5 GB in
bfloat16, 27 GB in float32). `load_quantized` builds the model with int8
(or int4) weights from the start, through a Keras `DTypePolicyMap` naming
the layers that `Model.quantize` would quantize (found on a weightless copy
of the backbone), and quantizes the preset's float weights one layer at a
time as they are read: each layer's float weights go into a float twin of
that layer, Keras' own `quantize` turns them into int8, and the int8 values
go into the model. So the float weights in memory at any time are one
layer's (a slice of one, for large Dense and embedding layers), and the
result is the same as `from_preset` then `quantize` (quantize_load.py:
how, and what it saves; benchmarks/load_memory.py measures the peak).
This works for KerasHub-format presets (Kaggle handles such as
`llama2_7b_en`, folders written by `save_to_preset`); Hugging Face
checkpoints (`hf://`, converted by KerasHub) are loaded in `dtype` and then
quantized. Hand-written because neither Keras nor KerasHub quantizes float
weights while loading them.
"""

import contextlib
import gc
import logging
import warnings

from kerastune_lab import compat
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import abstract_weights, backbone_of, has_lora
from kerastune_lab.finetune.quantize_load import quantize_float_weights_on_load

log = logging.getLogger("kerastune_lab")

# "none" keeps the float base; "int8" is weight-only int8, "int8_dynamic"
# Keras' default int8 (inputs quantized too), "int4" Keras' (weight-only) int4.
QUANTIZE_MODES = ("none", "int8", "int8_dynamic", "int4")


def quantization_mode(model):
    """Returns the quantization mode of `model`'s backbone: "none" or a Keras mode.

    Args:
        model: a KerasHub backbone or task.
    """
    modes = set()
    for layer in compat.sublayers(backbone_of(model)):
        mode = getattr(layer, "quantization_mode", None)
        if mode == "int8" and getattr(layer, "inputs_quantizer", None) is not None:
            mode = "int8_dynamic"
        modes.add(mode)
    modes.discard(None)
    if "int8_dynamic" in modes:
        modes.discard("int8")  # embeddings have no inputs to quantize
    if len(modes) > 1:
        raise KerastuneError(f"backbone mixes quantization modes {sorted(modes)}: "
                             "expected one mode for the whole backbone")
    return modes.pop() if modes else "none"


def quantize(model, mode):
    """Quantizes `model`'s backbone in place with Keras' `quantize(mode)`.

    Call it before `lora.enable_lora`: Keras quantizes only plain layers.
    "int8" is weight-only (see the module docstring).

    Args:
        model: a KerasHub backbone or task.
        mode: str. One of QUANTIZE_MODES; "none" leaves the model as it is.
    """
    if mode not in QUANTIZE_MODES:
        raise KerastuneError(f"quantize={mode!r}: expected one of "
                             f"{', '.join(QUANTIZE_MODES)}")
    current = quantization_mode(model)
    if mode == current:
        return model
    if current != "none":
        raise KerastuneError(f"quantize={mode!r}: the base is already quantized "
                             f"to {current}")
    if has_lora(model):
        raise KerastuneError(f"quantize={mode!r}: quantize the base before "
                             "enable_lora, not after")
    with warnings.catch_warnings():
        # Keras warns once per layer type it leaves as is (norms, dropout...).
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        keras_mode = "int8" if mode == "int8_dynamic" else mode
        with _frozen_gc():
            backbone_of(model).quantize(keras_mode, config=_config(mode))
    return model


@contextlib.contextmanager
def _frozen_gc():
    """Inside, Python's cycle collector skips the objects that existed before
    (`gc.freeze`). Keras runs a full `gc.collect()` for every variable a
    quantizing layer drops (`Layer.__delattr__`), hundreds in a 7B model,
    and each went over every object of the runtime (TensorFlow, JAX, Keras):
    over half of a 7B-width load's time (`benchmarks/load_memory.py`). The
    objects made inside are collected as before."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _own_policies(model):
    """Gives each layer built under a `DTypePolicyMap` its own policy from the
    map. Keras reads the quantization mode of a layer from the map at some
    places (`quantization_mode`) and from `dtype_policy` at others
    (`Dense._get_kernel_with_merged_lora`, when saving), where a map has
    none: `save_weights` of such a model failed ("Invalid dtype: object")."""
    import keras

    for layer in compat.sublayers(backbone_of(model)):
        policy = layer.dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap) and layer.path in policy:
            compat.set_dtype_policy(layer, policy[layer.path])
    return model


def _config(mode):
    import keras

    if mode == "int8":
        return keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    return None


def _keras_mode(mode):
    return "int8" if mode == "int8_dynamic" else mode


def _policy_name(mode, source):
    """The dtype policy Keras' `quantize(mode)` gives a layer of dtype `source`
    ("int8_from_bfloat16", "int4/128_from_float32"): read off a small probe."""
    import keras

    probe = keras.layers.Dense(2, dtype=source)
    probe.build((None, 8))
    probe.quantize(_keras_mode(mode), config=_config(mode))
    return probe.dtype_policy.name


def _is_quantizable(layer):
    """Whether Keras' `Model.quantize` quantizes `layer` (a leaf layer whose own
    class defines `quantize`: Keras' layers refuse their subclasses)."""
    import keras

    cls = type(layer)
    return ("quantize" in cls.__dict__ and cls.quantize is not keras.layers.Layer.quantize
            and len(compat.sublayers(layer, include_self=True)) == 1)


def quantized_policy_map(backbone_cls, config, mode, dtype=None):
    """A `DTypePolicyMap` that builds `backbone_cls(**config)` with the weights
    `quantize(mode)` would quantize already quantized (and no float copy).

    Args:
        backbone_cls: a KerasHub backbone class.
        config: dict. Its constructor arguments.
        mode: str. "int8", "int8_dynamic" or "int4".
        dtype: str or None. The float dtype of the other layers. Defaults to
            Keras' global dtype policy.

    Returns:
        (policy_map, layers): the map (pass it as `dtype=`), and the layers
        of a weightless copy of the backbone that it quantizes.
    """
    import keras

    source = keras.dtype_policies.get(dtype or keras.config.dtype_policy()).name
    with abstract_weights():  # layer paths and classes, no memory
        shadow = backbone_cls.from_config(dict(config, dtype=source))
        layers = [layer for layer in compat.sublayers(shadow) if _is_quantizable(layer)]
    policy_map = keras.dtype_policies.DTypePolicyMap(default_policy=source)
    policy = _policy_name(mode, source)
    for layer in layers:
        policy_map[layer.path] = policy
    return policy_map, layers


def build_quantized(backbone_cls, config, mode, dtype=None):
    """Builds `backbone_cls(**config)` with quantized weights from the start (no
    float copy), set up as `quantize(mode)` leaves a backbone; the quantized
    weights hold zeros until assigned. For benchmarks with random weights.

    Args: as for `quantized_policy_map`.
    """
    policy_map, _ = quantized_policy_map(backbone_cls, config, mode, dtype)
    backbone = backbone_cls(**dict(config, dtype=policy_map))
    for layer in compat.sublayers(backbone):
        if layer.quantization_mode is not None:
            layer.quantization_config = _config(mode)
            if mode == "int8" and hasattr(layer, "inputs_quantizer"):
                layer.inputs_quantizer = None  # weight-only, as `_config` says
    return _own_policies(backbone)


def load_quantized(task_cls, preset, mode, dtype=None, **kwargs):
    """Loads `task_cls.from_preset(preset)` with its backbone quantized to `mode`,
    quantizing while loading (see the module docstring).

    Args:
        task_cls: a KerasHub task class, e.g. `keras_hub.models.CausalLM`.
        preset: str. A preset name, handle or folder (checked by the caller).
        mode: str. One of QUANTIZE_MODES.
        dtype: str or None. The float dtype the weights are read in and the
            unquantized layers keep ("bfloat16", "float32"). Defaults to
            Keras' global dtype policy.
        **kwargs: for `from_preset` (e.g. `preprocessor=None`).

    Returns:
        The task, quantized as `quantize(task, mode)` would leave it.

    Example:
    ```python
    causal_lm = load_quantized(keras_hub.models.CausalLM, "llama2_7b_en", "int8",
                               dtype="bfloat16")
    ```
    """
    import keras

    from kerastune_lab.models import from_preset

    if mode not in QUANTIZE_MODES:
        raise KerastuneError(f"quantize={mode!r}: expected one of "
                             f"{', '.join(QUANTIZE_MODES)}")
    if mode == "none":
        return from_preset(task_cls, preset, dtype=dtype, **kwargs)
    loader = compat.preset_loader(preset)
    saved_dtype = loader.config.get("config", {}).get("dtype")
    if isinstance(saved_dtype, dict) and "Map" in saved_dtype.get("class_name", ""):
        # Saved quantized (e.g. llama2_7b_en_int8): loaded as saved, and an
        # error below if that is not `mode`.
        log.info("preset %s is saved quantized: loading it as saved", preset)
        return quantize(_own_policies(from_preset(task_cls, preset, **kwargs)), mode)
    if not compat.is_keras_preset_loader(loader):
        log.info("preset %s is not a KerasHub-format preset: loading it in %s, then "
                 "quantizing to %s", preset, dtype or "the default dtype", mode)
        return quantize(from_preset(task_cls, preset, dtype=dtype, **kwargs), mode)
    source = keras.dtype_policies.get(dtype or keras.config.dtype_policy()).name
    policy_map, layers = quantized_policy_map(
        loader.check_backbone_class(), loader.config["config"], mode, source)
    classes = {type(layer) for layer in layers}
    with (warnings.catch_warnings(), _frozen_gc(),
          quantize_float_weights_on_load(classes, _keras_mode(mode), _config(mode), source)):
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        task = _own_policies(from_preset(task_cls, preset, dtype=policy_map, **kwargs))
    got = quantization_mode(task)
    if got != mode:  # a layer Keras would quantize that this copy missed
        raise KerastuneError(f"quantize={mode}: loading {preset!r} quantized gave a "
                             f"{got} base; load it in float and call quantize()")
    return task
