"""Text-classification data: CSV/TSV/JSONL files and TFDS, splits, truncation counts."""

import json
import logging

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.data import text
from kerastune_lab.errors import KerastuneError


def _write(path, content):
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def test_csv_with_named_columns_drops_and_counts_empty_texts(tmp_path, caplog):
    path = testing.make_review_file(str(tmp_path / "IMDB Dataset.csv"), n=40, empty=3)
    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        data = text.load_text_data(path, text_column="review", label_column="sentiment",
                                   batch_size=8, test_split=0.25, val_split=0.2, seed=1)
    assert "dropped 3 empty text(s)" in caplog.text and "line 3" in caplog.text
    assert data.dropped_empty == {"train": 3, "test": 0}
    assert data.class_names == ["negative", "positive"]
    assert (data.num_train, data.num_val, data.num_test) == (24, 6, 10)
    assert sorted(data.test_labels.tolist()) == [0] * 5 + [1] * 5  # stratified
    texts, labels = [], []
    for x, y in data.train:
        assert x.dtype == "string" and y.dtype == "int32"
        texts += [t.decode() for t in x.numpy()]
        labels += y.numpy().tolist()
    assert sorted(texts) == sorted(data.train_texts) and sorted(labels) == [0] * 12 + [1] * 12
    # Each text keeps its own label: the positive ones hold positive words.
    for t, y in zip(texts, labels):
        assert any(w in t.split() for w in
                   (testing.POSITIVE_WORDS if y else testing.NEGATIVE_WORDS)), t
    assert not set(data.test_texts) & set(data.train_texts)


def test_jsonl_and_tsv_with_string_labels_and_a_test_file(tmp_path):
    rows = [{"body": f"{w} film number {i}", "stars": s}
            for i, (w, s) in enumerate(
                [("great", "five"), ("awful", "one"), ("fine", "three")] * 4)]
    train = _write(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows) + "\n")
    test = _write(tmp_path / "test.tsv", "stars\tbody\nthree\tan ok film\none\tbad\n")
    data = text.load_text_data(train, test, text_column="body", label_column="stars",
                               batch_size=4, val_split=0)
    assert data.class_names == ["five", "one", "three"]  # sorted label strings
    assert data.val is None and (data.num_train, data.num_val, data.num_test) == (12, 0, 2)
    assert data.test_texts == ["an ok film", "bad"] and data.test_labels.tolist() == [2, 1]


def test_tfds_imdb_reviews_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    from kerastune_lab import hub

    # mock_data stands in for download_and_prepare: there is no download
    # whose hosts must resolve (none resolves on an offline machine).
    monkeypatch.setattr(hub, "check_hosts_resolve", lambda *args, **kwargs: None)

    with tfds.testing.mock_data(num_examples=20):
        data = text.load_text_data("tfds:imdb_reviews", batch_size=4, val_split=0.2)
    assert data.class_names == ["neg", "pos"]  # the dataset's label names
    assert (data.num_train + data.num_val, data.num_test) == (20, 20)  # its own test split
    x, y = next(iter(data.train))
    assert x.dtype == "string" and set(y.numpy().tolist()) <= {0, 1}


def test_count_truncated_uses_the_model_tokenizer():
    import keras_hub

    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        testing.tiny_preset("distilbert"), sequence_length=6)
    texts = ["the movie was good",  # 4 words + [CLS] + [SEP] = 6: fits
             "the movie was very good",  # 7: cut
             "good", "the plot and the acting were bad"]  # fits, cut
    assert text.count_truncated(texts, preprocessor) == 2
    assert text.count_truncated(texts, preprocessor, batch_size=3) == 2
    assert text.count_truncated(texts[:1] + texts[2:3], preprocessor) == 0


@pytest.mark.parametrize("name, content, fragments", [
    ("a.csv", "review,label\ngood,pos\n", ["has no column 'text'", "'review', 'label'"]),
    ("a.csv", "text,label\n \n\"\",pos\n", ["holds no text", "all 2 are empty"]),
    ("a.csv", "text,label\ngood,pos\nnice,pos\n", ["single class ('pos')", "at least 2"]),
    ("a.csv", b"text,label\ngood,pos\ncaf\xe9,neg\n", ["line 3", "0xe9", "not UTF-8"]),
    ("a.csv", "text,label\ngood,pos\nbad,\n", ["line 3", "label is empty"]),
    ("a.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad"\n', ["line 2", "not valid JSON"]),
    ("a.jsonl", '{"text": "good", "label": "pos"}\n{"txt": "bad", "label": 1}\n',
     ["line 2", "no key 'text'"]),
    ("a.jsonl", '{"text": 5, "label": "pos"}\n', ["line 1", "the text is a int"]),
    ("a.txt", "good\n", ["expected tfds:NAME or a file ending in .csv"]),
])
def test_bad_files(tmp_path, name, content, fragments):
    path = _write(tmp_path / name, content)
    with pytest.raises(KerastuneError) as e:
        text.load_text_data(path, val_split=0)
    message = str(e.value)
    assert "\n" not in message and path in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_test_file_with_an_unknown_label(tmp_path):
    train = _write(tmp_path / "train.csv", "text,label\ngood,pos\nbad,neg\n")
    test = _write(tmp_path / "test.csv", "text,label\nmeh,neutral\n")
    with pytest.raises(KerastuneError, match="label.*'neutral'.*expected one of 'neg', 'pos'"):
        text.load_text_data(train, test, val_split=0)


def test_too_small_for_a_stratified_split(tmp_path):
    path = _write(tmp_path / "t.csv", "text,label\ngood,pos\nbad,neg\nnice,pos\n")
    with pytest.raises(KerastuneError, match="cannot hold out a stratified test_split"):
        text.load_text_data(path, val_split=0)


def test_missing_file_and_bad_fractions(tmp_path):
    with pytest.raises(KerastuneError, match="does not exist"):
        text.load_text_data(str(tmp_path / "none.csv"))
    with pytest.raises(KerastuneError, match="test_split=1.5"):
        text.load_text_data(str(tmp_path / "none.csv"), test_split=1.5)


def test_labels_are_kept_as_written(tmp_path):
    # Numbers and spaces around labels: strings, stripped.
    path = _write(tmp_path / "t.csv", "text,label\na,1\nb, 0\nc,1\nd,0\n")
    read = text.read_text_file(path)
    assert read.labels == ["1", "0", "1", "0"] and read.dropped_empty == 0
    np.testing.assert_array_equal(text.encode_labels(read.labels, ["0", "1"], path), [1, 0, 1, 0])


def test_rename_labels_keeps_order_and_unknown_names():
    names = {"neg": "NEGATIVE", "pos": "POSITIVE"}
    assert text.rename_labels(["neg", "pos"], names) == ["NEGATIVE", "POSITIVE"]
    assert text.rename_labels(["pos", "meh", "neg"], names) == ["POSITIVE", "meh", "NEGATIVE"]
    with pytest.raises(KerastuneError, match="same name"):
        text.rename_labels(["neg", "NEGATIVE"], names)
