"""Predictions from a finished run's saved model."""

import numpy as np

from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict_images(run_dir, paths, batch_size=32):
    """Returns [(path, label, probability)] for image files.

    Args:
        run_dir: str. A finished image-classification run.
        paths: list of str. Image files (JPEG, PNG, BMP, GIF).
    """
    import keras_hub

    from kerastune_lab.data.images import load_images
    from kerastune_lab.models import load_run_model

    run = RunDir.open(run_dir)
    config = run.read_json("config.json")["config"]
    if "image_size" not in config:
        raise KerastuneError(f"run dir {run_dir!r} is not an image-classification run")
    class_names = run.read_json("labels.json")
    model = load_run_model(run, keras_hub.models.ImageClassifier)
    images = load_images(paths, config["image_size"])
    probs = _softmax(np.asarray(model.predict(images, batch_size=batch_size, verbose=0),
                                dtype="float64"))
    best = probs.argmax(axis=-1)
    return [(p, class_names[i], float(probs[n, i])) for n, (p, i) in enumerate(zip(paths, best))]
