"""A text classifier you can call, loaded from a finished run directory.

    from kerastune_lab import load_classifier
    classifier = load_classifier("runs/imdb_sentiment-20250101-120000")
    classifier("This movie was a masterpiece.")
    # [{'label': 'pos', 'score': 0.998}]

It needs only the run directory (the saved KerasHub preset in `model/` and the
class names in `labels.json`), not the training data, and works on any
backend whatever the backend the run trained on.
"""

import numpy as np

from kerastune_lab import run_files
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import LABELS
from kerastune_lab.text_checks import check_text


class TextClassifierPipeline:
    """Calls a KerasHub text classifier on raw strings.

    Args:
        model: a KerasHub `TextClassifier` with its preprocessor.
        class_names: list of str. Label names, in the model's output order.
        batch_size: int. Texts a forward pass. Defaults to 32.

    Example:

    ```python
    classifier = TextClassifierPipeline(model, ["neg", "pos"])
    classifier(["A masterpiece.", "Dull and far too long."])
    # [{'label': 'pos', 'score': 0.97}, {'label': 'neg', 'score': 0.91}]
    ```
    """

    def __init__(self, model, class_names, batch_size=32):
        self.model = model
        self.class_names = list(class_names)
        self.batch_size = batch_size

    def __repr__(self):
        return f"TextClassifierPipeline(labels={self.class_names})"

    def predict_proba(self, texts):
        """Returns the class probabilities, a float64 (len(texts), classes) array."""
        from scipy.special import softmax

        texts = _as_texts(texts)
        if not texts:
            return np.zeros((0, len(self.class_names)))
        logits = self.model.predict(texts, batch_size=self.batch_size, verbose=0)
        return softmax(np.asarray(logits, dtype="float64"), axis=-1)

    def __call__(self, texts):
        """Returns [{'label': str, 'score': float}], one entry per text.

        Args:
            texts: str or list of str.
        """
        probs = self.predict_proba(texts)
        best = probs.argmax(axis=-1)
        return [{"label": self.class_names[i], "score": float(p[i])} for p, i in zip(probs, best)]


def _as_texts(texts):
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise KerastuneError(
            f"classifier input: expected a string or a list of strings, received "
            f"{type(bad[0]).__name__} {bad[0]!r}"
        )
    for n, text in enumerate(texts, start=1):
        check_text(text, f"classifier input {n}")
    return texts


def load_classifier(run_dir, batch_size=32):
    """Loads the text classifier of a finished run as a callable.

    Args:
        run_dir: str. A run directory of a text-classification recipe.
        batch_size: int. Texts a forward pass. Defaults to 32.

    Returns:
        TextClassifierPipeline: `classifier(text_or_texts)` returns
        `[{'label': ..., 'score': ...}]`, one entry per text.
    """
    run = run_files.check_run(run_dir)
    if run.kind != "text_classifier":
        raise KerastuneError(f"run dir {run.path!r} is not a text-classification run")
    try:
        class_names = run_files.class_names(run.path)
    except FileNotFoundError:
        raise KerastuneError(f"run dir {run.path!r} holds no {LABELS}: was the run finished?")
    import keras_hub

    from kerastune_lab.models import load_run_model

    # For inference: uncompiled, so the saved optimizer state has nowhere to go
    # (and no "Skipping variable loading for optimizer" warning).
    model = load_run_model(run, keras_hub.models.TextClassifier, compile=False)
    return TextClassifierPipeline(model, class_names, batch_size)
