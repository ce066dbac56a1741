"""Text-classification data: a TFDS dataset or a CSV/TSV/JSONL file, as tf.data.

    data=tfds:imdb_reviews        any TFDS dataset with (text, label) supervised keys
    data=reviews.csv              a header row; a text column and a label column
    data=reviews.jsonl            one JSON object a line, with the same two keys
    data=hf:stanfordnlp/imdb      a Hugging Face dataset (`data.hf_data`), hf:NAME[:CONFIG][@SPLIT]

Labels may be any strings; the class names are the sorted label values (for
TFDS and a Hugging Face ClassLabel column, the dataset's own label names, in
its order). Empty texts are dropped and counted. A held-out test set is
another file (or the TFDS `test` split, or the Hugging Face dataset's `test`
split when `data` names no split); without one, a stratified split of the
training data.

Hand-written because no library reads these formats with what a user needs
to fix bad input: `tf.data.experimental.make_csv_dataset` and pandas stop at
the first bad byte without the line number, and neither drops and counts
empty texts. Splits use scikit-learn's `train_test_split(stratify=...)`;
`count_truncated` uses the model's own tokenizer.
"""

import csv
import dataclasses
import io
import json
import logging
import os

import numpy as np

from kerastune_lab.data import hf_data, tfds_builder, tfds_load
from kerastune_lab.errors import KerastuneError
from kerastune_lab.text_checks import unicode_problem

log = logging.getLogger("kerastune_lab")

TFDS_PREFIX = "tfds:"
FILE_FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}


@dataclasses.dataclass
class LabelledTexts:
    """Texts with their string labels, as read from one source."""

    texts: list  # str, none empty
    labels: list  # str, one a text
    class_names: list = None  # the source's own label names (TFDS, ClassLabel), else None
    dropped_empty: int = 0  # empty texts dropped while reading


@dataclasses.dataclass
class TextData:
    """Training, validation and test pipelines with what describes them.

    The pipelines yield batches of (string texts, int32 labels); a KerasHub
    text classifier tokenises them itself. They have a known number of
    batches: `model.fit(data.train, validation_data=data.val, epochs=3)`
    trains on them as on any Keras dataset (`train` is shuffled anew each
    epoch). `train_stream` is the training data as a resumable
    `stream.Stream`, for `training.fit_resumable`. The test texts and labels
    are kept as lists for evaluation.
    """

    train: object
    val: object  # tf.data.Dataset or None (val_split=0)
    test: object  # tf.data.Dataset
    class_names: list
    train_texts: list
    test_texts: list
    test_labels: np.ndarray
    num_train: int
    num_val: int
    num_test: int
    dropped_empty: dict = dataclasses.field(default_factory=dict)  # {"train": n, "test": n}
    train_stream: object = None


def _decode(raw, path):
    """Decodes UTF-8 bytes (a BOM is allowed), naming the line of a bad byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise KerastuneError(
            f"data file {path!r} line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; "
            "expected a UTF-8 text file (re-save it as UTF-8)"
        ) from None


def _as_label(value, path, line):
    label = "" if value is None else str(value).strip()
    if not label:
        raise KerastuneError(f"data file {path!r} line {line}: the label is empty")
    return label


def _csv_error(error, path, line):
    """A `csv.Error` as one line naming the file and the line its row starts on."""
    if "field larger than field limit" in str(error):
        limit = csv.field_size_limit()
        return KerastuneError(
            f"data file {path!r} line {line}: a field longer than {limit} characters "
            f"({limit // 1024} KiB): expected one text a field (a quote left open makes the "
            "rest of the file one field)")
    return KerastuneError(f"data file {path!r} line {line}: {error}; expected CSV rows")


def _read_csv(text, path, delimiter, text_column, label_column):
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        columns = reader.fieldnames or []
    except csv.Error as e:
        raise _csv_error(e, path, 1) from None
    missing = [c for c in (text_column, label_column) if c not in columns]
    if missing:
        raise KerastuneError(
            f"data file {path!r} has no column {', '.join(map(repr, missing))}: "
            f"its header has {', '.join(map(repr, columns)) or 'no columns'}; "
            "set text_column= and label_column= to the columns to use"
        )
    rows = iter(reader)
    while True:
        start = reader.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as e:
            raise _csv_error(e, path, start) from None
        yield reader.line_num, row.get(text_column), row.get(label_column)


def _read_jsonl(text, path, text_column, label_column):
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except (json.JSONDecodeError, RecursionError) as e:
            why = (f"not valid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError)
                   else "JSON nested too deeply to read")
            raise KerastuneError(
                f"data file {path!r} line {line}: {why}; "
                "expected one JSON object a line"
            ) from None
        if not isinstance(record, dict):
            raise KerastuneError(
                f"data file {path!r} line {line}: expected a JSON object, "
                f"received {type(record).__name__}"
            )
        missing = [c for c in (text_column, label_column) if c not in record]
        if missing:
            raise KerastuneError(
                f"data file {path!r} line {line} has no key {', '.join(map(repr, missing))}: "
                f"it has {', '.join(map(repr, record)) or 'no keys'}; "
                "set text_column= and label_column= to the keys to use"
            )
        yield line, record[text_column], record[label_column]


def read_text_file(path, text_column="text", label_column="label"):
    """Reads a CSV, TSV or JSONL file of labelled texts.

    Args:
        path: str. A `.csv`, `.tsv` (header row) or `.jsonl` file, UTF-8.
        text_column: str. The column (or JSON key) holding the text.
            Defaults to `"text"`.
        label_column: str. The column (or JSON key) holding the label, any
            string. Defaults to `"label"`.

    Returns:
        LabelledTexts, with empty texts dropped and counted.
    """
    path = os.path.expanduser(os.fspath(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_FORMATS:
        raise KerastuneError(
            f"data {path!r}: expected {TFDS_PREFIX}NAME or a file ending in "
            f"{', '.join(FILE_FORMATS)}"
        )
    if not os.path.isfile(path):
        raise KerastuneError(f"data file {path!r} does not exist")
    with open(path, "rb") as f:
        text = _decode(f.read(), path)
    if ext in (".jsonl", ".ndjson"):
        rows = _read_jsonl(text, path, text_column, label_column)
    else:
        rows = _read_csv(text, path, FILE_FORMATS[ext], text_column, label_column)
    texts, labels, empty_lines = [], [], []
    for line, value, label in rows:
        if value is not None and not isinstance(value, str):
            raise KerastuneError(
                f"data file {path!r} line {line}: the text is a "
                f"{type(value).__name__}, expected a string"
            )
        if not value or not value.strip():
            empty_lines.append(line)
            continue
        for what, part in (("the text", value), ("the label", label)):
            problem = isinstance(part, str) and unicode_problem(part, escaped=False)
            if problem:
                raise KerastuneError(f"data file {path!r} line {line}: {what}: {problem}; "
                                     "expected UTF-8 text")
        texts.append(value)
        labels.append(_as_label(label, path, line))
    _report_empty(path, len(texts), empty_lines)
    return LabelledTexts(texts, labels, None, len(empty_lines))


def _report_empty(source, kept, empty_lines):
    if empty_lines:
        first = empty_lines[0]
        where = f" (e.g. line {first})" if isinstance(first, int) else f" (e.g. {first})"
        log.warning("dropped %d empty text(s) in %s%s", len(empty_lines), source, where)
    if not kept:
        raise KerastuneError(
            f"data {source!r} holds no text: expected labelled texts"
            + (f", all {len(empty_lines)} are empty" if empty_lines else "")
        )


def read_tfds(name, split, data_dir=None):
    """Reads a TFDS text-classification split (downloads once).

    Args:
        name: str. A TFDS dataset with a text feature and a class `label`,
            e.g. `"imdb_reviews"`.
        split: str. E.g. `"train"` or `"test"`.
    """
    import tensorflow_datasets as tfds

    builder = tfds_builder(name, data_dir)
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if not hasattr(label, "names"):
        raise KerastuneError(f"TFDS dataset {name!r} has no class 'label' feature")
    if builder.info.splits and split not in builder.info.splits:
        raise KerastuneError(
            f"TFDS dataset {name!r} has no {split!r} split: it has "
            f"{', '.join(builder.info.splits)}"
        )
    ds = tfds_load(builder, split, data_dir, as_supervised=True)
    texts, labels, empty = [], [], []
    for i, (text, y) in enumerate(tfds.as_numpy(ds)):
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)
        if not text.strip():
            empty.append(i)
            continue
        texts.append(text)
        labels.append(label.names[int(y)])
    source = f"{TFDS_PREFIX}{name}[{split}]"
    _report_empty(source, len(texts), empty and [f"example {empty[0]}"])
    return LabelledTexts(texts, labels, list(label.names), len(empty))


def read_hf(data, split="train", text_column="text", label_column="label"):
    """Reads a Hugging Face dataset split (`hf:NAME[:CONFIG][@SPLIT]`, see
    `data.hf_data`); the class names are its ClassLabel's, if it is one."""
    texts, labels, names, empty = hf_data.read_texts(data, split, text_column, label_column)
    _report_empty(hf_data.source_name(data, split), len(texts), empty)
    return LabelledTexts(texts, labels, names, len(empty))


def read_labelled_texts(data, split="train", text_column="text", label_column="label"):
    """Reads `data`: `tfds:NAME` (its `split`), `hf:NAME[:CONFIG][@SPLIT]`
    (its own split, else `split`) or a CSV/TSV/JSONL file."""
    if data.startswith(TFDS_PREFIX):
        return read_tfds(data[len(TFDS_PREFIX):], split)
    if hf_data.is_hf(data):
        return read_hf(data, split, text_column, label_column)
    return read_text_file(data, text_column, label_column)


def encode_labels(labels, class_names, source):
    """Maps string labels to indices of `class_names`."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise KerastuneError(
            f"data {source!r} has label(s) {', '.join(map(repr, unknown[:5]))} that the "
            f"training data does not: expected one of {', '.join(map(repr, class_names))}"
        )
    return np.asarray([index[y] for y in labels], dtype="int32")


def rename_labels(class_names, names):
    """Returns `class_names` with each one found in `names` ({old: new}) renamed.

    For display: `{"neg": "NEGATIVE", "pos": "POSITIVE"}` turns TFDS
    imdb_reviews' names into the ones a classifier is expected to answer.
    The order (the model's output order) is kept.
    """
    renamed = [str(names.get(name, name)) for name in class_names]
    if len(set(renamed)) < len(renamed):
        raise KerastuneError(f"label_names={names!r} gives two classes of "
                             f"{list(class_names)!r} the same name: expected distinct names")
    return renamed


def _class_names(read, source):
    names = read.class_names or sorted(set(read.labels))
    found = set(read.labels)
    if len(found) < 2:
        raise KerastuneError(
            f"data {source!r} has a single class ({next(iter(found))!r}) in its label "
            "column: expected at least 2 classes"
        )
    return names


def _split(texts, labels, fraction, seed, what, source):
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(texts, labels, test_size=fraction, stratify=labels,
                                random_state=seed)
    except ValueError as e:
        raise KerastuneError(
            f"data {source!r}: cannot hold out a stratified {what} of {fraction} "
            f"({e}); give more examples per class or a larger split"
        ) from None


def text_dataset(texts, labels, batch_size, shuffle=False, seed=None):
    """Batches (texts, labels) as a tf.data.Dataset of (string, int32)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((list(texts), np.asarray(labels, "int32")))
    if shuffle:
        ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def text_stream(texts, labels, batch_size, seed=0):
    """(texts, labels) as a resumable training `Stream` (shuffled per (seed, epoch))."""
    import tensorflow as tf

    from kerastune_lab.data.stream import Stream

    examples = tf.data.Dataset.from_tensor_slices((list(texts), np.asarray(labels, "int32")))
    return Stream(examples, len(texts), batch_size, seed)


def uses_own_test_split(data):
    """Whether `data` brings its own test set: a TFDS dataset's `test` split,
    or a Hugging Face dataset's when `data` names no split and it has one."""
    return data.startswith(TFDS_PREFIX) or hf_data.has_split(data, "test")


def load_text_data(data, test_data="", text_column="text", label_column="label",
                   batch_size=32, test_split=0.2, val_split=0.1, seed=0):
    """Loads training, validation and test texts as tf.data pipelines.

    Args:
        data: str. `tfds:NAME`, `hf:NAME[:CONFIG][@SPLIT]` or a CSV/TSV/JSONL
            file: the training set (a Hugging Face dataset's `train` split
            unless `data` names one).
        test_data: str. A held-out file of the same layout (or `hf:...`).
            Defaults to `""`: the TFDS `test` split, the Hugging Face
            dataset's `test` split when `data` names no split and it has one,
            or a stratified `test_split` of `data`.
        text_column: str. Column or key with the text. Defaults to `"text"`.
        label_column: str. Column or key with the label. Defaults to `"label"`.
        batch_size: int. Defaults to 32.
        test_split: float. Fraction of each class of `data` held out for
            testing when there is no test set. Defaults to 0.2.
        val_split: float. Fraction of each class of the training texts held
            out for validation during training; 0 for none. Defaults to 0.1.
        seed: int. Shuffling and splitting seed. Defaults to 0.
    """
    if not 0 < test_split < 1:
        raise KerastuneError(f"test_split={test_split}: expected a fraction between 0 and 1")
    if not 0 <= val_split < 1:
        raise KerastuneError(f"val_split={val_split}: expected 0 or a fraction between 0 and 1")
    train = read_labelled_texts(data, "train", text_column, label_column)
    class_names = _class_names(train, data)
    texts, labels = train.texts, encode_labels(train.labels, class_names, data)
    dropped = {"train": train.dropped_empty, "test": 0}
    if test_data or uses_own_test_split(data):
        source = test_data or data
        test = read_labelled_texts(source, "test", text_column, label_column)
        test_texts, test_labels = test.texts, encode_labels(test.labels, class_names, source)
        dropped["test"] = test.dropped_empty
    else:
        texts, test_texts, labels, test_labels = _split(texts, labels, test_split, seed,
                                                        "test_split", data)
    val_texts, val_labels = [], []
    if val_split:
        texts, val_texts, labels, val_labels = _split(texts, labels, val_split, seed,
                                                      "val_split", data)
    stream = text_stream(texts, labels, batch_size, seed)
    return TextData(
        train=stream.as_dataset(),
        val=text_dataset(val_texts, val_labels, batch_size) if val_split else None,
        test=text_dataset(test_texts, test_labels, batch_size),
        class_names=list(class_names),
        train_texts=list(texts),
        test_texts=list(test_texts),
        test_labels=np.asarray(test_labels, "int32"),
        num_train=len(texts),
        num_val=len(val_texts),
        num_test=len(test_texts),
        dropped_empty=dropped,
        train_stream=stream,
    )


def count_truncated(texts, preprocessor, batch_size=1024):
    """Counts the texts longer than the preprocessor's `sequence_length`.

    Tokenises with the model's own tokenizer and adds the special tokens the
    preprocessor packs around a text (e.g. [CLS] and [SEP]).

    Args:
        texts: list of str.
        preprocessor: a KerasHub `TextClassifierPreprocessor`.
    """
    special = int(np.sum(_to_numpy(preprocessor([""])["padding_mask"])))
    room = preprocessor.sequence_length - special
    truncated = 0
    for start in range(0, len(texts), batch_size):
        tokens = preprocessor.tokenizer(list(texts[start:start + batch_size]))
        truncated += sum(len(t) > room for t in _as_lists(tokens))
    return truncated


def _to_numpy(x):
    import keras

    return keras.ops.convert_to_numpy(x)


def _as_lists(tokens):
    if hasattr(tokens, "to_list"):  # tf.RaggedTensor
        return tokens.to_list()
    if isinstance(tokens, np.ndarray) and tokens.ndim == 2:
        return list(tokens)
    return tokens
