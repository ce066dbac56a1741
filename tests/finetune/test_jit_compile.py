"""`jit_compile` per backend: the choice, the recipe key that overrides it,
and compiled training (torch.compile on torch, XLA on jax) that matches eager.

The two compiled-against-eager tests compile a tiny KerasHub model's train
step, which torch.compile takes a minute or more to do on a CPU: they are
`large`, and run on torch only (jax and tensorflow already train compiled,
"auto", in every recipe test; their eager twin is the slow part there).
"""

import dataclasses

import numpy as np
import pytest

from kerastune_lab import testing, training
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir
from tests.conftest import BACKEND

torch_only = pytest.mark.skipif(BACKEND != "torch", reason="torch.compile: torch only")


@pytest.mark.parametrize("backend_name", ["jax", "tensorflow", "torch"])
def test_choice_per_backend(backend_name):
    auto = training.TORCH_AUTO_JIT_COMPILE if backend_name == "torch" else "auto"
    assert training.choose_jit_compile("auto", backend_name) == auto
    assert training.choose_jit_compile("true", backend_name) is True
    assert training.choose_jit_compile("false", backend_name) is False
    assert training.choose_jit_compile(True, backend_name) is True
    assert training.choose_jit_compile(False, backend_name) is False


def test_torch_auto_is_eager():
    # What the README's table decides (benchmarks/torch_overhead.py --compile).
    assert training.choose_jit_compile("auto", "torch") is False


def test_bad_value_is_a_one_line_error():
    with pytest.raises(KerastuneError, match=r"^jit_compile='fast': expected one of auto, "
                                             r"true, false$"):
        training.choose_jit_compile("fast", "torch")


@dataclasses.dataclass
class _Config:
    jit_compile: str = "auto"


def test_the_run_key_reaches_the_compiled_model_through_the_helpers(tmp_path):
    import keras

    from kerastune_lab.finetune.causal_lm import compile_causal_lm
    from kerastune_lab.finetune.two_phase import compile_classifier

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    for key, expected in (("true", True), ("false", False)):
        settings = training.run_settings(_Config(key), RunDir(str(tmp_path)))
        compile_classifier(model, 1e-3, jit_compile=settings.jit_compile)
        assert model.jit_compile is expected
        compile_causal_lm(model, 1e-3, jit_compile=settings.jit_compile)
        assert model.jit_compile is expected
        # No hidden state: a call without the argument is per backend, in a
        # run or not.
        compile_classifier(model, 1e-3)
        assert model.jit_compile == _resolved_auto(model)
        compile_causal_lm(model, 1e-3)
        assert model.jit_compile == _resolved_auto(model)
    settings = training.run_settings(_Config("auto"), RunDir(str(tmp_path)))
    compile_classifier(model, 1e-3, jit_compile=settings.jit_compile)
    assert model.jit_compile == _resolved_auto(model)


def test_fine_tune_compiles_both_phases_with_its_jit_compile(monkeypatch):
    from kerastune_lab.finetune.two_phase import fine_tune

    model = testing.build_tiny_task("resnet")
    x = np.zeros((4, 32, 32, 3), "float32")
    y = np.zeros(4, "int32")
    compiled = []
    original = type(model).compile

    def spy(self, *args, **kwargs):
        compiled.append(kwargs["jit_compile"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "compile", spy)
    fine_tune(model, (x, y), None, 1, 1e-2, 1, 1e-3, jit_compile=False, batch_size=4,
              verbose=0)
    assert compiled == [False, False] and model.jit_compile is False


def _resolved_auto(model):
    """What Keras makes of our "auto" for `model` on this backend."""
    import keras

    if keras.config.backend() == "torch":
        return training.TORCH_AUTO_JIT_COMPILE
    return model._resolve_auto_jit_compile()


def _twin(model):
    """A second model of the same config and weights, dropout off in both
    (dropout draws differ between eager and compiled code)."""
    config = model.backbone.get_config()
    if "dropout" in config:
        config["dropout"] = 0.0
    backbone = type(model.backbone).from_config(config)
    task = type(model)(backbone=backbone, **_task_kwargs(model))
    task.preprocessor = None
    task.set_weights(model.get_weights())
    return task


def _task_kwargs(model):
    return {"num_classes": model.num_classes} if hasattr(model, "num_classes") else {}


@pytest.mark.large
@torch_only
def test_compiled_two_phase_classifier_matches_eager(tmp_path):
    """ResNet in two phases (frozen backbone, then all, recompiled), through
    `fine_tune`'s jit_compile: the same losses and predictions."""
    from kerastune_lab.finetune.two_phase import fine_tune

    base = testing.build_tiny_task("resnet")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    results = {}
    for key in ("false", "true"):
        model = _twin(base)
        histories = fine_tune(model, (x, y), None, 1, 1e-2, 2, 1e-3, batch_size=8,
                              shuffle=False, verbose=0, jit_compile=key == "true")
        assert model.jit_compile is (key == "true")
        results[key] = ([h.history["loss"] for h in histories.values()],
                        model.predict(x, batch_size=8, verbose=0))
    (eager_loss, eager_pred), (jit_loss, jit_pred) = results["false"], results["true"]
    assert len(jit_loss) == 2
    for eager, jit in zip(eager_loss, jit_loss):
        np.testing.assert_allclose(jit, eager, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jit_pred, eager_pred, rtol=1e-3, atol=1e-4)


@pytest.mark.large
@torch_only
def test_compiled_causal_lm_matches_eager():
    """GPT-2 with the causal-LM compile (sample weights): the same losses,
    evaluation and predictions compiled and eager."""
    from kerastune_lab.finetune.causal_lm import compile_causal_lm

    base = testing.build_tiny_task("gpt2")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, base.backbone.vocabulary_size, (8, 17))
    x = {"token_ids": ids[:, :-1].astype("int32"), "padding_mask": np.ones((8, 16), bool)}
    y = ids[:, 1:].astype("int32")
    weights = (rng.random(y.shape) > 0.3).astype("float32")
    results = {}
    for jit in (False, True):
        model = _twin(base)
        compile_causal_lm(model, 1e-2, jit_compile=jit)
        assert model.jit_compile is jit
        history = model.fit(x, y, sample_weight=weights, batch_size=4, epochs=2,
                            shuffle=False, verbose=0)
        results[jit] = (history.history["loss"],
                        model.evaluate(x, y, sample_weight=weights, batch_size=4, verbose=0),
                        model.predict(x, batch_size=4, verbose=0))
    for eager, jit in zip(results[False], results[True]):
        np.testing.assert_allclose(np.asarray(jit), np.asarray(eager), rtol=1e-4, atol=1e-4)
    assert results[False][0][1] < results[False][0][0]  # it trained
