"""remat=blocks (finetune/remat.py): each transformer block under keras.remat,
the loss and gradients the same as without it (JAX)."""

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune import lora
from kerastune_lab.finetune.remat import apply_remat, build_scope, remat_blocks
from tests.conftest import BACKEND

jax_only = pytest.mark.skipif(BACKEND != "jax", reason="compares jax gradients")


def _model(kind="llama", quantize="none"):
    import keras_hub

    from kerastune_lab.finetune.quantize import load_quantized

    model = load_quantized(keras_hub.models.CausalLM, testing.tiny_preset(kind), quantize,
                           preprocessor=None)
    lora.enable_lora(model, 4, 8.0, "query,value")
    return model


def _loss_and_grads(model):
    import jax
    import keras

    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(4, 100, (2, 12)).astype("int32"),
         "padding_mask": np.ones((2, 12), bool)}
    y = rng.integers(4, 100, (2, 12)).astype("int32")
    trainable = [v.value for v in model.trainable_variables]
    frozen = [v.value for v in model.non_trainable_variables]

    def loss(trainable):
        logits, _ = model.stateless_call(trainable, frozen, x, training=True)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
            y, logits, from_logits=True))

    value, grads = jax.jit(jax.value_and_grad(loss))(trainable)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(trainable))
    return float(value), [np.asarray(g) for g in grads], jaxpr


@jax_only
@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_blocks_give_the_same_loss_and_gradients(quantize):
    model = _model("llama", quantize)
    loss, grads, jaxpr = _loss_and_grads(model)
    assert "checkpoint" not in jaxpr and "remat" not in jaxpr
    apply_remat(model, "blocks")
    loss_remat, grads_remat, jaxpr_remat = _loss_and_grads(model)
    # One rematerialised function a transformer block (the tiny Llama has 2).
    assert jaxpr_remat.count("checkpoint[") + jaxpr_remat.count("remat2[") >= 2
    assert loss_remat == pytest.approx(loss, rel=1e-6)
    assert len(grads) == len(grads_remat) == 8  # A and B on query and value, 2 blocks
    for g, g_remat in zip(grads, grads_remat):
        np.testing.assert_allclose(g_remat, g, rtol=1e-5, atol=1e-7)
    assert any(np.abs(g).max() > 0 for g in grads)


@jax_only
def test_generation_still_works_with_blocks_rematerialised():
    import keras_hub

    model = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    model.compile(sampler="greedy")
    before = model.generate("hello", max_length=12)
    remat_blocks(model)
    assert model.generate("hello", max_length=12) == before


def test_dropout_in_blocks_is_refused_in_one_line():
    import keras_hub

    model = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("gpt2"),
                                                  preprocessor=None)
    with pytest.raises(KerastuneError, match=r"remat=blocks: GPT2Backbone has dropout 0.1"):
        remat_blocks(model)


def test_unknown_mode_is_refused():
    with pytest.raises(KerastuneError, match=r"remat='full': expected one of none, "
                                             r"activations, blocks"):
        build_scope("full")
