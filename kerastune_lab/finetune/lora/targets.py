"""Which layers of a backbone LoRA goes on: target names and patterns.

    target_layers(causal_lm, ATTENTION_TARGETS)  # {path: layer}
    target_layers(causal_lm, "query,feedforward_*")

Targets are layer names or fnmatch patterns, matched against the plain
`Dense`/`EinsumDense` layers of the backbone (and those already carrying
LoRA); a pattern that matches nothing is an error naming the layers there
are.
"""

import fnmatch

import keras

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import backbone_of, carries_lora, layer_paths

# Layer names (fnmatch patterns) LoRA applies to by default: attention query
# and value, as in the LoRA paper and KerasHub's default.
DEFAULT_TARGETS = ("query", "value")
# Every attention projection of KerasHub's decoders (Llama, Mistral, GPT-2...).
ATTENTION_TARGETS = ("query", "key", "value", "attention_output")
# Every projection: attention and feedforward.
ALL_TARGETS = ("*",)
# The layer classes LoRA factors: these exactly, not their subclasses.
PROJECTION_CLASSES = (keras.layers.Dense, keras.layers.EinsumDense)


def parse_targets(targets):
    """Returns `targets` (a sequence, or one comma-separated str) as a tuple."""
    if isinstance(targets, str):
        targets = targets.split(",")
    targets = tuple(t.strip() for t in targets if t.strip())
    if not targets:
        raise KerastuneError("lora targets: expected at least one layer name "
                             "or pattern")
    return targets


def target_layers(model, targets=DEFAULT_TARGETS):
    """Returns {path: layer} of the Dense/EinsumDense layers matching `targets`.

    Args:
        model: a KerasHub backbone or task.
        targets: sequence of str, or one comma-separated str. Layer names or
            fnmatch patterns: "query", "feedforward_*", "*" (every projection).
    """
    targets = parse_targets(targets)
    candidates = {path: layer for path, layer in layer_paths(model).items()
                  if type(layer) in PROJECTION_CLASSES or carries_lora(layer)}
    names = sorted({layer.name for layer in candidates.values()})
    for pattern in targets:
        if not fnmatch.filter(names, pattern):
            raise KerastuneError(
                f"lora target {pattern!r} matches no Dense/EinsumDense layer of "
                f"{type(backbone_of(model)).__name__}: expected one of "
                f"{', '.join(names)} or a pattern such as 'feedforward_*'")
    return {path: layer for path, layer in candidates.items()
            if any(fnmatch.fnmatchcase(layer.name, t) for t in targets)}
