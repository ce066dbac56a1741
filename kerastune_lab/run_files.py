"""A finished run's own files, read and checked: one line for a damaged one.

    config.json     {"recipe": ..., "config": {...}, ...}: the run's settings
    labels.json     ["cat", "dog"]: class names, in the model's output order
    chat.json       {"template": "...", "add_start_token": true, ...}
    threshold.json  {"positive_class", "threshold", "target_recall", ...}
    model/*.h5      the saved weights (HDF5)

A file cut short, overwritten or edited by hand fails here, in one line that
names the run, the file, what is wrong and what was expected (exit code 2),
instead of deep inside json, h5py or Keras with a traceback:

    run dir 'r': labels.json is damaged (not valid JSON at line 1): expected
    the list of class names the run wrote; re-run the recipe or restore the file

Nothing here imports Keras: `kerastune predict`, `evaluate`, `chat` and
`export` call `check_run` before Keras loads (seconds), and the library
functions read the files through the readers below.
"""

import json
import math
import os

from kerastune_lab import models
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import CHAT, CONFIG, LABELS, THRESHOLD, RunDir
from kerastune_lab.text_checks import unicode_problem

EXPECTED = {
    CONFIG: "the JSON object the run wrote, its settings under \"config\"",
    LABELS: "the list of class names the run wrote",
    CHAT: "the chat settings the run wrote (a JSON object with a \"template\" "
          "string holding {prompt} then {response})",
    THRESHOLD: "the decision threshold the run wrote (a JSON object with "
               "positive_class, threshold and target_recall)",
}
FIX = "re-run the recipe or restore the file"


def damaged(run_path, name, why, expected=None):
    """The one-line `KerastuneError` for a run file `name` that is damaged."""
    return KerastuneError(f"run dir {run_path!r}: {name} is damaged ({why}): expected "
                          f"{expected or EXPECTED[name]}; {FIX}")


def _kind(value):
    """The JSON name of `value`'s type."""
    if isinstance(value, bool):
        return "a boolean"
    for types, name in ((dict, "an object"), (list, "a list"), (str, "a string"),
                        ((int, float), "a number"), (type(None), "null")):
        if isinstance(value, types):
            return name
    return type(value).__name__


def read_json(run_path, name):
    """The JSON value of the run's file `name`; a damaged file (not UTF-8,
    empty, not JSON, nested past Python's limit) is one `damaged` line. A
    missing file raises `FileNotFoundError`, for the caller to word."""
    path = os.path.join(run_path, name)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise KerastuneError(f"run dir {run_path!r}: {name} cannot be read ({e.strerror}): "
                             f"expected {EXPECTED.get(name, 'a JSON file')}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise damaged(run_path, name, f"byte 0x{raw[e.start]:02x} at offset {e.start} is "
                                      "not UTF-8") from None
    if not text.strip():
        raise damaged(run_path, name, "empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise damaged(run_path, name, f"not valid JSON at line {e.lineno}") from None
    except RecursionError:
        raise damaged(run_path, name, "nested too deeply to read") from None


def run_config(run_path):
    """The "config" object of the run's config.json (its settings; {} for a
    config.json without one, as a run made by hand may be)."""
    data = read_json(run_path, CONFIG)
    if not isinstance(data, dict):
        raise damaged(run_path, CONFIG, f"{_kind(data)}, not an object")
    config = data.get("config", {})
    if not isinstance(config, dict):
        raise damaged(run_path, CONFIG, f"its \"config\" is {_kind(config)}, not an "
                      "object")
    return config


def image_size(run_path, config):
    """The run's image_size (int pixels), from its `run_config`."""
    size = config.get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise damaged(run_path, CONFIG, f"its image_size is {_kind(size)}, {size!r}",
                      "image_size a whole number of pixels, as the run wrote it")
    return size


def class_names(run_path):
    """The run's labels.json: a list of distinct non-empty strings."""
    names = read_json(run_path, LABELS)
    if not isinstance(names, list) or not names:
        raise damaged(run_path, LABELS, "an empty list" if names == [] else
                      f"{_kind(names)}, not a list of names")
    for n, name in enumerate(names, start=1):
        if not isinstance(name, str) or not name.strip():
            raise damaged(run_path, LABELS, f"class {n} is {_kind(name)}, {name!r}"
                          if not isinstance(name, str) else f"class {n} is an empty name")
        problem = unicode_problem(name, escaped=False)
        if problem:
            raise damaged(run_path, LABELS, f"class {n}: {problem}")
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise damaged(run_path, LABELS, f"class {twice!r} is named twice")
    return names


def chat_settings(run_path):
    """The run's chat.json: a JSON object with a "template" string."""
    from kerastune_lab.data.chat_template import check_settings

    settings = read_json(run_path, CHAT)
    if not isinstance(settings, dict):
        raise damaged(run_path, CHAT, f"{_kind(settings)}, not an object")
    template = settings.get("template")
    if not isinstance(template, str):
        raise damaged(run_path, CHAT, f"its \"template\" is {_kind(template)}"
                      if "template" in settings else "it has no \"template\"")
    try:
        check_settings(template)
    except KerastuneError:
        raise damaged(run_path, CHAT, f"its template {template[:60]!r} lacks "
                      "{prompt} then {response}") from None
    problem = unicode_problem(template, escaped=False)
    if problem or not isinstance(settings.get("add_start_token", True), bool):
        raise damaged(run_path, CHAT, f"its template: {problem}" if problem else
                      f"its add_start_token is {_kind(settings['add_start_token'])}, "
                      "not true or false")
    return settings


def threshold(run_path, names):
    """The run's threshold.json, checked against its class `names`."""
    point = read_json(run_path, THRESHOLD)
    if not isinstance(point, dict):
        raise damaged(run_path, THRESHOLD, f"{_kind(point)}, not an object")
    if point.get("positive_class") not in names:
        raise damaged(run_path, THRESHOLD, f"its positive_class "
                      f"{point.get('positive_class')!r} is not one of {names}")
    for key in ("threshold", "target_recall"):
        value = point.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                math.isfinite(value) and 0 <= value <= 1):
            raise damaged(run_path, THRESHOLD,
                          f"its {key} is {_kind(value)}, {value!r}, not a number in [0, 1]")
    return point


def check_run(run_dir):
    """Checks the files a finished run holds, before anything loads: its
    config.json (and image_size, where it has one), and whichever of
    labels.json, chat.json, threshold.json and model weights it holds.
    Returns the `RunDir`; None for `run_dir` None (nothing to check)."""
    if run_dir is None:
        return None
    run = RunDir.open(run_dir)
    config = run_config(run.path)
    if "image_size" in config:
        image_size(run.path, config)
    names = None
    if os.path.exists(run.labels_path):
        names = class_names(run.path)
    if os.path.exists(run.threshold_path) and names is not None:
        threshold(run.path, names)
    if os.path.exists(run.chat_path):
        chat_settings(run.path)
    if os.path.isdir(run.model_path):  # its JSON files, its weights (h5py, no Keras)
        models.check_preset_folder(run.model_path, "run model")
        models.check_weights(run.path)
    return run
