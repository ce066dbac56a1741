"""The callable classifier: trained, saved, loaded in a fresh process, same scores."""

import json
import subprocess
import sys

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir
from tests.conftest import run_cli

TEXTS = ["This movie was a masterpiece.", "the plot was dull and the acting awful",
         "what a wonderful brilliant film", "an hour of my life"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny DistilBERT trained a little on 3 classes, saved in a run directory."""
    import keras
    import keras_hub

    from kerastune_lab.classifier import TextClassifierPipeline
    from kerastune_lab.finetune.two_phase import compile_classifier

    keras.utils.set_random_seed(0)
    preset = testing.tiny_preset("distilbert")
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(preset,
                                                                          sequence_length=16)
    model = keras_hub.models.TextClassifier.from_preset(preset, num_classes=3,
                                                        preprocessor=preprocessor)
    texts, labels = testing.reviews(48, seed=3)
    labels = [y if i % 3 else 2 for i, y in enumerate(labels)]
    compile_classifier(model, 1e-2)
    model.fit(np.array(texts), np.array(labels), batch_size=16, epochs=8, verbose=0)
    class_names = ["NEGATIVE", "POSITIVE", "NEUTRAL"]
    before = TextClassifierPipeline(model, class_names)

    run = RunDir.create(tmp_path_factory.mktemp("runs") / "text")
    run.write_json("config.json", {"config": {"sequence_length": 16}})
    run.write_json("labels.json", class_names)
    run.save_model(model)
    return run, before


def test_round_trip_in_a_fresh_process(trained_run):
    run, before = trained_run
    args = [a for t in TEXTS for a in ("--text", t)]
    result = run_cli("predict", run.path, *args)
    assert result.code == 0, result
    after = [json.loads(line) for line in result.stdout.strip().splitlines()]
    expected = before(TEXTS)
    assert all(len(entry) == 1 for entry in after) and len(after) == len(TEXTS)
    after = [entry[0] for entry in after]
    assert [e["label"] for e in after] == [e["label"] for e in expected]
    np.testing.assert_allclose([e["score"] for e in after], [e["score"] for e in expected],
                               rtol=1e-5)
    # The model tells the texts apart, so equal scores say something.
    probs = before.predict_proba(TEXTS)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-6)
    assert np.ptp(probs, axis=0).max() > 1e-3


def test_importing_the_package_leaves_keras_unimported():
    code = ("import sys, kerastune_lab; assert callable(kerastune_lab.__getattr__); "
            "assert 'keras' not in sys.modules, sorted(sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_call_shapes_and_bad_input(trained_run):
    from kerastune_lab import load_classifier

    run, before = trained_run
    classifier = load_classifier(run.path)
    assert classifier([]) == []
    one = classifier("great")
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}
    assert classifier(("great", "awful")) == classifier(["great", "awful"])
    with pytest.raises(KerastuneError, match="expected a string or a list of strings"):
        classifier(["fine", 3])


def test_not_a_text_run(tmp_path):
    from kerastune_lab import load_classifier

    run = RunDir.create(tmp_path / "images")
    run.write_json("config.json", {"config": {"image_size": 32}})
    with pytest.raises(KerastuneError, match="not a text-classification run"):
        load_classifier(run.path)
