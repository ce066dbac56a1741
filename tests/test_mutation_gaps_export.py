"""The cases of export/peft.py and export/hf.py that mutmut found untested
(issue 30; tests/README.md, "Mutation testing"), in process and fast: tiny
models built here or from the tiny Llama preset, never trained (the
factors are set to known random values, rank 2 and alpha 5: scale 2.5,
never 1). `tests/export/` checks the same exports end to end against
transformers and peft on trained runs, at 13 to 20 s a fixture."""

import json
import os
import pathlib

import numpy as np
import pytest

from kerastune_lab import compat, testing
from kerastune_lab.errors import KerastuneError
from kerastune_lab.export import hf, peft
from kerastune_lab.finetune import lora
from kerastune_lab.finetune.quantize import quantize
from tests.conftest import raises_one_line, run_in_ascii_locale
from tests.test_mutation_gaps_lora import ALPHA, RANK, _set_factors

# The KerasHub preset -> Hugging Face name table as it must read (typed out
# here: a mutant of any name or key is a different table).
HF_NAMES = {
    "llama2_7b_en": "meta-llama/Llama-2-7b-hf",
    "llama2_instruct_7b_en": "meta-llama/Llama-2-7b-chat-hf",
    "llama3_8b_en": "meta-llama/Meta-Llama-3-8B",
    "llama3_instruct_8b_en": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3.1_8b": "meta-llama/Llama-3.1-8B",
    "llama3.2_1b": "meta-llama/Llama-3.2-1B",
    "llama3.2_3b": "meta-llama/Llama-3.2-3B",
    "gpt2_base_en": "openai-community/gpt2",
    "gpt2_medium_en": "openai-community/gpt2-medium",
    "gpt2_large_en": "openai-community/gpt2-large",
    "gpt2_extra_large_en": "openai-community/gpt2-xl",
}
# Three kinds of projection, attention and feedforward: three target_modules.
TARGETS = ("query", "value", "feedforward_gate_dense")
# (our layer path, the peft key prefix it must get), for every layer in TARGETS.
PEFT_KEYS = {
    f"transformer_layer_{n}/{suffix}": f"base_model.model.model.layers.{n}.{module}"
    for n in (0, 1)
    for suffix, module in (("self_attention/query", "self_attn.q_proj"),
                           ("self_attention/value", "self_attn.v_proj"),
                           ("feedforward_gate_dense", "mlp.gate_proj"))
}
# adapter_config.json as write_peft_folder writes it, less the base's name.
PEFT_CONFIG = {
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
    "target_modules": ["gate_proj", "q_proj", "v_proj"], "lora_dropout": 0.0,
    "use_rslora": False, "init_lora_weights": True, "inference_mode": True,
    "revision": None, "layers_pattern": None, "bias": "none", "use_dora": False,
    "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None,
    "modules_to_save": None, "lora_bias": False, "fan_in_fan_out": False,
}
# tokenizer_config.json of a Llama 2 export, byte for byte (the tiny
# SentencePiece model's start and end tokens are Llama 2's).
LLAMA2_TOKENIZER_CONFIG = """{
  "tokenizer_class": "LlamaTokenizer",
  "bos_token": "<s>",
  "eos_token": "</s>",
  "unk_token": "<unk>",
  "pad_token": null,
  "add_bos_token": true,
  "add_eos_token": false,
  "legacy": false,
  "clean_up_tokenization_spaces": false,
  "model_max_length": 4096
}
"""


def _tiny_lm(preprocessor=True):
    import keras_hub

    kwargs = {} if preprocessor else {"preprocessor": None}
    return keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"), **kwargs)


def _tiny_backbone(**kwargs):
    """A LlamaBackbone of 1,000 or so parameters, built from config."""
    import keras_hub

    return keras_hub.models.LlamaBackbone(vocabulary_size=10, num_layers=1, num_query_heads=2,
                                          hidden_dim=8, intermediate_dim=16,
                                          num_key_value_heads=1, **kwargs)


def _read_weights(path):
    from safetensors.numpy import load_file

    return load_file(path)


def _float_weights(lm):
    """{transformers name: array} of `lm` as the Llama 2 export must write them."""
    return compat.hf_weights(lm.backbone, "Llama3Backbone")


# -- hf.py: names -------------------------------------------------------------

@pytest.mark.backend_independent
def test_hf_names_of_presets_and_handles():
    assert hf.HF_NAMES == HF_NAMES
    for preset, name in HF_NAMES.items():
        assert hf.hf_name(preset) == name
    assert hf.hf_name(pathlib.PurePosixPath("gpt2_base_en")) == "openai-community/gpt2"
    assert hf.hf_name("hf://meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
    assert hf.hf_name("hf://") == ""
    assert hf.hf_name("kaggle://keras/llama2/keras/llama2_7b_en") is None
    assert hf.hf_name("llama2_7b") is None
    assert hf.hf_name("") is None
    assert hf.hf_name(None) is None
    assert hf.LLAMA2_CONTEXT == 4096


# -- hf.py: llama2_config -----------------------------------------------------

def test_llama2_config_is_llama3s_with_llama2s_context():
    import transformers

    backbone = _tiny_backbone()
    config = hf.llama2_config(backbone)
    expected = dict(compat.hf_config(backbone, like="Llama3Backbone"),
                    max_position_embeddings=4096)
    assert config == expected
    assert "rope_scaling" not in config
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"],
            config["num_attention_heads"], config["num_key_value_heads"],
            config["intermediate_size"], config["vocab_size"]) == ("llama", 8, 1, 2, 1, 16, 10)
    read = transformers.LlamaConfig(**config)
    assert (read.max_position_embeddings, read.hidden_size) == (4096, 8)


def test_llama2_config_with_a_linear_rope_scaling():
    backbone = _tiny_backbone(rope_position_scaling_factor=2.0)
    config = hf.llama2_config(backbone)
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert config["max_position_embeddings"] == 4096
    assert config == dict(compat.hf_config(backbone, like="Llama3Backbone"),
                          max_position_embeddings=4096,
                          rope_scaling={"rope_type": "linear", "factor": 2.0})


def test_llama2_config_with_both_rope_factors_is_refused():
    backbone = _tiny_backbone(rope_position_scaling_factor=2.0,
                              rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
                              rope_high_freq_factor=4.0, rope_pretraining_sequence_length=64)
    raises_one_line(lambda: hf.llama2_config(backbone),
                    "a LlamaBackbone with both rope_position_scaling_factor and "
                    "rope_frequency_adjustment_factor: expected one")
    # The Llama 3 scaling alone is KerasHub's, left as it is (context included).
    alone = _tiny_backbone(rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
                           rope_high_freq_factor=4.0, rope_pretraining_sequence_length=64)
    config = hf.llama2_config(alone)
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["max_position_embeddings"] == 4096


# -- hf.py: save_transformers -------------------------------------------------

@pytest.fixture(scope="module")
def llama_export(tmp_path_factory):
    """(causal LM with its preprocessor, the folder save_transformers wrote,
    the folders save_assets was given, what it returned)."""
    lm = _tiny_lm()
    folder = str(tmp_path_factory.mktemp("hf") / "llama")
    tokenizer = lm.preprocessor.tokenizer
    given = []
    save_assets = tokenizer.save_assets

    def spy(path):
        given.append(path)
        return save_assets(path)

    tokenizer.save_assets = spy
    try:
        returned = hf.save_transformers(lm, folder)
    finally:
        del tokenizer.save_assets
    return lm, folder, given, returned


def test_llama2_export_files(llama_export):
    lm, folder, given, returned = llama_export
    assert returned == folder
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors",
                                          "tokenizer.model", "tokenizer_config.json"]
    assert given == [os.path.join(folder, ".assets")]  # made there, gone after
    tokenizer = lm.preprocessor.tokenizer
    with open(os.path.join(folder, "tokenizer.model"), "rb") as f:
        assert f.read() == tokenizer.proto
    with open(os.path.join(folder, "tokenizer_config.json"), encoding="utf-8") as f:
        assert f.read() == LLAMA2_TOKENIZER_CONFIG
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    # The tokenizer's token ids (KerasHub's writer, given the tokenizer), the
    # Llama 2 context, no rope scaling.
    assert (config["bos_token_id"], config["eos_token_id"]) == (2, 3)
    assert tokenizer.token_to_id("<s>") == 2 and tokenizer.token_to_id("</s>") == 3
    assert config == dict(hf.llama2_config(lm.backbone), bos_token_id=2, eos_token_id=3)
    # The float weights, under the names transformers reads.
    weights = _read_weights(os.path.join(folder, "model.safetensors"))
    expected = _float_weights(lm)
    assert sorted(weights) == sorted(expected) and len(weights) == 21
    for name, value in expected.items():
        np.testing.assert_array_equal(weights[name], value)
    embeddings = np.asarray(lm.backbone.token_embedding.embeddings)
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], embeddings)


def test_llama2_export_loads_in_transformers(llama_export):
    import transformers

    lm, folder, _, _ = llama_export
    config = transformers.AutoConfig.from_pretrained(folder)
    assert (type(config).__name__, config.max_position_embeddings) == ("LlamaConfig", 4096)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.model_max_length) == (
        "<s>", "</s>", 4096)
    ours = [int(i) for i in lm.preprocessor.tokenizer("the dog liked coffee")]
    assert tokenizer("the dog liked coffee")["input_ids"] == [2] + ours


def test_llama2_export_without_a_preprocessor(tmp_path):
    lm = _tiny_lm(preprocessor=False)
    folder = str(tmp_path / "bare")
    assert hf.save_transformers(lm, folder) == folder
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config == hf.llama2_config(lm.backbone)
    assert "bos_token_id" not in config


def test_gpt2_goes_through_keras_hubs_exporter(tmp_path):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=12, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=16)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    folder = str(tmp_path / "gpt2")
    assert hf.save_transformers(lm, folder) == folder
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert (config["model_type"], config["n_embd"], config["n_layer"], config["n_positions"],
            config["vocab_size"]) == ("gpt2", 8, 1, 16, 12)
    weights = _read_weights(os.path.join(folder, "model.safetensors"))
    np.testing.assert_array_equal(weights["transformer.wte.weight"],
                                  np.asarray(backbone.token_embedding.embeddings))


def test_save_transformers_refuses_lora_quantized_and_unknown(tmp_path):
    import keras_hub

    with_lora = _tiny_lm(preprocessor=False)
    lora.enable_lora(with_lora, RANK, ALPHA)
    raises_one_line(lambda: hf.save_transformers(with_lora, str(tmp_path / "a")),
                    "transformers export of a LlamaBackbone: expected a plain float model "
                    "(LoRA merged, not quantized)")
    quantized = quantize(_tiny_lm(preprocessor=False), "int8")
    raises_one_line(lambda: hf.save_transformers(quantized, str(tmp_path / "b")),
                    "transformers export of a LlamaBackbone: expected a plain float model "
                    "(LoRA merged, not quantized)")
    opt = keras_hub.models.OPTCausalLM(
        backbone=keras_hub.models.OPTBackbone(vocabulary_size=12, num_layers=1, num_heads=2,
                                              hidden_dim=8, intermediate_dim=16,
                                              max_sequence_length=16),
        preprocessor=None)
    known = sorted(compat.hf_exportable_backbones() | {"LlamaBackbone"})
    assert "GPT2Backbone" in known and "LlamaBackbone" in known
    with pytest.raises(KerastuneError) as caught:
        hf.save_transformers(opt, str(tmp_path / "c"))
    assert str(caught.value) == ("a OPTBackbone cannot be exported to transformers: expected "
                                 f"one of {', '.join(known)}")
    assert os.listdir(tmp_path) == []  # nothing written for any of them


# -- hf.py: save_chat_template ------------------------------------------------

def test_save_chat_template_adds_the_jinja_to_the_tokenizer_config(llama_export, tmp_path):
    import shutil

    import transformers

    from kerastune_lab.data.chat_template import ChatTemplate

    lm, exported, _, _ = llama_export
    folder = tmp_path / "chat"
    shutil.copytree(exported, folder)
    template = ChatTemplate(lm.preprocessor.tokenizer,
                            "[user] {prompt}{eos}[assistant] {response}{eos}")
    assert hf.save_chat_template(template, str(folder)) is None
    expected = dict(json.loads(LLAMA2_TOKENIZER_CONFIG), chat_template=template.jinja())
    text = (folder / "tokenizer_config.json").read_text(encoding="utf-8")
    assert text == json.dumps(expected, indent=2) + "\n"
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    conversation = [("user", "Is it Monday?"), ("assistant", "Sadly, yes."),
                    ("user", "Coffee?")]
    messages = [{"role": role, "content": content} for role, content in conversation]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == template.render(conversation)
    assert rendered.startswith("<s>[user] Is it Monday?</s>[assistant] Sadly, yes.</s>")


@pytest.mark.backend_independent
def test_save_chat_template_keeps_every_other_key(tmp_path):
    class Template:
        def jinja(self):
            return "{{ messages[0]['content'] }} caf\u00e9"

    before = {"tokenizer_class": "X", "model_max_length": 7, "chat_template": "old",
              "added": {"a": [1, 2]}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(before), encoding="utf-8")
    hf.save_chat_template(Template(), str(tmp_path))
    text = (tmp_path / "tokenizer_config.json").read_text(encoding="utf-8")
    assert text == json.dumps(dict(before, chat_template=Template().jinja()), indent=2) + "\n"
    assert os.listdir(tmp_path) == ["tokenizer_config.json"]


# -- peft.py ------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """{recorded preset kind: adapter path}, and the factors: the same
    random factors on query, value and gate of the tiny Llama, one adapter
    recording the Hugging Face preset "llama2_7b_en", one the tiny preset's
    folder (no Hugging Face name)."""
    lm = _tiny_lm(preprocessor=False)
    lora.enable_lora(lm, RANK, ALPHA, targets=TARGETS)
    factors = {p: _set_factors(layer, i)
               for i, (p, layer) in enumerate(sorted(lora.lora_state(lm).layers.items()))}
    assert sorted(factors) == sorted(PEFT_KEYS)
    root = tmp_path_factory.mktemp("adapters")
    paths = {"hf": lora.save_adapter(lm, root / "hf.lora.h5", preset="llama2_7b_en"),
             "local": lora.save_adapter(lm, root / "local.lora.h5",
                                        preset=testing.tiny_preset("llama"))}
    return paths, factors


def _check_peft_folder(folder, factors, base_name, extra=()):
    """The folder holds exactly the adapter (and `extra`), its config and
    every factor transposed into peft's layout."""
    assert sorted(os.listdir(folder)) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", *extra])
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config == dict(PEFT_CONFIG, base_model_name_or_path=base_name)
    tensors = _read_weights(os.path.join(folder, "adapter_model.safetensors"))
    assert sorted(tensors) == sorted(f"{key}.lora_{side}.weight"
                                     for key in PEFT_KEYS.values() for side in "AB")
    for layer_path, (a, b) in factors.items():
        key = PEFT_KEYS[layer_path]
        np.testing.assert_array_equal(tensors[f"{key}.lora_A.weight"], a.T.astype("float32"))
        np.testing.assert_array_equal(tensors[f"{key}.lora_B.weight"], b.T.astype("float32"))
    assert tensors[f"{PEFT_KEYS['transformer_layer_0/self_attention/query']}.lora_A.weight"
                   ].shape == (RANK, 16)


@pytest.mark.backend_independent
def test_save_peft_names_the_hugging_face_base(adapters, tmp_path):
    paths, factors = adapters
    folder = tmp_path / "out"
    folder.mkdir()
    assert peft.save_peft(paths["hf"], str(folder)) == str(folder)
    _check_peft_folder(folder, factors, "meta-llama/Llama-2-7b-hf")


@pytest.mark.backend_independent
def test_save_peft_config_reads_in_peft(adapters, tmp_path):
    peft_lib = pytest.importorskip("peft")

    paths, _ = adapters
    peft.save_peft(paths["hf"], str(tmp_path))
    config = peft_lib.LoraConfig.from_pretrained(str(tmp_path))
    assert (config.r, config.lora_alpha, sorted(config.target_modules),
            config.base_model_name_or_path) == (RANK, ALPHA, ["gate_proj", "q_proj", "v_proj"],
                                                "meta-llama/Llama-2-7b-hf")


@pytest.mark.backend_independent
def test_save_peft_with_another_preset(adapters, tmp_path):
    paths, factors = adapters
    # An hf:// handle given for the local adapter: its name, no base needed.
    assert peft.save_peft(paths["local"], str(tmp_path), preset="hf://me/tiny-llama") == str(
        tmp_path)
    _check_peft_folder(tmp_path, factors, "me/tiny-llama")


@pytest.mark.backend_independent
def test_save_peft_without_a_hugging_face_name_needs_the_base(adapters, tmp_path):
    paths, _ = adapters
    raises_one_line(lambda: peft.save_peft(paths["local"], str(tmp_path)),
                    f"base preset {testing.tiny_preset('llama')!r} of {str(paths['local'])!r} "
                    "has no known Hugging Face name: pass --with-base")
    raises_one_line(lambda: peft.save_peft(paths["hf"], str(tmp_path), preset="llama2_7b"),
                    "base preset 'llama2_7b' of", "has no known Hugging Face name")
    assert os.listdir(tmp_path) == []


def _check_base(folder, preset_lm):
    """folder/base: the unmerged float base as a Llama 2 transformers folder."""
    base = os.path.join(folder, "base")
    assert sorted(os.listdir(base)) == ["config.json", "model.safetensors",
                                        "tokenizer.model", "tokenizer_config.json"]
    weights = _read_weights(os.path.join(base, "model.safetensors"))
    expected = _float_weights(preset_lm)
    assert sorted(weights) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(weights[name], value)
    with open(os.path.join(base, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["max_position_embeddings"] == 4096


@pytest.fixture(scope="module")
def preset_lm():
    return _tiny_lm(preprocessor=False)


def test_save_peft_with_base_names_the_folder(adapters, preset_lm, tmp_path):
    paths, factors = adapters
    folder = tmp_path / "out"
    folder.mkdir()
    assert peft.save_peft(paths["local"], str(folder), with_base=True) == str(folder)
    _check_peft_folder(folder, factors, str(folder / "base"), extra=["base"])
    _check_base(folder, preset_lm)


def test_save_peft_with_base_names_the_final_folder(adapters, preset_lm, tmp_path,
                                                    monkeypatch):
    paths, factors = adapters
    monkeypatch.chdir(tmp_path)
    os.mkdir("tmp-out")
    # A relative final path, made absolute; the given preset (not the
    # recorded llama2_7b_en, which would download) is the base.
    assert peft.save_peft(paths["hf"], "tmp-out", with_base=True,
                          preset=testing.tiny_preset("llama"),
                          final_path=os.path.join("final", "out")) == "tmp-out"
    _check_peft_folder(tmp_path / "tmp-out", factors, str(tmp_path / "final" / "out" / "base"),
                       extra=["base"])
    _check_base(tmp_path / "tmp-out", preset_lm)


def test_save_peft_with_base_keeps_a_hugging_face_name(adapters, preset_lm, tmp_path,
                                                       monkeypatch):
    paths, factors = adapters
    asked = []

    def name_of(preset):
        asked.append(preset)
        return "me/tiny-llama"

    monkeypatch.setattr(peft, "hf_name", name_of)
    peft.save_peft(paths["local"], str(tmp_path), with_base=True, final_path="elsewhere")
    assert asked == [testing.tiny_preset("llama")]
    _check_peft_folder(tmp_path, factors, "me/tiny-llama", extra=["base"])
    _check_base(tmp_path, preset_lm)


def test_save_peft_refuses_gpt2(tmp_path):
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=12, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=16)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lora.enable_lora(lm, RANK, ALPHA)
    path = lora.save_adapter(lm, tmp_path / "gpt2.lora.h5", preset="gpt2_base_en")
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(KerastuneError) as caught:
        peft.save_peft(pathlib.Path(path), str(folder))
    assert str(caught.value).startswith(
        f"peft export of {str(path)!r}: the PEFT layout is written for Llama3Backbone, "
        "LlamaBackbone, not GPT2Backbone: its attention is one fused c_attn module")
    assert os.listdir(folder) == []


@pytest.mark.backend_independent
def test_save_chat_template_reads_utf8_in_any_locale(tmp_path):
    """A tokenizer_config.json with raw UTF-8 (transformers writes it so),
    here and in a process whose locale encoding is ASCII (LC_ALL=C, no UTF-8
    mode): read as UTF-8, not in the locale's encoding. (The call here also
    makes mutmut map this test to save_chat_template: it records calls in
    this process only.)"""

    class Template:
        def jinja(self):
            return "x"

    before = {"tokenizer_class": "X", "note": "caf\u00e9"}
    raw = json.dumps(before, ensure_ascii=False)
    expected = json.dumps(dict(before, chat_template="x"), indent=2) + "\n"
    here = tmp_path / "here"
    here.mkdir()
    (here / "tokenizer_config.json").write_text(raw, encoding="utf-8")
    hf.save_chat_template(Template(), str(here))
    assert (here / "tokenizer_config.json").read_text(encoding="utf-8") == expected
    (tmp_path / "tokenizer_config.json").write_text(raw, encoding="utf-8")
    run_in_ascii_locale("import sys\n"
                        "from kerastune_lab.export import hf\n"
                        "class T:\n"
                        "    def jinja(self):\n"
                        "        return 'x'\n"
                        "hf.save_chat_template(T(), sys.argv[1])", tmp_path)
    assert (tmp_path / "tokenizer_config.json").read_text(encoding="utf-8") == expected
