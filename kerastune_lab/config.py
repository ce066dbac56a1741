"""Recipe configs and `key=value` overrides.

A recipe declares its config as a dataclass whose defaults are typed and
commented (nanoGPT style). Overrides from the command line are Python literals
checked against the field's type; strings may be written bare
(`data=~/pets`). An unknown key is an error that names the closest key.
"""

import ast
import dataclasses
import difflib
import types
import typing

from kerastune_lab.errors import KerastuneError

_TRUE = {"true", "yes", "on"}
_FALSE = {"false", "no", "off"}


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
    except (ValueError, SyntaxError):
        value = text
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
        f"override {key}={text}: expected {_type_name(annotation)}, "
        f"received {type(value).__name__} {value!r}"
    )


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


def apply_overrides(config, overrides):
    """Returns a copy of `config` with overrides applied.

    Args:
        config: a dataclass instance. The recipe's config.
        overrides: dict or list of 'key=value' strings. A dict's values are
            already typed and are checked the same way.
    """
    fields = config_fields(config)
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [parse_override(item) for item in overrides]
    changes = {}
    for key, value in items:
        if key not in fields:
            raise KerastuneError(
                f"unknown config key {key!r}{closest(key, fields)}; "
                f"known keys: {', '.join(fields)}"
            )
        text = value if isinstance(value, str) else repr(value)
        changes[key] = coerce(key, text, fields[key])
    return dataclasses.replace(config, **changes)


def to_dict(config):
    """Returns the config as a JSON-friendly dict."""
    return dataclasses.asdict(config)
