"""Evaluation of the classifier recipes, written into the run directory:
the per-class report, the confusion matrix, ROC and precision-recall
curves, a decision threshold for a target recall, and report.md.

The metrics come from scikit-learn (its figures: `plots`); what is written
here is where they go and the summary of them.
"""

import logging
import os

from kerastune_lab.evaluate import plots
from kerastune_lab.runs import (
    CLASSIFICATION_REPORT,
    CLASSIFICATION_REPORT_TEXT,
    CONFUSION_MATRIX,
    CONFUSION_MATRIX_PLOT,
    HISTORY,
    PR_PLOT,
    REPORT,
    ROC_PLOT,
    THRESHOLD,
    TRAINING_CURVES,
)


def _class_index(positive_class, class_names):
    if positive_class is None:
        return 1 if len(class_names) == 2 else None
    if isinstance(positive_class, int) and 0 <= positive_class < len(class_names):
        return positive_class
    if positive_class in class_names:
        return list(class_names).index(positive_class)
    from kerastune_lab.errors import KerastuneError

    raise KerastuneError(f"positive_class={positive_class!r}: expected one of "
                         f"{', '.join(map(str, class_names))}")


def decision_threshold(y_true, scores, target_recall):
    """Returns the threshold on `scores` with the best precision among those
    whose recall reaches `target_recall` (ties: the higher recall, then the
    higher threshold).

    Predicting positive when `score >= threshold` then finds at least
    `target_recall` of the positives; the result says what precision that
    costs. Precision is not monotone in the threshold, so the highest
    threshold that reaches the target can be worse on both counts than a
    lower one: that one is never chosen.

    Args:
        y_true: array of bool. True for the positive class.
        scores: array of float. The model's probability of the positive class.
        target_recall: float. In (0, 1].

    Returns:
        dict with threshold, recall, precision and the confusion counts
        (tp, fp, fn, tn) at that threshold.
    """
    import numpy as np
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y_true, scores)
    # recall[i] and precision[i] are those of thresholds[i] (the last point
    # of each has no threshold).
    reach = np.flatnonzero(recall[:-1] >= target_recall)
    best = precision[reach].max()
    tied = reach[precision[reach] >= best - 1e-12]
    i = int(max(tied, key=lambda j: (recall[j], thresholds[j])))
    threshold = float(thresholds[i])
    predicted = np.asarray(scores) >= threshold
    y_true = np.asarray(y_true, bool)
    return {
        "target_recall": float(target_recall),
        "threshold": threshold,
        "recall": float(recall[i]),
        "precision": float(precision[i]),
        "tp": int(np.sum(predicted & y_true)), "fp": int(np.sum(predicted & ~y_true)),
        "fn": int(np.sum(~predicted & y_true)), "tn": int(np.sum(~predicted & ~y_true)),
    }


def at_threshold(y_true, scores, threshold):
    """Recall, precision and the confusion counts of predicting positive
    when `score >= threshold` (a threshold chosen elsewhere, e.g. on the
    validation split).

    Args:
        y_true: array of bool. True for the positive class.
        scores: array of float. The model's probability of the positive class.
        threshold: float.

    Returns:
        dict with threshold, recall, precision, tp, fp, fn, tn (precision is
        0 when nothing is predicted positive, recall 0 without positives).
    """
    import numpy as np

    y_true = np.asarray(y_true, bool)
    predicted = np.asarray(scores) >= threshold
    tp, fp = int(np.sum(predicted & y_true)), int(np.sum(predicted & ~y_true))
    fn, tn = int(np.sum(~predicted & y_true)), int(np.sum(~predicted & ~y_true))
    return {"threshold": float(threshold),
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def choose_threshold(y_true, probs, class_names, positive_class, target_recall,
                     split="val"):
    """The decision threshold for `target_recall`, chosen on one split (the
    validation split: the test split then measures it, unflattered).

    Returns the `decision_threshold` dict with `positive_class` and
    `chosen_on` added, or None (with a warning) where it cannot be chosen:
    the split holds one class only, or more than two classes and no
    positive class.
    """
    import numpy as np

    y_true = np.asarray(y_true).astype("int64").ravel()
    positive = _class_index(positive_class, class_names)
    log = logging.getLogger("kerastune_lab")
    if positive is None or len(np.unique(y_true == positive)) < 2:
        log.warning("no decision threshold: the %s split %s", split,
                    "has no positive class" if positive is None else
                    f"holds one side of {class_names[positive]} only")
        return None
    point = decision_threshold(y_true == positive, np.asarray(probs)[:, positive],
                               target_recall)
    return {"positive_class": class_names[positive], "chosen_on": split, **point}


def saved_threshold(point):
    """A run's `threshold.json` as `choose_threshold` returns it (to apply it
    to new data: `kerastune predict`, `kerastune evaluate`)."""
    chosen_on = point.get("chosen_on", "test")  # runs from before chosen_on: the test split
    figures = point.get(chosen_on) if isinstance(point.get(chosen_on), dict) else point
    return {"positive_class": point["positive_class"], "chosen_on": chosen_on,
            "target_recall": point["target_recall"], **figures,
            "threshold": float(point["threshold"])}


def evaluate_classifier(run, y_true, probs, class_names, positive_class=None,
                        target_recall=None, prefix="test", threshold=None):
    """Evaluates class probabilities against labels; writes the files into `run`.

    Writes `classification_report.json` and `.txt` (scikit-learn: precision,
    recall, F1 per class, macro and weighted averages), `confusion_matrix.json`
    and `.png`, `roc.png` and `pr.png` (for the positive class of a binary
    task, one-vs-rest for each class otherwise; skipped with a warning when
    `y_true` holds one class only) and, with `target_recall`, `threshold.json`:
    the threshold on the positive class's probability with the best
    precision among those that reach that recall (`decision_threshold`),
    chosen on the validation split where `threshold` gives it
    (`choose_threshold`), and its recall and precision measured on these
    labels. Without `threshold` it is chosen on these labels themselves, which
    flatters it; `threshold.json` and the summary say which split chose it.
    Predicted classes are the argmax.

    Args:
        run: RunDir. Where the files go.
        y_true: sequence of int. True class indices.
        probs: array (n, num classes). Predicted probabilities.
        class_names: list of str. Names of the class indices.
        positive_class: str, int or None. The class the threshold and a binary
            task's curves are about. Defaults to None: class 1 of 2 classes.
        target_recall: float or None. Recall of the positive class to choose
            a threshold for. Defaults to None (no threshold).
        prefix: str. The split evaluated on, and the prefix of the summary
            keys: "test", or "val" for a run without a test split; the same
            figure has the same name everywhere. Defaults to "test".
        threshold: dict or None. A threshold chosen on another split
            (`choose_threshold` on the validation split, or a run's
            `threshold.json`). Defaults to None: chosen on these labels.

    Returns:
        dict for metrics.json: `evaluated_on` (the prefix), `{prefix}_accuracy`,
        `_macro_f1`, `_weighted_f1`,
        per-class `_precision_<class>`, `_recall_<class>`, `_f1_<class>`,
        `_roc_auc`, `_average_precision` and the `_threshold*` fields (or
        `_curves_skipped` / `_threshold_skipped` with the reason).

    Example:

    ```python
    summary = evaluate_classifier(run, labels, probs, ["NORMAL", "PNEUMONIA"],
                                  positive_class="PNEUMONIA", target_recall=0.95)
    ```
    """
    import numpy as np
    from sklearn import metrics as skm

    from kerastune_lab.errors import KerastuneError

    log = logging.getLogger("kerastune_lab")
    y_true = np.asarray(y_true).astype("int64").ravel()
    probs = np.asarray(probs, dtype="float64")
    k = len(class_names)
    if probs.shape != (len(y_true), k):
        raise ValueError(f"probs has shape {probs.shape}: expected ({len(y_true)}, {k})")
    if len(y_true) == 0:
        raise KerastuneError(f"{prefix} data holds no example to evaluate")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"y_true holds labels outside 0..{k - 1}")
    positive = _class_index(positive_class, class_names)
    if target_recall is not None and not 0 < target_recall <= 1:
        raise KerastuneError(f"target_recall={target_recall}: expected a recall in (0, 1]")
    labels = list(range(k))
    y_pred = probs.argmax(axis=-1)

    # Per-class report and confusion matrix: always.
    kwargs = dict(labels=labels, target_names=list(class_names), zero_division=0)
    report = skm.classification_report(y_true, y_pred, output_dict=True, **kwargs)
    run.write_json(CLASSIFICATION_REPORT, report)
    run.write_text(CLASSIFICATION_REPORT_TEXT,
                   skm.classification_report(y_true, y_pred, digits=4, **kwargs))
    matrix = skm.confusion_matrix(y_true, y_pred, labels=labels)
    run.write_json(CONFUSION_MATRIX, {
        "labels": list(class_names), "rows": "true class", "columns": "predicted class",
        "matrix": matrix.tolist()})
    plots.plot_confusion_matrix(matrix, class_names, run.confusion_matrix_plot_path)

    summary = {
        "evaluated_on": prefix,
        f"{prefix}_num_examples": int(len(y_true)),
        f"{prefix}_accuracy": float(skm.accuracy_score(y_true, y_pred)),
        f"{prefix}_macro_f1": float(report["macro avg"]["f1-score"]),
        f"{prefix}_weighted_f1": float(report["weighted avg"]["f1-score"]),
    }
    for name in class_names:
        for key in ("precision", "recall", "f1-score"):
            summary[f"{prefix}_{key.split('-')[0]}_{name}"] = float(report[name][key])

    # Curves and threshold: need both sides of every class they are about.
    present = np.unique(y_true)
    if len(present) < 2:
        reason = (f"the {prefix} labels hold one class only "
                  f"({class_names[present[0]]}): no ROC or precision-recall curve")
        log.warning("%s", reason)
        summary[f"{prefix}_curves_skipped"] = reason
        for name in (ROC_PLOT, PR_PLOT, THRESHOLD):  # none from an earlier call
            if os.path.exists(run.file(name)):
                os.remove(run.file(name))
        return summary
    point = chosen = None
    if target_recall is not None and positive is None:
        reason = f"{k} classes and no positive_class: no threshold for target_recall"
        log.warning("%s", reason)
        summary[f"{prefix}_threshold_skipped"] = reason
    elif target_recall is not None:
        if threshold is not None and threshold["positive_class"] != class_names[positive]:
            raise KerastuneError(
                f"the threshold was chosen for {threshold['positive_class']!r}: expected "
                f"positive_class={threshold['positive_class']!r}, got "
                f"{class_names[positive]!r}")
        chosen = threshold or choose_threshold(y_true, probs, class_names, positive,
                                               target_recall, split=prefix)
    if target_recall is not None and positive is not None and chosen is None:
        summary[f"{prefix}_threshold_skipped"] = (
            f"the {prefix} labels hold one side of {class_names[positive]} only")
    elif target_recall is not None and positive is not None:
        measured = at_threshold(y_true == positive, probs[:, positive], chosen["threshold"])
        point = {"positive_class": class_names[positive],
                 "target_recall": chosen["target_recall"], "threshold": chosen["threshold"],
                 "chosen_on": chosen["chosen_on"],
                 chosen["chosen_on"]: {k: chosen[k] for k in measured},
                 "measured_on": prefix, **{k: measured[k] for k in measured if k != "threshold"},
                 "rule": f"predict {class_names[positive]} when its probability >= threshold"}
        run.write_json(THRESHOLD, point)
        for key in ("target_recall", "threshold", "recall", "precision", "chosen_on"):
            summary[f"{prefix}_threshold" + ("" if key == "threshold" else f"_{key}")] = point[key]
        log.info("threshold %s, chosen on the %s split for recall %s of %s, gives recall %.3f "
                 "at precision %.3f on the %s split", figure(point["threshold"]),
                 point["chosen_on"], figure(float(point["target_recall"])),
                 class_names[positive], point["recall"], point["precision"], prefix)
    classes = [positive] if k == 2 else [int(c) for c in present]
    scores = {}  # class index: (roc_auc, average_precision), one vs rest
    for c in classes:
        scores[c] = (float(skm.roc_auc_score(y_true == c, probs[:, c])),
                     float(skm.average_precision_score(y_true == c, probs[:, c])))
    plots.plot_curves(run.roc_plot_path, run.pr_plot_path, y_true, probs, classes,
                      class_names, point)
    if k == 2:
        summary[f"{prefix}_roc_auc"], summary[f"{prefix}_average_precision"] = scores[positive]
    else:
        summary[f"{prefix}_roc_auc"] = float(np.mean([s[0] for s in scores.values()]))
        summary[f"{prefix}_average_precision"] = float(np.mean([s[1] for s in scores.values()]))
        summary[f"{prefix}_curves"] = "one vs rest, macro average over the classes present"
        if positive in scores:  # its one-vs-rest curve needs it among the labels
            summary[f"{prefix}_roc_auc_{class_names[positive]}"] = scores[positive][0]
    return summary


def figure(value):
    """A figure for a message: 4 significant digits (0.9557, 0.6000, 12.35)."""
    return f"{value:#.4g}" if isinstance(value, float) else str(value)


def headline(summary, prefix=None):
    """The line that ends an evaluation: accuracy, and ROC AUC where the
    curves were computed, named as in metrics.json
    ("test_accuracy 0.925, test_roc_auc 0.9557").

    Args:
        summary: dict. From `evaluate_classifier`.
        prefix: str or None. Its prefix. Defaults to `summary["evaluated_on"]`.
    """
    prefix = prefix or summary.get("evaluated_on", "test")
    keys = [f"{prefix}_{name}" for name in ("accuracy", "roc_auc")]
    return ", ".join(f"{key} {figure(summary[key])}" for key in keys if key in summary)


def write_report(run, summary, title, notes=()):
    """Writes `report.md`: the summary, the per-class report, the confusion
    matrix, ROC and precision-recall curves, the decision threshold and the
    training curves, each where its file is in `run`.

    Args:
        run: RunDir. Holds the files of `evaluate_classifier`.
        summary: dict. Figures for the summary table (numbers and strings;
            nested values are left out).
        title: str. The report's heading.
        notes: list of str. Lines for a bullet list under the heading.
    """
    from kerastune_lab.runs import read_csv

    if os.path.exists(run.history_path):
        # The runner plots again after `main`; plotting here keeps the link
        # good for a script that calls this itself.
        plots.plot_history(read_csv(run.history_path), run.training_curves_path)
    exists = lambda name: os.path.exists(run.file(name))  # noqa: E731
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += ["## Summary", "", "| metric | value |", "| --- | --- |"]
    for key, value in summary.items():
        if isinstance(value, float):
            lines.append(f"| {key} | {value:.4f} |")
        elif isinstance(value, (int, str)):
            lines.append(f"| {key} | {value} |")
    lines.append("")
    if exists(CLASSIFICATION_REPORT_TEXT):
        with open(run.classification_report_text_path, encoding="utf-8") as f:
            lines += ["## Per class", "", "```", f.read().rstrip(), "```", ""]
    if exists(CONFUSION_MATRIX_PLOT):
        lines += ["## Confusion matrix", "", "Rows: true class; columns: predicted class.", "",
                  f"![confusion matrix]({CONFUSION_MATRIX_PLOT})", ""]
    lines += ["## ROC and precision-recall curves", ""]
    if exists(ROC_PLOT):
        lines += [f"![ROC curve]({ROC_PLOT}) ![precision-recall curve]({PR_PLOT})", ""]
    else:
        skipped = [v for k, v in summary.items() if k.endswith("_curves_skipped")]
        lines += [f"Skipped: {skipped[0] if skipped else 'no curves were computed'}.", ""]
    if exists(THRESHOLD):
        point = run.read_json(THRESHOLD)
        chosen_on, measured_on = point.get("chosen_on"), point.get("measured_on")
        where = (f"Chosen on the {chosen_on} split for a recall of at least "
                 f"{point['target_recall']:.2f} on {point['positive_class']}")
        if chosen_on and chosen_on != measured_on and chosen_on in point:
            before = point[chosen_on]
            where += (f" (there: recall {before['recall']:.4f}, precision "
                      f"{before['precision']:.4f}); measured on the {measured_on} split")
        elif chosen_on == measured_on:
            where += (", and measured on that same split, which flatters it: a fresh "
                      "split would show lower figures")
        lines += ["## Decision threshold", "",
                  f"{point['rule']}, threshold {point['threshold']:.4f}. {where}: recall "
                  f"{point['recall']:.4f}, precision {point['precision']:.4f} "
                  f"({point['tp']} found, {point['fn']} missed, {point['fp']} false alarms, "
                  f"{point['tn']} correctly cleared).", ""]
    if exists(HISTORY) or exists(TRAINING_CURVES):
        lines += ["## Training curves", "", f"![training curves]({TRAINING_CURVES})", ""]
    run.write_text(REPORT, "\n".join(lines))
