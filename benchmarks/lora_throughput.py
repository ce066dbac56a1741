"""LoRA training throughput and peak device memory on a Llama shape, random
weights, through this project's pieces (quantize, standard LoRA, plain fit).

    python benchmarks/lora_throughput.py --backend jax                          # TinyLlama-1.1B shape, int8 base
    python benchmarks/lora_throughput.py --backend jax --shape llama2-7b --batch 4
    python benchmarks/lora_throughput.py --backend jax --quantize none          # bf16 base
    python benchmarks/lora_throughput.py --backend torch --rank 16 --targets q_proj,k_proj,v_proj,o_proj
    python benchmarks/lora_throughput.py --shape tiny --seq 32 --batch 2 --steps 2 --warmup 1   # CPU check

Shapes and arguments are those of ../shared/bench/hf_peft_baseline.py
(--shape --vocab --seq --batch --rank --targets --steps --warmup; targets
take peft's names q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
down_proj, or KerasHub's layer names), with alpha = 2 x rank as there; run
both on the same GPU in the same sitting and put the JSON lines side by side.

The base is built in bfloat16 (`--dtype`) and, for `--quantize int8|int4`,
with quantized weights from the start (`quantize.build_quantized`: no float
copy is ever allocated, as when `load_quantized` reads a preset), then
`enable_lora` and `fit`. Prints one JSON line: median step time over the
timed steps, tokens/s, and peak device memory (None on CPU).
"""  # noqa: E501  (usage lines above: docstring text, not broken)

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from train_throughput import peak_memory_gib  # noqa: E402  (benchmarks/ is on sys.path)

SHAPES = {
    # name: (layers, hidden, heads, kv_heads, intermediate), as hf_peft_baseline.py
    "tinyllama-1.1b": (22, 2048, 32, 4, 5632),
    "llama2-7b": (32, 4096, 32, 32, 11008),
    "tiny": (2, 64, 4, 2, 128),
}
PEFT_NAMES = {
    "q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "attention_output",
    "gate_proj": "feedforward_gate_dense", "up_proj": "feedforward_intermediate_dense",
    "down_proj": "feedforward_output_dense",
}


def step_timer():
    """A Keras callback keeping the wall time of each training batch in `.times`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        times = []

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step to finish (async dispatch)
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tinyllama-1.1b", choices=SHAPES)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="q_proj,v_proj")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quantize", default="int8", choices=["int8", "int4", "none"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--backend", default=None)
    args = parser.parse_args()

    from kerastune_lab.backend import list_devices, use_backend

    name = use_backend(args.backend)
    import keras
    import numpy as np
    import tensorflow as tf
    from keras_hub import models

    from kerastune_lab.finetune import lora
    from kerastune_lab.finetune.quantize import build_quantized

    if name != "tensorflow":
        tf.config.set_visible_devices([], "GPU")
    layers, hidden, heads, kv, inter = SHAPES[args.shape]
    config = dict(vocabulary_size=args.vocab, num_layers=layers, num_query_heads=heads,
                  num_key_value_heads=kv, hidden_dim=hidden, intermediate_dim=inter,
                  max_sequence_length=max(2048, args.seq))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if args.quantize == "none":
        backbone = models.LlamaBackbone(**config, dtype=args.dtype)
    else:
        backbone = build_quantized(models.LlamaBackbone, config, args.quantize, args.dtype)
        for weight in backbone.weights:  # random int8 (or packed int4) weights
            if weight.dtype == "int8":
                weight.assign(rng.integers(-8, 8, weight.shape, dtype="int8"))
            elif args.quantize == "int8" and weight.path.endswith("_scale"):
                weight.assign(np.full(weight.shape, 400.0))  # weights q / 400: about +-0.02
    targets = [PEFT_NAMES.get(t, t) for t in args.targets.split(",")]
    lora.enable_lora(backbone, args.rank, alpha=2 * args.rank, targets=targets)
    model = models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    ids = rng.integers(1, args.vocab, (args.batch, args.seq + 1)).astype("int32")
    x = {"token_ids": ids[:, :-1], "padding_mask": np.ones_like(ids[:, :-1])}
    ds = tf.data.Dataset.from_tensors((x, ids[:, 1:])).repeat()
    timer = step_timer()
    history = model.fit(ds, steps_per_epoch=args.warmup + args.steps, epochs=1, verbose=0,
                        callbacks=[timer])
    step = float(np.median(timer.times[args.warmup:]))
    counts = lora.parameter_counts(model)
    print(json.dumps({
        "kerastune": "lora", "backend": name, "shape": args.shape, "seq": args.seq,
        "batch": args.batch, "rank": args.rank, "targets": args.targets,
        "quantize": args.quantize, "dtype": args.dtype,
        "trainable_params": counts["trainable"], "step_s": round(step, 4),
        "tokens_per_s": round(args.batch * args.seq / step), "peak_gib": peak_memory_gib(),
        "loss": round(float(history.history["loss"][-1]), 4), "device": list_devices()[0],
        "keras": keras.__version__,
    }))


if __name__ == "__main__":
    main()
