"""Bad input across the CLI: one table, every command and every data format.

Each row gives exit code 2 and one line that names the input and what was
expected, with no traceback, and leaves the finished run directories of this
module as they were (file tree and content hashes compared after each row).
The runs are made by hand once per module from the tiny presets: an image
classifier run, a LoRA chat run (adapter on the tiny GPT-2), and a text run's
config without its model.
"""

import json
import os

import pytest

from kerastune_lab import testing
from kerastune_lab.runs import RunDir
from tests.conftest import assert_one_line_error, file_tree, recipe_path

CATS = recipe_path("cats_vs_dogs")
XRAY = recipe_path("xray_pneumonia")
IMDB = recipe_path("imdb_sentiment")
SARCASM = recipe_path("sarcastic_chat")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"image", "lora", "text"}: finished run directories, made by hand."""
    import keras_hub

    from kerastune_lab.finetune import lora
    from kerastune_lab.generate import ADAPTER_FILE, CHAT_FILE
    from kerastune_lab.models import load_image_classifier

    root = tmp_path_factory.mktemp("runs")
    image = RunDir.create(root / "image")
    image.write_json("config.json", {"recipe": "cats_vs_dogs",
                                     "config": {"image_size": 32, "preset": "tiny"}})
    image.write_json("labels.json", ["cat", "dog"])
    image.save_model(load_image_classifier(testing.tiny_preset("resnet"), num_classes=2))
    image.finish()

    preset = testing.tiny_preset("gpt2")
    lora_run = RunDir.create(root / "lora")
    lora_run.write_json("config.json", {"recipe": "lora_chat", "config": {"dtype": "float32"}})
    lora_run.write_json(CHAT_FILE, {"template": "{prompt}\n{response}{eos}"})
    lm = keras_hub.models.CausalLM.from_preset(preset)
    lora.enable_lora(lm, rank=2)
    lora.save_adapter(lm, lora_run.file(ADAPTER_FILE), preset=preset)
    lora_run.finish()

    text = RunDir.create(root / "text")
    text.write_json("config.json", {"recipe": "imdb_sentiment",
                                    "config": {"sequence_length": 16}})
    text.write_json("labels.json", ["neg", "pos"])
    text.finish()
    return {"image": image.path, "lora": lora_run.path, "text": text.path}


snapshot = file_tree


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Bad (and a few good) inputs on disk, made once."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "recipe.txt").write_text("print('not a recipe')\n")
    (d / "notes.txt").write_text("not an image\n")
    (d / "afile").write_text("x")
    testing.make_image_folder(d / "oneclass", ("cat",), per_class=2)
    testing.make_image_folder(d / "birds", ("cat", "bird"), per_class=1)
    (d / "emptydata").mkdir()
    xray = testing.make_chest_xray(d / "chest_xray", counts={"train": (2, 2), "val": (1, 1),
                                                               "test": (1, 1)})
    import shutil

    shutil.rmtree(os.path.join(xray, "test"))
    (d / "nocols.csv").write_text("review,stars\ngreat film,5\nawful,1\n")
    (d / "latin1.csv").write_bytes("text,label\ngood,pos\ncaf\xe9 bad,neg\n".encode("latin-1"))
    (d / "broken.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", \n')
    (d / "chat_broken.jsonl").write_text('{"prompt": "hi", "response": "hello"}\nnot json\n')
    (d / "chat_empty.jsonl").write_text('{"prompt": "hi", "response": "hello"}\n'
                                        '{"prompt": "and?", "response": ""}\n')
    (d / "adapter.txt").write_text("not an adapter")
    (d / "corrupt.lora.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    (d / "weights.pt").write_bytes(b"\x80\x04pickle")
    evil = d / "evil_preset"
    shutil.copytree(testing.tiny_preset("resnet"), evil)
    config = json.loads((evil / "config.json").read_text())
    config["config"]["extra"] = {"class_name": "Lambda", "config": {}}
    (evil / "config.json").write_text(json.dumps(config))
    (d / "nomodel").mkdir()
    (d / "nomodel" / "config.json").write_text('{"config": {"image_size": 32}}')
    (d / "nomodel" / "labels.json").write_text('["cat", "dog"]')
    (d / "existing_output").mkdir()
    (d / "userfolder" / "data").mkdir(parents=True)  # a folder of the user's: no run
    (d / "userfolder" / "thesis.txt").write_text("four years of work\n")
    (d / "userfolder" / "notes.md").write_text("# notes\n")
    (d / "oldrun").mkdir()  # config.json alone: not a run of an earlier version either
    (d / "oldrun" / "config.json").write_text('{"recipe": "cats_vs_dogs", "config": {}}')
    # A quoted field of 140,000 characters: over the csv module's 128 KiB limit.
    (d / "longfield.csv").write_text('text,label\ngood,pos\n"' + "a" * 140_000 + '",neg\n')
    chat_ok = '{"prompt": "hi", "response": "hello"}\n'
    (d / "chat_surrogate.jsonl").write_text(chat_ok + '{"prompt": "caf\\ud800", '
                                            '"response": "hello"}\n')
    (d / "chat_deep.jsonl").write_text(chat_ok + '{"prompt": ' + "[" * 100_000 + "]" * 100_000
                                       + ', "response": "x"}\n')
    (d / "text_deep.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": '
                                       + "[" * 100_000 + "]" * 100_000 + ', "label": "neg"}\n')
    (d / "text_surrogate.jsonl").write_text('{"text": "good", "label": "pos"}\n'
                                            '{"text": "bad \\udc00", "label": "neg"}\n')
    (d / "prompts_latin1.txt").write_bytes("caf\xe9?\n".encode("latin-1"))
    return d


def _cut(size):
    def cut(path):
        with open(path, "r+b") as f:
            f.truncate(size)
    return cut


def _weights_of_nothing(path):
    """An HDF5 file with the groups of a Keras weights file, holding no weights."""
    import h5py

    with h5py.File(path, "w") as f:
        f.create_group("layers")
        f.create_group("vars")


def _weights_changed(path):
    """One weight of a Keras weights file changed in place: a whole HDF5 file."""
    import h5py

    with h5py.File(path, "r+") as f:
        name = []
        f.visititems(lambda n, obj: name.append(n) if isinstance(obj, h5py.Dataset)
                     and not name else None)
        f[name[0]][...] = f[name[0]][...] + 1


def _adapter_nan(path):
    """A NaN in the first LoRA factor of an adapter file."""
    import h5py

    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda name, item: names.append(name)
                     if isinstance(item, h5py.Dataset) else None)
        data = f[sorted(names)[0]]
        values = data[()]
        values.flat[0] = float("nan")
        data[...] = values


def _adapter_rank(rank):
    """The adapter's metadata recording another rank."""
    def set_rank(path):
        import h5py

        with h5py.File(path, "r+") as f:
            metadata = json.loads(f.attrs["metadata"])
            metadata["rank"] = rank
            f.attrs["metadata"] = json.dumps(metadata)
    return set_rank


WEIGHTS = "model/model.weights.h5"
ADAPTER = "adapter.lora.h5"
# Rows whose "{damaged}" is a copy of one of the runs (in the row's own
# tmp_path) with files replaced: {id: (run, {relative path: bytes, or a
# function of the path})}. The shared runs are never touched.
DAMAGED = {
    "predict-weights-cut-short": ("image", {WEIGHTS: _cut(100)}),
    "predict-weights-garbage": ("image", {WEIGHTS: b"not hdf5 at all" * 100}),
    "predict-weights-changed": ("image", {WEIGHTS: _weights_changed}),
    "predict-weights-missing": ("image", {WEIGHTS: os.remove}),
    # A run saved before SHA256SUMS: the weights are checked by loading them.
    "predict-weights-of-nothing": ("image", {WEIGHTS: _weights_of_nothing,
                                             "model/SHA256SUMS": os.remove}),
    "predict-model-config-not-json": ("image", {"model/config.json": b'{"class_name": '}),
    "predict-labels-not-json": ("image", {"labels.json": b'["cat", "do'}),
    "predict-labels-not-a-list": ("image", {"labels.json": b'{"cat": 0, "dog": 1}'}),
    "predict-labels-not-strings": ("image", {"labels.json": b'["cat", 7]'}),
    "predict-config-not-json": ("image", {"config.json": b'{"recipe": "cats_vs_dogs", "con'}),
    "predict-config-not-a-dict": ("image", {"config.json": b'{"config": [32]}'}),
    "predict-image-size-a-string": ("image", {"config.json": b'{"config": {"image_size": "32"}}'}),
    "predict-threshold-not-a-class": ("image", {"threshold.json": json.dumps(
        {"positive_class": "PNEUMONIA", "threshold": 0.4, "target_recall": 0.9}).encode()}),
    "predict-text-labels-not-utf8": ("text", {"labels.json": b'["neg", "p\xf6s"]'}),
    "evaluate-weights-cut-short": ("image", {WEIGHTS: _cut(1000)}),
    "evaluate-labels-not-json": ("image", {"labels.json": b"cat\ndog\n"}),
    "evaluate-image-size-a-string": ("image", {"config.json":
                                               b'{"config": {"image_size": "big"}}'}),
    "chat-chat-json-garbage": ("lora", {"chat.json": b"\x00\x01garbage{"}),
    "chat-chat-json-no-template": ("lora", {"chat.json": b'{"template": 5}'}),
    "chat-config-not-json": ("lora", {"config.json": b"{"}),
    "export-weights-cut-short": ("image", {WEIGHTS: _cut(100)}),
    "export-labels-not-json": ("image", {"labels.json": b"[cat, dog]"}),
    "export-config-not-a-dict": ("image", {"config.json": b"[1, 2]"}),
    "export-chat-json-garbage": ("lora", {"chat.json": b"garbage"}),
    # Adapters (issue 23.4): a NaN factor, a rank that would allocate without end
    "chat-adapter-nan": ("lora", {ADAPTER: _adapter_nan}),
    "merge-adapter-nan": ("lora", {ADAPTER: _adapter_nan}),
    "chat-adapter-rank-huge": ("lora", {ADAPTER: _adapter_rank(10**9)}),
    "merge-adapter-rank-a-string": ("lora", {ADAPTER: _adapter_rank("2")}),
}
DAMAGE_FIX = "re-run the recipe or restore the file"


# (id, args, fragments): "{in}" is the inputs folder, "{image}", "{lora}",
# "{text}" the finished runs.
CASES = [
    # run: command line and config
    ("run-unknown-backend", ["run", CATS, "--backend", "theano"],
     ["unknown backend", "theano", "expected one of"]),
    ("run-recipe-not-py", ["run", "{in}/recipe.txt"], ["recipe.txt", "expected a Python file"]),
    ("run-recipe-missing", ["run", "{in}/nope.py"], ["nope.py", "does not exist"]),
    # a misspelt key, recipe or preset ("did you mean"): tests/test_did_you_mean.py
    ("run-wrong-type", ["run", CATS, "--smoke", "learning_rate=fast"],
     ["learning_rate=fast", "expected float"]),
    ("run-out-of-range", ["run", CATS, "--smoke", "epochs=-1"], ["epochs=-1", "expected >= 0"]),
    ("run-not-key-value", ["run", CATS, "--smoke", "epochs"], ["'epochs'", "expected KEY=VALUE"]),
    ("run-unknown-option", ["run", CATS, "--smoke", "--epochs", "3"], ["--epochs"]),
    ("run-onto-finished-run", ["run", CATS, "--smoke", "--output-dir", "{image}"],
     ["{image}", "finished run", "--overwrite"]),
    ("run-overwrite-a-file", ["run", CATS, "--smoke", "--overwrite", "--output-dir",
                              "{in}/afile"], ["afile", "is a file"]),
    # run: a folder that is not a run is never written into nor replaced
    ("run-overwrite-a-user-folder", ["run", CATS, "--smoke", "--overwrite", "--output-dir",
                                     "{in}/userfolder"],
     ["output dir '{in}/userfolder' is not a kerastune run (it holds data/, notes.md and 1 "
      "more): choose another --output-dir; --overwrite replaces only run folders"]),
    ("run-into-a-user-folder", ["run", CATS, "--smoke", "--output-dir", "{in}/userfolder"],
     ["'{in}/userfolder' is not a kerastune run", "data/, notes.md and 1 more",
      "choose another --output-dir (a new or empty folder)"]),
    ("run-overwrite-config-json-alone", ["run", CATS, "--smoke", "--overwrite", "--output-dir",
                                         "{in}/oldrun"],
     ["oldrun", "not a kerastune run", "config.json"]),
    # run: data formats
    ("images-missing", ["run", CATS, "--smoke", "data={in}/nowhere"],
     ["data folder", "nowhere", "does not exist"]),
    ("images-a-file", ["run", CATS, "--smoke", "data={in}/notes.txt"],
     ["notes.txt", "expected a folder with one subfolder per class"]),
    ("images-one-class", ["run", CATS, "--smoke", "data={in}/oneclass"],
     ["oneclass", "one class only", "at least 2"]),
    ("images-empty", ["run", CATS, "--smoke", "data={in}/emptydata"],
     ["emptydata", "holds no readable image"]),
    ("tfds-unknown", ["run", CATS, "--smoke", "data=tfds:cats_vs_dogz"],
     ["unknown TFDS dataset 'cats_vs_dogz'", "cats_vs_dogs"]),
    # The real default data (TFDS cats_vs_dogs, not downloaded here): the
    # preset is refused before any dataset is looked at.
    ("preset-unknown-before-data", ["run", CATS, "preset=no_such_preset_xyz"],
     ["unknown preset 'no_such_preset_xyz'", "kerastune presets"]),
    ("preset-typo", ["run", CATS, "--smoke", "preset=resnet_50_imagenett"],
     ["unknown preset 'resnet_50_imagenett'", "resnet_50_imagenet"]),
    ("preset-lambda", ["run", CATS, "--smoke", "preset={in}/evil_preset"],
     ["evil_preset", "Lambda", "refused"]),
    ("xray-no-test-split", ["run", XRAY, "--smoke", "data={in}/chest_xray"],
     ["chest_xray", "no 'test' folder", "expected"]),
    ("csv-missing-columns", ["run", IMDB, "--smoke", "data={in}/nocols.csv"],
     ["nocols.csv", "no column", "text_column="]),
    ("csv-not-utf8", ["run", IMDB, "--smoke", "data={in}/latin1.csv", "text_column=text",
                      "label_column=label"], ["latin1.csv", "line 3", "UTF-8"]),
    ("jsonl-broken-line", ["run", IMDB, "--smoke", "data={in}/broken.jsonl",
                           "text_column=text", "label_column=label"],
     ["broken.jsonl", "line 2", "not valid JSON"]),
    ("chat-jsonl-broken-line", ["run", SARCASM, "--smoke", "data={in}/chat_broken.jsonl"],
     ["chat_broken.jsonl", "line 2"]),
    ("chat-jsonl-empty-response", ["run", SARCASM, "--smoke", "data={in}/chat_empty.jsonl"],
     ["chat_empty.jsonl", "line 2", "empty"]),
    ("images-one-per-class", ["run", CATS, "--smoke", "data={in}/birds"],
     ["birds", "class 'bird' has 1 image", "expected at least 2 per class"]),
    ("csv-field-over-128k", ["run", IMDB, "--smoke", "data={in}/longfield.csv",
                             "text_column=text", "label_column=label"],
     ["longfield.csv", "line 3", "a field longer than 131072 characters (128 KiB)",
      "a quote left open"]),
    ("jsonl-nested-too-deep", ["run", IMDB, "--smoke", "data={in}/text_deep.jsonl",
                               "text_column=text", "label_column=label"],
     ["text_deep.jsonl", "line 2", "JSON nested too deeply"]),
    ("jsonl-lone-surrogate", ["run", IMDB, "--smoke", "data={in}/text_surrogate.jsonl",
                              "text_column=text", "label_column=label"],
     ["text_surrogate.jsonl", "line 2", "the text", "lone surrogate \\udc00"]),
    ("chat-jsonl-lone-surrogate", ["run", SARCASM, "--smoke",
                                   "data={in}/chat_surrogate.jsonl"],
     ["chat_surrogate.jsonl", "line 2", "the prompt", "lone surrogate \\ud800",
      "not valid Unicode"]),
    ("chat-jsonl-nested-too-deep", ["run", SARCASM, "--smoke", "data={in}/chat_deep.jsonl"],
     ["chat_deep.jsonl", "line 2", "JSON nested too deeply"]),
    # The preset's longest sequence, read from its config.json before any
    # weights (the tiny DistilBERT takes 128 tokens, the tiny GPT-2 256).
    ("sequence-length-over-preset", ["run", IMDB, "--smoke", "sequence_length=1000"],
     ["sequence_length=1000", "expected at most 128", "tiny_distilbert", "max_sequence_length"]),
    ("chat-sequence-length-over-preset", ["run", SARCASM, "--smoke", "sequence_length=1000"],
     ["sequence_length=1000", "expected at most 256", "tiny_gpt2"]),
    ("override-nested-minus", ["run", CATS, "--smoke", "epochs=" + "-" * 3000 + "1"],
     ["override epochs=---", "(3001 characters)", "expected int"]),
    # predict
    ("predict-run-missing", ["predict", "{in}/norun", "{in}/notes.txt"],
     ["norun", "does not exist"]),
    ("predict-not-a-run", ["predict", "{in}/emptydata", "{in}/notes.txt"],
     ["emptydata", "no config.json"]),
    ("predict-run-without-model", ["predict", "{in}/nomodel", "{in}/oneclass/cat/cat_0000.jpg"],
     ["nomodel", "no model/ folder"]),
    ("predict-not-an-image", ["predict", "{image}", "{in}/notes.txt"],
     ["notes.txt", "cannot be read", "expected a JPEG"]),
    ("predict-image-missing", ["predict", "{image}", "{in}/gone.jpg"],
     ["gone.jpg", "does not exist"]),
    ("predict-text-on-image-run", ["predict", "{image}", "--text", "great"],
     ["{image}", "not a text-classification run"]),
    ("predict-image-on-text-run", ["predict", "{text}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["{text}", "not an image-classification run"]),
    ("predict-nothing", ["predict", "{image}"], ["give image files or --text"]),
    # predict: a damaged run (a copy, see DAMAGED), found before Keras loads
    ("predict-weights-cut-short", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["{damaged}", "model/model.weights.h5 is damaged (cut short: 100 of",
      "expected the weights the run saved", DAMAGE_FIX]),
    ("predict-weights-garbage", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["model/model.weights.h5 is damaged (not an HDF5 file)"]),
    ("predict-weights-changed", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["{damaged}", "model/model.weights.h5 is damaged (its bytes are not those whose SHA-256 "
      "SHA256SUMS records)", "expected the weights the run saved", DAMAGE_FIX]),
    ("predict-weights-missing", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["{damaged}", "model/model.weights.h5 is damaged (missing; SHA256SUMS records it)"]),
    ("predict-weights-of-nothing", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["{damaged}", "model/ cannot be loaded", "could not be loaded",
      "expected the model the run saved"]),
    ("predict-model-config-not-json", ["predict", "{damaged}",
                                       "{in}/oneclass/cat/cat_0000.jpg"],
     ["run model '{damaged}/model': config.json is not valid JSON"]),
    ("predict-labels-not-json", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["run dir '{damaged}': labels.json is damaged (not valid JSON at line 1): expected the "
      "list of class names the run wrote; re-run the recipe or restore the file"]),
    ("predict-labels-not-a-list", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["labels.json is damaged (an object, not a list of names)"]),
    ("predict-labels-not-strings", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["labels.json is damaged (class 2 is a number, 7)"]),
    ("predict-config-not-json", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["config.json is damaged (not valid JSON at line 1)",
      "expected the JSON object the run wrote, its settings under \"config\"", DAMAGE_FIX]),
    ("predict-config-not-a-dict", ["predict", "{damaged}", "{in}/oneclass/cat/cat_0000.jpg"],
     ["config.json is damaged (its \"config\" is a list, not an object)"]),
    # The run's config value of the wrong type is the run's, not the image's.
    ("predict-image-size-a-string", ["predict", "{damaged}",
                                     "{in}/oneclass/cat/cat_0000.jpg"],
     ["config.json is damaged (its image_size is a string, '32')",
      "expected image_size a whole number of pixels"]),
    ("predict-threshold-not-a-class", ["predict", "{damaged}",
                                       "{in}/oneclass/cat/cat_0000.jpg"],
     ["threshold.json is damaged (its positive_class 'PNEUMONIA' is not one of ['cat', "
      "'dog'])", "expected the decision threshold the run wrote"]),
    ("predict-text-labels-not-utf8", ["predict", "{damaged}", "--text", "great"],
     ["labels.json is damaged (byte 0xf6 at offset 10 is not UTF-8)"]),
    ("predict-text-not-utf8", ["predict", "{text}", "--text", "caf\udce9"],
     ["--text: byte 0xe9 at position 4 is not UTF-8; expected UTF-8 text"]),
    ("predict-second-text-not-utf8", ["predict", "{text}", "--text", "fine", "--text",
                                      "\udcff"], ["--text 2: byte 0xff at position 1"]),
    # evaluate
    # A tree with one class folder is a valid test split (tests/recipes/
    # test_xray_pneumonia.py); a class folder itself, given as the tree, is not.
    ("evaluate-class-folder-not-tree", ["evaluate", "{image}", "--data", "{in}/oneclass/cat"],
     ["oneclass/cat", "holds no readable image", "subfolders"]),
    ("evaluate-unknown-class", ["evaluate", "{image}", "--data", "{in}/birds"],
     ["birds", "'bird'", "expected class subfolders among"]),
    ("evaluate-data-missing", ["evaluate", "{image}", "--data", "{in}/nowhere"],
     ["nowhere", "does not exist"]),
    ("evaluate-text-run", ["evaluate", "{text}", "--data", "{in}/birds"],
     ["{text}", "not an image-classification run"]),
    ("evaluate-batch-size-0", ["evaluate", "{image}", "--data", "{in}/birds", "--batch-size",
                               "0"], ["--batch-size", "0 is not in the range x>=1"]),
    ("evaluate-weights-cut-short", ["evaluate", "{damaged}", "--data", "{in}/birds"],
     ["{damaged}", "model/model.weights.h5 is damaged (cut short: 1000 of"]),
    ("evaluate-labels-not-json", ["evaluate", "{damaged}", "--data", "{in}/birds"],
     ["labels.json is damaged (not valid JSON at line 1)"]),
    ("evaluate-image-size-a-string", ["evaluate", "{damaged}", "--data", "{in}/birds"],
     ["config.json is damaged (its image_size is a string, 'big')"]),
    # chat
    ("chat-on-classifier-run", ["chat", "{image}"], ["{image}", "no chat.json", "not a chat run"]),
    ("chat-adapter-not-h5", ["chat", "--adapter", "{in}/adapter.txt"],
     ["adapter.txt", "expected an h5 file"]),
    ("chat-adapter-corrupt-h5", ["chat", "--adapter", "{in}/corrupt.lora.h5"],
     ["corrupt.lora.h5", "not a kerastune LoRA adapter"]),
    ("chat-run-and-adapter", ["chat", "{lora}", "--adapter", "{in}/corrupt.lora.h5"],
     ["RUN_DIR or --adapter"]),
    ("chat-bad-temperature", ["chat", "{lora}", "--temperature", "0"],
     ["temperature=0.0", "above 0"]),
    ("chat-chat-json-garbage", ["chat", "{damaged}"],
     ["{damaged}", "chat.json is damaged (not valid JSON at line 1)",
      "expected the chat settings the run wrote", DAMAGE_FIX]),
    ("chat-chat-json-no-template", ["chat", "{damaged}"],
     ["chat.json is damaged (its \"template\" is a number)"]),
    ("chat-config-not-json", ["chat", "{damaged}"],
     ["config.json is damaged (not valid JSON at line 1)"]),
    # A line of standard input (here the file after "<") that is not UTF-8.
    ("chat-stdin-not-utf8", ["chat", "{lora}", "<{in}/prompts_latin1.txt"],
     ["standard input line 1: byte 0xe9 at position 4 is not UTF-8", "one prompt a line"]),
    ("chat-preset-typo",
     ["chat", "--adapter", "{lora}/adapter.lora.h5", "--preset", "gpt2_bsae_en"],
     ["unknown preset 'gpt2_bsae_en'", "gpt2_base_en"]),
    # merge
    ("merge-onto-existing-output", ["merge", "{lora}", "--output", "{in}/existing_output"],
     ["existing_output", "already exists"]),
    ("merge-non-lora-run", ["merge", "{image}", "--output", "{in}/merged"],
     ["{image}", "adapter.lora.h5", "expected a LoRA run"]),
    ("merge-pickle-adapter", ["merge", "{in}/weights.pt", "--output", "{in}/merged"],
     ["weights.pt", "expected an h5 file"]),
    # export
    ("export-onto-existing-output",
     ["export", "{lora}", "--format", "peft", "--output", "{in}/existing_output"],
     ["existing_output", "already exists"]),
    ("export-weights-cut-short", ["export", "{damaged}", "--format", "keras", "--output",
                                  "{in}/exported"],
     ["{damaged}", "model/model.weights.h5 is damaged (cut short"]),
    ("export-labels-not-json", ["export", "{damaged}", "--format", "keras", "--output",
                                "{in}/exported"], ["labels.json is damaged (not valid JSON"]),
    ("export-config-not-a-dict", ["export", "{damaged}", "--format", "serving", "--output",
                                  "{in}/exported"], ["config.json is damaged (a list, not an"]),
    ("export-chat-json-garbage", ["export", "{damaged}", "--format", "peft", "--output",
                                  "{in}/exported"], ["chat.json is damaged (not valid JSON"]),
    ("export-peft-of-image-run", ["export", "{image}", "--format", "peft", "--output",
                                  "{in}/exported"], ["{image}", "peft"]),
    # adapters: checked before anything of them is used
    ("chat-adapter-nan", ["chat", "{damaged}", "--sampler", "greedy", "<{in}/notes.txt"],
     ["adapter.lora.h5", "holds NaN or inf", "expected finite values"]),
    ("merge-adapter-nan", ["merge", "{damaged}", "--output", "{in}/merged"],
     ["adapter.lora.h5", "holds NaN or inf"]),
    ("chat-adapter-rank-huge", ["chat", "{damaged}", "<{in}/notes.txt"],
     ["adapter.lora.h5", "metadata rank=1000000000", "at most 4096"]),
    ("merge-adapter-rank-a-string", ["merge", "{damaged}", "--output", "{in}/merged"],
     ["adapter.lora.h5", "metadata rank='2'"]),
    # recipes by name, cp
    ("cp-onto-an-existing-file", ["cp", "lora_chat", "{in}/notes.txt"],
     ["notes.txt", "already exists"]),
    ("recipes-extra-argument", ["recipes", "lora_chat"], ["unexpected extra argument"]),
    # plan: the memory plan of a causal LM recipe (issue 26)
    ("plan-not-a-causal-lm", ["plan", CATS], ["cats_vs_dogs", "causal LM recipes"]),
    ("plan-wrong-type", ["plan", SARCASM, "--smoke", "batch_size=many"],
     ["batch_size=many", "expected int"]),
    ("plan-unknown-recipe", ["plan", "{in}/nope.py"], ["nope.py", "does not exist"]),
    # (an unknown preset: tests/test_hub.py, in a process of its own, as the
    # plan loads jax whatever the backend of this one)
    # info, presets
    ("info-bad-backend", ["info", "--backend", "mxnet"], ["unknown backend", "mxnet"]),
    ("presets-unknown-kind", ["presets", "image_clasifier"],
     ["image_clasifier", "image_classifier"]),
]


def _damaged_copy(runs, case, tmp_path):
    """The damaged copy of a run for row `case` (see DAMAGED), in tmp_path."""
    import shutil

    source, files = DAMAGED[case]
    copy = tmp_path / f"damaged-{source}"
    shutil.copytree(runs[source], copy)
    for name, damage in files.items():
        if callable(damage):
            damage(str(copy / name))
        else:
            (copy / name).write_bytes(damage)
    return str(copy)


@pytest.mark.parametrize("case, args, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input(cli, runs, inputs, tmp_path, monkeypatch, case, args, fragments):
    before = {name: snapshot(path) for name, path in runs.items()}
    listing = sorted(os.listdir(inputs))
    mine = snapshot(inputs / "userfolder")
    names = dict(runs, **{"in": str(inputs)})
    if case in DAMAGED:
        names["damaged"] = _damaged_copy(runs, case, tmp_path)
        damaged_before = snapshot(names["damaged"])
    fill = lambda s: _fill(str(s), names)  # noqa: E731
    args = list(map(fill, args))
    if args[-1].startswith("<"):  # standard input from that file
        import io

        with open(args.pop()[1:], "rb") as f:
            stdin = io.TextIOWrapper(io.BytesIO(f.read()), encoding="utf-8")
        monkeypatch.setattr("sys.stdin", stdin)
    out = tmp_path / "out"
    if args[0] == "run" and "--output-dir" not in args:
        args += ["--output-dir", str(out)]
    result = cli(*args)
    assert_one_line_error(result, *map(fill, fragments))
    assert not out.exists()
    assert {name: snapshot(path) for name, path in runs.items()} == before
    assert sorted(os.listdir(inputs)) == listing  # no output, no half-made folder
    assert snapshot(inputs / "userfolder") == mine  # a folder of the user's: untouched
    assert not [n for n in os.listdir(os.path.dirname(runs["image"]))
                if n.endswith((".replaced", ".old")) or n.startswith(".")]
    if case in DAMAGED:  # looked at only: nothing written into the damaged run either
        assert snapshot(names["damaged"]) == damaged_before


def _fill(text, names):
    """`text` with "{in}", "{image}", ... replaced (other braces kept)."""
    for name, value in names.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def test_every_cli_command_has_a_row():
    # A new `kerastune` command fails this until the table covers it.
    from kerastune_lab.cli import cli as group

    assert {c[1][0] for c in CASES} == set(group.commands)


# ---------------------------------------------------------------- data=hf:NAME
# Hugging Face datasets (issue 29), through the real `datasets` code and a
# loopback Hub (tests/hubs.py: `HubServer.serve_hf_dataset`). `datasets` and
# huggingface_hub read HF_ENDPOINT and HF_HUB_OFFLINE at import, so these rows
# run in fresh processes, one per kind of Hub (`HF_ROWS`), every row of a
# kind in the same process, each row's stderr kept apart. A refused input
# exits 2 (bad input); a dataset that cannot be downloaded exits 1, as a
# preset or TFDS dataset that cannot (`DownloadFailed`).
HF_REVIEWS = "org/tiny_reviews"

# (id, hub: "online" | "offline" (no server, HF_HUB_OFFLINE=1) | "no-network"
# (no server) | "no-datasets" (the library missing), args, exit code, fragments)
HF_CASES = [
    ("hf-missing-column", "online", ["run", IMDB, "--smoke", f"data=hf:{HF_REVIEWS}",
                                     "text_column=review", "label_column=label"], 2,
     [f"hf:{HF_REVIEWS}[train]", "no column 'review'", "its columns are 'text' (string), "
      "'label' (class label: neg, pos), 'stars' (float32)", "set text_column="]),
    ("hf-label-column-wrong-type", "online",
     ["run", IMDB, "--smoke", f"data=hf:{HF_REVIEWS}", "text_column=text",
      "label_column=stars"], 2,
     ["column 'stars' is float32, expected class labels (a ClassLabel, string or integer "
      "column)", "set label_column="]),
    ("hf-unknown-config", "online", ["run", IMDB, "--smoke", f"data=hf:{HF_REVIEWS}:sst2",
                                     "text_column=text", "label_column=label"], 2,
     ["no config 'sst2'", "it has plain_text", f"hf:{HF_REVIEWS}:CONFIG"]),
    ("hf-unknown-split", "online", ["run", IMDB, "--smoke", f"data=hf:{HF_REVIEWS}@valid",
                                    "text_column=text", "label_column=label"], 2,
     ["no 'valid' split", "it has train, test"]),
    ("hf-malformed-name", "online", ["run", IMDB, "--smoke", "data=hf:org/a/b"], 2,
     ["'hf:org/a/b'", "expected hf:NAME, hf:NAME:CONFIG"]),
    ("hf-chat-no-chat-columns", "online", ["run", SARCASM, "--smoke",
                                           f"data=hf:{HF_REVIEWS}"], 2,
     ["no column 'messages'", "nor 'prompt' and 'response'", "'text' (string)"]),
    ("hf-chat-heldout-system-role", "online", ["run", SARCASM, "--smoke",
                                               "heldout_data=hf:org/system_chats@train"], 2,
     ["chat data 'hf:org/system_chats[train]' row 0", "role 'system'"]),
    ("hf-gated-401", "online", ["run", IMDB, "--smoke", "data=hf:org/gated"], 1,
     ["cannot download Hugging Face dataset 'org/gated'", "access refused (a gated dataset)",
      "https://huggingface.co/datasets/org/gated", "HF_TOKEN"]),
    ("hf-missing-404", "online", ["run", IMDB, "--smoke", "data=hf:org/no_such_data"], 1,
     ["'org/no_such_data'", "does not exist or cannot be accessed"]),
    ("hf-server-500", "online", ["run", SARCASM, "--smoke", "data=hf:org/broken"], 1,
     ["'org/broken'", "the Hugging Face Hub failed (HTTP 500); try again later"]),
    ("hf-offline-not-cached", "offline", ["run", IMDB, "--smoke", f"data=hf:{HF_REVIEWS}"], 1,
     ["offline mode is on (HF_HUB_OFFLINE=1)", "not in the datasets cache", "HF_HOME"]),
    ("hf-no-network", "no-network", ["run", SARCASM, "--smoke", f"data=hf:{HF_REVIEWS}"], 1,
     [f"'{HF_REVIEWS}'", "no connection", "run the same command once online"]),
    ("hf-datasets-not-installed", "no-datasets",
     ["run", IMDB, "--smoke", f"data=hf:{HF_REVIEWS}"], 2,
     ["needs the datasets library", "pip install 'kerastune-lab[hf-data]'"]),
]

# Runs `kerastune` once per row of argv[1] (a JSON list of argument lists) in
# this one process; prints a JSON list of [exit code, stderr]. Under
# "no-datasets", importing `datasets` fails.
HF_ROWS = """
import contextlib, io, json, os, sys
if os.environ.get("HF_ROWS_NO_DATASETS"):
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "datasets":
                raise ImportError("No module named 'datasets'")
    sys.meta_path.insert(0, Refuse())
from kerastune_lab.cli import main
found = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code
    found.append([code, err.getvalue()])
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def hf_rows(tmp_path_factory):
    """{case id: (exit code, stderr, output dir)} of every HF_CASES row."""
    pytest.importorskip("datasets")
    from datasets import ClassLabel, Value

    from tests import hubs

    root = tmp_path_factory.mktemp("hf")
    texts, labels = testing.reviews(24, 0)
    reviews = hubs.hf_dataset_files(
        {split: {"text": texts, "label": [int(y) for y in labels],
                 "stars": [float(y) for y in labels]} for split in ("train", "test")},
        {"text": Value("string"), "label": ClassLabel(names=["neg", "pos"]),
         "stars": Value("float32")}, config="plain_text")
    system = hubs.hf_dataset_files({"train": {"messages": [[
        {"role": "system", "content": "Be dry."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Oh. It's you."}]]}})
    found = {}
    with hubs.hub_server() as server:
        server.serve_hf_dataset(HF_REVIEWS, reviews)
        server.serve_hf_dataset("org/system_chats", system)
        server.serve_hf_dataset("org/gated", reviews, status=401)
        server.serve_hf_dataset("org/broken", reviews, status=500)
        for hub in ("online", "offline", "no-network", "no-datasets"):
            rows = [c for c in HF_CASES if c[1] == hub]
            argv = [[*args, "--output-dir", str(root / case)] for case, _, args, _, _ in rows]
            live = server if hub == "online" else None
            env = dict(hubs.hf_env(live, root / hub, offline=hub == "offline"),
                       HF_UPDATE_DOWNLOAD_COUNTS="0", HUBS_NO_RETRY_WAIT="1",
                       KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
            if hub == "no-datasets":
                env["HF_ROWS_NO_DATASETS"] = "1"
            port = server.port if live else hubs.closed_port()
            result = hubs.run_guarded(port, "-c", HF_ROWS, json.dumps(argv), env=env,
                                      timeout=600)
            assert result.returncode == 0, result.stderr[-3000:]
            answers = json.loads(result.stdout.strip().splitlines()[-1])
            for (case, *_), (code, err) in zip(rows, answers):
                found[case] = (code, err, root / case)
        assert server.outside == []
    return found


@pytest.mark.backend_independent  # refused before anything trains: the same on every backend
@pytest.mark.parametrize("case, hub, args, code, fragments", HF_CASES,
                         ids=[c[0] for c in HF_CASES])
def test_bad_hf_data(hf_rows, case, hub, args, code, fragments):
    from tests.conftest import CliResult

    got, err, out = hf_rows[case]
    if code == 2:
        assert_one_line_error(CliResult(got, "", err), *fragments)
    else:  # a download that failed: exit code 1, one line, no traceback
        lines = [line for line in err.strip().splitlines()
                 if line.startswith("kerastune: error:")]
        assert got == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0].startswith("kerastune: error: cannot download"), lines[0]
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()
