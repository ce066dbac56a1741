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


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_model_loaded_quantized_saves_and_reloads_its_weights(mode, tmp_path):
    # Built under a DTypePolicyMap: Keras' saving read the quantization mode
    # from the map (none) and failed with "Invalid dtype: object".
    import keras
    import keras_hub

    preset = testing.tiny_preset("llama")
    loaded = load_quantized(keras_hub.models.CausalLM, preset, mode, preprocessor=None)
    path = str(tmp_path / "q.weights.h5")
    loaded.save_weights(path)
    other = quantize(keras_hub.models.CausalLM.from_preset(preset, preprocessor=None), mode)
    for weight in other.weights:  # overwritten by the load below
        weight.assign(np.zeros(weight.shape, keras.backend.standardize_dtype(weight.dtype)))
    other.load_weights(path)
    want = {w.path: keras.ops.convert_to_numpy(w) for w in loaded.weights}
    got = {w.path: keras.ops.convert_to_numpy(w) for w in other.weights}
    assert sorted(want) == sorted(got)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_lean_host_quantizers_give_keras_values(dtype, monkeypatch):
    # load_quantized runs Keras' numpy quantizers slice by slice (no whole-size
    # float temporaries): the values must be Keras' own, bit for bit.
    import keras
    from keras.src.quantizers import quantizers

    from kerastune_lab.finetune import quantize_load as module

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


@pytest.mark.parametrize("mode,shard_gb,uneven", [("int8", None, False), ("int4", None, True),
                                                  ("int8", 2e-5, True)])
def test_sliced_load_gives_keras_values(mode, shard_gb, uneven, tmp_path, monkeypatch):
    # Large Dense and embedding layers are quantized a slice twin at a time,
    # read a slice at a time from a bfloat16 preset's h5 file (sharded: a
    # layer split across files is read whole): Keras' own values, bit for bit.
    import keras
    import keras_hub

    from kerastune_lab.finetune import quantize_load

    float_lm = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"),
                                                     preprocessor=None, dtype="bfloat16")
    float_lm.save_to_preset(str(tmp_path), **({"max_shard_size": shard_gb} if shard_gb else {}))
    monkeypatch.setattr(quantize_load, "_SLICE", 200)  # slices at test sizes
    if uneven:  # slices that do not divide the layer: a smaller last one
        monkeypatch.setattr(quantize_load, "_step", lambda size, per_unit: 7)
    sliced, real = [], quantize_load._load_sliced

    def spy(layer, *args):
        done = real(layer, *args)
        sliced.append(type(layer).__name__) if done else None
        return done

    monkeypatch.setattr(quantize_load, "_load_sliced", spy)
    after = quantize(keras_hub.models.CausalLM.from_preset(str(tmp_path), preprocessor=None,
                                                           dtype="bfloat16"), mode)
    while_loading = load_quantized(keras_hub.models.CausalLM, str(tmp_path), mode,
                                   dtype="bfloat16", preprocessor=None)
    assert {"ReversibleEmbedding", "Dense"} <= set(sliced)
    want = {w.path: keras.ops.convert_to_numpy(w) for w in after.weights}
    got = {w.path: keras.ops.convert_to_numpy(w) for w in while_loading.weights}
    assert sorted(want) == sorted(got)
    for path, value in want.items():
        assert got[path].dtype == value.dtype, path
        np.testing.assert_array_equal(got[path], value, err_msg=path)


def test_read_slice_equals_keras_store(tmp_path):
    # A slice read from the h5 file is Keras' store value, sliced (bfloat16 too).
    import h5py
    import ml_dtypes
    from keras.src.saving.saving_lib import H5IOStore

    from kerastune_lab.finetune.quantize_load import _entries, _read

    path = str(tmp_path / "w.weights.h5")
    values = np.random.default_rng(0).standard_normal((2, 30, 20)).astype("float32")
    store = H5IOStore(path, mode="w")
    entry = store.make("layer")
    entry["0"] = values[0].astype(ml_dtypes.bfloat16)
    entry["1"] = values[1]
    store.close()
    store = H5IOStore(path, mode="r")
    entry = store.get("layer")
    lazy = _entries(entry)
    assert all(isinstance(value, h5py.Dataset) for value in lazy.values())
    for key in ("0", "1"):
        whole = entry[key]
        for index in [np.s_[3:11, :], np.s_[:, 5:19], np.s_[:, :]]:
            part = _read(lazy[key], index)
            assert part.dtype == whole.dtype
            np.testing.assert_array_equal(part.view("uint8"),
                                          np.ascontiguousarray(whole[index]).view("uint8"))
    store.close()
