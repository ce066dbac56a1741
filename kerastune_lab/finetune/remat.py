"""Rematerialisation per transformer block: activations recomputed in the
backward pass instead of kept.

    with build_scope(mode):            # "activations": Keras' RematScope
        model = load_quantized(...)
    apply_remat(model, mode)           # "blocks": each transformer block
                                       # under keras.remat (jax.checkpoint)

    remat=none         keep every activation (fastest, most memory)
    remat=activations  Keras' `RematScope(mode="activations")`: the activated
                       feedforward projections are recomputed
    remat=blocks       each transformer block is one `keras.remat` function:
                       only the block's inputs are kept, and everything inside
                       it (attention, feedforward, the dequantized kernels of
                       an int8/int4 base) is recomputed in the backward pass

Why "blocks" is written here: a quantized base's kernels are dequantized on
every call, and without rematerialisation the autodiff keeps each
dequantized kernel for the backward pass, so a 7B int8 base holds a float
copy of itself in temporaries (`kerastune plan` shows it). Keras'
`RematScope(mode="full")` would wrap every layer, but it passes `training`
and the cache into `jax.checkpoint` as traced values, and KerasHub's
attention branches on them in Python ("Attempted boolean conversion"). Here
a block's non-tensor arguments (`training`, a `None` cache) are bound before
`keras.remat`, and a call with a cache (generation) is not rematerialised.

The values are the same as without it (tests/test_remat.py: loss and
gradients equal). With dropout in a block (GPT-2's 0.1), the dropout seeds
would be drawn inside the recomputed function: refused, one line.
"""

import contextlib

from kerastune_lab import compat
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import backbone_of

MODES = ("none", "activations", "blocks")
_CACHE_ARGUMENTS = ("cache", "self_attention_cache", "cross_attention_cache")


def check_mode(mode):
    if mode not in MODES:
        raise KerastuneError(f"remat={mode!r}: expected one of {', '.join(MODES)}")


def build_scope(mode):
    """The scope to build the model in: Keras' `RematScope` for
    "activations", nothing otherwise."""
    from kerastune_lab.distribute import remat_scope

    check_mode(mode)
    return remat_scope(mode) if mode == "activations" else contextlib.nullcontext()


def apply_remat(model, mode):
    """After the model is built: "blocks" puts each transformer block of its
    backbone under `keras.remat`; other modes change nothing. Returns the model."""
    check_mode(mode)
    if mode == "blocks":
        remat_blocks(model)
    return model


class RematBlock:
    """Mixin of a transformer block class whose training call is one
    `keras.remat` function (see the module docstring)."""

    def call(self, *args, **kwargs):
        import keras

        if any(kwargs.get(name) is not None for name in _CACHE_ARGUMENTS):
            return super().call(*args, **kwargs)  # generation: nothing to save
        tensors = {k: v for k, v in kwargs.items() if keras.ops.is_tensor(v)}
        fixed = {k: v for k, v in kwargs.items() if k not in tensors}
        parent = super().call

        def block(inputs):
            positional, named = inputs
            return parent(*positional, **named, **fixed)

        return keras.remat(block)((args, tensors))


_CLASSES = {}


def _remat_class(cls):
    if issubclass(cls, RematBlock):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Remat{cls.__name__}", (RematBlock, cls), {})
    return _CLASSES[cls]


def _dropout_rate(layer):
    rates = [getattr(sub, "rate", 0) or 0 for sub in compat.sublayers(layer, include_self=True)
             if "Dropout" in type(sub).__name__]
    return max(rates, default=0)


def remat_blocks(model):
    """Gives each block in `model`'s `backbone.transformer_layers` a class
    (a subclass of its own) whose call runs under `keras.remat`.

    Args:
        model: a KerasHub task or backbone with `transformer_layers`
            (Llama, Gemma, Mistral, Qwen, GPT-2, ...).
    """
    backbone = backbone_of(model)
    blocks = getattr(backbone, "transformer_layers", None)
    if not blocks:
        raise KerastuneError(f"remat=blocks: {type(backbone).__name__} has no "
                             "transformer_layers; use remat=activations")
    rate = max(_dropout_rate(block) for block in blocks)
    if rate:
        raise KerastuneError(f"remat=blocks: {type(backbone).__name__} has dropout "
                             f"{rate} in its blocks (its seeds would be drawn inside the "
                             "recomputed block); use remat=activations")
    for block in blocks:
        compat.swap_class(block, _remat_class(type(block)))
    return model
