import dataclasses

import pytest

from kerastune_lab.config import apply_overrides, coerce
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
    ("epoch=3", "did you mean epochs"),
    ("learnig_rate=1e-3", "did you mean learning_rate"),
    ("epochs", "expected KEY=VALUE"),
    ("=3", "the key is empty"),
])
def test_bad_overrides(item, fragment):
    with pytest.raises(KerastuneError, match=fragment):
        apply_overrides(Cfg(), [item])


def test_bool_literals():
    assert coerce("x", "True", bool) is True
    assert coerce("x", "no", bool) is False
