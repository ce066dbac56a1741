"""Multi-device training with `keras.distribution` (JAX backend), and
rematerialisation for long sequences.

    distribute=none   one device
    distribute=data   keras.distribution.DataParallel over every device (all 8
                      cores of a TPU v3-8, every GPU)
    distribute=model  keras.distribution.ModelParallel on a (batch, model)
                      mesh with the backbone's own layout map
                      (`Backbone.get_layout_map`, e.g. Llama, Gemma, Qwen)

Set the distribution before the model is built (`from_preset`), so each
weight is created where it belongs:

    dist = make_distribution("model", keras_hub.models.LlamaBackbone)
    keras.distribution.set_distribution(dist)
    model = keras_hub.models.CausalLM.from_preset(...)

(`preset_distribution(mode, preset)` reads the backbone from the preset, and
`scope(dist)` sets it for a block only.) A batch split over the devices must
be whole on each: `batch_shards` says over how many devices it splits and
checks the batch size, `fill_windows` makes every batch of packed windows
whole, `call_filled` fills a list of prompts for generation.

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


def _mesh(num_devices, model_parallel, devices=None):
    import keras

    devices = devices or [f"device:{i}" for i in range(num_devices)]
    return keras.distribution.DeviceMesh(
        shape=(num_devices // model_parallel, model_parallel), axis_names=("batch", "model"),
        devices=devices)


def uneven_weight(backbone_cls, backbone_config, num_devices, model_parallel):
    """The first weight that the backbone's layout map cannot split evenly on a
    (num_devices / model_parallel, model_parallel) mesh, as "path shape over
    axes", or None when every weight splits.

    The backbone is built from its config without allocating its weights
    (`abstract_weights`), so this is cheap for a 7B preset too. JAX refuses an
    uneven split (`IndivisibleError`) once the model is being built; this says
    so before.
    """
    from kerastune_lab.finetune._backbone import abstract_weights

    mesh = _mesh(num_devices, model_parallel)
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    layout_map = backbone_cls.get_layout_map(mesh)
    config = {k: v for k, v in backbone_config.items() if k not in ("name", "trainable")}
    with abstract_weights():
        weights = [(w.path, tuple(w.shape)) for w in backbone_cls(**config).weights]
    for path, shape in weights:
        layout = layout_map[path]
        for dim, axis in zip(shape, layout.axes if layout is not None else ()):
            if axis is not None and dim % sizes[axis]:
                return f"{path} {shape} over axes {layout.axes}, {axis} axis of {sizes[axis]}"
    return None


def model_parallel_sizes(backbone_cls, backbone_config, num_devices):
    """The model-axis sizes (2 or more, dividing `num_devices`) on which every
    weight of the backbone splits evenly, smallest first."""
    return [m for m in range(2, num_devices + 1)
            if num_devices % m == 0
            and uneven_weight(backbone_cls, backbone_config, num_devices, m) is None]


def preset_backbone(preset):
    """(backbone class, backbone config) of a preset, read from its config
    alone (no weights): what `make_distribution` lays a model out by."""
    from kerastune_lab import compat

    loader = compat.preset_loader(preset)
    return loader.check_backbone_class(), loader.config["config"]


def make_distribution(mode, backbone_cls=None, model_parallel=None, backbone_config=None):
    """Returns a `keras.distribution.Distribution`, or None for "none".

    Args:
        mode: str. One of "none", "data", "model".
        backbone_cls: a KerasHub Backbone class. Needed for "model": its
            `get_layout_map(mesh)` says how each weight is sharded.
        model_parallel: int or None. Devices along the "model" axis for
            "model"; the rest go to the "batch" axis. Defaults to the largest
            size on which every weight splits evenly (needs `backbone_config`),
            else all devices.
        backbone_config: dict or None. The backbone's constructor arguments (a
            preset's config.json "config"). With it, a `model_parallel` on
            which a weight would not split evenly is refused, naming the sizes
            that fit.
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
    # Several processes: each feeds its own rows (`distribute.own_rows`), so
    # Keras must not shard the datasets again.
    from kerastune_lab.processes import process_count

    auto_shard = process_count() < 2  # (imported here: tests patch it)
    if mode == "data":
        return keras.distribution.DataParallel(devices=devices, auto_shard_dataset=auto_shard)
    if backbone_cls is None or not hasattr(backbone_cls, "get_layout_map"):
        name = getattr(backbone_cls, "__name__", backbone_cls)
        raise KerastuneError(
            f"distribute=model needs a backbone with a layout map (Llama, Gemma, "
            f"Qwen, ...); {name} has none: use distribute=data"
        )
    n = len(devices)
    if model_parallel and n % model_parallel:
        raise KerastuneError(
            f"model_parallel={model_parallel} does not divide the {n} devices"
        )
    if backbone_config is not None:
        fits = model_parallel_sizes(backbone_cls, backbone_config, n)
        if model_parallel and model_parallel not in fits:
            uneven = uneven_weight(backbone_cls, backbone_config, n, model_parallel)
            raise KerastuneError(
                f"model_parallel={model_parallel}: the weight {uneven} does not split "
                f"evenly; sizes that fit {n} devices: "
                f"{', '.join(map(str, fits)) or 'none (use distribute=data)'}")
        if not model_parallel:
            if not fits:
                raise KerastuneError(
                    f"distribute=model: no model-axis size splits every "
                    f"{backbone_cls.__name__} weight evenly over {n} devices "
                    f"({uneven_weight(backbone_cls, backbone_config, n, n)}): "
                    "use distribute=data")
            model_parallel = fits[-1]
    m = model_parallel or n
    layout_map = backbone_cls.get_layout_map(_mesh(n, m, devices))
    if n // m % process_count():
        raise KerastuneError(
            f"distribute=model with model_parallel={m}: the {n // m} devices on the batch "
            f"axis do not split over the {process_count()} processes; choose a "
            "model_parallel that leaves a multiple of the process count")
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch",
                                            auto_shard_dataset=auto_shard)



def preset_distribution(mode, preset, model_parallel=None):
    """`make_distribution(mode, ...)` for a KerasHub preset: for "model", the
    layout map of the preset's backbone, checked against its config (read
    from the preset's config alone: no weights load).

    Args:
        mode: str. One of "none", "data", "model".
        preset: str. A preset name, handle or folder.
        model_parallel: int or None (0 as None). As `make_distribution`.
    """
    backbone_cls, backbone_config = preset_backbone(preset) if mode == "model" else (None, None)
    return make_distribution(mode, backbone_cls, model_parallel or None, backbone_config)


def scope(distribution):
    """`distribution.scope()`, or a scope that does nothing for None."""
    return distribution.scope() if distribution is not None else contextlib.nullcontext()


@contextlib.contextmanager
def replicated_inputs():
    """While the block runs, the inputs given to the model under the
    `keras.distribution` set now are placed whole on every device (a data
    layout that splits nothing) instead of split over the batch axis: every
    device computes every row, so a batch of any size works (the last,
    smaller batch of an evaluation) and the outputs can be read back in
    every process. Nothing without a distribution."""
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None:
        yield
        return
    from kerastune_lab import compat

    def whole(shape):
        return keras.distribution.TensorLayout([None] * len(shape), distribution.device_mesh)

    with compat.data_layout_replaced(distribution, whole):
        yield


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


# --- Batches that split evenly over the devices ---


def batch_shards(distribution, batch_size=None):
    """How many parts a batch is split into: the devices on the batch axis of
    `distribution` (1 without one). With `batch_size`, checks that it splits
    evenly over them (a one-line `KerastuneError` if not)."""
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    shards = mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)]
    if batch_size is not None and batch_size % shards:
        mode = "data" if type(distribution).__name__ == "DataParallel" else "model"
        raise KerastuneError(f"batch_size={batch_size}: expected a multiple of the {shards} "
                             f"devices on the batch axis (distribute={mode})")
    return shards


def fill_windows(packed, batch_size, shards):
    """`packed` (`data.packing.Packed`) with copies of its first windows,
    weighted 0, added up to a multiple of `batch_size` windows when batches
    split over `shards` > 1 devices (every batch whole); the added windows
    change no loss and no perplexity. `packed` itself with one shard."""
    import dataclasses

    import numpy as np

    extra = -len(packed.token_ids) % batch_size if shards > 1 else 0
    if not extra:
        return packed
    rows = np.arange(extra) % len(packed.token_ids)
    return dataclasses.replace(
        packed, token_ids=np.concatenate([packed.token_ids, packed.token_ids[rows]]),
        segment_ids=np.concatenate([packed.segment_ids, packed.segment_ids[rows]]),
        weights=np.concatenate([packed.weights, np.zeros_like(packed.weights[rows])]))


def call_filled(fn, items, shards):
    """`fn(items)` with `items` (a list, e.g. prompts) filled up to a multiple
    of `shards` with copies of its first, so the batch splits over the
    devices; the results of the copies are dropped. [] for no items."""
    if not items:
        return []
    filled = list(items) + [items[0]] * (-len(items) % shards)
    return fn(filled)[:len(items)]


# --- Several processes (`processes`) ---


@contextlib.contextmanager
def whole_outputs():
    """With several processes: the model's inputs placed whole on every
    device while the block runs (`distribute.replicated_inputs`), so that
    `predict` and `generate` give every process the whole output instead of
    arrays that span other processes' devices, which NumPy cannot read.
    Nothing with one process."""
    from kerastune_lab import processes

    if processes.process_count() < 2:
        yield
        return
    with replicated_inputs():
        yield


def own_rows(dataset):
    """A batched tf.data pipeline with each batch cut to this process's rows,
    under the `keras.distribution` set now: the rows that the batch axis
    puts on this process's devices, which Keras assembles into the global
    batch (`jax.make_array_from_process_local_data`). Each process computes
    the whole batch, augmentation included, so its rows are exactly those of
    a run in one process. A batch whose rows do not split evenly over the
    batch axis (the last, smaller one) is kept whole: every process gives
    all of it, and `distribute` replicates it on every device. `dataset`
    itself with one process or no distribution."""
    from kerastune_lab import processes

    if processes.process_count() < 2:
        return dataset
    import keras
    import tensorflow as tf

    distribution = keras.distribution.distribution()
    if distribution is None:
        return dataset
    shards = batch_shards(distribution)
    # This process's rows of a batch of `shards` rows (one a device).
    sharding = distribution.get_data_layout((shards,)).backend_layout
    spans = [index[0].indices(shards)[:2]
             for index in sharding.addressable_devices_indices_map((shards,)).values()]
    low, high = min(lo for lo, _ in spans), max(hi for _, hi in spans)

    def rows(t):
        n = tf.shape(t)[0]
        part = n // shards
        return tf.cond(n % shards == 0, lambda: t[low * part:high * part], lambda: t)

    return dataset.map(lambda *batch: tf.nest.map_structure(
        rows, batch if len(batch) > 1 else batch[0]))
