"""Images/s of the training input at 224x224 JPEG, first epoch and later
epochs, with and without augmentation, beside the model's own images/s on
the same batches.

    python benchmarks/input_pipeline.py [--backend jax] [--images 2000] [--epochs 4]
        [--model resnet50|tiny] [--model-steps 3] [--model-batch 2] [--data FOLDER]

The input is `images.load_image_data` on a class-folder tree of JPEGs (by
default generated once: `--images` files of 300-500 x 250-375 pixels, the
size of TFDS cats_vs_dogs photos, with smooth shapes rather than noise, so
that they compress and decode like photos), iterated as the recipes'
training stream. The first epoch reads, decodes and resizes every file and
keeps it (`data/cache.py`); later epochs copy the kept images into batches,
and augment them where the recipes put the augmentation
(`augment.choose_where`): on a CPU in the input pipeline
(`images.augmentation()`: flip, rotation 0.1, zoom 0.1), on a GPU/TPU in
the training model. So two later-epoch rates are printed, each named: with
the augmentation in the pipeline (what a CPU run's input does), and without
(what a GPU/TPU run's input does; its augmentation is then part of the
model's rate). Each input rate is the pipeline alone (no model), in the
same process. Beside them: the same augmentation as Keras layers alone
(`images.augmentation_layers()`) as Keras compiles a predict step
(`predict_on_batch` of a model of the layers, in training mode: XLA on JAX,
a tf.function on TensorFlow, eager on torch), on this CPU; and the model,
a ResNet-50-shaped KerasHub `ResNetImageClassifier` built from config with
random weights and an ImageNet-style image converter (`--model tiny`: the
tests' tiny one), trained through `augment.Augmented`, one step a batch of
`--model-batch` of the same images, with the augmentation layers in the
step and without them, on this machine's CPU (with 2 the whole run peaked
at 4.0 GB resident on JAX, with 8 at 6.0 GB, for about the same images/s).
The end-to-end rate of a whole recipe run, augmentation included, is
`benchmarks/overhead.py --size 224`.

The device rates a pipeline must keep up with are issue 16's figures, not
measured here: a T4 trains ResNet-50 at about 300-400 images/s in mixed
precision; an H100 at 4,155 images/s (plain KerasHub on JAX).

The machine is shared: figures measured while other processes run are
lower. The load average at the start and end is printed.
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

T4 = (300, 400)  # issue 16: ResNet-50 images/s on a T4, mixed precision
H100 = 4155  # issue 16: measured with plain KerasHub on JAX
# How Keras runs a predict step, per backend (the layers alone).
COMPILED = {"jax": "jitted (XLA)", "tensorflow": "in a tf.function", "torch": "eager"}


def make_photos(root, count, seed=0):
    """Writes `count` JPEGs of photo size into root/{cat,dog}/, once."""
    import numpy as np
    from PIL import Image, ImageDraw

    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    for i in range(count):
        name = ("cat", "dog")[i % 2]
        os.makedirs(os.path.join(root, name), exist_ok=True)
        w, h = int(rng.integers(300, 500)), int(rng.integers(250, 375))
        yy, xx = np.mgrid[0:h, 0:w]
        channels = [np.sin(xx / rng.uniform(10, 60) + yy / rng.uniform(20, 90)) * 60 + 120 + c
                    for c in rng.uniform(-40, 40, 3)]
        pixels = np.stack(channels, -1) + rng.normal(0, 6, (h, w, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            draw.ellipse([x0, y0, x0 + int(rng.integers(20, 120)), y0 + int(rng.integers(20, 120))],
                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        image.save(os.path.join(root, name, f"{name}_{i:05d}.jpg"), quality=90)
    open(done, "w").close()
    return root


def rate(dataset, keep=0):
    """(images/s, the first `keep` batches) of one pass over `dataset`."""
    start, count, batches = time.perf_counter(), 0, []
    for x, y in dataset:
        count += int(x.shape[0])
        if len(batches) < keep:
            batches.append((x, y))
    return count / (time.perf_counter() - start), batches


def build_model(kind, image_size, seed=1, augmented=True):
    """(training model, what it is): the classifier inside `augment.Augmented`
    with the recipes' augmentation layers (none if not `augmented`), compiled."""
    import keras
    import keras_hub

    from kerastune_lab import testing
    from kerastune_lab.data import images
    from kerastune_lab.data.augment import Augmented

    if kind == "tiny":
        model = keras_hub.models.ImageClassifier.from_preset(testing.tiny_preset("resnet"),
                                                            num_classes=2)
        what = "the tests' tiny ResNet preset"
    else:
        backbone = keras_hub.models.ResNetBackbone(
            input_conv_filters=[64], input_conv_kernel_sizes=[7],
            stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
            stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
            image_shape=(image_size, image_size, 3))
        converter = keras_hub.layers.ResNetImageConverter(
            image_size=(image_size, image_size), scale=1 / 255.0)
        preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(converter)
        model = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=2,
                                                       preprocessor=preprocessor)
        what = "ResNet-50 shape from config, random weights, float32"
    trainer = Augmented(model, images.augmentation_layers(seed=seed) if augmented else [])
    trainer.compile(keras.optimizers.Adam(1e-4),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return trainer, what


def model_rate(model, batches, steps, batch_size):
    """Images/s of train steps on `batch_size` images of each of `batches`
    (one warm-up step first, which compiles)."""
    import numpy as np

    arrays = [(np.asarray(x)[:batch_size], np.asarray(y)[:batch_size])
              for x, y in batches[:steps + 1]]
    model.train_on_batch(*arrays[0])  # compiles
    start = time.perf_counter()
    for x, y in arrays[1:steps + 1]:
        model.train_on_batch(x, y)
    return sum(len(x) for x, _ in arrays[1:steps + 1]) / (time.perf_counter() - start)


def augmentation_rate(layers, batches, count=4, repeats=2):
    """Images/s of Keras augmentation `layers` alone, in training mode, as
    `augment.Augmented` runs them (on torch: rotation and zoom batched), a
    compiled predict step (jitted on JAX, a tf.function on TensorFlow) on
    this machine's CPU; the best of `repeats` passes over `count` of
    `batches`, after one batch that compiles."""
    import keras
    import numpy as np

    class Augment(keras.Model):
        def __init__(self):
            super().__init__()
            self.augmentation = list(layers)

        def call(self, images, training=False):
            from kerastune_lab.data import torch_affine

            with torch_affine.batched():  # as `Augmented` runs them (torch: batched)
                for layer in self.augmentation:
                    images = layer(images, training=True)
            return images

    augment = Augment()
    arrays = [np.asarray(x) for x, _ in batches if len(x) == len(batches[0][0])][:count + 1]
    augment.predict_on_batch(arrays[0])  # compiles
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for x in arrays[1:]:
            augment.predict_on_batch(x)
        best = max(best, sum(map(len, arrays[1:])) / (time.perf_counter() - start))
    return best


def covers(images_per_s):
    if images_per_s >= H100:
        return f"keeps up with an H100 ({H100:,} images/s, issue 16)"
    if images_per_s >= T4[1]:
        return (f"keeps up with a T4 ({T4[0]}-{T4[1]} images/s, issue 16), not an H100 "
                f"({H100:,}): {images_per_s / H100:.2f} of it")
    if images_per_s >= T4[0]:
        return f"within a T4's {T4[0]}-{T4[1]} images/s (issue 16): a T4 may wait for it"
    return f"below a T4 ({T4[0]}-{T4[1]} images/s, issue 16)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--images", type=int, default=2000, help="JPEG files to generate")
    parser.add_argument("--data", default=None, help="a class-folder tree instead")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="input epochs timed")
    parser.add_argument("--model", choices=("resnet50", "tiny"), default="resnet50")
    parser.add_argument("--model-steps", type=int, default=3,
                        help="timed train steps after one to compile")
    parser.add_argument("--model-batch", type=int, default=2,
                        help="images a train step (a CPU's images/s barely depends on it)")
    parser.add_argument("--cache", default="auto", help="auto, memory, file or none")
    args = parser.parse_args()

    from kerastune_lab import backend

    name = backend.use_backend(args.backend)
    import keras

    from kerastune_lab.data import images

    load_start = os.getloadavg()[0]
    work = os.path.join(tempfile.gettempdir(), "kerastune-bench-input")
    os.environ.setdefault("KERASTUNE_CACHE", os.path.join(work, "cache"))
    data_dir = args.data or make_photos(os.path.join(work, f"photos-{args.images}"),
                                        args.images)
    # As a GPU/TPU run loads it: no augmentation in the input pipeline.
    data = images.load_image_data(data_dir, args.size, args.batch_size, val_split=0.1,
                                  seed=1, cache=args.cache)
    stream = data.train_stream
    first, batches = rate(stream.epoch(0), keep=max(args.model_steps + 1, 5))
    later = [rate(stream.epoch(e))[0] for e in range(1, args.epochs)]
    plain_ips = statistics.median(later) if later else float("nan")
    # As a CPU run loads it: the same kept images, augmented per batch.
    on_cpu = copy.copy(stream)
    on_cpu.augment = images.augmentation()  # flip, rotation 0.1, zoom 0.1, as the recipes
    in_pipeline = statistics.median(rate(on_cpu.epoch(e))[0]
                                    for e in range(args.epochs, args.epochs + 2))
    layers = images.augmentation_layers(seed=1)
    in_model = augmentation_rate(layers, batches)
    model, what = build_model(args.model, args.size)
    model_ips = model_rate(model, batches, args.model_steps, args.model_batch)
    bare, _ = build_model(args.model, args.size, augmented=False)
    bare_ips = model_rate(bare, batches, args.model_steps, args.model_batch)

    cache = getattr(stream, "cache", None)
    size = f"{args.size}x{args.size}"
    print(f"backend {name}, keras {keras.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (shared machine: "
          "other processes lower these figures)")
    print(f"{data.num_train} training JPEGs from {data_dir}, {size}, batch "
          f"{args.batch_size}, cache {cache.where if cache else 'none'}")
    print(f"input alone, first epoch (read, decode, resize, keep; no augmentation): "
          f"{first:.0f} images/s")
    print(f"input alone, later epochs, augmentation in the pipeline (a CPU run's input): "
          f"{in_pipeline:.0f} images/s; {covers(in_pipeline)}")
    print(f"input alone, later epochs, no augmentation (a GPU/TPU run's input; the "
          f"augmentation runs in the model): {plain_ips:.0f} images/s; {covers(plain_ips)}")
    print(f"augmentation as Keras layers alone, {COMPILED.get(name, 'compiled')}, this CPU "
          f"({', '.join(type(x).__name__ for x in layers)}): {in_model:.0f} images/s")
    print(f"model ({what}), train step, this CPU, batch {args.model_batch}: "
          f"{bare_ips:.1f} images/s without augmentation, {model_ips:.1f} with the "
          "augmentation layers in the step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
