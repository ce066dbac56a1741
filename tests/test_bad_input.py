"""Bad input across the CLI: one table, every command and every data format.

Each row gives exit code 2 and one line that names the input and what was
expected, with no traceback, and leaves the finished run directories of this
module as they were (file tree and content hashes compared after each row).
The runs are made by hand once per module from the tiny presets: an image
classifier run, a LoRA chat run (adapter on the tiny GPT-2), and a text run's
config without its model.
"""

import hashlib
import json
import os

import pytest

from kerastune_lab import testing
from kerastune_lab.runs import RunDir
from tests.conftest import assert_one_line_error, recipe_path

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


def snapshot(root):
    """{relative path: sha256} of every file under `root`, and the folders."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            tree[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                tree[os.path.relpath(path, root)] = hashlib.sha256(fh.read()).hexdigest()
    return tree


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
    return d


# (id, args, fragments): "{in}" is the inputs folder, "{image}", "{lora}",
# "{text}" the finished runs.
CASES = [
    # run: command line and config
    ("run-unknown-backend", ["run", CATS, "--backend", "theano"],
     ["unknown backend", "theano", "expected one of"]),
    ("run-recipe-not-py", ["run", "{in}/recipe.txt"], ["recipe.txt", "expected a Python file"]),
    ("run-recipe-missing", ["run", "{in}/nope.py"], ["nope.py", "does not exist"]),
    ("run-unknown-key", ["run", CATS, "--smoke", "epoch=3"],
     ["unknown config key 'epoch'", "did you mean epochs"]),
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
    ("export-peft-of-image-run", ["export", "{image}", "--format", "peft", "--output",
                                  "{in}/exported"], ["{image}", "peft"]),
    # recipes by name, cp
    ("run-unknown-recipe-name", ["run", "cats_vs_dog", "--smoke"],
     ["no recipe named 'cats_vs_dog'", "did you mean 'cats_vs_dogs'"]),
    ("cp-unknown-recipe", ["cp", "lora_chats", "{in}/mine.py"],
     ["no recipe named 'lora_chats'", "did you mean 'lora_chat'"]),
    ("cp-onto-an-existing-file", ["cp", "lora_chat", "{in}/notes.txt"],
     ["notes.txt", "already exists"]),
    ("recipes-extra-argument", ["recipes", "lora_chat"], ["unexpected extra argument"]),
    # info, presets
    ("info-bad-backend", ["info", "--backend", "mxnet"], ["unknown backend", "mxnet"]),
    ("presets-unknown-kind", ["presets", "image_clasifier"],
     ["image_clasifier", "image_classifier"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(cli, runs, inputs, tmp_path, args, fragments):
    before = {name: snapshot(path) for name, path in runs.items()}
    listing = sorted(os.listdir(inputs))
    mine = snapshot(inputs / "userfolder")
    names = dict(runs, **{"in": str(inputs)})
    fill = lambda s: str(s).format(**names)  # noqa: E731
    args = list(map(fill, args))
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


def test_every_cli_command_has_a_row():
    # A new `kerastune` command fails this until the table covers it.
    from kerastune_lab.cli import cli as group

    assert {c[1][0] for c in CASES} == set(group.commands)
