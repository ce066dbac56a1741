"""Every "did you mean" of the CLI, in one table: a misspelt config key,
recipe name or preset name is one line that names the nearest right one.

(Merged from test_config, test_bad_input, test_quick_feedback,
test_packaging, test_models and the recipe tests, which each checked a
case or two of it; issue 27.) Cases that the CLI answers before Keras loads
run in a fresh process that refuses the heavy imports (conftest's
`run_guarded`), so they also prove that the answer comes at once.
"""

import os

import pytest

from tests.conftest import assert_one_line_error, recipe_path, run_guarded

CATS = recipe_path("cats_vs_dogs")
IMDB = recipe_path("imdb_sentiment")

# (id, command line, fragments of the one error line, answered before Keras)
CASES = [
    ("config-key", ["run", CATS, "--smoke", "epoch=3"],
     ["unknown config key 'epoch'", "did you mean epochs"], True),
    ("config-key-typo", ["run", CATS, "--smoke", "learnig_rate=1e-3"],
     ["unknown config key 'learnig_rate'", "did you mean learning_rate"], True),
    ("recipe-name", ["run", "cats_vs_dog", "--smoke"],
     ["no recipe named 'cats_vs_dog'", "did you mean 'cats_vs_dogs'", "lora_chat"], True),
    ("cp-recipe-name", ["cp", "lora_chats", "{tmp}/mine.py"],
     ["no recipe named 'lora_chats'", "did you mean 'lora_chat'"], True),
    ("preset-name", ["run", CATS, "--smoke", "preset=resnet_50_imagenett"],
     ["unknown preset 'resnet_50_imagenett'", "resnet_50_imagenet"], False),
    ("preset-name-underscore", ["run", CATS, "--smoke", "preset=resnet50_imagenet"],
     ["did you mean resnet_50_imagenet"], False),
    ("preset-name-text", ["run", IMDB, "--smoke", "preset=distil_bert_base_en_uncasd"],
     ["unknown preset", "distil_bert_base_en_uncased"], False),
    ("presets-kind", ["presets", "image_clasifier"], ["image_clasifier", "image_classifier"],
     False),
]


@pytest.mark.parametrize("args, fragments, before_keras", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_did_you_mean(cli, tmp_path, args, fragments, before_keras):
    fill = lambda s: str(s).format(tmp=tmp_path)  # noqa: E731
    args = [fill(a) for a in args]
    if args[0] == "run":
        args += ["--output-dir", str(tmp_path / "run")]
    result = run_guarded(*args) if before_keras else cli(*args)
    assert "GUARD" not in result.stderr, result.stderr
    assert_one_line_error(result, *map(fill, fragments))
    assert os.listdir(tmp_path) == []  # nothing made: no run folder, no copy
