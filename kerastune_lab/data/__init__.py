"""Data loaders: each turns a data source into tf.data pipelines.

tf.data runs on TensorFlow whatever the Keras backend; Keras `fit` on jax
and torch takes its batches as numpy.
"""


def tfds_builder(name, data_dir=None):
    """The TFDS builder of `name`; an unknown name is a one-line error that
    names the closest known ones."""
    import tensorflow_datasets as tfds

    from kerastune_lab.config import closest
    from kerastune_lab.errors import KerastuneError

    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise KerastuneError(
            f"unknown TFDS dataset {name!r}{closest(name, tfds.list_builders())}"
        ) from None
