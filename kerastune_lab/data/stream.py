"""Training data as an endless stream whose epoch e depends only on (seed, e).

    train = Stream(examples, num_examples=len(paths), batch_size=32, seed=1337,
                   prepare=decode, augment=augment_layers)
    fit_resumable(model, train, epochs=5, backup=backup)   # kerastune_lab.training

A tf.data `shuffle(reshuffle_each_iteration=True)` draws each epoch's order
from a hidden state that advances every time the dataset is iterated, and
Keras' random augmentation layers draw from a state that advances every
batch (in whatever order parallel map calls run). Neither can be put back,
so a run resumed from a backup would see other batches than the run it
continues. Here epoch e is the examples shuffled with a seed made of
(seed, e), batched, and each batch augmented with a seed made of
(seed, e, batch index): `dataset(epoch, step)` starts at batch `step` of
epoch `epoch` and yields exactly the batches an uninterrupted run sees
from there. It is endless: give `fit` `steps_per_epoch`
(`training.fit_resumable` does).

For a plain `model.fit(data.train, validation_data=data.val, epochs=3)`,
`as_dataset()` is one epoch of the same pipeline with a known number of
batches (so Keras neither asks for `steps_per_epoch` nor warns that the
input ran out of data), and each time Keras iterates it, a new epoch: the
epoch's number is drawn from a random sequence seeded with `seed`.
"""

import functools
import math

# Seeds of epoch e and of batch i: (seed, e * EPOCH_STRIDE + i), for i < EPOCH_STRIDE.
EPOCH_STRIDE = 1_000_003


class Stream:
    """An endless, resumable training pipeline (see the module docstring).

    Args:
        examples: tf.data.Dataset. One epoch of unbatched examples, in a
            fixed order (file paths and labels, token ids...).
        num_examples: int. How many `examples` holds.
        batch_size: int.
        seed: int. Shuffling and augmentation seed.
        prepare: callable or None. `prepare(dataset)` maps the shuffled
            examples to model inputs (decoding files), before batching.
        augment: an `augment.Augmentation` (or any callable
            `augment(images, key)`), or a list of Keras random preprocessing
            layers, applied to each batch's first element (images) with a
            seed of its own. Images prepared as uint8 are batched as uint8
            (4 times less to copy) and come out as float32 0-255.
        shuffle_buffer: int or None. Shuffle buffer; defaults to
            `num_examples` (a full shuffle: keep `examples` small, e.g. paths).
    """

    def __init__(self, examples, num_examples, batch_size, seed=0, prepare=None, augment=(),
                 shuffle_buffer=None):
        self.examples = examples
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.prepare = prepare
        self.augment = augment if callable(augment) else list(augment or ())
        self.shuffle_buffer = shuffle_buffer or max(self.num_examples, 1)

    def __repr__(self):
        return (f"Stream({self.num_examples} examples, batch_size={self.batch_size}, "
                f"{self.steps_per_epoch} steps an epoch, seed={self.seed})")

    @property
    def steps_per_epoch(self):
        return max(1, math.ceil(self.num_examples / self.batch_size))

    def __iter__(self):
        """Iterates the batches of epoch 0, to look at the data."""
        return iter(self.epoch(0))

    def epoch(self, epoch):
        """The batches of epoch `epoch` (a finite tf.data.Dataset)."""
        return self.dataset(epoch).take(self.steps_per_epoch)

    def dataset(self, epoch=0, step=0):
        """The endless tf.data.Dataset of batches from batch `step` of epoch `epoch`."""
        import tensorflow as tf

        one_epoch = functools.partial(self._one_epoch, whole=_distributed())
        ds = tf.data.Dataset.counter(int(epoch)).flat_map(one_epoch).skip(int(step))
        return self._finish(ds)

    def as_dataset(self):
        """One epoch of batches, `steps_per_epoch` of them, for a plain
        `model.fit(dataset, epochs=...)`: each iteration is a new epoch,
        shuffled and augmented anew (see the module docstring)."""
        import tensorflow as tf

        epochs = tf.data.Dataset.random(seed=self.seed, rerandomize_each_iteration=True)
        # Epoch numbers past any real one, so that no shuffle seed repeats.
        epochs = epochs.take(1).map(lambda r: EPOCH_STRIDE + tf.math.floormod(r, 2 ** 31))
        ds = self._finish(epochs.flat_map(
            functools.partial(self._one_epoch, whole=_distributed())))
        return ds.apply(tf.data.experimental.assert_cardinality(self.steps_per_epoch))

    def _one_epoch(self, e, whole=False):
        import tensorflow as tf

        # The epoch's order depends on (seed, e) only, not on TensorFlow's
        # global seed (with which a tensor seed fails when it is 0).
        tf.compat.v1.get_default_graph().seed = None
        ds = self.examples.shuffle(self.shuffle_buffer, seed=self.seed * EPOCH_STRIDE + e,
                                   reshuffle_each_iteration=False)
        if self.prepare is not None:
            ds = self.prepare(ds)
        # Exactly `steps` batches an epoch, even if `prepare` dropped an
        # unreadable file, so that epochs never shift. Under a
        # keras.distribution every batch is whole (the last one ends with the
        # epoch's first examples again), so that it splits over the devices.
        if whole:
            ds = ds.repeat().batch(self.batch_size).take(self.steps_per_epoch)
        else:
            ds = ds.batch(self.batch_size).repeat().take(self.steps_per_epoch)
        return ds.enumerate().map(lambda i, batch: (e, i, batch))

    def _finish(self, ds):
        import tensorflow as tf

        seed, augment = self.seed, self.augment

        def finish(e, i, batch):
            if not isinstance(batch, tuple):
                return batch
            images = batch[0]
            key = tf.stack([tf.cast(seed, tf.int64), e * EPOCH_STRIDE + i])
            if augment and callable(augment):  # takes uint8, returns float32
                images = augment(images, key)
            elif getattr(images, "dtype", None) == tf.uint8:
                images = tf.cast(images, tf.float32)
            if augment and not callable(augment):
                images = augment_with_seed(augment, images, key)
            return (images,) + tuple(batch[1:])

        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)
        # Several processes (`processes`): each keeps its rows of every batch.
        from kerastune_lab.distribute import own_rows

        return own_rows(ds).prefetch(tf.data.AUTOTUNE)


def _distributed():
    """Whether a `keras.distribution` is set (batches then split over devices)."""
    import keras

    return keras.distribution.distribution() is not None


def augment_with_seed(layers, images, key):
    """Applies Keras random preprocessing `layers` to `images` in a tf.data
    map, drawing their random numbers from `key` (an int64 (2,) tensor)
    instead of the layers' own advancing state: the same key gives the same
    augmentation, on every backend."""
    from kerastune_lab import compat

    for index, layer in enumerate(layers):
        # Keras' preprocessing layers ask for their seed generator; this one
        # answers with seeds derived from `key`.
        with compat.seed_generator_override(layer, _key_seed(key, index)):
            images = layer(images, training=True)
    return images


def _key_seed(key, index):
    """A SeedGenerator whose seeds are functions of the tensor `key`: no state."""
    import keras
    import tensorflow as tf

    class KeySeed(keras.random.SeedGenerator):
        def __init__(self):  # no state variable
            self.count = 0

        def next(self, ordered=True):
            self.count += 1
            return tf.stack([key[0] + 7919 * index, key[1] * 64 + self.count])

    return KeySeed()
