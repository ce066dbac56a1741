"""Adapters are checked before use (issue 23, point 4): metadata types and
values, every factor's shape against the base's layer before anything is
read or allocated, every factor finite as it is read, and the merged
kernels finite before `kerastune merge` writes anything.

One small adapter (tiny Llama, rank 2, alpha 5: scale 2.5, on Dense and
EinsumDense layers) is made once; each test damages a copy with h5py (or
a peft folder of it with safetensors) and checks the one-line refusal
through the Python API and the real CLI (`chat --adapter`, `merge`),
with nothing written. The undamaged adapter loads, merges and chats
(the controls), so each refusal comes from the damage.
"""

import contextlib
import io
import json
import os
import shutil
import sys
import tracemalloc

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from kerastune_lab.finetune.lora import adapter_file, checks
from tests.conftest import assert_one_line_error, raises_one_line

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

RANK, ALPHA = 2, 5.0
TARGETS = ("query", "value", "feedforward_intermediate_dense")
QUERY = "transformer_layer_0/self_attention/query"  # EinsumDense: A (16, 2), B (2, 16)
FEEDFORWARD = "transformer_layer_1/feedforward_intermediate_dense"  # Dense: (16, 2), (2, 32)
DIVERGED = "holds NaN or inf: expected finite values (the run that wrote it diverged?)"


@contextlib.contextmanager
def _peak_allocation():
    """Inside: Python's and numpy's allocations traced (`tracemalloc`);
    yields a function giving the peak bytes allocated meanwhile."""
    peak = []
    tracemalloc.start()
    try:
        yield lambda: peak[0]
    finally:
        peak.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


def _tiny_llama():
    import keras_hub

    return keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"),
                                                 preprocessor=None)


def _np(x):
    import keras

    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """An adapter file with non-zero factors, recording its tiny base preset."""
    lm = _tiny_llama()
    lora.enable_lora(lm, RANK, ALPHA, TARGETS)
    rng = np.random.default_rng(0)
    for layer in lora.lora_state(lm).layers.values():
        layer.lora_a.assign(rng.normal(0, 0.5, layer.lora_a.shape))
        layer.lora_b.assign(rng.normal(0, 0.5, layer.lora_b.shape))
    path = tmp_path_factory.mktemp("adapter") / "good.lora.h5"
    return lora.save_adapter(lm, path, preset=testing.tiny_preset("llama"))


@pytest.fixture
def damaged(adapter, tmp_path):
    """damaged(name, edit): a copy of the adapter at tmp_path/in/<name>.lora.h5,
    `edit(h5 file)` applied."""
    import h5py

    def make(name, edit):
        path = tmp_path / "in" / f"{name}.lora.h5"
        path.parent.mkdir(exist_ok=True)
        shutil.copy(adapter, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return str(path)

    return make


def _set_value(layer_path, factor, value, index=(0, 1)):
    def edit(f):
        f[f"layers/{layer_path}/{factor}"][index] = value
    return edit


def _replace(layer_path, factor, data):
    def edit(f):
        del f[f"layers/{layer_path}/{factor}"]
        if data is not None:
            f[f"layers/{layer_path}/{factor}"] = data
    return edit


def _metadata(**changes):
    def edit(f):
        metadata = json.loads(f.attrs["metadata"])
        for key, value in changes.items():
            if key == "preset":
                metadata["base"]["preset"] = value
            else:
                metadata[key] = value
        f.attrs["metadata"] = json.dumps(metadata)
    return edit


@pytest.fixture
def no_adapter_reads(monkeypatch):
    """Fails the test if an adapter's factors are read, or LoRA is enabled
    (allocated), or the base quantized, before the refusal."""
    import h5py

    def guarded(method):
        real = getattr(h5py.Dataset, method)

        def read(self, *args, **kwargs):
            if self.file.filename.endswith(lora.ADAPTER_SUFFIX):
                raise AssertionError(f"factor data read before the check: {self.name}")
            return real(self, *args, **kwargs)
        return read

    def refuse(*args, **kwargs):
        raise AssertionError("allocated before the check")

    for method in ("__getitem__", "read_direct", "__array__"):
        monkeypatch.setattr(h5py.Dataset, method, guarded(method))
    monkeypatch.setattr(adapter_file, "enable_lora", refuse)
    monkeypatch.setattr(adapter_file, "quantize", refuse)


def _chat(cli, monkeypatch, path, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Is it Monday again?\n"))
    return cli("chat", "--adapter", path, "--preset", testing.tiny_preset("llama"),
               "--sampler", "greedy", "--max-length", "32", *extra)


def _refused_everywhere(cli, monkeypatch, tmp_path, path, *fragments):
    """The damaged adapter at `path` is refused by load_adapter, merge_adapter,
    save_merged_preset, `kerastune chat --adapter` and `kerastune merge`, in
    one line naming the file and `fragments`, writing nothing."""
    name = os.path.basename(path)
    model = _tiny_llama()
    before = [_np(w).copy() for w in model.weights]
    raises_one_line(lambda: lora.load_adapter(model, path), name, *fragments)
    # Refused before the model changed: no LoRA, not quantized, same weights.
    assert lora.lora_state(model) is None
    assert [w.path for w in model.weights] == [w.path for w in _tiny_llama().weights]
    assert all(np.array_equal(a, _np(w)) for a, w in zip(before, model.weights))
    raises_one_line(lambda: lora.merge_adapter(_tiny_llama(), path), name, *fragments)
    out = tmp_path / "out"
    raises_one_line(lambda: lora.save_merged_preset(path, out), name, *fragments)
    assert not out.exists()
    assert_one_line_error(_chat(cli, monkeypatch, path), name, *fragments)
    listing = sorted(os.listdir(tmp_path))
    result = cli("merge", path, "--output", out)
    assert_one_line_error(result, name, *fragments)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == listing  # no half-written or temporary folder


def test_the_undamaged_adapter_loads_merges_and_chats(adapter, cli, monkeypatch, tmp_path):
    model = _tiny_llama()
    metadata = lora.load_adapter(model, adapter)
    assert (metadata["rank"], metadata["alpha"]) == (RANK, ALPHA)
    merged = lora.merge_adapter(_tiny_llama(), adapter)
    assert lora.lora_state(merged) is None
    result = cli("merge", adapter, "--output", tmp_path / "out")
    assert result.code == 0, result
    assert (tmp_path / "out" / "config.json").is_file()
    result = _chat(cli, monkeypatch, adapter)
    assert result.code == 0, result
    _, factors = lora.read_adapter_factors(adapter)
    assert set(factors) == set(metadata["layers"]) and QUERY in factors


@pytest.mark.parametrize("layer_path, factor, value", [
    (QUERY, "lora_a", np.nan),
    (FEEDFORWARD, "lora_b", np.inf),
    (QUERY, "lora_b", -np.inf),
], ids=["nan", "inf", "minus-inf"])
def test_a_factor_not_finite_is_refused(damaged, cli, monkeypatch, tmp_path,
                                        layer_path, factor, value):
    path = damaged(f"{factor}_{value}", _set_value(layer_path, factor, value))
    _refused_everywhere(cli, monkeypatch, tmp_path, path,
                        f"lora factor '{layer_path}/{factor}' {DIVERGED}")
    raises_one_line(lambda: lora.read_adapter_factors(path), "diverged")  # export's path


def test_factors_are_read_and_checked_block_by_block(adapter, damaged, monkeypatch):
    import h5py

    monkeypatch.setattr(checks, "_BLOCK", 4)  # two rows of A (16, 2) at a time
    reads = []
    real = h5py.Dataset.__getitem__

    def counted(self, key):
        reads.append((self.name, key))
        return real(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)
    _, whole = lora.read_adapter_factors(adapter)
    assert len([r for r in reads if r[0].endswith(f"{QUERY}/lora_a")]) == 8
    monkeypatch.setattr(checks, "_BLOCK", 1 << 22)
    _, at_once = lora.read_adapter_factors(adapter)
    for layer_path, (a, b) in at_once.items():  # the blocks make up the same factors
        np.testing.assert_array_equal(whole[layer_path][0], a)
        np.testing.assert_array_equal(whole[layer_path][1], b)
    # A NaN in the last block is found as well as one in the first.
    monkeypatch.setattr(checks, "_BLOCK", 4)
    path = damaged("late_nan", _set_value(QUERY, "lora_a", np.nan, index=(15, 1)))
    raises_one_line(lambda: lora.load_adapter(_tiny_llama(), path),
                    f"'{QUERY}/lora_a' {DIVERGED}")


def test_rank_a_billion_fails_fast_without_allocating(damaged, cli, monkeypatch, tmp_path,
                                                      no_adapter_reads):
    path = damaged("huge_rank", _metadata(rank=10**9))
    model = _tiny_llama()
    with _peak_allocation() as peak:
        raises_one_line(lambda: lora.load_adapter(model, path), "huge_rank.lora.h5",
                        "metadata rank=1000000000", f"at most {lora.MAX_RANK}")
    assert peak() < 16 * 2**20  # nothing of rank 10**9's size was allocated
    _refused_everywhere(cli, monkeypatch, tmp_path, path, "metadata rank=1000000000")


def test_a_rank_the_factors_do_not_have_fails_before_reading_them(
        damaged, cli, monkeypatch, tmp_path, no_adapter_reads):
    # Within the bound, but not the factors' rank: the shapes (read from the
    # h5 datasets, not their data) are refused before LoRA is allocated.
    path = damaged("rank_3", _metadata(rank=3))
    _refused_everywhere(cli, monkeypatch, tmp_path, path,
                        "has shape (16, 2): expected (16, 3) (rank 3")


@pytest.mark.parametrize("changes, fragment", [
    ({"rank": "2"}, "metadata rank='2': expected a positive integer"),
    ({"rank": 2.0}, "metadata rank=2.0: expected a positive integer"),
    ({"rank": 0}, "metadata rank=0: expected a positive integer"),
    ({"rank": True}, "metadata rank=True: expected a positive integer"),
    ({"alpha": float("nan")}, "metadata alpha=nan: expected a finite positive number"),
    ({"alpha": float("inf")}, "metadata alpha=inf: expected a finite positive number"),
    ({"alpha": -5.0}, "metadata alpha=-5.0: expected a finite positive number"),
    ({"alpha": "5"}, "metadata alpha='5': expected a finite positive number"),
    ({"targets": "query"}, "metadata targets='query': expected a list of layer names"),
    ({"targets": [1, 2]}, "metadata targets=[1, 2]: expected a list of layer names"),
    ({"layers": [QUERY, QUERY]}, "metadata layers=["),
    ({"quantize": "int3"}, "metadata quantize='int3': expected one of none, int8"),
    ({"preset": 7}, "metadata base.preset=7: expected a preset name"),
    ({"base": None}, "metadata base=None: expected a dict"),
], ids=["rank-str", "rank-float", "rank-0", "rank-bool", "alpha-nan", "alpha-inf",
        "alpha-negative", "alpha-str", "targets-str", "targets-ints", "layers-repeated",
        "quantize-unknown", "preset-not-str", "base-none"])
def test_bad_metadata_is_refused(damaged, no_adapter_reads, changes, fragment):
    path = damaged("bad_metadata", _metadata(**changes))
    raises_one_line(lambda: lora.read_adapter_metadata(path), "bad_metadata.lora.h5",
                    fragment)
    raises_one_line(lambda: lora.load_adapter(_tiny_llama(), path), "bad_metadata.lora.h5",
                    fragment)


def test_rank_of_the_wrong_type_through_the_cli(damaged, cli, monkeypatch, tmp_path,
                                                no_adapter_reads):
    path = damaged("rank_str", _metadata(rank="2"))
    _refused_everywhere(cli, monkeypatch, tmp_path, path,
                        "metadata rank='2': expected a positive integer")


def test_a_long_bad_value_stays_one_short_line(damaged):
    from kerastune_lab.errors import KerastuneError

    path = damaged("long", _metadata(targets="x\n" * 10_000))

    with pytest.raises(KerastuneError) as excinfo:
        lora.read_adapter_metadata(path)
    assert "\n" not in str(excinfo.value) and len(str(excinfo.value)) < 300


@pytest.mark.parametrize("layer_path, factor, data, fragment", [
    (QUERY, "lora_b", np.zeros((2, 15), "float32"),
     f"lora factor '{QUERY}/lora_b' has shape (2, 15): expected (2, 16)"),
    (FEEDFORWARD, "lora_a", np.zeros((16, 2, 1), "float32"),
     f"lora factor '{FEEDFORWARD}/lora_a' has shape (16, 2, 1): expected (16, 2)"),
    (QUERY, "lora_a", np.zeros((16, 2), "int32"),
     f"lora factor '{QUERY}/lora_a' holds int32 values: expected floating point"),
    (FEEDFORWARD, "lora_b", None,
     f"lora factor '{FEEDFORWARD}/lora_b' is missing: the file is damaged"),
], ids=["wrong-shape", "wrong-ndim", "integer", "missing"])
def test_a_factor_of_the_wrong_shape_or_missing_is_refused_before_reading(
        damaged, cli, monkeypatch, tmp_path, no_adapter_reads, layer_path, factor, data,
        fragment):
    path = damaged(f"bad_{factor}", _replace(layer_path, factor, data))
    _refused_everywhere(cli, monkeypatch, tmp_path, path, fragment)


def test_a_huge_factor_is_refused_by_its_shape_not_read(damaged, no_adapter_reads):
    # A chunked dataset claims (16, 10**9) floats (4 GB... times 16) in a
    # few kilobytes of file: only its header is looked at.
    def edit(f):
        del f[f"layers/{QUERY}/lora_a"]
        f.create_dataset(f"layers/{QUERY}/lora_a", shape=(16, 10**9), dtype="float32",
                         chunks=(16, 1024))

    path = damaged("huge_factor", edit)
    assert os.path.getsize(path) < 1_000_000
    model = _tiny_llama()
    with _peak_allocation() as peak:
        raises_one_line(lambda: lora.load_adapter(model, path),
                        f"'{QUERY}/lora_a' has shape (16, 1000000000): expected (16, 2)")
        raises_one_line(lambda: lora.read_adapter_factors(path), f"{QUERY!r}",
                        "(16, 1000000000)")
    assert peak() < 16 * 2**20  # the 64 GB factor was never read


def test_a_merged_kernel_not_finite_is_refused_before_writing(damaged, cli, tmp_path):
    # Finite factors whose update overflows float32: 1e30 * 1e30 * 2.5.
    def edit(f):
        f[f"layers/{QUERY}/lora_a"][...] = np.full((16, 2), 1e30, "float32")
        f[f"layers/{QUERY}/lora_b"][...] = np.full((2, 16), 1e30, "float32")

    path = damaged("overflow", edit)
    fragments = ("overflow.lora.h5", f"merged kernel of layer '{QUERY}' holds NaN or inf",
                 "expected finite values")
    # The factors themselves are finite: they load.
    assert lora.load_adapter(_tiny_llama(), path)["rank"] == RANK
    raises_one_line(lambda: lora.merge_adapter(_tiny_llama(), path), *fragments)
    out = tmp_path / "out"
    listing = sorted(os.listdir(tmp_path))
    assert_one_line_error(cli("merge", path, "--output", out), *fragments)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == listing


def test_a_base_kernel_not_finite_is_refused_by_merge(adapter):
    import keras

    model = _tiny_llama()
    kernel = lora.layer_paths(model)[QUERY].kernel
    kernel.assign(keras.ops.full(kernel.shape, float("nan"), kernel.dtype))
    raises_one_line(lambda: lora.merge_adapter(model, adapter), "good.lora.h5",
                    f"base's kernel of layer '{QUERY}' holds NaN or inf")


# peft folders: `lora.write_peft_folder` of the same factors.

def _peft_folder(adapter, folder, edit=None, rank=RANK, alpha=ALPHA, **config):
    from safetensors.numpy import load_file, save_file

    _, factors = lora.read_adapter_factors(adapter)
    os.makedirs(folder)
    lora.write_peft_folder(str(folder), "LlamaBackbone", factors, rank, alpha)
    weights = os.path.join(folder, "adapter_model.safetensors")
    if edit is not None:
        tensors = load_file(weights)
        edit(tensors)
        save_file(tensors, weights, metadata={"format": "pt"})
    if config:
        path = os.path.join(folder, "adapter_config.json")
        with open(path) as f:
            saved = json.load(f)
        saved.update(config)
        with open(path, "w") as f:
            json.dump(saved, f)
    return str(folder)


PEFT_QUERY = "base_model.model.model.layers.0.self_attn.q_proj"


def test_a_peft_folder_loads_and_chats(adapter, cli, monkeypatch, tmp_path):
    folder = _peft_folder(adapter, tmp_path / "peft")
    model = _tiny_llama()
    lora.load_adapter(model, folder)
    _, factors = lora.read_adapter_factors(adapter)
    layer = lora.lora_state(model).layers[QUERY]
    np.testing.assert_array_equal(_np(layer.lora_a), factors[QUERY][0])
    assert _chat(cli, monkeypatch, folder).code == 0


def test_a_peft_folder_holding_nan_is_refused(adapter, cli, monkeypatch, tmp_path):
    def edit(tensors):
        tensors[f"{PEFT_QUERY}.lora_B.weight"][3, 1] = np.nan

    folder = _peft_folder(adapter, tmp_path / "peft_nan", edit)
    fragments = ("peft_nan", f"lora factor '{PEFT_QUERY}.lora_B.weight' {DIVERGED}")
    model = _tiny_llama()
    raises_one_line(lambda: lora.load_adapter(model, folder), *fragments)
    assert lora.lora_state(model) is None
    raises_one_line(lambda: lora.load_with_adapter(folder, testing.tiny_preset("llama")),
                    *fragments)
    assert_one_line_error(_chat(cli, monkeypatch, folder), *fragments)


def test_a_peft_folder_of_the_wrong_shape_is_refused(adapter, tmp_path):
    def edit(tensors):
        tensors[f"{PEFT_QUERY}.lora_A.weight"] = np.zeros((2, 15), "float32")

    folder = _peft_folder(adapter, tmp_path / "peft_shape", edit)
    model = _tiny_llama()
    raises_one_line(lambda: lora.load_adapter(model, folder), "peft_shape",
                    f"'{PEFT_QUERY}.lora_A.weight' has shape (2, 15)", "expected A (16, 2)")
    assert lora.lora_state(model) is None


@pytest.mark.parametrize("config, fragment", [
    ({"r": 10**9}, "r=1000000000: expected a positive integer of at most 4096"),
    ({"r": "2"}, "r='2': expected a positive integer"),
    ({"lora_alpha": float("nan")}, "lora_alpha=nan: expected a finite positive number"),
    ({"base_model_name_or_path": 3}, "base_model_name_or_path=3: expected"),
], ids=["r-huge", "r-str", "alpha-nan", "base-not-str"])
def test_a_peft_config_out_of_range_is_refused(adapter, tmp_path, config, fragment):
    folder = _peft_folder(adapter, tmp_path / "peft_config", **config)
    model = _tiny_llama()
    raises_one_line(lambda: lora.load_adapter(model, folder), "peft_config",
                    "adapter_config.json", fragment)
    assert lora.lora_state(model) is None


def test_a_bfloat16_peft_folder_loads(adapter, tmp_path):
    # peft saves the adapter of a bfloat16 model in bfloat16.
    import ml_dtypes

    def edit(tensors):
        for key in tensors:
            tensors[key] = tensors[key].astype(ml_dtypes.bfloat16)

    folder = _peft_folder(adapter, tmp_path / "peft_bf16", edit)
    model = _tiny_llama()
    lora.load_adapter(model, folder)
    _, factors = lora.read_adapter_factors(adapter)
    layer = lora.lora_state(model).layers[QUERY]
    np.testing.assert_allclose(_np(layer.lora_b), factors[QUERY][1], rtol=1e-2, atol=0)
