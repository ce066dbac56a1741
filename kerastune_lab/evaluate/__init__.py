"""Evaluation figures and reports, written into the run directory.

- `classification`: per-class report, confusion matrix, ROC and
  precision-recall curves, decision threshold, report.md;
- `language`: held-out perplexity and the chat recipes' report;
- `plots`: every matplotlib figure (training curves among them).

Importing this package imports neither matplotlib nor scikit-learn and
sets no plotting backend: each is imported where a figure or a metric is
computed. The names below are the ones imported from
`kerastune_lab.evaluate`.
"""

from kerastune_lab.evaluate.classification import (
    at_threshold,
    choose_threshold,
    decision_threshold,
    evaluate_classifier,
    write_report,
)
from kerastune_lab.evaluate.language import (
    REPORT_PROMPTS,
    chat_metrics,
    chat_report,
    perplexity,
)
from kerastune_lab.evaluate.plots import plot_history, save_figure

__all__ = [
    "REPORT_PROMPTS", "at_threshold", "chat_metrics", "chat_report", "choose_threshold",
    "decision_threshold", "evaluate_classifier",
    "perplexity", "plot_history", "save_figure", "write_report",
]
