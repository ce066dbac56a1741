"""The accelerator, from each framework's device descriptions (faked here),
and the mixed-precision policy chosen for it."""

import types

import pytest

from kerastune_lab import backend
from kerastune_lab.errors import KerastuneError
from tests.conftest import BACKEND

GiB = 2**30


def jax_device(kind, platform="gpu", memory=None, capability=None):
    device = types.SimpleNamespace(platform=platform, device_kind=kind,
                                   memory_stats=lambda: {"bytes_limit": memory} if memory else None)
    if capability is not None:
        device.compute_capability = capability
    return device


def torch_properties(name, memory, major, minor):
    return types.SimpleNamespace(name=name, total_memory=memory, major=major, minor=minor)


# name -> (jax device_kind, compute capability as CUDA reports it, policy)
GPUS = {
    "T4": ("Tesla T4", "7.5", "mixed_float16"),
    "P100": ("Tesla P100-PCIE-16GB", "6.0", "mixed_float16"),
    "V100": ("Tesla V100-SXM2-16GB", "7.0", "mixed_float16"),
    "A100": ("NVIDIA A100-SXM4-40GB", "8.0", "mixed_bfloat16"),
    "H100": ("NVIDIA H100 80GB HBM3", "9.0", "mixed_bfloat16"),
    "L4": ("NVIDIA L4", "8.9", "mixed_bfloat16"),
}


@pytest.mark.parametrize("gpu", list(GPUS))
@pytest.mark.parametrize("source", ["jax", "jax-name-only", "torch", "tensorflow"])
def test_precision_per_gpu(gpu, source):
    kind, capability, policy = GPUS[gpu]
    major, minor = map(int, capability.split("."))
    if source == "jax":
        devices = backend.jax_devices([jax_device(kind, memory=15 * GiB, capability=capability)])
    elif source == "jax-name-only":  # a description without compute_capability
        devices = backend.jax_devices([jax_device(kind, memory=15 * GiB)])
    elif source == "torch":
        devices = backend.torch_devices([torch_properties(kind, 15 * GiB, major, minor)])
    else:
        devices = backend.tensorflow_devices(
            [("GPU", {"device_name": kind, "compute_capability": (major, minor)})])
    assert devices[0].kind == "gpu" and devices[0].name == kind
    assert devices[0].capability == (major, minor)
    assert backend.choose_precision("auto", devices) == (
        policy, f"auto: compute capability {capability}")


def test_precision_on_tpu_and_cpu():
    tpu = backend.jax_devices([jax_device("TPU v3", "tpu", 16 * GiB)] * 8)
    assert backend.auto_precision(tpu) == ("mixed_bfloat16", "TPU")
    assert backend.describe(tpu) == "tpu: 8 x TPU v3, 16.0 GiB each"
    cpu = backend.jax_devices([jax_device("cpu", "cpu")])
    assert backend.auto_precision(cpu) == ("float32", "CPU")
    assert backend.describe(cpu).startswith("cpu (")
    assert backend.auto_precision([backend.Device("mps", "Apple GPU (mps)")])[0] == "float32"


def test_older_or_unknown_gpus_train_in_float32():
    p4 = backend.torch_devices([torch_properties("Tesla P4", 8 * GiB, 6, 1)])
    assert backend.auto_precision(p4) == (
        "float32", "compute capability 6.1: no fast 16-bit arithmetic")
    unknown = backend.jax_devices([jax_device("Some Future GPU", memory=GiB)])
    assert unknown[0].capability is None
    assert backend.auto_precision(unknown) == ("float32", "a GPU of unknown compute capability")
    # Two kinds of GPU: the older one decides.
    mixed = backend.torch_devices([torch_properties("NVIDIA A100", GiB, 8, 0),
                                   torch_properties("Tesla T4", GiB, 7, 5)])
    assert backend.auto_precision(mixed)[0] == "mixed_float16"


def test_names_do_not_match_inside_other_names():
    assert backend.capability_from_name("NVIDIA L40S") == (8, 9)
    assert backend.capability_from_name("NVIDIA A10G") == (8, 6)  # "A10", not "A100"
    assert backend.capability_from_name("NVIDIA A100-PCIE-40GB") == (8, 0)
    assert backend.capability_from_name("Tesla T4") == (7, 5)
    assert backend.capability_from_name("NVIDIA GeForce GTX 1080") is None


def test_precision_from_the_config():
    t4 = backend.torch_devices([torch_properties("Tesla T4", GiB, 7, 5)])
    assert backend.choose_precision("float32", t4) == ("float32", "set in the config")
    assert backend.choose_precision("mixed_bfloat16", t4)[0] == "mixed_bfloat16"
    with pytest.raises(KerastuneError, match="precision='fp16': expected one of auto, float32"):
        backend.choose_precision("fp16", t4)


def test_describe_names_model_memory_and_capability():
    t4s = backend.torch_devices([torch_properties("Tesla T4", int(14.7 * GiB), 7, 5)] * 2)
    assert backend.describe(t4s) == "gpu: 2 x Tesla T4, 14.7 GiB each, compute capability 7.5"
    a100 = backend.jax_devices([jax_device("NVIDIA A100-SXM4-40GB", memory=30 * GiB,
                                           capability="8.0")])
    assert backend.describe(a100) == (
        "gpu: 1 x NVIDIA A100-SXM4-40GB, 30.0 GiB, compute capability 8.0")
    p100 = backend.tensorflow_devices(
        [("GPU", {"device_name": "Tesla P100-PCIE-16GB", "compute_capability": (6, 0),
                  "memory": 16 * GiB})])
    assert backend.describe(p100) == (
        "gpu: 1 x Tesla P100-PCIE-16GB, 16.0 GiB, compute capability 6.0")


def test_nvidia_smi_memory():
    assert backend.nvidia_smi_memory("15360\n15360\n") == [15360 * 2**20] * 2
    assert backend.nvidia_smi_memory("") == []


def _fake_two_t4s(monkeypatch):
    """Makes the current backend's framework describe two T4s."""
    if BACKEND == "jax":
        import jax

        t4s = [jax_device("Tesla T4", memory=int(14.7 * GiB), capability="7.5")
               for _ in range(2)]
        for i, device in enumerate(t4s):
            device.id = i
        monkeypatch.setattr(jax, "devices", lambda *a, **k: t4s)
    elif BACKEND == "torch":
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda i: torch_properties("Tesla T4", int(14.7 * GiB), 7, 5))
    else:
        import tensorflow as tf

        gpus = [types.SimpleNamespace(device_type="GPU", name=f"/physical_device:GPU:{i}")
                for i in range(2)]
        monkeypatch.setattr(tf.config, "list_physical_devices", lambda *a, **k: gpus)
        monkeypatch.setattr(tf.config.experimental, "get_device_details",
                            lambda d: {"device_name": "Tesla T4", "compute_capability": (7, 5)})
        monkeypatch.setattr(backend, "_nvidia_smi", lambda: [int(14.7 * GiB)] * 2)


def test_accelerators_of_this_backend(monkeypatch):
    assert backend.accelerators()[0].kind == "cpu"  # this machine
    _fake_two_t4s(monkeypatch)
    assert backend.describe(backend.accelerators()) == (
        "gpu: 2 x Tesla T4, 14.7 GiB each, compute capability 7.5")


def test_info_names_the_accelerator(cli, monkeypatch):
    _fake_two_t4s(monkeypatch)
    result = cli("info")
    assert result.code == 0, result
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert lines["accelerator"] == "gpu: 2 x Tesla T4, 14.7 GiB each, compute capability 7.5"
    assert lines["precision"] == "mixed_float16 (auto: compute capability 7.5)"


def test_auto_over_an_int8_base_on_a_t4_is_float32_which_keras_quantizes():
    # Keras refuses int8 under a float16 compute dtype: "auto" on a T4 (float16)
    # falls back to float32 there, and a bfloat16 GPU or an int4 base keeps its pick.
    import keras

    t4 = backend.torch_devices([torch_properties("Tesla T4", GiB, 7, 5)])
    a100 = backend.torch_devices([torch_properties("NVIDIA A100-SXM4-40GB", GiB, 8, 0)])
    policy, why = backend.choose_precision("auto", t4, quantize="int8")
    assert policy == "float32" and "refuses over an int8 base" in why
    assert backend.choose_precision("auto", t4, quantize="int8_dynamic")[0] == "float32"
    assert backend.choose_precision("auto", t4, quantize="int4")[0] == "mixed_float16"
    assert backend.choose_precision("auto", t4)[0] == "mixed_float16"
    assert backend.choose_precision("auto", a100, quantize="int8")[0] == "mixed_bfloat16"
    assert backend.choose_precision("mixed_float16", t4, quantize="int8")[0] == "mixed_float16"
    for quantize in backend.NO_FLOAT16_COMPUTE:  # the rule is Keras' own refusal
        layer = keras.layers.Dense(2, dtype="mixed_float16")
        layer.build((None, 4))
        with pytest.raises(ValueError, match="doesn't work well with compute_dtype='float16'"):
            layer.quantize("int8")
    layer = keras.layers.Dense(2, dtype=policy)
    layer.build((None, 4))
    layer.quantize("int8")  # the policy chosen is one Keras quantizes
