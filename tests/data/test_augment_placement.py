"""Where the image recipes augment: inside the training model on a GPU/TPU,
in the input pipeline on a CPU (`augment.choose_where`), recorded in
config.json, and what reached `fit` agrees with what was recorded."""

import json

import keras
import numpy as np
import pytest

from kerastune_lab.backend import Device
from kerastune_lab.data import augment, images
from kerastune_lab.errors import KerastuneError
from kerastune_lab.recipe import run_recipe
from tests.conftest import recipe_path

CPU = [Device("cpu", "cpu")]
T4 = [Device("gpu", "Tesla T4", 15 * 2**30, (7, 5))]
TPU = [Device("tpu", "TPU v3")] * 8


@pytest.mark.backend_independent
@pytest.mark.parametrize("requested, devices, where", [
    ("auto", CPU, "pipeline"),
    ("auto", T4, "model"),
    ("auto", TPU, "model"),
    ("auto", [Device("mps", "Apple GPU (mps)")], "model"),
    ("model", CPU, "model"),  # the user's choice is kept
    ("pipeline", T4, "pipeline"),
])
def test_choose_where(requested, devices, where):
    chosen, why = augment.choose_where(requested, devices)
    assert chosen == where
    assert ("auto" in why) == (requested == "auto")


@pytest.mark.backend_independent
def test_choose_where_refuses_other_values():
    with pytest.raises(KerastuneError, match=r"augment_on='gpu': expected one of auto, model, "
                                             r"pipeline"):
        augment.choose_where("gpu", CPU)


class _Run:
    """A run folder's config.json, in memory."""

    def __init__(self, resumed, recorded=None):
        self.resumed = resumed
        self.config = {} if recorded is None else {"augment_on": recorded}

    def read_json(self, name):
        assert name == "config.json"
        return dict(self.config)

    def update_json(self, name, **fields):
        assert name == "config.json"
        self.config.update(fields)


@pytest.mark.backend_independent
def test_a_resumed_run_keeps_the_placement_it_started_with():
    # Started on a GPU ("model"), resumed on a CPU with "auto": still "model",
    # so the resumed epochs are augmented as the run's first were.
    run = _Run(resumed=True, recorded="model")
    assert augment.placement("auto", run) == "model"
    assert run.config["augment_on"] == "model"
    # A new run on this CPU: the pipeline, recorded.
    fresh = _Run(resumed=False, recorded="model")  # a stale value is not read
    assert augment.placement("auto", fresh) == "pipeline"
    assert fresh.config["augment_on"] == "pipeline"


def _first_fit(monkeypatch):
    """Spies on `keras.Model.fit`: the model it trains and the first batch of
    images it gets, for each call."""
    seen = []
    original = keras.Model.fit

    def fit(self, x=None, *args, **kwargs):
        batch = next(iter(x))
        seen.append((self, keras.ops.convert_to_numpy(batch[0])))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    return seen


def _random_layers(model):
    return sorted(type(layer).__name__ for layer in model._flatten_layers()
                  if type(layer).__name__.startswith("Random"))


@pytest.mark.parametrize("recipe", ["cats_vs_dogs", "xray_pneumonia"])
@pytest.mark.parametrize("where", ["pipeline", "model"])
def test_the_batches_and_the_training_model_agree_with_config_json(recipe, where, tmp_path,
                                                                     monkeypatch):
    seen = _first_fit(monkeypatch)
    run = run_recipe(recipe_path(recipe), smoke=True, output_dir=str(tmp_path / "run"),
                     overrides=[f"augment_on={where}", "head_epochs=1", "epochs=1"])
    recorded = json.loads(open(run.file("config.json")).read())
    assert recorded["augment_on"] == where
    config = recorded["config"]
    trainer, first = seen[0]
    # The same first batch without augmentation (the order is a function of
    # seed and epoch only), from the loader the recipe uses.
    if recipe == "cats_vs_dogs":
        plain = images.load_image_data(config["data"], config["image_size"],
                                       config["batch_size"], config["val_split"],
                                       config["seed"], cache="none")
    else:
        from kerastune_lab.data import xray

        plain = xray.load_split_tree(config["data"], config["image_size"], config["batch_size"],
                                     min_val_images=config["min_val_images"],
                                     val_split=config["val_split"], seed=config["seed"],
                                     cache="none")
    unaugmented = keras.ops.convert_to_numpy(next(iter(plain.train_stream.dataset(0, 0)))[0])
    assert first.shape == unaugmented.shape
    if where == "pipeline":
        assert _random_layers(trainer) == []
        assert not np.allclose(first, unaugmented, atol=1.0)  # augmented before fit
        # ... on predict's pixel scale (0-255, as the validation batches): flips,
        # rotations, zooms and contrast move pixels, not the batch's brightness.
        assert unaugmented.max() > 128 and first.max() > 128
        assert abs(first.mean() - unaugmented.mean()) <= 0.1 * unaugmented.mean()
    else:
        assert _random_layers(trainer)  # RandomRotation, RandomZoom, ...
        np.testing.assert_array_equal(first, unaugmented)  # augmented inside the model
