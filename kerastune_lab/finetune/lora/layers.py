"""The LoRA factorisation, the LoRA layers, and putting them on a backbone.

    enable_lora(causal_lm, rank=8)       # query and value
    parameter_counts(causal_lm)          # {"trainable", "total", "ratio"}
    count_lora_parameters(LlamaBackbone, config, rank=8)  # without weights

Each targeted projection computes `base(x) + alpha / rank * (x A) B` with
A: (d_in, rank) and B: (rank, d_out), B zero at the start, as peft does:
d_in * rank + rank * d_out weights per layer.

Written by hand because Keras' own `enable_lora` (which KerasHub's
`backbone.enable_lora` calls) factors an EinsumDense kernel along its last
axis only: on Llama's query kernel (hidden, heads, head_dim) its A is
(hidden, heads, rank), so a Llama-2-7B rank-8 adapter on query and value
holds 67,174,400 weights (268 MB) instead of the standard 4,194,304 (17 MB).
Keras' LoRA layers also fold the update into the base kernel in
`save_own_variables`; these never do.

How it hooks in: `enable_lora` gives each targeted `Dense`/`EinsumDense`
layer a LoRA subclass in place (`LoraDense`, `LoraEinsumDense`), the way
Keras' own `enable_lora` changes a layer in place. The layer object, its
parents and its weight paths stay as they were; its base computation is
Keras' own (float, int8 or int4 call path), and the LoRA term is added
before the layer's activation. So it works under `model.fit` on jax,
tensorflow and torch, with a quantized base. Keras' own `quantize` refuses
these subclasses, so quantize first (`quantize.quantize` says so).
"""

import dataclasses
import math
import string

import keras
import numpy as np
from keras import ops

from kerastune_lab import compat
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune._backbone import (
    LoraCarrier,
    abstract_weights,
    backbone_of,
    lora_state,
    set_lora_state,
)
from kerastune_lab.finetune.lora.targets import DEFAULT_TARGETS, parse_targets, target_layers
from kerastune_lab.finetune.quantize import QUANTIZE_MODES, quantization_mode


@dataclasses.dataclass(frozen=True)
class Factorisation:
    """How a kernel of `equation` factors into A: (d_in, r) and B: (r, d_out).

    The kernel's contracted axes (those it shares with the input) make d_in,
    the others d_out; `equation_a` and `equation_b` apply A and B to the
    layer's input without forming the full update.
    """
    equation: str
    kernel_shape: tuple

    def __post_init__(self):
        eq = self.equation.replace(" ", "")
        try:
            inputs, output = eq.split("->")
            x, k = inputs.split(",")
        except ValueError:
            raise KerastuneError(f"einsum equation {self.equation!r}: expected "
                                 "'input,kernel->output'")
        ins = "".join(c for c in k if c in x)  # contracted: d_in
        outs = "".join(c for c in k if c not in x)  # kept: d_out
        if (not ins or not outs or any(c in output for c in ins)
                or any(c not in output for c in outs)
                or len(k) != len(self.kernel_shape)):
            raise KerastuneError(f"einsum equation {self.equation!r} with kernel shape "
                                 f"{tuple(self.kernel_shape)}: expected a projection "
                                 "LoRA can factor")
        z = next(c for c in string.ascii_letters if c not in eq)
        x_free = "".join(c for c in x if c not in ins)
        shape = tuple(int(d) for d in self.kernel_shape)
        set_ = object.__setattr__
        set_(self, "kernel_shape", shape)
        set_(self, "in_dims", tuple(shape[k.index(c)] for c in ins))
        set_(self, "out_dims", tuple(shape[k.index(c)] for c in outs))
        set_(self, "equation_a", f"{x},{ins}{z}->{x_free}{z}")
        set_(self, "equation_b", f"{x_free}{z},{z}{outs}->{output}")
        set_(self, "perm", tuple((ins + outs).index(c) for c in k))

    @property
    def d_in(self):
        return int(np.prod(self.in_dims))

    @property
    def d_out(self):
        return int(np.prod(self.out_dims))

    def shapes(self, rank):
        """Returns the shapes of A and B for `rank`."""
        return (self.d_in, rank), (rank, self.d_out)

    def delta(self, a, b, scale):
        """Returns the update `scale * A B` (numpy) in the kernel's layout."""
        update = scale * (np.asarray(a, "float64") @ np.asarray(b, "float64"))
        return update.reshape(self.in_dims + self.out_dims).transpose(self.perm)

    @classmethod
    def of(cls, layer):
        """The factorisation of a built `Dense` or `EinsumDense` layer."""
        if isinstance(layer, keras.layers.Dense):
            return cls("...a,ab->...b", (layer.input_spec.axes[-1], layer.units))
        if layer.quantization_mode == "int4":
            return cls(layer.equation, layer.original_kernel_shape)
        return cls(layer.equation, compat.kernel_shape(layer))


class _LoraLayer(LoraCarrier):
    """Adds `scale * (x A) B` to a Dense or EinsumDense layer's output."""

    def call(self, inputs, training=None):
        return self._add_lora(inputs, super().call(inputs, training=training))

    def quantized_call(self, inputs, training=None):
        outputs = super().quantized_call(inputs, training=training)
        return self._add_lora(inputs, outputs)

    def _add_lora(self, inputs, outputs):
        f, rank = self.lora_factorisation, self.lora_a.shape[-1]
        dtype = self.compute_dtype
        # Float32 factors compute in the layer's compute dtype (bfloat16 under
        # mixed precision), as Keras autocasts its own weights.
        a = ops.cast(ops.reshape(self.lora_a, f.in_dims + (rank,)), dtype)
        b = ops.cast(ops.reshape(self.lora_b, (rank,) + f.out_dims), dtype)
        hidden = ops.einsum(f.equation_a, ops.cast(inputs, dtype), a)
        update = ops.multiply(ops.einsum(f.equation_b, hidden, b), self.lora_scale)
        outputs = ops.add(outputs, ops.cast(update, outputs.dtype))
        if self.lora_activation is not None:
            outputs = self.lora_activation(outputs)
        return outputs

    def save_own_variables(self, store):
        # The base weights as the plain layer writes them (unmerged), then A, B.
        super().save_own_variables(store)
        store["lora_a"] = self.lora_a
        store["lora_b"] = self.lora_b

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self.lora_a.assign(store["lora_a"])
        self.lora_b.assign(store["lora_b"])

    def get_config(self):
        config = super().get_config()
        config["activation"] = keras.activations.serialize(self.lora_activation)
        return config


class LoraDense(_LoraLayer, keras.layers.Dense):
    """A `Dense` layer with a standard LoRA update (made by `enable_lora`)."""


class LoraEinsumDense(_LoraLayer, keras.layers.EinsumDense):
    """An `EinsumDense` layer with a standard LoRA update (made by `enable_lora`)."""


_LORA_CLASSES = {
    keras.layers.Dense: LoraDense,
    keras.layers.EinsumDense: LoraEinsumDense,
}


@dataclasses.dataclass
class LoraState:
    """What `enable_lora` did to a backbone (kept on it: `lora_state(model)`)."""
    rank: int
    alpha: float
    targets: tuple
    layers: dict  # layer path -> LoRA layer


def enable_lora(model, rank, alpha=None, targets=DEFAULT_TARGETS):
    """Freezes the backbone and puts a standard LoRA update on target layers.

    Quantize first (`quantize.quantize(model, "int8")`) for an int8 base.

    Args:
        model: a KerasHub backbone or task (its backbone gets the LoRA).
        rank: int. The rank r of A: (d_in, r) and B: (r, d_out).
        alpha: float. The update is scaled by alpha / rank. Defaults to rank.
        targets: layer names or patterns, see `target_layers`. Defaults to
            query and value.

    Returns:
        `model`, whose only trainable weights are now the `lora_a`, `lora_b`.

    Example:
    ```python
    causal_lm = keras_hub.models.CausalLM.from_preset("llama2_7b_en")
    enable_lora(causal_lm, rank=8)
    ```
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise KerastuneError(f"lora_rank={rank!r}: expected a positive integer")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha) or alpha <= 0):
        raise KerastuneError(f"lora_alpha={alpha!r}: expected a finite positive number")
    backbone = backbone_of(model)
    if lora_state(backbone) is not None:
        raise KerastuneError("enable_lora: LoRA is already enabled on this backbone")
    mode = quantization_mode(backbone)
    if mode not in QUANTIZE_MODES:
        raise KerastuneError(f"enable_lora: a {mode} base is not supported: "
                             f"expected one of {', '.join(QUANTIZE_MODES)}")
    alpha = rank if alpha is None else alpha
    targets = parse_targets(targets)
    layers = target_layers(backbone, targets)
    backbone.trainable = True
    for layer in compat.sublayers(backbone):
        layer.trainable = False
    for layer in {id(target): target for target in layers.values()}.values():
        _add_lora(layer, rank, alpha)
    set_lora_state(backbone, LoraState(rank, alpha, targets, layers))
    return model


def _add_lora(layer, rank, alpha):
    factorisation = Factorisation.of(layer)
    compat.swap_class(layer, _LORA_CLASSES[type(layer)])
    layer.trainable = True
    base_weights = list(layer.weights)
    a_shape, b_shape = factorisation.shapes(rank)
    with compat.unlocked_tracker(layer):
        # Float32 factors, like Keras' LoRA. A as peft's kaiming_uniform(a=sqrt(5)).
        layer.lora_a = layer.add_weight(
            name="lora_a", shape=a_shape, dtype="float32",
            initializer=keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"))
        layer.lora_b = layer.add_weight(name="lora_b", shape=b_shape, dtype="float32",
                                        initializer="zeros")
    for weight in base_weights:
        weight.trainable = False
    layer.lora_factorisation = factorisation
    layer.lora_scale = alpha / rank
    # The update goes in before the activation: the base call gets the identity.
    layer.lora_activation = layer.activation
    layer.activation = keras.activations.linear


def _size(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def parameter_counts(model):
    """Returns {"trainable", "total", "ratio"}: counts of `model`'s weights."""
    trainable, total = _size(model.trainable_weights), _size(model.weights)
    ratio = trainable / total if total else 0.0
    return {"trainable": trainable, "total": total, "ratio": ratio}


def count_lora_parameters(backbone_cls, config, rank, alpha=None,
                          targets=DEFAULT_TARGETS):
    """Counts LoRA and all weights of `backbone_cls(**config)`, not allocating it.

    The backbone is built with `abstract_weights`, and `enable_lora` runs on
    it as on a real one, so the count comes from the real layer shapes.

    Args:
        backbone_cls: a KerasHub backbone class, e.g.
            `keras_hub.models.LlamaBackbone`.
        config: dict. Its constructor arguments (a preset's config.json
            "config").
        rank, alpha, targets: as for `enable_lora`.

    Returns:
        {"trainable", "total", "ratio", "adapter_bytes"} (float32 adapter).
    """
    with abstract_weights():
        backbone = backbone_cls(**config)
        enable_lora(backbone, rank, alpha, targets)
        counts = parameter_counts(backbone)
    counts["adapter_bytes"] = 4 * counts["trainable"]
    return counts
