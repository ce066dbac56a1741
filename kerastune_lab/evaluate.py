"""Evaluation figures and plots, written into the run directory."""

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
