"""The cases mutmut found untested in the mutants earlier runs had not
reached (issue 30; tests/README.md, "Mutation testing"):
lora/adapter_file.py's metadata checks (`_check_metadata`,
`read_adapter_metadata`) and resume/snapshot.py's `_restore` and
`_global_seed_generator`. The metadata is checked on plain dicts and on
small h5 files written here (no model); each message is checked whole."""

import copy
import json
import os

import numpy as np
import pytest

from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune.lora import adapter_file

WHAT = "adapter 'x.lora.h5'"
GOOD = {
    "format": "kerastune_lora", "version": 1, "rank": 2, "alpha": 5.0,
    "targets": ["query_dense", "value_dense"], "quantize": "none",
    "layers": ["transformer_layer_0/self_attention/query",
               "transformer_layer_0/self_attention/value"],
    "base": {"class_name": "LlamaBackbone", "preset": "tiny/llama",
             "shape": {"hidden_dim": 16, "num_layers": 1, "tie_word_embeddings": False}},
}


def _changed(changes=None, base=None, drop=(), drop_base=()):
    metadata = copy.deepcopy(GOOD)
    metadata.update(changes or {})
    metadata["base"] = dict(metadata["base"], **(base or {})) if isinstance(
        metadata["base"], dict) else metadata["base"]
    for key in drop:
        del metadata[key]
    for key in drop_base:
        del metadata["base"][key]
    return metadata


def _message(fn):
    with pytest.raises(KerastuneError) as info:
        fn()
    return str(info.value)


# -- adapter_file._check_metadata ---------------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("metadata", [
    GOOD,
    _changed({"rank": 4096, "alpha": 1}),
    _changed({"targets": ["q"], "layers": ["a"]}),
    _changed({"quantize": "int8"}),
    _changed({"quantize": "int8_dynamic"}),
    _changed({"quantize": "int4"}),
    _changed(base={"preset": None}),
    _changed(drop_base=("preset",)),
    _changed(base={"shape": {}}),
    _changed(base={"shape": {"tie_word_embeddings": True, "num_layers": 0}}),
], ids=["good", "rank-max", "one-each", "int8", "int8-dynamic", "int4", "preset-none",
        "preset-missing", "shape-empty", "shape-bool"])
def test_good_metadata_passes(metadata):
    assert adapter_file._check_metadata(copy.deepcopy(metadata), WHAT) is None


@pytest.mark.backend_independent
@pytest.mark.parametrize("metadata, message", [
    (_changed({"rank": 0}), "metadata rank=0: expected a positive integer of at most 4096"),
    (_changed(drop=("rank",)),
     "metadata rank=None: expected a positive integer of at most 4096"),
    (_changed({"alpha": 0}), "metadata alpha=0: expected a finite positive number"),
    (_changed(drop=("alpha",)), "metadata alpha=None: expected a finite positive number"),
    (_changed(drop=("targets",)),
     "metadata targets=None: expected a list of layer names (strings)"),
    (_changed({"targets": []}), "metadata targets=[]: expected a list of layer names (strings)"),
    (_changed({"targets": "query_dense"}),
     "metadata targets='query_dense': expected a list of layer names (strings)"),
    (_changed({"targets": ["query_dense", ""]}),
     "metadata targets=['query_dense', '']: expected a list of layer names (strings)"),
    (_changed({"targets": ["query_dense", 1]}),
     "metadata targets=['query_dense', 1]: expected a list of layer names (strings)"),
    (_changed(drop=("layers",)),
     "metadata layers=None: expected a list of distinct layer paths (strings)"),
    (_changed({"layers": []}),
     "metadata layers=[]: expected a list of distinct layer paths (strings)"),
    (_changed({"layers": ["a", ""]}),
     "metadata layers=['a', '']: expected a list of distinct layer paths (strings)"),
    (_changed({"layers": [3]}),
     "metadata layers=[3]: expected a list of distinct layer paths (strings)"),
    (_changed({"layers": ["a", "b", "a"]}),
     "metadata layers=['a', 'b', 'a']: expected a list of distinct layer paths (strings)"),
    (_changed({"quantize": "int3"}),
     "metadata quantize='int3': expected one of none, int8, int8_dynamic, int4"),
    (_changed(drop=("quantize",)),
     "metadata quantize=None: expected one of none, int8, int8_dynamic, int4"),
    (_changed(drop=("base",)), "metadata base=None: expected a dict (class_name, preset, shape)"),
    (_changed({"base": ["LlamaBackbone"]}),
     "metadata base=['LlamaBackbone']: expected a dict (class_name, preset, shape)"),
    (_changed(drop_base=("class_name",)),
     "metadata base.class_name=None: expected a backbone class name (a string)"),
    (_changed(base={"class_name": 3}),
     "metadata base.class_name=3: expected a backbone class name (a string)"),
    (_changed(base={"preset": 7}),
     "metadata base.preset=7: expected a preset name, handle or folder (a string)"),
    (_changed(base={"preset": ["a"]}),
     "metadata base.preset=['a']: expected a preset name, handle or folder (a string)"),
    (_changed(drop_base=("shape",)),
     "metadata base.shape=None: expected a dict of integer config values"),
    (_changed(base={"shape": [16]}),
     "metadata base.shape=[16]: expected a dict of integer config values"),
    (_changed(base={"shape": {"hidden_dim": 16, "dropout": 0.1}}),
     "metadata base.shape={'hidden_dim': 16, 'dropout': 0.1}: expected a dict of integer "
     "config values"),
    (_changed(base={"shape": {"name": "llama"}}),
     "metadata base.shape={'name': 'llama'}: expected a dict of integer config values"),
], ids=["rank-0", "rank-missing", "alpha-0", "alpha-missing", "targets-missing",
        "targets-empty", "targets-str", "targets-empty-name", "targets-int",
        "layers-missing", "layers-empty", "layers-empty-name", "layers-int",
        "layers-repeated", "quantize-unknown", "quantize-missing", "base-missing",
        "base-list", "class-name-missing", "class-name-int", "preset-int", "preset-list",
        "shape-missing", "shape-list", "shape-float", "shape-str"])
def test_each_bad_field_is_named_with_its_value_and_what_was_expected(metadata, message):
    assert _message(lambda: adapter_file._check_metadata(metadata, WHAT)) == (
        f"{WHAT}: {message}")


@pytest.mark.backend_independent
def test_the_first_bad_field_is_the_one_named():
    """In `save_adapter`'s order: rank, alpha, targets, layers, quantize, base."""
    metadata = _changed({"targets": [], "layers": [], "quantize": "x", "base": None})
    assert _message(lambda: adapter_file._check_metadata(metadata, WHAT)) == (
        f"{WHAT}: metadata targets=[]: expected a list of layer names (strings)")
    metadata = _changed({"layers": [], "quantize": "x"})
    assert _message(lambda: adapter_file._check_metadata(metadata, WHAT)).startswith(
        f"{WHAT}: metadata layers=[]")


# -- adapter_file.read_adapter_metadata ---------------------------------------

def _h5(path, metadata=GOOD, raw=None):
    """An h5 file at `path` whose "metadata" attribute is `metadata` as
    JSON (or `raw` as it is; neither: no attribute)."""
    import h5py

    with h5py.File(path, "w") as f:
        if raw is not None:
            f.attrs["metadata"] = raw
        elif metadata is not None:
            f.attrs["metadata"] = json.dumps(metadata)
    return str(path)


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", ["a.lora.h5", "A.LORA.H5", "a.h5"])
def test_read_adapter_metadata_gives_back_the_metadata_checked(tmp_path, name):
    import pathlib

    path = _h5(tmp_path / name)
    assert adapter_file.read_adapter_metadata(path) == GOOD
    assert adapter_file.read_adapter_metadata(pathlib.Path(path)) == GOOD


@pytest.mark.backend_independent
def test_read_adapter_metadata_refuses_what_is_not_an_adapter_file(tmp_path):
    missing = str(tmp_path / "missing.lora.h5")
    assert _message(lambda: adapter_file.read_adapter_metadata(missing)) == (
        f"adapter {missing!r} does not exist: expected a .lora.h5 file")
    folder = tmp_path / "folder.lora.h5"
    folder.mkdir()
    assert _message(lambda: adapter_file.read_adapter_metadata(folder)) == (
        f"adapter {str(folder)!r} does not exist: expected a .lora.h5 file")
    for name in ("a.lora.h5.npz", "a.pkl", "a.h5x"):
        path = _h5(tmp_path / name)
        assert _message(lambda: adapter_file.read_adapter_metadata(path)) == (
            f"adapter {path!r}: expected an h5 file (.lora.h5 from save_adapter); other "
            "formats are not loaded")


@pytest.mark.backend_independent
@pytest.mark.parametrize("kind", ["not-h5", "no-attribute", "not-json", "int", "list",
                                  "other-format", "no-format"])
def test_read_adapter_metadata_refuses_a_file_of_another_kind(tmp_path, kind):
    path = tmp_path / "a.lora.h5"
    if kind == "not-h5":
        path.write_bytes(b"not an h5 file")
        path = str(path)
    elif kind == "no-attribute":
        path = _h5(path, metadata=None)
    elif kind == "not-json":
        path = _h5(path, raw="{not json")
    elif kind == "int":
        path = _h5(path, raw=np.int64(3))  # json.loads: TypeError
    elif kind == "list":
        path = _h5(path, metadata=[GOOD])
    elif kind == "other-format":
        path = _h5(path, metadata=dict(GOOD, format="peft"))
    else:
        path = _h5(path, metadata={k: v for k, v in GOOD.items() if k != "format"})
    assert _message(lambda: adapter_file.read_adapter_metadata(path)) == (
        f"adapter {path!r} is not a kerastune LoRA adapter: expected a .lora.h5 file "
        "from save_adapter")


@pytest.mark.backend_independent
@pytest.mark.parametrize("version, shown", [(2, "2"), ("1", "'1'"), (None, "None")])
def test_read_adapter_metadata_refuses_another_format_version(tmp_path, version, shown):
    metadata = dict(GOOD, version=version)
    if version is None:
        del metadata["version"]
    path = _h5(tmp_path / "a.lora.h5", metadata)
    assert _message(lambda: adapter_file.read_adapter_metadata(path)) == (
        f"adapter {path!r} has format version {shown}: expected 1")


@pytest.mark.backend_independent
def test_read_adapter_metadata_checks_the_fields_naming_the_file(tmp_path):
    path = _h5(tmp_path / "a.lora.h5", _changed({"quantize": "int3"}))
    assert _message(lambda: adapter_file.read_adapter_metadata(path)) == (
        f"adapter {path!r}: metadata quantize='int3': expected one of none, int8, "
        "int8_dynamic, int4")
    assert os.path.isfile(path)


# -- resume/snapshot.py: _restore, _global_seed_generator ---------------------

SNAPSHOT_INFO = {"phase": "train", "epoch": 0, "step": 1, "steps_per_epoch": 3,
                 "weights": "all"}


def _dense():
    import keras

    keras.utils.set_random_seed(2)
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    return layer


def _generator():
    from kerastune_lab import compat

    return compat.get_global_attribute("global_seed_generator")


def test_torch_generator_states_in_the_file_are_handed_back_as_they_are(tmp_path):
    """`restore` gives back each torch state the file holds (CPU and CUDA),
    for `set_torch_rng_state` to put back; none in the file, none back."""
    from kerastune_lab.resume import snapshot

    layer = _dense()
    snapshot.write(tmp_path, SNAPSHOT_INFO, layer.variables)
    with np.load(tmp_path / snapshot.BACKUP_FILE) as f:
        arrays = {k: f[k] for k in f.files if not k.startswith("rng.torch")}
    path = str(tmp_path / "plain.npz")
    np.savez(path, **arrays)
    assert snapshot.restore(tmp_path, layer.variables, path=path).torch_rng == {}
    cpu, cuda = np.arange(5, dtype="uint8"), np.arange(6, dtype="uint8").reshape(2, 3)
    path = str(tmp_path / "torch.npz")
    np.savez(path, **arrays, **{"rng.torch": cpu, "rng.torch_cuda": cuda})
    torch_rng = snapshot.restore(tmp_path, layer.variables, path=path).torch_rng
    assert sorted(torch_rng) == ["rng.torch", "rng.torch_cuda"]
    np.testing.assert_array_equal(torch_rng["rng.torch"], cpu)
    np.testing.assert_array_equal(torch_rng["rng.torch_cuda"], cuda)


def test_an_epoch_length_not_recorded_or_not_given_is_not_checked(tmp_path):
    from kerastune_lab.resume import snapshot

    layer = _dense()
    state = snapshot.write(tmp_path / "none", dict(SNAPSHOT_INFO, steps_per_epoch=None),
                           layer.variables)
    for steps in (None, 0, 4):
        restored = snapshot.restore(tmp_path / "none", layer.variables, steps_per_epoch=steps)
        assert restored.state == state and restored.metrics is None
    snapshot.write(tmp_path / "three", SNAPSHOT_INFO, layer.variables)
    for steps in (None, 0, 3):
        assert snapshot.restore(tmp_path / "three", layer.variables,
                                steps_per_epoch=steps).state["steps_per_epoch"] == 3
    with pytest.raises(KerastuneError) as info:
        snapshot.restore(tmp_path / "three", layer.variables, steps_per_epoch=2)
    latest = str(tmp_path / "three" / snapshot.BACKUP_FILE)
    # "--overwrite" or "overwrite=True": the CLI's or the API's word for it.
    assert str(info.value).startswith(f"backup {latest!r} has 3 steps an epoch, this run 2: "
                                      "pass ")


def test_a_write_where_nothing_has_drawn_makes_no_keras_generator(tmp_path):
    """Where Keras' global seed generator does not exist yet, a write
    records no Keras random state and leaves it not made."""
    from kerastune_lab.resume import snapshot

    layer = _dense()  # set_random_seed removes the global seed generator
    assert _generator() is None
    snapshot.write(tmp_path, SNAPSHOT_INFO, layer.variables)
    assert _generator() is None
    with np.load(tmp_path / snapshot.BACKUP_FILE) as f:
        assert "rng.keras" not in f.files and "rng.numpy" in f.files


def test_restore_assigns_the_existing_keras_generator_rather_than_replacing_it(tmp_path):
    import keras

    from kerastune_lab.resume import snapshot

    layer = _dense()
    keras.random.uniform((1,))
    snapshot.write(tmp_path, SNAPSHOT_INFO, layer.variables)
    written = keras.ops.convert_to_numpy(_generator().state)
    keras.random.uniform((1,))
    generator = _generator()
    snapshot.restore(tmp_path, layer.variables)
    assert _generator() is generator
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(generator.state), written)


def test_a_keras_without_the_global_state_names_the_random_state_as_what_needs_it(
        monkeypatch):
    """Reading (write) or making (restore) Keras' global seed generator
    where Keras is out of range: the error names what needs the private
    name."""
    import keras

    from kerastune_lab import compat
    from kerastune_lab.resume import snapshot

    needs = f"({compat.TESTED['keras']}; saving and restoring Keras' random state needs it)"
    monkeypatch.setattr(compat, "supported", lambda package: False)
    with pytest.raises(compat.IncompatibleVersion) as info:
        snapshot._global_seed_generator()
    assert needs in str(info.value), str(info.value)
    monkeypatch.undo()
    keras.utils.set_random_seed(3)  # no global seed generator
    answers = iter([True])  # the read is in range, the set is not
    monkeypatch.setattr(compat, "supported", lambda package: next(answers, False))
    with pytest.raises(compat.IncompatibleVersion) as info:
        snapshot._global_seed_generator(create=True)
    assert needs in str(info.value), str(info.value)
    monkeypatch.undo()
    assert _generator() is None


def test_torch_cuda_generator_states_are_saved_and_put_back_where_cuda_is(monkeypatch):
    """torch's CUDA generators (a GPU machine's): saved only where CUDA is
    available and initialized, put back only where the device count is the
    one saved. CUDA is played by monkeypatch: this machine has none."""
    import keras
    import torch

    from kerastune_lab.resume import snapshot

    saved = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    for available, initialized in ((True, False), (False, True)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        assert sorted(snapshot._torch_rng_state()) == ["rng.torch"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    arrays = snapshot._torch_rng_state()
    assert sorted(arrays) == ["rng.torch", "rng.torch_cuda"]
    np.testing.assert_array_equal(arrays["rng.torch"], torch.get_rng_state().numpy())
    assert arrays["rng.torch_cuda"].dtype == np.uint8
    np.testing.assert_array_equal(arrays["rng.torch_cuda"], [[1, 2, 3], [4, 5, 6]])

    put = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: put.append([s.numpy().tolist() for s in states]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cpu = torch.get_rng_state().numpy()
    first = torch.rand(3)
    snapshot.set_torch_rng_state(arrays)
    assert torch.equal(torch.rand(3), first)  # the CPU generator put back too
    assert put == [[[1, 2, 3], [4, 5, 6]]]
    snapshot.set_torch_rng_state({"rng.torch": cpu})  # no CUDA state saved
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # not the count saved
    snapshot.set_torch_rng_state(arrays)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    snapshot.set_torch_rng_state(arrays)
    assert put == [[[1, 2, 3], [4, 5, 6]]]
