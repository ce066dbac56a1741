"""Data loaders: each turns a data source into tf.data pipelines.

tf.data runs on TensorFlow whatever the Keras backend; Keras `fit` on jax
and torch takes its batches as numpy.
"""


def tfds_builder(name, data_dir=None):
    """The TFDS builder of `name`; an unknown name is a one-line error that
    names the closest known ones, a failed download (of its metadata) a
    one-line `DownloadFailed`."""
    import tensorflow_datasets as tfds

    from kerastune_lab import hub
    from kerastune_lab.config import closest
    from kerastune_lab.errors import KerastuneError

    try:
        with hub.download_errors(f"TFDS dataset {name!r}", source="tfds", cache=data_dir):
            return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise KerastuneError(
            f"unknown TFDS dataset {name!r}{closest(name, tfds.list_builders())}"
        ) from None


def tfds_load(builder, split, data_dir=None, **kwargs):
    """`builder.download_and_prepare()` then `builder.as_dataset(split, **kwargs)`,
    as `tfds.load` does, for a builder from `tfds_builder`: the dataset is
    downloaded and prepared once, then read. A failed download (no network,
    refused, cut off) is one `DownloadFailed` line naming the dataset and
    what to do.

    Args:
        builder: a TFDS builder (`tfds_builder(name, data_dir)`).
        split: str or list of str.
        data_dir: str or None. Where the builder prepares data, named in
            errors.
        **kwargs: for `as_dataset` (`as_supervised`, `shuffle_files`, ...).
    """
    from kerastune_lab import hub

    what = f"TFDS dataset {builder.name!r}"
    if not builder.is_prepared():
        hub.check_hosts_resolve(builder.url_infos or (), what, source="tfds", cache=data_dir)
    with hub.download_errors(what, source="tfds", cache=data_dir):
        builder.download_and_prepare()
        return builder.as_dataset(split=split, **kwargs)
