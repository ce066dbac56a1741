"""A KerasHub causal LM as one GGUF file, for llama.cpp, Ollama and LM Studio.

    save_gguf(causal_lm, "out/", template, quantize="q8_0")
    # out/model.gguf and out/Modelfile (`ollama create NAME -f out/Modelfile`)

The weights are the ones KerasHub's transformers export writes (names and
layouts that `transformers` loads; `compat.hf_weights`), renamed to
llama.cpp's tensor names with the `gguf` package's own map, as llama.cpp's
`convert_hf_to_gguf.py` does: GPT-2's fused attention and MLP kernels
transposed to (out, in), Llama's query and key rows put back into the
interleaved RoPE order llama.cpp computes with. The file is written with
the `gguf` package (llama.cpp's writer, on PyPI) in f32 or f16; q8_0 and
q4_k_m are quantized from the f32 file by llama.cpp's own quantizer
(`llama_model_quantize`, through llama-cpp-python), not here.

Inside the file: the hyperparameters, the tokenizer (GPT-2 and Llama 3:
byte-level BPE vocabulary and merges; Llama 2: the SentencePiece pieces,
scores and types), its special tokens, and the run's chat template as
Jinja (`tokenizer.chat_template`, the template of `hf.save_chat_template`).
The Modelfile beside it has the same template in Ollama's Go syntax and the
template's end markers as stop words.

| KerasHub backbone | GGUF architecture | tokenizer            |
|-------------------|-------------------|----------------------|
| GPT2Backbone      | gpt2              | BPE (pre "gpt-2")    |
| LlamaBackbone     | llama             | SentencePiece        |
| Llama3Backbone    | llama             | BPE (pre "llama-bpe")|

A LoRA run's adapter alone (`save_gguf_lora`, Llama 2 and 3) is a GGUF
LoRA that llama.cpp applies over the base's GGUF.
"""

import json
import logging
import math
import os

import numpy as np

from kerastune_lab import compat
from kerastune_lab.errors import KerastuneError

log = logging.getLogger("kerastune_lab")

# KerasHub backbone -> (GGUF architecture, the KerasHub exporter whose
# transformers names and layouts it has, BPE pre-tokenizer or None for SentencePiece).
ARCHITECTURES = {
    "GPT2Backbone": ("gpt2", "GPT2Backbone", "gpt-2"),
    "LlamaBackbone": ("llama", "Llama3Backbone", None),
    "Llama3Backbone": ("llama", "Llama3Backbone", "llama-bpe"),
}
QUANTIZE = ("f32", "f16", "q8_0", "q4_k_m")
# The llama.cpp file types (`llama_ftype`) the quantizer writes.
_LLAMA_FTYPES = {"q8_0": 7, "q4_k_m": 15}
GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
_GPT2_TRANSPOSED = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight",
                    ".mlp.c_proj.weight")


def check_quantize(quantize):
    """Refuses an unknown quantization in one line."""
    if quantize not in QUANTIZE:
        raise KerastuneError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZE)}")


def check_gguf(backbone_name, quantize):
    """Refuses, in one line, a backbone llama.cpp has no architecture for
    here, or an unknown quantization."""
    check_quantize(quantize)
    if backbone_name not in ARCHITECTURES:
        raise KerastuneError(f"a {backbone_name} cannot be exported to GGUF: expected one of "
                             f"{', '.join(sorted(ARCHITECTURES))}")


def save_gguf(causal_lm, folder, template=None, quantize="f16"):
    """Writes `causal_lm` (a float KerasHub CausalLM with its preprocessor,
    LoRA merged) as `folder/model.gguf`, and with a chat `template` (a
    `data.chat_template.ChatTemplate`) an Ollama `folder/Modelfile`.

    Returns:
        The path of the GGUF file.
    """
    from kerastune_lab.finetune._backbone import has_lora
    from kerastune_lab.finetune.quantize import quantization_mode

    backbone = causal_lm.backbone
    name = type(backbone).__name__
    check_gguf(name, quantize)
    if has_lora(backbone) or quantization_mode(backbone) != "none":
        raise KerastuneError(f"GGUF export of a {name}: expected a plain float model "
                             "(LoRA merged, not quantized)")
    if causal_lm.preprocessor is None:
        raise KerastuneError(f"GGUF export of a {name}: expected a model with its "
                             "preprocessor (the tokenizer goes into the file)")
    path = os.path.join(folder, GGUF_FILE)
    if quantize in ("f32", "f16"):
        _write(causal_lm, path, template, quantize)
    else:
        unquantized = os.path.join(folder, ".f32.gguf")
        _write(causal_lm, unquantized, template, "f32")
        quantize_file(unquantized, path, quantize)
        os.remove(unquantized)
    if template is not None:
        with open(os.path.join(folder, MODELFILE), "w", encoding="utf-8") as f:
            f.write(modelfile(template, GGUF_FILE))
    return path


def quantize_file(source, target, quantize):
    """llama.cpp's own quantizer (`llama_model_quantize`) from a GGUF file
    to `quantize` ("q8_0" or "q4_k_m"). Tensors whose rows are not a whole
    number of blocks are given the types llama.cpp falls back to."""
    import ctypes

    try:
        import llama_cpp
    except ImportError:
        raise KerastuneError(f"--quantize {quantize} needs llama-cpp-python, llama.cpp's own "
                             "quantizer: pip install llama-cpp-python (or --quantize "
                             "f16)") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _LLAMA_FTYPES[quantize]
    # llama.cpp's log (a few hundred lines per file) goes through
    # llama-cpp-python's logger, printed at its level: errors only here.
    cpp_log = logging.getLogger("llama-cpp-python")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        code = llama_cpp.llama_model_quantize(source.encode(), target.encode(),
                                              ctypes.byref(params))
    finally:
        cpp_log.setLevel(level)
    if code != 0:
        raise KerastuneError(f"llama.cpp could not quantize {source!r} to {quantize} "
                             f"(llama_model_quantize returned {code})")


def tensors(backbone):
    """{llama.cpp tensor name: numpy array} of a backbone, f32, laid out as
    llama.cpp reads them (the rows of a GGUF tensor are torch's rows)."""
    import gguf

    arch, like, _ = ARCHITECTURES[type(backbone).__name__]
    weights = compat.hf_weights(backbone, like)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], backbone.num_layers)
    out = {}
    for hf_name, array in weights.items():
        array = np.asarray(array, dtype="float32")
        if arch == "gpt2":
            if hf_name == "lm_head.weight":
                continue  # tied to token_embd: llama.cpp uses it for the output
            if hf_name.endswith(_GPT2_TRANSPOSED):
                array = array.T
        elif hf_name.endswith("self_attn.q_proj.weight"):
            array = _rope_rows(array, backbone.num_query_heads)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            array = _rope_rows(array, backbone.num_key_value_heads)
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise KerastuneError(f"GGUF export: no llama.cpp name for {hf_name!r}")
        out[gguf_name] = np.ascontiguousarray(array)
    if arch == "llama" and "output.weight" in out and getattr(
            backbone, "tie_word_embeddings", False):
        del out["output.weight"]  # tied: llama.cpp uses token_embd
    return out


def _rope_rows(weights, heads):
    """Each head's rows from the rotate-half order (KerasHub, transformers)
    to the interleaved pairs llama.cpp's RoPE rotates (convert_hf_to_gguf's
    `permute`)."""
    rows = weights.shape[0]
    return (weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _gguf():
    try:
        import gguf
    except ImportError:
        raise KerastuneError("--format gguf needs the gguf package, llama.cpp's writer: "
                             "pip install gguf") from None
    return gguf


def _write(causal_lm, path, template, dtype):
    gguf = _gguf()

    backbone = causal_lm.backbone
    arch, like, _ = ARCHITECTURES[type(backbone).__name__]
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(getattr(backbone, "name", arch))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32"
                         else gguf.LlamaFileType.MOSTLY_F16)
    extra = _hyperparameters(writer, backbone)
    _tokenizer(writer, causal_lm.preprocessor.tokenizer, backbone, template)
    for name, array in {**tensors(backbone), **extra}.items():
        # As convert_hf_to_gguf: vectors (norms, biases) stay f32.
        if dtype == "f16" and array.ndim > 1:
            array = array.astype("float16")
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hyperparameters(writer, backbone):
    """Writes the architecture's keys; returns extra tensors (Llama 3.1's
    RoPE frequency factors)."""
    writer.add_block_count(backbone.num_layers)
    writer.add_embedding_length(backbone.hidden_dim)
    writer.add_feed_forward_length(backbone.intermediate_dim)
    writer.add_vocab_size(backbone.vocabulary_size)
    if type(backbone).__name__ == "GPT2Backbone":
        writer.add_context_length(backbone.max_sequence_length)
        writer.add_head_count(backbone.num_heads)
        writer.add_layer_norm_eps(1e-5)  # KerasHub's GPT-2 layer norms
        return {}
    from kerastune_lab.export import hf

    config = (hf.llama2_config(backbone) if type(backbone).__name__ == "LlamaBackbone"
              else compat.hf_config(backbone, "Llama3Backbone"))
    head_dim = backbone.hidden_dim // backbone.num_query_heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_head_count(backbone.num_query_heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config["rope_theta"])
    scaling = config.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind == "llama3":
        return {"rope_freqs.weight": _llama3_rope_factors(scaling, config["rope_theta"],
                                                          head_dim)}
    elif kind is not None:
        raise KerastuneError(f"GGUF export: RoPE scaling {kind!r}: expected linear or llama3")
    return {}


def _llama3_rope_factors(scaling, base, head_dim):
    """Llama 3.1's per-frequency RoPE factors, the `rope_freqs` tensor
    convert_hf_to_gguf computes from the same config."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype="float32") / head_dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old / high:
            factors.append(1.0)
        elif wavelength > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype="float32")


def _tokenizer(writer, tokenizer, backbone, template):
    import gguf

    _, _, pre = ARCHITECTURES[type(backbone).__name__]
    if pre is None:  # SentencePiece
        from sentencepiece import sentencepiece_model_pb2

        model = sentencepiece_model_pb2.ModelProto()
        model.ParseFromString(_proto_bytes(tokenizer))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([p.piece.encode("utf-8") for p in model.pieces])
        writer.add_token_scores([p.score for p in model.pieces])
        writer.add_token_types([int(p.type) for p in model.pieces])
        writer.add_add_space_prefix(model.normalizer_spec.add_dummy_prefix)
        if model.trainer_spec.unk_id >= 0:
            writer.add_unk_token_id(model.trainer_spec.unk_id)
        if model.trainer_spec.pad_id >= 0:
            writer.add_pad_token_id(model.trainer_spec.pad_id)
    else:  # byte-level BPE
        vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
        special = set(getattr(tokenizer, "special_tokens", None) or ())
        markers = set(template.markers) if template is not None else set()
        types = [gguf.TokenType.CONTROL if token in special
                 else gguf.TokenType.USER_DEFINED if token in markers
                 else gguf.TokenType.NORMAL for token in vocabulary]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(vocabulary)
        writer.add_token_types([int(t) for t in types])
        writer.add_token_merges(list(tokenizer.merges))
    start, end = getattr(tokenizer, "start_token_id", None), getattr(tokenizer, "end_token_id",
                                                                     None)
    if start is not None:
        writer.add_bos_token_id(int(start))
    if end is not None:
        writer.add_eos_token_id(int(end))
    add_start = template.add_start_token if template is not None else pre is None
    writer.add_add_bos_token(bool(add_start and start is not None))
    writer.add_add_eos_token(False)
    if template is not None:
        writer.add_chat_template(template.jinja())


def _proto_bytes(tokenizer):
    proto = tokenizer.proto
    if isinstance(proto, bytes):
        return proto
    with open(proto, "rb") as f:
        return f.read()


def modelfile(template, gguf_name):
    """An Ollama Modelfile: FROM the GGUF file beside it, the chat template
    in Ollama's Go template syntax (rendering the same text as the Jinja
    one, the start token left to the tokenizer's add_bos), and the
    template's closing text as stop words."""
    head, after = template.template.split("{response}")
    before, between = head.split("{prompt}")
    pieces = [template._text(p) for p in (before, between, after)]
    for piece in pieces:
        if "{{" in piece or "}}" in piece or '"""' in piece:
            raise KerastuneError(f"chat template {template.template!r}: expected no '{{{{', "
                                 "'}}' or '\"\"\"' in its text (Ollama's template syntax)")
    before, between, after = pieces
    # No `{{-`: it would trim the template's own spaces.
    go = ('{{ range .Messages }}{{ if eq .Role "user" }}' + before + "{{ .Content }}"
          + between + '{{ else if eq .Role "assistant" }}{{ .Content }}' + after
          + "{{ end }}{{ end }}")
    stops = [s for s in dict.fromkeys([after.strip(), before.strip()]) if s]
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{go}"""']
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


ADAPTER_GGUF = "adapter.gguf"
BASE_GGUF = "base.gguf"


def save_gguf_lora(adapter, folder, preset=None, with_base=False, quantize="f16"):
    """Writes the LoRA adapter file `adapter` as `folder/adapter.gguf`, a
    GGUF LoRA that llama.cpp applies over the base's GGUF (`llama-cli -m
    base.gguf --lora adapter.gguf`; llama-cpp-python `lora_path=`), as
    llama.cpp's `convert_lora_to_gguf.py` writes one: `general.type`
    "adapter", `adapter.lora.alpha`, and for each adapted kernel
    `blk.N.attn_q.weight.lora_a` (rank, d_in) and `.lora_b` (d_out, rank),
    B's rows of query and key in llama.cpp's RoPE order. With `with_base`,
    also the float base as `folder/base.gguf` (in `quantize`).

    Returns:
        The path of the adapter file.
    """
    from kerastune_lab.finetune.lora import read_adapter_factors
    from kerastune_lab.finetune.lora.peft_folder import module_name

    metadata, factors = read_adapter_factors(adapter)
    name = metadata["base"]["class_name"]
    what = f"GGUF LoRA of {os.fspath(adapter)!r}"
    check_gguf(name, quantize)
    if ARCHITECTURES[name][0] != "llama":
        raise KerastuneError(f"{what}: a GGUF LoRA is written for Llama3Backbone, "
                             f"LlamaBackbone, not {name}: its attention is one fused "
                             "attn_qkv tensor; export the merged model (--format gguf)")
    gguf = _gguf()
    shape = metadata["base"]["shape"]
    heads = {"attn_q": shape["num_query_heads"], "attn_k": shape["num_key_value_heads"]}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape["num_layers"])
    path = os.path.join(folder, ADAPTER_GGUF)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(metadata["alpha"]))
    for layer_path, (a, b) in sorted(factors.items()):
        tensor = names.get_name(module_name(name, layer_path, what) + ".weight",
                                try_suffixes=(".weight",))
        a = np.asarray(a, "float32").T  # (rank, d_in)
        b = np.asarray(b, "float32").T  # (d_out, rank)
        kind = tensor.split(".")[2]
        if kind in heads:
            b = _rope_rows(b, heads[kind])
        writer.add_tensor(f"{tensor}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{tensor}.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if with_base:
        from kerastune_lab.finetune.lora import load_float_base

        base, _ = load_float_base(adapter, preset)
        os.replace(save_gguf(base, folder, quantize=quantize), os.path.join(folder, BASE_GGUF))
    return path
