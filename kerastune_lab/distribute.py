"""Multi-device training with `keras.distribution` (JAX backend), and
rematerialisation for long sequences.

    distribute=none   one device
    distribute=data   keras.distribution.DataParallel over every device
    distribute=model  keras.distribution.ModelParallel on a (batch, model)
                      mesh with the backbone's own layout map
                      (`Backbone.get_layout_map`, e.g. Llama, Gemma, Qwen)

Set the distribution before the model is built (`from_preset`), so each
weight is created where it belongs:

    dist = make_distribution("model", keras_hub.models.LlamaBackbone)
    keras.distribution.set_distribution(dist)
    model = keras_hub.models.CausalLM.from_preset(...)

Weights that the layout map does not name (LoRA factors, norms, biases) are
replicated on every device: LoRA factors are small, so each device keeps a
whole copy and no collective is needed to apply them.
"""

import contextlib

from kerastune_lab.errors import KerastuneError

MODES = ("none", "data", "model")
# keras.RematScope's "full" and "larger_than" modes wrap whole KerasHub
# attention layers in jax.checkpoint, whose Python control flow on `training`
# and `cache` then fails on tracers ("Attempted boolean conversion"); the
# "activations" mode recomputes the activated feedforward projections, where
# most of a decoder's activation memory is, and works on every backend.
REMAT_MODES = ("none", "activations")


def make_distribution(mode, backbone_cls=None, model_parallel=None):
    """Returns a `keras.distribution.Distribution`, or None for "none".

    Args:
        mode: str. One of "none", "data", "model".
        backbone_cls: a KerasHub Backbone class. Needed for "model": its
            `get_layout_map(mesh)` says how each weight is sharded.
        model_parallel: int or None. Devices along the "model" axis for
            "model"; the rest go to the "batch" axis. Defaults to all devices.
    """
    if mode not in MODES:
        raise KerastuneError(f"distribute={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "none":
        return None
    import keras

    backend = keras.backend.backend()
    if backend != "jax":
        raise KerastuneError(
            f"distribute={mode} needs the jax backend (keras.distribution); this run "
            f"uses {backend}: pass --backend jax or distribute=none"
        )
    devices = keras.distribution.list_devices()
    if len(devices) < 2:
        raise KerastuneError(
            f"distribute={mode} needs 2 or more devices; found {len(devices)} "
            f"({', '.join(map(str, devices))})"
        )
    if mode == "data":
        return keras.distribution.DataParallel(devices=devices)
    if backbone_cls is None or not hasattr(backbone_cls, "get_layout_map"):
        name = getattr(backbone_cls, "__name__", backbone_cls)
        raise KerastuneError(
            f"distribute=model needs a backbone with a layout map (Llama, Gemma, "
            f"Qwen, ...); {name} has none: use distribute=data"
        )
    m = model_parallel or len(devices)
    if len(devices) % m:
        raise KerastuneError(
            f"model_parallel={m} does not divide the {len(devices)} devices"
        )
    mesh = keras.distribution.DeviceMesh(
        shape=(len(devices) // m, m), axis_names=("batch", "model"), devices=devices)
    layout_map = backbone_cls.get_layout_map(mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def remat_scope(mode="none"):
    """Returns a context manager that turns on rematerialisation while the
    model is built: activations are recomputed in the backward pass instead
    of kept, trading compute for memory on long sequences.

    Args:
        mode: str. "none" or "activations" (see `keras.RematScope`).
    """
    if mode not in REMAT_MODES:
        raise KerastuneError(f"remat={mode!r}: expected one of {', '.join(REMAT_MODES)}")
    if mode == "none":
        return contextlib.nullcontext()
    import keras

    return keras.RematScope(mode=mode)
