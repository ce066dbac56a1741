"""Quantizing float weights while they are read, for `quantize.load_quantized`.

Inside `quantize_float_weights_on_load(...)`, a quantized layer that Keras'
loader hands float weights quantizes them on the way in: the float weights
go into a float twin of the layer (built with zeros: no random
initialisation of a layer about to be overwritten), Keras' own
`layer.quantize` turns them into int8 (or int4), and those values go into
the model. So the values are Keras' own, bit for bit, and the float weights
in memory at any time are one layer's, or less:

- `Dense` and `Embedding` layers larger than `_SLICE` float elements are
  quantized a slice at a time, by twins of a slice of the layer (`units`
  columns of a kernel, `input_dim` rows of an embedding table, with the
  matching columns of a `ReversibleEmbedding`'s reverse table): Keras
  quantizes each column of a kernel and each row of a table on its own
  (one scale per column or row, int4 groups and packing along the other
  axis), so the slices' values put side by side are the whole layer's.
  Each slice is read straight from the h5 file (h5py reads that part
  only), so the whole float table (a 7B embedding: 2 x 250 MB in
  bfloat16) is never in memory, nor are its copies in Keras' assign and
  quantize.
- Keras' host quantizers (`abs_max_quantize(..., to_numpy=True)`, int4 with
  groups) run a slice of about `_CHUNK` elements at a time
  (`lean_keras_quantizers`): Keras' numpy expressions make four whole-size
  float32 temporaries of the matrix they quantize (the scale is float32, so
  the products are); slice by slice, the same expressions give the same
  values.
- After each layer, the twins' memory goes back to the system: a full
  cycle collection (Keras layers hold reference cycles, so a twin's arrays
  wait for one) and glibc's `malloc_trim`; after a sliced layer of a shape
  not met before, JAX's caches of compiled programs are dropped (the
  embedding's slices' programs are never used again). On JAX the
  assembled values go in through `jax.device_put` (Keras' conversion,
  `jnp.asarray`, makes a second whole-size copy on the way).

benchmarks/load_memory.py measures the peak; tests/finetune/test_quantize.py
checks the values against `from_preset` then `quantize`. Hand-written
because neither Keras nor KerasHub quantizes float weights while loading.
"""

import contextlib
import functools
import gc
import math

import numpy as np

from kerastune_lab import compat

_CHUNK = 1 << 22  # elements of one slice of a lean quantization (16 MB in float32)
_SLICE = 1 << 24  # float elements of one slice twin (32 MB in bfloat16)


def _slices(shape, skip):
    """Index tuples that cut an array of `shape` into slices of about _CHUNK
    elements along its largest axis not in `skip` (the reduced axes)."""
    free = [a for a in range(len(shape)) if a not in skip]
    if not free:
        yield (slice(None),) * len(shape)
        return
    axis = max(free, key=lambda a: shape[a])
    per_step = max(1, int(np.prod(shape)) // max(shape[axis], 1))
    step = max(1, _CHUNK // per_step)
    for start in range(0, shape[axis], step):
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, start + step)
        yield tuple(index)


def _lean_abs_max_quantize(inputs, axis, value_range=(-127, 127), dtype="int8",
                           epsilon=None, to_numpy=False, original=None):
    """Keras' `abs_max_quantize(..., to_numpy=True)`, slice by slice: Keras'
    own numpy expressions on slices of about _CHUNK elements (the scale is
    float32, so the products are too), the same values without Keras' four
    whole-size float32 temporaries."""
    import keras
    from keras import ops

    if epsilon is None:
        epsilon = keras.config.epsilon()
    if not to_numpy:
        return original(inputs, axis, value_range, dtype, epsilon, to_numpy)
    original_dtype = keras.backend.standardize_dtype(inputs.dtype)
    inputs = ops.convert_to_numpy(inputs)
    axes = tuple(axis) if isinstance(axis, list) else axis  # as Keras' numpy quantizer
    axes = tuple(a % inputs.ndim for a in (axes if isinstance(axes, tuple) else (axes,)))
    amax = np.zeros([1 if a in axes else n for a, n in enumerate(inputs.shape)], inputs.dtype)
    for index in _slices(inputs.shape, axes):
        amax[_scale_index(index, axes)] = np.max(np.abs(inputs[index]), axis=axes,
                                                 keepdims=True)
    scale = np.divide(value_range[1], np.add(amax, epsilon))  # as Keras: small
    outputs = np.empty(inputs.shape, dtype)
    for index in _slices(inputs.shape, axes):
        product = np.multiply(inputs[index], scale[_scale_index(index, axes)])
        outputs[index] = np.clip(np.round(product), value_range[0], value_range[1])
    del inputs
    return ops.convert_to_tensor(outputs), ops.convert_to_tensor(scale, dtype=original_dtype)


def _scale_index(index, axes):
    return tuple(slice(None) if a in axes else part for a, part in enumerate(index))


def _lean_grouped_numpy(inputs, block_size, value_range, dtype, epsilon, original=None):
    """Keras' `_abs_max_quantize_grouped_with_zero_point_numpy` (int4 with
    blocks), a slice of groups at a time: groups are independent, and each
    slice runs Keras' own expressions, so the values are the same."""
    from keras import ops

    input_dim, output_dim = inputs.shape
    if input_dim % block_size or input_dim * output_dim <= _CHUNK:
        return original(inputs, block_size, value_range, dtype, epsilon)
    groups = max(1, _CHUNK // (block_size * output_dim))
    rows = groups * block_size
    parts = [[], [], []]
    for start in range(0, input_dim, rows):
        part = original(inputs[start:start + rows], block_size, value_range, dtype, epsilon)
        for kept, value in zip(parts, part):
            kept.append(ops.convert_to_numpy(value))
    return tuple(ops.convert_to_tensor(np.concatenate(kept, axis=0)) for kept in parts)


@contextlib.contextmanager
def lean_keras_quantizers():
    """Inside, Keras' host (numpy) quantizers run slice by slice (see above;
    where `compat` cannot replace them, Keras' own run: the same values)."""
    with compat.host_quantizers_replaced(
            lambda original: functools.partial(_lean_abs_max_quantize, original=original),
            lambda original: functools.partial(_lean_grouped_numpy, original=original)):
        yield


def _slice_argument(layer):
    """The constructor argument that slices `layer` into independently
    quantized parts ("units" of a Dense, "input_dim" of an Embedding), or None."""
    import keras

    if isinstance(layer, keras.layers.Dense):
        return "units"
    if isinstance(layer, keras.layers.Embedding):
        return "input_dim"
    return None


class _Shapes(dict):
    """A store for `save_own_variables` that keeps each variable's shape only."""

    def __setitem__(self, key, value):
        super().__setitem__(key, tuple(value.shape))


def _entries(store):
    """{key: value} of `store`, unread where the store is Keras' h5 store with
    every key in its current file (h5py datasets, read a slice at a time by
    `_read`; a layer split across shards is read as Keras' loader reads it)."""
    import h5py

    keys = list(store.keys())
    group = compat.h5_entry_group(store)
    if isinstance(group, h5py.Group) and all(
            isinstance(group.get(key), h5py.Dataset) for key in keys):
        return {key: group[key] for key in keys}
    return {key: store[key] for key in keys}


def _read(entry, index):
    """`entry[index]` as Keras' h5 store reads a whole variable (bfloat16 kept
    as an attribute, read into a bfloat16 array)."""
    import h5py
    import ml_dtypes

    if not isinstance(entry, h5py.Dataset):
        return np.asarray(entry[index])
    if entry.attrs.get("dtype") == "bfloat16":
        shape = tuple(len(range(*part.indices(n))) for part, n in zip(index, entry.shape))
        out = np.empty(shape, dtype=ml_dtypes.bfloat16)
        entry.read_direct(out, source_sel=index)
        return out
    return np.asarray(entry[index])


def _twin(layer, source, **changes):
    """A float copy of `layer` (dtype `source`, zeros), built, with `changes`
    to its constructor arguments."""
    zeros = {key: "zeros" for key, value in layer.get_config().items()
             if key.endswith("_initializer") and value}  # no random init
    twin = type(layer).from_config(dict(layer.get_config(), **zeros, **changes, dtype=source))
    twin.build_from_config(layer.get_build_config())  # build(**shapes) as `layer`
    return twin


def _copy_quantizer_state(twin, layer):
    for name in ("quantization_config", "inputs_quantizer"):
        if hasattr(twin, name):
            setattr(layer, name, getattr(twin, name))


def _step(size, per_unit):
    """Units of a slice: about _SLICE float elements, a divisor of `size` when
    one is near (every slice then has one shape: fewer compiled programs)."""
    step = max(1, _SLICE // max(per_unit, 1))
    for candidate in range(step, max(step // 2, 1), -1):
        if size % candidate == 0:
            return candidate
    return step


def _load_sliced(layer, store, original, keras_mode, config, source):
    """Quantizes `store`'s float weights into `layer` a slice twin at a time
    (see the module docstring). Returns False, having loaded nothing, where
    the layer does not slice that way (the caller then takes the whole layer)."""
    from keras import ops

    argument = _slice_argument(layer)
    size = layer.get_config().get(argument) if argument else None
    if not isinstance(size, int) or size < 8:
        return False
    entries = _entries(store)
    per_unit = sum(int(np.prod(entry.shape)) for entry in entries.values()) // size
    step = _step(size, per_unit)
    step -= step % 2  # int4 packs two units of a Dense together: never split a pair
    if not 2 <= step < size:
        return False
    cuts = _cuts(layer, argument, keras_mode, config, source)
    if cuts is None or sorted(cuts["in"]) != sorted(entries):
        return False
    counts = [min(step, size - start) for start in range(0, size, step)]
    outputs, filled = {}, {}
    for start, count in zip(range(0, size, step), counts):
        twin = _twin(layer, source, **{argument: count})
        inputs = {}
        for key, entry in entries.items():
            index = [slice(None)] * len(entry.shape)
            if cuts["in"][key] is not None:
                index[cuts["in"][key][0]] = slice(start, start + count)
            inputs[key] = _read(entry, tuple(index))
        original(twin, inputs)
        del inputs
        twin.quantize(keras_mode, config=config)
        pieces = {}
        twin.save_own_variables(pieces)
        for key, piece in pieces.items():
            _place(layer, key, ops.convert_to_numpy(piece), cuts["out"][key], counts,
                   outputs, filled)
        _copy_quantizer_state(twin, layer)
        del twin, pieces
        _release_free_memory()
    for key, cut in cuts["out"].items():
        if cut is not None and filled.get(key) != outputs[key].shape[cut[0]]:
            raise RuntimeError(f"{layer.path}: slices filled {filled.get(key)} of "
                               f"{outputs[key].shape[cut[0]]} along axis {cut[0]} of {key}")
    for key in list(outputs):  # one at a time: Keras converts a numpy value with a copy
        outputs[key] = _to_backend(outputs[key])
    original(layer, outputs)  # Keras checks each shape on assign
    return True


def _to_backend(value):
    """`value` (numpy) as the backend's array. On JAX, `jax.device_put`: Keras'
    `convert_to_tensor` (`jnp.asarray`) makes a second whole-size copy on
    the way (measured: twice the array's size at the peak, once with
    device_put)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return jax.device_put(value)
    return value


def _release_free_memory(generation=1):
    """Frees the twins (Keras layers hold reference cycles: a twin's arrays go
    with Python's cycle collector, `generation` 1 catches the young ones)
    and hands what the C allocator keeps back to the system (glibc's
    `malloc_trim`; nothing elsewhere): the slices' buffers freed between
    layers otherwise stay resident, and add up."""
    gc.collect(generation)
    trim = _malloc_trim()
    if trim:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, looked up once; None where there is none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _clear_compiled_programs():
    """Drops JAX's caches of compiled programs (JAX only). Called after a
    sliced layer of a shape not met before: the programs of a shape met
    once (a 7B embedding's slices, the float twins' first layer) otherwise
    stay till the end (0.2 GiB measured in int4); those of the shapes that
    repeat are compiled again once."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        jax.clear_caches()


def _cuts(layer, argument, keras_mode, config, source):
    """{"in": {key: cut}, "out": {key: cut}} for the float and the quantized
    variables, read off two zero twins 2 and 4 units wide: cut is None for a
    variable that does not grow with the units, else (axis, per_unit): it
    grows along `axis` by `per_unit` a unit (1, or 1/2 where int4 packs two
    units in a byte). None if a variable grows otherwise."""
    shapes = []
    for count in (2, 4):
        probe = _twin(layer, source, **{argument: count})
        floats = _Shapes()
        probe.save_own_variables(floats)
        probe.quantize(keras_mode, config=config)
        quantized = _Shapes()
        probe.save_own_variables(quantized)
        shapes.append((floats, quantized))
    cuts = {"in": {}, "out": {}}
    for side, (two, four) in zip(("in", "out"), zip(*shapes)):
        for key in two:
            axes = [a for a, (n, m) in enumerate(zip(two[key], four[key])) if n != m]
            if not axes:
                cuts[side][key] = None
                continue
            axis = axes[0]
            per_unit = (four[key][axis] - two[key][axis]) / 2
            if (len(axes) > 1 or len(two[key]) != len(four[key]) or per_unit not in (0.5, 1)
                    or two[key][axis] != 2 * per_unit):
                return None
            cuts[side][key] = (axis, per_unit)
    return cuts


def _place(layer, key, piece, cut, counts, outputs, filled):
    """Puts one slice's value of variable `key` in its place in outputs[key]:
    along the cut axis (the whole allocated at the first slice, from the
    slices' `counts`), or, if the variable does not grow with the units, as
    the whole (then equal in every slice)."""
    if key not in outputs:
        if cut is None:
            outputs[key] = piece
        else:
            axis, per_unit = cut
            whole = list(piece.shape)
            whole[axis] = sum(math.ceil(count * per_unit) for count in counts)
            outputs[key] = np.empty(whole, piece.dtype)
        filled[key] = 0
    if cut is None:
        if not np.array_equal(outputs[key], piece):
            raise RuntimeError(f"{layer.path}: variable {key} differs between slices")
        return
    axis, done = cut[0], filled[key]
    index = [slice(None)] * piece.ndim
    index[axis] = slice(done, done + piece.shape[axis])
    outputs[key][tuple(index)] = piece
    filled[key] = done + piece.shape[axis]


@contextlib.contextmanager
def quantize_float_weights_on_load(classes, keras_mode, config, source):
    """Inside, quantized layers of `classes` that are handed float weights by
    `load_own_variables` quantize them on the way in (see the module docstring).

    Args:
        classes: the layer classes to patch (those `Model.quantize` quantizes).
        keras_mode: str. Keras' quantization mode ("int8", "int4").
        config: a Keras `QuantizationConfig` or None, as for `layer.quantize`.
        source: str. The float dtype policy the weights are read in.
    """
    shapes_met = set()

    def wrap(original):
        def load_own_variables(self, store):
            if self.quantization_mode != keras_mode:
                return original(self, store)
            sliced = _load_sliced(self, store, original, keras_mode, config, source)
            if sliced:
                shape = (type(self), str(self.get_build_config()),
                         self.get_config()[_slice_argument(self)])
                if shape not in shapes_met:
                    shapes_met.add(shape)
                    _clear_compiled_programs()
            else:
                twin = _twin(self, source)
                original(twin, store)  # the float weights, as a float layer reads them
                twin.quantize(keras_mode, config=config)
                values = {}
                twin.save_own_variables(values)
                original(self, values)
                _copy_quantizer_state(twin, self)
                del twin, values
            _release_free_memory(2)
            return None
        return load_own_variables

    with compat.load_own_variables_replaced(classes, wrap), lean_keras_quantizers():
        yield
