"""Evaluation figures and plots, written into the run directory.

Classification metrics and curves come from scikit-learn and its matplotlib
displays; what is written here is where they go and the summary of them.
"""

import logging
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from kerastune_lab.runs import atomic_path  # noqa: E402


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or "png", dpi=110,
                    bbox_inches="tight")
    plt.close(fig)


def plot_history(rows, path):
    """Plots loss and every other metric per epoch, train and validation,
    with a line where the phase changes."""
    if not rows:
        return
    metrics = [k for k in rows[0] if k not in ("epoch", "phase", "learning_rate", "seconds")
               and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    epochs = [r["epoch"] for r in rows]
    changes = [rows[i]["epoch"] - 0.5 for i in range(1, len(rows))
               if rows[i]["phase"] != rows[i - 1]["phase"]]
    for ax, name in zip(axes[0], metrics):
        ax.plot(epochs, [r.get(name) for r in rows], "o-", label=f"train {name}")
        if f"val_{name}" in rows[0]:
            ax.plot(epochs, [r.get(f"val_{name}") for r in rows], "s--", label=f"val {name}")
        for x in changes:
            ax.axvline(x, color="gray", linestyle=":", label="phase change")
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def perplexity(model, x, y, sample_weight, batch_size=8):
    """exp of the mean next-token cross-entropy where `sample_weight` > 0.

    Args:
        model: a KerasHub `CausalLM`; run with its preprocessor detached.
        x: dict of numpy arrays {"token_ids", "padding_mask"}.
        y: numpy array of the next tokens, like `x["token_ids"]`.
        sample_weight: numpy array like `y`. Weights of each token's loss.
        batch_size: int. Sequences a forward pass. Defaults to 8.
    """
    import numpy as np

    from kerastune_lab.models import detached_preprocessor

    total, count = 0.0, 0.0
    with detached_preprocessor(model):
        for start in range(0, len(y), batch_size):
            batch = {k: v[start:start + batch_size] for k, v in x.items()}
            logits = np.asarray(model.predict_on_batch(batch), dtype="float32")
            top = logits.max(axis=-1, keepdims=True)
            log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
            target = np.take_along_axis(logits, y[start:start + batch_size, ..., None],
                                        axis=-1)[..., 0]
            w = sample_weight[start:start + batch_size]
            total += float(((log_z - target) * w).sum())
            count += float(w.sum())
    if count == 0:
        raise ValueError("perplexity: every sample weight is 0")
    return float(np.exp(total / count))


# === Classification ===

# Prompts for the chat recipes' before/after replies in report.md (in neither
# shipped data file).
REPORT_PROMPTS = [
    "Do you think it will rain on my birthday?",
    "How do I become a better cook?",
    "What's your opinion on Mondays?",
    "Can you help me choose a new phone?",
    "Why is my cat staring at me?",
    "Any tips for my first marathon?",
]


def chat_report(title, intro, config, metrics, prompts, before, after, note=""):
    """A chat recipe's report.md: `intro` (lines), held-out perplexity and
    padding before and after, the data figures, then each prompt's reply
    before and after tuning."""
    train = metrics["train"]
    lines = [f"# {title}", "", *intro, "",
             "| | before | after |",
             "|---|---|---|",
             f"| held-out perplexity | {metrics['heldout_perplexity_before']:.2f} | "
             f"{metrics['heldout_perplexity_after']:.2f} |",
             f"| padding fraction (train) | {train['padding_fraction_before_packing']:.3f} | "
             f"{train['padding_fraction_after_packing']:.3f} |",
             "",
             f"Training: {train['examples']} examples in {train['windows']} windows of "
             f"{config.sequence_length + 1} tokens ({train['truncated']} truncated, "
             f"{train['dropped']} dropped).{' ' + note if note else ''}",
             "",
             f"## Replies ({config.sampler} sampler, temperature {config.temperature}, "
             f"max_length {config.max_length})",
             ""]
    for prompt, old, new in zip(prompts, before, after):
        old, new = (" ".join(text.split()) or "(empty)" for text in (old, new))
        lines += [f"**{prompt}**", "", f"- before: {old}", f"- after: {new}", ""]
    return "\n".join(lines)


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
    """Returns the highest threshold on `scores` whose recall reaches `target_recall`.

    Predicting positive when `score >= threshold` then finds at least
    `target_recall` of the positives; the result says what precision that costs.

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
    # recall[i] and precision[i] are those of thresholds[i]; recall falls as
    # the threshold rises, so the last index reaching the target is the highest.
    i = int(np.flatnonzero(recall[:-1] >= target_recall).max())
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


def _plot_curves(run, y_true, probs, classes, class_names, point=None):
    """Writes roc.png and pr.png, one-vs-rest for each class index in `classes`;
    returns {class index: (roc_auc, average_precision)}."""
    from sklearn import metrics as skm

    roc_fig, roc_ax = plt.subplots(figsize=(5, 4.5))
    pr_fig, pr_ax = plt.subplots(figsize=(5, 4.5))
    scores = {}
    for c in classes:
        y_bin, score = y_true == c, probs[:, c]
        auc = float(skm.roc_auc_score(y_bin, score))
        ap = float(skm.average_precision_score(y_bin, score))
        scores[c] = (auc, ap)
        # The displays add "(AUC = ...)" and "(AP = ...)" to the names.
        skm.RocCurveDisplay.from_predictions(y_bin, score, ax=roc_ax, name=class_names[c])
        skm.PrecisionRecallDisplay.from_predictions(y_bin, score, ax=pr_ax, name=class_names[c])
    roc_ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    if point is not None:
        fpr = point["fp"] / max(point["fp"] + point["tn"], 1)
        label = f"threshold {point['threshold']:.3f}"
        roc_ax.plot([fpr], [point["recall"]], "ro", label=label)
        pr_ax.plot([point["recall"]], [point["precision"]], "ro", label=label)
    roc_ax.set_title("ROC curve" + (" (one vs rest)" if len(class_names) > 2 else ""))
    pr_ax.set_title("Precision-recall curve" + (" (one vs rest)" if len(class_names) > 2 else ""))
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)")
    pr_ax.set(xlabel="recall", ylabel="precision")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    save_figure(roc_fig, run.file("roc.png"))
    save_figure(pr_fig, run.file("pr.png"))
    return scores


def evaluate_classifier(run, y_true, probs, class_names, positive_class=None,
                        target_recall=None, prefix="test"):
    """Evaluates class probabilities against labels; writes the files into `run`.

    Writes `classification_report.json` and `.txt` (scikit-learn: precision,
    recall, F1 per class, macro and weighted averages), `confusion_matrix.json`
    and `.png`, `roc.png` and `pr.png` (for the positive class of a binary
    task, one-vs-rest for each class otherwise; skipped with a warning when
    `y_true` holds one class only) and, with `target_recall`, `threshold.json`:
    the highest threshold on the positive class's probability that reaches
    that recall, and the precision it costs. Predicted classes are the argmax.

    Args:
        run: RunDir. Where the files go.
        y_true: sequence of int. True class indices.
        probs: array (n, num classes). Predicted probabilities.
        class_names: list of str. Names of the class indices.
        positive_class: str, int or None. The class the threshold and a binary
            task's curves are about. Defaults to None: class 1 of 2 classes.
        target_recall: float or None. Recall of the positive class to choose
            a threshold for. Defaults to None (no threshold).
        prefix: str. Prefix of the summary keys. Defaults to "test".

    Returns:
        dict for metrics.json: `{prefix}_accuracy`, `_macro_f1`, `_weighted_f1`,
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
    run.write_json("classification_report.json", report)
    run.write_text("classification_report.txt",
                   skm.classification_report(y_true, y_pred, digits=4, **kwargs))
    matrix = skm.confusion_matrix(y_true, y_pred, labels=labels)
    run.write_json("confusion_matrix.json", {
        "labels": list(class_names), "rows": "true class", "columns": "predicted class",
        "matrix": matrix.tolist()})
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * k, 1.2 + 1.1 * k))
    skm.ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title("Confusion matrix")
    save_figure(fig, run.file("confusion_matrix.png"))

    summary = {
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
        for name in ("roc.png", "pr.png", "threshold.json"):  # none from an earlier call
            if os.path.exists(run.file(name)):
                os.remove(run.file(name))
        return summary
    point = None
    if target_recall is not None and positive is None:
        reason = f"{k} classes and no positive_class: no threshold for target_recall"
        log.warning("%s", reason)
        summary[f"{prefix}_threshold_skipped"] = reason
    elif target_recall is not None:
        point = decision_threshold(y_true == positive, probs[:, positive], target_recall)
        point = {"positive_class": class_names[positive], **point,
                 "rule": f"predict {class_names[positive]} when its probability >= threshold"}
        run.write_json("threshold.json", point)
        for key in ("target_recall", "threshold", "recall", "precision"):
            summary[f"{prefix}_threshold" + ("" if key == "threshold" else f"_{key}")] = point[key]
        log.info("threshold %.4f reaches recall %.3f of %s (target %.2f) at precision %.3f",
                 point["threshold"], point["recall"], class_names[positive], target_recall,
                 point["precision"])
    classes = [positive] if k == 2 else [int(c) for c in present]
    scores = _plot_curves(run, y_true, probs, classes, class_names, point)
    if k == 2:
        summary[f"{prefix}_roc_auc"], summary[f"{prefix}_average_precision"] = scores[positive]
    else:
        summary[f"{prefix}_roc_auc"] = float(np.mean([s[0] for s in scores.values()]))
        summary[f"{prefix}_average_precision"] = float(np.mean([s[1] for s in scores.values()]))
        summary[f"{prefix}_curves"] = "one vs rest, macro average over the classes present"
        if positive is not None:
            summary[f"{prefix}_roc_auc_{class_names[positive]}"] = scores[positive][0]
    return summary


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

    if os.path.exists(run.file("history.csv")):
        # The runner plots again after `main`; plotting here keeps the link
        # good for a script that calls this itself.
        plot_history(read_csv(run.file("history.csv")), run.file("training_curves.png"))
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
    if exists("classification_report.txt"):
        with open(run.file("classification_report.txt"), encoding="utf-8") as f:
            lines += ["## Per class", "", "```", f.read().rstrip(), "```", ""]
    if exists("confusion_matrix.png"):
        lines += ["## Confusion matrix", "", "Rows: true class; columns: predicted class.", "",
                  "![confusion matrix](confusion_matrix.png)", ""]
    lines += ["## ROC and precision-recall curves", ""]
    if exists("roc.png"):
        lines += ["![ROC curve](roc.png) ![precision-recall curve](pr.png)", ""]
    else:
        skipped = [v for k, v in summary.items() if k.endswith("_curves_skipped")]
        lines += [f"Skipped: {skipped[0] if skipped else 'no curves were computed'}.", ""]
    if exists("threshold.json"):
        point = run.read_json("threshold.json")
        lines += ["## Decision threshold", "",
                  f"For a recall of at least {point['target_recall']:.2f} on "
                  f"{point['positive_class']}: {point['rule']}, threshold "
                  f"{point['threshold']:.4f}. Recall {point['recall']:.4f}, precision "
                  f"{point['precision']:.4f} ({point['tp']} found, {point['fn']} missed, "
                  f"{point['fp']} false alarms, {point['tn']} correctly cleared).", ""]
    if exists("history.csv") or exists("training_curves.png"):
        lines += ["## Training curves", "", "![training curves](training_curves.png)", ""]
    run.write_text("report.md", "\n".join(lines))
