"""A classification run's model for serving: the `.keras` file, or Keras'
own `model.export` (SavedModel; ONNX on torch).

    save_keras(model, "out/")      # out/model.keras, loads in safe mode
    save_serving(model, "out/")    # SavedModel (jax, tensorflow) or out/model.onnx (torch)

The served function returns class probabilities (softmax of the logits).
Its input is what the task model itself takes once its preprocessor has
run: for an image run the image resized to the run's `image_size` and
scaled as the preset's image converter does (KerasHub's converters call
numpy, so they cannot be traced into the exported graph on jax); for a
text run the token ids and padding mask its preprocessor gives, padded to
its `sequence_length`.

Keras 3.15 exports a SavedModel on jax (through jax2tf) and tensorflow;
on torch it needs torch_xla. ONNX needs tf2onnx (tensorflow), jax2onnx
(jax) or onnx and onnxscript (torch): none is a dependency of this
project, so on torch the export is ONNX when `onnx` is installed, else a
one-line error.
"""

import contextlib
import importlib.util
import os
import warnings

from kerastune_lab.errors import KerastuneError

KERAS_FILE = "model.keras"
ONNX_FILE = "model.onnx"


def save_keras(model, folder):
    """Writes `model` (an uncompiled KerasHub task) as `folder/model.keras`.

    Its config gets `compile=False`, so `keras.saving.load_model` builds it
    back uncompiled, as it was saved (compile it to train it further). A
    KerasHub task compiles itself with defaults on construction unless told
    not to, and its optimizer would then look in the file for state that an
    inference export does not hold (Keras warns "Skipping variable loading
    for optimizer 'adam', because it has 2 variables whereas the saved
    optimizer has 0 variables").
    """
    path = os.path.join(folder, KERAS_FILE)
    config = model.get_config()
    # Read by `serialize_keras_object` through the instance (public API:
    # `get_config`), then taken away again: `model` itself is unchanged.
    object.__setattr__(model, "get_config", lambda: dict(config, compile=False))
    try:
        model.save(path)
    finally:
        object.__delattr__(model, "get_config")
    return path


def serving_model(model):
    """`model` (its preprocessor left out) with a softmax on its logits: a
    plain Keras functional model on the inputs the task model takes."""
    import keras
    from keras import tree

    # A task model takes any image size or sequence length; it is served at
    # its preprocessor's (jax2tf cannot export ResNet's "same" padding or a
    # position embedding's bound check for an unknown size).
    size = getattr(getattr(model.preprocessor, "image_converter", None), "image_size", None)
    length = getattr(model.preprocessor, "sequence_length", None)

    def spec(t):
        shape = tuple(t.shape[1:])
        if size is not None and len(shape) == 3:
            shape = tuple(size) + shape[-1:]
        elif length is not None and shape == (None,):
            shape = (length,)
        return keras.Input(shape, dtype=t.dtype, name=t.name.split(":")[0])

    inputs = tree.map_structure(spec, model.input)
    probabilities = keras.layers.Softmax(dtype="float32", name="probabilities")(
        model(inputs))
    return keras.Model(inputs, probabilities)


@contextlib.contextmanager
def _onnx_trace_notes_hidden():
    """torch.onnx's notes while it traces the served model, hidden: each is
    false for this export.

    - `TracerWarning` "Converting a tensor to a Python integer/boolean might
      cause the trace to be incorrect ... might not generalize to other
      inputs": Keras reads channels, padding and axis sizes from the input's
      shape, and the served input has a fixed image size or sequence length
      (`serving_model`), so those values are constants; the batch size stays
      free (tests/export/test_serving.py serves 3 images from a trace of 1).
    - "Constant folding - Only steps=1 can be constant folded": an
      optimisation not applied to a strided slice; the values are the same.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")
        yield


def save_serving(model, folder):
    """Exports the serving model of `model` into `folder` with `Model.export`.

    Returns:
        (format, path): "tf_saved_model" and `folder`, or "onnx" and
        `folder/model.onnx`.
    """
    import keras

    served = serving_model(model)
    backend = keras.config.backend()
    if backend in ("jax", "tensorflow"):
        served.export(folder, format="tf_saved_model", verbose=False)
        return "tf_saved_model", folder
    if backend == "torch" and importlib.util.find_spec("onnx") is not None:
        import numpy as np
        from keras import tree

        # Keras' ONNX export wants a model that has been called once.
        served(tree.map_structure(lambda t: np.zeros((1,) + tuple(t.shape[1:]), t.dtype),
                                  served.input))
        path = os.path.join(folder, ONNX_FILE)
        try:
            with _onnx_trace_notes_hidden():
                served.export(path, format="onnx", verbose=False)
        except Exception as e:  # torch.onnx's own errors are many and multi-line
            raise KerastuneError(
                f"ONNX export of a {type(model).__name__} failed in torch.onnx "
                f"({type(e).__name__}): use --backend jax or tensorflow for a SavedModel"
            ) from e
        return "onnx", path
    raise KerastuneError(f"--format serving on the {backend} backend: Keras exports a "
                         "SavedModel on jax and tensorflow, and ONNX on torch with the onnx "
                         "package: use --backend jax or tensorflow, or pip install onnx "
                         "onnxscript")
