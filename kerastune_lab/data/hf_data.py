"""Datasets on the Hugging Face Hub: `data=hf:NAME[:CONFIG][@SPLIT]`, read
with the `datasets` library.

    data=hf:stanfordnlp/imdb                 the "train" split (and "test" for testing)
    data=hf:stanfordnlp/imdb@train[:10%]     one split, any `datasets` split string
    data=hf:nyu-mll/glue:sst2@train          a config (subset) and a split
    heldout_data=hf:org/chats@test           chat: a "messages" column, or "prompt"/"response"

`datasets.load_dataset_builder` + `download_and_prepare` download the files
once into the datasets cache (`HF_DATASETS_CACHE`, under `HF_HOME`); a
second run reads that cache, with no network too (`HF_HUB_OFFLINE=1`). The
rows are then read column by column into the lists that the text and chat
pipelines already take (`data.text`, `data.chat`), so everything after the
read is the same as for a CSV or JSONL file.

What this module adds to `datasets`: the `hf:` form, the columns checked
against the recipe's keys (a missing column or one of the wrong type named
with the columns there are), ClassLabel names as class names, and each
failure as one line: `datasets` not installed, a malformed name, an unknown
config or split (bad input, `KerastuneError`); a gated or missing dataset, a
server error, no network (`DownloadFailed`, as for presets and TFDS).
"""

import contextlib
import functools
import re

from kerastune_lab.errors import DownloadFailed, KerastuneError

HF_PREFIX = "hf:"
INSTALL = "pip install 'kerastune-lab[hf-data]' (or: pip install datasets)"
# A Hub repo id: NAME or ORG/NAME, letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_STRING_TYPES = ("string", "large_string")
_LABEL_TYPES = _STRING_TYPES + ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                "uint32", "uint64")


def is_hf(data):
    """Whether `data` names a Hugging Face dataset (`hf:...`)."""
    return isinstance(data, str) and data.startswith(HF_PREFIX)


def parse(data):
    """(name, config or None, split or None) of `hf:NAME[:CONFIG][@SPLIT]`."""
    spec = data[len(HF_PREFIX):]
    rest, at, split = spec.partition("@")
    name, colon, config = rest.partition(":")
    if not _REPO_ID.match(name) or (colon and not config) or (at and not split.strip()):
        raise KerastuneError(
            f"data {data!r}: expected hf:NAME, hf:NAME:CONFIG, hf:NAME@SPLIT or "
            "hf:NAME:CONFIG@SPLIT with NAME a Hugging Face dataset id (ORG/NAME), e.g. "
            "hf:stanfordnlp/imdb or hf:nyu-mll/glue:sst2@train")
    return name, config or None, split.strip() or None


def _datasets():
    try:
        import datasets
    except ImportError:
        raise KerastuneError(
            f"reading Hugging Face datasets (hf:NAME) needs the datasets library: {INSTALL}"
        ) from None
    datasets.logging.set_verbosity_error()  # its "using the latest cached version" warnings
    return datasets


def _first_line(exc):
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _cache():
    import datasets

    from kerastune_lab.hub.failures import display_path

    return display_path(datasets.config.HF_DATASETS_CACHE)


# Exception class names that say the Hub could not be reached.
_NO_CONNECTION = {"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException",
                  "ConnectionRefusedError", "NetworkError", "ProxyError", "gaierror"}


def _chain(exc):
    """`exc` and the exceptions it was raised from or during: `datasets`
    re-raises its own errors `from None`, which keeps them as the context."""
    seen = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _status(exc):
    try:
        status = exc.response.status_code
    except Exception:  # no response (httpx raises RuntimeError for an unset one)
        return None
    return status if isinstance(status, int) else None


def _failure(e, name):
    """The one-line message of a failed look-up or download, or None."""
    page = f"https://huggingface.co/datasets/{name}"
    head = f"cannot download Hugging Face dataset {name!r} from the Hugging Face Hub"
    chain = _chain(e)
    text = _first_line(e)
    status = next((s for s in map(_status, chain) if s is not None), None)
    names = {type(x).__name__ for x in chain}
    cached = (f"a dataset downloads once and is then cached in {_cache()} (HF_DATASETS_CACHE "
              "or HF_HOME): run the same command once online, or copy that folder from a "
              "machine that has it")
    if "DatasetNotFoundError" in names and "gated" in text:
        return (f"{head}: access refused (a gated dataset): accept its conditions on {page} "
                "with your Hugging Face account, then log in with `hf auth login` or set "
                "HF_TOKEN")
    if "DatasetNotFoundError" in names or status == 404:
        return (f"{head}: it does not exist or cannot be accessed (HTTP 404, or 401 for a "
                f"private one): check the name on {page}; for a private dataset log in with "
                "`hf auth login` or set HF_TOKEN")
    if "OfflineModeIsEnabled" in names or "OfflineModeIsEnabled" in text or (
            _offline_mode() and isinstance(e, (ConnectionError, FileNotFoundError))):
        return (f"{head}: Hugging Face offline mode is on (HF_HUB_OFFLINE=1) and the dataset "
                f"is not in the datasets cache {_cache()} (HF_DATASETS_CACHE or HF_HOME): "
                "unset HF_HUB_OFFLINE and run the same command once online, or copy that "
                "cache from a machine that has it")
    if status is not None and status >= 500:
        return f"{head}: the Hugging Face Hub failed (HTTP {status}); try again later"
    if status == 429:
        return f"{head}: too many requests (HTTP 429); try again later"
    if status in (401, 403):
        return (f"{head}: access refused (HTTP {status}): if the dataset is gated or private, "
                f"accept its conditions on {page}; log in with `hf auth login` or set HF_TOKEN")
    if names & _NO_CONNECTION or "Couldn't reach" in text:
        reason = next((_first_line(x) for x in reversed(chain)
                       if type(x).__name__ in _NO_CONNECTION), "the Hub cannot be reached")
        return f"{head}: no connection ({reason[:120]}); {cached}"
    if status is not None:
        return f"{head}: the Hub answered HTTP {status}; try again later"
    return None


def _offline_mode():
    import datasets

    return bool(datasets.config.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _download_errors(name):
    """A failed look-up or download of dataset `name` as one `DownloadFailed` line."""
    try:
        yield
    except (KerastuneError, DownloadFailed):
        raise
    except Exception as e:
        message = _failure(e, name)
        if message is None:
            raise
        raise DownloadFailed(" ".join(message.split())) from e


@functools.lru_cache(maxsize=4)
def _builder(name, config):
    """The prepared `datasets` builder of (name, config): downloaded once."""
    datasets = _datasets()
    shown = f"hf:{name}" + (f":{config}" if config else "")
    with _download_errors(name):
        try:
            builder = datasets.load_dataset_builder(name, config)
        except ValueError as e:  # an unknown or missing config
            configs = _config_names(e)
            if configs is None:
                raise
            raise KerastuneError(
                f"data {shown!r}: " + (f"no config {config!r}" if config else
                                       "the dataset has several configs")
                + f": it has {', '.join(configs)}; name one as hf:{name}:CONFIG") from None
        builder.download_and_prepare()
    return builder


def _config_names(error):
    """The config names that `datasets` lists in `error`, or None."""
    found = re.search(r"(?:Available|among the available configs)\W*\[([^\]]*)\]", str(error))
    if not found:
        return None
    return re.findall(r"'([^']*)'", found.group(1)) or [found.group(1)]


def split_names(data):
    """The split names of the dataset `data` names."""
    name, config, _ = parse(data)
    splits = _builder(name, config).info.splits
    return list(splits or ())


def has_split(data, split):
    """Whether `data` (`hf:...` with no `@SPLIT`) has split `split`."""
    return is_hf(data) and parse(data)[2] is None and split in split_names(data)


def load_split(data, split="train"):
    """The `datasets.Dataset` of `data` (`hf:...`): its own `@SPLIT`, else `split`."""
    name, config, own = parse(data)
    split = own or split
    builder = _builder(name, config)
    names = list(builder.info.splits or ())
    base = re.split(r"[\[+]", split, maxsplit=1)[0].strip()
    if names and base not in names:
        raise KerastuneError(
            f"data {data!r} has no {base!r} split: it has {', '.join(names)}; "
            f"choose one as {data.split('@')[0]}@SPLIT")
    try:
        return builder.as_dataset(split=split)
    except ValueError as e:  # a malformed split string ("train[:x%]")
        raise KerastuneError(f"data {data!r}: split {split!r}: {_first_line(e)}") from None


def source_name(data, split="train"):
    """How errors name the split read: `hf:NAME[train]`."""
    return f"{data.split('@')[0]}[{parse(data)[2] or split}]"


def _describe(feature):
    kind = type(feature).__name__
    if kind == "ClassLabel":
        return f"class label: {', '.join(feature.names[:4])}" + (
            ", ..." if len(feature.names) > 4 else "")
    if kind == "Value":
        return feature.dtype
    if isinstance(feature, dict):
        return "struct"
    if isinstance(feature, (list, tuple)) or kind in ("List", "LargeList", "Sequence"):
        return "list"
    return kind


def columns_line(ds):
    """The dataset's columns and their types, for messages."""
    return ", ".join(f"{c!r} ({_describe(f)})" for c, f in ds.features.items())


def check_column(ds, source, column, key, expected, allowed):
    """Refuses a missing column, or one whose type is not in `allowed`, in one line.

    Args:
        ds: datasets.Dataset.
        source: str. The data, as errors name it.
        column: str. The column's name.
        key: str. The setting that names the column ("text_column"), or "".
        expected: str. What it should hold, in words.
        allowed: callable(feature) -> bool.
    """
    fix = f"; set {key}= to the column to use" if key else ""
    if column not in ds.features:
        raise KerastuneError(f"data {source!r} has no column {column!r}: its columns are "
                             f"{columns_line(ds)}{fix}")
    if not allowed(ds.features[column]):
        raise KerastuneError(
            f"data {source!r}: column {column!r} is {_describe(ds.features[column])}, "
            f"expected {expected}; its columns are {columns_line(ds)}{fix}")


def _is_value(feature, dtypes):
    return type(feature).__name__ == "Value" and feature.dtype in dtypes


def _rows(ds, columns, batch_size=1000):
    """(row number, {column: value}) of `ds`, read a batch at a time."""
    row = 0
    for batch in ds.select_columns(list(columns)).iter(batch_size=batch_size):
        for values in zip(*(batch[c] for c in columns)):
            yield row, dict(zip(columns, values))
            row += 1


def read_texts(data, split="train", text_column="text", label_column="label"):
    """Labelled texts of a Hugging Face dataset split.

    Args:
        data: str. `hf:NAME[:CONFIG][@SPLIT]`.
        split: str. The split read when `data` names none. Defaults to "train".
        text_column: str. A string column. Defaults to "text".
        label_column: str. A ClassLabel, string or integer column. Defaults
            to "label".

    Returns:
        (texts, labels, class_names, empty_rows): the texts and their string
        labels (ClassLabel names), the ClassLabel's names in its order (None
        for string or integer labels), and the rows of empty texts, dropped.
    """
    ds = load_split(data, split)
    source = source_name(data, split)
    check_column(ds, source, text_column, "text_column", "text (a string column)",
                 lambda f: _is_value(f, _STRING_TYPES))
    check_column(ds, source, label_column, "label_column",
                 "class labels (a ClassLabel, string or integer column)",
                 lambda f: type(f).__name__ == "ClassLabel" or _is_value(f, _LABEL_TYPES))
    feature = ds.features[label_column]
    names = list(feature.names) if type(feature).__name__ == "ClassLabel" else None
    texts, labels, empty = [], [], []
    for row, values in _rows(ds, (text_column, label_column)):
        text, label = values[text_column], values[label_column]
        if text is None or not text.strip():
            empty.append(f"row {row}")
            continue
        if label is None or (names is not None and not 0 <= label < len(names)):
            raise KerastuneError(
                f"data {source!r} row {row}: the label is {label!r}, not a class"
                + (f" of {', '.join(names)}" if names else "")
                + "; expected labelled examples (an unlabelled split, such as a "
                "benchmark's test split, cannot train or test)")
        labels.append(names[label] if names is not None else str(label))
        texts.append(text)
    return texts, labels, names, empty


def read_chat_records(data, split="train"):
    """The rows of a Hugging Face chat dataset split, as records for
    `data.chat`: (row number, {"messages": [...]}) from a `messages` column
    of role/content messages, else (row, {"prompt": ..., "response": ...})."""
    ds = load_split(data, split)
    source = source_name(data, split)
    features = ds.features
    if "messages" in features:
        check_column(ds, source, "messages", "",
                     "a list of {\"role\": ..., \"content\": ...} messages", _is_messages)
        return source, _rows(ds, ("messages",))
    if "prompt" in features or "response" in features:
        for column in ("prompt", "response"):
            check_column(ds, source, column, "", "text (a string column)",
                         lambda f: _is_value(f, _STRING_TYPES))
        return source, _rows(ds, ("prompt", "response"))
    raise KerastuneError(
        f"data {source!r} has no column 'messages' (role/content messages) nor 'prompt' and "
        f"'response': its columns are {columns_line(ds)}")


def _is_message_struct(feature):
    return (isinstance(feature, dict) and _is_value(feature.get("role"), _STRING_TYPES)
            and _is_value(feature.get("content"), _STRING_TYPES))


def _is_messages(feature):
    inner = getattr(feature, "feature", None)
    if isinstance(feature, (list, tuple)) and len(feature) == 1:
        inner = feature[0]
    return inner is not None and _is_message_struct(inner)
