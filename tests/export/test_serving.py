"""Classification runs: `--format keras` (loads in safe mode) and `--format
serving` (Keras' own `model.export`) give the run model's probabilities."""

import json
import os

import numpy as np

from kerastune_lab.predict import _softmax
from tests.conftest import BACKEND, assert_one_line_error


def _images():
    return np.random.default_rng(5).uniform(0, 255, (3, 32, 32, 3)).astype("float32")


def _expected(run):
    """(the preprocessed images the served model takes, the run model's probabilities)."""
    import keras
    import keras_hub

    model = keras_hub.models.ImageClassifier.from_preset(str(run / "model"))
    converted = keras.ops.convert_to_numpy(model.preprocessor.image_converter(_images()))
    probs = _softmax(np.asarray(model.predict(_images(), verbose=0), "float64"))
    return converted.astype("float32"), probs


def test_keras_file_loads_in_safe_mode(image_run, cli, tmp_path):
    import keras

    out = tmp_path / "keras"
    result = cli("export", image_run, "--format", "keras", "--output", out)
    assert result.code == 0, result
    assert json.loads((out / "labels.json").read_text()) == ["cat", "dog"]
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    probs = _softmax(np.asarray(model.predict(_images(), verbose=0), "float64"))
    np.testing.assert_allclose(probs, _expected(image_run)[1], atol=1e-5)


def test_serving_export_gives_the_probabilities(image_run, cli, tmp_path):
    out = tmp_path / "serving"
    images, expected = _expected(image_run)
    result = cli("export", image_run, "--format", "serving", "--output", out)
    if BACKEND == "torch":
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            assert_one_line_error(result, "pip install onnx")
            assert not out.exists()
            return
        assert result.code == 0, result
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out / "model.onnx"))
        name = session.get_inputs()[0].name
        probs = session.run(None, {name: images})[0]
    else:
        assert result.code == 0, result
        import tensorflow as tf

        served = tf.saved_model.load(str(out))
        probs = served.serve(tf.constant(images)).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert os.path.isfile(out / "labels.json")


def test_text_classifier_serving_takes_token_ids(cli, tmp_path):
    import keras
    import keras_hub
    import tensorflow as tf

    from tests.export import runs

    run = runs.text_run(tmp_path / "text")
    model = keras_hub.models.TextClassifier.from_preset(str(run / "model"))
    x = model.preprocessor(tf.constant(["a great movie", "dull and boring"]))
    x = {k: keras.ops.convert_to_numpy(v) for k, v in x.items()}
    expected = _softmax(keras.ops.convert_to_numpy(model(x)).astype("float64"))
    out = tmp_path / "serving"
    result = cli("export", run, "--format", "serving", "--output", out)
    if BACKEND == "torch":
        # Keras 3.15's ONNX export of DistilBERT on torch fails inside
        # torch.onnx (or needs the onnx package): one line, nothing written.
        assert_one_line_error(result, "--backend jax or tensorflow")
        assert not out.exists()
        return
    assert result.code == 0, result
    served = tf.saved_model.load(str(out))
    probs = served.serve(x).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
