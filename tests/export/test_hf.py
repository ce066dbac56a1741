"""`kerastune export --format hf`: the transformers folder gives the Keras
model's logits in transformers itself, for GPT-2 (KerasHub's exporter) and
Llama 2 (KerasHub's Llama 3 weight map), and a LoRA run merged."""

import os

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from tests.export import runs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def hf_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def _mode(path):
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_chat_run_exports_the_same_logits(kind, chat_runs, cli, tmp_path):
    import keras_hub

    run = chat_runs[kind]
    out = tmp_path / "hf"
    result = cli("export", run, "--format", "hf", "--output", out)
    assert result.code == 0, result
    assert result.last_line == str(out)
    keras_model = keras_hub.models.CausalLM.from_preset(str(run / "model"))
    untrained = keras_hub.models.CausalLM.from_preset(testing.tiny_preset(kind))
    ids = runs.token_ids()
    expected = runs.logits(keras_model, ids)
    assert np.abs(expected - runs.logits(untrained, ids)).max() > 1e-3  # it trained
    np.testing.assert_allclose(hf_logits(out, ids), expected, atol=1e-4, rtol=0)
    # The tokenizer loads in transformers and splits text as KerasHub does.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    text = runs.TEXT
    ours = [int(i) for i in keras_model.preprocessor.tokenizer(text)]
    theirs = tokenizer(text)["input_ids"]
    assert theirs[-len(ours):] == ours
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(out) == 0o777 & ~umask
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".hf")]  # no temporary left


def test_lora_run_exports_merged_into_the_float_base(lora_run, cli, tmp_path):
    import keras_hub

    run = lora_run
    out = tmp_path / "hf"
    result = cli("export", run, "--format", "hf", "--output", out)
    assert result.code == 0, result
    # The float base with the adapter on top (the run trained on int8).
    base = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    lora.load_adapter(base, run / "adapter.lora.h5", quantize_base=False)
    _, factors = lora.read_adapter_factors(run / "adapter.lora.h5")
    assert all(np.abs(b).max() > 0 for _, b in factors.values())  # every B trained
    ids = runs.token_ids(1)
    np.testing.assert_allclose(hf_logits(out, ids), runs.logits(base, ids), atol=1e-4,
                               rtol=0)


def test_merge_writes_a_folder_with_the_usual_permissions(lora_run, cli, tmp_path):
    out = tmp_path / "merged"
    result = cli("merge", lora_run, "--output", out)
    assert result.code == 0, result
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(out) == 0o777 & ~umask  # not the 0o700 of a mkdtemp folder
