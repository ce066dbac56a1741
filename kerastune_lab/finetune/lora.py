"""Standard LoRA for KerasHub backbones, and adapter files.

    quantize(causal_lm, "int8")                # optional, before LoRA
    enable_lora(causal_lm, rank=8)             # query and value
    causal_lm.fit(...)                         # trains only lora_a, lora_b
    save_adapter(causal_lm, "run/adapter.lora.h5", preset="llama2_7b_en")
    ...
    load_adapter(fresh_causal_lm, "run/adapter.lora.h5")  # quantizes as recorded
    save_merged_preset("run/adapter.lora.h5", "merged/")  # plain keras_hub preset

Each targeted projection computes `base(x) + alpha / rank * (x A) B` with
A: (d_in, rank) and B: (rank, d_out), B zero at the start, as peft does:
d_in * rank + rank * d_out weights per layer.

Written by hand because Keras' own `enable_lora` (which KerasHub's
`backbone.enable_lora` calls) factors an EinsumDense kernel along its last
axis only: on Llama's query kernel (hidden, heads, head_dim) its A is
(hidden, heads, rank), so a Llama-2-7B rank-8 adapter on query and value
holds 67,174,400 weights (268 MB) instead of the standard 4,194,304 (17 MB).
The adapter code here also keys weights by layer path, not by index
(KerasHub issue #2701), records the base it was trained on, and never folds
the update into the base kernel when saving (Keras' LoRA layers do that in
`save_own_variables`).

How it hooks in: `enable_lora` gives each targeted `Dense`/`EinsumDense`
layer a LoRA subclass in place (`LoraDense`, `LoraEinsumDense`), the way
Keras' own `enable_lora` changes a layer in place. The layer object, its
parents and its weight paths stay as they were; its base computation is
Keras' own (float, int8 or int4 call path), and the LoRA term is added
before the layer's activation. So it works under `model.fit` on jax,
tensorflow and torch, with a quantized base. Keras' own `quantize` refuses
these subclasses, so quantize first (`quantize.quantize` says so).
"""

import contextlib
import dataclasses
import fnmatch
import json
import os
import string

import keras
import numpy as np
from keras import ops

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune.quantize import (
    QUANTIZE_MODES,
    backbone_of,
    load_quantized,
    quantization_mode,
    quantize,
)
from kerastune_lab.runs import atomic_path

# Layer names (fnmatch patterns) LoRA applies to by default: attention query
# and value, as in the LoRA paper and KerasHub's default.
DEFAULT_TARGETS = ("query", "value")
# Every attention projection of KerasHub's decoders (Llama, Mistral, GPT-2...).
ATTENTION_TARGETS = ("query", "key", "value", "attention_output")
# Every projection: attention and feedforward.
ALL_TARGETS = ("*",)
ADAPTER_SUFFIX = ".lora.h5"
FORMAT = "kerastune_lora"
FORMAT_VERSION = 1
# Base-config keys that do not change weight shapes.
_NOT_SHAPE = ("name", "trainable", "dtype")


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
        return cls(layer.equation, layer._kernel.shape)


class _LoraLayer:
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
    """What `enable_lora` did to a backbone (kept on it as `_kerastune_lora`)."""
    rank: int
    alpha: float
    targets: tuple
    layers: dict  # layer path -> LoRA layer


def lora_state(model):
    """Returns the `LoraState` of `model`'s backbone, or None without LoRA."""
    return getattr(backbone_of(model), "_kerastune_lora", None)


def layer_paths(model):
    """Returns {path: layer} for every layer of `model`'s backbone.

    A path joins layer names from the backbone down, e.g.
    "transformer_layer_0/self_attention/query"; names come from the model's
    config, so a freshly loaded base has the same paths.
    """
    paths = {}

    def walk(layer, prefix):
        for child in layer._flatten_layers(include_self=False, recursive=False):
            path = f"{prefix}/{child.name}" if prefix else child.name
            if path in paths and paths[path] is not child:
                raise KerastuneError(f"two layers share the path {path!r}: LoRA "
                                     "needs unique layer names")
            paths[path] = child
            walk(child, path)

    walk(backbone_of(model), "")
    return paths


def _targets(targets):
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
    targets = _targets(targets)
    candidates = {p: l for p, l in layer_paths(model).items()
                  if type(l) in _LORA_CLASSES or isinstance(l, _LoraLayer)}
    names = sorted({l.name for l in candidates.values()})
    for pattern in targets:
        if not fnmatch.filter(names, pattern):
            raise KerastuneError(
                f"lora target {pattern!r} matches no Dense/EinsumDense layer of "
                f"{type(backbone_of(model)).__name__}: expected one of "
                f"{', '.join(names)} or a pattern such as 'feedforward_*'")
    return {p: l for p, l in candidates.items()
            if any(fnmatch.fnmatchcase(l.name, t) for t in targets)}


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
    if alpha is not None and (isinstance(alpha, bool) or alpha <= 0
                              or not isinstance(alpha, (int, float))):
        raise KerastuneError(f"lora_alpha={alpha!r}: expected a positive number")
    backbone = backbone_of(model)
    if lora_state(backbone) is not None:
        raise KerastuneError("enable_lora: LoRA is already enabled on this backbone")
    mode = quantization_mode(backbone)
    if mode not in QUANTIZE_MODES:
        raise KerastuneError(f"enable_lora: a {mode} base is not supported: "
                             f"expected one of {', '.join(QUANTIZE_MODES)}")
    alpha = rank if alpha is None else alpha
    targets = _targets(targets)
    layers = target_layers(backbone, targets)
    backbone.trainable = True
    for layer in backbone._flatten_layers(include_self=False):
        layer.trainable = False
    for layer in {id(l): l for l in layers.values()}.values():
        _add_lora(layer, rank, alpha)
    backbone._kerastune_lora = LoraState(rank, alpha, targets, layers)
    return model


def _add_lora(layer, rank, alpha):
    factorisation = Factorisation.of(layer)
    layer.__class__ = _LORA_CLASSES[type(layer)]
    layer.trainable = True
    base_weights = list(layer.weights)
    a_shape, b_shape = factorisation.shapes(rank)
    layer._tracker.unlock()
    # Float32 factors, like Keras' LoRA. A as peft's kaiming_uniform(a=sqrt(5)).
    layer.lora_a = layer.add_weight(
        name="lora_a", shape=a_shape, dtype="float32",
        initializer=keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"))
    layer.lora_b = layer.add_weight(name="lora_b", shape=b_shape, dtype="float32",
                                    initializer="zeros")
    layer._tracker.lock()
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


@contextlib.contextmanager
def abstract_weights():
    """Inside, new Keras weights get a shape but no memory: for counting only.

    Builds on Keras' deferred initialisation (`StatelessScope`) and then
    forgets the uninitialised weights, so that nothing allocates them later.
    """
    from keras.src.backend.common import global_state

    key = "uninitialized_variables"
    saved = list(global_state.get_global_attribute(key) or [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(key, saved)


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


def _base_info(backbone, preset=None):
    config = backbone.get_config()
    shape = {k: v for k, v in sorted(config.items())
             if k not in _NOT_SHAPE and isinstance(v, (int, bool))}
    return {"class_name": type(backbone).__name__, "preset": preset, "shape": shape}


def save_adapter(model, path, preset=None):
    """Writes the LoRA weights of `model` (nothing else) to an h5 file.

    Weights are stored under their layer path ("layers/<path>/lora_a"), and
    the file's "metadata" attribute (JSON) records rank, alpha, targets,
    quantize mode and the base (class, preset, shape config).

    Args:
        model: a KerasHub backbone or task with LoRA enabled.
        path: str. The file, ending in ".lora.h5".
        preset: str. The base preset's name or handle, recorded for loading.
    """
    import h5py

    state = lora_state(model)
    if state is None:
        raise KerastuneError("save_adapter: the model has no LoRA: call "
                             "enable_lora first")
    path = os.fspath(path)
    if not path.endswith(ADAPTER_SUFFIX):
        raise KerastuneError(f"adapter path {path!r}: expected a name ending in "
                             f"{ADAPTER_SUFFIX}")
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "rank": state.rank,
                "alpha": state.alpha, "targets": list(state.targets),
                "quantize": quantization_mode(model), "layers": sorted(state.layers),
                "base": _base_info(backbone_of(model), preset)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["metadata"] = json.dumps(metadata)
            for layer_path, layer in sorted(state.layers.items()):
                group = f.create_group(f"layers/{layer_path}")
                group["lora_a"] = ops.convert_to_numpy(layer.lora_a)
                group["lora_b"] = ops.convert_to_numpy(layer.lora_b)
    return path


def read_adapter_metadata(path):
    """Returns the metadata dict recorded in the adapter file at `path`."""
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KerastuneError(f"adapter {path!r} does not exist: expected a "
                             f"{ADAPTER_SUFFIX} file")
    if not path.lower().endswith(".h5"):
        # Adapters are read only from h5 (arrays, no code), never pickle.
        raise KerastuneError(f"adapter {path!r}: expected an h5 file ({ADAPTER_SUFFIX} "
                             "from save_adapter); other formats are not loaded")
    try:
        with h5py.File(path, "r") as f:
            metadata = json.loads(f.attrs["metadata"])
    except (OSError, KeyError, ValueError):
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise KerastuneError(f"adapter {path!r} is not a kerastune LoRA adapter: "
                             f"expected a {ADAPTER_SUFFIX} file from save_adapter")
    if metadata.get("version") != FORMAT_VERSION:
        raise KerastuneError(f"adapter {path!r} has format version "
                             f"{metadata.get('version')}: expected {FORMAT_VERSION}")
    return metadata


def _check_base(metadata, backbone, path):
    saved, here = metadata["base"], _base_info(backbone)
    what = f"adapter {path!r} was trained on a {saved['class_name']}"
    if saved.get("preset"):
        what += f" ({saved['preset']})"
    if saved["class_name"] != here["class_name"]:
        raise KerastuneError(f"{what}, but the base is a {here['class_name']}: "
                             "load it onto the base it was trained on")
    for key in sorted(set(saved["shape"]) | set(here["shape"])):
        old, new = saved["shape"].get(key), here["shape"].get(key)
        if old != new:
            raise KerastuneError(f"{what} with {key}={old}, but the base has "
                                 f"{key}={new}: load it onto the base it was "
                                 "trained on")


def _read_factors(f, layer_path, factorisation, rank, path):
    try:
        group = f[f"layers/{layer_path}"]
        a, b = group["lora_a"][()], group["lora_b"][()]
    except KeyError:
        raise KerastuneError(f"adapter {path!r} has no weights for layer "
                             f"{layer_path!r}: the file is damaged or for another base")
    expected = factorisation.shapes(rank)
    if (a.shape, b.shape) != expected:
        raise KerastuneError(f"adapter {path!r} holds shapes {a.shape}, {b.shape} for "
                             f"layer {layer_path!r}, but the base expects "
                             f"{expected[0]}, {expected[1]}")
    return a, b


def load_adapter(model, path, quantize_base=True):
    """Puts the adapter at `path` on `model`'s backbone.

    A backbone without LoRA gets it as recorded (rank, alpha, targets); one
    with LoRA must match. A different base class or shape config, rank,
    alpha, targets or layer shapes is a one-line `KerastuneError`.

    Args:
        model: a KerasHub backbone or task, loaded from the base preset.
        path: str. A file written by `save_adapter`.
        quantize_base: bool. Quantize an unquantized base as the adapter
            records (True), or keep it as it is (False: for example a float
            base under an adapter trained on int8). A base quantized in
            another mode is an error either way.

    Returns:
        The adapter's metadata dict.
    """
    import h5py

    metadata = read_adapter_metadata(path)
    backbone = backbone_of(model)
    _check_base(metadata, backbone, path)
    mode, recorded = quantization_mode(backbone), metadata["quantize"]
    if mode != recorded and not (mode == "none" and not quantize_base):
        if mode != "none" or lora_state(backbone) is not None:
            raise KerastuneError(f"adapter {path!r} was trained with "
                                 f"quantize={recorded}, but the base has "
                                 f"quantize={mode}: load the base and quantize it "
                                 "as recorded")
        quantize(backbone, recorded)
    state = lora_state(backbone)
    if state is None:
        enable_lora(backbone, metadata["rank"], metadata["alpha"], metadata["targets"])
        state = lora_state(backbone)
    for key, value in (("rank", state.rank), ("alpha", state.alpha),
                       ("targets", list(state.targets))):
        if metadata[key] != value:
            raise KerastuneError(f"adapter {path!r} has lora {key}={metadata[key]}, "
                                 f"but the model has {key}={value}: enable LoRA as "
                                 "recorded, or load it onto a model without LoRA")
    if sorted(state.layers) != metadata["layers"]:
        raise KerastuneError(f"adapter {path!r} holds layers "
                             f"{metadata['layers'][:3]}..., which are not the model's "
                             "LoRA layers: load it onto its own base")
    with h5py.File(path, "r") as f:
        for layer_path, layer in state.layers.items():
            a, b = _read_factors(f, layer_path, layer.lora_factorisation, state.rank,
                                 path)
            layer.lora_a.assign(a)
            layer.lora_b.assign(b)
    return metadata


def load_with_adapter(adapter, preset=None, task_cls=None, dtype=None, **kwargs):
    """Loads the base an adapter was trained on, quantized as recorded, with the
    adapter on top: the model as it was at the end of training.

    The base is quantized while it loads (`quantize.load_quantized`).

    Args:
        adapter: str. A file written by `save_adapter`.
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
    import keras_hub

    from kerastune_lab.models import resolve_preset

    task_cls = task_cls or keras_hub.models.CausalLM
    metadata = read_adapter_metadata(adapter)  # a bad file fails before loading
    preset = preset or metadata["base"]["preset"]
    if not preset:
        raise KerastuneError(f"adapter {os.fspath(adapter)!r} records no base preset: "
                             "expected preset=... (--preset)")
    preset = resolve_preset(preset, task_cls)
    task = load_quantized(task_cls, preset, metadata["quantize"], dtype=dtype, **kwargs)
    load_adapter(task, adapter)
    return task, metadata


def merge_adapter(model, path):
    """Folds the adapter at `path` into a plain float model's kernels, in place.

    Each target kernel W becomes W + alpha / rank * A B (computed in float64,
    stored in W's dtype); the model keeps its plain layers, so it saves and
    loads like any KerasHub model.

    An adapter trained on an int8 (or int4) base merges into the float
    base's kernels: the merged model equals the float base with the adapter
    on top, and differs from the quantized model it was trained with by the
    quantization error of the base.

    Args:
        model: a KerasHub backbone or task, loaded from the base preset
            without quantizing and without LoRA.
        path: str. A file written by `save_adapter`.
    """
    import h5py

    metadata = read_adapter_metadata(path)
    backbone = backbone_of(model)
    _check_base(metadata, backbone, path)
    if lora_state(backbone) is not None or quantization_mode(backbone) != "none":
        raise KerastuneError(f"merge {path!r}: expected a plain float base (no LoRA, "
                             "not quantized), as loaded from the preset")
    layers = layer_paths(backbone)
    scale = metadata["alpha"] / metadata["rank"]
    with h5py.File(path, "r") as f:
        for layer_path in metadata["layers"]:
            layer = layers.get(layer_path)
            if type(layer) not in _LORA_CLASSES:
                raise KerastuneError(f"adapter {path!r} names layer {layer_path!r}, "
                                     "where the base has no Dense/EinsumDense layer")
            factorisation = Factorisation.of(layer)
            a, b = _read_factors(f, layer_path, factorisation, metadata["rank"], path)
            kernel = layer.kernel
            merged = ops.convert_to_numpy(ops.cast(kernel, "float32")).astype("float64")
            merged += factorisation.delta(a, b, scale)
            kernel.assign(ops.cast(merged.astype("float32"), kernel.dtype))
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
    import keras_hub

    from kerastune_lab.models import from_preset, resolve_preset

    task_cls = task_cls or keras_hub.models.CausalLM
    metadata = read_adapter_metadata(adapter)  # a bad file fails before loading
    preset = preset or metadata["base"]["preset"]
    if not preset:
        raise KerastuneError(f"adapter {os.fspath(adapter)!r} records no base preset: "
                             "expected preset=...")
    task = from_preset(task_cls, resolve_preset(preset, task_cls))
    merge_adapter(task, adapter)
    with atomic_path(output) as tmp:
        task.save_to_preset(tmp)
    return output
