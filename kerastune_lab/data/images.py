"""Image data: a folder of class subfolders, or a TFDS dataset, as tf.data.

    data=path/to/dir        dir/<class>/*.jpg|png|bmp|gif (one subfolder a class)
    data=tfds:cats_vs_dogs  any TFDS image-classification dataset

    data = load_image_data("path/to/pets", image_size=224, batch_size=32,
                           augment=augmentation())
    model.fit(data.train, validation_data=data.val, epochs=3)     # plain Keras
    fit_resumable(model, data.train_stream, 3, backup=backup)     # resumable mid-epoch

Files that are not images, or images that cannot be read, are skipped with a
warning that counts them. Keras' `image_dataset_from_directory` does neither
(it fails on the first bad file) and cannot split stratified, hence this
module. Images are decoded and resized once and then kept (`cache.py`:
memory when they fit, else a file), so later epochs only copy them. Random
augmentation runs per batch in the input pipeline (`augment=augmentation()`:
the recipes on a CPU, and a plain `fit` on the task), or inside the training
model (`augmentation().layers()`, `augment.Augmented`: the recipes on a GPU
or TPU; `augment.choose_where`). Every dataset has a known number of batches.
"""

import dataclasses
import logging
import os

import numpy as np

from kerastune_lab.data import tfds_builder, tfds_load
from kerastune_lab.data.cache import ImageCache, decoded, file_fingerprint, fingerprint
from kerastune_lab.data.stream import Stream
from kerastune_lab.errors import KerastuneError

log = logging.getLogger("kerastune_lab")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass
class ImageData:
    """Training and validation pipelines with what describes them.

    `train` and `val` are what `model.fit(data.train, validation_data=data.val)`
    takes: tf.data.Datasets of (float32 images 0-255, int32 labels) batches,
    with a known number of batches; `train` is shuffled anew each epoch (and
    augmented, given `augment=`). `train_stream` is the same training data as a resumable
    `stream.Stream` (epoch e a function of (seed, e)), for
    `training.fit_resumable`.
    """

    train: object
    val: object
    class_names: list
    num_train: int
    num_val: int
    skipped: dict = dataclasses.field(default_factory=dict)
    train_stream: object = None


def _readable(path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:
        return False


def scan_image_folder(root, require_all_classes=True):
    """Lists the images of a folder with one subfolder per class.

    Args:
        root: str. The folder.
        require_all_classes: bool. Every class subfolder must hold a readable
            image (at least 2 classes). False allows empty classes (a test
            split may hold one class); a folder with no image at all is
            still an error. Defaults to True.

    Returns:
        (paths, labels, class_names, skipped): labels index `class_names`
        (sorted subfolder names); `skipped` counts `not_image` and
        `unreadable` files.
    """
    root = os.path.expanduser(os.fspath(root))
    if not os.path.exists(root):
        raise KerastuneError(f"data folder {root!r} does not exist")
    if not os.path.isdir(root):
        raise KerastuneError(
            f"data {root!r} is not a folder: expected a folder with one "
            "subfolder per class"
        )
    class_names = sorted(
        d for d in os.listdir(root)
        if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )
    paths, labels = [], []
    skipped = {"not_image": 0, "unreadable": 0}
    examples = []
    for index, name in enumerate(class_names):
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, name))):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = os.path.join(dirpath, filename)
                if filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
                    skipped["not_image"] += 1
                    examples.append(path)
                elif not _readable(path):
                    skipped["unreadable"] += 1
                    examples.append(path)
                else:
                    paths.append(path)
                    labels.append(index)
    if sum(skipped.values()):
        log.warning(
            "skipped %d file(s) in %s: %d not an image, %d unreadable (e.g. %s)",
            sum(skipped.values()), root, skipped["not_image"],
            skipped["unreadable"], examples[0],
        )
    found = sorted({class_names[i] for i in labels})
    if not paths:
        raise KerastuneError(
            f"data folder {root!r} holds no readable image: expected "
            f"<class>/*{'|'.join(IMAGE_EXTENSIONS)} subfolders"
        )
    if not require_all_classes:
        return paths, labels, class_names, skipped
    if len(found) < 2:
        raise KerastuneError(
            f"data folder {root!r} has images of one class only ({found[0]!r}): "
            "expected at least 2 class subfolders"
        )
    empty = [n for n in class_names if n not in found]
    if empty:
        raise KerastuneError(
            f"data folder {root!r}: class subfolder(s) {', '.join(empty)} hold "
            "no readable image"
        )
    return paths, labels, class_names, skipped


def check_splittable(labels, class_names, root, val_split):
    """Raises a one-line `KerastuneError` when a class has fewer than 2
    images: one cannot be both trained on and held out for validation."""
    counts = np.bincount(np.asarray(labels, "int64"), minlength=len(class_names))
    few = [(name, int(n)) for name, n in zip(class_names, counts) if 0 < n < 2]
    if few:
        name, n = few[0]
        raise KerastuneError(
            f"data folder {root!r}: class {name!r} has {n} image: expected at least 2 per "
            f"class, one to train on and one to hold out (val_split={val_split:g})")


def stratified_split(labels, fraction, seed):
    """Returns (train_indices, val_indices), `fraction` of each class to val."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_val = int(round(len(idx) * fraction))
        n_val = min(max(n_val, 1), len(idx) - 1) if fraction > 0 and len(idx) > 1 else 0
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return sorted(train), sorted(val)


def decode_image(contents, image_size):
    """Decodes JPEG/PNG/BMP/GIF bytes (grayscale, RGB, RGBA, 8 or 16 bit) to
    a float32 (size, size, 3) tensor with values in 0-255, rounded to whole
    values (those `decode_uint8` gives, which the cache keeps)."""
    import tensorflow as tf

    return tf.cast(decode_uint8(contents, image_size), tf.float32)


def decode_uint8(contents, image_size):
    """`decode_image` as uint8: decoded, resized (bilinear), rounded."""
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image = tf.image.resize(image, (image_size, image_size))
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def augmentation(flip="horizontal", rotation=0.1, zoom=0.1, contrast=0.0):
    """Random augmentation for the training data (an `augment.Augmentation`;
    see there for the arguments): a loader's `augment=` applies it per batch
    in the input pipeline; `.layers(seed)` gives the same as Keras layers,
    to run inside the training model (`augment.Augmented`). The recipes put
    it where it is cheapest (`augment.choose_where`)."""
    from kerastune_lab.data.augment import Augmentation

    return Augmentation(flip, rotation, zoom, contrast)


def augmentation_layers(flip="horizontal", rotation=0.1, zoom=0.1, contrast=0.0, seed=None):
    """Keras random-augmentation layers, to run the augmentation inside a
    model (`augment.Augmented(model, layers)`): `augmentation(...).layers(seed)`
    (see `augment.Augmentation.layers`)."""
    return augmentation(flip, rotation, zoom, contrast).layers(seed)


def pipeline(ds, batch_size):
    """Batches a dataset of (image, label), uint8 images cast to float32
    after batching, and prefetches; the number of batches stays known."""
    import tensorflow as tf

    ds = ds.batch(batch_size)
    if ds.element_spec[0].dtype == tf.uint8:
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def index_dataset(sources, labels):
    """A tf.data.Dataset of (int64 index, source, int32 label), not decoded."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(
        (np.arange(len(labels), dtype="int64"), sources, np.asarray(labels, "int32")))


def exactly(ds, count):
    """`ds` made exactly `count` elements long, with that cardinality: an
    element dropped (a file that failed to decode) is made up for by
    repeating from the start."""
    import tensorflow as tf

    ds = ds.repeat().take(count)
    return ds.apply(tf.data.experimental.assert_cardinality(count))


def files_dataset(paths, labels, image_size, cache=None):
    """A tf.data.Dataset of (uint8 image, label) decoded from files, in order,
    exactly `len(paths)` of them (see `exactly`), optionally kept in `cache`."""
    decode = lambda contents: decode_uint8(contents, image_size)  # noqa: E731
    return exactly(decoded(index_dataset(list(paths), labels), decode, _read_file, cache),
                   len(paths))


def _read_file(path):
    import tensorflow as tf

    return tf.io.read_file(path)


def _cache(mode, count, image_size, key):
    return ImageCache.create(count, image_size, key, mode=mode)


def train_stream(paths, labels, image_size, batch_size, seed=0, augment=(), cache="auto"):
    """The training images as a resumable `Stream`: shuffled (paths, cheaply)
    and augmented as a function of (seed, epoch), decoded after shuffling,
    and kept decoded (`cache`: "auto", "memory", "file" or "none")."""
    store = _cache(cache, len(paths), image_size, file_fingerprint(paths, image_size))
    decode = lambda contents: decode_uint8(contents, image_size)  # noqa: E731
    stream = Stream(index_dataset(list(paths), labels), len(paths), batch_size, seed,
                    prepare=lambda ds: decoded(ds, decode, _read_file, store), augment=augment)
    stream.cache = store
    return stream


def load_image_folder(root, image_size, batch_size, val_split=0.2, seed=0, augment=(),
                      cache="auto"):
    """Loads a class-subfolder tree with a stratified validation split."""
    paths, labels, class_names, skipped = scan_image_folder(root)
    if not 0 < val_split < 1:
        raise KerastuneError(f"val_split={val_split}: expected a fraction between 0 and 1")
    check_splittable(labels, class_names, os.path.expanduser(os.fspath(root)), val_split)
    train_idx, val_idx = stratified_split(labels, val_split, seed)
    take = lambda idx: ([paths[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    val_paths, _ = take(val_idx)
    val_cache = _cache(cache, len(val_idx), image_size, file_fingerprint(val_paths, image_size))
    stream = train_stream(*take(train_idx), image_size, batch_size, seed, augment, cache)
    return ImageData(
        train=stream.as_dataset(),
        val=pipeline(files_dataset(*take(val_idx), image_size, val_cache), batch_size),
        class_names=class_names,
        num_train=len(train_idx),
        num_val=len(val_idx),
        skipped=skipped,
        train_stream=stream,
    )


def load_tfds(name, image_size, batch_size, val_split=0.2, seed=0, augment=(), data_dir=None,
              cache="auto"):
    """Loads a TFDS image-classification dataset (`tfds:NAME`, downloads once)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir)
    info = builder.info
    if "label" not in info.features or not hasattr(info.features["label"], "names"):
        raise KerastuneError(f"TFDS dataset {name!r} has no class 'label' feature")
    class_names = list(info.features["label"].names)
    if "validation" in info.splits:
        splits = ["train", "validation"]
    else:
        cut = int(round(100 * (1 - val_split)))
        splits = [f"train[:{cut}%]", f"train[{cut}%:]"]
    image_key = (info.supervised_keys or ("image",))[0]
    # Files in a fixed order: the training stream shuffles them per epoch.
    # The images stay encoded (a few kB each in the shuffle buffer) and are
    # decoded once, into the cache.
    train, val = tfds_load(builder, splits, data_dir, as_supervised=True, shuffle_files=False,
                           decoders={image_key: tfds.decode.SkipDecoding()})
    num_train = int(train.cardinality())
    num_val = int(val.cardinality())
    decode = lambda contents: decode_uint8(contents, image_size)  # noqa: E731

    def indexed(ds, split, count):
        key = fingerprint("tfds", name, str(builder.version), split, image_size, data_dir)
        store = _cache(cache, count, image_size, key)
        ds = ds.enumerate().map(lambda i, example: (i, example[0], tf.cast(example[1], tf.int32)))
        return ds, (lambda d: decoded(d, decode, None, store))

    train, prepare = indexed(train, splits[0], num_train)
    val, prepare_val = indexed(val, splits[1], num_val)
    stream = Stream(train, num_train, batch_size, seed, augment=augment, shuffle_buffer=1024,
                    prepare=prepare)
    return ImageData(
        train=stream.as_dataset(),
        val=pipeline(exactly(prepare_val(val), num_val), batch_size),
        class_names=class_names,
        num_train=num_train,
        num_val=num_val,
        train_stream=stream,
    )


def load_image_data(data, image_size, batch_size, val_split=0.2, seed=0, augment=(),
                    cache="auto"):
    """Loads `data`: 'tfds:NAME' or a folder of class subfolders.

    Returns an `ImageData`: `model.fit(data.train, validation_data=data.val,
    epochs=3)` trains on it as on any Keras dataset; `data.train_stream` is
    the resumable form. `augment` is an `augmentation()` (or Keras layers);
    `cache` is "auto" (decoded images in memory when they fit, else in a
    file under `$KERASTUNE_CACHE/images`), "memory", "file" or "none".
    """
    if data.startswith(TFDS_PREFIX):
        return load_tfds(data[len(TFDS_PREFIX):], image_size, batch_size, val_split, seed,
                         augment, cache=cache)
    return load_image_folder(data, image_size, batch_size, val_split, seed, augment, cache)


def load_images(paths, image_size):
    """Reads image files for prediction into a float32 (n, size, size, 3) array."""
    import tensorflow as tf

    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
        raise KerastuneError(f"image_size={image_size!r}: expected a whole number of pixels")
    images = []
    for path in paths:
        if not os.path.isfile(path):
            raise KerastuneError(f"image {path!r} does not exist")
        with open(path, "rb") as f:
            contents = f.read()
        try:
            images.append(decode_image(tf.constant(contents), image_size).numpy())
        except (tf.errors.InvalidArgumentError, ValueError):
            raise KerastuneError(
                f"image {path!r} cannot be read: expected a JPEG, PNG, BMP or GIF file"
            ) from None
    return np.stack(images)
