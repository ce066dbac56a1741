"""Multi-device training on 8 virtual CPU devices (JAX), in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from kerastune_lab.distribute import make_distribution, remat_scope
from kerastune_lab.errors import KerastuneError
from tests.conftest import BACKEND

SCRIPT = r"""
import json, os, sys
import numpy as np
import keras, keras_hub
from kerastune_lab import testing
from kerastune_lab.distribute import make_distribution, remat_scope

preset = testing.tiny_preset("llama")
rng = np.random.default_rng(0)
x = {"token_ids": rng.integers(4, 100, (16, 24)).astype("int32"),
     "padding_mask": np.ones((16, 24), "int32")}
y = rng.integers(4, 100, (16, 24)).astype("int32")

def losses(mode, remat="none"):
    dist = make_distribution(mode, keras_hub.models.LlamaBackbone, model_parallel=4)
    keras.distribution.set_distribution(dist)
    keras.utils.set_random_seed(1)
    with remat_scope(remat):
        model = keras_hub.models.CausalLM.from_preset(preset)
    model.preprocessor = None
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    spec = None
    if mode == "model":
        kernel = model.backbone.get_layer("transformer_layer_0")._self_attention_layer._query_dense.kernel
        spec = str(kernel.value.sharding.spec)
    keras.distribution.set_distribution(None)
    return history.history["loss"], spec

out = {"devices": len(keras.distribution.list_devices())}
for mode, remat in [("none", "none"), ("data", "none"), ("model", "none"), ("none", "activations")]:
    out[f"{mode}/{remat}"] = losses(mode, remat)
print(json.dumps(out))
"""  # noqa: E501  (a line of the script above: string content, not broken)


@pytest.mark.large  # 8 virtual devices in a subprocess, four trainings
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the jax backend only "
                    "(test_unavailable_distribution_is_a_clear_error checks the others refuse)")
def test_distributed_losses_match_single_device(tmp_path):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    single, _ = out["none/none"]
    assert single[-1] < single[0]  # it trained
    for key in ("data/none", "model/none", "none/activations"):
        assert out[key][0] == pytest.approx(single, rel=1e-4, abs=1e-5), key
    # The query kernel (hidden, heads, head_dim) is sharded over both mesh axes.
    assert "model" in out["model/none"][1] and "batch" in out["model/none"][1]


def test_bad_modes():
    with pytest.raises(KerastuneError,
                       match="distribute='pipeline': expected one of none, data, model"):
        make_distribution("pipeline")
    with pytest.raises(KerastuneError, match="remat='full'"):
        remat_scope("full")
    assert make_distribution("none") is None



def test_unavailable_distribution_is_a_clear_error():
    # One CPU device in this process: on jax the device count is the problem,
    # on the other backends the backend is.
    expected = ("needs 2 or more devices; found 1" if BACKEND == "jax"
                else f"needs the jax backend.*uses {BACKEND}")
    for mode in ("data", "model"):
        with pytest.raises(KerastuneError, match=expected):
            make_distribution(mode)


def _tiny_llama():
    import keras_hub

    from kerastune_lab import testing

    with open(os.path.join(testing.tiny_preset("llama"), "config.json")) as f:
        return keras_hub.models.LlamaBackbone, json.load(f)["config"]


def test_model_axis_sizes_come_from_the_layout_map_and_the_weight_shapes():
    # Layout arithmetic only (no devices, no weights allocated): any backend.
    from kerastune_lab.distribute import model_parallel_sizes, uneven_weight

    cls, config = _tiny_llama()  # 4 query heads, 2 key/value heads, hidden 16
    # On 8 devices, 8 on the model axis would split the 4 heads of the
    # attention output kernel (4, 4, 16) eight ways; 2 on the model axis
    # leaves 4 on the batch axis, which the layout map puts on the 2
    # key/value heads of the key kernel (16, 2, 4).
    assert model_parallel_sizes(cls, config, 8) == [4]
    uneven = uneven_weight(cls, config, 8, 8)
    assert uneven.startswith(
        "transformer_layer_0/self_attention/attention_output/kernel (4, 4, 16)")
    assert "model axis of 8" in uneven
    assert uneven_weight(cls, config, 8, 4) is None
    assert uneven_weight(cls, config, 8, 2).startswith(
        "transformer_layer_0/self_attention/key/kernel (16, 2, 4)")
    assert model_parallel_sizes(
        cls, dict(config, num_query_heads=3, num_key_value_heads=3), 8) == []


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the jax backend only")
def test_recipe_refuses_a_model_axis_that_does_not_divide_the_weights(tmp_path):
    from tests.conftest import assert_one_line_error, recipe_path, run_cli

    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = run_cli("run", recipe_path("lora_chat"), "--smoke", "--output-dir",
                     tmp_path / "run", "distribute=model", "model_parallel=8", env=env)
    assert_one_line_error(result, "model_parallel=8: the weight transformer_layer_0/",
                          "does not split evenly; sizes that fit 8 devices: 4")
    assert not os.path.exists(tmp_path / "run")


DATA_SCRIPT = r"""
import json
import numpy as np
import keras
from kerastune_lab.distribute import make_distribution

dist = make_distribution("data")
keras.distribution.set_distribution(dist)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
model.compile("sgd", "mse")
model.fit(np.ones((16, 4), "float32"), np.ones((16, 2), "float32"), batch_size=16, verbose=0)
kernel = model.layers[0].kernel.value
layout = dist.get_data_layout((16, 4))
print(json.dumps({
    "devices": [str(d) for d in keras.distribution.list_devices()],
    "mesh": list(dist.device_mesh.shape), "mesh_devices": [str(d) for d in
                                                            dist.device_mesh.devices.ravel()],
    "batch_axis": layout.axes[0], "kernel_devices": len(kernel.sharding.device_set)}))
"""


@pytest.mark.large  # 8 virtual devices in a subprocess
@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the jax backend only")
def test_data_parallel_uses_every_device():
    # What a TPU v3-8 gives jax: 8 devices (cores); distribute=data puts the
    # batch over all 8 and a copy of each weight on each.
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", DATA_SCRIPT], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["devices"]) == 8
    assert out["mesh"] == [8] and sorted(out["mesh_devices"]) == sorted(out["devices"])
    assert out["batch_axis"] == "batch"
    assert out["kernel_devices"] == 8


def _mesh_of(batch_devices, model_devices=1, name="ModelParallel"):
    """What `batch_shards` reads of a distribution, without the devices."""
    import types

    mesh = types.SimpleNamespace(shape=(batch_devices, model_devices),
                                 axis_names=("batch", "model"))
    return type(name, (), {"device_mesh": mesh, "batch_dim_name": "batch"})()


def test_batches_split_evenly_over_the_devices():
    import numpy as np

    from kerastune_lab.data.packing import Packed
    from kerastune_lab.distribute import batch_shards, call_filled, fill_windows

    assert batch_shards(None, 3) == 1
    assert batch_shards(_mesh_of(4, 2), 8) == 4
    with pytest.raises(KerastuneError, match=r"^batch_size=6: expected a multiple of the 4 "
                                             r"devices on the batch axis \(distribute=data\)$"):
        batch_shards(_mesh_of(4, name="DataParallel"), 6)

    ids = np.arange(15, dtype="int32").reshape(5, 3)
    packed = Packed(ids, np.ones((5, 3), "float32"), np.ones((5, 3), "int32"), 5, 0, 0, 0.0, 0.0)
    assert fill_windows(packed, 4, shards=1) is packed  # one device: as it is
    filled = fill_windows(packed, 4, shards=2)
    assert len(filled.token_ids) == 8 and len(filled.segment_ids) == 8
    np.testing.assert_array_equal(filled.token_ids[5:], ids[:3])  # copies of the first
    assert filled.weights[:5].all() and not filled.weights[5:].any()  # weighted 0: no loss
    assert fill_windows(filled, 4, shards=2) is filled

    seen = []
    assert call_filled(lambda xs: seen.append(xs) or [x.upper() for x in xs],
                       ["a", "b", "c"], 2) == ["A", "B", "C"]
    assert seen == [["a", "b", "c", "a"]]
    assert call_filled(lambda xs: 1 / 0, [], 4) == []
