"""Device memory of one LoRA train step of a Llama-2-7B-shaped model, as
`kerastune plan` counts it, on the compiler of the device jax has: this
CPU here, the GPU in benchmarks/gpu_check.sh.

    KERAS_BACKEND=jax python benchmarks/plan_7b.py            # the T4 settings below
    KERAS_BACKEND=jax python benchmarks/plan_7b.py --tiny     # 2 layers x 256: seconds

Each row: the 7B shape (32 layers x 4096 / 11008, 32 heads, 32,000 tokens),
LoRA rank 8 on query and value, batch 1, sequence 512, with the base int8
or int4 and rematerialisation off or per block, in float32 (what "auto"
picks on a T4 over an int8 base: Keras refuses float16 there) and in
mixed_bfloat16. `finetune.step_memory.scaled_step` compiles the 1- and
2-block models and scales to 32 (the plan's own way). Issue 26 asks for at
most 14 GiB with the T4 defaults; XLA's CPU compiler keeps every block's
dequantized kernels alive (docs/recipes.md), and what a GPU compiler keeps
is what this script measures there.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

SHAPE = dict(vocabulary_size=32000, num_layers=32, num_query_heads=32, num_key_value_heads=32,
             hidden_dim=4096, intermediate_dim=11008, layer_norm_epsilon=1e-5)
TINY = dict(SHAPE, num_layers=2, hidden_dim=256, intermediate_dim=704, num_query_heads=4,
            num_key_value_heads=4)
ROWS = [(quantize, remat, precision)
        for precision in ("float32", "mixed_bfloat16")
        for quantize in ("int8", "int4")
        for remat in ("none", "blocks")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 256-wide model")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=512)
    args = parser.parse_args()

    import jax
    import keras_hub

    from kerastune_lab.finetune.step_memory import ModelSpec, gib, scaled_step

    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}; jax {jax.__version__}")
    shape = TINY if args.tiny else SHAPE
    print(f"shape: {shape}; LoRA 8 on query,value; batch {args.batch} x {args.sequence} tokens")
    print("| base | remat | precision | weights GiB | optimizer GiB | temporaries GiB "
          "| device memory per step GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for quantize, remat, precision in ROWS:
        spec = ModelSpec(keras_hub.models.LlamaBackbone, shape, quantize=quantize,
                         precision=precision, lora_rank=8, lora_alpha=16.0,
                         lora_targets=["query", "value"], remat=remat)
        start = time.perf_counter()
        step = scaled_step(spec, args.batch, args.sequence)
        print(f"| {quantize} | {remat} | {precision} | {gib(step.weights_bytes)} "
              f"| {gib(step.optimizer_bytes)} | {gib(step.temporary_bytes)} "
              f"| {gib(step.device_bytes)} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
