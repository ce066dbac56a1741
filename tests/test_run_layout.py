"""The run folder's layout has one author, and a run says what kind it is.

`kerastune_lab/runs.py` names every file and folder of a run (a constant for
each, a `RunDir` property for its path); code elsewhere in the package and
the recipes uses those names, never a string of its own, so the layout can
be read, and changed, in one place. Strings are read from the source with
`ast`. `run_guard.py` defines the few names it needs itself (it cannot
import runs.py); runs.py re-exports them.

A run records its kind (the recipe's `KIND`) when it is created, and
`RunDir.kind` reads it back; a run of an earlier version, which did not
record one, gets the kind its files tell.
"""

import ast
import json
import pathlib

import pytest

from kerastune_lab import runs
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir

# The same on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFINED_IN = {"kerastune_lab/runs.py", "kerastune_lab/run_guard.py"}
# A run's name that is also another format's file, where it names that one.
OTHER_FORMATS = {("kerastune_lab/hub/handles.py", "config.json"): "a KerasHub preset's config"}
# RunDir's methods that take a file name of the run (`os.path.join` too).
TAKE_A_NAME = {"file", "write_json", "write_text", "write_csv", "read_json", "update_json",
               "save_model", "join"}


def run_names():
    """Every file and folder name of a run: runs.py's upper-case strings."""
    return {value for name, value in vars(runs).items()
            if name.isupper() and isinstance(value, str)}


def _named_by_hand(source, names):
    """[(line, string)] for each string of `source` that is one of `names`.

    A name that is also an ordinary word ("model", "backup", "tensorboard")
    counts only where a path is made of it (an argument of `run.file`,
    `run.write_json`, ..., `os.path.join`); any other name counts anywhere
    (f-strings included).
    """
    words = {name for name in names if name.isidentifier() and name.islower()}
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in names - words:
            found.append((node.lineno, node.value))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in TAKE_A_NAME):
            for arg in node.args + [k.value for k in node.keywords]:
                if isinstance(arg, ast.Constant) and arg.value in words:
                    found.append((arg.lineno, arg.value))
    return sorted(found)


def test_the_finder_finds_names_written_by_hand():
    source = '''
"""Writes config.json (a docstring is not a name)."""
run.write_json("metrics.json", {})
run.file(f"eval-{name}")
os.path.join(run.path, "model")
run.save_model(model, name="model")
where = "model"  # a word, not a path
run.write_json(METRICS, {})
'''
    assert _named_by_hand(source, run_names()) == [
        (3, "metrics.json"), (4, "eval-"), (5, "model"), (6, "model")]


def test_no_file_name_of_a_run_outside_runs_py():
    names = run_names()
    assert {"config.json", "history.csv", "labels.json", "model", "backup",
            "kerastune_run.json"} <= names
    files = sorted((ROOT / "kerastune_lab").rglob("*.py")) + sorted(
        (ROOT / "recipes").glob("*.py"))
    assert len(files) > 40
    found = []
    for path in files:
        where = path.relative_to(ROOT).as_posix()
        if where in DEFINED_IN:
            continue
        for line, name in _named_by_hand(path.read_text(encoding="utf-8"), names):
            if (where, name) not in OTHER_FORMATS:
                found.append(f"{where}:{line}: {name!r}")
    assert not found, ("file names of a run written by hand (use runs.py's names, e.g. "
                       "runs.CONFIG or run.config_path):\n" + "\n".join(found))


def test_every_shipped_recipe_declares_its_kind():
    for path in sorted((ROOT / "recipes").glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        kinds = [node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and [getattr(t, "id", None) for t in node.targets] == ["KIND"]]
        assert len(kinds) == 1 and kinds[0] in runs.KINDS, (path.name, kinds)


def test_a_run_reads_back_the_kind_it_was_created_with(tmp_path):
    run = RunDir.create(tmp_path / "run", kind="lora")
    assert run.kind == "lora"
    assert json.loads(pathlib.Path(run.marker_path).read_text())["kind"] == "lora"
    # What was recorded wins over what the files would tell.
    run.write_json(runs.CONFIG, {"config": {"image_size": 32}})
    assert RunDir(run.path).kind == "lora"
    run.finish()
    assert RunDir.create(tmp_path / "none").kind is None  # nothing recorded, nothing told
    with pytest.raises(KerastuneError, match="run kind 'banana': expected one of "
                                             "image_classifier, text_classifier"):
        RunDir.create(tmp_path / "bad", kind="banana")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("files, kind", [
    ({"config.json": {"config": {"image_size": 32}}, "labels.json": ["a", "b"]},
     "image_classifier"),
    ({"config.json": {"config": {"sequence_length": 64}}, "labels.json": ["a", "b"]},
     "text_classifier"),
    # sarcastic_chat has a sequence_length too: its chat.json tells it apart.
    ({"config.json": {"config": {"sequence_length": 64}}, "chat.json": {"template": "t"},
      "model/task.json": {"class_name": "GPT2CausalLM"}}, "causal_lm"),
    ({"config.json": {"config": {}}, "chat.json": {"template": "t"},
      "adapter.lora.h5": None}, "lora"),
    ({"config.json": {"config": {}}, "model/task.json": {"class_name": "BertTextClassifier"}},
     "text_classifier"),
    ({"config.json": {"config": {}}}, None),
])
def test_a_run_of_an_earlier_version_gets_the_kind_its_files_tell(tmp_path, files, kind):
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("" if content is None else json.dumps(content))
    (tmp_path / runs.MARKER).write_text(json.dumps({"recipe": "old"}))  # no "kind"
    assert RunDir(tmp_path).kind == kind


def _recipe(path, kind):
    path.write_text(f'''import dataclasses

KIND = {kind!r}


@dataclasses.dataclass
class Config:
    seed: int = 0


def main(config, run):
    pass
''')
    return path


def test_run_recipe_records_the_recipes_kind(tmp_path):
    from kerastune_lab.recipe import load_recipe, run_recipe

    run = run_recipe(str(_recipe(tmp_path / "texts.py", "text_classifier")),
                     output_dir=tmp_path / "run")
    assert run.finished and RunDir(run.path).kind == "text_classifier"
    with pytest.raises(KerastuneError, match="KIND = 'banana': expected one of"):
        load_recipe(str(_recipe(tmp_path / "bad.py", "banana")))
