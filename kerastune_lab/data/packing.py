"""Packing: token sequences placed whole into fixed-length windows, and the
(x, y, sample_weight) arrays, datasets and resumable streams a causal LM
trains on. Any sequence task can use it; chat data is one (`data.chat`).

Examples are placed whole into windows of `sequence_length + 1` tokens
(first-fit, longest first), so little compute goes to padding; an example is
never split across windows. An example longer than a window is truncated or
dropped (counted), or is an error, as configured. Packed examples share one
causal attention mask: a later example in a window can attend to the earlier
ones (KerasHub backbones take a padding mask, not a block-diagonal one);
positions also run on across the window.

The model is fed with its preprocessor detached
(`kerastune_lab.models.detached_preprocessor`): x = {"token_ids",
"padding_mask"} of `sequence_length`, y = the next tokens, sample weights.
"""

import bisect
import dataclasses
import logging

import numpy as np

from kerastune_lab.errors import KerastuneError

log = logging.getLogger("kerastune_lab")

OVERLONG = ("truncate", "drop", "error")


@dataclasses.dataclass
class Example:
    """One tokenised sequence (a conversation, a document)."""

    token_ids: list  # int
    weights: list  # float, 1 where the loss counts


@dataclasses.dataclass
class Packed:
    """Examples placed whole into fixed-length windows.

    Arrays are (windows, sequence_length + 1); `segment_ids` is 0 on padding
    and k on the tokens of the k-th kept example (1-based, in input order).
    """

    token_ids: np.ndarray  # int32
    weights: np.ndarray  # float32
    segment_ids: np.ndarray  # int32
    num_examples: int  # examples kept (truncated ones included)
    truncated: int  # examples cut to the window length
    dropped: int  # examples left out for being too long
    padding_before: float  # padding fraction with one example a window
    padding_after: float  # padding fraction of these windows

    def summary(self):
        """The figures for `metrics.json`."""
        return {"examples": self.num_examples, "windows": int(len(self.token_ids)),
                "truncated": self.truncated, "dropped": self.dropped,
                "padding_fraction_before_packing": round(self.padding_before, 4),
                "padding_fraction_after_packing": round(self.padding_after, 4)}


def pack_examples(examples, sequence_length, pack=True, overlong="truncate", pad_id=0,
                  source="chat data"):
    """Places examples whole into windows of `sequence_length + 1` tokens.

    Args:
        examples: list of `Example`.
        sequence_length: int. Model input length; a window holds one more
            token, for the shifted labels.
        pack: bool. Several examples a window (first-fit, longest first);
            `False` gives one example a window. Defaults to `True`.
        overlong: str. An example longer than a window is `"truncate"`d
            (its end cut), `"drop"`ped, or an `"error"`. Both are counted.
            Defaults to `"truncate"`.
        pad_id: int. Token id of padding (masked out anyway). Defaults to 0.
        source: str. Names the data in errors.
    """
    if overlong not in OVERLONG:
        raise KerastuneError(f"overlong={overlong!r}: expected one of {', '.join(OVERLONG)}")
    window = sequence_length + 1
    kept, truncated, dropped = [], 0, 0
    for n, example in enumerate(examples):
        length = len(example.token_ids)
        if length > window:
            if overlong == "error":
                raise KerastuneError(
                    f"{source}: example {n + 1} is {length} tokens, longer than "
                    f"sequence_length={sequence_length} (+1 for the labels); raise "
                    "sequence_length or set overlong=truncate or overlong=drop")
            if overlong == "drop":
                dropped += 1
                continue
            truncated += 1
            example = Example(example.token_ids[:window], example.weights[:window])
        kept.append(example)
    if truncated or dropped:
        log.warning("%s: %d example(s) longer than sequence_length=%d %s", source,
                    truncated or dropped, sequence_length,
                    "truncated" if truncated else "dropped")
    if not kept:
        raise KerastuneError(f"{source}: no example fits sequence_length={sequence_length}")

    if pack:
        # First-fit decreasing: each example goes into the first window with
        # room, longest first; `free` keeps (room left, window) sorted.
        windows, free = [], []
        for index in sorted(range(len(kept)), key=lambda i: -len(kept[i].token_ids)):
            need = len(kept[index].token_ids)
            at = bisect.bisect_left(free, (need, -1))
            if at == len(free):
                windows.append([index])
                room, w = window - need, len(windows) - 1
            else:
                room, w = free.pop(at)
                windows[w].append(index)
                room -= need
            if room > 0:
                bisect.insort(free, (room, w))
        for members in windows:
            members.sort()
    else:
        windows = [[i] for i in range(len(kept))]

    shape = (len(windows), window)
    token_ids = np.full(shape, pad_id, dtype="int32")
    weights = np.zeros(shape, dtype="float32")
    segment_ids = np.zeros(shape, dtype="int32")
    for w, members in enumerate(windows):
        at = 0
        for index in members:
            example = kept[index]
            end = at + len(example.token_ids)
            token_ids[w, at:end] = example.token_ids
            weights[w, at:end] = example.weights
            segment_ids[w, at:end] = index + 1
            at = end
    real = sum(len(e.token_ids) for e in kept)
    return Packed(token_ids, weights, segment_ids, len(kept), truncated, dropped,
                  padding_before=1.0 - real / (len(kept) * window),
                  padding_after=1.0 - real / token_ids.size)


def model_inputs(packed):
    """Returns (x, y, sample_weight) numpy arrays for a CausalLM with its
    preprocessor detached: x = {"token_ids", "padding_mask"}."""
    x = {"token_ids": packed.token_ids[:, :-1],
         "padding_mask": packed.segment_ids[:, :-1] > 0}
    y = packed.token_ids[:, 1:]
    sample_weight = packed.weights[:, 1:] * (packed.segment_ids[:, 1:] > 0)
    return x, y, sample_weight.astype("float32")


def sequence_dataset(packed, batch_size, shuffle=False, seed=None):
    """A batched tf.data pipeline of (x, y, sample_weight) from `model_inputs`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(model_inputs(packed))
    if shuffle:
        ds = ds.shuffle(len(packed.token_ids), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def sequence_stream(packed, batch_size, seed=0):
    """`model_inputs(packed)` as a resumable training `Stream` of (x, y,
    sample_weight) batches, shuffled per (seed, epoch)."""
    import tensorflow as tf

    from kerastune_lab.data.stream import Stream

    examples = tf.data.Dataset.from_tensor_slices(model_inputs(packed))
    return Stream(examples, len(packed.token_ids), batch_size, seed)
