"""What an adapter is checked for before anything of it is used, in either
format (`adapter_file`: kerastune's `.lora.h5`; `peft_folder`: peft's
folder): its rank and alpha, each factor's shape against the base (from the
file's header, before anything is allocated), and every value finite (read
a block at a time).
"""

import math
import os

import numpy as np

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import lora_state
from kerastune_lab.finetune.lora.layers import Factorisation
from kerastune_lab.finetune.lora.targets import target_layers

# The largest LoRA rank an adapter may record: far above any published
# adapter (4 to 256), and a bound on what an adapter can make a load
# allocate (factors of at most (d_in + d_out) * MAX_RANK per layer).
MAX_RANK = 4096
# Elements of a factor read (and checked finite) at a time.
_BLOCK = 1 << 22
DIVERGED = "expected finite values (the run that wrote it diverged?)"


def check_rank_alpha(rank, alpha, what, names=("metadata rank", "metadata alpha")):
    """Raises unless `rank` is an int in [1, MAX_RANK] and `alpha` a finite
    positive number; `names` are the fields as the file calls them."""
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= MAX_RANK:
        raise KerastuneError(f"{what}: {names[0]}={short_repr(rank)}: expected a "
                             f"positive integer of at most {MAX_RANK}")
    if (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
            or not math.isfinite(alpha) or alpha <= 0):
        raise KerastuneError(f"{what}: {names[1]}={short_repr(alpha)}: expected a "
                             "finite positive number")


def short_repr(value, limit=60):
    """repr(value), cut to `limit` characters (a message stays one short line)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def expected_shapes(backbone, metadata, path):
    """{layer path: (A shape, B shape)} the base expects of the adapter at
    `path` (its checked `metadata`: rank, alpha, targets, layers).

    A backbone with LoRA must have it as recorded; one without gets it on
    the layers `targets` names, which must be the layers the adapter holds.
    Nothing is allocated: the shapes come from the base's layers.
    """
    what = f"adapter {os.fspath(path)!r}"
    state = lora_state(backbone)
    if state is not None:
        for key, value in (("rank", state.rank), ("alpha", state.alpha),
                           ("targets", list(state.targets))):
            if metadata[key] != value:
                raise KerastuneError(f"{what} has lora {key}={metadata[key]}, but the "
                                     f"model has {key}={value}: enable LoRA as recorded, "
                                     "or load it onto a model without LoRA")
        layers = state.layers
    else:
        try:
            layers = target_layers(backbone, metadata["targets"])
        except KerastuneError as e:
            raise KerastuneError(f"{what}: metadata targets: {e}") from None
    if sorted(layers) != sorted(metadata["layers"]):
        raise KerastuneError(f"{what} holds layers {sorted(metadata['layers'])[:3]}..., "
                             "which are not the model's LoRA layers: load it onto its own "
                             "base")
    return {layer_path: (getattr(layer, "lora_factorisation", None)
                         or Factorisation.of(layer)).shapes(metadata["rank"])
            for layer_path, layer in sorted(layers.items())}


def read_finite(read_rows, shape, name, what, dtype=None):
    """The array of `shape` that `read_rows(start, stop)` gives block by
    block (rows start:stop), each block checked finite as it is read."""
    shape = tuple(int(d) for d in shape)
    rows = shape[0] if shape else 1
    per_row = max(1, int(np.prod(shape[1:], dtype="int64")))
    step = max(1, _BLOCK // per_row)
    out = None
    for start in range(0, rows, step):
        block = np.asarray(read_rows(start, min(rows, start + step)))
        if dtype is not None:
            block = block.astype(dtype)
        if block.dtype.kind != "f":
            raise KerastuneError(f"{what}: lora factor {name!r} holds {block.dtype} "
                                 "values: expected floating point")
        if not np.isfinite(block).all():
            raise KerastuneError(f"{what}: lora factor {name!r} holds NaN or inf: "
                                 f"{DIVERGED}")
        if out is None:
            out = np.empty(shape, block.dtype)
        out[start:start + len(block)] = block
    return out
