"""Presets -> KerasHub task models.

A preset is a KerasHub preset name (`resnet_50_imagenet`), a handle
(`kaggle://...`, `hf://...`, `gs://...`, `modelscope://...`) or a local
folder saved with `save_to_preset` (or a Hugging Face checkpoint folder that
KerasHub converts). Names are checked against KerasHub's list before any
download, so a typo is a one-line error that names the close ones.
"""

import contextlib
import os

from kerastune_lab.config import closest
from kerastune_lab.errors import KerastuneError

HANDLE_SCHEMES = ("kaggle://", "hf://", "gs://", "modelscope://", "file://")


def resolve_preset(preset, task_cls):
    """Checks that `preset` can name a preset for `task_cls` and returns it.

    Args:
        preset: str. A preset name, handle, or local folder.
        task_cls: a KerasHub task class, e.g. `keras_hub.models.ImageClassifier`.
    """
    if preset.startswith(HANDLE_SCHEMES):
        return preset
    path = os.path.expanduser(preset)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise KerastuneError(
                f"preset folder {preset!r} has no config.json: expected a folder "
                "written by save_to_preset or a Hugging Face checkpoint"
            )
        return path
    known = task_cls.presets
    if preset in known:
        return preset
    looks_like_path = os.sep in preset or preset.startswith(".")
    where = "folder does not exist" if looks_like_path else "not a known preset"
    raise KerastuneError(
        f"unknown preset {preset!r} for {task_cls.__name__} ({where})"
        f"{closest(preset, known)}; see `kerastune presets`"
    )


def load_task(task_cls, preset, **kwargs):
    """Loads `task_cls.from_preset(preset, **kwargs)` after `resolve_preset`."""
    return task_cls.from_preset(resolve_preset(preset, task_cls), **kwargs)


def load_image_classifier(preset, num_classes, **kwargs):
    """Loads a KerasHub image classifier with a new `num_classes` head.

    The backbone (and its preprocessor) come from the preset; the head is
    freshly initialised, since the preset's head was trained for other
    classes.
    """
    import keras_hub

    return load_task(keras_hub.models.ImageClassifier, preset, num_classes=num_classes, **kwargs)


def load_run_model(run, task_cls, **kwargs):
    """Loads the model saved in a run directory (a preset folder).

    A model trained under a mixed-precision policy loads in float32 (its
    weights are float32 anyway) unless `dtype=` says otherwise: KerasHub
    cannot load a saved "mixed_*" policy back by itself.
    """
    path = run.file("model")
    if not os.path.isdir(path):
        raise KerastuneError(f"run dir {run.path!r} holds no model/ folder: was the run finished?")
    if "dtype" not in kwargs and os.path.exists(os.path.join(path, "config.json")):
        import json

        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            dtype = json.load(f).get("config", {}).get("dtype")
        name = dtype.get("config", {}).get("name") if isinstance(dtype, dict) else dtype
        if str(name).startswith("mixed_"):
            kwargs["dtype"] = "float32"
    return task_cls.from_preset(path, **kwargs)


@contextlib.contextmanager
def detached_preprocessor(task):
    """Runs the block with `task.preprocessor = None`, then puts it back.

    With no preprocessor a KerasHub task takes already-tokenised inputs in
    `fit`, `evaluate`, `predict` and `generate` (for a CausalLM: x =
    {"token_ids", "padding_mask"}, y, sample_weight); keep the preprocessor
    attached for `save_to_preset`, which saves its tokenizer.
    """
    preprocessor = task.preprocessor
    task.preprocessor = None
    try:
        yield task
    finally:
        task.preprocessor = preprocessor
