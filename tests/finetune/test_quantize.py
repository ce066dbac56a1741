"""Quantizing while loading gives the model that loading, then quantizing gives."""

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.finetune.quantize import load_quantized, quantization_mode, quantize


@pytest.mark.parametrize("mode", ["int8"])  # int4 likewise (slower eager on JAX)
def test_load_quantized_equals_quantize_after_loading(mode):
    import keras
    import keras_hub

    preset = testing.tiny_preset("llama")
    after = quantize(keras_hub.models.CausalLM.from_preset(preset, preprocessor=None), mode)
    while_loading = load_quantized(keras_hub.models.CausalLM, preset, mode,
                                   preprocessor=None)
    assert quantization_mode(while_loading) == mode
    # Built quantized: the projections never held a float kernel.
    query = while_loading.backbone.get_layer("transformer_layer_0")._self_attention_layer
    assert keras.backend.standardize_dtype(query._query_dense._kernel.dtype) == "int8"
    assert sorted(w.path for w in while_loading.weights) == sorted(w.path for w in after.weights)
    ids = np.random.default_rng(0).integers(4, 100, (2, 10)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(while_loading(x)),
                                  keras.ops.convert_to_numpy(after(x)))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_lean_host_quantizers_give_keras_values(dtype, monkeypatch):
    # load_quantized runs Keras' numpy quantizers slice by slice (no whole-size
    # float temporaries): the values must be Keras' own, bit for bit.
    import keras
    from keras.src.quantizers import quantizers

    from kerastune_lab.finetune import quantize as module

    monkeypatch.setattr(module, "_CHUNK", 1000)  # many slices at test sizes
    rng = np.random.default_rng(0)
    eps = keras.backend.epsilon()
    for shape, axis in [((300, 70), 0), ((300, 70), -1), ((40, 6, 50), 0), ((6, 50, 40), (0, 1))]:
        x = keras.ops.convert_to_tensor(rng.standard_normal(shape).astype("float32") * 3, dtype)
        for value_range in [(-127, 127), (-8, 7)]:
            want = quantizers.abs_max_quantize(x, axis, value_range, "int8", eps, True)
            got = module._lean_abs_max_quantize(x, axis, value_range, "int8", eps, True,
                                                original=quantizers.abs_max_quantize)
            for a, b in zip(want, got):
                a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)
    x = keras.ops.convert_to_tensor(rng.standard_normal((512, 40)).astype("float32"), dtype)
    grouped = quantizers._abs_max_quantize_grouped_with_zero_point_numpy
    want = grouped(x, 128, (-8, 7), "int8", eps)
    got = module._lean_grouped_numpy(x, 128, (-8, 7), "int8", eps, original=grouped)
    for a, b in zip(want, got):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_load_quantized_bfloat16_int4_equals_quantize_after_loading():
    import keras
    import keras_hub

    preset = testing.tiny_preset("llama")
    after = quantize(keras_hub.models.CausalLM.from_preset(preset, preprocessor=None,
                                                           dtype="bfloat16"), "int4")
    while_loading = load_quantized(keras_hub.models.CausalLM, preset, "int4",
                                   dtype="bfloat16", preprocessor=None)
    want = {w.path: keras.ops.convert_to_numpy(w) for w in after.weights}
    got = {w.path: keras.ops.convert_to_numpy(w) for w in while_loading.weights}
    assert sorted(want) == sorted(got)
    for path, value in want.items():
        np.testing.assert_array_equal(got[path], value, err_msg=path)
