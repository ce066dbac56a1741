"""Training throughput and peak device memory of each recipe's model, on the
backend you pick, at a realistic shape with random weights (speed does not
depend on them).

    python benchmarks/train_throughput.py resnet50   --backend jax        # 224x224, batch 128
    python benchmarks/train_throughput.py distilbert --backend torch      # sequence 512, batch 32
    python benchmarks/train_throughput.py gpt2       --backend tensorflow # sequence 512, batch 8
    python benchmarks/train_throughput.py resnet50 --shape tiny --steps 3  # CPU check of the script

Mixed bfloat16 by default (`--precision float32` to turn it off). Prints one
JSON line in the form of ../shared/bench/cls_baseline.py's, so the two can be
put side by side: run the baseline on the same GPU in the same sitting.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {
    # model: {shape: config}
    "resnet50": {
        "real": dict(image=224, batch=128, filters=[64, 128, 256, 512], blocks=[3, 4, 6, 3]),
        "tiny": dict(image=32, batch=4, filters=[64, 16], blocks=[1, 1]),
    },
    "distilbert": {
        "real": dict(vocab=30522, layers=6, heads=12, hidden=768, inter=3072, seq=512, batch=32),
        "tiny": dict(vocab=500, layers=2, heads=2, hidden=16, inter=32, seq=32, batch=4),
    },
    "gpt2": {
        "real": dict(vocab=50257, layers=12, heads=12, hidden=768, inter=3072, seq=512, batch=8),
        "tiny": dict(vocab=500, layers=2, heads=2, hidden=16, inter=32, seq=32, batch=4),
    },
}


def build(model_name, c):
    """Returns (model, x, y, items per step, unit) for one training step's batch."""
    import keras
    import numpy as np
    from keras_hub import models

    rng = np.random.default_rng(0)
    if model_name == "resnet50":
        backbone = models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=c["filters"], stackwise_num_blocks=c["blocks"],
            stackwise_num_strides=[1, 2, 2, 2][:len(c["blocks"])],
            block_type="bottleneck_block", image_shape=(c["image"], c["image"], 3))
        model = models.ResNetImageClassifier(backbone=backbone, num_classes=2, preprocessor=None)
        x = rng.random((c["batch"], c["image"], c["image"], 3), dtype="float32")
        y = rng.integers(0, 2, (c["batch"],))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return model, loss, x, y, c["batch"], "images"
    ids = rng.integers(1, c["vocab"], (c["batch"], c["seq"])).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    if model_name == "distilbert":
        backbone = models.DistilBertBackbone(
            vocabulary_size=c["vocab"], num_layers=c["layers"], num_heads=c["heads"],
            hidden_dim=c["hidden"], intermediate_dim=c["inter"], max_sequence_length=c["seq"])
        model = models.DistilBertTextClassifier(backbone=backbone, num_classes=2,
                                                preprocessor=None)
        y = rng.integers(0, 2, (c["batch"],))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return model, loss, x, y, c["batch"], "sequences"
    backbone = models.GPT2Backbone(
        vocabulary_size=c["vocab"], num_layers=c["layers"], num_heads=c["heads"],
        hidden_dim=c["hidden"], intermediate_dim=c["inter"],
        max_sequence_length=max(1024, c["seq"]))
    model = models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return model, loss, x, ids, c["batch"] * c["seq"], "tokens"


def peak_memory_gib():
    """Peak memory of the first accelerator, or None on CPU."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
        elif backend == "torch":
            import torch

            peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        else:
            import tensorflow as tf

            gpus = tf.config.list_logical_devices("GPU")
            peak = tf.config.experimental.get_memory_info(gpus[0].name)["peak"] if gpus else None
    except Exception:  # a backend without memory statistics for this device
        peak = None
    return None if peak is None else round(peak / 2**30, 2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(SHAPES))
    parser.add_argument("--backend", default=None)
    parser.add_argument("--shape", default="real", choices=["real", "tiny"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=["mixed_bfloat16", "mixed_float16", "float32"])
    args = parser.parse_args()

    from kerastune_lab.backend import list_devices, use_backend

    name = use_backend(args.backend)
    import keras
    import tensorflow as tf

    if name != "tensorflow":
        tf.config.set_visible_devices([], "GPU")
    keras.mixed_precision.set_global_policy(args.precision)
    config = dict(SHAPES[args.model][args.shape])
    if args.batch:
        config["batch"] = args.batch
    model, loss, x, y, per_step, unit = build(args.model, config)
    model.compile(optimizer=keras.optimizers.AdamW(1e-5), loss=loss)
    # The same batch every step, copied from host memory as a loader would.
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=args.warmup, epochs=1, verbose=0)  # compile, warm up
    start = time.perf_counter()
    history = model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
    step = (time.perf_counter() - start) / args.steps
    print(json.dumps({
        "kerastune": args.model, "backend": name, "shape": args.shape, "batch": config["batch"],
        "precision": args.precision, "step_s": round(step, 4),
        "per_s": round(per_step / step, 1), "unit": unit, "peak_gib": peak_memory_gib(),
        "loss": round(float(history.history["loss"][-1]), 4), "device": list_devices()[0],
        "keras": keras.__version__, "params": model.count_params(),
    }))


if __name__ == "__main__":
    main()
