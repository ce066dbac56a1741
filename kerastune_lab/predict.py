"""Predictions from a finished run's saved model."""

import logging
import os

import numpy as np

from kerastune_lab import run_files
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import EVALUATION, METRICS, RunDir


def _softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def decide(probs, class_names, threshold=None):
    """Class indices from probabilities: the most probable class, or, with a
    run's decision threshold (`threshold.json`), its positive class wherever
    that class's probability reaches the threshold, else the most probable
    of the others."""
    probs = np.asarray(probs)
    if threshold is None:
        return probs.argmax(axis=-1)
    positive = list(class_names).index(threshold["positive_class"])
    others = probs.copy()
    others[:, positive] = -np.inf
    return np.where(probs[:, positive] >= threshold["threshold"], positive,
                    others.argmax(axis=-1))


def open_image_run(run_dir):
    """(RunDir, image_size, class names) of a finished image-classification
    run, its files checked (`run_files`) before anything loads."""
    run = run_files.check_run(run_dir)
    if run.kind != "image_classifier" or not os.path.exists(run.labels_path):
        raise KerastuneError(f"run dir {run_dir!r} is not an image-classification run")
    config = run_files.run_config(run.path)
    return run, run_files.image_size(run.path, config), run_files.class_names(run.path)


def predict_images(run_dir, paths, batch_size=32):
    """Returns [(path, label, probability of that label)] for image files.

    A run with a decision threshold (`threshold.json`, e.g. the X-ray
    recipe's, chosen for a target recall on the validation split) applies
    it, and says so; other runs take the most probable class.

    Args:
        run_dir: str. A finished image-classification run.
        paths: list of str. Image files (JPEG, PNG, BMP, GIF).
    """
    run, size, class_names = open_image_run(run_dir)
    import keras_hub

    from kerastune_lab.data.images import load_images
    from kerastune_lab.evaluate.classification import saved_threshold
    from kerastune_lab.models import load_run_model

    images = load_images(paths, size)  # bad files fail before loading
    # For inference: uncompiled, so no optimizer to load the saved state into.
    model = load_run_model(run, keras_hub.models.ImageClassifier, compile=False)
    probs = _softmax(np.asarray(model.predict(images, batch_size=batch_size, verbose=0),
                                dtype="float64"))
    threshold = None
    if os.path.exists(run.threshold_path):
        threshold = saved_threshold(run_files.threshold(run.path, class_names))
        logging.getLogger("kerastune_lab").info(
            "decision threshold %.4f on P(%s), from threshold.json (chosen on the %s split "
            "for recall %s): %s when its probability reaches it", threshold["threshold"],
            threshold["positive_class"], threshold["chosen_on"], threshold["target_recall"],
            threshold["positive_class"])
    best = decide(probs, class_names, threshold)
    return [(p, class_names[i], float(probs[n, i])) for n, (p, i) in enumerate(zip(paths, best))]


def predict_dataset(model, dataset):
    """Returns (labels, probabilities) over a batched dataset of (x, label).

    Labels come from the dataset itself, so they stay aligned with the
    predictions even where the pipeline dropped an unreadable file.
    """
    from kerastune_lab.distribute import replicated_inputs

    labels, probs = [], []
    # Under a keras.distribution: each batch whole on every device (the last
    # one need not split over them; every process reads every prediction).
    with replicated_inputs():
        for x, y in dataset:
            logits = np.asarray(model.predict_on_batch(np.asarray(x)), dtype="float64")
            probs.append(_softmax(logits))
            labels.append(np.asarray(y))
    if not labels:
        raise KerastuneError("the dataset to predict on holds no readable example")
    return np.concatenate(labels).astype("int64"), np.concatenate(probs)


def evaluate_image_folder(run_dir, data, name=None, overwrite=False, batch_size=32,
                          positive_class=None, target_recall=None):
    """Evaluates a finished image-classification run on a class-folder tree.

    Writes the files of `evaluate.evaluate_classifier`, `metrics.json`,
    `evaluation.json` and `report.md` into `RUN_DIR/eval-<name>/` (by default
    the data folder's name), a folder of its own, so the run's own files
    are never touched. The figures are named as a run's test figures
    (`test_accuracy`, `test_roc_auc`, ...) whatever the folder's name.
    Returns that folder's RunDir.

    Args:
        run_dir: str. A finished image-classification run.
        data: str. A folder with one subfolder per class, named as in the
            run's `labels.json` (some classes may be absent).
        name: str or None. The evaluation's name. Defaults to None: the
            folder's base name.
        overwrite: bool. Replace an earlier evaluation of the same name.
        positive_class, target_recall: as in `evaluate_classifier`. Default
            to the run's config values, when it has them.
    """
    import datetime
    import os

    if not (isinstance(batch_size, int) and batch_size >= 1) or isinstance(batch_size, bool):
        raise KerastuneError(f"batch_size={batch_size!r}: expected a whole number, 1 or more")
    run, size, class_names = open_image_run(run_dir)
    config = run_files.run_config(run.path)
    import keras_hub

    from kerastune_lab.data.images import files_dataset, pipeline, scan_image_folder
    from kerastune_lab.evaluate import evaluate_classifier, write_report
    from kerastune_lab.models import load_run_model

    data = os.path.expanduser(os.fspath(data))
    paths, labels, folder_classes, skipped = scan_image_folder(data, require_all_classes=False)
    unknown = [c for c in folder_classes if c not in class_names]
    if unknown:
        raise KerastuneError(
            f"data folder {data!r} has classes {folder_classes} but the run was trained on "
            f"{class_names}: expected class subfolders among those")
    labels = [class_names.index(folder_classes[i]) for i in labels]
    name = name or os.path.basename(os.path.normpath(data)) or "data"
    if os.sep in name or name.startswith("."):
        raise KerastuneError(f"evaluation name {name!r}: expected a plain folder name")
    out_path = run.eval_path(name)
    if os.path.exists(out_path) and not overwrite:
        raise KerastuneError(f"{out_path!r} already holds an evaluation: choose another "
                             "--name or pass --overwrite")
    from kerastune_lab.evaluate.classification import saved_threshold

    if positive_class is None:
        positive_class = config.get("positive_class") or None
    # The run's own threshold (chosen on its validation split) is measured on
    # this data; a --target-recall of the command's own chooses one on it.
    threshold = None
    if target_recall is None and os.path.exists(run.threshold_path):
        threshold = saved_threshold(run_files.threshold(run.path, class_names))
        if positive_class is not None and threshold["positive_class"] != positive_class:
            threshold = None
        else:
            positive_class, target_recall = threshold["positive_class"], \
                threshold["target_recall"]
    if target_recall is None:
        target_recall = config.get("target_recall") or None

    # For inference: uncompiled, so no optimizer to load the saved state into.
    model = load_run_model(run, keras_hub.models.ImageClassifier, compile=False)
    dataset = pipeline(files_dataset(paths, labels, size), batch_size)
    y_true, probs = predict_dataset(model, dataset)
    out = RunDir.create(out_path, overwrite=overwrite)
    try:
        out.write_json(EVALUATION, {
            "run": os.path.abspath(run.path), "data": os.path.abspath(data),
            "num_images": int(len(y_true)), "skipped": skipped,
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        # Named as the run's own test figures (test_accuracy, ...), whatever
        # the folder: the data evaluated on is in evaluation.json and report.md.
        summary = evaluate_classifier(out, y_true, probs, class_names,
                                      positive_class=positive_class,
                                      target_recall=target_recall, prefix="test",
                                      threshold=threshold)
        summary["evaluation_data"] = os.path.abspath(data)
        out.write_json(METRICS, summary)
        write_report(out, summary, f"Evaluation of {os.path.basename(run.path)} on {data}",
                     notes=[f"model: {run.model_path}", f"{len(y_true)} images, skipped "
                            f"{sum(skipped.values())} unreadable or non-image files"])
        out.finish()
    except BaseException:
        out.discard()
        raise
    return out
