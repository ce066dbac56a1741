"""Random image augmentation, where it is cheapest for the device the run is
on: inside the training model on a GPU or TPU (`Augmented`), per batch in
the input pipeline on a CPU (`Augmentation`). `choose_where` decides, in
one place; a recipe's `augment_on` key ("auto", "model", "pipeline")
overrides it, and `placement` records the choice in config.json.

    augmentation = Augmentation(flip="horizontal", rotation=0.1, zoom=0.1)
    where = placement(config.augment_on, run)          # "model" or "pipeline"
    data = images.load_image_data(..., augment=augmentation if where == "pipeline" else ())
    trainer = Augmented(model, augmentation.layers(seed=1) if where == "model" else [])
    two_phase.fine_tune(trainer, data.train_stream, data.val, ...)   # or compile + fit
    run.save_model(model)                    # the classifier itself: no augmentation in it

    # In the input pipeline by hand (a plain `model.fit` on the task):
    images = augmentation(images, key)  # (batch, h, w, 3) uint8/float32 -> float32; key: int64 (2,)

Why inside the model on an accelerator: a 2-core input pipeline cannot
rotate and zoom 224x224 images as fast as a GPU trains on them
(`benchmarks/input_pipeline.py` measures both). In the training model the
augmentation is compiled with the train step (XLA on JAX, `tf.function` on
TensorFlow) and runs on the accelerator, so from the second epoch the input
only copies cached images into batches. Why not on a CPU: there the model
and the augmentation share the same cores, and Keras' random layers
resample the image once per layer inside the train step, in line with it;
`Augmentation` in the pipeline resamples once for all of them, in tf.data's
threads, beside the step (`benchmarks/overhead.py` compares the recipe
runner with a plain `fit` that augments in tf.data; docs/benchmarks.md).

Why a separate training model rather than layers inside the KerasHub
classifier: the classifier stays a plain KerasHub preset (saved, loaded,
predicted with and exported as before, by KerasHub alone, with no class of
this project), and Keras' random layers are only called in training. It
works the same on JAX, TensorFlow and torch; the layers' seed states are
variables of the training model, so a backup holds them and a resumed run
draws the augmentation of the run it continues. In the pipeline, a training
`Stream` augments batch i of epoch e with a key made of (seed, e, i), so a
resumed run sees the batches of the run it continues there too; a resumed
run keeps the placement it started with.

`Augmentation` (in the pipeline) is written here rather than taken from
Keras' `RandomFlip`, `RandomRotation` and `RandomZoom` layers because of
speed in a tf.data map on a CPU: the three layers resample the image once
each (`ImageProjectiveTransformV3`), while `Augmentation` resamples once for
all of them, and without a rotation crops and resizes each image with
`tf.image.resize`, a faster kernel than the projective transform. The
same key gives the same augmentation, on every backend. The distributions
are Keras': an angle uniform in +-`rotation` of a full turn, a zoom factor
uniform in 1 +- `zoom` (above 1 zooms out), the edges filled by reflection
(Keras' `fill_mode="reflect"`), a contrast factor uniform in 1 +-
`contrast` around each image's mean. A rotated uint8 image is resampled as
uint8 (values rounded down, within 1 of float).
"""

import logging
import math

import keras

from kerastune_lab.data import torch_affine
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import CONFIG

log = logging.getLogger("kerastune_lab")

FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")
WHERE = ("auto", "model", "pipeline")  # the values of a recipe's `augment_on` key


class Augmentation:
    """Random flip, rotation, zoom and contrast of a batch of images.

    Args:
        flip: str or None. "horizontal", "vertical", "horizontal_and_vertical"
            or None. Defaults to "horizontal".
        rotation: float. Largest rotation, as a fraction of a full turn.
            Defaults to 0.1.
        zoom: float. Largest zoom in or out, as a fraction of the size.
            Defaults to 0.1.
        contrast: float. Largest contrast change, as a fraction. Defaults to 0.
    """

    def __init__(self, flip="horizontal", rotation=0.1, zoom=0.1, contrast=0.0):
        if flip not in FLIPS + (None, ""):
            raise ValueError(f"flip={flip!r}: expected one of {FLIPS} or None")
        if not 0 <= rotation <= 1:
            raise ValueError(f"rotation={rotation}: expected a fraction of a turn, 0 to 1")
        if not 0 <= zoom < 1:
            raise ValueError(f"zoom={zoom}: expected a fraction >= 0 and < 1")
        if not 0 <= contrast <= 1:
            raise ValueError(f"contrast={contrast}: expected a fraction from 0 to 1")
        self.flip = flip or None
        self.rotation = float(rotation)
        self.zoom = float(zoom)
        self.contrast = float(contrast)

    def __repr__(self):
        return (f"Augmentation(flip={self.flip!r}, rotation={self.rotation}, "
                f"zoom={self.zoom}, contrast={self.contrast})")

    def __bool__(self):
        return bool(self.flip or self.rotation or self.zoom or self.contrast)

    def layers(self, seed=None):
        """The same augmentation as Keras random layers, to run inside a model
        (`Augmented(model, augmentation.layers(seed))`).

        The layers compute in float32 whatever the dtype policy (rotating in
        float16 would blur the sampling grid), fill the edges by reflection,
        and take values 0-255. They are identity at inference
        (`training=False`).

        Args:
            seed: int or None. Each layer gets a seed of its own from it (the
                same seed would draw the same numbers for the flip and the
                angle). None: from Keras' global seed.
        """
        made = []

        def add(cls, *args, **kwargs):
            own = None if seed is None else seed + 1009 * len(made)
            made.append(cls(*args, seed=own, dtype="float32", **kwargs))

        if self.flip:
            add(keras.layers.RandomFlip, self.flip)
        if self.rotation:
            add(keras.layers.RandomRotation, self.rotation, fill_mode="reflect")
        if self.zoom:
            add(keras.layers.RandomZoom, self.zoom, fill_mode="reflect")
        if self.contrast:
            add(keras.layers.RandomContrast, self.contrast, value_range=(0, 255))
        return made

    def __call__(self, images, key):
        """Augments `images` (batch, h, w, c; uint8 or float32, 0-255) with
        random numbers drawn from `key` (an int64 (2,) tensor); returns
        float32. uint8 images are resampled as uint8 (4 times less memory
        to move) and cast once, at the end of the geometric step."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images)
        n = tf.shape(images)[0]
        keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), 5)

        def uniform(index, low, high):
            return tf.random.stateless_uniform((n,), keys[index], low, high)

        flip_x = flip_y = None
        if self.flip in ("horizontal", "horizontal_and_vertical"):
            flip_x = tf.where(uniform(0, 0.0, 1.0) < 0.5, -1.0, 1.0)
        if self.flip in ("vertical", "horizontal_and_vertical"):
            flip_y = tf.where(uniform(1, 0.0, 1.0) < 0.5, -1.0, 1.0)
        if self.rotation or self.zoom:
            flip_x = tf.ones((n,)) if flip_x is None else flip_x
            flip_y = tf.ones((n,)) if flip_y is None else flip_y
        zoom = uniform(2, 1.0 - self.zoom, 1.0 + self.zoom) if self.zoom else tf.ones((n,))
        if self.rotation:
            angle = uniform(3, -2 * math.pi * self.rotation, 2 * math.pi * self.rotation)
            images = _affine(images, angle, zoom, flip_x, flip_y)
        elif self.zoom:
            images = _zoom_flip(images, zoom, self.zoom, flip_x, flip_y)
        elif self.flip:
            images = _flip(images, flip_x, flip_y)
        images = tf.cast(images, tf.float32)
        if self.contrast:
            factor = uniform(4, 1.0 - self.contrast, 1.0 + self.contrast)[:, None, None, None]
            mean = tf.reduce_mean(images, axis=(1, 2, 3), keepdims=True)
            images = tf.clip_by_value((images - mean) * factor + mean, 0.0, 255.0)
        return images


def choose_where(requested="auto", devices=None):
    """Where a run's augmentation goes, and why: ("model" or "pipeline", reason).

    "auto" is "model" (inside the training model, compiled with the train
    step) when the backend trains on a GPU, TPU or Apple GPU, and "pipeline"
    (tf.data, beside the step) on a CPU alone. "model" / "pipeline" is the
    user's choice, kept.

    Args:
        requested: "auto", "model" or "pipeline".
        devices: list of `backend.Device`, or None for `backend.accelerators()`.
    """
    if requested not in WHERE:
        raise KerastuneError(f"augment_on={requested!r}: expected one of {', '.join(WHERE)}")
    if requested != "auto":
        return requested, "set in the config"
    if devices is None:
        from kerastune_lab import backend

        devices = backend.accelerators()
    kinds = sorted({d.kind for d in devices} - {"cpu"})
    if kinds:
        return "model", f"auto: {' + '.join(kinds)}, in the compiled train step"
    return "pipeline", "auto: CPU only, in tf.data beside the train step"


def placement(requested, run):
    """`choose_where` for a recipe run: a resumed run keeps the placement it
    started with (its batches stay those of the run it continues); the
    choice goes into config.json ("augment_on") and the log.

    Args:
        requested: the config's `augment_on`.
        run: RunDir.

    Returns:
        "model" or "pipeline".
    """
    recorded = run.read_json(CONFIG).get("augment_on") if run.resumed else None
    if recorded in WHERE[1:]:
        where, why = recorded, "the placement the run started with"
    else:
        where, why = choose_where(requested)
    log.info("augmentation: in the %s (%s)",
             "training model" if where == "model" else "input pipeline", why)
    run.update_json(CONFIG, augment_on=where)
    return where


class Augmented(keras.Model):
    """A model that trains `model` on randomly augmented images.

    Calling it runs, inside one model that `fit` compiles with its train
    step: the images (float 0-255 or uint8) cast to float32, then the
    `augmentation` layers in training only, then `model`'s own image
    converter (`model.preprocessor.image_converter`: resize and rescale, as
    `model.predict` applies it), then `model`. It holds `model` itself, not
    a copy: training it trains `model`; `model` holds no augmentation, so
    save, predict with and export `model`, not this (a training device only).

    Args:
        model: a KerasHub image task (e.g. an `ImageClassifier`), or any
            Keras model taking float 0-255 images when it has no
            `preprocessor`.
        augmentation: list of Keras random preprocessing layers
            (`images.augmentation_layers(...)`), run in float32 whatever the
            dtype policy.

    `backbone` is `model.backbone`, so `two_phase.fine_tune` trains it as it
    trains `model`. The layers draw from their own seed states, variables of
    this model (not of `model`): a backup of it holds them.
    """

    def __init__(self, model, augmentation, **kwargs):
        kwargs.setdefault("dtype", model.dtype_policy)  # mixed_float16: loss scaling
        super().__init__(**kwargs)
        self.model = model
        self.augmentation = list(augmentation)
        preprocessor = getattr(model, "preprocessor", None)
        self.converter = getattr(preprocessor, "image_converter", None)

    @property
    def backbone(self):
        return self.model.backbone

    def build(self, input_shape):
        # No weights of its own; `model` is built, the layers have none.
        for layer in self.augmentation:
            layer.build(input_shape)
        self.built = True

    def call(self, images, training=False):
        images = keras.ops.cast(images, "float32")
        if training:
            # On torch, Keras' rotation and zoom resample the batch at once.
            with torch_affine.batched():
                for layer in self.augmentation:
                    images = layer(images, training=True)
        if self.converter is not None:
            images = self.converter(images)
        return self.model(images, training=training)


def _flip(images, flip_x, flip_y):
    """Flips each image whose factor is -1: one gather per axis, no copy of
    the unflipped images beside the flipped ones."""
    import tensorflow as tf

    for axis, flip in ((2, flip_x), (1, flip_y)):
        if flip is None:
            continue
        size = images.shape[axis]
        forward = tf.range(size)
        index = tf.where((flip < 0)[:, None], size - 1 - forward, forward)
        images = tf.gather(images, index, axis=axis, batch_dims=1)
    return images


def _reflect_pad(images, pad_y, pad_x):
    """Pads (batch, h, w, c) by reflection, edge pixels repeated (Keras'
    "reflect"), with slices and concatenation: faster than
    `tf.pad(mode="SYMMETRIC")` on a CPU."""
    import tensorflow as tf

    images = tf.concat([tf.reverse(images[:, :pad_y], [1]), images,
                        tf.reverse(images[:, -pad_y:], [1])], axis=1)
    return tf.concat([tf.reverse(images[:, :, :pad_x], [2]), images,
                      tf.reverse(images[:, :, -pad_x:], [2])], axis=2)


def _zoom_flip(images, zoom, largest, flip_x, flip_y):
    """Zoom (factors up to 1 + `largest`) and flip: each image's centre crop
    of `zoom` times its size (out of the reflection-padded image when the
    zoom is above 1), flipped, resized back with `tf.image.resize`
    (bilinear), whose kernel is twice as fast on a CPU as `crop_and_resize`.
    The crop's size is rounded to whole pixels."""
    import tensorflow as tf

    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    # Zooming out by up to `largest` needs half of it on each side.
    pad_y = int(math.ceil(height * largest / 2)) + 1
    pad_x = int(math.ceil(width * largest / 2)) + 1
    padded = _reflect_pad(images, pad_y, pad_x)

    def one(args):
        image, z, fx, fy = args
        h = tf.cast(tf.round(z * height), tf.int32)
        w = tf.cast(tf.round(z * width), tf.int32)
        top, left = pad_y + (height - h) // 2, pad_x + (width - w) // 2
        crop = image[top:top + h, left:left + w]
        crop = tf.cond(fx < 0, lambda: tf.reverse(crop, [1]), lambda: crop)
        crop = tf.cond(fy < 0, lambda: tf.reverse(crop, [0]), lambda: crop)
        return tf.image.resize(crop, (height, width))

    return tf.map_fn(one, (padded, zoom, flip_x, flip_y), parallel_iterations=4,
                     fn_output_signature=tf.TensorSpec((height, width, channels), tf.float32))


def _affine(images, angle, zoom, flip_x, flip_y):
    """Rotation, zoom and flip as one bilinear projective transform."""
    import tensorflow as tf

    height, width = images.shape[1], images.shape[2]
    cy, cx = (height - 1) / 2, (width - 1) / 2
    cos, sin = tf.cos(angle) * zoom, tf.sin(angle) * zoom
    # Output pixel (x, y) samples the input at center + zoom * R(angle) *
    # flip * ((x, y) - center).
    a0, a1 = cos * flip_x, -sin * flip_y
    b0, b1 = sin * flip_x, cos * flip_y
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
