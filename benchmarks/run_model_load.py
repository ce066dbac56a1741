"""What the SHA-256 of a run's weights (model/SHA256SUMS) costs: saving a run
model and loading it back, with the checksum and without it, side by side,
at the real shapes of the recipes' run models.

    python benchmarks/run_model_load.py                      # resnet50 and gpt2, jax
    python benchmarks/run_model_load.py --models gpt2 --repeats 5
    python benchmarks/run_model_load.py --backend torch

| model | shape | what a run saves |
|---|---|---|
| resnet50 | cats_vs_dogs/xray_pneumonia: ResNet-50, 2 classes | `model/` of ~94 MB |
| gpt2 | sarcastic_chat: GPT-2 base (124M) | `model/` of ~500 MB |

Each row, in one process (random weights; the files are read from the page
cache, as a learner's second command reads them):

- save: `RunDir.save_model` (save_to_preset, then SHA256SUMS) against
  `save_to_preset` into the same atomic folder alone (what it did before);
- load: `load_run_model` (`check_weights`, which hashes each weights file,
  then `from_preset`) against the same with SHA256SUMS removed (a run saved
  by an earlier version: the h5py checks alone);
- hash: `check_weights` alone, and the folder's bytes over its seconds.

The median of `--repeats` runs of each, the two ways alternating.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(name):
    """The task a run of that recipe saves, at its real shape (random weights)."""
    import keras_hub
    from keras_hub import models

    from kerastune_lab import testing

    if name == "resnet50":
        backbone = models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
            stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
            image_shape=(None, None, 3))
        converter = keras_hub.layers.ResNetImageConverter(image_size=(224, 224), scale=1 / 255.0)
        preprocessor = models.ResNetImageClassifierPreprocessor(image_converter=converter)
        return models.ResNetImageClassifier(backbone=backbone, num_classes=2,
                                            preprocessor=preprocessor)
    # GPT-2 base's backbone; a small tokenizer (its files weigh nothing beside the weights).
    vocabulary, merges = testing.byte_pair_vocabulary()
    tokenizer = models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges)
    backbone = models.GPT2Backbone(vocabulary_size=50257, num_layers=12, num_heads=12,
                                   hidden_dim=768, intermediate_dim=3072,
                                   max_sequence_length=1024)
    preprocessor = models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=128)
    return models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def row(name, repeats, root):
    from kerastune_lab import models
    from kerastune_lab.atomic import SUMS_FILE, atomic_path
    from kerastune_lab.runs import MODEL_DIR, RunDir

    task = build(name)
    task_cls = type(task)
    run = RunDir.create(os.path.join(root, name), kind="image_classifier")
    run.write_json("config.json", {"recipe": "bench", "config": {}})
    old = os.path.join(root, name + "-old")
    os.makedirs(old)
    shutil.copy(run.config_path, os.path.join(old, "config.json"))

    def save_old():
        with atomic_path(os.path.join(old, MODEL_DIR)) as tmp:
            task.save_to_preset(tmp)

    save = {"with": [], "without": []}
    for _ in range(repeats):
        save["without"].append(timed(save_old))
        save["with"].append(timed(lambda: run.save_model(task)))
    assert os.path.isfile(os.path.join(run.model_path, SUMS_FILE))
    assert not os.path.exists(os.path.join(old, MODEL_DIR, SUMS_FILE))
    old_run = RunDir.open(old)
    load = {"with": [], "without": []}
    check = []
    for _ in range(repeats):
        load["without"].append(timed(lambda: models.load_run_model(old_run, task_cls)))
        load["with"].append(timed(lambda: models.load_run_model(run, task_cls)))
        check.append(timed(lambda: models.check_weights(run.path)))
    size = folder_bytes(run.model_path)
    med = {k: {w: statistics.median(v) for w, v in d.items()}
           for k, d in (("save", save), ("load", load))}
    return {"model": name, "params": task.count_params(), "mb": size / 1e6,
            "save_with": med["save"]["with"], "save_without": med["save"]["without"],
            "load_with": med["load"]["with"], "load_without": med["load"]["without"],
            "check": statistics.median(check),
            "hash_mb_s": size / 1e6 / statistics.median(check)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "gpt2"],
                        choices=["resnet50", "gpt2"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    import keras

    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs, median of {args.repeats}")
    print("| model | params | model/ MB | save: with SHA256SUMS | save: without | "
          "load: with (check) | load: without | check_weights alone | hash MB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    root = tempfile.mkdtemp(prefix="kt-bench-load-")
    try:
        for name in args.models:
            r = row(name, args.repeats, root)
            print(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['mb']:.0f} | "
                  f"{r['save_with']:.2f} s | {r['save_without']:.2f} s "
                  f"(+{r['save_with'] - r['save_without']:.2f}) | "
                  f"{r['load_with']:.2f} s | {r['load_without']:.2f} s "
                  f"(+{r['load_with'] - r['load_without']:.2f}) | {r['check']:.2f} s | "
                  f"{r['hash_mb_s']:.0f} |", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
