"""What `finetune.quantize` and `finetune.lora` both need from a backbone.

    backbone_of(task)        # task.backbone (a backbone is its own)
    layer_paths(task)        # {"transformer_layer_0/self_attention/query": layer, ...}
    with abstract_weights(): # weights get a shape, no memory: counting only
        backbone = LlamaBackbone(**config)
    has_lora(task)           # whether `lora.enable_lora` ran on its backbone
    carries_lora(layer)      # whether a layer is one of LoRA's layers

A leaf module: it imports neither `lora` nor `quantize`. Both import it, and
`lora` imports `quantize`, never the other way round, so the three form no
import cycle. It owns the attribute in which `lora.enable_lora` keeps its
`LoraState` on a backbone (`set_lora_state`, `lora_state`), so no other
module reads that attribute by name. Keras is imported inside the functions
that need it, as in `quantize`, so importing this does not import Keras.
"""

import contextlib

from kerastune_lab import compat
from kerastune_lab.errors import KerastuneError

# The backbone attribute that holds what `lora.enable_lora` did (a LoraState).
_LORA_STATE = "_kerastune_lora"


def backbone_of(model):
    """Returns `model.backbone` for a KerasHub task, else `model` itself."""
    return getattr(model, "backbone", model)


def layer_paths(model):
    """Returns {path: layer} for every layer of `model`'s backbone.

    A path joins layer names from the backbone down, e.g.
    "transformer_layer_0/self_attention/query"; names come from the model's
    config, so a freshly loaded base has the same paths.
    """
    paths = {}

    def walk(layer, prefix):
        for child in compat.sublayers(layer, recursive=False):
            path = f"{prefix}/{child.name}" if prefix else child.name
            if path in paths and paths[path] is not child:
                raise KerastuneError(f"two layers share the path {path!r}: LoRA "
                                     "needs unique layer names")
            paths[path] = child
            walk(child, path)

    walk(backbone_of(model), "")
    return paths


@contextlib.contextmanager
def abstract_weights():
    """Inside, new Keras weights get a shape but no memory: for counting only.

    Builds on Keras' deferred initialisation (`StatelessScope`) and then
    forgets the uninitialised weights, so that nothing allocates them later.
    """
    import keras

    key, needed_by = "uninitialized_variables", "counting weights without allocating them"
    saved = list(compat.get_global_attribute(key, needed_by) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        compat.set_global_attribute(key, saved, needed_by)


class LoraCarrier:
    """Base of the layer classes that carry a LoRA update (`lora.LoraDense`,
    `lora.LoraEinsumDense`): what `carries_lora` recognises."""


def carries_lora(layer):
    """Whether `layer` carries a LoRA update (was given one by `enable_lora`)."""
    return isinstance(layer, LoraCarrier)


def lora_state(model):
    """Returns the `LoraState` of `model`'s backbone, or None without LoRA."""
    return getattr(backbone_of(model), _LORA_STATE, None)


def has_lora(model):
    """Whether LoRA is enabled on `model`'s backbone (`lora.enable_lora`)."""
    return lora_state(model) is not None


def set_lora_state(backbone, state):
    """Records on `backbone` what `lora.enable_lora` did to it (a `LoraState`)."""
    setattr(backbone, _LORA_STATE, state)
