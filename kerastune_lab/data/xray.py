"""A train/val/test tree of class folders (the chest X-ray layout) as tf.data.

    chest_xray/
      train/{NORMAL,PNEUMONIA}/*.jpeg
      val/{NORMAL,PNEUMONIA}/*.jpeg      16 images in the public Kaggle set
      test/{NORMAL,PNEUMONIA}/*.jpeg

Every split must have the same class subfolders, the required ones among
them. When `val` is missing or holds fewer than `min_val_images` images, a
stratified validation split is carved out of `train` instead and `val` is
left unused; `SplitData.validation` says which happened and why. A test split
may hold one class only (evaluation then skips the curves that need both).
Files are decoded by `images.decode_image`, so grayscale, RGB and 16-bit
images all become the same 3-channel input.

Keras' `image_dataset_from_directory` reads one folder at a time and
neither checks splits against each other nor carves a stratified split, so
this module does, with the folder scanning of `images`.
"""

import dataclasses
import logging
import os

import numpy as np

from kerastune_lab.data import images
from kerastune_lab.data.cache import ImageCache, file_fingerprint
from kerastune_lab.errors import KerastuneError
from kerastune_lab.finetune.class_weights import oversample as oversample_indices

log = logging.getLogger("kerastune_lab")

SPLITS = ("train", "val", "test")
CHEST_XRAY_CLASSES = ("NORMAL", "PNEUMONIA")


@dataclasses.dataclass
class SplitData:
    """Training, validation and test pipelines with what describes them.

    `train`, `val` and `test` are tf.data.Datasets of (float32 images 0-255,
    int32 labels) batches with a known number of batches, for a plain
    `model.fit(data.train, validation_data=data.val)`; `train` is shuffled
    anew each epoch (and augmented, given `augment=`). `train_stream` is the training data as a
    resumable `stream.Stream`, for `training.fit_resumable`.
    """

    train: object
    val: object
    test: object  # in file order, not augmented
    class_names: list
    train_labels: np.ndarray  # labels as fed to fit (after oversampling)
    counts: dict  # {"train"|"val"|"test": {class name: images}} used, before oversampling
    validation: dict  # where validation comes from, and why
    skipped: dict  # {split folder: {"not_image": n, "unreadable": n}}
    train_stream: object = None

    @property
    def num_train(self):
        return len(self.train_labels)


def _subfolders(path):
    return sorted(d for d in os.listdir(path)
                  if os.path.isdir(os.path.join(path, d)) and not d.startswith("."))


def split_class_names(root, required=CHEST_XRAY_CLASSES):
    """Checks the split folders of `root` and returns ({split: folder}, class names).

    `train` and `test` must exist, `val` may; each must hold the `required`
    class subfolders, and all the same ones.
    """
    root = os.path.expanduser(os.fspath(root))
    layout = f"<data>/{{train,val,test}}/{{{','.join(required)}}}"
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a folder"
        raise KerastuneError(f"data {root!r} {what}: expected a folder laid out as {layout}")
    folders = {s: os.path.join(root, s) for s in SPLITS if os.path.isdir(os.path.join(root, s))}
    for split in ("train", "test"):
        if split not in folders:
            raise KerastuneError(f"data {root!r} has no {split!r} folder: expected {layout}")
    names = {}
    for split, folder in folders.items():
        names[split] = _subfolders(folder)
        missing = [c for c in required if c not in names[split]]
        if missing:
            raise KerastuneError(
                f"data split {split!r} ({folder}) has no {' or '.join(missing)} subfolder: "
                f"expected {layout}")
    for split in folders:
        if names[split] != names["train"]:
            raise KerastuneError(
                f"data split {split!r} has classes {names[split]} but 'train' has "
                f"{names['train']}: expected the same class subfolders in every split")
    return folders, names["train"]


def _count_files(folder):
    return sum(1 for _, _, files in os.walk(folder) for f in files
               if not f.startswith(".") and f.lower().endswith(images.IMAGE_EXTENSIONS))


def load_split_tree(root, image_size, batch_size, required=CHEST_XRAY_CLASSES,
                    min_val_images=100, val_split=0.1, oversample=False, seed=0, augment=(),
                    cache="auto"):
    """Loads a train/val/test tree of class folders.

    Args:
        root: str. The folder holding `train/`, `test/` and optionally `val/`.
        image_size: int. Pixels, square.
        batch_size: int.
        required: tuple of str. Class subfolders every split must have.
            Defaults to ("NORMAL", "PNEUMONIA").
        min_val_images: int. A `val/` with fewer images is not used; a
            stratified `val_split` of `train/` is carved instead. Defaults to 100.
        val_split: float. Fraction of each class of `train/` carved out for
            validation when needed. Defaults to 0.1.
        oversample: bool. Repeat training examples of rare classes until every
            class is as frequent as the largest. Defaults to False.
        seed: int. Shuffling, carving and oversampling. Defaults to 0.
        augment: an `images.augmentation()` (or Keras preprocessing
            layers), for training data only.
        cache: str. Where decoded training and validation images are kept:
            "auto" (memory when they fit, else a file), "memory", "file" or
            "none". Defaults to "auto".
    """
    folders, class_names = split_class_names(root, required)
    skipped = {}

    def scan(split, require_all_classes=True):
        paths, labels, names, split_skipped = images.scan_image_folder(
            folders[split], require_all_classes=require_all_classes)
        assert names == class_names  # checked by split_class_names
        skipped[split] = split_skipped
        return paths, np.asarray(labels, "int32")

    train_paths, train_labels = scan("train", require_all_classes=False)
    for i, name in enumerate(class_names):
        if not np.any(train_labels == i):
            raise KerastuneError(
                f"data folder {os.path.join(folders['train'], name)!r} holds no readable "
                "image: every class needs training images")
    test_paths, test_labels = scan("test", require_all_classes=False)
    absent = [n for i, n in enumerate(class_names) if not np.any(test_labels == i)]
    if absent:
        log.warning("test split %s holds no image of %s: metrics that need every class "
                    "(ROC, precision-recall) will be skipped", folders["test"], ", ".join(absent))

    found_val = _count_files(folders["val"]) if "val" in folders else 0
    if found_val >= min_val_images:
        val_paths, val_labels = scan("val")
        validation = {"source": "val", "num_images": len(val_paths)}
    else:
        if not 0 < val_split < 1:
            raise KerastuneError(f"val_split={val_split}: expected a fraction between 0 and 1")
        where = f"{folders['val']!r} holds {found_val} image(s)" if "val" in folders \
            else f"{root!r} has no 'val' folder"
        images.check_splittable(train_labels, class_names, folders["train"], val_split)
        keep, carve = images.stratified_split(train_labels, val_split, seed)
        val_paths, val_labels = [train_paths[i] for i in carve], train_labels[carve]
        train_paths, train_labels = [train_paths[i] for i in keep], train_labels[keep]
        validation = {
            "source": "train", "num_images": len(val_paths), "val_split": val_split,
            "reason": f"{where}, fewer than min_val_images={min_val_images}: carved a "
                      f"stratified {val_split:g} of train instead; val/ is not used"}
        log.info("validation: %s", validation["reason"])

    counts = {split: {n: int(np.sum(labels == i)) for i, n in enumerate(class_names)}
              for split, labels in (("train", train_labels), ("val", val_labels),
                                    ("test", test_labels))}
    if oversample:
        order = oversample_indices(train_labels, seed)
        train_paths, train_labels = [train_paths[i] for i in order], train_labels[order]
        log.info("oversampled training data to %d images: %s each", len(train_labels),
                 int(np.sum(train_labels == 0)))

    stream = images.train_stream(train_paths, train_labels, image_size, batch_size, seed,
                                 augment, cache)
    val_cache = ImageCache.create(len(val_paths), image_size, mode=cache,
                                  key=file_fingerprint(val_paths, image_size))
    return SplitData(
        train=stream.as_dataset(),
        val=images.pipeline(images.files_dataset(val_paths, val_labels, image_size, val_cache),
                            batch_size),
        test=images.pipeline(images.files_dataset(test_paths, test_labels, image_size),
                             batch_size),
        class_names=class_names,
        train_labels=train_labels,
        counts=counts,
        validation=validation,
        skipped=skipped,
        train_stream=stream,
    )

