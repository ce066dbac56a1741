"""`kerastune export --format peft`: peft itself loads the adapter onto the
exported base (no missing key) and gives the Keras logits and those of the
merged export; an adapter peft saved loads back through `load_adapter`."""

import json
import logging
import os
import warnings

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from tests.conftest import assert_one_line_error, raises_one_line
from tests.export import runs
from tests.export.test_hf import hf_logits

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory):
    """The LoRA run (four kinds of projection) exported as peft (+ base) and hf."""
    from kerastune_lab.export import export_run

    root = tmp_path_factory.mktemp("peft")
    export_run(lora_run, "peft", root / "peft", with_base=True)
    export_run(lora_run, "hf", root / "hf")
    return lora_run, root / "peft", root / "hf"


def _peft_model(folder, adapter):
    """transformers base + PeftModel.from_pretrained, failing on any missing
    or unexpected adapter key (peft only warns, and leaves B at zero)."""
    base = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, adapter)
    bad = [str(w.message) for w in caught
           if "adapter keys" in str(w.message) or "missing" in str(w.message).lower()
           or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    return model


def _peft_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_peft_loads_our_adapter_and_gives_the_keras_logits(exported, caplog):
    import keras_hub

    run, adapter, merged = exported
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 4.0)
    assert config["target_modules"] == ["o_proj", "q_proj", "up_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str(adapter / "base")
    with caplog.at_level(logging.WARNING):
        model = _peft_model(adapter / "base", adapter)
    assert not [r for r in caplog.records if "missing" in r.getMessage().lower()]
    # Every B peft holds is ours, transposed, and non-zero.
    _, factors = lora.read_adapter_factors(run / "adapter.lora.h5")
    state = model.state_dict()
    for layer_path, (a, b) in factors.items():
        n, rest = layer_path.split("/", 1)
        module = lora.peft_folder.module_name("LlamaBackbone", layer_path)
        prefix = f"base_model.model.{module}"
        np.testing.assert_array_equal(state[f"{prefix}.lora_B.default.weight"].numpy(), b.T)
        np.testing.assert_array_equal(state[f"{prefix}.lora_A.default.weight"].numpy(), a.T)
        assert np.abs(b).max() > 0, (n, rest)
    assert len(factors) == 2 * len(runs.TARGETS)

    ids = runs.token_ids(2)
    base = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    lora.load_adapter(base, run / "adapter.lora.h5", quantize_base=False)
    expected = runs.logits(base, ids)
    theirs = _peft_logits(model, ids)
    np.testing.assert_allclose(theirs, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(theirs, hf_logits(merged, ids), atol=1e-4, rtol=0)
    plain = transformers.AutoModelForCausalLM.from_pretrained(adapter / "base")
    with torch.no_grad():
        untouched = plain(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.abs(theirs - untouched).max() > 1e-3  # the adapter changes the model


def test_an_adapter_saved_by_peft_loads_through_load_adapter(exported, tmp_path):
    import keras_hub

    _, adapter, _ = exported
    base = transformers.AutoModelForCausalLM.from_pretrained(adapter / "base",
                                                             dtype=torch.float32)
    config = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["k_proj", "down_proj"],
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_" in name:  # B starts at zero in peft too: trained stands in
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    theirs = tmp_path / "theirs"
    model.save_pretrained(theirs)
    ids = runs.token_ids(3)
    expected = _peft_logits(model.eval(), ids)

    ours = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    metadata = lora.load_adapter(ours, theirs)
    assert (metadata["rank"], metadata["targets"]) == (
        3, ["feedforward_output_dense", "key"])
    np.testing.assert_allclose(runs.logits(ours, ids), expected, atol=1e-4, rtol=0)
    # load_with_adapter finds the base the folder names (a transformers folder,
    # converted by KerasHub) when given a KerasHub preset of it.
    again, _ = lora.load_with_adapter(str(theirs), preset=testing.tiny_preset("llama"))
    np.testing.assert_allclose(runs.logits(again, ids), expected, atol=1e-4, rtol=0)


def test_a_peft_folder_for_another_base_is_one_line(exported, tmp_path):
    import shutil

    import keras_hub

    _, adapter, _ = exported
    edited = tmp_path / "edited"
    shutil.copytree(adapter, edited, ignore=shutil.ignore_patterns("base"))
    config = json.loads((edited / "adapter_config.json").read_text())
    config["r"] = 4
    (edited / "adapter_config.json").write_text(json.dumps(config))
    llama = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    raises_one_line(lambda: lora.load_adapter(llama, edited), str(edited), "(16, 2)", "(16, 4)")
    gpt2 = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("gpt2"))
    raises_one_line(lambda: lora.load_adapter(gpt2, adapter), "GPT2Backbone", "--format hf")
    config.update(r=2, use_dora=True)
    (edited / "adapter_config.json").write_text(json.dumps(config))
    raises_one_line(lambda: lora.load_adapter(llama, edited), "use_dora=True")
    config.update(use_dora=False)
    (edited / "adapter_config.json").write_text(json.dumps(config))
    os.remove(edited / "adapter_model.safetensors")
    raises_one_line(lambda: lora.load_adapter(llama, edited), "adapter_model.safetensors")


def test_chat_reads_a_peft_folder(exported, cli, monkeypatch):
    import io
    import sys

    _, adapter, _ = exported
    assert (adapter / "chat.json").is_file()  # the run's template travels with it
    monkeypatch.setattr(sys, "stdin", io.StringIO("Is it Monday again?\n"))
    result = cli("chat", "--adapter", adapter, "--preset", testing.tiny_preset("llama"),
                 "--sampler", "greedy", "--max-length", "32")
    assert result.code == 0, result
    assert result.stdout.strip()
    gpt2 = cli("chat", "--adapter", adapter, "--preset", testing.tiny_preset("gpt2"))
    assert_one_line_error(gpt2, "GPT2Backbone")
    # Its base_model_name_or_path is a local transformers folder, not a preset.
    no_preset = cli("chat", "--adapter", adapter)
    assert_one_line_error(no_preset, "records no base preset", "--preset")


def test_the_missing_key_check_fails_on_an_adapter_short_of_a_key(exported, tmp_path):
    import shutil

    from safetensors.numpy import load_file, save_file

    _, adapter, _ = exported
    short = tmp_path / "short"
    shutil.copytree(adapter, short, ignore=shutil.ignore_patterns("base"))
    tensors = load_file(short / "adapter_model.safetensors")
    dropped = sorted(k for k in tensors if "lora_B" in k)[0]
    del tensors[dropped]
    save_file(tensors, short / "adapter_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AssertionError, match="missing adapter keys"):
        _peft_model(adapter / "base", short)
