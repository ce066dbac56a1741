"""xray_pneumonia through the real `kerastune` CLI, and `kerastune evaluate`."""

import csv
import json
import os
import re
import shutil
import warnings

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from kerastune_lab import testing
from tests import keras_spy
from tests.conftest import BACKEND, assert_one_line_error, recipe_path, run_cli_spied

RECIPE = recipe_path("xray_pneumonia")
EVALUATION_FILES = ("classification_report.json", "classification_report.txt",
                    "confusion_matrix.json", "confusion_matrix.png", "roc.png", "pr.png",
                    "threshold.json", "metrics.json", "report.md")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "xray"
    # Every `fit` call recorded (tests/keras_spy.py): what reached Keras.
    result = run_cli_spied(out.parent / "fit.jsonl", "run", RECIPE, "--smoke", "--output-dir", out)
    assert result.code == 0, result
    return out, result


def _json(path):
    with open(path) as f:
        return json.load(f)


def test_smoke_run_writes_the_evaluation(smoke_run):
    out, result = smoke_run
    assert result.last_line == str(out)
    for name in EVALUATION_FILES + ("config.json", "history.csv", "training_curves.png",
                                    "labels.json", "FINISHED", "model/config.json"):
        assert os.path.exists(out / name), name
    config = _json(out / "config.json")
    assert config["backend"] == BACKEND and config["smoke"] is True
    # The generated val/ holds 4 images: validation was carved from train, and said so.
    assert config["validation"]["source"] == "train"
    assert "fewer than min_val_images=100" in config["validation"]["reason"]
    assert "carved a stratified 0.2 of train" in result.stderr
    # Balanced weights, from the training label counts.
    counts = config["counts"]["train"]
    labels = np.repeat([0, 1], [counts["NORMAL"], counts["PNEUMONIA"]])
    expected = compute_class_weight("balanced", classes=np.arange(2), y=labels)
    assert config["class_weights"] == pytest.approx(dict(zip(["NORMAL", "PNEUMONIA"], expected)))
    assert config["class_weights"]["NORMAL"] > 1 > config["class_weights"]["PNEUMONIA"]
    with open(out / "history.csv") as f:
        assert [r["phase"] for r in csv.DictReader(f)] == ["head"] * 10 + ["finetune"]

    metrics = _json(out / "metrics.json")
    # The same names as cats_vs_dogs for the same figures.
    assert metrics["evaluated_on"] == "test"
    # It learned: the smoke data (tests/recipes: `testing.xray_image`) is
    # separable enough that a model which learned nothing (the majority
    # class everywhere: 14/19 = 0.74 of val, 24/40 = 0.6 of test; ROC AUC
    # 0.5) fails each of these by a margin. Seen: val 0.95, test 0.85; with
    # the learning rate at 0: 0.74 and 0.6, the majority class.
    val_majority = max(config["counts"]["val"].values()) / sum(config["counts"]["val"].values())
    assert metrics["head_val_accuracy"] >= val_majority + 0.1, metrics
    assert metrics["finetune_val_accuracy"] >= val_majority + 0.1, metrics
    headline = [line for line in result.stderr.splitlines()
                if line.startswith("kerastune: test_accuracy ")]
    assert len(headline) == 1 and re.fullmatch(
        r"kerastune: test_accuracy [\d.]{1,6}, test_roc_auc [\d.]{1,6}", headline[0]), headline
    report = _json(out / "classification_report.json")
    assert metrics["test_accuracy"] == pytest.approx(report["accuracy"])
    assert metrics["test_macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert metrics["test_num_examples"] == 40 == report["macro avg"]["support"]
    assert metrics["test_accuracy"] >= 24 / 40 + 0.1, metrics
    # No bound on test_roc_auc: an untrained head on the tiny random backbone
    # already ranks these images (0.97 measured with the learning rate at 0),
    # so a bound would not tell learning apart; its value is checked against
    # the saved model's predictions below.
    # The threshold is chosen on the validation split and measured on test.
    threshold = _json(out / "threshold.json")
    assert threshold["positive_class"] == "PNEUMONIA" and threshold["chosen_on"] == "val"
    assert threshold["measured_on"] == "test" and threshold["val"]["recall"] >= 0.95
    assert metrics["test_threshold"] == threshold["threshold"]
    assert metrics["test_threshold_chosen_on"] == "val"
    markdown = (out / "report.md").read_text()
    for link in ("confusion_matrix.png", "roc.png", "pr.png", "training_curves.png"):
        assert f"]({link})" in markdown
    assert "carved a stratified" in markdown and "Decision threshold" in markdown


# What reached Keras (issue 30): the spy's record of each `fit` call, not
# what the run logged or wrote into config.json.

def test_the_class_weights_reach_fit_in_both_phases(smoke_run):
    out, _ = smoke_run
    records = keras_spy.read(out.parent / "fit.jsonl")
    assert len(records) == 2  # head, finetune
    total = sum(_json(out / "config.json")["counts"]["train"].values())
    for record in records:
        # "balanced": n / (classes * n_class), from the labels of one epoch
        # of the data fit itself was given (computed here, not by the toolkit).
        counts = record["epoch_label_counts"]
        assert sum(counts.values()) == total and set(counts) == {"0", "1"}
        expected = {c: total / (2 * n) for c, n in counts.items()}
        # As fit's `class_weight`, or as sample weights in the batches.
        used = record["class_weight"] or record["implied_class_weight"]
        assert used is not None, "no class weights reached fit"
        assert used == pytest.approx(expected, rel=1e-6), (record["call"], used, expected)
        assert used["0"] > 1 > used["1"]  # NORMAL is the rare class


def test_each_phase_trains_at_its_own_learning_rate(smoke_run):
    out, _ = smoke_run
    config = _json(out / "config.json")["config"]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    keras_spy.assert_phases_trained_at(
        keras_spy.read(out.parent / "fit.jsonl"), rows,
        {"head": config["head_learning_rate"], "finetune": config["learning_rate"]},
        {"head": config["head_epochs"], "finetune": config["epochs"]})
    assert config["head_learning_rate"] != config["learning_rate"]


def test_training_batches_are_on_the_pixel_scale_of_test_and_predict(smoke_run):
    """The first training batch fit got (after augmentation in the pipeline)
    is on the 0-255 scale that the test split and `predict` give the same
    model (tests/test_what_was_used.py compares the paths image by image)."""
    from kerastune_lab.data import images

    out, _ = smoke_run
    config = _json(out / "config.json")["config"]
    test_paths = sorted(str(p) for p in
                        __import__("pathlib").Path(config["data"], "test").rglob("*.*"))
    predicted = images.load_images(test_paths, config["image_size"])
    for record in keras_spy.read(out.parent / "fit.jsonl"):
        batch = record["first_images"]
        assert batch.shape[1:] == predicted.shape[1:]
        assert batch.min() >= 0 and batch.max() <= 255 + 1e-3
        assert batch.max() > 128, "training pixels are not on the 0-255 scale"
        ratio = float(batch.mean()) / float(predicted.mean())
        assert 0.7 < ratio < 1.4, (batch.mean(), predicted.mean())


def test_augmentation_runs_in_the_input_pipeline_on_a_cpu_and_the_saved_model_has_none(smoke_run):
    import keras_hub
    from sklearn.metrics import roc_auc_score

    from kerastune_lab.data import xray
    from kerastune_lab.evaluate import at_threshold, decision_threshold
    from kerastune_lab.models import load_run_model
    from kerastune_lab.predict import predict_dataset
    from kerastune_lab.runs import RunDir

    out, result = smoke_run
    # On this CPU, "auto" puts it in the input pipeline, recorded. (What the
    # batches and the training model hold: tests/data/test_augment_placement.py.)
    assert "kerastune: augmentation: in the input pipeline (auto: CPU only" in result.stderr
    assert _json(out / "config.json")["augment_on"] == "pipeline"
    saved = "".join(p.read_text() for p in (out / "model").glob("*.json"))
    assert "ImageClassifier" in saved and "Random" not in saved
    # Loaded back, it predicts the test split (grayscale, RGB and 16-bit files)
    # as the run did before saving.
    config = _json(out / "config.json")["config"]
    data = xray.load_split_tree(config["data"], config["image_size"], config["batch_size"],
                                val_split=config["val_split"], seed=config["seed"],
                                cache="none")
    model = load_run_model(RunDir.open(str(out)), keras_hub.models.ImageClassifier,
                           compile=False)
    labels, probs = predict_dataset(model, data.test)
    metrics = _json(out / "metrics.json")
    assert float((probs.argmax(-1) == labels).mean()) == pytest.approx(metrics["test_accuracy"])
    assert roc_auc_score(labels, probs[:, 1]) == pytest.approx(metrics["test_roc_auc"], abs=1e-6)
    # The threshold is the one the validation split's predictions give, and
    # its test figures are those of the test predictions at it.
    val_labels, val_probs = predict_dataset(model, data.val)
    chosen = decision_threshold(val_labels == 1, val_probs[:, 1], config["target_recall"])
    threshold = _json(out / "threshold.json")
    assert threshold["threshold"] == pytest.approx(chosen["threshold"], abs=1e-6)
    assert threshold["val"]["recall"] == chosen["recall"]
    measured = at_threshold(labels == 1, probs[:, 1], threshold["threshold"])
    for key in ("recall", "precision", "tp", "fp", "fn", "tn"):
        assert threshold[key] == pytest.approx(measured[key]), key


def test_predict_applies_the_saved_threshold(smoke_run, cli, tmp_path):
    """`kerastune predict` on a binary run with threshold.json: PNEUMONIA
    wherever P(PNEUMONIA) reaches the threshold, whatever the argmax says."""
    out, _ = smoke_run
    run = shutil.copytree(out, tmp_path / "run")
    test_split = os.path.join(_json(out / "config.json")["config"]["data"], "test")
    images = sorted(str(p) for p in __import__("pathlib").Path(test_split).rglob("*.*"))[::6]
    result = cli("predict", run, *images)
    assert result.code == 0, result
    assert "decision threshold" in result.stderr and "chosen on the val split" in result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    p_pneumonia = [float(s) if label == "PNEUMONIA" else 1 - float(s) for _, label, s in lines]
    threshold = _json(run / "threshold.json")
    clear = [abs(p - threshold["threshold"]) > 1e-3 for p in p_pneumonia]  # scores print rounded
    assert [label for (_, label, _), c in zip(lines, clear) if c] == [
        "PNEUMONIA" if p >= threshold["threshold"] else "NORMAL"
        for p, c in zip(p_pneumonia, clear) if c]
    # Thresholds that put every image on one side: the labels follow them.
    for value, label in ((min(p_pneumonia) - 1e-3, "PNEUMONIA"),
                         (max(p_pneumonia) + 1e-3, "NORMAL")):
        threshold["threshold"] = value
        (run / "threshold.json").write_text(json.dumps(threshold))
        result = cli("predict", run, *images)
        assert result.code == 0, result
        assert {line.split("\t")[1] for line in result.stdout.strip().splitlines()} == {label}


def test_evaluate_writes_the_same_files_into_a_subfolder(smoke_run, cli, tmp_path):
    out, _ = smoke_run
    test_split = os.path.join(_json(out / "config.json")["config"]["data"], "test")
    before = {n: os.path.getmtime(out / n) for n in os.listdir(out)}
    result = cli("evaluate", out, "--data", test_split)
    assert result.code == 0, result
    assert result.last_line == str(out / "eval-test")
    for name in EVALUATION_FILES + ("evaluation.json",):
        assert os.path.exists(out / "eval-test" / name), name
    # The run's own files are untouched; the same model on the same split agrees.
    assert {n: os.path.getmtime(out / n) for n in before} == before
    metrics, again = _json(out / "metrics.json"), _json(out / "eval-test" / "metrics.json")
    for key in ("test_accuracy", "test_roc_auc", "test_threshold", "test_threshold_recall",
                "test_threshold_precision"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-5), key
    # The run's own threshold (chosen on its validation split), measured here.
    assert again["test_threshold_chosen_on"] == "val"
    # A second evaluation of that name is refused, or replaces it when asked.
    assert_one_line_error(cli("evaluate", out, "--data", test_split), "eval-test",
                          "--overwrite")
    one_class = shutil.copytree(os.path.join(test_split, "PNEUMONIA"),
                                tmp_path / "ward" / "PNEUMONIA")
    result = cli("evaluate", out, "--data", os.path.dirname(one_class), "--name", "test",
                 "--overwrite")
    assert result.code == 0, result
    assert "one class only (PNEUMONIA)" in result.stderr
    again = _json(out / "eval-test" / "metrics.json")
    assert again["test_num_examples"] == 24 and "test_curves_skipped" in again
    assert not os.path.exists(out / "eval-test" / "roc.png")


def test_evaluate_names_figures_as_the_run_does(smoke_run, cli, tmp_path):
    # A folder named otherwise: the figures keep the run's names (no
    # "other_hospital_accuracy"), and the headline is printed before the path.
    out, _ = smoke_run
    test_split = os.path.join(_json(out / "config.json")["config"]["data"], "test")
    folder = shutil.copytree(test_split, tmp_path / "other_hospital")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cli("evaluate", out, "--data", folder)
    assert result.code == 0, result
    # Loaded for inference: no optimizer state to skip.
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    metrics = _json(out / "eval-other_hospital" / "metrics.json")
    assert metrics["evaluated_on"] == "test"
    assert metrics["evaluation_data"] == os.path.abspath(folder)
    assert metrics["test_accuracy"] == pytest.approx(_json(out / "metrics.json")["test_accuracy"],
                                                     abs=1e-5)
    assert not [k for k in metrics if k.startswith("other_hospital")]
    assert re.fullmatch(r"kerastune: test_accuracy [\d.]{1,6}, test_roc_auc [\d.]{1,6}",
                        result.stderr.strip().splitlines()[-1]), result.stderr
    assert result.last_line == str(out / "eval-other_hospital")


def test_evaluate_rejects_other_classes(smoke_run, cli, tmp_path):
    out, _ = smoke_run
    testing.make_image_folder(tmp_path / "pets", ("cat", "NORMAL"), per_class=1)
    assert_one_line_error(cli("evaluate", out, "--data", tmp_path / "pets"),
                          "has classes ['NORMAL', 'cat']", "expected class subfolders among")
    assert not os.path.exists(out / "eval-pets")


@pytest.fixture
def tree(tmp_path):
    return testing.make_chest_xray(tmp_path / "chest_xray",
                                   {"train": (5, 10), "val": (1, 1), "test": (3, 4)}, size=24)


@pytest.mark.parametrize("change, fragments", [
    (lambda r: shutil.rmtree(r / "train" / "NORMAL"),
     ["data split 'train'", "has no NORMAL subfolder"]),
    (lambda r: shutil.rmtree(r / "test" / "PNEUMONIA"),
     ["data split 'test'", "has no PNEUMONIA subfolder"]),
    (lambda r: os.makedirs(r / "val" / "COVID"),
     ["data split 'val' has classes ['COVID', 'NORMAL', 'PNEUMONIA']", "same class subfolders"]),
    (lambda r: [p.write_bytes(b"not an image") for p in (r / "test").rglob("*.*")],
     ["test'", "holds no readable image"]),
    (lambda r: [os.remove(p) for p in (r / "train" / "PNEUMONIA").iterdir()],
     ["PNEUMONIA' holds no readable image"]),
])
def test_bad_data(cli, tree, tmp_path, change, fragments):
    change(tree)
    out = tmp_path / "run"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, f"data={tree}")
    assert_one_line_error(result, *fragments)
    assert not out.exists()  # nothing half-made left behind


@pytest.mark.parametrize("override, fragment", [
    ("class_weight=balance", "class_weight='balance'"),
    ("class_weight={'NORMAL': 2.0}", "no weight for class(es) PNEUMONIA"),
    ("positive_class=pneumonia", "positive_class='pneumonia'"),
])
def test_bad_settings(cli, tree, tmp_path, override, fragment):
    result = cli("run", RECIPE, "--smoke", "--output-dir", tmp_path / "run", f"data={tree}",
                 override)
    assert_one_line_error(result, fragment)


def test_test_split_of_one_class_warns_and_keeps_the_rest(cli, tree, tmp_path):
    for path in (tree / "test" / "NORMAL").iterdir():
        os.remove(path)
    out = tmp_path / "run"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, f"data={tree}",
                 "head_epochs=1", "epochs=0", "oversample=true",
                 "class_weight={'NORMAL': 1.0, 'PNEUMONIA': 1.5}")
    assert result.code == 0, result
    assert "holds no image of NORMAL" in result.stderr and "one class only" in result.stderr
    metrics = _json(out / "metrics.json")
    assert metrics["test_num_examples"] == 4 and "test_curves_skipped" in metrics
    for name in ("classification_report.json", "confusion_matrix.png", "report.md"):
        assert os.path.exists(out / name), name
    assert not os.path.exists(out / "roc.png") and not os.path.exists(out / "threshold.json")
    config = _json(out / "config.json")
    assert config["class_weights"] == {"NORMAL": 1.0, "PNEUMONIA": 1.5}
    assert config["oversampled_train"] == 2 * config["counts"]["train"]["PNEUMONIA"]
