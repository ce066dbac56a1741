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
