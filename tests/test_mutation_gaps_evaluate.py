"""The classification evaluation's cases that mutmut found untested
(tests/README.md, "Mutation testing"): each test here kills mutants of
kerastune_lab/evaluate/classification.py that passed every other test.
Exact values throughout: a changed comparison, key or count shows."""

import json
import logging

import numpy as np
import pytest
from sklearn import metrics as skm

from kerastune_lab.evaluate import classification, evaluate_classifier, write_report
from kerastune_lab.evaluate.classification import figure, headline, saved_threshold
from kerastune_lab.runs import RunDir

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

NAMES = ["NORMAL", "PNEUMONIA"]


def _read(run, name):
    with open(run.file(name), encoding="utf-8") as f:
        return json.load(f) if name.endswith(".json") else f.read()


# saved_threshold: what `kerastune predict` / `evaluate` apply.
def test_saved_threshold_takes_the_figures_of_the_split_that_chose_it():
    point = {"positive_class": "PNEUMONIA", "target_recall": 0.9, "threshold": 0.25,
             "chosen_on": "val", "measured_on": "test",
             "val": {"threshold": 0.25, "recall": 0.95, "precision": 0.5,
                     "tp": 19, "fp": 19, "fn": 1, "tn": 61},
             "recall": 0.8, "precision": 0.4, "tp": 8, "fp": 12, "fn": 2, "tn": 78,
             "rule": "predict PNEUMONIA when its probability >= threshold"}
    assert saved_threshold(point) == {
        "positive_class": "PNEUMONIA", "chosen_on": "val", "target_recall": 0.9,
        "threshold": 0.25, "recall": 0.95, "precision": 0.5,
        "tp": 19, "fp": 19, "fn": 1, "tn": 61}


def test_saved_threshold_of_a_run_from_before_chosen_on_is_the_test_split():
    point = {"positive_class": "NORMAL", "target_recall": 0.8, "threshold": 1,
             "recall": 0.85, "precision": 0.7, "tp": 17, "fp": 7, "fn": 3, "tn": 73}
    saved = saved_threshold(point)
    assert saved == {**point, "chosen_on": "test", "threshold": 1.0}
    assert type(saved["threshold"]) is float
    # chosen_on names a split whose figures are not a dict: the top level.
    odd = {**point, "chosen_on": "val", "val": "n/a", "threshold": 0.5}
    assert saved_threshold(odd) == {**odd, "chosen_on": "val", "threshold": 0.5}


def test_saved_threshold_keeps_the_top_level_threshold_over_the_split_figures():
    point = {"positive_class": "b", "target_recall": 0.5, "threshold": np.float32(0.5),
             "chosen_on": "val", "val": {"threshold": 0.75, "recall": 1.0}}
    saved = saved_threshold(point)
    assert saved == {"positive_class": "b", "chosen_on": "val", "target_recall": 0.5,
                     "threshold": 0.5, "recall": 1.0}
    assert type(saved["threshold"]) is float


# headline and figure: the line that ends an evaluation.
def test_headline_names_the_figures_as_in_metrics_json():
    summary = {"evaluated_on": "val", "val_accuracy": 0.925, "val_roc_auc": 0.95571,
               "test_accuracy": 0.5, "test_roc_auc": 0.5}
    assert headline(summary) == "val_accuracy 0.9250, val_roc_auc 0.9557"
    assert headline(summary, prefix="test") == "test_accuracy 0.5000, test_roc_auc 0.5000"
    # Without evaluated_on: the test split; no roc_auc (curves skipped): accuracy only.
    assert headline({"test_accuracy": 0.7, "val_accuracy": 0.1}) == "test_accuracy 0.7000"
    assert headline({"evaluated_on": "val", "val_accuracy": 0.7}) == "val_accuracy 0.7000"


def test_figure_gives_four_significant_digits_to_floats_only():
    assert (figure(0.95571), figure(0.6), figure(12.3456)) == ("0.9557", "0.6000", "12.35")
    assert (figure(3), figure("val")) == ("3", "val")


# write_report: the whole report.md, from files written by hand (no plots:
# fast, and every branch picked by what is there).
POINT_VAL = {"positive_class": "PNEUMONIA", "target_recall": 0.9, "threshold": 0.25,
             "chosen_on": "val", "measured_on": "test",
             "val": {"threshold": 0.25, "recall": 0.95, "precision": 0.5,
                     "tp": 19, "fp": 19, "fn": 1, "tn": 61},
             "recall": 0.8, "precision": 0.4, "tp": 8, "fp": 12, "fn": 2, "tn": 78,
             "rule": "predict PNEUMONIA when its probability >= threshold"}


def _touch(run, *names):
    for name in names:
        with open(run.file(name), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n")


def test_report_md_in_full_with_a_threshold_chosen_on_another_split(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_text("classification_report.txt", "  per class table  \n\n")
    _touch(run, "confusion_matrix.png", "roc.png", "pr.png", "training_curves.png")
    run.write_json("threshold.json", POINT_VAL)
    summary = {"evaluated_on": "test", "test_num_examples": 100, "test_accuracy": 0.91234,
               "flag": True, "nested": {"skip": 1}, "none": None}
    write_report(run, summary, "X-ray", notes=["carved val", "seed 3"])
    assert _read(run, "report.md") == "\n".join([
        "# X-ray", "", "- carved val", "- seed 3", "",
        "## Summary", "", "| metric | value |", "| --- | --- |",
        "| evaluated_on | test |", "| test_num_examples | 100 |",
        "| test_accuracy | 0.9123 |", "| flag | True |", "",
        "## Per class", "", "```", "  per class table", "```", "",
        "## Confusion matrix", "", "Rows: true class; columns: predicted class.", "",
        "![confusion matrix](confusion_matrix.png)", "",
        "## ROC and precision-recall curves", "",
        "![ROC curve](roc.png) ![precision-recall curve](pr.png)", "",
        "## Decision threshold", "",
        "predict PNEUMONIA when its probability >= threshold, threshold 0.2500. Chosen on "
        "the val split for a recall of at least 0.90 on PNEUMONIA (there: recall 0.9500, "
        "precision 0.5000); measured on the test split: recall 0.8000, precision 0.4000 "
        "(8 found, 2 missed, 12 false alarms, 78 correctly cleared).", "",
        "## Training curves", "", "![training curves](training_curves.png)", ""])


def test_report_md_of_a_threshold_measured_where_it_was_chosen(tmp_path):
    run = RunDir.create(tmp_path / "run")
    figures = {"threshold": 0.5, "recall": 1.0, "precision": 0.75,
               "tp": 3, "fp": 1, "fn": 0, "tn": 2}
    run.write_json("threshold.json", {
        "positive_class": "b", "target_recall": 0.95, "threshold": 0.5, "chosen_on": "test",
        "test": figures, "measured_on": "test", **figures, "rule": "predict b when p"})
    write_report(run, {"test_curves_skipped": "the test labels hold one class only (b)"},
                 "T")
    assert _read(run, "report.md") == "\n".join([
        "# T", "", "## Summary", "", "| metric | value |", "| --- | --- |",
        "| test_curves_skipped | the test labels hold one class only (b) |", "",
        "## ROC and precision-recall curves", "",
        "Skipped: the test labels hold one class only (b).", "",
        "## Decision threshold", "",
        "predict b when p, threshold 0.5000. Chosen on the test split for a recall of at "
        "least 0.95 on b, and measured on that same split, which flatters it: a fresh "
        "split would show lower figures: recall 1.0000, precision 0.7500 "
        "(3 found, 0 missed, 1 false alarms, 2 correctly cleared).", ""])


def test_report_md_without_curves_or_a_split_to_compare(tmp_path):
    run = RunDir.create(tmp_path / "run")
    point = {k: v for k, v in POINT_VAL.items() if k != "val"}  # val's figures not kept
    run.write_json("threshold.json", {**point, "rule": "r"})
    write_report(run, {}, "U")
    report = _read(run, "report.md")
    assert report.endswith(
        "## ROC and precision-recall curves\n\nSkipped: no curves were computed.\n\n"
        "## Decision threshold\n\nr, threshold 0.2500. Chosen on the val split for a recall "
        "of at least 0.90 on PNEUMONIA: recall 0.8000, precision 0.4000 (8 found, 2 missed, "
        "12 false alarms, 78 correctly cleared).\n")
    assert report.startswith("# U\n\n## Summary\n")


# evaluate_classifier: input checks, the logger, float64.
def test_labels_outside_the_classes_are_refused_at_either_end(tmp_path):
    run = RunDir.create(tmp_path / "run")
    probs = np.array([[0.6, 0.4], [0.3, 0.7]])
    for y in ([0, 2], [-1, 1]):
        with pytest.raises(ValueError, match=r"^y_true holds labels outside 0\.\.1$"):
            evaluate_classifier(run, y, probs, NAMES)


def test_one_example_is_evaluated_and_none_is_an_error(tmp_path):
    run = RunDir.create(tmp_path / "run")
    summary = evaluate_classifier(run, [1], [[0.2, 0.8]], NAMES, prefix="val")
    assert summary["val_num_examples"] == 1 and summary["val_accuracy"] == 1.0
    from kerastune_lab.errors import KerastuneError

    with pytest.raises(KerastuneError, match="val data holds no example"):
        evaluate_classifier(run, [], np.zeros((0, 2)), NAMES, prefix="val")


def test_warnings_go_to_the_kerastune_lab_logger(tmp_path, caplog):
    run = RunDir.create(tmp_path / "run")
    with caplog.at_level(logging.INFO):
        evaluate_classifier(run, [1, 1], [[0.2, 0.8], [0.6, 0.4]], NAMES)
        evaluate_classifier(run, [0, 1, 2], np.eye(3), ["a", "b", "c"], target_recall=0.9)
    ours = [r for r in caplog.records  # (other libraries may log at INFO too)
            if "one class only" in r.getMessage() or "no threshold" in r.getMessage()]
    assert [r.name for r in ours] == ["kerastune_lab"] * 2


def test_probabilities_are_compared_in_float64(tmp_path):
    """float32 scores (Keras' predictions) against a threshold chosen
    elsewhere: 0.7 in float32 is 0.69999998..., below a threshold of 0.7."""
    run = RunDir.create(tmp_path / "run")
    probs = np.array([[0.3, 0.7], [0.1, 0.9], [0.8, 0.2], [0.6, 0.4]], "float32")
    chosen = {"positive_class": "PNEUMONIA", "target_recall": 0.5, "threshold": 0.7,
              "chosen_on": "val", "recall": 1.0, "precision": 1.0,
              "tp": 1, "fp": 0, "fn": 0, "tn": 1}
    summary = evaluate_classifier(run, [1, 1, 0, 0], probs, NAMES, target_recall=0.5,
                                  threshold=chosen)
    point = _read(run, "threshold.json")
    assert (point["tp"], point["fn"], point["recall"]) == (1, 1, 0.5)
    assert summary["test_roc_auc"] == skm.roc_auc_score([1, 1, 0, 0], probs[:, 1])
    assert classification.figure(point["threshold"]) == "0.7000"


def test_target_recall_in_the_half_open_interval(tmp_path):
    from kerastune_lab.errors import KerastuneError

    run = RunDir.create(tmp_path / "run")
    y, probs = [0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    with pytest.raises(KerastuneError, match="target_recall=0:"):
        evaluate_classifier(run, y, probs, NAMES, target_recall=0)
    summary = evaluate_classifier(run, y, probs, NAMES, target_recall=1)
    assert (summary["test_threshold"], summary["test_threshold_recall"]) == (0.4, 1.0)


def test_a_class_never_seen_nor_predicted_keeps_its_row(tmp_path):
    """Three classes, the third in neither labels nor predictions: it keeps
    its row and column, and its precision 0/0 is 0 without a warning."""
    import warnings

    run = RunDir.create(tmp_path / "run")
    names = ["cat", "dog", "fox"]
    probs = [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = evaluate_classifier(run, [0, 1, 1, 0], probs, names)
    assert _read(run, "confusion_matrix.json") == {
        "labels": names, "rows": "true class", "columns": "predicted class",
        "matrix": [[2, 0, 0], [1, 1, 0], [0, 0, 0]]}
    report = _read(run, "classification_report.json")
    assert report["fox"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    assert (summary["test_precision_fox"], summary["test_recall_fox"]) == (0.0, 0.0)
    assert summary["test_precision_dog"] == 1.0 and summary["test_recall_dog"] == 0.5
    assert "fox" in _read(run, "classification_report.txt")


def test_the_summary_keys_of_a_binary_evaluation(tmp_path):
    run = RunDir.create(tmp_path / "run")
    y, probs = [0, 1, 1, 0], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]]
    summary = evaluate_classifier(run, y, probs, NAMES, prefix="val")
    assert summary == {
        "evaluated_on": "val", "val_num_examples": 4, "val_accuracy": 0.5,
        "val_macro_f1": 0.5, "val_weighted_f1": 0.5,
        "val_precision_NORMAL": 0.5, "val_recall_NORMAL": 0.5, "val_f1_NORMAL": 0.5,
        "val_precision_PNEUMONIA": 0.5, "val_recall_PNEUMONIA": 0.5, "val_f1_PNEUMONIA": 0.5,
        "val_roc_auc": 0.5, "val_average_precision": skm.average_precision_score(
            [0, 1, 1, 0], [0.2, 0.7, 0.4, 0.9])}
    # Chosen on these labels: the split named is the prefix, "test" too.
    summary = evaluate_classifier(run, y, probs, NAMES, target_recall=1.0)
    assert (summary["test_threshold_chosen_on"], _read(run, "threshold.json")["chosen_on"]) \
        == ("test", "test")
    assert summary["test_threshold"] == 0.4 and "test_threshold_skipped" not in summary


def test_a_positive_class_absent_from_the_labels_skips_the_threshold(tmp_path):
    # Was a KeyError (3+ classes, the positive class not among the labels).
    run = RunDir.create(tmp_path / "run")
    probs = [[0.6, 0.3, 0.1], [0.1, 0.3, 0.6], [0.5, 0.2, 0.3]]
    summary = evaluate_classifier(run, [0, 2, 2], probs, ["cat", "dog", "fox"],
                                  positive_class="dog", target_recall=0.9)
    assert summary["test_threshold_skipped"] == "the test labels hold one side of dog only"
    assert "test_threshold" not in summary
    assert not (tmp_path / "run" / "threshold.json").exists()
    assert "test_roc_auc_dog" not in summary  # no curve for a class with no example
    cat = skm.roc_auc_score([1, 0, 0], [0.6, 0.1, 0.5])
    fox = skm.roc_auc_score([0, 1, 1], [0.1, 0.6, 0.3])
    assert summary["test_roc_auc"] == pytest.approx((cat + fox) / 2)  # cat and fox only


def test_one_class_only_removes_the_curves_of_an_earlier_evaluation(tmp_path):
    run = RunDir.create(tmp_path / "run")
    probs = [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    evaluate_classifier(run, [0, 1, 1], probs, NAMES, target_recall=0.5)
    for name in ("roc.png", "pr.png", "threshold.json"):
        assert (tmp_path / "run" / name).exists()
    evaluate_classifier(run, [1, 1, 1], probs, NAMES, target_recall=0.5)
    for name in ("roc.png", "pr.png", "threshold.json"):
        assert not (tmp_path / "run" / name).exists(), name


def test_the_curves_get_the_classes_and_the_threshold_point(tmp_path, monkeypatch):
    """A spy on the plotting call: a binary task plots its positive class
    only, with the threshold's point; three classes plot one vs rest."""
    from kerastune_lab.evaluate import plots

    calls = []
    monkeypatch.setattr(plots, "plot_curves", lambda *args: calls.append(args))
    run = RunDir.create(tmp_path / "run")
    y, probs = [0, 1, 1, 0], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]]
    evaluate_classifier(run, y, probs, NAMES, positive_class="NORMAL", target_recall=1.0)
    roc, pr, y_true, probs_seen, classes, names, point = calls[-1]
    assert (roc, pr) == (run.roc_plot_path, run.pr_plot_path)
    assert y_true.tolist() == y and probs_seen.tolist() == probs
    assert (classes, names) == ([0], NAMES)
    assert point == _read(run, "threshold.json") and point["positive_class"] == "NORMAL"
    summary = evaluate_classifier(run, [0, 1, 2], np.eye(3) * 0.5 + 0.1, ["a", "b", "c"])
    assert calls[-1][4] == [0, 1, 2] and calls[-1][6] is None
    assert summary["test_curves"] == "one vs rest, macro average over the classes present"


@pytest.mark.backend_independent
def test_report_md_reads_the_class_report_as_utf8_in_any_locale(tmp_path):
    """classification_report.txt with a non-ASCII class name goes into
    report.md here and in a process whose locale encoding is ASCII (LC_ALL=C,
    no UTF-8 mode, as on a machine whose locale is not UTF-8): read as the
    UTF-8 it was written in. (The call here makes mutmut map this test to
    write_report: it records the calls of this process only.)"""
    from tests.conftest import run_in_ascii_locale

    text = "              precision\n\n   caf\u00e9 cr\u00e8me       1.00\n"
    for name in ("here", "there"):
        run = RunDir.create(tmp_path / name)
        run.write_text("classification_report.txt", text)
        run.release()
    write_report(RunDir(str(tmp_path / "here")), {}, "T")
    assert text.rstrip("\n") in _read(RunDir(str(tmp_path / "here")), "report.md")
    run_in_ascii_locale("import sys\n"
                        "from kerastune_lab.evaluate import write_report\n"
                        "from kerastune_lab.runs import RunDir\n"
                        "write_report(RunDir(sys.argv[1]), {}, 'T')", tmp_path / "there")
    assert _read(RunDir(str(tmp_path / "there")), "report.md") == _read(
        RunDir(str(tmp_path / "here")), "report.md")
