"""The recipe-file reader (no execution) agrees with the imported recipes."""

import dataclasses
import glob
import os
import typing

import pytest

from kerastune_lab import recipe_file
from kerastune_lab.errors import KerastuneError
from kerastune_lab.recipe import load_recipe
from tests.conftest import ROOT, recipe_path

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

RECIPES = ["cats_vs_dogs", "xray_pneumonia", "imdb_sentiment", "sarcastic_chat", "lora_chat"]


@pytest.mark.parametrize("name", RECIPES)
def test_fields_types_defaults_and_ranges_match_the_dataclass(name):
    read = recipe_file.read(recipe_path(name))
    module = load_recipe(recipe_path(name))
    fields = dataclasses.fields(module.Config)
    hints = typing.get_type_hints(module.Config)
    assert list(read.fields) == [f.name for f in fields]
    defaults = module.Config()
    for field in fields:
        got = read.fields[field.name]
        if got.annotation is not recipe_file.UNKNOWN:
            assert got.annotation == hints[field.name], field.name
        if got.default is not recipe_file.UNKNOWN:
            assert got.default == getattr(defaults, field.name), field.name
        assert got.bounds == (field.metadata.get("bounds") or {}), field.name
        assert got.choices == field.metadata.get("choices"), field.name
    assert read.has_smoke and read.launch_lines()[0].startswith(f"kerastune run {name} ")


def test_comments_and_a_broken_file(tmp_path):
    path = tmp_path / "r.py"
    path.write_text('"""Doc.\n\n    kerastune run r.py x=1\n"""\nimport dataclasses\n\n\n'
                    "@dataclasses.dataclass\nclass Config:\n"
                    "    x: int = setting(3, ge=1)  # how many\n"
                    "    y: float | None = None\n    z: Thing = make()  # computed\n")
    read = recipe_file.read(path)
    assert read.launch_lines() == ["kerastune run r.py x=1"] and not read.has_smoke
    x, y, z = read.fields.values()
    assert (x.default, x.bounds, x.comment) == (3, {"ge": 1}, "how many")
    assert y.annotation == (float | None) and y.default is None
    assert z.annotation is recipe_file.UNKNOWN and z.default is recipe_file.UNKNOWN
    recipe_file.check_overrides(read, ["z=anything"])  # left to the full check
    with pytest.raises(KerastuneError, match="x=0: expected >= 1"):
        recipe_file.check_overrides(read, ["x=0"])
    with pytest.raises(KerastuneError, match="has no smoke"):
        recipe_file.check_overrides(read, [], smoke=True)
    path.write_text("class Config(:\n")
    with pytest.raises(KerastuneError, match="line 1"):
        recipe_file.read(path)


def _builtin_made(hint):
    """Whether a runtime type is made of builtin types, None and unions of them."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is None:
        return hint in (int, float, str, bool, dict, list, tuple, type(None))
    return origin in (typing.Union, type(int | None), list, dict, tuple) and all(
        a is Ellipsis or _builtin_made(a) for a in args)


SHIPPED = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.py")))


@pytest.mark.parametrize("path", [p for p in SHIPPED if not p.endswith("__init__.py")],
                         ids=os.path.basename)
def test_each_shipped_recipe_reads_as_its_dataclass(path):
    # Every key whose runtime type is builtin-made is read as that very type
    # (from the AST alone: recipe_file evaluates nothing).
    module = load_recipe(path)
    hints = typing.get_type_hints(module.Config)
    read = recipe_file.read(path).fields
    for field in dataclasses.fields(module.Config):
        if _builtin_made(hints[field.name]):
            assert read[field.name].annotation == hints[field.name], field.name


BAD = ["epoch=3", "epochs=-1", "epochs=two", "learning_rate=fast", "seed=1.5",
       "precision=fp16", "dtype=float32", "mixed_precision=true", "jit_compile=yes",
       "batch_size=0", "nothing"]


@pytest.mark.parametrize("name", RECIPES)
def test_the_precheck_and_the_run_read_overrides_alike(name):
    # One reader (config.read_overrides): the keys read from the file before
    # Keras loads and the imported Config refuse each override with the same
    # line, and accept the same ones.
    from kerastune_lab import config as config_lib

    read = recipe_file.read(recipe_path(name))
    module = load_recipe(recipe_path(name))
    for item in BAD:
        errors = []
        for check in (lambda: recipe_file.check_overrides(read, [item]),
                      lambda: config_lib.apply_overrides(module.Config(), [item])):
            with pytest.raises(KerastuneError) as excinfo:
                check()
            errors.append(str(excinfo.value))
        assert errors[0] == errors[1], item
    good = ["epochs=1", "seed=3", "precision=float32", "jit_compile=false"]
    assert config_lib.read_overrides(read.fields, good) == {
        "epochs": 1, "seed": 3, "precision": "float32", "jit_compile": "false"}
    config = config_lib.apply_overrides(module.Config(), good)
    assert (config.epochs, config.seed, config.precision) == (1, 3, "float32")


def test_an_old_key_is_named_renamed_only_where_the_new_one_exists():
    from kerastune_lab.config import apply_overrides

    @dataclasses.dataclass
    class New:
        precision: str = "auto"

    @dataclasses.dataclass
    class Own:  # a user's recipe with a dtype key of its own
        dtype: str = "float32"
        seed: int = 0

    with pytest.raises(KerastuneError, match=r"^config key 'dtype' is now 'precision': use "
                                             r"precision=auto, float32, mixed_bfloat16 or "
                                             r"mixed_float16$"):
        apply_overrides(New(), ["dtype=bfloat16"])
    assert apply_overrides(Own(), ["dtype=bfloat16"]).dtype == "bfloat16"
    with pytest.raises(KerastuneError, match="unknown config key 'precision'"):
        apply_overrides(Own(), ["precision=float32"])
