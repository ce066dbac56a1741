"""cats_vs_dogs through the real `kerastune` CLI."""

import csv
import json
import os
import re

import pytest

from kerastune_lab import testing
from kerastune_lab.console import is_startup_noise
from tests import keras_spy
from tests.conftest import (
    BACKEND,
    assert_one_line_error,
    recipe_path,
    run_cli,
    run_cli_spied,
)

RECIPE = recipe_path("cats_vs_dogs")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cvd"
    # Every `fit` call recorded (tests/keras_spy.py): what reached Keras.
    # A big head step, as the X-ray smoke run's: the tiny random backbone's
    # features vary little, and at 1e-3 the 3 steps of one head epoch leave
    # it at chance on tensorflow.
    result = run_cli_spied(out.parent / "fit.jsonl", "run", RECIPE, "--smoke", "--output-dir",
                           out, "head_epochs=1", "epochs=2", "head_learning_rate=0.1")
    assert result.code == 0, result
    return out, result


def test_smoke_run_writes_the_run_directory(smoke_run):
    out, result = smoke_run
    assert result.last_line == str(out)
    # The smoke data's note once (not once per reading of the config), and
    # no Keras warning that it ignores shuffle=True (the stream is shuffled).
    assert result.stderr.count("broken on purpose") == 1, result.stderr
    assert "shuffle=True" not in result.stderr, result.stderr
    for name in ("config.json", "history.csv", "metrics.json", "training_curves.png",
                 "labels.json", "FINISHED", "model/config.json", "model/task.json"):
        assert os.path.exists(out / name), name
    config = json.loads((out / "config.json").read_text())
    assert config["backend"] == BACKEND
    assert config["smoke"] is True
    assert config["versions"]["keras"] and config["versions"]["keras-hub"]
    # Overrides on the command line apply on top of --smoke.
    assert config["config"]["head_epochs"] == 1 and config["config"]["epochs"] == 2
    assert config["config"]["image_size"] == 32
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["head", "finetune", "finetune"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["learning_rate"]) == pytest.approx(0.1)
    metrics = json.loads((out / "metrics.json").read_text())
    # It learned: the smoke classes differ in colour and corner
    # (`testing.make_image_folder`); chance on the balanced validation split
    # (5 cats, 5 dogs) is 0.5, and a model that learned nothing fails these
    # by a margin. Seen: 1.0 on jax, tensorflow and torch; 0.5 with the
    # learning rate at 0. (After the one head epoch: 1.0 on jax and torch,
    # still 0.5 on tensorflow, so head_val_accuracy is not bounded.)
    assert metrics["num_val"] == 10
    for key in ("finetune_val_accuracy", "val_accuracy"):
        assert metrics[key] >= 0.8, (key, metrics[key])
    assert metrics["skipped"] == {"not_image": 1, "unreadable": 1}
    assert json.loads((out / "labels.json").read_text()) == ["cat", "dog"]
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporaries left


def test_each_phase_trains_at_its_own_learning_rate(smoke_run):
    """What the optimizer ran at, batch by batch (the spy's record), and
    every row of history.csv: phase 1 at the head's rate, phase 2 at the low
    one (the console's line is built from the argument, not the optimizer)."""
    out, _ = smoke_run
    config = json.loads((out / "config.json").read_text())["config"]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    keras_spy.assert_phases_trained_at(
        keras_spy.read(out.parent / "fit.jsonl"), rows,
        {"head": config["head_learning_rate"], "finetune": config["learning_rate"]},
        {"head": config["head_epochs"], "finetune": config["epochs"]})
    assert (config["head_learning_rate"], config["learning_rate"]) == (0.1, 1e-4)


def test_smoke_run_writes_the_evaluation_on_its_validation_split(smoke_run):
    out, result = smoke_run
    for name in ("classification_report.json", "classification_report.txt",
                 "confusion_matrix.json", "confusion_matrix.png", "roc.png", "pr.png",
                 "report.md"):
        assert os.path.exists(out / name), name
    metrics = json.loads((out / "metrics.json").read_text())
    # No test split: evaluated on the validation split, and named so.
    assert metrics["evaluated_on"] == "val"
    assert metrics["val_num_examples"] == metrics["num_val"]
    assert metrics["val_accuracy"] == pytest.approx(
        json.loads((out / "classification_report.json").read_text())["accuracy"], abs=1e-5)
    # No bound on val_roc_auc: an untrained head on the tiny random backbone
    # ranks these colours perfectly already (1.0 measured with the learning
    # rate at 0, accuracy 0.5); its value is checked against the saved
    # model's predictions in the augmentation test below.
    assert "val_roc_auc" in metrics and "val_macro_f1" in metrics
    assert not [k for k in metrics if k.startswith("test_")]
    assert "evaluated on the validation split" in (out / "report.md").read_text()
    # The headline, rounded: "kerastune: val_accuracy 0.9, val_roc_auc 0.9557".
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("kerastune: val_accuracy ")]
    assert len(lines) == 1 and re.fullmatch(
        r"kerastune: val_accuracy [\d.]{1,6}, val_roc_auc [\d.]{1,6}", lines[0]), lines


def test_smoke_data_says_its_broken_files_are_deliberate(smoke_run):
    _, result = smoke_run
    note = result.stderr.index("kerastune: smoke data: cat/broken.jpg and cat/notes.txt in ")
    assert "are broken on purpose" in result.stderr[note:].splitlines()[0]
    assert note < result.stderr.index("skipped 2 file(s)")


def test_each_phase_is_announced_on_the_console_and_in_the_log(smoke_run):
    out, result = smoke_run
    head = ("kerastune: phase 1/2 (head): training the new head only, backbone frozen",
            "learning rate 0.1, epoch 1 of 3")
    finetune = ("kerastune: phase 2/2 (finetune): training everything, BatchNorm in "
                "inference mode", "learning rate 0.0001, epochs 2-3 of 3")
    lines = result.stderr.splitlines()
    for start, end in (head, finetune):
        assert [line for line in lines if line.startswith(start) and line.endswith(end)], lines
    log = (out / "log.txt").read_text()
    assert head[0][len("kerastune: "):] in log and finetune[0][len("kerastune: "):] in log
    # Before the epochs of its phase: phase 2's line after phase 1's epoch.
    first, second = (result.stderr.index(p[0]) for p in (head, finetune))
    assert first < second


def test_augmentation_runs_in_the_input_pipeline_on_a_cpu_and_the_saved_model_has_none(smoke_run):
    import keras_hub
    from sklearn.metrics import roc_auc_score

    from kerastune_lab.data import images
    from kerastune_lab.models import load_run_model
    from kerastune_lab.predict import predict_dataset
    from kerastune_lab.runs import RunDir

    out, result = smoke_run
    # On this CPU, "auto" puts it in the input pipeline, recorded. (What the
    # batches and the training model hold: tests/data/test_augment_placement.py.)
    assert "kerastune: augmentation: in the input pipeline (auto: CPU only" in result.stderr
    assert json.loads((out / "config.json").read_text())["augment_on"] == "pipeline"
    saved = "".join(p.read_text() for p in (out / "model").glob("*.json"))
    assert "ImageClassifier" in saved and "Random" not in saved
    # Loaded back, it predicts the validation split as the run did before saving.
    config = json.loads((out / "config.json").read_text())["config"]
    data = images.load_image_data(config["data"], config["image_size"], config["batch_size"],
                                  config["val_split"], config["seed"], cache="none")
    model = load_run_model(RunDir.open(str(out)), keras_hub.models.ImageClassifier,
                           compile=False)
    labels, probs = predict_dataset(model, data.val)
    metrics = json.loads((out / "metrics.json").read_text())
    assert float((probs.argmax(-1) == labels).mean()) == pytest.approx(metrics["val_accuracy"])
    assert roc_auc_score(labels, probs[:, 1]) == pytest.approx(metrics["val_roc_auc"], abs=1e-6)


def test_predict_prints_label_and_probability(smoke_run, tmp_path):
    out, _ = smoke_run
    folder = testing.make_image_folder(tmp_path / "new", ("cat", "dog"), per_class=1, seed=5)
    paths = [os.path.join(folder, "cat", "cat_0000.jpg"),
             os.path.join(folder, "dog", "dog_0000.jpg")]
    result = run_cli("predict", out, *paths)
    assert result.code == 0, result
    assert "Skipping variable loading" not in result.stderr  # loaded for inference
    # Nothing else either (C++ log lines aside: this test's TF_CPP_MIN_LOG_LEVEL=2
    # lets TensorFlow's ERROR lines through; tests/test_quiet_start.py goes without).
    assert not [line for line in result.stderr.splitlines()
                if line.strip() and not is_startup_noise(line)], result.stderr
    lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
    assert [line[0] for line in lines] == paths
    # The trained model tells them apart (exact labels: a label drawn at
    # random, or one class everywhere, fails; three classes and labels.json's
    # order: tests/test_what_was_used.py).
    assert [line[1] for line in lines] == ["cat", "dog"]
    assert all(0.5 <= float(line[2]) <= 1.0 for line in lines)


def test_finished_run_is_not_overwritten(smoke_run, cli):
    out, _ = smoke_run
    before = {n: os.path.getmtime(out / n) for n in os.listdir(out)}
    result = cli("run", RECIPE, "--smoke", "--output-dir", out)
    assert_one_line_error(result, str(out), "finished run", "--overwrite")
    assert {n: os.path.getmtime(out / n) for n in os.listdir(out)} == before


def _recipe_without_config(tmp_path):
    path = tmp_path / "empty_recipe.py"
    path.write_text("def main(config, run):\n    pass\n")
    return path


@pytest.mark.parametrize("args, fragments", [
    (["data={tmp}/nowhere"], ["data folder", "nowhere", "does not exist"]),
    (["data={tmp}/empty"], ["data folder", "holds no readable image"]),
    (["data={tmp}/oneclass"], ["one class only", "'cat'"]),
    (["epochs=abc"], ["epochs=abc", "expected int"]),
    (["batch_size=8.5"], ["batch_size=8.5", "expected int"]),
])
def test_bad_input(cli, tmp_path, args, fragments):
    (tmp_path / "empty").mkdir()
    testing.make_image_folder(tmp_path / "oneclass", ("cat",), per_class=2)
    out = tmp_path / "run"
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, *args)
    assert_one_line_error(result, *fragments)
    assert not out.exists()  # nothing half-made left behind


@pytest.mark.parametrize("make_args, fragments", [
    (lambda p: ["run", p / "nope.py"], ["recipe file", "nope.py", "does not exist"]),
    (lambda p: ["run", _recipe_without_config(p)], ["has no Config dataclass"]),
    (lambda p: ["run", RECIPE, "--backend", "theano"], ["unknown backend", "theano"]),
    (lambda p: ["run", RECIPE, "--smoke", "--epochs", "3"], ["--epochs"]),
    (lambda p: ["predict", p / "norun", p / "x.jpg"], ["run dir", "does not exist"]),
])
def test_bad_command_lines(cli, tmp_path, make_args, fragments):
    assert_one_line_error(cli(*make_args(tmp_path)), *fragments)


def test_predict_unreadable_image(smoke_run, cli, tmp_path):
    out, _ = smoke_run
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not really a jpeg")
    assert_one_line_error(cli("predict", out, bad), "bad.jpg", "cannot be read")
