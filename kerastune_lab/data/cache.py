"""Decoded, resized images kept after their first decoding: in memory when
they fit, else in a file.

    cache = ImageCache.create(len(paths), image_size=224, key=fingerprint)
    ds = cache.load(examples, read=tf.io.read_file)   # (index, path, label) -> (uint8 image, label)

Decoding and resizing a 224x224 JPEG costs about as much CPU as a training
step of a small model; the same image is decoded again every epoch unless it
is kept. `load` looks each example up by its index: an image already kept is
read from the cache (a copy, no decoding), any other is read, decoded,
resized and kept. Either way the pixels are the same (the cache holds the
uint8 image that `images.decode_image` rounds to), so a batch does not
depend on whether its images came from the cache: a resumed run, whose cache
starts empty, sees the batches of the run it continues. A file that fails to
decode is dropped, every epoch alike.

Memory when the images take at most half the memory available (less what
earlier caches of this process took), else a file under
`$KERASTUNE_CACHE/images/` (default `~/.cache/kerastune_lab/images/`), named
after the images' fingerprint, which a later run of the same data reuses.
No library offers this: tf.data's `cache()` keeps the elements in the order
of the first epoch and cannot be read by index, so each epoch could not be
shuffled from it as a function of (seed, epoch); and it refuses an iterator
that stops before its end.
"""

import hashlib
import logging
import os
import weakref

import numpy as np

log = logging.getLogger("kerastune_lab")

_reserved = [0]  # bytes of the memory caches of this process still alive


def _release(nbytes):
    _reserved[0] -= nbytes


def cache_root():
    """`$KERASTUNE_CACHE/images` (default `~/.cache/kerastune_lab/images`)."""
    root = os.environ.get("KERASTUNE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kerastune_lab")
    return os.path.join(root, "images")


def available_memory():
    """Bytes of memory available to new allocations (Linux MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def fingerprint(*parts):
    """A short hash of `parts` (paths, sizes, names), to name a file cache."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def file_fingerprint(paths, *parts):
    """`fingerprint` of `paths` with their sizes and modification times."""
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append((path, st.st_size, st.st_mtime_ns))
    return fingerprint(stats, *parts)


class ImageCache:
    """Images by index, uint8 (count, size, size, 3), and which are kept.

    Use `ImageCache.create`; `where` is "memory" or the file's path.
    """

    def __init__(self, images, kept, where):
        self.images = images
        self.kept = kept
        self.where = where

    def __repr__(self):
        return f"ImageCache({len(self.kept)} images, {int(self.kept.sum())} kept, {self.where})"

    @classmethod
    def create(cls, count, image_size, key, mode="auto", folder=None):
        """A cache of `count` images of `image_size` pixels square.

        Args:
            count: int.
            image_size: int.
            key: str. Names the file cache (`fingerprint` of the data).
            mode: str. "auto" (memory when it fits, else a file), "memory",
                "file" or "none" (returns None). Defaults to "auto".
            folder: str or None. The file cache's folder; defaults to
                `cache_root()`.
        """
        if mode == "none" or count == 0:
            return None
        if mode not in ("auto", "memory", "file"):
            raise ValueError(f"cache={mode!r}: expected 'auto', 'memory', 'file' or 'none'")
        shape = (count, image_size, image_size, 3)
        nbytes = int(np.prod(shape))
        if mode == "memory" or (
                mode == "auto" and _reserved[0] + nbytes <= available_memory() // 2):
            _reserved[0] += nbytes
            # np.zeros takes its pages from the system as they are written.
            cache = cls(np.zeros(shape, np.uint8), np.zeros(count, bool), "memory")
            weakref.finalize(cache, _release, nbytes)
            return cache
        return cls._file(shape, key, folder or cache_root())

    @classmethod
    def _file(cls, shape, key, folder):
        path = os.path.join(folder, f"{key}-{shape[1]}px.u8")
        try:
            os.makedirs(folder, exist_ok=True)
            fresh = not os.path.exists(path)
            with open(path, "ab") as f:
                # Reserve the disk space now: writing into a memory map on a
                # full disk would kill the process.
                os.posix_fallocate(f.fileno(), 0, int(np.prod(shape)) + shape[0])
            data = np.memmap(path, np.uint8, "r+", shape=shape)
            kept = np.memmap(path, np.bool_, "r+", offset=int(np.prod(shape)),
                             shape=(shape[0],))
        except OSError as e:
            log.warning("images not cached (decoded again every epoch): cannot write %s (%s)",
                        path, e.strerror or e)
            return None
        if fresh:
            log.info("caching decoded images in %s", path)
        return cls(data, kept, path)

    def _has(self, index):
        return self.kept[index]

    def _get(self, index):
        return self.images[index]

    def _put(self, index, image):
        self.images[index] = image
        self.kept[index] = True  # after the pixels: a reader never sees half an image
        return image

    def load(self, examples, decode, read=None):
        """Maps (index, source, label) to (uint8 image, label), from the cache
        or decoded (and kept), dropping sources that fail to decode.

        Args:
            examples: tf.data.Dataset of (int64 index, source, label).
            decode: callable. `decode(contents)` -> uint8 (size, size, 3).
            read: callable or None. `read(source)` -> contents (e.g.
                `tf.io.read_file` for paths); None when the sources are the
                contents.
        """
        import tensorflow as tf

        shape = self.images.shape[1:]

        def fresh(index, source):
            image = decode(read(source) if read else source)
            image = tf.numpy_function(self._put, [index, image], tf.uint8, stateful=True)
            return tf.ensure_shape(image, shape)

        def kept(index):
            image = tf.numpy_function(self._get, [index], tf.uint8, stateful=True)
            return tf.ensure_shape(image, shape)

        def one(index, source, label):
            hit = tf.ensure_shape(
                tf.numpy_function(self._has, [index], tf.bool, stateful=True), ())
            return tf.cond(hit, lambda: kept(index), lambda: fresh(index, source)), label

        ds = examples.map(one, num_parallel_calls=tf.data.AUTOTUNE)
        return ds.ignore_errors(log_warning=True)


def decoded(examples, decode, read=None, cache=None):
    """`cache.load(examples, decode, read)`, or without a cache the same
    images decoded every time: (index, source, label) -> (uint8 image, label)."""
    import tensorflow as tf

    if cache is not None:
        return cache.load(examples, decode, read)
    ds = examples.map(lambda index, source, label: (decode(read(source) if read else source),
                                                    label),
                      num_parallel_calls=tf.data.AUTOTUNE)
    return ds.ignore_errors(log_warning=True)
