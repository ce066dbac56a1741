"""The tiny presets load back through `from_preset` and compute what they saved."""

import numpy as np
import pytest

from kerastune_lab import testing


@pytest.mark.parametrize("kind", testing.PRESET_KINDS)
def test_tiny_preset_round_trip(kind, tmp_path):
    import keras
    import keras_hub

    task = testing.build_tiny_task(kind, seed=3)
    path = testing.save_tiny_preset(kind, str(tmp_path / kind), seed=3)
    assert task.count_params() < 100_000
    if kind == "resnet":
        loaded = keras_hub.models.ImageClassifier.from_preset(path)
        x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
        a, b = task.predict(x, verbose=0), loaded.predict(x, verbose=0)
    elif kind == "distilbert":
        loaded = keras_hub.models.TextClassifier.from_preset(path)
        x = ["the movie was great", "what a terrible boring film"]
        a, b = task.predict(x, verbose=0), loaded.predict(x, verbose=0)
        tokens = loaded.preprocessor.tokenizer("the movie was great")
        assert 1 not in keras.ops.convert_to_numpy(tokens).tolist()  # no [UNK]
    else:
        loaded = keras_hub.models.CausalLM.from_preset(path)
        x = loaded.preprocessor.generate_preprocess(["hello my friend"], sequence_length=16)
        a = task.backbone.predict(x, verbose=0)
        b = loaded.backbone.predict(x, verbose=0)
        tokenizer = loaded.preprocessor.tokenizer
        vocabulary = tokenizer.get_vocabulary()
        for marker in testing.CHAT_MARKERS:  # in the vocabulary, for chat templates
            assert marker in vocabulary
    assert type(loaded) is type(task)
    np.testing.assert_allclose(a, b, atol=1e-6)
