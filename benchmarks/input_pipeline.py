"""Images/s of the training input at 224x224 JPEG, first epoch and later
epochs, beside the model's own images/s on the same batches.

    python benchmarks/input_pipeline.py [--backend jax] [--images 2000] [--epochs 4]
        [--model resnet50|tiny] [--model-steps 1] [--data FOLDER]

The input is `images.load_image_data` on a class-folder tree of JPEGs (by
default generated once: `--images` files of 300-500 x 250-375 pixels, the
size of TFDS cats_vs_dogs photos, with smooth shapes rather than noise, so
that they compress and decode like photos), iterated as the recipes'
training stream, with the recipes' per-batch augmentation
(`images.augmentation()`: flip, rotation 0.1, zoom 0.1). The first epoch
reads, decodes and resizes every file and keeps it (`data/cache.py`); later
epochs copy the kept images. Each input rate is the pipeline alone (no
model), in the same process. The model is a ResNet-50-shaped KerasHub
`ResNetImageClassifier` built from config with random weights (`--model
tiny`: the tests' tiny one), one train step a batch of the same images, on
this machine's CPU.

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


def rate(dataset):
    """(images/s, batches) of one pass over `dataset`."""
    start, count, batches = time.perf_counter(), 0, []
    for x, y in dataset:
        count += int(x.shape[0])
        batches.append((x, y))
    return count / (time.perf_counter() - start), batches


def build_model(kind, image_size):
    import keras
    import keras_hub

    from kerastune_lab import testing

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
        model = keras_hub.models.ResNetImageClassifier(backbone=backbone, num_classes=2,
                                                       preprocessor=None)
        what = "ResNet-50 shape from config, random weights, float32"
    model.compile(keras.optimizers.Adam(1e-4),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, what


def model_rate(model, batches, steps):
    """Images/s of train steps on `batches` (one warm-up step first)."""
    import numpy as np

    arrays = [(np.asarray(x), np.asarray(y)) for x, y in batches[:steps + 1]]
    model.train_on_batch(*arrays[0])  # compiles
    start = time.perf_counter()
    for x, y in arrays[1:steps + 1]:
        model.train_on_batch(x, y)
    return sum(len(x) for x, _ in arrays[1:steps + 1]) / (time.perf_counter() - start)


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
    parser.add_argument("--model-steps", type=int, default=1,
                        help="timed train steps after one to compile")
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
    augment = images.augmentation()  # what the recipes use: flip, rotation 0.1, zoom 0.1
    data = images.load_image_data(data_dir, args.size, args.batch_size, val_split=0.1,
                                  seed=1, augment=augment, cache=args.cache)
    stream = data.train_stream
    first, batches = rate(stream.epoch(0))
    later = [rate(stream.epoch(e))[0] for e in range(1, args.epochs)]
    # The same kept images without augmentation, and with a cheaper one.
    plain = copy.copy(stream)
    plain.augment = ()
    bare = rate(plain.epoch(args.epochs))[0]
    cheap = copy.copy(stream)
    cheap.augment = images.augmentation(rotation=0)
    no_rotation = rate(cheap.epoch(args.epochs))[0]
    model, what = build_model(args.model, args.size)
    model_ips = model_rate(model, batches, args.model_steps)
    later_ips = statistics.median(later) if later else float("nan")

    cache = getattr(stream, "cache", None)
    print(f"backend {name}, keras {keras.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (shared machine: "
          "other processes lower these figures)")
    print(f"{data.num_train} training JPEGs from {data_dir}, {args.size}x{args.size}, batch "
          f"{args.batch_size}, augmentation {augment}, cache {cache.where if cache else 'none'}")
    print(f"model ({what}), train step: {model_ips:.1f} images/s")
    print(f"later epochs, no augmentation: {bare:.0f} images/s; flip+zoom only: "
          f"{no_rotation:.0f} images/s")
    print(f"later epochs {covers(later_ips)}")
    print(f"first epoch: {first:.0f} images/s at {args.size}x{args.size}")
    print(f"later epochs: {later_ips:.0f} images/s at {args.size}x{args.size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
