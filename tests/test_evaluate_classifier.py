"""The shared classification evaluation: files that match scikit-learn."""

import json
import logging

import numpy as np
import pytest
from sklearn import metrics as skm

from kerastune_lab.errors import KerastuneError
from kerastune_lab.evaluate import (
    at_threshold,
    choose_threshold,
    decision_threshold,
    evaluate_classifier,
    write_report,
)
from kerastune_lab.predict import decide
from kerastune_lab.runs import RunDir

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

NAMES = ["NORMAL", "PNEUMONIA"]


def _predictions(n, k, seed):
    """Labels and probabilities that are informative but imperfect."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def _read(run, name):
    with open(run.file(name)) as f:
        return json.load(f) if name.endswith(".json") else f.read()


def test_binary_files_match_scikit_learn(tmp_path):
    run = RunDir.create(tmp_path / "run")
    y, probs = _predictions(120, 2, seed=0)
    summary = evaluate_classifier(run, y, probs, NAMES, positive_class="PNEUMONIA",
                                  target_recall=0.9)
    y_pred = probs.argmax(axis=1)

    report = skm.classification_report(y, y_pred, target_names=NAMES, output_dict=True)
    assert _read(run, "classification_report.json") == json.loads(json.dumps(report))
    assert _read(run, "classification_report.txt") == skm.classification_report(
        y, y_pred, target_names=NAMES, digits=4)
    matrix = _read(run, "confusion_matrix.json")
    assert matrix["labels"] == NAMES
    assert matrix["matrix"] == skm.confusion_matrix(y, y_pred).tolist()
    for name in ("confusion_matrix.png", "roc.png", "pr.png"):
        with open(run.file(name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name

    assert summary["test_accuracy"] == pytest.approx(skm.accuracy_score(y, y_pred))
    assert summary["test_macro_f1"] == pytest.approx(skm.f1_score(y, y_pred, average="macro"))
    assert summary["test_weighted_f1"] == pytest.approx(
        skm.f1_score(y, y_pred, average="weighted"))
    assert summary["test_recall_NORMAL"] == pytest.approx(skm.recall_score(y, y_pred, pos_label=0))
    assert summary["test_roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert summary["test_average_precision"] == pytest.approx(
        skm.average_precision_score(y, probs[:, 1]))

    # The threshold: the highest one whose recall reaches the target.
    point = _read(run, "threshold.json")
    assert point["positive_class"] == "PNEUMONIA"
    predicted = probs[:, 1] >= point["threshold"]
    assert point["recall"] == pytest.approx(skm.recall_score(y, predicted))
    assert point["recall"] >= 0.9
    assert point["precision"] == pytest.approx(skm.precision_score(y, predicted))
    higher = np.sort(probs[:, 1][probs[:, 1] > point["threshold"]])
    assert len(higher) and skm.recall_score(y, probs[:, 1] >= higher[0]) < 0.9
    assert [point[k] for k in ("tp", "fp", "fn", "tn")] == [
        int(np.sum(predicted & (y == 1))), int(np.sum(predicted & (y == 0))),
        int(np.sum(~predicted & (y == 1))), int(np.sum(~predicted & (y == 0)))]
    assert summary["test_threshold"] == point["threshold"]
    assert summary["test_threshold_precision"] == point["precision"]


def test_positive_class_picks_the_curves_class(tmp_path):
    run = RunDir.create(tmp_path / "run")
    y, probs = _predictions(60, 2, seed=1)
    summary = evaluate_classifier(run, y, probs, NAMES, positive_class="NORMAL",
                                  target_recall=0.8, prefix="val")
    assert summary["val_roc_auc"] == pytest.approx(skm.roc_auc_score(y == 0, probs[:, 0]))
    assert _read(run, "threshold.json")["positive_class"] == "NORMAL"


def test_multi_class_is_one_vs_rest(tmp_path, caplog):
    run = RunDir.create(tmp_path / "run")
    names = ["cat", "dog", "fox"]
    y, probs = _predictions(90, 3, seed=2)
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        summary = evaluate_classifier(run, y, probs, names, target_recall=0.9)
    assert summary["test_roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert summary["test_average_precision"] == pytest.approx(np.mean(
        [skm.average_precision_score(y == c, probs[:, c]) for c in range(3)]))
    assert _read(run, "confusion_matrix.json")["matrix"] == skm.confusion_matrix(
        y, probs.argmax(axis=1)).tolist()
    # No positive class among 3: the threshold is skipped, and says why.
    assert "no positive_class" in summary["test_threshold_skipped"]
    assert "no threshold" in caplog.text
    assert not (tmp_path / "run" / "threshold.json").exists()
    summary = evaluate_classifier(run, y, probs, names, positive_class="dog", target_recall=0.9)
    assert summary["test_roc_auc_dog"] == pytest.approx(skm.roc_auc_score(y == 1, probs[:, 1]))
    assert _read(run, "threshold.json")["positive_class"] == "dog"


def test_one_class_only_skips_the_curves_and_keeps_the_rest(tmp_path, caplog):
    run = RunDir.create(tmp_path / "run")
    y = np.ones(10, "int64")
    probs = np.tile([0.3, 0.7], (10, 1))
    probs[:3] = [0.8, 0.2]
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        summary = evaluate_classifier(run, y, probs, NAMES, target_recall=0.95)
    assert "one class only (PNEUMONIA)" in caplog.text
    assert "one class only" in summary["test_curves_skipped"]
    assert summary["test_accuracy"] == pytest.approx(0.7)
    assert summary["test_recall_PNEUMONIA"] == pytest.approx(0.7)
    assert _read(run, "confusion_matrix.json")["matrix"] == [[0, 0], [3, 7]]
    assert (tmp_path / "run" / "classification_report.txt").exists()
    for name in ("roc.png", "pr.png", "threshold.json"):
        assert not (tmp_path / "run" / name).exists()
    write_report(run, summary, "One class")
    report = _read(run, "report.md")
    assert "Skipped: the test labels hold one class only" in report
    assert "roc.png" not in report


def test_report_links_what_was_written(tmp_path):
    run = RunDir.create(tmp_path / "run")
    run.write_csv("history.csv", [{"epoch": 1, "phase": "head", "loss": 0.7, "val_loss": 0.6},
                                  {"epoch": 2, "phase": "finetune", "loss": 0.5, "val_loss": 0.5}])
    y, probs = _predictions(40, 2, seed=3)
    summary = evaluate_classifier(run, y, probs, NAMES, target_recall=0.95)
    write_report(run, {**summary, "nested": {"skip": 1}}, "X-ray", notes=["carved val"])
    report = _read(run, "report.md")
    assert report.startswith("# X-ray\n\n- carved val\n")
    for link in ("confusion_matrix.png", "roc.png", "pr.png", "training_curves.png"):
        assert f"]({link})" in report and (tmp_path / "run" / link).exists(), link
    assert f"| test_accuracy | {summary['test_accuracy']:.4f} |" in report
    assert _read(run, "classification_report.txt").rstrip() in report
    assert "Decision threshold" in report and "nested" not in report


def test_decision_threshold_by_hand():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    point = decision_threshold(y, scores, 0.75)
    assert point["threshold"] == 0.6 and point["recall"] == 0.75
    assert point["precision"] == pytest.approx(3 / 4)
    point = decision_threshold(y, scores, 1.0)
    assert point["threshold"] == 0.3 and point["precision"] == pytest.approx(4 / 6)


def test_decision_threshold_skips_a_dominated_threshold():
    # The highest threshold reaching recall 0.5 is 0.5 (2 found, 1 false
    # alarm: precision 2/3); 0.4 finds all 4 at precision 4/5: better on both.
    y = np.array([1, 0, 1, 1, 1], bool)
    scores = np.array([0.9, 0.6, 0.5, 0.45, 0.4])
    point = decision_threshold(y, scores, 0.5)
    assert point["threshold"] == 0.4
    assert point["recall"] == 1.0 and point["precision"] == pytest.approx(0.8)
    assert (point["tp"], point["fp"], point["fn"], point["tn"]) == (4, 1, 0, 0)


def test_decision_threshold_ties_go_to_the_higher_recall():
    # Thresholds 0.7 (recall 1/2) and 0.4 (recall 1) both have precision 2/3.
    y = np.array([1, 0, 1, 0, 1, 1], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    point = decision_threshold(y, scores, 0.5)
    assert point["threshold"] == 0.4 and point["recall"] == 1.0
    assert point["precision"] == pytest.approx(2 / 3)


def test_bad_arguments(tmp_path):
    run = RunDir.create(tmp_path / "run")
    y, probs = _predictions(10, 2, seed=4)
    with pytest.raises(KerastuneError, match="positive_class='COVID'"):
        evaluate_classifier(run, y, probs, NAMES, positive_class="COVID")
    with pytest.raises(KerastuneError, match="target_recall=1.5"):
        evaluate_classifier(run, y, probs, NAMES, target_recall=1.5)
    with pytest.raises(ValueError, match="expected \\(10, 3\\)"):
        evaluate_classifier(run, y, probs, ["a", "b", "c"])


def test_a_threshold_chosen_on_validation_is_measured_on_test(tmp_path):
    run = RunDir.create(tmp_path / "run")
    y_val, probs_val = _predictions(200, 2, seed=3)
    y, probs = _predictions(150, 2, seed=4)
    chosen = choose_threshold(y_val, probs_val, NAMES, "PNEUMONIA", 0.9, split="val")
    expected = decision_threshold(y_val == 1, probs_val[:, 1], 0.9)
    assert chosen["chosen_on"] == "val" and chosen["threshold"] == expected["threshold"]
    summary = evaluate_classifier(run, y, probs, NAMES, positive_class="PNEUMONIA",
                                  target_recall=0.9, threshold=chosen)
    point = _read(run, "threshold.json")
    # Chosen on validation, figures on test at that very threshold (not the
    # test split's own best threshold).
    assert point["threshold"] == expected["threshold"] != decision_threshold(
        y == 1, probs[:, 1], 0.9)["threshold"]
    predicted = probs[:, 1] >= expected["threshold"]
    assert point["recall"] == skm.recall_score(y == 1, predicted)
    assert point["precision"] == skm.precision_score(y == 1, predicted)
    assert point["val"]["recall"] == expected["recall"]
    assert (point["chosen_on"], point["measured_on"]) == ("val", "test")
    assert summary["test_threshold_recall"] == point["recall"]
    assert summary["test_threshold_chosen_on"] == "val"
    write_report(run, summary, "t")
    report = _read(run, "report.md")
    assert "Chosen on the val split" in report and "measured on the test split" in report
    # A threshold for another class is refused.
    with pytest.raises(KerastuneError, match="chosen for 'PNEUMONIA'"):
        evaluate_classifier(run, y, probs, NAMES, positive_class="NORMAL", target_recall=0.9,
                            threshold=chosen)


def test_at_threshold_and_decide_by_hand():
    y = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.3, 0.35, 0.1, 0.6])
    point = at_threshold(y == 1, scores, 0.3)
    assert (point["tp"], point["fp"], point["fn"], point["tn"]) == (3, 1, 0, 1)
    assert point["recall"] == 1.0 and point["precision"] == 0.75
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.9, 0.1]])
    assert decide(probs, NAMES).tolist() == [0, 1, 0]
    assert decide(probs, NAMES, {"positive_class": "PNEUMONIA", "threshold": 0.25}).tolist() \
        == [1, 1, 0]
    assert decide(probs, NAMES, {"positive_class": "NORMAL", "threshold": 0.75}).tolist() \
        == [1, 1, 0]
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    assert decide(three, ["a", "b", "c"], {"positive_class": "b", "threshold": 0.25}).tolist() \
        == [1, 2]


# Found by mutmut (tests/README.md, "Mutation testing"): the cases below were
# untested, and a changed comparison or count in them passed every test.
def test_the_highest_threshold_is_a_candidate_and_every_count_is_right():
    point = decision_threshold(np.array([True, False, False]), np.array([0.9, 0.5, 0.1]), 0.5)
    assert (point["threshold"], point["recall"], point["precision"]) == (0.9, 1.0, 1.0)
    assert (point["tp"], point["fp"], point["fn"], point["tn"]) == (1, 0, 0, 2)


def test_at_threshold_counts_and_its_zero_cases():
    point = at_threshold(np.array([True, True, False, False]), np.array([0.9, 0.2, 0.8, 0.1]),
                         0.5)  # tp == fn == fp == tn: a swapped pair shows
    assert point == {"threshold": 0.5, "recall": 0.5, "precision": 0.5,
                     "tp": 1, "fp": 1, "fn": 1, "tn": 1}
    no_positives = at_threshold(np.array([False, False]), np.array([0.9, 0.1]), 0.5)
    assert (no_positives["recall"], no_positives["precision"]) == (0.0, 0.0)
    nothing_predicted = at_threshold(np.array([True, False]), np.array([0.2, 0.1]), 0.5)
    assert (nothing_predicted["recall"], nothing_predicted["precision"]) == (0.0, 0.0)
    assert nothing_predicted["fn"] == 1 and nothing_predicted["tn"] == 1


def test_an_index_past_the_classes_is_refused_as_a_name_would_be():
    with pytest.raises(KerastuneError, match=r"positive_class=2: expected one of a, b$"):
        choose_threshold([0, 1], np.eye(2), ["a", "b"], 2, 0.9)
    assert choose_threshold([0, 1, 1], np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6]]),
                            ["a", "b"], 1, 0.9)["positive_class"] == "b"


def test_no_threshold_where_the_split_cannot_choose_one(caplog):
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        assert choose_threshold([1, 1], probs, ["a", "b"], "b", 0.9) is None
        assert choose_threshold([0, 2], np.eye(3)[:2], ["a", "b", "c"], None, 0.9) is None
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("kerastune_lab", "no decision threshold: the val split holds one side of b only"),
        ("kerastune_lab", "no decision threshold: the val split has no positive class")]
    point = choose_threshold([0, 1], probs, ["a", "b"], None, 0.9)  # split defaults to "val"
    assert (point["chosen_on"], point["positive_class"], point["threshold"]) == ("val", "b", 0.7)
