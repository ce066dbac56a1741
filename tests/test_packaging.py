"""The toolkit outside a checkout: the wheel's contents, the shipped recipes
found by name, `kerastune recipes`, `kerastune cp`, `kerastune --version`.

CI also installs the built wheel into a fresh virtual environment and runs
the first commands of a learner from an empty folder (`.ci/wheel_check`);
here the wheel is built (no dependencies, no isolation: seconds) and read.
"""

import glob
import importlib.metadata
import os
import subprocess
import sys
import zipfile

import pytest

from kerastune_lab import shipped
from tests.conftest import ROOT, assert_one_line_error

tomllib = pytest.importorskip("tomllib")

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

RECIPES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "recipes", "*.py"))
                 if not os.path.basename(p).startswith("_"))


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), ROOT],
                   check=True, capture_output=True, text=True)
    (path,) = glob.glob(str(out / "*.whl"))
    with zipfile.ZipFile(path) as z:
        return path, z.namelist(), z.read(next(n for n in z.namelist()
                                               if n.endswith(".dist-info/METADATA"))).decode()


def test_packages_listed_are_the_package_folders():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(os.path.dirname(p), ROOT).replace(os.sep, ".")
             for p in glob.glob(os.path.join(ROOT, "kerastune_lab", "**", "__init__.py"),
                                recursive=True)}
    assert listed == found | {"kerastune_lab.recipes", "kerastune_lab.recipes.data"}


def test_wheel_holds_the_package_and_its_recipes_only(wheel):
    path, names, metadata = wheel
    assert os.path.basename(path).startswith("kerastune_lab-")
    assert "Name: kerastune-lab" in metadata.splitlines()
    package = {n for n in names if not n.startswith("kerastune_lab-")}
    sources = {os.path.relpath(p, ROOT).replace(os.sep, "/")
               for p in glob.glob(os.path.join(ROOT, "kerastune_lab", "**", "*.py"),
                                  recursive=True)}
    shipped_files = {f"kerastune_lab/recipes/{name}.py" for name in RECIPES} | {
        "kerastune_lab/recipes/__init__.py",
        "kerastune_lab/recipes/data/sarcastic_chat.jsonl",
        "kerastune_lab/recipes/data/sarcastic_chat_heldout.jsonl"}
    # Every source file and every recipe with its data, and nothing else: no
    # tests, benchmarks or notebooks.
    assert package == sources | shipped_files
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    with zipfile.ZipFile(path) as z:
        assert "kerastune = kerastune_lab.cli:main" in z.read(entry).decode()


def test_shipped_recipes_are_the_repository_folder():
    assert shipped.names() == RECIPES
    assert os.path.samefile(shipped.recipes_dir(), os.path.join(ROOT, "recipes"))
    with open(shipped.data_file("sarcastic_chat.jsonl"), encoding="utf-8") as f:
        assert f.readline().startswith("{")


def test_resolve_name_or_path(tmp_path, monkeypatch):
    path, name = shipped.resolve("lora_chat")
    assert name == "lora_chat" and os.path.samefile(path, os.path.join(ROOT, "recipes",
                                                                        "lora_chat.py"))
    mine = tmp_path / "mine.py"
    mine.write_text("")
    assert shipped.resolve(str(mine)) == (str(mine), None)
    monkeypatch.chdir(tmp_path)
    assert shipped.resolve("./mine.py") == ("./mine.py", None)
    assert shipped.resolve("mine.py") == ("mine.py", None)  # a file here, not a name


def test_recipes_lists_each_with_its_first_sentence(cli):
    result = cli("recipes")
    assert result.code == 0, result
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == RECIPES
    cats = next(line for line in lines if line.startswith("cats_vs_dogs "))
    assert cats.split(None, 1)[1] == ("Cats vs dogs: a KerasHub ResNet fine-tuned in two "
                                      "phases, with augmentation.")


def test_cp_copies_and_never_replaces(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("cp", "sarcastic_chat")
    assert result.code == 0, result
    copy = tmp_path / "sarcastic_chat.py"
    with open(os.path.join(ROOT, "recipes", "sarcastic_chat.py"), "rb") as f:
        assert copy.read_bytes() == f.read()
    assert result.last_line == os.path.join(".", "sarcastic_chat.py")
    copy.write_text("# my edits\n")
    result = cli("cp", "sarcastic_chat", ".")
    assert_one_line_error(result, "already exists")
    assert copy.read_text() == "# my edits\n"
    (tmp_path / "sub").mkdir()
    assert cli("cp", "lora_chat", "sub").code == 0
    assert (tmp_path / "sub" / "lora_chat.py").is_file()
    assert cli("cp", "lora_chat", "sub/edited.py").code == 0
    assert (tmp_path / "sub" / "edited.py").is_file()
    assert_one_line_error(cli("cp", "lora_chat", "x.txt"), "ending in .py")
    assert_one_line_error(cli("cp", "lora_chat", "nowhere/x.py"), "does not exist")
    assert sorted(os.listdir(tmp_path)) == ["sarcastic_chat.py", "sub"]


def test_a_copy_reads_the_shipped_data(cli, tmp_path, monkeypatch):
    """The copy's help shows its config read from the copy, and its data
    default points into the package, so the copy runs from any folder."""
    monkeypatch.chdir(tmp_path)
    assert cli("cp", "lora_chat").code == 0
    result = cli("run", "./lora_chat.py", "--help")
    assert result.code == 0, result
    assert "data: str = data_file('sarcastic_chat.jsonl')" in result.stdout
    result = cli("run", "./lora_chat.py", "epochs=0")  # the copy's own ranges, before Keras
    assert_one_line_error(result, "epochs=0")
    from kerastune_lab.recipe import load_recipe, resolve_config

    config = resolve_config(load_recipe("./lora_chat.py"))
    assert os.path.samefile(config.data, os.path.join(ROOT, "recipes", "data",
                                                      "sarcastic_chat.jsonl"))
    assert os.path.isfile(config.heldout_data)


@pytest.mark.parametrize("words, fragments", [
    (["run", "recipes/nope.py"], ["recipe file 'recipes/nope.py' does not exist"]),
])
def test_unknown_recipe_names(cli, words, fragments):
    assert_one_line_error(cli(*words), *fragments)


def test_a_missing_checkout_path_names_the_recipe(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside a checkout, the old README's path
    assert_one_line_error(cli("run", "recipes/lora_chat.py", "--smoke"),
                          "recipe file 'recipes/lora_chat.py' does not exist",
                          "kerastune run lora_chat")


def test_run_by_name_help(cli):
    result = cli("run", "xray_pneumonia", "--help")
    assert result.code == 0, result
    assert "kerastune run xray_pneumonia --smoke" in result.stdout


def test_version_names_the_toolkit_keras_hub_and_backends(cli, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    result = cli("--version")
    assert result.code == 0, result
    line = result.stdout.strip()
    import kerastune_lab

    for name, version in [("kerastune_lab", kerastune_lab.__version__),
                          ("keras", importlib.metadata.version("keras")),
                          ("keras-hub", importlib.metadata.version("keras-hub")),
                          ("jax", importlib.metadata.version("jax")),
                          ("tensorflow", importlib.metadata.version("tensorflow")),
                          ("torch", importlib.metadata.version("torch"))]:
        assert f"{name} {version}" in line, (name, line)
    assert "backend torch" in line


def test_info_names_the_toolkit(cli):
    result = cli("info")
    assert result.code == 0, result
    import kerastune_lab

    lines = result.stdout.splitlines()
    assert f"kerastune_lab: {kerastune_lab.__version__}" in lines
    assert f"keras-hub: {importlib.metadata.version('keras-hub')}" in lines
