"""A recipe file read without running it: its launch lines and its `Config`.

`kerastune run` checks what it can before Keras and TensorFlow load (several
seconds): the recipe file, each `KEY=VALUE` against the key's type and
declared range, a `data=` path, the run folder (`precheck`). `kerastune run
RECIPE --help` prints the recipe's launch lines and every config key with
its type, default and comment (`help_text`). Both read the recipe's source
with `ast` (the file is parsed, not executed, so nothing it imports loads)
into `config.Key`s; the overrides are then checked by the reader the run
itself uses, `config.read_overrides`, so the precheck and the run accept and
refuse the same overrides with the same words (the run reads them again,
from the imported `Config`, to build it).

A field's default is read when it is a Python literal or
`setting(literal, ge=..., choices=...)`; anything else (a computed default,
a type other than the builtin ones) is shown as written and left to the
full check.
"""

import ast
import dataclasses
import io
import os
import tokenize
import typing

from kerastune_lab import config as config_lib
from kerastune_lab.errors import KerastuneError

UNKNOWN = config_lib.UNKNOWN  # a default or annotation the file does not spell as a literal

# The names an annotation may use: builtin types, and typing's generics (bare
# or as `typing.X`). Annotations are built from these by `_annotation`,
# reading the AST only: nothing of a recipe file is ever evaluated.
_NAMES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list,
          "tuple": tuple, "None": None, "Optional": typing.Optional, "Union": typing.Union}
_TYPING = {"Optional": typing.Optional, "Union": typing.Union, "List": typing.List,
           "Dict": typing.Dict, "Tuple": typing.Tuple, "Any": typing.Any}
_GENERICS = (list, dict, tuple, typing.Optional, typing.Union, typing.List, typing.Dict,
             typing.Tuple)
_SETTING_KEYS = ("ge", "gt", "le", "lt", "choices")


@dataclasses.dataclass
class Field(config_lib.Key):
    """One key of a recipe's `Config`, as written in the file: the
    `config.Key` that `config.read_overrides` checks overrides against, and
    the text `--help` shows."""

    type_text: str = ""
    default_text: str = ""
    default: object = UNKNOWN
    comment: str = ""


@dataclasses.dataclass
class RecipeFile:
    path: str
    name: str
    doc: str
    fields: dict  # name -> Field, in the file's order; empty without a Config class
    has_smoke: bool

    def launch_lines(self):
        """The `kerastune ...` command lines of the docstring."""
        return [line.strip() for line in self.doc.splitlines()
                if line.strip().startswith("kerastune ")]


def _literal(node, constants=None):
    """The value of a literal, or of a module-level constant it names."""
    if isinstance(node, ast.Name) and constants and node.id in constants:
        return constants[node.id]
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return UNKNOWN


def _constants(tree):
    """{NAME: value} of the module's top-level `NAME = literal` assignments."""
    found = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            value = _literal(node.value)
            if value is not UNKNOWN:
                found[node.targets[0].id] = value
    return found


def _annotation(node, depth=0):
    """The type an annotation's AST spells, built by code from builtin types
    and typing's generics (`int`, `str | None`, `Optional[float]`,
    `typing.Union[str, dict]`, `list[int]`, `tuple[int, ...]`,
    `dict[str, float]`, a string of one of those); `UNKNOWN` for anything
    else (a name the file imports or defines, a call, an attribute of
    something other than `typing`), left to the full check. Never `eval`:
    an annotation is code, and reading a recipe must not run it."""
    if depth > 20:  # deeper than any real annotation
        return UNKNOWN
    if isinstance(node, ast.Constant):
        if node.value is None or node.value is Ellipsis:
            return node.value
        if isinstance(node.value, str):  # a forward reference: "int | None"
            try:
                return _annotation(ast.parse(node.value.strip(), mode="eval").body, depth + 1)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                return UNKNOWN
        return UNKNOWN
    if isinstance(node, ast.Name):
        return _NAMES.get(node.id, UNKNOWN)
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "typing"):
        return _TYPING.get(node.attr, UNKNOWN)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _annotation(node.left, depth + 1), _annotation(node.right, depth + 1)
        if any(part is UNKNOWN or part is Ellipsis for part in (left, right)) or (
                left is None and right is None):
            return UNKNOWN
        try:
            return typing.Union[left, right] if left is None else left | right
        except Exception:  # e.g. `Optional | int`: not a type
            return UNKNOWN
    if isinstance(node, ast.Subscript):
        generic = _annotation(node.value, depth + 1)
        if not any(generic is g for g in _GENERICS):
            return UNKNOWN
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        args = [_annotation(part, depth + 1) for part in parts]
        if any(arg is UNKNOWN for arg in args) or (
                Ellipsis in args and not (generic in (tuple, typing.Tuple) and len(args) == 2
                                          and args[1] is Ellipsis)):
            return UNKNOWN
        try:
            return generic[tuple(args) if len(args) > 1 else args[0]]
        except Exception:  # e.g. `Optional[int, str]`: not a type
            return UNKNOWN
    return UNKNOWN


def _field(node, comments, constants):
    value = node.value
    annotation = _annotation(node.annotation)
    field = Field(node.target.id, UNKNOWN if annotation is Ellipsis else annotation,
                  type_text=ast.unparse(node.annotation),
                  default_text=ast.unparse(value) if value is not None else "",
                  comment=comments.get(node.end_lineno, ""))
    call = value if isinstance(value, ast.Call) else None
    name = call and (getattr(call.func, "id", None) or getattr(call.func, "attr", None))
    if name == "setting" and call.args:
        field.default = _literal(call.args[0])
        field.default_text = ast.unparse(call.args[0])
        for kw in call.keywords:
            value = _literal(kw.value, constants)
            if kw.arg in _SETTING_KEYS and value is not UNKNOWN:
                if kw.arg == "choices":
                    field.choices = tuple(value)
                else:
                    field.bounds[kw.arg] = value
    elif name == "field":  # dataclasses.field(default=...) or default_factory=lambda: ...
        for kw in call.keywords:
            body = kw.value.body if isinstance(kw.value, ast.Lambda) else kw.value
            if kw.arg in ("default", "default_factory"):
                field.default, field.default_text = _literal(body), ast.unparse(body)
    elif value is not None:
        field.default = _literal(value)
    return field


def _comments(source):
    """{line number: text of the comment on it}."""
    found = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                found[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, SyntaxError):
        pass
    return found


def read(path):
    """Reads a recipe file's docstring and `Config` fields without running it.

    Raises a one-line `KerastuneError` for a missing file, a file that is not
    `.py`, or a syntax error (the same words as `recipe.load_recipe`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise KerastuneError(f"recipe file {path!r} does not exist")
    if not path.endswith(".py"):
        raise KerastuneError(f"recipe file {path!r}: expected a Python file ending in .py")
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        tree = ast.parse(source, filename=path)
    except (OSError, UnicodeDecodeError) as e:
        raise KerastuneError(f"recipe file {path!r} cannot be read: {e}")
    except SyntaxError as e:
        raise KerastuneError(f"recipe file {path!r}: line {e.lineno}: {e.msg}")
    comments, constants = _comments(source), _constants(tree)
    fields = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    fields[item.target.id] = _field(item, comments, constants)
    has_smoke = any(isinstance(n, ast.FunctionDef) and n.name == "smoke" for n in tree.body)
    return RecipeFile(path, os.path.splitext(os.path.basename(path))[0],
                      ast.get_docstring(tree) or "", fields, has_smoke)


def config_keys(recipe):
    """The field names of a recipe's `Config` (a shipped name or a file),
    read without running it; () when it cannot be read."""
    from kerastune_lab import shipped

    try:
        return tuple(read(shipped.resolve(recipe)[0]).fields)
    except KerastuneError:
        return ()


def _data_path(text):
    """The local path a `data=` value names, or None (a TFDS or Hugging Face
    dataset name, a handle)."""
    if not isinstance(text, str) or not text or text.startswith(("tfds:", "hf:")) or "://" in text:
        return None
    return os.path.expanduser(text)


def check_overrides(recipe, overrides, smoke=False):
    """Checks `KEY=VALUE` overrides against the fields read from the file with
    the run's own reader (`config.read_overrides`: known key, type, declared
    range), and that a `data=` path exists. A key whose type the file does
    not spell (`UNKNOWN`) keeps its text here, and the run's reading of it,
    with the imported type, is its check; a file with no `Config` class to
    read leaves every key to the run."""
    if smoke and not recipe.has_smoke:
        raise KerastuneError(f"recipe {recipe.name!r} has no smoke() settings")
    if not recipe.fields:
        return
    values = config_lib.read_overrides(recipe.fields, overrides)
    path = _data_path(values["data"]) if "data" in values else None
    if path is not None and not os.path.exists(path):
        raise KerastuneError(f"data folder or file {path!r} does not exist "
                             f"(data={dict(map(config_lib.parse_override, overrides))['data']})")


def check_output_dir(path, overwrite=False):
    """The checks of `runs.RunDir.create` that need no run identity: a file in
    the way, a folder of the user's own (not a run), a finished run without
    --overwrite, a run another process holds, an unwritable folder or a full
    disk. Looks only: writes nothing."""
    from kerastune_lab import runs

    path = runs.normal_path(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise KerastuneError(f"output dir {path!r} exists and is not a folder")
    runs.check_not_foreign(path, overwrite)
    busy = runs.holds_files(path)
    if busy and not overwrite and os.path.exists(os.path.join(path, runs.FINISHED)):
        raise KerastuneError(f"output dir {path!r} already holds a finished run; choose "
                             "another --output-dir or pass --overwrite")
    if busy:
        runs.check_not_in_use(path)
    runs.check_writable(path, set_aside=busy and overwrite)


def precheck(path, overrides=(), smoke=False, output_dir=None, overwrite=False):
    """What `kerastune run` checks before Keras is imported; returns the
    `RecipeFile`. Raises the one-line `KerastuneError` of the first problem."""
    recipe = read(path)
    check_overrides(recipe, overrides, smoke)
    check_output_dir(output_dir or os.path.join("runs", recipe.name + "-x"), overwrite)
    return recipe


def help_text(recipe):
    """`kerastune run RECIPE --help`: the launch lines, then every key with
    its type, default, range and comment."""
    summary = " ".join(recipe.doc.split("\n\n")[0].split())
    lines = [f"{recipe.name}: {summary}", ""]
    if recipe.launch_lines():
        lines += ["Launch:"] + [f"  {line}" for line in recipe.launch_lines()] + [""]
    if not recipe.fields:
        return "\n".join(lines + ["No Config class found in the file."])
    lines.append("Config keys, as KEY=VALUE (--smoke sets its own sizes first):")
    for field in recipe.fields.values():
        where = config_lib.expected_range(field)
        lines.append(f"  {field.name}: {field.type_text} = {field.default_text}"
                     + (f"  ({where})" if where else ""))
        if field.comment:
            lines.append(f"      {field.comment}")
    return "\n".join(lines)


__all__ = ["Field", "RecipeFile", "UNKNOWN", "check_output_dir", "check_overrides",
           "config_keys", "help_text", "precheck", "read"]
