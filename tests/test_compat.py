"""`kerastune_lab/compat.py` is the one module that uses private Keras and
KerasHub names, and it checks their versions.

The scan reads every module of kerastune_lab with `ast` and lists, as
file:line: name, each use of a private Keras/KerasHub name outside compat.py:
imports of `keras.src`/`keras_hub.src`, `obj._name` on an object other than
`self`/`cls` where kerastune_lab defines no `_name` itself, `__class__`
assignment, getattr/setattr/hasattr/delattr with such a `_name` string,
`mock.patch`, and replacing a Keras function or method (an attribute set on
a Keras module, or a Keras layer method set on an object).
"""

import ast
import pathlib
import re

import pytest

import kerastune_lab
from kerastune_lab import compat
from kerastune_lab.errors import IncompatibleVersion, KerastuneError

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

PACKAGE = pathlib.Path(kerastune_lab.__file__).parent
COMPAT = PACKAGE / "compat.py"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
KERAS_ROOTS = ("keras", "keras_hub")
PRIVATE_MODULE = re.compile(r"^(keras|keras_hub)\.src(\.\w+)*$")
ATTRIBUTE_FUNCTIONS = ("getattr", "setattr", "hasattr", "delattr")


def _files():
    """The package's files and the shipped recipes (kerastune_lab.recipes in a wheel)."""
    return sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "recipes").glob("*.py"))


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(files):
    """The `_names` kerastune_lab defines itself: functions, classes, module
    names and variables, and attributes set on `self`/`cls`."""
    names = set()
    for path in files:
        names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return {name for name in names if _is_private(name)}


def _keras_methods():
    import keras

    return {name for name in dir(keras.Model)
            if not name.startswith("__") and callable(getattr(keras.Model, name, None))}


def _imported_keras_names(tree):
    """Names a module binds by importing from keras or keras_hub."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in KERAS_ROOTS:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in KERAS_ROOTS:
                names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def scan(path, own, methods):
    """[(line, name)] of the private Keras/KerasHub names `path` uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    keras_names = _imported_keras_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names
                      if PRIVATE_MODULE.match(a.name)]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            module = node.module or ""
            if PRIVATE_MODULE.match(module) or (
                    module in KERAS_ROOTS and any(a.name == "src" for a in node.names)):
                found.append((node.lineno, f"from {module} import "
                              + ", ".join(a.name for a in node.names)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if PRIVATE_MODULE.match(node.value):
                found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.Attribute):
            base = ast.unparse(node.value)
            if node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                found.append((node.lineno, f"{base}.__class__ ="))
            elif _is_private(node.attr) and node.attr not in own and base not in (
                    "self", "cls", "super()"):
                found.append((node.lineno, f"{base}.{node.attr}"))
            elif isinstance(node.ctx, (ast.Store, ast.Del)) and base != "self" and (
                    _root(node.value) in keras_names or node.attr in methods):
                found.append((node.lineno, f"{base}.{node.attr} replaced"))
        elif isinstance(node, ast.Call):
            function = ast.unparse(node.func)
            if (function in ATTRIBUTE_FUNCTIONS and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)
                    and _is_private(node.args[1].value) and node.args[1].value not in own):
                found.append((node.lineno, f"{function}(..., {node.args[1].value!r})"))
            elif re.search(r"(^|\.)patch(\.(dict|object|multiple))?$", function):
                found.append((node.lineno, function))
    return sorted(set(found))


@pytest.fixture(scope="module")
def scanner():
    own = _own_names([path for path in _files() if path != COMPAT])
    methods = _keras_methods()
    return lambda path: scan(path, own, methods)


def test_private_names_only_in_compat(scanner):
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
             for path in _files() if path != COMPAT for line, name in scanner(path)]
    assert not found, ("private Keras/KerasHub names outside kerastune_lab/compat.py "
                       "(move them there):\n" + "\n".join(found))


def test_scan_finds_the_names_in_compat(scanner):
    # The scan can fail: it finds each kind of use in compat.py itself.
    found = " ".join(name for _, name in scanner(COMPAT))
    for expected in ["from keras.src.backend.common import global_state",
                     "from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS",
                     "layer._flatten_layers", "layer._tracker", "layer.__class__ =",
                     "layer._dtype_policy", "store._h5_entry_group", "mock.patch.dict",
                     "cls.load_own_variables replaced", "image.affine_transform replaced"]:
        assert expected in found, (expected, found)


def test_scan_flags_each_kind(tmp_path, scanner):
    source = tmp_path / "example.py"
    source.write_text(
        "import keras\n"
        "from keras.src import backend\n"
        "import importlib\n"
        "def f(layer, store):\n"
        "    importlib.import_module('keras_hub.src.models')\n"
        "    layer._flatten_layers()\n"
        "    getattr(store, '_h5_entry_group', None)\n"
        "    keras.ops.foo = None\n"
        "    layer.__class__ = int\n"
        "    type(layer).call = None\n"
        "    self_ok = layer.name\n"
        "    layer._scan_own_helper()\n"
        "def _scan_own_helper():\n"
        "    pass\n")
    own = {"_scan_own_helper"}
    lines = [line for line, _ in scan(source, own, {"call"})]
    assert lines == [2, 5, 6, 7, 8, 9, 10], scan(source, own, {"call"})


# --- versions ---


def _with_version(monkeypatch, package, version):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version",
                        lambda name: version if name == package else real(name))


@pytest.mark.parametrize("version, expected", [
    ("3.15.0", True), ("3.15.1", True), ("3.15.9", True), ("3.16.0", False),
    ("3.14.2", False), ("3.15.0rc1", False), ("not.a.version", False), (None, False)])
def test_keras_range(version, expected):
    assert compat._in_range("keras", version) is expected


def test_installed_versions_are_in_range():
    # This suite runs with the versions the compat layer was written for.
    assert compat.supported("keras"), compat.installed_version("keras")
    assert compat.supported("keras-hub"), compat.installed_version("keras-hub")


def test_outside_the_range_a_private_use_without_fallback_is_one_line(monkeypatch):
    import keras

    layer = keras.layers.Dense(2)
    _with_version(monkeypatch, "keras", "3.99.0")
    with pytest.raises(IncompatibleVersion) as info:
        compat.sublayers(layer)
    message = str(info.value)
    assert isinstance(info.value, KerastuneError)
    assert "\n" not in message
    for part in ("keras 3.99.0", ">=3.15,<3.16", 'pip install "keras>=3.15,<3.16"',
                 "walking a model's layers"):
        assert part in message, message
    with pytest.raises(IncompatibleVersion, match="keras 3.99.0"):
        with compat.safe_mode_scope(None):
            pass


def test_outside_the_range_keras_hub_without_fallback(monkeypatch):
    _with_version(monkeypatch, "keras-hub", "0.40.0")
    with pytest.raises(IncompatibleVersion, match=r"keras-hub 0\.40\.0 .*>=0\.32,<0\.33"):
        compat.hf_exportable_backbones()


def test_outside_the_range_a_fallback_takes_the_public_path(monkeypatch):
    import keras

    layer = keras.layers.EinsumDense("ab,bc->ac", output_shape=3)
    layer.build((None, 5))
    presets = compat.builtin_presets()
    _with_version(monkeypatch, "keras", "3.99.0")
    _with_version(monkeypatch, "keras-hub", "0.99.0")
    assert compat.kernel_shape(layer) == tuple(layer.kernel.shape) == (5, 3)
    assert compat.h5_entry_group(object()) is None
    public = compat.builtin_presets()
    assert public == presets and "gpt2_base_en" in public
    with compat.host_quantizers_replaced(lambda o: 1 / 0, lambda o: 1 / 0):
        pass  # nothing replaced


def test_a_moved_name_is_one_line_within_the_range():
    class Moved:  # a layer whose Keras has no `_flatten_layers`
        pass

    with pytest.raises(IncompatibleVersion) as info:
        compat.sublayers(Moved())
    message = str(info.value)
    assert "\n" not in message and "_flatten_layers" in message
    assert compat.installed_version("keras") in message


def test_a_moved_name_takes_the_public_path_where_there_is_one():
    class Layer:
        kernel = type("Kernel", (), {"shape": (4, 2)})()

    assert compat.kernel_shape(Layer()) == (4, 2)


def test_cli_exits_1_with_one_line(cli, tmp_path, monkeypatch):
    import json

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"config": {"sequence_length": 8}}))
    (run / "labels.json").write_text(json.dumps(["neg", "pos"]))
    (run / "model" / "config.json").write_text(json.dumps({"config": {}}))
    _with_version(monkeypatch, "keras", "3.99.0")
    result = cli("predict", run, "--text", "fine")
    assert result.code == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("kerastune: error: keras 3.99.0 is not a version"), lines
    assert ">=3.15,<3.16" in lines[0]


def test_exit_code_of_incompatible_version():
    from kerastune_lab import errors

    assert errors.exit_code(IncompatibleVersion("x")) == 1
    assert errors.exit_code(KerastuneError("x")) == 2


def test_tested_ranges_match_pyproject():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    with open(PYPROJECT, "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    declared = {canonicalize_name(req.name): req.specifier
                for req in map(Requirement, dependencies)}
    for package, spec in compat.TESTED.items():
        assert declared.get(package) == SpecifierSet(spec), (package, declared.get(package), spec)
