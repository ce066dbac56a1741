"""What the recipe runner costs over a plain `model.fit` doing the same
augmentation, and how fast training is end to end beside the model alone.

    python benchmarks/overhead.py --backend jax [--epochs 6] [--images 256] [--size 64]
        [--augment-on auto|model|pipeline] [--model tiny|resnet50]

Trains the same ResNet preset on the same generated image folder, in one
process: the tiny test preset (a few thousand weights: the model is so fast
that the input pipeline bounds it), or `--model resnet50`, a preset of the
recipe's own `resnet_50_imagenet` shape (ResNet-50 v1, bottleneck blocks
3/4/6/3) with random weights, built here (no download: the speed of a step
does not depend on the weights' values):
1. through `kerastune run cats_vs_dogs` (in-process `run_recipe`, phase 2
   only): the augmentation where the recipe puts it (`augment_on`, "auto":
   in the tf.data pipeline on a CPU, in the training model on a GPU/TPU;
   the placement used is printed);
2. through a plain `model.fit` on the recipes' loader with the same
   augmentation (flip, rotation 0.1, zoom 0.1) per batch in the tf.data
   pipeline, as a Keras tutorial does;
3. the model alone: the model the runner compiles (`augment.Augmented`,
   the image converter inside the model, no random layers) fit on numpy
   arrays of the same batches (augmented once, kept), so that no input work
   is measured (the task's own `fit` would run its preprocessor in a
   tf.data map).
Each is timed per epoch from epoch 2 (epoch 1 compiles); an epoch includes
its validation pass in all three. "end to end" is the recipe runner's
training images/s (reading, augmentation, train step, validation), set
beside the model alone. Then the input pipeline alone (cached images,
augmented and batched, no model), in images/s.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resnet50_preset(path, size):
    """A preset folder of a ResNet-50 v1 image classifier (the shape of
    KerasHub's `resnet_50_imagenet`: 7x7 stem, bottleneck blocks 3/4/6/3,
    1000 classes) with random weights."""
    import keras_hub
    from keras_hub import models

    backbone = models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        use_pre_activation=False, image_shape=(None, None, 3))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(size, size), scale=1 / 255.0)
    preprocessor = models.ResNetImageClassifierPreprocessor(image_converter=converter)
    models.ResNetImageClassifier(backbone=backbone, num_classes=1000,
                                 preprocessor=preprocessor).save_to_preset(path)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=256, help="per class")
    parser.add_argument("--size", type=int, default=64, help="image side, pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment-on", default="auto", choices=("auto", "model", "pipeline"))
    parser.add_argument("--model", default="tiny", choices=("tiny", "resnet50"))
    args = parser.parse_args()

    from kerastune_lab import backend

    name = backend.use_backend(args.backend)
    import keras
    import numpy as np

    from kerastune_lab import testing
    from kerastune_lab.data import images
    from kerastune_lab.models import load_image_classifier
    from kerastune_lab.recipe import run_recipe
    from kerastune_lab.runs import read_csv

    work = tempfile.mkdtemp(prefix="kerastune-bench-")
    os.environ.setdefault("KERASTUNE_CACHE", os.path.join(work, "cache"))
    data_dir = testing.make_image_folder(os.path.join(work, "data"), ("cat", "dog"),
                                         per_class=args.images, size=args.size)
    preset = (testing.tiny_preset("resnet") if args.model == "tiny"
              else resnet50_preset(os.path.join(work, "resnet50"), args.size))
    common = dict(image_size=args.size, batch_size=args.batch_size, val_split=0.2, seed=1)

    # 1. Through the recipe runner (phase 2 only, so both sides train the same way).
    overrides = [f"preset={preset}", f"data={data_dir}", f"image_size={args.size}",
                 f"batch_size={args.batch_size}", "head_epochs=0", f"epochs={args.epochs}",
                 "learning_rate=1e-4", "seed=1", f"augment_on={args.augment_on}"]
    start = time.perf_counter()
    run = run_recipe(os.path.join(ROOT, "recipes", "cats_vs_dogs.py"), overrides=overrides,
                     output_dir=os.path.join(work, "run"))
    runner_wall = time.perf_counter() - start
    runner_epochs = [r["seconds"] for r in read_csv(run.file("history.csv"))]
    placed = run.read_json("config.json")["augment_on"]

    # 2. Plain model.fit on the same data pipeline and model.
    from kerastune_lab.finetune.two_phase import compile_classifier, set_backbone_trainable

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._t)

    keras.utils.set_random_seed(1)
    start = time.perf_counter()
    augment = images.augmentation("horizontal", 0.1, 0.1)
    data = images.load_image_folder(data_dir, augment=augment, **common)
    model = load_image_classifier(preset, num_classes=2)
    set_backbone_trainable(model, True)
    compile_classifier(model, 1e-4)
    timer = EpochTimer()
    model.fit(data.train, validation_data=data.val, epochs=args.epochs, callbacks=[timer],
              verbose=0)
    plain_wall = time.perf_counter() - start

    steps = -(-data.num_train // args.batch_size)
    runner_sps = steps / statistics.median(runner_epochs[1:])
    plain_sps = steps / statistics.median(timer.times[1:])

    # 3. Input pipeline alone (the images are cached by now), then the model
    # alone on the same batches in memory, with the same validation batches.
    start = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in data.train)
    pipeline_ips = n / (time.perf_counter() - start)

    def in_memory(ds):
        batches = [(np.asarray(x), np.asarray(y)) for x, y in ds]
        return (np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]))

    # The model the runner compiles (`augment.Augmented`: the image converter
    # inside the model) with no random layers, on numpy arrays: a KerasHub
    # task's own `fit` would run its preprocessor in a tf.data map, input work.
    from kerastune_lab.data.augment import Augmented

    xs, ys = in_memory(data.train)
    val = in_memory(data.val)
    trainer = Augmented(model, [])
    compile_classifier(trainer, 1e-4)
    alone = EpochTimer()
    trainer.fit(xs, ys, batch_size=args.batch_size, validation_data=val, epochs=args.epochs,
                callbacks=[alone], verbose=0, shuffle=False)
    model_sps = steps / statistics.median(alone.times[1:])
    images_per_step = data.num_train / steps

    print(f"model {args.model}; backend {name}, keras {keras.__version__}, "
          f"{data.num_train} train images "
          f"{args.size}x{args.size}, batch {args.batch_size}, {args.epochs} epochs, "
          f"{os.cpu_count()} CPU cores")
    print(f"recipe runner: augmentation in the "
          f"{'training model' if placed == 'model' else 'input pipeline'} "
          f"(augment_on={args.augment_on} -> {placed}); plain fit: in the input pipeline")
    print(f"{'':30}{'recipe runner':>15}{'plain fit':>12}{'runner/plain':>14}")
    print(f"{'train steps/s (epochs 2..)':30}{runner_sps:15.2f}{plain_sps:12.2f}"
          f"{runner_sps / plain_sps:14.3f}")
    print(f"{'wall seconds, whole run':30}{runner_wall:15.1f}{plain_wall:12.1f}"
          f"{runner_wall / plain_wall:14.3f}")
    print(f"{'':30}{'end to end':>15}{'model alone':>12}{'end/alone':>14}")
    print(f"{'train images/s (epochs 2..)':30}{runner_sps * images_per_step:15.0f}"
          f"{model_sps * images_per_step:12.0f}{runner_sps / model_sps:14.3f}")
    print(f"input pipeline alone (cached, augment, batch): {pipeline_ips:8.0f} images/s")
    if pipeline_ips < model_sps * images_per_step:
        print("the input pipeline is slower than the model: it bounds training speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
