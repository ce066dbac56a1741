"""The LoRA cases that mutmut found untested (tests/README.md, "Mutation
testing"): kerastune_lab/finetune/lora/layers.py; the merge.py and
adapter_file.py tests below were written ahead of those modules' mutation
run (not measured yet). Tiny Keras models make every weight exact; alpha is
never the rank, so the scale alpha / rank is never 1."""

import json
import shutil

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from kerastune_lab.finetune.lora import adapter_file, merge
from kerastune_lab.finetune.lora.layers import Factorisation
from kerastune_lab.finetune.quantize import quantization_mode, quantize
from tests.conftest import raises_one_line

RANK, ALPHA = 2, 5.0  # scale 2.5
QUERY = "transformer_layer_0/self_attention/query"


def _np(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def _dense_model(units=3, activation=None, dtype=None):
    import keras

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(units, activation=activation, name="proj",
                                 dtype=dtype)(inputs)
    return keras.Model(inputs, outputs)


def _set_factors(layer, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 0.5, tuple(layer.lora_a.shape)).astype("float32")
    b = rng.normal(0, 0.5, tuple(layer.lora_b.shape)).astype("float32")
    layer.lora_a.assign(a)
    layer.lora_b.assign(b)
    return a.astype("float64"), b.astype("float64")


def _tiny_llama(mode="none"):
    import keras_hub

    lm = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"),
                                               preprocessor=None)
    return quantize(lm, mode)


# -- layers.py: Factorisation -------------------------------------------------

@pytest.mark.backend_independent
def test_factorisation_spelled_out():
    f = Factorisation(" bqm , muh -> bquh ", [16, 4, 8])  # spaces, a list
    assert f.kernel_shape == (16, 4, 8) and type(f.kernel_shape[0]) is int
    assert (f.in_dims, f.out_dims, f.d_in, f.d_out) == ((16,), (4, 8), 16, 32)
    assert (f.equation_a, f.equation_b) == ("bqm,ma->bqa", "bqa,auh->bquh")
    assert f.perm == (0, 1, 2)
    o = Factorisation("bquh,uhm->bqm", (4, 8, 16))
    assert (o.in_dims, o.out_dims, o.d_in, o.d_out) == ((4, 8), (16,), 32, 16)
    assert (o.equation_a, o.equation_b) == ("bquh,uha->bqa", "bqa,am->bqm")
    # The first letter the equation does not use: not "a" here.
    d = Factorisation("...a,ab->...b", (6, 3))
    assert (d.equation_a, d.equation_b) == ("...a,ac->...c", "...c,cb->...b")
    assert d.shapes(RANK) == ((6, RANK), (RANK, 3))


@pytest.mark.backend_independent
def test_factorisation_transposes_the_update_into_the_kernel_layout():
    # Kernel (d_out, d_in): the contracted axis comes second.
    f = Factorisation("ab,cb->ac", (3, 5))
    assert (f.in_dims, f.out_dims, f.perm) == ((5,), (3,), (1, 0))
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, RANK)), rng.normal(size=(RANK, 3))
    np.testing.assert_allclose(f.delta(a, b, 2.5), 2.5 * (a @ b).T, rtol=1e-12)
    assert f.delta(a.astype("float32"), b, 1.0).dtype == np.float64
    # Three kernel axes, one contracted in the middle.
    g = Factorisation("xm,hmd->xhd", (2, 5, 3))
    assert (g.in_dims, g.out_dims, g.perm) == ((5,), (2, 3), (1, 0, 2))
    a, b = rng.normal(size=(5, RANK)), rng.normal(size=(RANK, 6))
    x = rng.normal(size=(4, 5))
    hidden = np.einsum(g.equation_a, x, a)
    two_step = np.einsum(g.equation_b, hidden, b.reshape((RANK, 2, 3)))
    np.testing.assert_allclose(np.einsum(g.equation, x, g.delta(a, b, 1.0)), two_step,
                               rtol=1e-10)


@pytest.mark.backend_independent
@pytest.mark.parametrize("equation, shape", [
    ("ab,bc", (3, 3)),            # no "->"
    ("ab->b", (3,)),              # no kernel
    ("ab,cd->abd", (3, 3)),       # nothing contracted
    ("ab,b->a", (3,)),            # nothing kept
    ("ab,bc->abc", (3, 3)),       # a contracted axis in the output
    ("ab,bc->a", (3, 3)),         # a kept axis missing from the output
    ("ab,bc->ac", (3, 3, 3)),     # kernel shape of another rank
])
def test_factorisation_refuses_what_it_cannot_factor(equation, shape):
    raises_one_line(lambda: Factorisation(equation, shape), repr(equation))


def test_factorisation_of_layers():
    import keras

    dense = keras.layers.Dense(3)
    dense.build((None, 7, 4))
    f = Factorisation.of(dense)
    assert (f.equation, f.kernel_shape) == ("...a,ab->...b", (4, 3))
    einsum = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 3))
    einsum.build((None, 5, 8))
    assert Factorisation.of(einsum).kernel_shape == (8, 2, 3)
    # int4 packs two weights a byte: the factorisation reads the original shape.
    einsum.quantize("int4")
    assert Factorisation.of(einsum).kernel_shape == (8, 2, 3)


# -- layers.py: enable_lora and the layers ------------------------------------

@pytest.mark.backend_independent
@pytest.mark.parametrize("rank", [0, True, 1.0, "2", None])
def test_enable_lora_refuses_a_rank(rank):
    raises_one_line(lambda: lora.enable_lora(_dense_model(), rank), f"lora_rank={rank!r}")


@pytest.mark.backend_independent
@pytest.mark.parametrize("alpha", [0, -1.5, True])
def test_enable_lora_refuses_an_alpha(alpha):
    raises_one_line(lambda: lora.enable_lora(_dense_model(), 2, alpha=alpha),
                    f"lora_alpha={alpha!r}")


@pytest.mark.backend_independent
def test_enable_lora_refuses_an_alpha_that_is_not_a_number():
    raises_one_line(lambda: lora.enable_lora(_dense_model(), 2, alpha="2"), "lora_alpha='2'")


@pytest.mark.backend_independent
@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_enable_lora_refuses_a_nan_alpha(alpha):
    raises_one_line(lambda: lora.enable_lora(_dense_model(), 2, alpha=alpha),
                    f"lora_alpha={alpha!r}", "expected a finite positive number")


@pytest.mark.parametrize("rank, alpha, scale", [(1, None, 1.0), (2, None, 1.0),
                                                (2, 3, 1.5), (4, 0.5, 0.125)])
def test_enable_lora_records_rank_alpha_and_scale(rank, alpha, scale):
    model = _dense_model()
    assert lora.enable_lora(model, rank, alpha=alpha, targets="proj") is model
    state = lora.lora_state(model)
    layer = model.get_layer("proj")
    assert (state.rank, state.alpha, state.targets) == (rank, rank if alpha is None else alpha,
                                                        ("proj",))
    assert state.layers == {"proj": layer}
    assert layer.lora_scale == scale
    assert (tuple(layer.lora_a.shape), tuple(layer.lora_b.shape)) == ((4, rank), (rank, 3))


def test_only_the_factors_train_and_the_model_was_frozen_before():
    import keras

    model = _dense_model(activation="relu")
    other = keras.layers.Dense(2, name="other")
    model = keras.Sequential([model, other])
    model.build((None, 4))
    model.trainable = False  # a frozen model gets trainable factors all the same
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    proj = model.layers[0].get_layer("proj")
    assert [(w.name, w.trainable) for w in model.weights] == [
        ("kernel", False), ("bias", False), ("lora_a", True), ("lora_b", True),
        ("kernel", False), ("bias", False)]
    assert model.trainable and proj.trainable and not other.trainable
    assert [w.name for w in model.trainable_weights] == ["lora_a", "lora_b"]
    assert proj.lora_a.dtype == "float32" and proj.lora_b.dtype == "float32"


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_the_factors_are_float32_on_a_half_precision_layer(dtype):
    model = _dense_model(dtype=dtype)
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    layer = model.get_layer("proj")
    assert layer.kernel.dtype == dtype
    assert (layer.lora_a.dtype, layer.lora_b.dtype) == ("float32", "float32")


def test_a_starts_as_peft_kaiming_uniform_and_b_at_zero():
    import keras

    inputs = keras.Input((400,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="proj")(inputs))
    lora.enable_lora(model, 64, targets="proj")
    a = _np(model.get_layer("proj").lora_a)
    bound = 1 / np.sqrt(400)  # kaiming_uniform(a=sqrt(5)): sqrt(1 / fan_in)
    # float32 factors: a draw at the bound rounds to float32(1/20) > 1/20 (seen in CI)
    assert np.abs(a).max() <= np.float32(bound) and np.abs(a).max() > 0.95 * bound
    assert abs(a.mean()) < 0.05 * bound and len(np.unique(a)) > 1000
    np.testing.assert_array_equal(_np(model.get_layer("proj").lora_b), 0)


def test_the_update_is_scaled_and_goes_in_before_the_activation():
    model = _dense_model(activation="relu")
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    layer = model.get_layer("proj")
    a, b = _set_factors(layer)
    x = np.random.default_rng(3).normal(size=(5, 4)).astype("float32")
    kernel = _np(layer.kernel).astype("float64") + 2.5 * a @ b
    expected = np.maximum(x @ kernel + _np(layer.bias), 0)
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)
    assert layer.get_config()["activation"] == "relu"
    linear = _dense_model()
    lora.enable_lora(linear, RANK, ALPHA, targets="proj")
    assert linear.get_layer("proj").get_config()["activation"] == "linear"


def test_the_update_computes_in_the_layer_compute_dtype():
    model = _dense_model(dtype="mixed_bfloat16")
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    layer = model.get_layer("proj")
    a, b = _set_factors(layer)
    assert layer.lora_a.dtype == "float32"
    x = np.random.default_rng(3).normal(size=(5, 4)).astype("float32")
    out = model(x)
    assert "bfloat16" in str(out.dtype)
    kernel = _np(layer.kernel).astype("float64") + 2.5 * a @ b
    np.testing.assert_allclose(_np(out).astype("float64"), x @ kernel + _np(layer.bias),
                               rtol=0.05, atol=0.05)


def test_the_factors_are_cast_to_the_compute_dtype_before_each_einsum(monkeypatch):
    import keras

    from kerastune_lab.finetune.lora import layers

    seen = []

    class Ops:
        """keras.ops, recording the dtypes each einsum gets."""

        def __getattr__(self, name):
            return getattr(keras.ops, name)

        def einsum(self, equation, *operands):
            seen.append((equation, [keras.backend.standardize_dtype(x.dtype)
                                    for x in operands]))
            return keras.ops.einsum(equation, *operands)

    model = _dense_model(dtype="mixed_bfloat16")
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    _set_factors(model.get_layer("proj"))
    monkeypatch.setattr(layers, "ops", Ops())
    model(np.ones((2, 4), "float32"))
    assert seen == [("...a,ac->...c", ["bfloat16", "bfloat16"]),
                    ("...c,cb->...b", ["bfloat16", "bfloat16"])]


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_quantized_base_gets_the_update_too(mode):
    import keras

    model = _dense_model(units=4, activation="relu")
    x = np.random.default_rng(3).normal(size=(5, 4)).astype("float32")
    model.quantize(mode)
    layer = model.get_layer("proj")
    layer.activation = keras.activations.linear
    base = _np(model(x)).astype("float64")  # the quantized base, before the relu
    layer.activation = keras.activations.relu
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    assert layer.quantization_mode == mode
    a, b = _set_factors(layer)
    np.testing.assert_allclose(_np(model(x)), np.maximum(base + 2.5 * x @ a @ b, 0),
                               rtol=1e-5, atol=1e-5)


def test_keras_checkpoints_hold_a_and_b_beside_the_unmerged_base():
    model = _dense_model()
    lora.enable_lora(model, RANK, ALPHA, targets="proj")
    layer = model.get_layer("proj")
    a, b = _set_factors(layer)
    store = {}
    layer.save_own_variables(store)
    np.testing.assert_array_equal(_np(store["lora_a"]), a.astype("float32"))
    np.testing.assert_array_equal(_np(store["lora_b"]), b.astype("float32"))
    np.testing.assert_array_equal(_np(store["0"]), _np(layer.kernel))
    other = _dense_model()
    lora.enable_lora(other, RANK, ALPHA, targets="proj")
    other.get_layer("proj").load_own_variables(store)
    np.testing.assert_array_equal(_np(other.get_layer("proj").lora_a), a.astype("float32"))
    np.testing.assert_array_equal(_np(other.get_layer("proj").lora_b), b.astype("float32"))
    np.testing.assert_array_equal(_np(other.get_layer("proj").kernel), _np(layer.kernel))


# -- layers.py: counting ------------------------------------------------------

def test_parameter_counts_exactly():
    import keras

    model = _dense_model(units=3)  # 4 * 3 + 3 = 15
    lora.enable_lora(model, RANK, ALPHA, targets="proj")  # 4 * 2 + 2 * 3 = 14
    assert lora.parameter_counts(model) == {"trainable": 14, "total": 29, "ratio": 14 / 29}
    assert lora.parameter_counts(keras.layers.Layer()) == {
        "trainable": 0, "total": 0, "ratio": 0.0}


def test_count_lora_parameters_exactly():
    import keras_hub

    config = dict(vocabulary_size=120, num_layers=2, num_query_heads=4,
                  num_key_value_heads=2, hidden_dim=16, intermediate_dim=32)
    llama = keras_hub.models.LlamaBackbone
    counts = lora.count_lora_parameters(llama, config, RANK, ALPHA)
    # query 16 -> 16, value 16 -> 8 (two key-value heads of 4), two layers.
    trainable = 2 * ((16 * RANK + RANK * 16) + (16 * RANK + RANK * 8))
    total = trainable + sum(int(np.prod(w.shape)) for w in llama(**config).weights)
    assert counts == {"trainable": trainable, "total": total, "ratio": trainable / total,
                      "adapter_bytes": 4 * trainable}
    # alpha is checked as enable_lora checks it.
    raises_one_line(lambda: lora.count_lora_parameters(llama, config, RANK, alpha=0),
                    "lora_alpha=0")


# -- adapter_file.py ----------------------------------------------------------

LAYERS = sorted(f"transformer_layer_{i}/self_attention/{name}"
                for i in (0, 1) for name in ("query", "value"))
SHAPE = {"dropout": 0, "hidden_dim": 16, "intermediate_dim": 32, "num_key_value_heads": 2,
         "num_layers": 2, "num_query_heads": 4, "rope_max_wavelength": 10000,
         "vocabulary_size": 400}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(path, {layer path: (A, B)}): an adapter of random factors, rank 2,
    alpha 5, targets given as value then query, saved into new folders."""
    lm = _tiny_llama()
    lora.enable_lora(lm, RANK, ALPHA, ("value", "query"))
    factors = {}
    for i, (layer_path, layer) in enumerate(sorted(lora.lora_state(lm).layers.items())):
        factors[layer_path] = tuple(f.astype("float32") for f in _set_factors(layer, i))
    path = tmp_path_factory.mktemp("saved") / "new" / "deeper" / "a.lora.h5"
    written = lora.save_adapter(lm, path, preset="tiny/llama")
    assert written == str(path) and type(written) is str
    return written, factors


@pytest.mark.backend_independent
def test_save_adapter_writes_the_metadata_and_the_factors_only(saved):
    import h5py

    path, factors = saved
    with h5py.File(path, "r") as f:
        metadata = json.loads(f.attrs["metadata"])
        names = []
        f.visit(names.append)
        stored = {p: (f[f"layers/{p}/lora_a"][()], f[f"layers/{p}/lora_b"][()])
                  for p in LAYERS}
    assert metadata == {
        "format": "kerastune_lora", "version": 1, "rank": RANK, "alpha": ALPHA,
        "targets": ["value", "query"], "quantize": "none", "layers": LAYERS,
        "base": {"class_name": "LlamaBackbone", "preset": "tiny/llama", "shape": SHAPE}}
    assert list(metadata) == ["format", "version", "rank", "alpha", "targets", "quantize",
                              "layers", "base"]
    assert list(metadata["base"]["shape"]) == sorted(SHAPE)
    assert sorted(n for n in names if n.endswith(("lora_a", "lora_b"))) == sorted(
        f"layers/{p}/{s}" for p in LAYERS for s in ("lora_a", "lora_b"))
    assert len(names) == 1 + 2 * 2 + 4 * 3  # layers, two transformer layers, ...
    for layer_path, (a, b) in factors.items():
        np.testing.assert_array_equal(stored[layer_path][0], a)
        np.testing.assert_array_equal(stored[layer_path][1], b)
    assert lora.read_adapter_metadata(path) == metadata


@pytest.mark.backend_independent
def test_save_adapter_without_preset_records_none(tmp_path, monkeypatch):
    lm = _tiny_llama()
    lora.enable_lora(lm, RANK, ALPHA)
    monkeypatch.chdir(tmp_path)  # a bare file name: the folder is the current one
    path = lora.save_adapter(lm, "b.lora.h5")
    assert path == "b.lora.h5"
    metadata = lora.read_adapter_metadata(tmp_path / "b.lora.h5")
    assert metadata["base"]["preset"] is None and metadata["targets"] == ["query", "value"]


@pytest.mark.backend_independent
def test_an_adapter_named_in_capitals_is_read(saved, tmp_path):
    path, factors = saved
    upper = tmp_path / "A.LORA.H5"
    shutil.copy(path, upper)
    assert lora.read_adapter_metadata(upper)["rank"] == RANK
    metadata, read = lora.read_adapter_factors(upper)
    assert metadata["layers"] == LAYERS and sorted(read) == LAYERS


@pytest.mark.backend_independent
def test_read_adapter_factors_exactly(saved):
    path, factors = saved
    metadata, read = lora.read_adapter_factors(path)
    assert metadata["alpha"] == ALPHA and list(read) == LAYERS
    for layer_path, (a, b) in factors.items():
        assert read[layer_path][0].dtype == np.float32
        np.testing.assert_array_equal(read[layer_path][0], a)
        np.testing.assert_array_equal(read[layer_path][1], b)


def _edited(saved, tmp_path, edit, name="edited"):
    import h5py

    path = tmp_path / f"{name}.lora.h5"
    shutil.copy(saved[0], path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return str(path)


def _replace_factor(factor, data):
    def edit(f):
        del f[f"layers/{QUERY}/{factor}"]
        f[f"layers/{QUERY}/{factor}"] = data
    return edit


@pytest.mark.backend_independent
@pytest.mark.parametrize("factor, shape", [
    ("lora_a", (16,)), ("lora_a", (16, 2, 1)), ("lora_a", (16, 3)),
    ("lora_b", (16,)), ("lora_b", (2, 16, 1)), ("lora_b", (3, 16)), ("lora_b", (1, 16)),
], ids=["a-1d", "a-3d", "a-rank", "b-1d", "b-3d", "b-rank", "b-rank-1"])
def test_read_adapter_factors_checks_each_shape_against_the_rank(saved, tmp_path,
                                                                 factor, shape):
    path = _edited(saved, tmp_path, _replace_factor(factor, np.zeros(shape, "float32")))
    raises_one_line(lambda: lora.read_adapter_factors(path), "edited.lora.h5",
                    f"lora factors of {QUERY!r} have shapes",
                    "expected (d_in, 2), (2, d_out) for the recorded rank 2")


@pytest.mark.backend_independent
def test_read_adapter_factors_refuses_missing_integer_and_nan_factors(saved, tmp_path):
    def delete(f):
        del f[f"layers/{QUERY}/lora_b"]
    path = _edited(saved, tmp_path, delete, "missing")
    raises_one_line(lambda: lora.read_adapter_factors(path), f"{QUERY}/lora_b' is missing")
    path = _edited(saved, tmp_path, _replace_factor("lora_a", np.zeros((16, 2), "int32")),
                   "ints")
    raises_one_line(lambda: lora.read_adapter_factors(path), "holds int32 values")
    nan = np.zeros((2, 16), "float32")
    nan[1, 3] = np.nan
    path = _edited(saved, tmp_path, _replace_factor("lora_b", nan), "nan")
    raises_one_line(lambda: lora.read_adapter_factors(path), f"{QUERY}/lora_b'",
                    "holds NaN or inf")


@pytest.mark.backend_independent
@pytest.mark.parametrize("changes, fragment", [
    ({"version": 2}, "format version 2: expected 1"),
    ({"version": None}, "format version None: expected 1"),
    ({"targets": []}, "metadata targets=[]: expected a list of layer names"),
    ({"targets": ["query", ""]}, "metadata targets=['query', '']"),
    ({"layers": []}, "metadata layers=[]: expected a list of distinct"),
    ({"layers": "x"}, "metadata layers='x'"),
    ({"layers": [QUERY, 3]}, "metadata layers=["),
    ({"base": {"preset": None, "shape": {}}}, "metadata base.class_name=None"),
    ({"base": {"class_name": 3, "preset": None, "shape": {}}}, "base.class_name=3"),
    ({"base": {"class_name": "LlamaBackbone", "shape": {}}}, None),
    ({"base": {"class_name": "LlamaBackbone", "preset": None, "shape": []}},
     "metadata base.shape=[]: expected a dict of integer config values"),
    ({"base": {"class_name": "LlamaBackbone", "preset": None, "shape": {"a": 1.5}}},
     "metadata base.shape={'a': 1.5}"),
    ({"base": {"class_name": "LlamaBackbone", "preset": None, "shape": {"a": True}}}, None),
    ({"format": "other"}, "is not a kerastune LoRA adapter"),
])
def test_metadata_fields_are_checked(saved, tmp_path, changes, fragment):
    def edit(f):
        metadata = json.loads(f.attrs["metadata"])
        metadata.update(changes)
        f.attrs["metadata"] = json.dumps(metadata)
    path = _edited(saved, tmp_path, edit)
    if fragment is None:  # accepted
        assert lora.read_adapter_metadata(path)["base"] == changes["base"]
    else:
        raises_one_line(lambda: lora.read_adapter_metadata(path), "edited.lora.h5", fragment)


@pytest.mark.backend_independent
def test_metadata_that_is_not_a_dict_or_not_json_is_refused(saved, tmp_path):
    for name, value in (("list", "[1, 2]"), ("text", "{not json")):
        def edit(f, value=value):
            f.attrs["metadata"] = value
        path = _edited(saved, tmp_path, edit, name)
        raises_one_line(lambda: lora.read_adapter_metadata(path),
                        "is not a kerastune LoRA adapter")

    def drop(f):
        del f.attrs["metadata"]
    path = _edited(saved, tmp_path, drop, "none")
    raises_one_line(lambda: lora.read_adapter_metadata(path), "is not a kerastune LoRA")
    (tmp_path / "a.lora.pkl").write_bytes(open(saved[0], "rb").read())
    raises_one_line(lambda: lora.read_adapter_metadata(tmp_path / "a.lora.pkl"),
                    "expected an h5 file")


def test_check_base_names_the_preset_and_the_shape_key(saved, tmp_path):
    import keras_hub

    metadata = lora.read_adapter_metadata(saved[0])
    smaller = keras_hub.models.LlamaBackbone(
        vocabulary_size=400, num_layers=2, num_query_heads=4, num_key_value_heads=2,
        hidden_dim=16, intermediate_dim=24)
    raises_one_line(lambda: adapter_file.check_base(metadata, smaller, "p"),
                    "adapter 'p' was trained on a LlamaBackbone (tiny/llama) with "
                    "intermediate_dim=32, but the base has intermediate_dim=24")
    # A key the base has and the file does not (or the other way round).
    extra = dict(metadata, base=dict(metadata["base"], preset=None,
                                     shape=dict(SHAPE, vocabulary_size=None)))
    del extra["base"]["shape"]["dropout"]
    raises_one_line(lambda: adapter_file.check_base(extra, _tiny_llama().backbone, "p"),
                    "adapter 'p' was trained on a LlamaBackbone with dropout=None, but the "
                    "base has dropout=0")
    adapter_file.check_base(metadata, _tiny_llama().backbone, "p")  # the same: accepted


def test_load_adapter_assigns_each_layer_its_factors(saved):
    path, factors = saved
    lm = _tiny_llama()
    assert lora.load_adapter(lm, path) == lora.read_adapter_metadata(path)
    state = lora.lora_state(lm)
    assert (state.rank, state.alpha, state.targets) == (RANK, ALPHA, ("value", "query"))
    for layer_path, (a, b) in factors.items():
        layer = state.layers[layer_path]
        assert layer.lora_scale == 2.5
        np.testing.assert_array_equal(_np(layer.lora_a), a)
        np.testing.assert_array_equal(_np(layer.lora_b), b)
    # A model with LoRA enabled as recorded keeps its layers and gets the factors.
    again = _tiny_llama()
    lora.enable_lora(again, RANK, ALPHA, ("value", "query"))
    layers = dict(lora.lora_state(again).layers)
    lora.load_adapter(again, path)
    assert lora.lora_state(again).layers == layers
    for layer_path, (a, b) in factors.items():
        np.testing.assert_array_equal(_np(layers[layer_path].lora_a), a)
        np.testing.assert_array_equal(_np(layers[layer_path].lora_b), b)


@pytest.fixture(scope="module")
def saved_int8(tmp_path_factory):
    lm = _tiny_llama("int8")
    lora.enable_lora(lm, RANK, ALPHA)
    for i, layer in enumerate(lora.lora_state(lm).layers.values()):
        _set_factors(layer, i)
    return lora.save_adapter(lm, tmp_path_factory.mktemp("int8") / "q.lora.h5")


def test_load_adapter_quantizes_the_base_as_recorded_or_not(saved_int8, saved):
    lm = _tiny_llama()
    assert lora.load_adapter(lm, saved_int8)["quantize"] == "int8"
    assert quantization_mode(lm) == "int8"
    kept = _tiny_llama()
    lora.load_adapter(kept, saved_int8, quantize_base=False)
    assert quantization_mode(kept) == "none" and lora.lora_state(kept).rank == RANK
    already = _tiny_llama("int8")
    lora.load_adapter(already, saved_int8)
    assert quantization_mode(already) == "int8"
    # A base quantized otherwise, or one with LoRA that would need quantizing: refused.
    raises_one_line(lambda: lora.load_adapter(_tiny_llama("int8"), saved[0]),
                    "quantize=none", "quantize=int8")
    raises_one_line(lambda: lora.load_adapter(_tiny_llama("int8"), saved[0],
                                              quantize_base=False), "quantize=none")
    with_lora = lora.enable_lora(_tiny_llama(), RANK, ALPHA)
    raises_one_line(lambda: lora.load_adapter(with_lora, saved_int8),
                    "was trained with quantize=int8, but the base has quantize=none")
    # ... unless it is kept as it is.
    lora.load_adapter(with_lora, saved_int8, quantize_base=False)
    assert quantization_mode(with_lora) == "none"


# -- merge.py -----------------------------------------------------------------

def _expected_kernels(base, factors):
    kernels = {}
    paths = lora.layer_paths(base)
    for layer_path, (a, b) in factors.items():
        layer = paths[layer_path]
        f = Factorisation.of(layer)
        kernels[layer_path] = (_np(layer.kernel).astype("float64")
                               + f.delta(a, b, ALPHA / RANK)).astype("float32")
    return kernels


def test_merge_adapter_adds_the_scaled_update_to_each_kernel(saved):
    path, factors = saved
    expected = _expected_kernels(_tiny_llama(), factors)
    lm = _tiny_llama()
    untouched = {p: _np(w).copy() for p, w in ((w.path, w) for w in lm.weights)}
    assert lora.merge_adapter(lm, path) is lm
    assert lora.lora_state(lm) is None
    paths = lora.layer_paths(lm)
    for layer_path, kernel in expected.items():
        np.testing.assert_allclose(_np(paths[layer_path].kernel), kernel, rtol=1e-6,
                                   atol=1e-7)
        assert not np.allclose(_np(paths[layer_path].kernel),
                               untouched[paths[layer_path].kernel.path])
    merged = {paths[p].kernel.path for p in expected}
    for w in lm.weights:
        if w.path not in merged:
            np.testing.assert_array_equal(_np(w), untouched[w.path])


def test_merge_adapter_keeps_a_bfloat16_kernel_bfloat16(saved):
    import keras_hub

    path, factors = saved
    lm = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"),
                                               preprocessor=None, dtype="bfloat16")
    base = {p: _np(lora.layer_paths(lm)[p].kernel).astype("float64") for p in factors}
    lora.merge_adapter(lm, path)
    layer = lora.layer_paths(lm)[QUERY]
    assert "bfloat16" in str(layer.kernel.dtype)
    a, b = factors[QUERY]
    expected = base[QUERY] + Factorisation.of(layer).delta(a, b, 2.5)
    np.testing.assert_allclose(_np(layer.kernel).astype("float64"), expected, rtol=0.02,
                               atol=0.02)


def test_merge_adapter_refuses_a_layer_that_is_not_a_projection(saved, tmp_path):
    def edit(f):
        metadata = json.loads(f.attrs["metadata"])
        metadata["layers"] = sorted(metadata["layers"][:3]
                                    + ["transformer_layer_1/self_attention_layernorm"])
        f.attrs["metadata"] = json.dumps(metadata)
    path = _edited(saved, tmp_path, edit)
    raises_one_line(lambda: lora.merge_adapter(_tiny_llama(), path),
                    "names layer 'transformer_layer_1/self_attention_layernorm', where the "
                    "base has no Dense/EinsumDense layer")
    raises_one_line(lambda: lora.merge_adapter(_tiny_llama("int8"), saved[0]),
                    "expected a plain float base")


def test_merged_model_and_the_float_base(saved, tmp_path, monkeypatch):
    import keras_hub

    path, factors = saved
    preset = testing.tiny_preset("llama")
    task, metadata = lora.load_float_base(path, preset=preset)
    assert metadata == lora.read_adapter_metadata(path)
    assert isinstance(task, keras_hub.models.LlamaCausalLM) and lora.lora_state(task) is None
    expected = _expected_kernels(task, factors)
    merged = lora.merged_model(path, preset=preset,
                               task_cls=keras_hub.models.LlamaCausalLM)
    np.testing.assert_allclose(_np(lora.layer_paths(merged)[QUERY].kernel), expected[QUERY],
                               rtol=1e-6, atol=1e-7)
    out = tmp_path / "merged"
    assert lora.save_merged_preset(path, out, preset=preset) == out
    again = keras_hub.models.CausalLM.from_preset(str(out), preprocessor=None)
    np.testing.assert_allclose(_np(lora.layer_paths(again)[QUERY].kernel), expected[QUERY],
                               rtol=1e-6, atol=1e-7)
    # Without preset=: the one the adapter records ("tiny/llama" here).
    seen = []
    monkeypatch.setattr(merge, "load_quantized",
                        lambda cls, p, mode, dtype=None, **kw: seen.append(
                            (cls, p, mode, dtype, kw)) or _tiny_llama())
    import kerastune_lab.models as models
    monkeypatch.setattr(models, "resolve_preset", lambda p, cls: f"resolved:{p}")
    task, metadata = lora.load_with_adapter(path, dtype="bfloat16", seed=3)
    assert seen == [(keras_hub.models.CausalLM, "resolved:tiny/llama", "none", "bfloat16",
                     {"seed": 3})]
    assert lora.lora_state(task).rank == RANK



def test_merge_adapter_rounds_a_float16_kernel_through_float32(tmp_path):
    """The merged float64 kernel reaches a float16 kernel through float32:
    1 + 2^-11 + 2^-30 is 1 + 2^-11 in float32, a tie float16 breaks to 1,
    where a cast straight from float64 gives 1 + 2^-10. Factors exact in
    float16, alpha 4 over rank 2 (scale 2)."""
    import keras_hub

    def float16_llama():
        return keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"),
                                                     preprocessor=None, dtype="float16")

    lm = float16_llama()
    lora.enable_lora(lm, 2, 4.0, ("query",))
    layer = lora.lora_state(lm).layers[QUERY]
    a = np.zeros(tuple(layer.lora_a.shape))
    b = np.zeros(tuple(layer.lora_b.shape))
    a.reshape(-1, 2)[0] = [2.0 ** -6, 2.0 ** -15]
    b.reshape(2, -1)[:, 0] = [2.0 ** -6, 2.0 ** -16]
    for other in lora.lora_state(lm).layers.values():
        other.lora_a.assign(np.zeros(tuple(other.lora_a.shape)))
        other.lora_b.assign(np.zeros(tuple(other.lora_b.shape)))
    layer.lora_a.assign(a)
    layer.lora_b.assign(b)
    path = lora.save_adapter(lm, tmp_path / "f16.lora.h5", preset="tiny/llama")

    base = float16_llama()
    query = lora.layer_paths(base)[QUERY]
    delta = Factorisation.of(query).delta(a, b, 2.0)
    assert np.count_nonzero(delta) == 1 and delta.max() == 2.0 ** -11 + 2.0 ** -30
    at = np.unravel_index(np.argmax(delta), delta.shape)
    kernel = _np(query.kernel).copy()
    kernel[at] = 1.0
    query.kernel.assign(kernel)
    exact = kernel.astype("float64") + delta
    assert exact[at].astype("float16") == 1 + 2.0 ** -10  # straight from float64
    lora.merge_adapter(base, path)
    merged = _np(query.kernel)
    assert merged.dtype == np.float16 and merged[at] == 1.0
    np.testing.assert_array_equal(merged, exact.astype("float32").astype("float16"))
