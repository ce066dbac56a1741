"""Keras' `affine_transform` on torch, batched: the same values as Keras'
own, one gather per interpolation node for the whole batch.

    with torch_affine.batched():   # on torch, Keras' RandomRotation and
        images = layer(images, training=True)   # RandomZoom use it; elsewhere a no-op

Why: Keras' torch version (keras/src/backend/torch/image.py) loops over the
batch in Python and resamples each image by a generic `map_coordinates`,
one image at a time, on a GPU too (`benchmarks/input_pipeline.py --backend
torch` times the layers; figures in docs/benchmarks.md).
Not `torch.nn.functional.grid_sample`: its "reflection" reflects the
coordinate before interpolating, Keras reflects the pixel indices after
(they differ from a pixel outside the image on), and it has no "wrap".
This module computes what Keras' function computes, with its arithmetic:
the output pixel (x, y) samples the input at x' = a0 x + a1 y + a2 and
y' = b0 x + b1 y + b2 (transform [a0, a1, a2, b0, b1, b2, c0, c1]; with
c0 or c1 not 0, which Keras' layers never draw, Keras' own function runs),
bilinear or nearest (rounded half to even), indices outside the image
folded by `fill_mode`, uint8 results rounded.
"""

import contextlib

import keras

from kerastune_lab import compat

INTERPOLATIONS = ("nearest", "bilinear")
FILL_MODES = ("constant", "nearest", "wrap", "reflect", "mirror")


def _fix(index, size, fill_mode):
    """Folds integer pixel indices into 0..size-1, as Keras' fill modes."""
    if fill_mode in ("constant", "nearest"):
        return index.clamp(0, size - 1)
    if fill_mode == "wrap":
        return index.remainder(size)
    # reflect: ..., 1, 0 | 0, 1, ..., n-1 | n-1, ...; mirror: ..., 1 | 0, ..., n-1 | n-2, ...
    period = 2 * size if fill_mode == "reflect" else 2 * size - 2
    index = index.remainder(period)
    return index.where(index < size, period - 1 - index if fill_mode == "reflect"
                       else period - index)


def _nodes(coordinate, interpolation):
    """[(integer index, weight)] of one axis, as Keras' `map_coordinates`."""
    if interpolation == "nearest":
        return [(coordinate.round().long(), 1)]
    lower = coordinate.floor()
    upper_weight = coordinate - lower
    return [(lower.long(), 1 - upper_weight), (lower.long() + 1, upper_weight)]


def affine_transform(images, transform, interpolation="bilinear", fill_mode="constant",
                     fill_value=0, data_format=None):
    """Keras' `keras.ops.image.affine_transform` on torch tensors, batched."""
    import torch

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r}: expected one of {INTERPOLATIONS}")
    if fill_mode not in FILL_MODES:
        raise ValueError(f"fill_mode={fill_mode!r}: expected one of {FILL_MODES}")
    channels_first = (data_format or keras.config.image_data_format()) == "channels_first"
    images = keras.ops.convert_to_tensor(images)
    transform = keras.ops.convert_to_tensor(transform)
    if bool((transform[..., 6:] != 0).any()):  # projective (c0, c1): Keras' own
        return compat.keras_torch_affine_transform()(images, transform, interpolation,
                                                     fill_mode, fill_value, data_format)
    unbatched = images.ndim == 3
    images = images[None] if unbatched else images
    images = images.permute(0, 2, 3, 1) if channels_first else images
    batch, height, width, channels = images.shape
    transform = transform.reshape(-1, 8)
    # Keras' arithmetic, for the same rounding: (y, x, channel 0) @ [[b1, a1, 0], [b0, a0, 0],
    # [0, 0, 1]] by the same einsum, then the offset (b2, a2).
    grid = torch.meshgrid(*[torch.arange(size, dtype=transform.dtype, device=transform.device)
                            for size in (height, width, 1)], indexing="ij")
    grid = torch.stack(grid, -1).tile(batch, 1, 1, 1, 1)
    matrix = torch.nn.functional.pad(transform[:, [4, 1, 3, 0]].reshape(-1, 2, 2), (0, 1, 0, 1))
    matrix[:, 2, 2] = 1
    coordinates = torch.einsum("Bhwij, Bjk -> Bhwik", grid, matrix)[..., 0, :2]
    coordinates = coordinates + transform[:, None, None, [5, 2]]
    if isinstance(fill_value, (int, float)) and not images.is_floating_point():
        fill_value = int(fill_value)
    rows = [(_fix(r, height, fill_mode) * width, w, (r >= 0) & (r < height))
            for r, w in _nodes(coordinates[..., :1], interpolation)]
    cols = [(_fix(c, width, fill_mode), w, (c >= 0) & (c < width))
            for c, w in _nodes(coordinates[..., 1:], interpolation)]
    flat = images.reshape(batch, height * width, channels)
    result = None
    for row, row_weight, row_inside in rows:
        for col, col_weight, col_inside in cols:
            index = (row + col).reshape(batch, -1, 1).expand(-1, -1, channels)
            value = torch.gather(flat, 1, index).reshape(images.shape)
            if fill_mode == "constant":
                value = torch.where(row_inside & col_inside, value, fill_value)
            value = row_weight * col_weight * value
            result = value if result is None else result + value
    if not images.is_floating_point() and result.is_floating_point():
        result = result.round()
    result = result.to(images.dtype)
    result = result.permute(0, 3, 1, 2) if channels_first else result
    return result[0] if unbatched else result


@contextlib.contextmanager
def batched():
    """Within it, on the torch backend, Keras' `affine_transform` (what
    `RandomRotation`, `RandomZoom` and `keras.ops.image.affine_transform`
    call) is this module's; Keras' own is put back on leaving. Elsewhere,
    nothing changes (nor on a Keras whose torch `affine_transform` is not
    where `compat` looks: Keras' own then runs, the same values, slower)."""
    if keras.backend.backend() != "torch":
        yield
        return
    with compat.torch_affine_transform_replaced(affine_transform):
        yield
