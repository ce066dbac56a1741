"""The recipes and data that ship with the package, found by name.

After `pip install kerastune-lab` the recipes live in the package as
`kerastune_lab.recipes` (pyproject.toml maps the repository's top-level
`recipes/` folder there), so a recipe is named by its name or by a path:

    kerastune run lora_chat            # the shipped recipe
    kerastune run ./my_recipe.py       # a file of your own (or recipes/lora_chat.py in a checkout)
    kerastune recipes                  # the shipped ones, one line each
    kerastune cp lora_chat [DEST]      # a copy to edit (torchtune's `tune cp`)

A copy runs anywhere: the chat recipes name their data with `data_file`,
which points into the installed package, not beside the recipe file.
"""

import ast
import difflib
import importlib.util
import os
import shutil

from kerastune_lab.errors import KerastuneError


def recipes_dir():
    """The folder of the shipped recipes: the installed `kerastune_lab.recipes`,
    or a checkout's `recipes/` when the package runs from one uninstalled."""
    try:
        spec = importlib.util.find_spec("kerastune_lab.recipes")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "recipes")
    if os.path.isdir(checkout):
        return checkout
    raise KerastuneError("the shipped recipes are missing from this install of "
                         "kerastune_lab: reinstall it (pip install --force-reinstall "
                         "kerastune-lab)")


def data_file(name):
    """The path of a data file that ships with the recipes, e.g.
    `data_file("sarcastic_chat.jsonl")`."""
    return os.path.join(recipes_dir(), "data", name)


def names():
    """The shipped recipes' names, sorted."""
    return sorted(f[:-3] for f in os.listdir(recipes_dir())
                  if f.endswith(".py") and not f.startswith("_"))


def summary(name):
    """The first sentence of a shipped recipe's docstring (read, not imported)."""
    with open(os.path.join(recipes_dir(), name + ".py"), encoding="utf-8") as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    return first.split(". ")[0].rstrip(".") + "." if first else ""


def _unknown(text):
    known = names()
    close = difflib.get_close_matches(text.removesuffix(".py"), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return KerastuneError(f"no recipe named {text!r}{hint}: expected one of "
                          f"{', '.join(known)} or the path of a recipe file ending in .py")


def is_path(text):
    """Whether `text` names a file (a path or a .py name) rather than a shipped recipe."""
    return text.endswith(".py") or os.sep in text or "/" in text


def resolve(text):
    """(path, shipped name or None) of a recipe named by name or by path.

    A path is taken as it is (`recipe_file.read` says if it is missing); a
    name is looked up among the shipped recipes. A missing path whose file
    name is a shipped recipe says how to run that one by name.
    """
    text = os.fspath(text)
    if is_path(text):
        base = os.path.basename(text)[:-3] if text.endswith(".py") else None
        if (not os.path.exists(os.path.expanduser(text)) and base in names()
                and os.path.dirname(text) in ("", "recipes", "./recipes")):
            raise KerastuneError(
                f"recipe file {text!r} does not exist: the shipped recipe of that name "
                f"runs as `kerastune run {base}`")
        return os.path.expanduser(text), None
    if text not in names():
        raise _unknown(text)
    return os.path.join(recipes_dir(), text + ".py"), text


def copy(name, dest=None):
    """Copies the shipped recipe `name` to `dest` (a file, or a folder that
    exists; defaults to ./NAME.py) and returns the new file's path. Refuses
    to replace a file that is there."""
    if is_path(name) or name not in names():
        raise _unknown(name)
    dest = os.path.expanduser(os.fspath(dest)) if dest else "."
    if os.path.isdir(dest):
        dest = os.path.join(dest, name + ".py")
    if os.path.lexists(dest):
        raise KerastuneError(f"{dest!r} already exists: expected a new file name "
                             f"(kerastune cp {name} OTHER.py)")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise KerastuneError(f"folder {parent!r} does not exist: expected an existing "
                             "folder or a file path inside one")
    if not dest.endswith(".py"):
        raise KerastuneError(f"{dest!r}: expected a file name ending in .py (kerastune run "
                             "reads recipe files by that ending)")
    tmp = dest + ".partial"
    try:
        shutil.copyfile(os.path.join(recipes_dir(), name + ".py"), tmp)
        os.replace(tmp, dest)
    except BaseException:  # a full disk, a file size limit: no half-written copy left
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise
    return dest


__all__ = ["copy", "data_file", "is_path", "names", "recipes_dir", "resolve", "summary"]
