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
"""

import warnings

from kerastune_lab.errors import KerastuneError

# "none" keeps the float base; "int8" is weight-only int8, "int8_dynamic"
# Keras' default int8 (inputs quantized too), "int4" Keras' (weight-only) int4.
QUANTIZE_MODES = ("none", "int8", "int8_dynamic", "int4")


def backbone_of(model):
    """Returns `model.backbone` for a KerasHub task, else `model` itself."""
    return getattr(model, "backbone", model)


def quantization_mode(model):
    """Returns the quantization mode of `model`'s backbone: "none" or a Keras mode.

    Args:
        model: a KerasHub backbone or task.
    """
    modes = set()
    for layer in backbone_of(model)._flatten_layers(include_self=False):
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
    if getattr(backbone_of(model), "_kerastune_lora", None) is not None:
        raise KerastuneError(f"quantize={mode!r}: quantize the base before "
                             "enable_lora, not after")
    with warnings.catch_warnings():
        # Keras warns once per layer type it leaves as is (norms, dropout...).
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        keras_mode = "int8" if mode == "int8_dynamic" else mode
        backbone_of(model).quantize(keras_mode, config=_config(mode))
    return model


def _config(mode):
    import keras

    if mode == "int8":
        return keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    return None
