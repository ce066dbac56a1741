"""kerastune_lab: fine-tune pre-trained KerasHub models on JAX, TensorFlow or PyTorch.

Importing this package does not import Keras, so a script (or the `kerastune`
CLI) can still choose the backend first:

    from kerastune_lab import backend
    backend.use_backend("torch")
    from kerastune_lab.data import images   # imports keras, now on torch
"""

__version__ = "0.1.0"

# TensorFlow's and absl's C++ start-up lines stay off the console for a
# script or notebook that imports the library, as for the CLI.
from kerastune_lab import console as _console  # noqa: E402  (stdlib only)

_console.quiet_startup()

_LAZY = {"load_classifier": "kerastune_lab.classifier"}


def __getattr__(name):
    # `kerastune_lab.load_classifier` imports its module (and keras) on first
    # use, so importing the package still leaves the backend free to choose.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kerastune_lab' has no attribute {name!r}")
