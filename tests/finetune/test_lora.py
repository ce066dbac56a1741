"""Standard LoRA: shapes and counts, training only the factors, adapter files
that survive a fresh process (float and int8 base), clear errors, merging."""

import os
import subprocess
import sys

import numpy as np

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from kerastune_lab.finetune.quantize import quantize
from tests.conftest import BACKEND, raises_one_line

RANK = 2
# Adapters over a float base, weight-only int8 (ours) and Keras' default int8.
MODES = ("none", "int8", "int8_dynamic")


def _np(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def _tokens(seed=0, batch=4, length=12):
    ids = np.random.default_rng(seed).integers(4, 100, (batch, length))
    ids = ids.astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _tiny_llama(mode="none"):
    import keras_hub

    preset = testing.tiny_preset("llama")
    lm = keras_hub.models.CausalLM.from_preset(preset, preprocessor=None)
    return quantize(lm, mode)


def _perturb(model, seed=0):
    """Random A and B, so the update is not zero."""
    rng = np.random.default_rng(seed)
    for layer in lora.lora_state(model).layers.values():
        layer.lora_a.assign(rng.normal(0, 0.5, layer.lora_a.shape))
        layer.lora_b.assign(rng.normal(0, 0.5, layer.lora_b.shape))


def test_factorisation_of_llama_projections():
    query = lora.Factorisation("bqm,muh->bquh", (16, 4, 8))
    assert query.shapes(RANK) == ((16, RANK), (RANK, 32))
    output = lora.Factorisation("bquh,uhm->bqm", (4, 8, 16))
    assert output.shapes(RANK) == ((32, RANK), (RANK, 16))
    # The two-step path (x A) B equals x (A B) laid out as the kernel.
    rng = np.random.default_rng(0)
    for f, x in ((query, rng.normal(size=(2, 3, 16))),
                 (output, rng.normal(size=(2, 3, 4, 8)))):
        a, b = rng.normal(size=f.shapes(RANK)[0]), rng.normal(size=f.shapes(RANK)[1])
        hidden = np.einsum(f.equation_a, x, a.reshape(f.in_dims + (RANK,)))
        two_step = np.einsum(f.equation_b, hidden, b.reshape((RANK,) + f.out_dims))
        one_step = np.einsum(f.equation, x, f.delta(a, b, 1.0))
        np.testing.assert_allclose(two_step, one_step, rtol=1e-10)
    raises_one_line(lambda: lora.Factorisation("ab,ab->ab", (3, 3)), "'ab,ab->ab'")


def test_layers_compute_the_standard_update(tmp_path):
    import keras

    def build():
        inputs = keras.Input((5, 6))
        hidden = keras.layers.Dense(8, activation="relu", name="ffn")(inputs)
        outputs = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 3),
                                           bias_axes="de", name="heads")(hidden)
        return keras.Model(inputs, outputs)

    model = build()
    x = np.random.default_rng(1).normal(size=(2, 5, 6)).astype("float32")
    before = _np(model(x))
    lora.enable_lora(model, RANK, alpha=4, targets="*")
    assert [(w.name, tuple(w.shape)) for w in model.trainable_weights] == [
        ("lora_a", (6, RANK)), ("lora_b", (RANK, 8)),
        ("lora_a", (8, RANK)), ("lora_b", (RANK, 6))]
    np.testing.assert_array_equal(_np(model(x)), before)  # B starts at zero
    _perturb(model)
    ffn, heads = model.get_layer("ffn"), model.get_layer("heads")
    s = 4 / RANK
    ffn_kernel = _np(ffn.kernel) + s * _np(ffn.lora_a) @ _np(ffn.lora_b)
    h = np.maximum(x @ ffn_kernel + _np(ffn.bias), 0)  # update before the relu
    update = (_np(heads.lora_a) @ _np(heads.lora_b)).reshape(8, 2, 3)
    expected = np.einsum("abc,cde->abde", h, _np(heads.kernel) + s * update)
    expected += _np(heads.bias)
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-4, atol=1e-5)
    assert ffn.get_config()["activation"] == "relu"

    # Keras checkpoints (save_weights, BackupAndRestore) keep A and B unmerged.
    model.save_weights(tmp_path / "m.weights.h5")
    clone = build()
    lora.enable_lora(clone, RANK, alpha=4, targets="*")
    clone.load_weights(tmp_path / "m.weights.h5")
    np.testing.assert_allclose(_np(clone(x)), _np(model(x)), rtol=1e-6)
    clone_kernel = _np(clone.get_layer("ffn").kernel)
    np.testing.assert_array_equal(clone_kernel, _np(ffn.kernel))


def test_llama2_7b_counts_without_allocating():
    import keras_hub

    # Llama-2-7B's config.json; the backbone is built without weights in memory.
    config = dict(vocabulary_size=32000, num_layers=32, num_query_heads=32,
                  num_key_value_heads=32, hidden_dim=4096, intermediate_dim=11008,
                  dtype="float32")
    llama = keras_hub.models.LlamaBackbone
    counts = lora.count_lora_parameters(llama, config, rank=8)
    layers, h, i, r = 32, 4096, 11008, 8
    assert counts["trainable"] == layers * 2 * (h * r + r * h) == 4_194_304
    assert counts["total"] - counts["trainable"] == 6_738_415_616  # Llama-2-7B
    assert counts["adapter_bytes"] < 20e6
    every = lora.count_lora_parameters(llama, config, rank=8, targets=lora.ALL_TARGETS)
    assert every["trainable"] == layers * (4 * 2 * h * r + 3 * r * (h + i))


def test_enable_lora_bad_input():
    lm = _tiny_llama()
    raises_one_line(lambda: lora.enable_lora(lm, 0), "lora_rank=0")
    raises_one_line(lambda: lora.enable_lora(lm, RANK, alpha=-1), "lora_alpha=-1")
    raises_one_line(lambda: lora.enable_lora(lm, RANK, targets=("query", "qkv")), "'qkv'",
            "attention_output")  # names the layers there are
    raises_one_line(lambda: quantize(lm, "int3"), "quantize='int3'")
    lora.enable_lora(lm, RANK)
    raises_one_line(lambda: lora.enable_lora(lm, RANK), "already")
    raises_one_line(lambda: quantize(lm, "int8"), "before enable_lora")


def test_lora_is_visible_through_the_backbone_helpers():
    from kerastune_lab.finetune import _backbone

    lm = _tiny_llama()
    assert not _backbone.has_lora(lm)
    lora.enable_lora(lm, RANK)
    assert _backbone.has_lora(lm)
    assert _backbone.lora_state(lm) is lora.lora_state(lm)
    carriers = {path for path, layer in _backbone.layer_paths(lm).items()
                if _backbone.carries_lora(layer)}
    assert carriers == set(lora.lora_state(lm).layers)


FRESH_PROCESS = r"""
import os, sys
import numpy as np
import keras, keras_hub
from kerastune_lab.finetune import lora
preset, work = sys.argv[1], sys.argv[2]
x = dict(np.load(f"{work}/tokens.npz"))
out = {}
def load(path):
    return keras_hub.models.CausalLM.from_preset(path, preprocessor=None)
def logits(model):
    return keras.ops.convert_to_numpy(model(x))
for mode in sys.argv[3:]:
    lm = load(preset)
    lora.load_adapter(lm, f"{work}/{mode}.lora.h5")  # quantizes as recorded
    out[f"loaded_{mode}"] = logits(lm)
    if not os.path.isdir(f"{work}/merged_{mode}"):
        continue
    # The same adapter on the float base (what an int8 adapter merges into).
    lm = load(preset)
    lora.load_adapter(lm, f"{work}/{mode}.lora.h5", quantize_base=False)
    out[f"float_base_{mode}"] = logits(lm)
    # The merged preset loads with plain keras_hub.
    merged = load(f"{work}/merged_{mode}")
    out[f"merged_{mode}"] = logits(merged)
    out[f"merged_weights_{mode}"] = np.array(len(merged.backbone.weights))
np.savez(f"{work}/fresh.npz", **out)
"""


def _non_lora(model):
    return {w.path: _np(w).copy() for w in model.weights
            if not w.name.startswith("lora_")}


def test_adapter_round_trip_in_a_fresh_process(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    preset = testing.tiny_preset("llama")
    x = _tokens()
    np.savez(tmp_path / "tokens.npz", **x)
    expected = {}
    for mode in MODES:
        lm = _tiny_llama()
        if mode == "int8_dynamic":
            lm.backbone.quantize("int8")  # plain Keras int8: recorded as int8_dynamic
        else:
            quantize(lm, mode)
        if mode == "none":
            plain_weights = len(lm.backbone.weights)
        lora.enable_lora(lm, RANK)
        frozen = _non_lora(lm)
        if mode == "int8_dynamic":
            _perturb(lm)  # Keras' default int8 barely trains LoRA (see quantize.py)
        else:
            loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            lm.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss_fn)
            loss = lm.fit(x, x["token_ids"], batch_size=4, epochs=3, shuffle=False,
                          verbose=0).history["loss"]
            assert loss[-1] < loss[0] - 3e-3, (mode, loss)  # int8 learns as float
        expected[mode] = _np(lm(x))
        path = lora.save_adapter(lm, tmp_path / f"{mode}.lora.h5", preset=preset)
        # Training moved only A and B; saving did not fold them into the base.
        after = _non_lora(lm)
        assert all(np.array_equal(after[k], frozen[k]) for k in frozen)
        np.testing.assert_array_equal(_np(lm(x)), expected[mode])
        counts = lora.parameter_counts(lm)
        assert counts["trainable"] == 2 * 2 * (16 * RANK) + 2 * RANK * (16 + 8)
        assert os.path.getsize(path) < 4 * counts["trainable"] + 20_000  # factors only
        metadata = lora.read_adapter_metadata(path)
        recorded = (metadata["rank"], metadata["alpha"], metadata["quantize"])
        assert recorded == (RANK, RANK, mode)
        assert metadata["base"]["shape"]["hidden_dim"] == 16
        assert "transformer_layer_1/self_attention/value" in metadata["layers"]
        if mode != "int8_dynamic":
            lora.save_merged_preset(path, tmp_path / f"merged_{mode}")

    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, preset, str(tmp_path), *MODES],
        env=dict(os.environ, KERAS_BACKEND=BACKEND), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = np.load(tmp_path / "fresh.npz")

    def diff(a, b):
        return np.abs(fresh[a] - (expected[b] if b in expected else fresh[b])).max()

    for mode in MODES:
        assert diff(f"loaded_{mode}", mode) <= 1e-5, mode
    for mode in ("none", "int8"):
        assert diff(f"merged_{mode}", f"float_base_{mode}") <= 1e-5, mode
        assert int(fresh[f"merged_weights_{mode}"]) == plain_weights  # no LoRA left
    assert diff("merged_none", "none") <= 1e-5
    # The int8 run merged into the float kernels: close to the int8 model.
    assert diff("merged_int8", "int8") < 0.02


def test_load_adapter_bad_input(tmp_path):
    import keras_hub

    lm = _tiny_llama()
    lora.enable_lora(lm, RANK)
    _perturb(lm)
    path = lora.save_adapter(lm, tmp_path / "a.lora.h5")

    def fails(model, *fragments, file=path):
        raises_one_line(lambda: lora.load_adapter(model, file), *fragments)

    fails(lora.enable_lora(_tiny_llama(), RANK + 1), "rank=2", "rank=3")
    attention = lora.enable_lora(_tiny_llama(), RANK, targets=lora.ATTENTION_TARGETS)
    fails(attention, "targets")
    smaller = keras_hub.models.LlamaBackbone(
        vocabulary_size=120, num_layers=1, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=32)
    fails(smaller, "num_layers=2", "num_layers=1")
    gpt2 = keras_hub.models.GPT2Backbone(
        vocabulary_size=120, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=32)
    fails(gpt2, "LlamaBackbone", "GPT2Backbone")
    fails(_tiny_llama("int8"), "quantize=none", "quantize=int8")
    (tmp_path / "junk.lora.h5").write_bytes(b"not an h5 file")
    fails(_tiny_llama(), "not a kerastune LoRA adapter", file=tmp_path / "junk.lora.h5")
    fails(_tiny_llama(), "does not exist", file=tmp_path / "missing.lora.h5")
    raises_one_line(lambda: lora.save_adapter(lm, tmp_path / "a.h5"), ".lora.h5")
    raises_one_line(lambda: lora.merge_adapter(lm, path), "plain float base")
    raises_one_line(lambda: lora.save_merged_preset(path, tmp_path / "m"), "no base preset")
    # The good case: each layer gets the factors saved under its path.
    fresh = _tiny_llama()
    assert lora.load_adapter(fresh, path)["targets"] == ["query", "value"]
    for layer_path, layer in lora.lora_state(fresh).layers.items():
        original = lora.lora_state(lm).layers[layer_path]
        np.testing.assert_array_equal(_np(layer.lora_a), _np(original.lora_a))
        np.testing.assert_array_equal(_np(layer.lora_b), _np(original.lora_b))
