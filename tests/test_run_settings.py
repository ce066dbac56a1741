"""What every recipe run gets from `training.run_settings`, as `run.settings`:
the dtype policy of `precision` (from the accelerator when "auto"), in
config.json and the log, set before the model is built and put back after;
the `jit_compile` of its key, which the compiled model has; and TensorBoard
logs in the run, with scalars per step and per epoch. And nothing of it
travels through module globals: a notebook making the recipe's calls with
the same settings builds the same model."""

import csv
import glob
import os
import types

import pytest

from kerastune_lab import backend, training
from kerastune_lab.errors import KerastuneError
from tests.conftest import BACKEND, assert_one_line_error

# A recipe with only what these tests look at: it records the dtype policy of
# a layer built in main and the optimizer compile gave, and trains 2 epochs of
# 6 steps with a backup, as the real recipes do.
TINY_RECIPE = '''
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from kerastune_lab.config import setting
from kerastune_lab.finetune.two_phase import compile_classifier
from kerastune_lab.resume import Backup
from kerastune_lab.training import HistoryWriter, fit_resumable


@dataclasses.dataclass
class Config:
    precision: str = setting("auto", choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"))
    jit_compile: str = setting("auto", choices=("auto", "true", "false"))
    epochs: int = 2
    seed: int = 0


def main(config, run):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2)])
    compile_classifier(model, 0.01, jit_compile=run.settings.jit_compile)
    x = np.random.default_rng(0).random((48, 4)).astype("float32")
    y = (x.sum(axis=1) > 2).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    fit_resumable(model, data, config.epochs, Backup(run), callbacks=[HistoryWriter(run)],
                  steps_per_epoch=6, validation_data=val, tensorboard=run.settings.tensorboard)
    run.write_json("seen.json", {"policy": model.layers[0].dtype_policy.name,
                                 "optimizer": type(model.optimizer).__name__,
                                 "jit_compile": model.jit_compile})
'''


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY_RECIPE)
    return path


def scalars(folder):
    """{tag: [(step, value), ...]} of the event files in `folder`."""
    import tensorflow as tf

    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") \
                    else value.simple_value
                found.setdefault(value.tag, []).append((event.step, number))
    return found


def _read(out, name):
    import json

    with open(os.path.join(out, name)) as f:
        return json.load(f)


def test_cpu_run_records_float32_and_writes_tensorboard(cli, tiny_recipe, tmp_path):
    out = tmp_path / "run"
    assert cli("run", tiny_recipe, "--output-dir", out).code == 0
    config = _read(out, "config.json")
    assert config["precision"] == "float32"
    assert config["accelerator"].startswith("cpu")
    assert config["config"]["precision"] == "auto"
    assert _read(out, "seen.json")["policy"] == "float32"
    with open(out / "log.txt") as f:
        assert "precision: float32 (auto: CPU); accelerator: cpu" in f.read()
    train = scalars(out / "tensorboard" / "train")
    assert [step for step, _ in train["batch_loss"]] == list(range(1, 13))  # 2 epochs x 6
    assert [step for step, _ in train["epoch_loss"]] == [0, 1]
    assert [value for _, value in train["epoch_learning_rate"]] == pytest.approx([0.01] * 2)
    with open(out / "history.csv") as f:
        history = [float(row["loss"]) for row in csv.DictReader(f)]
    assert [value for _, value in train["epoch_loss"]] == pytest.approx(history, rel=1e-5)
    validation = scalars(out / "tensorboard" / "validation")
    assert [step for step, _ in validation["epoch_loss"]] == [0, 1]


def test_auto_on_a_t4_is_float16_with_loss_scaling(cli, tiny_recipe, tmp_path, monkeypatch):
    t4 = backend.Device("gpu", "Tesla T4", 15 * 2**30, (7, 5))
    monkeypatch.setattr(backend, "accelerators", lambda: [t4])
    out = tmp_path / "run"
    result = cli("run", tiny_recipe, "--output-dir", out)
    assert result.code == 0, result
    config = _read(out, "config.json")
    assert config["precision"] == "mixed_float16"
    assert config["accelerator"] == "gpu: 1 x Tesla T4, 15.0 GiB, compute capability 7.5"
    seen = _read(out, "seen.json")
    assert (seen["policy"], seen["optimizer"]) == ("mixed_float16", "LossScaleOptimizer")
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # put back


def test_config_beats_auto_and_the_old_keys_are_refused(cli, tiny_recipe, tmp_path,
                                                        monkeypatch):
    a100 = backend.Device("gpu", "NVIDIA A100-SXM4-40GB", 40 * 2**30, (8, 0))
    monkeypatch.setattr(backend, "accelerators", lambda: [a100])
    assert cli("run", tiny_recipe, "--output-dir", tmp_path / "a", "precision=float32").code == 0
    assert _read(tmp_path / "a", "seen.json")["policy"] == "float32"
    assert cli("run", tiny_recipe, "--output-dir", tmp_path / "b").code == 0
    assert _read(tmp_path / "b", "seen.json")["policy"] == "mixed_bfloat16"
    # The keys precision replaced: one line naming it, exit 2, nothing run.
    for old, fragments in (("mixed_precision=true", ["'mixed_precision' is now 'precision'",
                                                     "precision=mixed_bfloat16"]),
                           ("mixed_precision_dtype=float16", ["is now 'precision'"]),
                           ("dtype=bfloat16", ["'dtype' is now 'precision'",
                                               "precision=auto, float32"])):
        assert_one_line_error(cli("run", tiny_recipe, "--output-dir", tmp_path / "d", old),
                              *fragments)
        assert not os.path.exists(tmp_path / "d")


# On torch, "true" is torch.compile: a minute on a CPU, so `large` there.
@pytest.mark.parametrize("key", [pytest.param("true", marks=[pytest.mark.large]
                                              if BACKEND == "torch" else []), "false"])
def test_the_jit_compile_key_reaches_the_model_as_in_a_notebook(cli, tiny_recipe, tmp_path,
                                                                 key):
    from kerastune_lab.recipe import load_recipe
    from kerastune_lab.runs import RunDir
    from kerastune_lab.settings import RunSettings

    assert cli("run", tiny_recipe, "--output-dir", tmp_path / "cli",
               f"jit_compile={key}").code == 0
    by_cli = _read(tmp_path / "cli", "seen.json")
    assert by_cli["jit_compile"] is (key == "true")  # what model.jit_compile was
    # The same main in a notebook, the settings given by hand: the same model.
    module = load_recipe(str(tiny_recipe))
    run = RunDir.create(tmp_path / "notebook")
    run.settings = RunSettings(jit_compile=key == "true")
    module.main(module.Config(epochs=1), run)
    assert _read(tmp_path / "notebook", "seen.json") == by_cli
    assert not os.path.exists(tmp_path / "notebook" / "tensorboard")  # none asked for


def test_the_runner_hands_the_settings_down_and_puts_the_policy_back(tmp_path, monkeypatch):
    import keras

    from kerastune_lab.runs import RunDir
    from kerastune_lab.settings import RunSettings

    monkeypatch.setattr(backend, "accelerators", lambda: [backend.Device("cpu", "cpu")])
    run = RunDir.create(tmp_path / "run")
    run.write_json("config.json", {})
    assert run.settings == RunSettings()  # a RunDir made by hand: nothing chosen
    config = types.SimpleNamespace(precision="mixed_bfloat16", jit_compile="false")
    settings = training.run_settings(config, run)
    assert settings == RunSettings("mixed_bfloat16", False, str(tmp_path / "run" / "tensorboard"))
    assert _read(tmp_path / "run", "config.json")["precision"] == "mixed_bfloat16"
    with pytest.raises(RuntimeError):
        with training.dtype_policy(settings.precision):
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise RuntimeError("main failed")
    assert keras.mixed_precision.global_policy().name == "float32"
    with training.dtype_policy(None):  # no precision key: the policy is left as it is
        assert keras.mixed_precision.global_policy().name == "float32"


def test_no_module_of_the_package_keeps_global_state():
    # `global` (and `nonlocal`) nowhere in kerastune_lab: settings travel as
    # arguments (`run.settings`), caches through functools.
    import ast
    import pathlib

    import kerastune_lab

    found = []
    for path in pathlib.Path(kerastune_lab.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Global, ast.Nonlocal)):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_a_resumed_run_keeps_its_precision(monkeypatch):
    config = types.SimpleNamespace(precision="auto")
    run = types.SimpleNamespace(resumed=True,
                                read_json=lambda name: {"precision": "mixed_float16"})
    monkeypatch.setattr(backend, "accelerators", lambda: [backend.Device("cpu", "cpu")])
    assert training._precision(config, run) == (
        "mixed_float16", "the precision the run started in")
    run.resumed = False
    assert training._precision(config, run) == ("float32", "auto: CPU")
    assert training._precision(types.SimpleNamespace(), run) is None  # no precision key


def test_tensorboard_steps_continue_over_phases_and_resumes(tmp_path):
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((8, 2), "float32")
    # Phase 1: epochs 0-1; phase 2, as after a resume mid-epoch: epoch 2 from step 3.
    training.fit_resumable(model, x, 2, y=x[:, :1], batch_size=2, steps_per_epoch=4,
                           tensorboard=str(tmp_path), verbose=0)
    callback = training.tensorboard_callback(str(tmp_path), epoch=2, step=3, steps_per_epoch=4)
    model.fit(x[:2], x[:2, :1], batch_size=2, initial_epoch=2, epochs=3, callbacks=[callback],
              verbose=0)
    steps = [step for step, _ in scalars(tmp_path / "train")["batch_loss"]]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 12]
    assert training.tensorboard_callback("x", steps_per_epoch=1000).every == 20
    assert training.tensorboard_callback("x").every == 10


def test_no_tensorboard_outside_a_run_unless_asked(tmp_path, monkeypatch):
    import keras
    import numpy as np

    monkeypatch.chdir(tmp_path)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((4, 2), "float32")
    training.fit_resumable(model, x, 1, y=x[:, :1], batch_size=2, verbose=0)
    training.fit_resumable(model, x, 2, y=x[:, :1], batch_size=2, verbose=0, tensorboard=False)
    assert os.listdir(tmp_path) == []


def test_unknown_precision_is_refused(cli, tiny_recipe, tmp_path):
    assert_one_line_error(cli("run", tiny_recipe, "--output-dir", tmp_path / "r",
                              "precision=fp16"), "precision", "mixed_float16")


def test_backend_precision_error():
    with pytest.raises(KerastuneError, match="precision='half'"):
        backend.choose_precision("half", [backend.Device("cpu", "cpu")])


@pytest.mark.parametrize("recipe", ["cats_vs_dogs", "imdb_sentiment", "sarcastic_chat",
                                    "xray_pneumonia", "lora_chat"])
def test_every_recipe_has_the_precision_key_and_none_of_the_old_ones(recipe):
    import dataclasses

    from kerastune_lab.config import RENAMED
    from kerastune_lab.recipe import load_recipe

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_recipe(os.path.join(root, "recipes", f"{recipe}.py")).Config()
    assert config.precision == "auto"
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert fields["precision"].metadata["choices"] == backend.PRECISIONS
    assert not set(RENAMED) & set(fields)


def test_smoke_recipe_on_cpu(cli, tmp_path):
    """A real recipe: float32 on this CPU, TensorBoard over its two phases."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    result = cli("run", os.path.join(root, "recipes", "cats_vs_dogs.py"), "--smoke",
                 "--output-dir", out)
    assert result.code == 0, result
    assert _read(out, "config.json")["precision"] == "float32"
    train = scalars(out / "tensorboard" / "train")
    epochs = len(train["epoch_loss"])
    assert [step for step, _ in train["epoch_loss"]] == list(range(epochs))
    steps = [step for step, _ in train["batch_loss"]]  # one curve over both phases
    assert steps == list(range(1, len(steps) + 1)) and len(steps) % epochs == 0, steps


def test_tensorboard_keeps_the_steps_before_an_interrupt(tmp_path):
    import keras
    import numpy as np

    class Stop(keras.callbacks.Callback):  # as Backup raises Interrupted at a batch's end
        def on_train_batch_end(self, batch, logs=None):
            if batch == 4:
                raise KeyboardInterrupt

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.ones((16, 2), "float32")
    with pytest.raises(KeyboardInterrupt):
        training.fit_resumable(model, x, 2, y=x[:, :1], batch_size=2, steps_per_epoch=8,
                               tensorboard=str(tmp_path), callbacks=[Stop()], verbose=0)
    steps = [step for step, _ in scalars(tmp_path / "train")["batch_loss"]]
    assert steps == [1, 2, 3, 4, 5]
