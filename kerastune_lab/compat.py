"""Every use of a private Keras or KerasHub name, in one place.

Written for keras 3.15 (3.15.1) and keras-hub 0.32 (0.32.0): `TESTED`. Each
function below checks the installed version of its package (read from the
installed metadata, once) against `TESTED`. On another version it takes a
public path where one exists (its docstring says so), else it raises
`IncompatibleVersion`: one line naming the package, its version, the tested
range and what needed it (exit code 1 from the CLI). Within the range, a
private name that has moved gives the same line (or the public path).

Why each private use exists:

- `sublayers`: `Layer._flatten_layers`, the layers inside a layer, nested
  ones too (Keras has no public walk below `Model.layers`).
- `get_global_attribute`, `set_global_attribute`: Keras' `global_state`:
  the weights `StatelessScope` leaves uninitialised (`abstract_weights`)
  and the global `SeedGenerator` (saved in a backup).
- `swap_class`: a layer's `__class__` changed in place (LoRA layers), the
  way Keras' own `enable_lora` changes a layer.
- `unlocked_tracker`: `Layer._tracker` unlocked to add LoRA's weights to a
  built layer, as Keras' `enable_lora` does.
- `kernel_shape`: `EinsumDense._kernel`, the stored kernel (public
  fallback: `layer.kernel`).
- `set_dtype_policy`: `Layer._dtype_policy` set directly (the public setter
  writes into a `DTypePolicyMap` instead of replacing it).
- `preset_loader`, `is_keras_preset_loader`: KerasHub's preset loaders, to
  read a preset's config before building it (quantizing while loading).
- `builtin_presets`: KerasHub's `BUILTIN_PRESETS` (public fallback: the
  `presets` of its model, tokenizer and converter base classes).
- `hf_exportable_backbones`, `hf_config`, `hf_export_backbone`: KerasHub's
  transformers exporter tables, to export Llama 2 with the Llama 3 code.
- `safe_mode_scope`: Keras' `SafeModeScope`, safe mode as the default in a
  block whatever the global setting.
- `keras_torch_affine_transform`, `torch_affine_transform_replaced`: Keras'
  torch `affine_transform`, replaced by a batched one (public fallback:
  Keras' own runs, the same values, slower).
- `host_quantizers_replaced`: Keras' numpy quantizers, replaced by ones that
  work a slice at a time (public fallback: Keras' own, the same values, more
  memory).
- `h5_entry_group`: the h5 group of Keras' weights store, read a slice at a
  time (public fallback: None, the store read a whole variable at a time).
- `load_own_variables_replaced`: Keras layer classes' `load_own_variables`
  replaced while loading, to quantize float weights on the way in.
- `seed_generator_override`: a preprocessing layer's `_get_seed_generator`,
  answered with a generator whose seeds come from a tensor (tf.data).
"""

import contextlib
import functools
import importlib.metadata

from kerastune_lab.errors import IncompatibleVersion

# The releases this module was written for and the suite passes with
# (pyproject.toml's dependencies say the same).
TESTED = {"keras": ">=3.15,<3.16", "keras-hub": ">=0.32,<0.33"}


@functools.lru_cache(maxsize=None)
def installed_version(package):
    """The installed version of `package` ("keras", "keras-hub") from its
    metadata (nothing imported), or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def _in_range(package, version):
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion

    try:
        return version is not None and SpecifierSet(TESTED[package]).contains(version)
    except InvalidVersion:
        return False


def supported(package):
    """Whether the installed `package` is in its TESTED range."""
    return _in_range(package, installed_version(package))


def _incompatible(package, needed_by, missing=None):
    version = installed_version(package) or "(version unknown)"
    spec = TESTED[package]
    fix = f'pip install "{package}{spec}"'
    if missing is None:
        return IncompatibleVersion(f"{package} {version} is not a version kerastune_lab was "
                                   f"tested with ({spec}; {needed_by} needs it): {fix}")
    return IncompatibleVersion(f"{package} {version} does not have what {needed_by} needs "
                               f"({missing}; kerastune_lab was tested with {spec}): {fix}")


def _private(package, needed_by, get):
    """`get()` (the lookup of a private name) where `package` is in range,
    else IncompatibleVersion; a moved name (AttributeError, ImportError) too."""
    if not supported(package):
        raise _incompatible(package, needed_by)
    try:
        return get()
    except (AttributeError, ImportError) as e:
        raise _incompatible(package, needed_by, str(e)) from None


def _private_or(package, get, public):
    """`get()` where `package` is in range and the name is there, else `public()`."""
    if supported(package):
        try:
            return get()
        except (AttributeError, ImportError):
            pass
    return public()


# --- Keras layers ---


def sublayers(layer, include_self=False, recursive=True):
    """The layers inside `layer` (nested ones too unless `recursive=False`),
    in Keras' order, as a list; `layer` first with `include_self`."""
    flatten = _private("keras", "walking a model's layers", lambda: layer._flatten_layers)
    return flatten(include_self=include_self, recursive=recursive)


def swap_class(layer, cls):
    """Gives `layer` the class `cls` (a subclass of its own) in place."""
    _private("keras", "LoRA (layer classes swapped in place)", lambda: None)
    layer.__class__ = cls


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Inside, weights can be added to the built `layer`."""
    tracker = _private("keras", "LoRA (weights added to built layers)", lambda: layer._tracker)
    tracker.unlock()
    try:
        yield
    finally:
        tracker.lock()


def kernel_shape(layer):
    """The shape of a float or int8 `EinsumDense` layer's stored kernel.
    Public fallback: `layer.kernel.shape` (the same shape; they differ for
    int4 only, whose stored kernel is packed)."""
    return _private_or("keras", lambda: layer._kernel.shape, lambda: layer.kernel.shape)


def set_dtype_policy(layer, policy):
    """Makes `policy` the layer's own dtype policy (replacing a map)."""
    _private("keras", "loading a model quantized (per-layer dtype policies)",
             lambda: layer._dtype_policy)
    layer._dtype_policy = policy


# --- Keras global state, saving, loading ---


def _global_state(needed_by):
    def get():
        from keras.src.backend.common import global_state

        return global_state
    return _private("keras", needed_by, get)


def get_global_attribute(name, needed_by="reading Keras' global state"):
    """Keras' global attribute `name` (e.g. "global_seed_generator"), or None."""
    return _global_state(needed_by).get_global_attribute(name)


def set_global_attribute(name, value, needed_by="setting Keras' global state"):
    _global_state(needed_by).set_global_attribute(name, value)


def safe_mode_scope(safe_mode):
    """Keras' `SafeModeScope(safe_mode)` (None: every deserialisation
    defaults to safe mode)."""
    def get():
        from keras.src.saving.serialization_lib import SafeModeScope

        return SafeModeScope
    return _private("keras", "loading a model in safe mode", get)(safe_mode)


def h5_entry_group(store):
    """The h5py group of one of Keras' h5 weights stores, or None. Public
    fallback: None (the caller reads `store[key]`, whole variables)."""
    return _private_or("keras", lambda: store._h5_entry_group, lambda: None)


@contextlib.contextmanager
def load_own_variables_replaced(classes, wrap):
    """Inside, each class of `classes` has `wrap(original)` as its
    `load_own_variables` (what Keras' loader calls with a layer's weights);
    put back on leaving."""
    _private("keras", "loading a model quantized (layers' load_own_variables)",
             lambda: [cls.load_own_variables for cls in classes])
    saved = {}
    originals = {cls: cls.load_own_variables for cls in classes}  # before any is wrapped
    try:
        for cls, original in originals.items():
            saved[cls] = cls.__dict__.get("load_own_variables")
            cls.load_own_variables = wrap(original)
        yield
    finally:
        for cls, method in saved.items():
            if method is None:
                del cls.load_own_variables
            else:
                cls.load_own_variables = method


_QUANTIZERS = ("abs_max_quantize", "_abs_max_quantize_grouped_with_zero_point_numpy")


def _quantizers_module():
    from keras.src.quantizers import quantizers

    for name in _QUANTIZERS:
        getattr(quantizers, name)
    return quantizers


@contextlib.contextmanager
def host_quantizers_replaced(abs_max_quantize, grouped_numpy):
    """Inside, Keras' `abs_max_quantize` is `abs_max_quantize(original)` and
    its `_abs_max_quantize_grouped_with_zero_point_numpy` (int4 with groups)
    `grouped_numpy(original)`. Public fallback: nothing replaced (Keras'
    own quantizers: the same values, more memory)."""
    module = _private_or("keras", _quantizers_module, lambda: None)
    if module is None:
        yield
        return
    saved = {name: getattr(module, name) for name in _QUANTIZERS}
    try:
        for name, make in zip(_QUANTIZERS, (abs_max_quantize, grouped_numpy)):
            setattr(module, name, make(saved[name]))
        yield
    finally:
        for name, function in saved.items():
            setattr(module, name, function)


# --- Keras preprocessing layers and torch images ---


@contextlib.contextmanager
def seed_generator_override(layer, generator):
    """Inside, Keras' random preprocessing `layer` draws its seeds from
    `generator` instead of its own."""
    _private("keras", "augmentation with seeds from tf.data",
             lambda: type(layer)._get_seed_generator)
    layer._get_seed_generator = lambda backend=None, g=generator: g
    try:
        yield
    finally:
        del layer._get_seed_generator


def _torch_image():
    from keras.src.backend.torch import image

    image.affine_transform  # noqa: B018 (an AttributeError if it moved)
    return image


_KERAS_OWN = {}


def keras_torch_affine_transform():
    """Keras' own torch `affine_transform`, recorded before any replacement.
    Public fallback: `keras.ops.image.affine_transform` (never replaced then)."""
    if "affine_transform" not in _KERAS_OWN:
        image = _private_or("keras", _torch_image, lambda: None)
        if image is None:
            import keras

            return keras.ops.image.affine_transform
        _KERAS_OWN["affine_transform"] = image.affine_transform
    return _KERAS_OWN["affine_transform"]


@contextlib.contextmanager
def torch_affine_transform_replaced(function):
    """Inside, Keras' torch `affine_transform` (what RandomRotation and
    RandomZoom call) is `function`; put back on leaving. Public fallback:
    nothing replaced (Keras' own: the same values, slower)."""
    image = _private_or("keras", _torch_image, lambda: None)
    if image is None:
        yield
        return
    keras_torch_affine_transform()  # recorded before it is replaced
    current = image.affine_transform
    image.affine_transform = function
    try:
        yield
    finally:
        image.affine_transform = current


# --- KerasHub ---


def _preset_utils(needed_by):
    def get():
        from keras_hub.src.utils import preset_utils

        return preset_utils
    return _private("keras-hub", needed_by, get)


def preset_loader(preset):
    """KerasHub's loader of `preset` (its config read, nothing built)."""
    return _preset_utils("loading a preset quantized").get_preset_loader(preset)


def is_keras_preset_loader(loader):
    """Whether `loader` reads a KerasHub-format preset (not a converted one)."""
    return isinstance(loader, _preset_utils("loading a preset quantized").KerasPresetLoader)


def builtin_presets():
    """{preset name: metadata} of KerasHub's built-in presets. Public
    fallback: the union of the `presets` of KerasHub's base classes."""
    import keras_hub  # noqa: F401  (importing the models registers their presets)

    def public():
        presets = {}
        for cls in (keras_hub.models.Backbone, keras_hub.models.Task,
                    keras_hub.tokenizers.Tokenizer, keras_hub.layers.ImageConverter,
                    keras_hub.layers.AudioConverter):
            presets.update(cls.presets)
        return presets

    def private():
        from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

        return BUILTIN_PRESETS
    return _private_or("keras-hub", private, public)


def _hf_exporter():
    def get():
        from keras_hub.src.utils.transformers.export import hf_exporter

        hf_exporter.MODEL_CONFIGS, hf_exporter.MODEL_EXPORTERS  # noqa: B018
        return hf_exporter
    return _private("keras-hub", "the transformers export", get)


def hf_exportable_backbones():
    """The backbone class names KerasHub's transformers exporter knows."""
    return frozenset(_hf_exporter().MODEL_EXPORTERS)


def hf_config(backbone, like):
    """The transformers config KerasHub writes for a `like` backbone (a
    class name, e.g. "Llama3Backbone"), made from `backbone`."""
    return _hf_exporter().MODEL_CONFIGS[like](backbone)


def hf_export_backbone(backbone, folder, like, config, tokenizer=None):
    """KerasHub's transformers export of `backbone` (with its LM head) as a
    `like` backbone, `config(backbone)` giving its config."""
    exporter = _hf_exporter()
    name = type(backbone).__name__
    with contextlib.ExitStack() as stack:
        from unittest import mock

        stack.enter_context(mock.patch.dict(exporter.MODEL_CONFIGS, {name: config}))
        stack.enter_context(mock.patch.dict(exporter.MODEL_EXPORTERS,
                                            {name: exporter.MODEL_EXPORTERS[like]}))
        exporter.export_backbone(backbone, folder, include_lm_head=True, tokenizer=tokenizer)


def hf_weights(backbone, like):
    """{transformers name: numpy array} of `backbone` with its LM head, as
    KerasHub's transformers export of a `like` backbone names and lays them
    out (what it would write to model.safetensors)."""
    import keras
    import numpy as np

    weights = _hf_exporter().MODEL_EXPORTERS[like](backbone, include_lm_head=True)
    return {name: np.asarray(keras.ops.convert_to_numpy(getattr(value, "value", value)))
            for name, value in weights.items()}


# --- Several processes (processes.py, distribute.py) ---


def jax_distributed_joined():
    """Whether this process has joined JAX's distributed runtime
    (`jax.distributed.initialize`): jax has no public test for it."""
    from jax._src import distributed

    return distributed.global_state.client is not None


def exit_now(code):
    """Ends the process at once with `code`, from any thread (`os._exit`):
    for a watchdog thread while the main thread is stuck in a C++ call."""
    import os

    os._exit(code)


@contextlib.contextmanager
def data_layout_replaced(distribution, layout):
    """`distribution.get_data_layout(shape)` answers `layout(shape)` inside
    the block (an attribute of the instance over Keras' method), Keras' own
    method again after it."""
    distribution.get_data_layout = layout
    try:
        yield
    finally:
        del distribution.get_data_layout
