"""Class imbalance: loss weights per class, or oversampling of rare classes.

    weights = class_weights(train_labels, "balanced", class_names)
    model.fit(train, class_weight=weights)          # {class index: weight}

"balanced" weighs class c by n_samples / (n_classes * n_c) (scikit-learn's
`compute_class_weight`), so every class carries the same total weight in
the loss. Keras takes the result as `fit(class_weight=...)`. What is written
here is only the parsing of a weight setting (a mode or a mapping keyed by
class name or index) and the oversampling of indices, which neither Keras
nor scikit-learn offers for a tf.data pipeline of files.
"""

import numpy as np

from kerastune_lab.errors import KerastuneError

MODES = ("balanced", "none")


def class_weights(labels, setting="balanced", class_names=None):
    """Returns the `class_weight` mapping for `fit`, or None.

    Args:
        labels: sequence of int. The training labels, as fed to `fit`
            (after any oversampling).
        setting: str or dict. "balanced" (from the label counts), "none"
            (no weighting, returns None), or a mapping of every class (by
            name or by index) to a positive weight. Defaults to "balanced".
        class_names: list of str or None. Names of the class indices; needed
            to resolve a mapping keyed by name. Defaults to None (indices
            0..max label).

    Returns:
        dict {class index: float} or None.
    """
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    num_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if isinstance(setting, str):
        mode = setting.strip().lower()
        if mode == "none":
            return None
        if mode != "balanced":
            raise KerastuneError(
                f"class_weight={setting!r}: expected 'balanced', 'none' or a mapping "
                f"of each class to a weight, e.g. {{{names[0]!r}: 1.0, ...}}")
        missing = [names[c] for c in range(num_classes) if not np.any(labels == c)]
        if missing:
            raise KerastuneError(f"class_weight='balanced': no training example of class(es) "
                                 f"{', '.join(missing)}")
        weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
        return {c: float(w) for c, w in enumerate(weights)}
    if not isinstance(setting, dict):
        raise KerastuneError(f"class_weight={setting!r}: expected 'balanced', 'none' or a mapping")
    weights = {}
    for key, value in setting.items():
        if isinstance(key, str) and key in names:
            index = names.index(key)
        elif isinstance(key, int) and not isinstance(key, bool) and 0 <= key < num_classes:
            index = key
        else:
            raise KerastuneError(f"class_weight: unknown class {key!r}; "
                                 f"classes: {', '.join(names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise KerastuneError(f"class_weight: weight of {key!r} is {value!r}: "
                                 "expected a positive number")
        weights[index] = float(value)
    missing = [names[c] for c in range(num_classes) if c not in weights]
    if missing:
        raise KerastuneError(f"class_weight: no weight for class(es) {', '.join(missing)}: "
                             "expected a weight for every class")
    return dict(sorted(weights.items()))


def by_name(weights, class_names):
    """Returns {class name: weight} (or None) for config.json and logs."""
    if weights is None:
        return None
    return {class_names[c]: round(w, 6) for c, w in weights.items()}


def oversample(labels, seed=0):
    """Returns shuffled indices in which every class is as frequent as the
    largest: all examples once, plus rare-class examples drawn again at
    random (with replacement).

    Args:
        labels: sequence of int.
        seed: int. Defaults to 0.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    indices = []
    for c, n in zip(classes, counts):
        members = np.flatnonzero(labels == c)
        indices += members.tolist() + rng.choice(members, counts.max() - n).tolist()
    return rng.permutation(np.asarray(indices, dtype="int64"))
