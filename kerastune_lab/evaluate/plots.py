"""Every figure of a run, drawn with matplotlib and written as a file.

Figures are `matplotlib.figure.Figure` objects, never pyplot's: nothing
here needs or sets a backend, and nothing is imported until a figure is
drawn, so importing `kerastune_lab.evaluate` leaves matplotlib alone. The
classification curves and the confusion matrix are scikit-learn's
displays, drawn on these figures.
"""

import os

from kerastune_lab.runs import atomic_path


def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path):
    """Writes `fig` to `path` atomically, in the format of its extension."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or "png", dpi=110,
                    bbox_inches="tight")


def plot_history(rows, path):
    """Plots loss and every other metric per epoch, train and validation,
    with a line where the phase changes."""
    if not rows:
        return
    metrics = [k for k in rows[0] if k not in ("epoch", "phase", "learning_rate", "seconds")
               and not k.startswith("val_")]
    fig = _figure(figsize=(5 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
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


def plot_confusion_matrix(matrix, class_names, path):
    """Draws `matrix` (rows: true class; columns: predicted) into `path`."""
    from sklearn.metrics import ConfusionMatrixDisplay

    k = len(class_names)
    fig = _figure(figsize=(1.6 + 1.1 * k, 1.2 + 1.1 * k))
    ax = fig.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d")
    ax.set_title("Confusion matrix")
    save_figure(fig, path)


def plot_curves(roc_path, pr_path, y_true, probs, classes, class_names, point=None):
    """Draws ROC and precision-recall curves into `roc_path` and `pr_path`,
    one-vs-rest for each class index in `classes`, with the decision
    threshold `point` (a `decision_threshold` dict) marked when given."""
    from sklearn import metrics as skm

    roc_fig, pr_fig = _figure(figsize=(5, 4.5)), _figure(figsize=(5, 4.5))
    roc_ax, pr_ax = roc_fig.subplots(), pr_fig.subplots()
    for c in classes:
        y_bin, score = y_true == c, probs[:, c]
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
    save_figure(roc_fig, roc_path)
    save_figure(pr_fig, pr_path)
