"""Choose the Keras backend before anything imports keras.

Keras reads `KERAS_BACKEND` once, when it is first imported. The CLI calls
`use_backend()` first thing, so the choice is: the `--backend` flag, else the
`KERAS_BACKEND` environment variable, else jax.
"""

import importlib.util
import os
import sys

from kerastune_lab.errors import KerastuneError

DEFAULT_BACKEND = "jax"

# backend name -> (module that must be importable, how to install it)
BACKENDS = {
    "jax": ("jax", "pip install jax  (GPU: pip install 'jax[cuda12]')"),
    "tensorflow": ("tensorflow", "pip install tensorflow  (GPU: 'tensorflow[and-cuda]')"),
    "torch": (
        "torch",
        "pip install torch  (CPU only: pip install torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cpu)",
    ),
}


def resolve_backend(flag=None):
    """Returns the backend name chosen by `flag`, `KERAS_BACKEND` or the default."""
    name = flag or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    name = name.strip().lower()
    if name not in BACKENDS:
        source = "--backend" if flag else "KERAS_BACKEND"
        raise KerastuneError(
            f"unknown backend {source}={name!r}: expected one of "
            f"{', '.join(BACKENDS)}"
        )
    return name


def use_backend(flag=None):
    """Selects the backend for this process and returns its name.

    Args:
        flag: str or None. The backend asked for on the command line.
            Defaults to `KERAS_BACKEND`, then `"jax"`.

    Raises `KerastuneError` when the name is unknown, its package is not
    installed, or keras was already imported with another backend.
    """
    name = resolve_backend(flag)
    module, install = BACKENDS[name]
    if importlib.util.find_spec(module) is None:
        raise KerastuneError(
            f"backend {name!r} needs the {module!r} package, which is not "
            f"installed: {install}"
        )
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise KerastuneError(
                f"keras was already imported with backend {current!r}; "
                f"cannot switch to {name!r} in the same process"
            )
    os.environ["KERAS_BACKEND"] = name
    # Keep TensorFlow (used for tf.data on every backend) off the GPU unless it
    # is the backend, so it does not grab the memory JAX or torch will need.
    if name != "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return name


def hide_gpus_from_tensorflow():
    """Stops tf.data's TensorFlow from reserving GPU memory on jax/torch runs."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised: nothing to do
            pass


def framework_version(name):
    """Returns the version string of a backend's framework package."""
    module = importlib.import_module(BACKENDS[name][0])
    return getattr(module, "__version__", "unknown")


def list_devices():
    """Returns the devices keras sees, e.g. ['cpu:0'] or ['gpu:0', 'gpu:1']."""
    import keras

    if keras.backend.backend() != "torch":  # keras.distribution has no torch backend
        return [str(d).lower() for d in keras.distribution.list_devices()]
    import torch

    devices = ["cpu:0"]
    if torch.cuda.is_available():
        devices += [f"gpu:{i}" for i in range(torch.cuda.device_count())]
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps:0")
    return devices
