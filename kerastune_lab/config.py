"""Recipe configs and `key=value` overrides.

A recipe declares its config as a dataclass whose defaults are typed and
commented (nanoGPT style). Overrides from the command line are Python literals
checked against the field's type; strings may be written bare
(`data=~/pets`). An unknown key is an error that names the closest key.

A key's valid range is declared once, beside its default, with `setting`:

    epochs: int = setting(3, ge=1)  # passes over the training set
    val_split: float = setting(0.2, gt=0, lt=1)  # fraction held out
    loss_on: str = setting("assistant", choices=("assistant", "all"))

and every value is checked against it after the overrides apply
(`validate`), before anything runs: `epochs=-1` is a one-line error.

`read_overrides` is the one reader of overrides: `kerastune run` calls it
before Keras loads, on the keys `recipe_file` reads from the recipe's
source, and the run calls it again (`apply_overrides`) on the imported
`Config`'s keys. A key a recipe used to have (`RENAMED`: `dtype`,
`mixed_precision`) is refused with the line that names its replacement.
"""

import ast
import dataclasses
import difflib
import types
import typing

from kerastune_lab.errors import KerastuneError

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}

UNKNOWN = object()  # a key's type where a recipe's source does not spell it (recipe_file)

# Keys that recipes used to have, and what to write instead: an old key on the
# command line is refused with this line where the recipe has the new key.
_PRECISIONS = "auto, float32, mixed_bfloat16 or mixed_float16"
RENAMED = {
    "dtype": ("precision", f"precision={_PRECISIONS}"),
    "mixed_precision": ("precision", "precision=mixed_bfloat16 (mixed_float16 on a T4, P100 "
                        "or V100) for mixed_precision=true, precision=float32 for false"),
    "mixed_precision_dtype": ("precision", "precision=mixed_bfloat16 or mixed_float16"),
}


@dataclasses.dataclass
class Key:
    """One key of a recipe's `Config`: what `read_overrides` checks a value
    against. `keys_of` reads them from the dataclass; `recipe_file.read` from
    the recipe's source (its `Field` adds the text shown by `--help`).

    Args:
        name: str.
        annotation: a type, or `UNKNOWN`.
        bounds: dict. {"ge"|"gt"|"le"|"lt": number}, as `setting` declares.
        choices: tuple or None. As `setting` declares.
    """

    name: str
    annotation: object = UNKNOWN
    bounds: dict = dataclasses.field(default_factory=dict)
    choices: tuple = None

    @property
    def metadata(self):
        """The `setting` metadata, for `check_range`/`expected_range`."""
        return {"bounds": self.bounds, "choices": self.choices}


def setting(default, *, ge=None, gt=None, le=None, lt=None, choices=None):
    """A config default with its valid range, for a recipe's `Config`.

    Args:
        default: the default value (checked too).
        ge, gt, le, lt: numbers or None. The value must be >=, >, <=, < them.
        choices: sequence or None. A string value must be one of them (a
            field that also takes a dict or list checks only its strings).

    Example:
    ```python
    @dataclasses.dataclass
    class Config:
        batch_size: int = setting(32, ge=1)  # images a step
    ```
    """
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    metadata = {"bounds": bounds, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (dict, list)):
        import copy

        return dataclasses.field(default_factory=lambda: copy.deepcopy(default),
                                 metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def expected_range(field):
    """The declared range of a dataclass field, in words ("" when none)."""
    bounds = field.metadata.get("bounds") or {}
    choices = field.metadata.get("choices")
    words = [f"{_BOUNDS[k]} {v}" for k, v in bounds.items()]
    if choices is not None:
        words.append("one of " + ", ".join(repr(c) for c in choices))
    return " and ".join(words)


def check_range(key, value, field):
    """Raises a one-line `KerastuneError` when `value` is outside `field`'s
    declared range (see `setting`)."""
    bounds = field.metadata.get("bounds") or {}
    choices = field.metadata.get("choices")
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = True
    if numeric:
        ok = all({"ge": value >= v, "gt": value > v, "le": value <= v, "lt": value < v}[k]
                 for k, v in bounds.items())
    if isinstance(value, str) and choices is not None:
        ok = value in choices
    if not ok:
        raise KerastuneError(f"{key}={_shown(repr(value))}: expected {expected_range(field)}")


def validate(config):
    """Checks every value of a config dataclass against its declared range."""
    for field in dataclasses.fields(config):
        check_range(field.name, getattr(config, field.name), field)


def config_fields(config):
    """Returns {name: type} for a config dataclass instance or class."""
    hints = typing.get_type_hints(config if isinstance(config, type) else type(config))
    return {f.name: hints[f.name] for f in dataclasses.fields(config)}


def closest(name, candidates):
    """Returns a ' (did you mean ...?)' hint, or ''."""
    match = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(match)}?)" if match else ""


def _allowed_types(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation)]
    return [annotation]


def _type_name(annotation):
    return " or ".join(
        "None" if t is type(None) else getattr(t, "__name__", str(t))
        for t in _allowed_types(annotation)
    )


def coerce(key, text, annotation):
    """Converts the text of an override to the field's type.

    Args:
        key: str. The config key, named in errors.
        text: str. The value as typed on the command line.
        annotation: type. The field's type (`int`, `float`, `str`, `bool`,
            `dict`, `list`, `tuple`, or a union of those and `None`).
    """
    allowed = _allowed_types(annotation)
    lowered = text.strip().lower()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        value = text  # RecursionError: nested past the parser's limit ("-----...1")
    if bool in allowed and lowered in _TRUE | _FALSE:
        return lowered in _TRUE
    if type(None) in allowed and lowered in {"none", "null"}:
        return None
    for t in allowed:
        if t is type(None):
            continue
        origin = typing.get_origin(t) or t
        if origin is bool:
            if isinstance(value, bool):
                return value
        elif origin is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif origin is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif origin is str:
            if isinstance(value, str):
                return value
        elif origin in (dict, list, tuple):
            if isinstance(value, origin):
                return value
            if origin is tuple and isinstance(value, list):
                return tuple(value)
    # A str field takes the raw text when the literal parsed as something else
    # (`preset=1` is the string "1"), unless another type claimed it above.
    if str in allowed:
        return text
    raise KerastuneError(
        f"override {key}={_shown(text)}: expected {_type_name(annotation)}, "
        f"received {type(value).__name__} {_shown(repr(value))}"
    )


def _shown(text, most=80):
    """`text` cut to `most` characters for a message (a value may be huge)."""
    return text if len(text) <= most else f"{text[:most - 15]}... ({len(text)} characters)"


def parse_override(item):
    """Splits 'key=value' into (key, value text)."""
    if "=" not in item:
        raise KerastuneError(
            f"override {item!r}: expected KEY=VALUE (e.g. epochs=3)"
        )
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise KerastuneError(f"override {item!r}: expected KEY=VALUE, the key is empty")
    return key, text


def read_overrides(keys, overrides):
    """The one reader of `KEY=VALUE` overrides: the precheck before Keras
    loads (`recipe_file.check_overrides`, with the keys read from the
    recipe's source) and the run (`apply_overrides`, with the keys of the
    imported `Config`) both call it, so both accept and refuse the same
    overrides with the same words.

    Args:
        keys: {name: `Key`}: each key's type (`UNKNOWN` where the recipe's
            source does not spell it) and declared range (see `setting`).
        overrides: dict or list of 'key=value' strings. A dict's values are
            already typed and are checked the same way.

    Returns:
        {key: value}, typed; a key of `UNKNOWN` type keeps its text (the run
        reads it again with the imported type).

    Raises:
        KerastuneError: one line, for an unknown or renamed key, a value of
            the wrong type or outside the key's declared range.
    """
    items = (list(overrides.items()) if isinstance(overrides, dict)
             else [parse_override(item) for item in overrides])
    values = {}
    for key, value in items:
        if key not in keys:
            new = RENAMED.get(key)
            if new and new[0] in keys:  # the recipe has the key that replaced it
                raise KerastuneError(f"config key {key!r} is now {new[0]!r}: use {new[1]}")
            raise KerastuneError(
                f"unknown config key {key!r}{closest(key, keys)}; "
                f"known keys: {', '.join(keys)}"
            )
        text = value if isinstance(value, str) else repr(value)
        annotation = getattr(keys[key], "annotation", UNKNOWN)
        if annotation is UNKNOWN:
            values[key] = text
            continue
        values[key] = coerce(key, text, annotation)
        check_range(key, values[key], keys[key])
    return values


def keys_of(config):
    """{name: Key} of a config dataclass (instance or class): each field's
    type and declared range, as `read_overrides` takes them."""
    return {f.name: Key(f.name, annotation, dict(f.metadata.get("bounds") or {}),
                        f.metadata.get("choices"))
            for f, annotation in zip(dataclasses.fields(config),
                                     config_fields(config).values())}


def apply_overrides(config, overrides):
    """Returns a copy of `config` with overrides applied (`read_overrides`),
    every value then checked against its declared range (`validate`).

    Args:
        config: a dataclass instance. The recipe's config.
        overrides: dict or list of 'key=value' strings. A dict's values are
            already typed and are checked the same way.
    """
    config = dataclasses.replace(config, **read_overrides(keys_of(config), overrides))
    validate(config)
    return config


def to_dict(config):
    """Returns the config as a JSON-friendly dict."""
    return dataclasses.asdict(config)
