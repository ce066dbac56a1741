"""`kerastune export --format gguf`, checked against llama.cpp itself
(llama-cpp-python): the logits, the greedy reply, the chat template, the
quantized files. Run once (jax pass): the file is the same bytes from any
backend (the last test)."""

import hashlib
import os

import gguf
import llama_cpp  # a test dependency: a missing one fails, never skips
import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.data import chat
from kerastune_lab.errors import KerastuneError
from kerastune_lab.export import gguf as gguf_export
from kerastune_lab.generate import CHAT_FILE, ChatGenerator, chat_settings
from kerastune_lab.runs import RunDir
from tests.conftest import assert_one_line_error, run_cli
from tests.export import runs

pytestmark = pytest.mark.backend_independent

PAIRS = [[("user", f"what about the {noun} today"),
          ("assistant", f"oh wonderful another {noun} just what i needed")]
         for noun in ("meeting", "email", "rain", "dog", "movie", "party")]
PROMPT, REPLY = PAIRS[1][0][1], PAIRS[1][1][1]
REPLY_TOKENS = 24


def _wide_llama():
    """A Llama whose every kernel row is a whole number of K-quant blocks
    (256 values): q8_0 and q4_k_m quantize it all (the tiny preset's rows of
    16 are left in f16 by llama.cpp's quantizer)."""
    from keras_hub import models

    tokenizer = models.LlamaTokenizer(proto=testing.sentencepiece_proto())
    backbone = models.LlamaBackbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=256, intermediate_dim=512)
    preprocessor = models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=64)
    return models.LlamaCausalLM(backbone=backbone, preprocessor=preprocessor)


def _chat_run(path, kind):
    """A chat run of a tiny `kind` model tuned on PAIRS until its greedy
    reply to PROMPT is REPLY."""
    import keras
    import keras_hub

    from kerastune_lab.models import detached_preprocessor

    keras.utils.set_random_seed(0)
    model = (_wide_llama() if kind == "wide" else
             keras_hub.models.CausalLM.from_preset(testing.tiny_preset(kind)))
    template = chat.ChatTemplate(model.preprocessor.tokenizer,
                                 runs.TEMPLATES["gpt2" if kind == "gpt2" else "llama"])
    train = chat.pack_conversations(PAIRS * 8, template, sequence_length=64)
    model.compile(optimizer=keras.optimizers.Adam(1e-2 if kind != "wide" else 1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True, reduction="mean_with_sample_weight"))
    with detached_preprocessor(model):
        model.fit(chat.chat_dataset(train, 6, shuffle=True, seed=0),
                  epochs=30 if kind != "wide" else 40, verbose=0)
    reply = ChatGenerator(model, template, "greedy", max_length=64).reply(PROMPT)
    assert reply == REPLY, (kind, reply)
    run = RunDir.create(path)
    run.write_json("config.json", {"recipe": "test"})
    run.write_json(CHAT_FILE, chat_settings(template))
    run.save_model(model)
    return model, template, run.path


@pytest.fixture(scope="module")
def chat_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-runs")
    return {kind: _chat_run(root / kind, kind) for kind in ("gpt2", "llama")}


def _export(cli, run, tmp_path, quantize, name=None):
    out = tmp_path / (name or f"gguf-{quantize}")
    result = cli("export", run, "--format", "gguf", "--quantize", quantize, "--output", out)
    assert result.code == 0, result
    assert result.last_line == str(out)
    return out


def _llama(path, **kwargs):
    """llama.cpp on the file, its KV cache in f32 (llama.cpp's default, f16,
    alone moves the logits by a few 1e-3), without the CPU's extra weight
    buffers: on this machine's CPU (AMX_INT8, REPACK in llama.cpp's system
    info) llama-cpp-python 0.3.36 crashes (SIGSEGV) evaluating a q8_0 file
    with them, and the plain CPU kernels are the reference anyway."""
    from unittest import mock

    default = llama_cpp.llama_model_default_params

    def plain():
        params = default()
        params.use_extra_bufts = False
        return params

    with mock.patch.object(llama_cpp.llama.llama_cpp, "llama_model_default_params", plain):
        return llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=1,
                               type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32,
                               verbose=False, **kwargs)


def _llama_cpp_logits(path, ids, **kwargs):
    llm = _llama(path, **kwargs)
    try:
        llm.eval([int(i) for i in ids])
        return np.array(llm.scores[:len(ids)])
    finally:
        llm.close()


def _prompt_ids(seed=3):
    return runs.token_ids(seed, batch=1, length=16)


def _gelu_as_llama_cpp(x):
    """GELU (tanh form) as llama.cpp's CPU backend computes it: through a
    float16 table (ggml-cpu/vec.h, GGML_GELU_FP16): input and output
    rounded to float16, 0 below -10, x above 10."""
    import keras

    half = keras.ops.cast(keras.ops.cast(x, "float16"), "float32")
    table = keras.ops.cast(keras.ops.cast(keras.activations.gelu(half, approximate=True),
                                          "float16"), "float32")
    return keras.ops.where(x <= -10.0, 0.0, keras.ops.where(x >= 10.0, x, table))


def _keras_logits(model, ids, gelu=None):
    """The Keras model's logits; with `gelu`, its GPT-2 feedforward
    activation replaced for the call."""
    if gelu is None:
        return runs.logits(model, ids)[0]
    layers = [model.backbone.get_layer(f"transformer_layer_{i}")._feedforward_intermediate_dense
              for i in range(model.backbone.num_layers)]
    saved = [layer.activation for layer in layers]
    try:
        for layer in layers:
            layer.activation = gelu
        return runs.logits(model, ids)[0]
    finally:
        for layer, activation in zip(layers, saved):
            layer.activation = activation


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("quantize, tolerance", [("f32", 1e-3), ("f16", 2e-2)])
def test_llama_cpp_gives_the_keras_logits(kind, quantize, tolerance, chat_runs, cli, tmp_path):
    model, _, run = chat_runs[kind]
    out = _export(cli, run, tmp_path, quantize)
    assert sorted(os.listdir(out)) == ["Modelfile", "model.gguf"]
    ids = _prompt_ids()
    expected = _keras_logits(model, ids)
    got = _llama_cpp_logits(out / "model.gguf", ids[0])
    assert got.shape == expected.shape == (16, model.backbone.vocabulary_size)
    if kind == "gpt2" and quantize == "f32":
        # llama.cpp's CPU GELU is float16 (a table): against plain Keras the
        # f32 file is off by a few 1e-3; against Keras with that GELU, by
        # less than 1e-3 (the file's weights are the model's).
        assert np.abs(got - expected).max() < 1e-2
        expected = _keras_logits(model, ids, gelu=_gelu_as_llama_cpp)
    assert np.abs(got - expected).max() < tolerance
    # The tolerance means something: the logits spread far wider than it.
    assert np.ptp(expected) > 100 * tolerance


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_reply_is_the_reply_of_kerastune_chat(kind, chat_runs, cli, tmp_path):
    model, template, run = chat_runs[kind]
    out = _export(cli, run, tmp_path, "f32")
    prompt = template.encode_prompt(PROMPT)
    # llama.cpp's own greedy sampling (temperature 0), 24 tokens or a stop token.
    llm = _llama(out / "model.gguf")
    try:
        got = []
        for token in llm.generate(prompt, temp=0.0):
            if token in template.stop_token_ids or len(got) == REPLY_TOKENS:
                break
            got.append(int(token))
    finally:
        llm.close()
    # Keras, token by token, greedy on the same prompt (one padded shape:
    # the model is causal, padding after the last token changes nothing).
    ids = np.zeros((1, 64), "int32")
    ids[0, :len(prompt)] = prompt
    expected = []
    for n in range(len(prompt), len(prompt) + REPLY_TOKENS):
        token = int(runs.logits(model, ids)[0, n - 1].argmax())
        if token in template.stop_token_ids:
            break
        expected.append(token)
        ids[0, n] = token
    assert got == expected and len(got) > 5
    chatted = run_cli("chat", run, "--sampler", "greedy",
                      "--max-length", len(prompt) + REPLY_TOKENS, input=PROMPT + "\n")
    assert chatted.code == 0, chatted
    assert chatted.stdout.strip() == template.decode_reply(got)
    assert REPLY.startswith(chatted.stdout.strip())


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_embedded_template_renders_what_the_model_trained_on(kind, chat_runs, cli, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    _, template, run = chat_runs[kind]
    out = _export(cli, run, tmp_path, "f16")
    reader = gguf.GGUFReader(out / "model.gguf")
    stored = reader.fields["tokenizer.chat_template"].contents()
    assert stored == template.jinja()
    tokenizer = template.tokenizer
    messages = [{"role": role, "content": text} for role, text in PAIRS[0] + [PAIRS[2][0]]]
    formatter = Jinja2ChatFormatter(stored, eos_token=tokenizer.end_token,
                                    bos_token=tokenizer.start_token)
    rendered = formatter(messages=messages).prompt
    turns = [(m["role"], m["content"]) for m in messages]
    assert rendered == template.render(turns)
    assert rendered.startswith(tokenizer.start_token)  # as add_start_token trained it
    fields = reader.fields
    assert fields["tokenizer.ggml.bos_token_id"].contents() == tokenizer.start_token_id
    assert fields["tokenizer.ggml.eos_token_id"].contents() == tokenizer.end_token_id
    assert fields["tokenizer.ggml.model"].contents() == ("gpt2" if kind == "gpt2" else "llama")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens == [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
    # llama.cpp's own tokenizer, from the file, gives KerasHub's ids.
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), vocab_only=True, verbose=False)
    try:
        for text in (PROMPT, PAIRS[3][1][1], "is it monday again? caf\u00e9"):
            expected = [int(i) for i in np.asarray(tokenizer(text))]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
    finally:
        llm.close()


def test_modelfile_has_the_template_in_ollamas_syntax(chat_runs, cli, tmp_path):
    _, _, run = chat_runs["gpt2"]
    out = _export(cli, run, tmp_path, "f16")
    assert (out / "Modelfile").read_text() == (
        'FROM ./model.gguf\n'
        'TEMPLATE """{{ range .Messages }}{{ if eq .Role "user" }}<|user|>{{ .Content }}'
        '<|endoftext|><|assistant|>{{ else if eq .Role "assistant" }}{{ .Content }}'
        '<|endoftext|>{{ end }}{{ end }}"""\n'
        'PARAMETER stop "<|endoftext|>"\n'
        'PARAMETER stop "<|user|>"\n')


def test_lora_run_is_merged_in_float_before_export(lora_run, cli, tmp_path):
    from kerastune_lab.finetune.lora import merged_model

    out = _export(cli, lora_run, tmp_path, "f32")
    merged = merged_model(os.path.join(lora_run, "adapter.lora.h5"))
    ids = _prompt_ids(5)
    expected = runs.logits(merged, ids)[0]
    assert np.abs(_llama_cpp_logits(out / "model.gguf", ids[0]) - expected).max() < 1e-3


def test_gguf_lora_over_the_base_gives_the_merged_logits(lora_run, cli, tmp_path):
    """The adapter alone, applied by llama.cpp over the base's GGUF, gives
    the logits of the Keras base with the adapter merged in (alpha 8 over
    rank 4 in tests/export/runs.py: a scale of 2, not 1)."""
    from kerastune_lab.finetune.lora import merged_model, read_adapter_metadata

    adapter = os.path.join(lora_run, "adapter.lora.h5")
    metadata = read_adapter_metadata(adapter)
    assert metadata["alpha"] != metadata["rank"]
    out = tmp_path / "lora"
    result = cli("export", lora_run, "--format", "gguf-lora", "--with-base", "--quantize",
                 "f32", "--output", out)
    assert result.code == 0, result
    assert sorted(os.listdir(out)) == ["adapter.gguf", "base.gguf"]
    reader = gguf.GGUFReader(out / "adapter.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.lora.alpha"].contents() == metadata["alpha"]
    names = sorted(t.name for t in reader.tensors)
    assert len(names) == 2 * len(metadata["layers"]) and names[0].endswith(".lora_a")
    ids = _prompt_ids(5)
    expected = runs.logits(merged_model(adapter), ids)[0]
    base = _llama_cpp_logits(out / "base.gguf", ids[0])
    assert np.abs(base - expected).max() > 1e-2  # the adapter changes the logits
    got = _llama_cpp_logits(out / "base.gguf", ids[0], lora_path=str(out / "adapter.gguf"))
    assert np.abs(got - expected).max() < 1e-3
    no_base = cli("export", lora_run, "--format", "gguf-lora", "--quantize", "q8_0",
                  "--output", tmp_path / "q")
    assert_one_line_error(no_base, "--quantize q8_0", "gguf-lora --with-base")


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    return _chat_run(tmp_path_factory.mktemp("gguf-runs") / "wide", "wide")


@pytest.mark.parametrize("quantize, kernel_types, agreement", [
    ("q8_0", {"Q8_0"}, 0.95),
    # q4_k_m: Q4_K, with Q6_K for half of the value and feedforward-down
    # kernels (llama.cpp's mix).
    ("q4_k_m", {"Q4_K", "Q6_K"}, 0.8),
])
def test_quantized_files_are_quantized_by_llama_cpp(quantize, kernel_types, agreement,
                                                    wide_run, cli, tmp_path, capsys):
    model, template, run = wide_run
    f32 = _export(cli, run, tmp_path, "f32")
    out = _export(cli, run, tmp_path, quantize)
    reader = gguf.GGUFReader(out / "model.gguf")
    kernels = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert kernels <= kernel_types | {"Q8_0"} and kernels & kernel_types, kernels
    assert reader.fields["tokenizer.chat_template"].contents() == template.jinja()
    size, f32_size = (os.path.getsize(p / "model.gguf") for p in (out, f32))
    assert size < f32_size / 3
    prompt = template.encode_prompt(PROMPT) + template.encode_prompt(PAIRS[3][0][1])[1:]
    expected = runs.logits(model, np.array([prompt], "int32"))[0]
    got = _llama_cpp_logits(out / "model.gguf", prompt)
    top1 = float((got.argmax(-1) == expected.argmax(-1)).mean())
    with capsys.disabled():
        print(f"\n{quantize}: {size} bytes (f32 {f32_size}), top-1 agreement with Keras "
              f"{top1:.3f} over {len(prompt)} positions")
    assert top1 >= agreement


def test_unknown_architectures_and_quantizations_are_refused(cli, tmp_path, chat_runs):
    with pytest.raises(KerastuneError, match="MistralBackbone cannot be exported to GGUF: "
                       "expected one of GPT2Backbone, Llama3Backbone, LlamaBackbone"):
        gguf_export.check_gguf("MistralBackbone", "f16")
    _, _, run = chat_runs["gpt2"]
    assert_one_line_error(cli("export", run, "--format", "hf", "--quantize", "q8_0",
                              "--output", tmp_path / "x"), "--quantize q8_0",
                          "expected --format gguf")
    assert not os.path.exists(tmp_path / "x")
    result = cli("export", run, "--format", "gguf", "--quantize", "q3", "--output",
                 tmp_path / "y")
    assert result.code == 2 and "q3" in result.stderr and "q4_k_m" in result.stderr


def test_every_backend_writes_the_same_bytes(chat_runs, tmp_path):
    _, _, run = chat_runs["llama"]
    digests = {}
    for backend in ("jax", "tensorflow", "torch"):
        out = tmp_path / backend
        result = run_cli("export", run, "--format", "gguf", "--quantize", "f16",
                         "--output", out, "--backend", backend)
        assert result.code == 0, (backend, result)
        digests[backend] = hashlib.sha256((out / "model.gguf").read_bytes()).hexdigest()
    assert len(set(digests.values())) == 1, digests


def _tiny_llama3():
    """A tiny Llama 3 (byte-level BPE with Llama 3's special tokens) with
    Llama 3.1's RoPE scaling, set so that one frequency is scaled and one
    is not: the `rope_freqs` tensor is exercised both ways."""
    import json

    from keras_hub import models
    from tokenizers import ByteLevelBPETokenizer

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>", *testing.CHAT_MARKERS]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(testing.sentences(400), vocab_size=400, min_frequency=2,
                            special_tokens=specials, show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokenizer = models.Llama3Tokenizer(vocabulary=model["vocab"], merges=merges)
    backbone = models.Llama3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(), num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=16, intermediate_dim=32,
        rope_frequency_adjustment_factor=8.0, rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0, rope_pretraining_sequence_length=64)
    preprocessor = models.Llama3CausalLMPreprocessor(tokenizer, sequence_length=64)
    return models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


def test_llama3_with_scaled_rope(tmp_path):
    import keras

    keras.utils.set_random_seed(1)
    model = _tiny_llama3()
    path = gguf_export.save_gguf(model, str(tmp_path), quantize="f32")
    reader = gguf.GGUFReader(path)
    factors = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    assert len(factors) == 1 and sorted(set(factors[0].data.tolist())) == [1.0, 8.0]
    assert reader.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    ids = _prompt_ids(7)
    expected = runs.logits(model, ids)[0]
    assert np.abs(_llama_cpp_logits(path, ids[0]) - expected).max() < 1e-3
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    try:
        tokenizer = model.preprocessor.tokenizer
        for text in (PROMPT, "is it monday again? caf\u00e9"):
            expected = [int(i) for i in np.asarray(tokenizer(text))]
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == expected, text
    finally:
        llm.close()
