"""What the model used, not what was logged (issue 30).

Each test compares what a path hands the model (pixels, the stop tokens
generation runs with, the LoRA scale a loaded adapter applies, the label
`predict` prints, the class a score is computed for) with a value computed
here, independently of the toolkit, on a fixture that does not hide the bug
(three classes, alpha != rank, an end token that is not literal text in the
template, a positive class that changes the figures). The recipes' own
`fit` calls are checked in tests/recipes (`tests/keras_spy.py`).
"""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from kerastune_lab import testing
from tests.conftest import recipe_path

# --- Pixels: training, validation, test and predict give the same image ---

def _by_pixels(paths, image_size):
    """{image bytes: path} of each file as `kerastune predict` reads it."""
    from kerastune_lab.data import images

    predicted = images.load_images(paths, image_size)
    assert predicted.dtype == np.float32
    return {image.tobytes(): path for image, path in zip(predicted, paths)}


def _images(dataset):
    """(images, labels) of every batch of a (images, labels) dataset."""
    xs, ys = [], []
    for x, y in dataset:
        xs.append(np.asarray(x))
        ys.append(np.asarray(y))
    return np.concatenate(xs), np.concatenate(ys)


def _assert_same_as_predict(dataset, paths, class_names, image_size, what):
    """Every image of `dataset` is, value for value, the image `predict`
    reads from one of `paths`, with the label of that file's class folder;
    each file once per epoch."""
    xs, ys = _images(dataset)
    known = _by_pixels(paths, image_size)
    assert xs.dtype == np.float32, what
    assert len(xs) == len(paths), what
    known_max = [np.frombuffer(k, "float32").max() for k in known]
    found = []
    for x, y in zip(xs, ys):
        path = known.get(x.tobytes())
        assert path is not None, (
            f"{what}: an image matches no file as predict reads it (range "
            f"{x.min():g}-{x.max():g}; predict's 0-{max(known_max):g})")
        assert class_names[int(y)] == os.path.basename(os.path.dirname(path)), (what, path)
        found.append(path)
    assert sorted(found) == sorted(paths), what
    # 0-255 whole values, as the presets' image converters expect.
    assert xs.min() >= 0 and xs.max() <= 255 and xs.max() > 128, what
    np.testing.assert_array_equal(xs, np.round(xs))


def _files(folder):
    return sorted(str(p) for p in pathlib.Path(folder).rglob("*.*"))


def test_split_tree_streams_give_predicts_pixels(tmp_path):
    """The X-ray loader: the training stream (the batches `fit` gets, before
    augmentation), `data.train`, validation and test each give every image
    exactly as `predict` (and `evaluate`) read the same file. A training
    stream alone rescaled to 0-1 (or decoded otherwise) fails."""
    from kerastune_lab.data import images, xray

    root = testing.make_chest_xray(tmp_path / "xray", {"train": (3, 5), "val": (2, 2),
                                                       "test": (2, 3)}, size=24)
    data = xray.load_split_tree(root, 24, batch_size=3, min_val_images=0, seed=3,
                                cache="none")
    assert data.validation["source"] == "val"
    names = data.class_names
    train = _files(root / "train")
    _assert_same_as_predict(data.train_stream.epoch(0), train, names, 24, "train stream")
    _assert_same_as_predict(data.train_stream.dataset(4).take(
        data.train_stream.steps_per_epoch), train, names, 24, "train stream, epoch 4")
    _assert_same_as_predict(data.train, train, names, 24, "data.train")
    _assert_same_as_predict(data.val, _files(root / "val"), names, 24, "val")
    _assert_same_as_predict(data.test, _files(root / "test"), names, 24, "test")
    # `kerastune evaluate`'s pipeline over a folder.
    paths, labels, folder_names, _ = images.scan_image_folder(root / "test")
    _assert_same_as_predict(images.pipeline(images.files_dataset(paths, labels, 24), 4),
                            _files(root / "test"), folder_names, 24, "evaluate")


def test_image_folder_streams_give_predicts_pixels(tmp_path):
    """The same for a class-folder dataset (cats_vs_dogs), cached in memory
    as a recipe's run keeps it."""
    from kerastune_lab.data import images

    root = testing.make_image_folder(tmp_path / "pets", ("bird", "cat", "dog"), per_class=4,
                                     size=20)
    data = images.load_image_folder(root, 20, batch_size=4, val_split=0.25, seed=1,
                                    cache="memory")
    every = _by_pixels(_files(root), 20)
    train_x, _ = _images(data.train_stream.epoch(0))
    val_x, _ = _images(data.val)
    assert len(train_x) == data.num_train and len(val_x) == data.num_val
    # The two splits are disjoint and together every file, each as predict reads it.
    seen = [every.get(x.tobytes()) for x in np.concatenate([train_x, val_x])]
    assert None not in seen and sorted(seen) == sorted(every.values())
    # A second epoch comes from the cache: still the same pixels.
    again, _ = _images(data.train_stream.epoch(1))
    assert sorted(every[x.tobytes()] for x in again) == sorted(seen[:len(train_x)])


# --- The label `kerastune predict` prints: the model's top class, through labels.json ---

@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory):
    """A cats_vs_dogs run on three classes (head only, trained enough to make
    the model's top class differ between images)."""
    from kerastune_lab.cli import main

    root = tmp_path_factory.mktemp("three")
    data = testing.make_image_folder(root / "pets", ("bird", "cat", "dog"), per_class=8)
    out = root / "run"
    try:
        main(["run", recipe_path("cats_vs_dogs"), "--smoke", "--output-dir", str(out),
              f"data={data}", "head_epochs=8", "epochs=0", "head_learning_rate=0.1"])
    except SystemExit as e:
        assert not e.code, e
    assert json.loads((out / "labels.json").read_text()) == ["bird", "cat", "dog"]
    return out, data


def test_predict_prints_the_top_class_through_labels_json(three_class_run, cli, tmp_path):
    import keras_hub

    from kerastune_lab.data import images
    from kerastune_lab.models import load_run_model
    from kerastune_lab.runs import RunDir

    out, data = three_class_run
    paths = [p for name in ("bird", "cat", "dog") for p in _files(pathlib.Path(data, name))[:3]]
    model = load_run_model(RunDir.open(str(out)), keras_hub.models.ImageClassifier,
                           compile=False)
    logits = np.asarray(model.predict(images.load_images(paths, 32), verbose=0), "float64")
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = probs.argmax(-1)
    assert len(set(top.tolist())) >= 2, top  # the fixture tells labels apart

    # labels.json as written, then in two other orders: the printed label is
    # always labels.json[argmax], with that class's probability.
    run = shutil.copytree(out, tmp_path / "run")
    for labels in (["bird", "cat", "dog"], ["dog", "bird", "cat"], ["cat", "dog", "bird"]):
        (run / "labels.json").write_text(json.dumps(labels))
        result = cli("predict", run, *paths)
        assert result.code == 0, result
        lines = [line.split("\t") for line in result.stdout.strip().splitlines()]
        assert [line[0] for line in lines] == paths
        assert [line[1] for line in lines] == [labels[i] for i in top], labels
        np.testing.assert_allclose([float(line[2]) for line in lines],
                                   probs[np.arange(len(paths)), top], atol=1e-3)


# --- LoRA: the alpha in the adapter file is the scale applied on loading ---

def test_lora_alpha_in_the_adapter_file_is_the_scale_applied(tmp_path):
    """rank 2, alpha 6: scale 3 (alpha == rank would make it 1 and hide a
    loader that ignores alpha)."""
    import keras
    import keras_hub

    from kerastune_lab.finetune import lora

    preset = testing.tiny_preset("llama")
    ids = np.random.default_rng(0).integers(4, 100, (2, 10)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}

    def logits(model):
        return keras.ops.convert_to_numpy(model.backbone(x))

    lm = keras_hub.models.CausalLM.from_preset(preset)
    base = logits(lm)
    lora.enable_lora(lm, 2, alpha=6.0, targets=["query", "value"])
    rng = np.random.default_rng(1)
    factors = {}
    for name, layer in lora.lora_state(lm).layers.items():
        a, b = rng.normal(0, 0.5, layer.lora_a.shape), rng.normal(0, 0.5, layer.lora_b.shape)
        layer.lora_a.assign(a)
        layer.lora_b.assign(b)
        factors[name] = (a, b)
    trained = logits(lm)
    path = lora.save_adapter(lm, tmp_path / "a.lora.h5", preset=preset)
    metadata = lora.read_adapter_metadata(path)
    assert (metadata["rank"], metadata["alpha"]) == (2, 6.0)

    fresh = keras_hub.models.CausalLM.from_preset(preset)
    lora.load_adapter(fresh, path, quantize_base=False)
    np.testing.assert_allclose(logits(fresh), trained, rtol=1e-4, atol=1e-5)
    # The update the loaded layers apply is 3 x A B (independently of the
    # layer's own bookkeeping: its output minus the base kernel's).
    name, (a, b) = next(iter(factors.items()))
    layer = lora.lora_state(fresh).layers[name]
    probe = np.random.default_rng(2).normal(size=(1, 3, a.shape[0])).astype("float32")
    assert getattr(layer, "bias", None) is None  # Llama's projections have none
    update = keras.ops.convert_to_numpy(layer(probe)) - np.einsum(
        layer.equation, probe, keras.ops.convert_to_numpy(layer.kernel))
    expected = 3.0 * np.einsum(layer.equation, probe,
                               layer.lora_factorisation.delta(a, b, 1.0))
    np.testing.assert_allclose(update, expected, rtol=1e-3, atol=1e-4)
    assert np.abs(trained - base).max() > 1e-3  # the adapter changes the output


# --- Generation: the stop tokens a Llama-style template actually runs with ---

def test_generation_stops_at_the_end_token_of_a_llama_template(monkeypatch):
    """The template spells the end token `{eos}`, not `</s>`: the stop ids
    `generate` receives must still hold the tokenizer's `</s>`, and a reply
    is cut there."""
    import keras_hub

    from kerastune_lab.data import chat
    from kerastune_lab.generate import ChatGenerator

    lm = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    tokenizer = lm.preprocessor.tokenizer
    assert "</s>" not in chat.EOS_TEMPLATE
    end, user, assistant = (tokenizer.token_to_id(t) for t in ("</s>", "<|user|>",
                                                                "<|assistant|>"))
    seen = []
    original = keras_hub.models.CausalLM.generate

    def generate(self, inputs, *args, **kwargs):
        seen.append(kwargs.get("stop_token_ids", args[1] if len(args) > 1 else None))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(keras_hub.models.CausalLM, "generate", generate)
    template = chat.ChatTemplate(tokenizer, chat.EOS_TEMPLATE)
    ChatGenerator(lm, template, sampler="greedy", max_length=24).replies(["Hello there"])
    assert len(seen) == 1 and seen[0] is not None
    assert sorted(int(i) for i in seen[0]) == sorted({end, user, assistant})
    # What generation returns past the stop token is not the reply.
    words = tokenizer.tokenize("good coffee").tolist() if hasattr(
        tokenizer.tokenize("good coffee"), "tolist") else list(tokenizer.tokenize("good coffee"))
    assert template.decode_reply(words + [end] + words) == "good coffee"


# --- Two classes: the positive class decides the figures ---

def test_two_class_figures_are_those_of_the_positive_class(tmp_path):
    """ROC AUC is the same for either class only when each is scored by its
    own probability; average precision, the threshold and its recall
    change with the positive class. Compared with scikit-learn here."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from kerastune_lab.evaluate import evaluate_classifier
    from kerastune_lab.runs import RunDir

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    p1 = np.array([.1, .4, .35, .8, .9, .7, .2, .65, .95, .55, .6, .45])
    probs = np.stack([1 - p1, p1], axis=-1)
    names = ["NORMAL", "PNEUMONIA"]
    figures = {}
    for positive in (0, 1):
        run = RunDir.create(str(tmp_path / names[positive]))
        summary = evaluate_classifier(run, y, probs, names, positive_class=names[positive],
                                      target_recall=0.75, prefix="test")
        is_pos, score = y == positive, probs[:, positive]
        assert summary["test_roc_auc"] == pytest.approx(roc_auc_score(is_pos, score))
        assert summary["test_average_precision"] == pytest.approx(
            average_precision_score(is_pos, score))
        chosen = summary["test_threshold"]
        assert summary["test_threshold_recall"] == pytest.approx(
            np.mean(score[is_pos] >= chosen))
        assert summary["test_threshold_recall"] >= 0.75
        figures[positive] = summary
    # The fixture tells the classes apart: a positive class ignored fails.
    assert figures[0]["test_roc_auc"] == pytest.approx(figures[1]["test_roc_auc"]) != 0.5
    assert abs(figures[0]["test_average_precision"]
               - figures[1]["test_average_precision"]) > 0.05
