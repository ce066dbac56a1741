"""Choose the Keras backend before anything imports keras.

Keras reads `KERAS_BACKEND` once, when it is first imported. The CLI calls
`use_backend()` first thing, so the choice is: the `--backend` flag, else the
`KERAS_BACKEND` environment variable, else jax.
"""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys

from kerastune_lab.errors import KerastuneError

DEFAULT_BACKEND = "jax"

# backend name -> (module that must be importable, how to install it)
BACKENDS = {
    "jax": ("jax", "pip install jax, or the extra: pip install 'kerastune-lab[jax]'  "
                   "(NVIDIA GPU: 'kerastune-lab[jax-cuda12]')"),
    "tensorflow": ("tensorflow", "pip install tensorflow  (GPU: 'tensorflow[and-cuda]')"),
    "torch": (
        "torch",
        "pip install torch, or the extra: pip install 'kerastune-lab[torch]'  (CPU only: "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu)",
    ),
}


def resolve_backend(flag=None):
    """Returns the backend name chosen by `flag`, `KERAS_BACKEND` or the default."""
    name = flag or os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND
    name = name.strip().lower()
    if name not in BACKENDS:
        source = "--backend" if flag else "KERAS_BACKEND"
        raise KerastuneError(
            f"unknown backend {source}={name!r}: expected one of "
            f"{', '.join(BACKENDS)}"
        )
    return name


def use_backend(flag=None):
    """Selects the backend for this process and returns its name.

    Args:
        flag: str or None. The backend asked for on the command line.
            Defaults to `KERAS_BACKEND`, then `"jax"`.

    Raises `KerastuneError` when the name is unknown, its package is not
    installed, or keras was already imported with another backend.
    """
    name = resolve_backend(flag)
    module, install = BACKENDS[name]
    if importlib.util.find_spec(module) is None:
        raise KerastuneError(
            f"backend {name!r} needs the {module!r} package, which is not "
            f"installed: {install}"
        )
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise KerastuneError(
                f"keras was already imported with backend {current!r}; "
                f"cannot switch to {name!r} in the same process"
            )
    os.environ["KERAS_BACKEND"] = name
    # Keep TensorFlow (used for tf.data on every backend) off the GPU unless it
    # is the backend, so it does not grab the memory JAX or torch will need.
    from kerastune_lab.console import quiet_startup

    quiet_startup()  # no TensorFlow/absl C++ start-up lines (kerastune_lab/console.py)
    if name != "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return name


def hide_gpus_from_tensorflow():
    """Stops tf.data's TensorFlow from reserving GPU memory on jax/torch runs."""
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # devices already initialised: nothing to do
            pass


FRAMEWORKS = ("jax", "tensorflow", "torch")  # the distributions behind the backends


def default_backend():
    """The backend a run would use without --backend: KERAS_BACKEND, else jax."""
    return (os.environ.get("KERAS_BACKEND") or DEFAULT_BACKEND).strip().lower()


def installed_versions():
    """{distribution: version or "not installed"} of the toolkit, keras,
    keras-hub and the backends' frameworks, from the installed metadata
    (nothing imported, so it answers at once)."""
    import importlib.metadata

    found = {}
    for name in ("kerastune_lab", "keras", "keras-hub") + FRAMEWORKS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    if found["kerastune_lab"] == "not installed":  # a checkout run without installing
        from kerastune_lab import __version__

        found["kerastune_lab"] = __version__ + " (not installed)"
    return found


def framework_version(name):
    """Returns the version string of a backend's framework package."""
    module = importlib.import_module(BACKENDS[name][0])
    return getattr(module, "__version__", "unknown")


def list_devices():
    """Returns the devices keras sees, e.g. ['cpu:0'] or ['gpu:0', 'gpu:1']."""
    import keras

    if keras.backend.backend() != "torch":  # keras.distribution has no torch backend
        return [str(d).lower() for d in keras.distribution.list_devices()]
    import torch

    devices = ["cpu:0"]
    if torch.cuda.is_available():
        devices += [f"gpu:{i}" for i in range(torch.cuda.device_count())]
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps:0")
    return devices


# --- the accelerator: what it is, and the precision that fits it -----------
#
# Each framework describes its devices its own way; the `*_devices` functions
# turn those descriptions into `Device`s, so tests can hand them fakes.

# CUDA compute capability by GPU name, for a description that lacks it.
CAPABILITIES = {
    "H200": (9, 0), "H100": (9, 0), "GH200": (9, 0), "L40": (8, 9), "L4": (8, 9),
    "RTX 40": (8, 9), "A100": (8, 0), "A10": (8, 6), "A40": (8, 6), "RTX 30": (8, 6),
    "T4": (7, 5), "RTX 20": (7, 5), "V100": (7, 0), "P100": (6, 0), "P4": (6, 1),
    "K80": (3, 7),
}
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class Device:
    """One device a backend trains on.

    Args:
        kind: str. "gpu", "tpu", "mps" or "cpu".
        name: str. The model, e.g. "Tesla T4", "TPU v3", "cpu".
        memory: int or None. Bytes the framework may use on it, if known.
        capability: (major, minor) or None. CUDA compute capability of a GPU.
    """

    kind: str
    name: str
    memory: int | None = None
    capability: tuple | None = None


def capability_from_name(name):
    """The CUDA compute capability of a GPU model name, or None if unknown."""
    upper = name.upper()
    for key in sorted(CAPABILITIES, key=len, reverse=True):  # "L40" before "L4"
        if re.search(rf"(^|[^A-Z0-9]){re.escape(key)}([^0-9]|$)", upper):
            return CAPABILITIES[key]
    return None


def _capability(value, name):
    if isinstance(value, str) and re.fullmatch(r"\d+\.\d+", value):
        value = tuple(int(v) for v in value.split("."))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return tuple(int(v) for v in value)
    return capability_from_name(name)


def jax_devices(devices):
    """`Device`s from `jax.devices()`: `platform`, `device_kind`,
    `memory_stats()["bytes_limit"]` and, on CUDA, `compute_capability`."""
    out = []
    for d in devices:
        kind = {"cuda": "gpu", "rocm": "gpu"}.get(d.platform, d.platform)
        try:
            stats = d.memory_stats() or {}
        except Exception:  # a backend without memory statistics
            stats = {}
        capability = _capability(getattr(d, "compute_capability", None), d.device_kind)
        out.append(Device(kind, d.device_kind, stats.get("bytes_limit"),
                          capability if kind == "gpu" else None))
    return out


def torch_devices(properties):
    """`Device`s from `torch.cuda.get_device_properties(i)` of each GPU."""
    return [Device("gpu", p.name, p.total_memory, (p.major, p.minor)) for p in properties]


def tensorflow_devices(details):
    """`Device`s from (`device_type`, `tf.config.experimental.get_device_details`)
    of each GPU or TPU; `memory` from `nvidia_smi_memory` where given."""
    out = []
    for device_type, info in details:
        kind = device_type.lower()
        name = info.get("device_name") or device_type
        capability = _capability(info.get("compute_capability"), name) if kind == "gpu" else None
        out.append(Device(kind, name, info.get("memory"), capability))
    return out


def nvidia_smi_memory(text):
    """Bytes of each GPU from `nvidia-smi --query-gpu=memory.total
    --format=csv,noheader,nounits` (MiB, one line a GPU)."""
    return [int(float(line)) * 2**20 for line in text.split() if line.strip()]


def _nvidia_smi():
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10)
        return nvidia_smi_memory(result.stdout) if result.returncode == 0 else []
    except (OSError, subprocess.SubprocessError, ValueError):
        return []


def accelerators():
    """The `Device`s the current backend trains on; [cpu] without an accelerator."""
    import keras

    name = keras.backend.backend()
    found = []
    if name == "jax":
        import jax

        found = jax_devices(jax.devices())
    elif name == "torch":
        import torch

        if torch.cuda.is_available():
            found = torch_devices([torch.cuda.get_device_properties(i)
                                   for i in range(torch.cuda.device_count())])
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            found = [Device("mps", "Apple GPU (mps)")]
    elif name == "tensorflow":
        import tensorflow as tf

        listed = [d for d in tf.config.list_physical_devices() if d.device_type in ("GPU", "TPU")]
        details = [(d.device_type, dict(tf.config.experimental.get_device_details(d)))
                   for d in listed]
        memory = _nvidia_smi() if any(t == "GPU" for t, _ in details) else []
        for (device_type, info), size in zip([d for d in details if d[0] == "GPU"], memory):
            info["memory"] = size
        found = tensorflow_devices(details)
    return [d for d in found if d.kind != "cpu"] or found or [Device("cpu", "cpu")]


def describe(devices):
    """One line, e.g. "gpu: 2 x Tesla T4, 14.7 GiB each, compute capability 7.5"."""
    first = devices[0]
    if first.kind == "cpu":
        count = f"{len(devices)} devices, " if len(devices) > 1 else ""
        return f"cpu ({count}{os.cpu_count()} cores)"
    names = sorted({d.name for d in devices})
    line = f"{first.kind}: {len(devices)} x {' + '.join(names)}"
    if first.memory:
        line += f", {first.memory / 2**30:.1f} GiB" + (" each" if len(devices) > 1 else "")
    if first.capability:
        line += f", compute capability {first.capability[0]}.{first.capability[1]}"
    return line


def auto_precision(devices):
    """The Keras dtype policy that fits `devices`, and why.

    bfloat16 on TPUs and on GPUs of compute capability 8.0 or more (Ampere
    and later); float16 (Keras adds loss scaling when it compiles) on V100 and
    T4 (7.x) and P100 (6.0); float32 on a CPU, on older GPUs and on GPUs of
    unknown capability.
    """
    kinds = {d.kind for d in devices}
    if kinds == {"tpu"}:
        return "mixed_bfloat16", "TPU"
    if kinds == {"cpu"}:
        return "float32", "CPU"
    if kinds != {"gpu"}:
        return "float32", f"{' + '.join(sorted(d.name for d in devices))}"
    capabilities = [d.capability for d in devices]
    if None in capabilities:
        return "float32", "a GPU of unknown compute capability"
    low = min(capabilities)
    why = f"compute capability {low[0]}.{low[1]}"
    if low >= (8, 0):
        return "mixed_bfloat16", why
    if low >= (7, 0) or low == (6, 0):
        return "mixed_float16", why
    return "float32", why + ": no fast 16-bit arithmetic"


# Quantized bases Keras refuses to compute in float16 ("Quantization
# mode='int8' doesn't work well with compute_dtype='float16'").
NO_FLOAT16_COMPUTE = ("int8", "int8_dynamic")


def choose_precision(requested, devices, quantize="none"):
    """(policy, reason): `requested` unless it is "auto", then `auto_precision`;
    where that is float16 and the base is quantized to int8 (`quantize`),
    float32, as Keras refuses float16 compute over int8 weights (a T4's
    LoRA run over an int8 base)."""
    if requested not in PRECISIONS:
        raise KerastuneError(f"precision={requested!r}: expected one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "set in the config"
    policy, why = auto_precision(devices)
    if policy == "mixed_float16" and quantize in NO_FLOAT16_COMPUTE:
        return "float32", (f"auto: {why}, whose float16 Keras refuses over an {quantize} "
                           "base")
    return policy, f"auto: {why}"
