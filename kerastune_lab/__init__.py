"""kerastune_lab: fine-tune pre-trained KerasHub models on JAX, TensorFlow or PyTorch.

Importing this package does not import Keras, so a script (or the `kerastune`
CLI) can still choose the backend first:

    from kerastune_lab import backend
    backend.use_backend("torch")
    from kerastune_lab.data import images   # imports keras, now on torch
"""

__version__ = "0.1.0"
