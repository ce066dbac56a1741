import dataclasses

import pytest

from kerastune_lab.config import apply_overrides, coerce, expected_range, setting, validate
from kerastune_lab.errors import KerastuneError


@dataclasses.dataclass
class Cfg:
    preset: str = "resnet_50_imagenet"
    epochs: int = 3
    learning_rate: float = 1e-5
    augment: bool = True
    class_weight: str | dict = "balanced"
    limit: int | None = None


def test_typed_overrides():
    cfg = apply_overrides(Cfg(), ["epochs=5", "learning_rate=3e-4", "augment=false",
                                  "preset=~/my preset", "class_weight={0: 1.0, 1: 9.0}",
                                  "limit=None"])
    assert cfg == Cfg(preset="~/my preset", epochs=5, learning_rate=3e-4, augment=False,
                      class_weight={0: 1.0, 1: 9.0}, limit=None)
    assert apply_overrides(Cfg(), ["learning_rate=1"]).learning_rate == 1.0
    assert isinstance(apply_overrides(Cfg(), ["learning_rate=1"]).learning_rate, float)
    assert apply_overrides(Cfg(), ["preset=12"]).preset == "12"
    assert apply_overrides(Cfg(), ["limit=7"]).limit == 7


def test_dict_overrides_are_checked_too():
    assert apply_overrides(Cfg(), {"epochs": 2}).epochs == 2
    with pytest.raises(KerastuneError, match="epochs"):
        apply_overrides(Cfg(), {"epochs": "two"})


@pytest.mark.parametrize("item, fragment", [
    ("epochs=abc", "expected int"),
    ("epochs=2.5", "expected int"),
    ("epochs=True", "expected int"),
    ("learning_rate=fast", "expected float"),
    ("augment=maybe", "expected bool"),
    # "did you mean": tests/test_did_you_mean.py
    ("epochs", "expected KEY=VALUE"),
    ("=3", "the key is empty"),
])
def test_bad_overrides(item, fragment):
    with pytest.raises(KerastuneError, match=fragment):
        apply_overrides(Cfg(), [item])


def test_bool_literals():
    assert coerce("x", "True", bool) is True
    assert coerce("x", "no", bool) is False


# --- Declared ranges (config.setting) ---

@dataclasses.dataclass
class Ranged:
    epochs: int = setting(3, ge=1)
    val_split: float = setting(0.2, gt=0, lt=1)
    loss_on: str = setting("assistant", choices=("assistant", "all"))
    class_weight: str | dict = setting("balanced", choices=("balanced", "none"))
    names: dict = setting({"a": 1})


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "epochs=-1: expected >= 1"),
    ("epochs=0", "epochs=0: expected >= 1"),
    ("val_split=0", "val_split=0.0: expected > 0 and < 1"),
    ("val_split=1.5", "val_split=1.5: expected > 0 and < 1"),
    ("loss_on=everything", "loss_on='everything': expected one of 'assistant', 'all'"),
    ("class_weight=heavy", "class_weight='heavy': expected one of 'balanced', 'none'"),
])
def test_out_of_range_override_is_refused(override, message):
    with pytest.raises(KerastuneError) as e:
        apply_overrides(Ranged(), [override])
    assert str(e.value) == message


def test_in_range_overrides_and_non_string_values_pass():
    cfg = apply_overrides(Ranged(), ["epochs=1", "val_split=0.5", "loss_on=all",
                                     "class_weight={0: 1.0, 1: 3.0}"])
    assert (cfg.epochs, cfg.val_split, cfg.loss_on) == (1, 0.5, "all")
    assert cfg.class_weight == {0: 1.0, 1: 3.0}  # choices check strings only
    # A mutable default is a fresh copy in each config.
    assert Ranged().names is not Ranged().names and Ranged().names == {"a": 1}


RECIPES = ("cats_vs_dogs", "xray_pneumonia", "imdb_sentiment", "sarcastic_chat", "lora_chat")


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_declares_ranges_and_its_defaults_and_smoke_fit(name):
    from kerastune_lab.recipe import load_recipe, resolve_config
    from tests.conftest import recipe_path

    module = load_recipe(recipe_path(name))
    fields = {f.name: f for f in dataclasses.fields(module.Config)}
    for key in ("batch_size", "epochs", "learning_rate", "seed", "save_every_steps"):
        assert expected_range(fields[key]), (name, key)
    validate(module.Config())
    resolve_config(module, smoke=True)  # --smoke's values are checked the same way
    with pytest.raises(KerastuneError, match="batch_size=0: expected >= 1"):
        resolve_config(module, overrides=["batch_size=0"])


def test_cli_refuses_an_out_of_range_key_before_the_run_starts(cli, tmp_path):
    from tests.conftest import assert_one_line_error, recipe_path

    out = tmp_path / "run"
    for override, fragment in [("epochs=-1", "epochs=-1: expected >= 1"),
                               ("sequence_length=0", "sequence_length=0: expected >= 16")]:
        result = cli("run", recipe_path("sarcastic_chat"), "--output-dir", out, override)
        assert_one_line_error(result, fragment)
        assert not out.exists()  # nothing was written, nothing downloaded
