"""What a GGUF file of a real model weighs at each `--quantize`, computed by
llama.cpp's own quantizer, not estimated.

    python benchmarks/gguf_sizes.py

For each shape (GPT-2 124M, Llama 2 7B, Llama 3 8B) it writes an f16 GGUF
whose tensor infos have the model's names and shapes and whose data is a
sparse hole (no disk used, nothing read), then asks llama.cpp's
`llama_model_quantize` for a dry run (`dry_run=True`: the size each tensor
would have in the type llama.cpp's rules choose for it, q4_k_m's mix of
Q4_K/Q6_K included) and prints the tensor data's size. The tokenizer and
template add well under 1 % (GPT-2's 50k tokens and merges: about 1 MiB).
Needs gguf and llama-cpp-python (the test extra).
"""

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import tempfile

import numpy as np


def llama_shapes(vocab, hidden, layers, heads, kv_heads, ffn):
    """(GGUF architecture, hyperparameters, {tensor: shape, rows first})."""
    head_dim = hidden // heads
    shapes = {"token_embd.weight": (vocab, hidden), "output.weight": (vocab, hidden),
              "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes.update({
            f"blk.{i}.attn_norm.weight": (hidden,), f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv_heads * head_dim, hidden),
            f"blk.{i}.attn_v.weight": (kv_heads * head_dim, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ffn)})
    return "llama", dict(vocab=vocab, hidden=hidden, layers=layers, heads=heads,
                         kv_heads=kv_heads, ffn=ffn), shapes


def gpt2_shapes(vocab, hidden, layers, heads, context):
    shapes = {"token_embd.weight": (vocab, hidden), "position_embd.weight": (context, hidden),
              "output_norm.weight": (hidden,), "output_norm.bias": (hidden,)}
    for i in range(layers):
        for norm in ("attn_norm", "ffn_norm"):
            shapes.update({f"blk.{i}.{norm}.weight": (hidden,), f"blk.{i}.{norm}.bias": (hidden,)})
        shapes.update({
            f"blk.{i}.attn_qkv.weight": (3 * hidden, hidden),
            f"blk.{i}.attn_qkv.bias": (3 * hidden,),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.attn_output.bias": (hidden,),
            f"blk.{i}.ffn_up.weight": (4 * hidden, hidden),
            f"blk.{i}.ffn_up.bias": (4 * hidden,),
            f"blk.{i}.ffn_down.weight": (hidden, 4 * hidden), f"blk.{i}.ffn_down.bias": (hidden,)})
    return "gpt2", dict(vocab=vocab, hidden=hidden, layers=layers, heads=heads,
                        kv_heads=heads, ffn=4 * hidden, context=context), shapes


MODELS = {
    "GPT-2 124M (gpt2_base_en)": gpt2_shapes(50257, 768, 12, 12, 1024),
    "Llama 2 7B (llama2_7b_en)": llama_shapes(32000, 4096, 32, 32, 32, 11008),
    "Llama 3 8B (llama3_8b_en)": llama_shapes(128256, 4096, 32, 32, 8, 14336),
}
FTYPES = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}


def write_sparse_gguf(path, arch, hp, shapes):
    """An f16 GGUF (vectors f32) with these tensor infos and a sparse hole
    for data."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(hp["layers"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_feed_forward_length(hp["ffn"])
    writer.add_head_count(hp["heads"])
    writer.add_context_length(hp.get("context", 4096))
    writer.add_vocab_size(hp["vocab"])
    if arch == "llama":
        writer.add_head_count_kv(hp["kv_heads"])
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_rope_dimension_count(hp["hidden"] // hp["heads"])
    else:
        writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    data = 0
    for name, shape in shapes.items():
        dtype = np.float16 if len(shape) > 1 else np.float32
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
        data += -(-nbytes // 32) * 32  # GGUF aligns each tensor to 32 bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    size = os.path.getsize(path)
    os.truncate(path, -(-size // 32) * 32 + data)  # a hole: no disk, reads as zeros
    return data


def dry_run(path, ftype):
    """llama.cpp's quantizer's dry run: the tensor data size in bytes."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.dry_run = True
    cpp_log = logging.getLogger("llama-cpp-python")
    level = cpp_log.level
    cpp_log.setLevel(logging.INFO)
    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(out):
            code = llama_cpp.llama_model_quantize(path.encode(), os.devnull.encode(),
                                                  ctypes.byref(params))
    finally:
        cpp_log.setLevel(level)
    found = re.findall(r"quant size\s*=\s*([\d.]+) MiB", out.getvalue())
    if code != 0 or not found:
        raise RuntimeError(f"llama_model_quantize dry run failed ({code}):\n{out.getvalue()}")
    return float(found[-1]) * 2**20


def _size(nbytes):
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def main():
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}: tensor data of the GGUF file, "
          "llama_model_quantize dry run")
    print(f"{'model':30}{'params':>9}" + "".join(f"{q:>11}" for q in FTYPES))
    with tempfile.TemporaryDirectory() as work:
        for label, (arch, hp, shapes) in MODELS.items():
            path = os.path.join(work, "model.gguf")
            write_sparse_gguf(path, arch, hp, shapes)
            params = sum(int(np.prod(s)) for s in shapes.values())
            sizes = [dry_run(path, q) for q in FTYPES]
            print(f"{label:30}{params / 1e9:8.2f}B" + "".join(f"{_size(s):>11}" for s in sizes))
            os.remove(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
