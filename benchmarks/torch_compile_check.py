"""Does `jit_compile=True` (torch.compile) work for a recipe model on torch,
and what does it cost? One model a process, at the tests' smoke size.

    python benchmarks/torch_compile_check.py MODEL 0|1    # 1: jit_compile=True

MODEL: gpt2 (the chat recipe's causal LM), distilbert (imdb_sentiment's
classifier), resnet (the image recipes: head phase, then everything,
recompiled), llama8 / llama4 (lora_chat: int8 / int4 base, our LoRA rank 4).
The tiny presets of the tests (`testing.build_tiny_task`), random data, 6
steps of batch 4 an epoch: two `fit` calls of one epoch (the first
compiles), for resnet two more after the recompile, then `evaluate` and
`predict`. Prints seconds of each and the losses: run it with 0 and with 1
and compare the lines.
"""

import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS, BATCH = 6, 4


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(kind, jit):
    import numpy as np

    from kerastune_lab import testing
    from kerastune_lab.finetune.causal_lm import compile_causal_lm
    from kerastune_lab.finetune.two_phase import compile_classifier, set_backbone_trainable

    rng = np.random.default_rng(0)
    model = testing.build_tiny_task("gpt2" if kind == "gpt2" else
                                    "llama" if kind.startswith("llama") else kind, seed=0)
    model.preprocessor = None
    kwargs = {}
    if kind in ("gpt2", "llama8", "llama4"):
        if kind != "gpt2":
            from kerastune_lab.finetune import lora

            model.quantize("int8" if kind == "llama8" else "int4")
            lora.enable_lora(model, 4, 8.0)
        ids = rng.integers(0, model.backbone.vocabulary_size, (BATCH * STEPS, 33))
        x = {"token_ids": ids[:, :-1].astype("int32"),
             "padding_mask": np.ones((len(ids), 32), bool)}
        y = ids[:, 1:].astype("int32")
        kwargs["sample_weight"] = (rng.random(y.shape) > 0.3).astype("float32")
        compile_causal_lm(model, 1e-3, jit_compile=jit)
    elif kind == "distilbert":
        ids = rng.integers(0, 100, (BATCH * STEPS, 32)).astype("int32")
        x = {"token_ids": ids, "padding_mask": np.ones(ids.shape, bool)}
        y = rng.integers(0, 2, len(ids)).astype("int32")
        compile_classifier(model, 1e-3, jit_compile=jit)
    elif kind == "resnet":
        x = rng.random((BATCH * STEPS, 32, 32, 3), dtype=np.float32)
        y = rng.integers(0, 10, len(x)).astype("int32")
        set_backbone_trainable(model, False)
        compile_classifier(model, 1e-3, jit_compile=jit)
    else:
        raise SystemExit(f"unknown model {kind!r}")

    def fit():
        return model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
                         **kwargs).history["loss"]

    (first, s1), (second, s2) = timed(fit), timed(fit)
    losses, line = first + second, f"fit 1: {s1:.1f} s, fit 2: {s2:.1f} s"
    if kind == "resnet":
        set_backbone_trainable(model, True)
        compile_classifier(model, 1e-4, jit_compile=jit)  # trainable flags changed
        (third, s3), (_, s4) = timed(fit), timed(fit)
        losses += third
        line += f", after the recompile: fit 3: {s3:.1f} s, fit 4: {s4:.1f} s"
    evaluation, s5 = timed(lambda: model.evaluate(x, y, batch_size=BATCH, verbose=0))
    _, s6 = timed(lambda: model.predict(x, batch_size=BATCH, verbose=0))
    print(f"{kind}, jit_compile={jit}: {line}, evaluate: {s5:.1f} s, predict: {s6:.1f} s")
    print("losses:", " ".join(f"{float(v):.6f}" for v in losses),
          "| evaluate:", " ".join(f"{float(v):.6f}" for v in evaluation))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("0", "1"):
        raise SystemExit(__doc__.split("\n\n")[1])
    main(sys.argv[1], sys.argv[2] == "1")
