"""The plan's device figure against the measured peak of the same train step,
on this CPU (jax), each row in a fresh process.

    python benchmarks/plan_accuracy.py                      # gpt2-small and 1B shapes, 2 batches
    python benchmarks/plan_accuracy.py --shapes gpt2_small --batches 1 4
    python benchmarks/plan_accuracy.py --json rows.json

A row builds the model `kerastune plan` plans (`finetune.step_memory.build_abstract`)
with real, random weights, compiles Keras' JAX `train_step` with the state
donated as `fit` does, and runs it twice, while a thread samples the process's resident memory
every millisecond. On the CPU the device is the host, so the step's memory
is the state it was given (the weights, optimizer and metrics arrays: known
to the byte) plus the RSS growth over the two calls (above the RSS with the
state in memory and the step compiled). The plan's figure for the same settings comes
from `finetune.step_memory.plan_step` on abstract weights, in the same process.

| shape | model | settings |
|---|---|---|
| gpt2_small | GPT2Backbone 12 x 768, vocabulary 50257 | full fine-tuning, float32, dropout 0 |
| llama_1b | LlamaBackbone 16 x 2048, 8192, 32/8 heads, vocab 32000 | int8, LoRA 8 q/v, float32 |

On a GPU (benchmarks/gpu_check.sh), `--device` measures
`jax.devices()[0].memory_stats()['peak_bytes_in_use']` instead of the RSS.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

SHAPES = {
    "gpt2_small": ("GPT2Backbone", dict(
        vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, dropout=0.0, max_sequence_length=1024),
        dict(quantize="none", lora_rank=0)),
    "llama_1b": ("LlamaBackbone", dict(
        vocabulary_size=32000, num_layers=16, num_query_heads=32, num_key_value_heads=8,
        hidden_dim=2048, intermediate_dim=8192, layer_norm_epsilon=1e-5),
        dict(quantize="int8", lora_rank=8, lora_alpha=16.0, lora_targets=["query", "value"])),
}
SEQUENCE = 256


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler(threading.Thread):
    """The highest RSS seen while running, sampled every millisecond."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.running = rss_bytes(), True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def stop(self):
        self.running = False
        self.join()
        return max(self.peak, rss_bytes())


def row(shape, batch, device=False):
    """One measurement (run in a child process): plan and measured bytes."""
    import jax
    import keras
    import keras_hub
    import numpy as np

    from kerastune_lab.finetune.step_memory import (
        ModelSpec,
        build_abstract,
        plan_step,
        step_memory,
        step_structs,
    )

    cls_name, config, settings = SHAPES[shape]
    spec = ModelSpec(getattr(keras_hub.models, cls_name), config, precision="float32",
                     **settings)
    planned = plan_step(spec, batch, SEQUENCE)
    keras.utils.set_random_seed(0)
    task = build_abstract(spec, abstract=False)
    structs = step_structs(task, batch, SEQUENCE)
    compiled = jax.jit(task.train_step, donate_argnums=0).lower(*structs).compile()
    same = step_memory(task, compiled.memory_analysis(), batch, SEQUENCE)
    rng = np.random.default_rng(0)
    shape_ = (batch, SEQUENCE)
    data = ({"token_ids": rng.integers(1, 30000, shape_).astype("int32"),
             "padding_mask": np.ones(shape_, bool)},
            rng.integers(1, 30000, shape_).astype("int32"), np.ones(shape_, "float32"))
    data = jax.device_put(data)
    groups = (task.trainable_variables, task.non_trainable_variables,
              task.optimizer.variables, task.metrics_variables)
    state = tuple([v.value for v in group] for group in groups)
    state_bytes = sum(a.nbytes for group in state for a in group)
    # The first call allocates what the step needs (XLA's CPU runtime keeps
    # some of it for the next call): the peak over a first and a second
    # call, above the resident memory before them.
    before = rss_bytes()
    sampler = PeakSampler()
    sampler.start()
    for _ in range(2):
        _, state = compiled(state, data)
        jax.block_until_ready(state)
    peak = sampler.stop()
    if device:
        measured = jax.devices()[0].memory_stats()["peak_bytes_in_use"]
    else:
        measured = state_bytes + max(0, peak - before)
    return {"shape": shape, "batch": batch, "sequence": SEQUENCE,
            "planned": planned.device_bytes, "same_compile": same.device_bytes,
            "temporaries": planned.temporary_bytes, "state": state_bytes,
            "rss_growth": peak - before, "measured": measured,
            "ratio": planned.device_bytes / measured}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--device", action="store_true", help="measure an accelerator")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(row(args.child[0], int(args.child[1]), args.device)))
        return
    rows = []
    print("| shape | batch x tokens | plan (GiB) | measured (GiB) | state | RSS growth "
          "| plan / measured |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        for batch in args.batches:
            command = [sys.executable, __file__, "--child", shape, str(batch)]
            command += ["--device"] if args.device else []
            out = subprocess.run(command, capture_output=True, text=True,
                                 env=dict(os.environ, KERAS_BACKEND="jax"))
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(r)
            g = 2 ** 30
            print(f"| {shape} | {batch} x {SEQUENCE} | {r['planned'] / g:.2f} | "
                  f"{r['measured'] / g:.2f} | {r['state'] / g:.2f} | "
                  f"{r['rss_growth'] / g:.2f} | {r['ratio']:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
