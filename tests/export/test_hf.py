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


# Spaces and a newline around the last message: a template that trimmed or
# reflowed the content would render other text.
CONVERSATION = [("user", "Is it Monday again?"), ("assistant", "Sadly, yes."),
                ("user", "  Coffee?\n ")]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_hf_export_carries_the_chat_template(kind, chat_runs, cli, tmp_path):
    """transformers renders messages with the exported chat_template to the
    very text the run's template gives, byte for byte, and its pipeline
    chats with a list of messages."""
    import keras_hub

    from kerastune_lab.generate import chat_template_of

    run = chat_runs[kind]
    out = tmp_path / "hf"
    assert cli("export", run, "--format", "hf", "--output", out).code == 0
    keras_model = keras_hub.models.CausalLM.from_preset(str(run / "model"))
    template = chat_template_of(keras_model, {"template": runs.TEMPLATES[kind]})
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": role, "content": text} for role, text in CONVERSATION]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == template.render(CONVERSATION)
    assert rendered.encode("utf-8") == template.render(CONVERSATION).encode("utf-8")
    # The prompt for the next reply: the same text with or without the
    # generation prompt, ending where the reply begins.
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == rendered
    if kind == "llama":  # the end token is the tokenizer's own, not literal text
        assert "</s>" in rendered and "</s>" not in runs.TEMPLATES[kind]
        assert rendered.startswith("<s>[user] Is it Monday again?</s>[assistant] Sadly, yes.</s>")
    else:
        assert rendered.startswith("<|endoftext|><|user|>Is it Monday again?<|endoftext|>"
                                   "<|assistant|>Sadly, yes.<|endoftext|>")
    with pytest.raises(Exception, match="user and assistant turns only"):
        tokenizer.apply_chat_template([{"role": "system", "content": "Be nice."}] + messages,
                                      tokenize=False)
    # transformers' own pipeline on messages (no "chat_template is not set").
    chat = transformers.pipeline("text-generation", model=str(out), tokenizer=str(out))
    reply = chat(messages, max_new_tokens=4, do_sample=False)
    assert reply[0]["generated_text"][-1]["role"] == "assistant"
    assert reply[0]["generated_text"][:3] == messages


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
    # Its chat.json's template ({eos}: Llama's </s>) travels too.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                         tokenize=False) == "<s><|user|>Hi</s><|assistant|>"


def test_merge_writes_a_folder_with_the_usual_permissions(lora_run, cli, tmp_path):
    out = tmp_path / "merged"
    result = cli("merge", lora_run, "--output", out)
    assert result.code == 0, result
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(out) == 0o777 & ~umask  # not the 0o700 of a mkdtemp folder
