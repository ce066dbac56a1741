"""The cases of lora/merge.py and lora/adapter_file.py that mutmut found
untested (issue 30; tests/README.md, "Mutation testing"), beside the ones
`tests/test_mutation_gaps_lora.py` holds. The same tiny Llama adapter (rank
2, alpha 5: scale 2.5, never 1); each message is checked whole, file name
included, since a mutant that drops the file or the value still raises."""

import json
import os
import warnings

import numpy as np
import pytest

from kerastune_lab.finetune import lora
from kerastune_lab.finetune.lora import merge
from tests.conftest import raises_one_line
from tests.test_mutation_gaps_lora import (
    ALPHA,
    QUERY,
    RANK,
    _edited,
    _replace_factor,
    _set_factors,
    _tiny_llama,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, {layer path: (A, B)}): random factors on query and value,
    the preset recorded as "tiny/llama"."""
    lm = _tiny_llama()
    lora.enable_lora(lm, RANK, ALPHA)
    factors = {p: _set_factors(layer, i)
               for i, (p, layer) in enumerate(sorted(lora.lora_state(lm).layers.items()))}
    path = lora.save_adapter(lm, tmp_path_factory.mktemp("gaps") / "g.lora.h5",
                             preset="tiny/llama")
    return path, factors


def _metadata(**changes):
    def edit(f):
        metadata = json.loads(f.attrs["metadata"])
        metadata.update(changes)
        f.attrs["metadata"] = json.dumps(metadata)
    return edit


# -- adapter_file.py: metadata ------------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("changes, message", [
    ({"base": ["LlamaBackbone"]},
     "metadata base=['LlamaBackbone']: expected a dict (class_name, preset, shape)"),
    ({"base": {"class_name": 3, "preset": None, "shape": {}}},
     "metadata base.class_name=3: expected a backbone class name (a string)"),
], ids=["base-list", "class-name-int"])
def test_each_metadata_message_names_the_file_the_value_and_the_expected(
        saved, tmp_path, changes, message):
    path = _edited(saved, tmp_path, _metadata(**changes))
    raises_one_line(lambda: lora.read_adapter_metadata(path), f"adapter {path!r}: {message}")


# -- adapter_file.py: read_adapter_factors (no model) -------------------------

@pytest.mark.backend_independent
def test_read_adapter_factors_names_the_file_and_the_factor(saved, tmp_path):
    def delete(f):
        del f[f"layers/{QUERY}/lora_a"]
    path = _edited(saved, tmp_path, delete, "missing")
    raises_one_line(lambda: lora.read_adapter_factors(path),
                    f"adapter {path!r}: lora factor '{QUERY}/lora_a' is missing")
    path = _edited(saved, tmp_path, _replace_factor("lora_b", np.ones((2, 16), "int8")),
                   "ints")
    raises_one_line(lambda: lora.read_adapter_factors(path),
                    f"adapter {path!r}: lora factor '{QUERY}/lora_b' holds int8 values")
    for factor, shape in (("lora_a", (16, 2)), ("lora_b", (2, 16))):
        bad = np.ones(shape, "float32")
        bad[1, 1] = np.inf
        path = _edited(saved, tmp_path, _replace_factor(factor, bad), f"inf_{factor}")
        raises_one_line(lambda: lora.read_adapter_factors(path),
                        f"adapter {path!r}: lora factor '{QUERY}/{factor}' holds NaN or inf")


# -- adapter_file.py / merge.py: the base it was trained on -------------------

def test_a_mismatched_base_is_named_with_the_file(saved, tmp_path):
    def edit(f):
        metadata = json.loads(f.attrs["metadata"])
        metadata["base"]["shape"]["intermediate_dim"] = 48
        f.attrs["metadata"] = json.dumps(metadata)
    path = _edited(saved, tmp_path, edit, "other_base")
    message = (f"adapter {path!r} was trained on a LlamaBackbone (tiny/llama) with "
               "intermediate_dim=48, but the base has intermediate_dim=32")
    raises_one_line(lambda: lora.load_adapter(_tiny_llama(), path), message)
    raises_one_line(lambda: lora.merge_adapter(_tiny_llama(), path), message)


# -- merge.py -----------------------------------------------------------------

def test_merge_refuses_a_base_with_lora(saved):
    lm = lora.enable_lora(_tiny_llama(), RANK, ALPHA)
    raises_one_line(lambda: lora.merge_adapter(lm, saved[0]),
                    f"merge {saved[0]!r}: expected a plain float base (no LoRA, not "
                    "quantized)")


def test_a_merge_that_overflows_is_refused_without_a_warning(saved, tmp_path):
    # 2.5 * 2 * 1e20 * 1e20 = 5e40: finite in float64, inf in float32.
    def edit(f):
        _replace_factor("lora_a", np.full((16, 2), 1e20, "float32"))(f)
        _replace_factor("lora_b", np.full((2, 16), 1e20, "float32"))(f)
    path = _edited(saved, tmp_path, edit, "overflow")
    lm = _tiny_llama()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy: "overflow encountered in cast"
        raises_one_line(lambda: lora.merge_adapter(lm, path),
                        f"merge {path!r}: the merged kernel of layer {QUERY!r} holds NaN "
                        "or inf in float32", "scale 2.5,")


@pytest.fixture
def spies(monkeypatch):
    """Records what resolve_preset, from_preset and load_quantized are given;
    the loads give a tiny Llama."""
    import kerastune_lab.models as models

    calls = []
    monkeypatch.setattr(models, "resolve_preset",
                        lambda preset, cls: calls.append(("resolve", preset, cls))
                        or f"resolved:{preset}")
    monkeypatch.setattr(models, "from_preset",
                        lambda cls, preset, **kw: calls.append(("load", cls, preset, kw))
                        or _tiny_llama())
    monkeypatch.setattr(merge, "load_quantized",
                        lambda cls, preset, mode, dtype=None, **kw: calls.append(
                            ("load", cls, preset, mode, dtype, kw)) or _tiny_llama())
    return calls


def test_the_task_class_and_preset_given_are_the_ones_used(saved, spies, tmp_path):
    import keras_hub

    path, _ = saved
    cls = keras_hub.models.LlamaCausalLM  # not the default CausalLM
    task, metadata = lora.load_float_base(path, "other", cls)
    assert metadata == lora.read_adapter_metadata(path) and lora.lora_state(task) is None
    assert spies == [("resolve", "other", cls), ("load", cls, "resolved:other", {})]
    spies.clear()
    lora.merged_model(path, "other", cls)
    assert spies == [("resolve", "other", cls), ("load", cls, "resolved:other", {})]
    spies.clear()
    out = tmp_path / "merged"
    assert lora.save_merged_preset(path, out, "other", cls) == out
    assert spies == [("resolve", "other", cls), ("load", cls, "resolved:other", {})]
    assert os.path.isfile(out / "config.json")
    spies.clear()
    task, metadata = lora.load_with_adapter(path, "other", cls)
    assert spies == [("resolve", "other", cls),
                     ("load", cls, "resolved:other", "none", None, {})]
    assert lora.lora_state(task).alpha == ALPHA and metadata["rank"] == RANK
    # No class given: CausalLM; no preset given: the one recorded.
    spies.clear()
    lora.load_float_base(path)
    assert spies == [("resolve", "tiny/llama", keras_hub.models.CausalLM),
                     ("load", keras_hub.models.CausalLM, "resolved:tiny/llama", {})]


def test_a_peft_folder_or_another_folder_as_the_adapter(saved, spies, tmp_path):
    import keras_hub

    path, _ = saved
    cls = keras_hub.models.LlamaCausalLM
    folder = tmp_path / "peft"
    os.makedirs(folder)
    lora.write_peft_folder(str(folder), "LlamaBackbone", lora.read_adapter_factors(path)[1],
                           RANK, ALPHA, base_name="meta-llama/Llama-2-7b-hf")
    folder = str(folder)
    # A peft folder: not quantized, no base recorded; the preset given, else its own.
    assert lora.load_float_base(folder, "other", cls)[1] == {"quantize": "none", "base": None}
    assert spies == [("resolve", "other", cls), ("load", cls, "resolved:other", {})]
    spies.clear()
    lora.load_float_base(folder)
    assert spies[0] == ("resolve", "hf://meta-llama/Llama-2-7b-hf", keras_hub.models.CausalLM)
    spies.clear()
    task, metadata = lora.load_with_adapter(folder, "other", cls)
    assert spies == [("resolve", "other", cls),
                     ("load", cls, "resolved:other", "none", None, {})]
    assert lora.lora_state(task).rank == RANK
    # A folder that is not a peft adapter is no adapter file: refused before loading.
    empty = str(tmp_path / "empty")
    os.makedirs(empty)
    spies.clear()
    raises_one_line(lambda: lora.load_float_base(empty, "other"),
                    f"adapter {empty!r} does not exist: expected a .lora.h5 file")
    # An adapter file that records no preset, and none given.
    none = _edited(saved, tmp_path, _metadata(base=dict(
        lora.read_adapter_metadata(path)["base"], preset=None)), "no_preset")
    raises_one_line(lambda: lora.merged_model(none),
                    f"adapter {none!r} records no base preset: expected preset=... "
                    "(--preset)")
    assert spies == []


def test_a_merge_finite_in_float32_but_not_in_float16_is_refused(saved, tmp_path):
    import keras_hub

    from kerastune_lab import testing

    # 2.5 * 2 * 200 * 200 = 2e5: finite in float32, over float16's 65504.
    def edit(f):
        _replace_factor("lora_a", np.full((16, 2), 200, "float32"))(f)
        _replace_factor("lora_b", np.full((2, 16), 200, "float32"))(f)
    path = _edited(saved, tmp_path, edit, "half")
    lm = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"),
                                               preprocessor=None, dtype="float16")
    raises_one_line(lambda: lora.merge_adapter(lm, path),
                    f"merge {path!r}: the merged kernel of layer {QUERY!r} holds NaN or inf "
                    "in float16: expected finite values")
