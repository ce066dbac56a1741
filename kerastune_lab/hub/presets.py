"""Presets: `config.json` fetched first through the hub's own cache, and a
cached preset loaded offline when the hub cannot be reached."""

import contextlib
import os

from kerastune_lab.errors import KerastuneError
from kerastune_lab.hub.failures import display_path, download_errors, is_offline
from kerastune_lab.hub.handles import CONFIG_FILE, HF_SCHEME, KAGGLE_SCHEME, kaggle_handle


def fetch_preset(preset):
    """Downloads a preset's `config.json` into the cache KerasHub reads, so that
    a preset that cannot be downloaded fails here in one line.

    A KerasHub preset name or `kaggle://` handle: `kagglehub.model_download(
    handle, "config.json")`, the request and cache KerasHub's `from_preset`
    uses (a cached file makes no request, for a versioned handle). An
    `hf://ORG/NAME` handle: `huggingface_hub.hf_hub_download`. Anything else
    (a local folder, `gs://`, ...): nothing to do.

    Args:
        preset: str. A preset name (in KerasHub's `BUILTIN_PRESETS`), a handle
            or a folder.

    Returns:
        `preset`, unchanged.

    Raises:
        DownloadFailed: the download failed (one line: what, why, what to do).
        KerastuneError: a malformed handle (bad input).
    """
    what = f"preset {preset!r}"
    handle = kaggle_handle(preset)
    if handle:
        import kagglehub
        from kagglehub.handle import parse_model_handle

        ref = handle[len(KAGGLE_SCHEME):]
        try:
            parse_model_handle(ref)
        except ValueError:
            raise KerastuneError(
                f"{what}: {handle!r} is not a Kaggle model handle: expected "
                "kaggle://ORG/MODEL/FRAMEWORK/VARIATION[/VERSION], e.g. "
                "kaggle://keras/gpt2/keras/gpt2_base_en/3") from None
        with download_errors(what, preset=preset):
            kagglehub.model_download(ref, CONFIG_FILE)
    elif preset.startswith(HF_SCHEME):
        import huggingface_hub
        from huggingface_hub.errors import HFValidationError

        repo = preset[len(HF_SCHEME):]
        try:
            with download_errors(what, preset=preset):
                huggingface_hub.hf_hub_download(repo_id=repo, filename=CONFIG_FILE)
        except HFValidationError:
            raise KerastuneError(f"{what}: {repo!r} is not a Hugging Face repo id: expected "
                                 "hf://ORG/NAME, e.g. hf://google/gemma-2b") from None
    return preset


def cached_preset_folder(preset):
    """The folder of kagglehub's cache that holds Kaggle preset `preset` (a
    name or a versioned `kaggle://` handle), when every file in it was
    downloaded whole (has its completion marker, or the whole model has
    one); else None. A file cut off halfway has no marker, so a folder
    holding one is never returned."""
    handle = kaggle_handle(preset)
    if not handle:
        return None
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    try:
        h = parse_model_handle(handle[len(KAGGLE_SCHEME):])
    except ValueError:
        return None
    if not h.is_versioned():
        return None
    cache = Cache()
    folder = cache.get_path(h)
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return None
    if cache.load_from_cache(h):  # the whole model was downloaded
        return folder
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if cache.load_from_cache(h, path) is None:
                return None
    return folder


def load_preset(load, preset):
    """`load(preset)`, e.g. `lambda p: task_cls.from_preset(p)`; and when that
    fails for want of a connection while kagglehub's cache holds the preset
    (`cached_preset_folder`), `load(that folder)`.

    KerasHub asks Kaggle for the optional files a preset lacks
    (`task.weights.h5`, ...) on every load, cached or not (kagglehub caches
    no "absent"), so without this a preset downloaded once does not load
    offline. If the cached folder does not load either (a file the preset
    needs was never downloaded), the first error is raised.
    """
    try:
        return load(preset)
    except Exception as e:
        folder = cached_preset_folder(preset) if is_offline(e) else None
        if folder is None:
            raise
        error = e
    import logging

    logging.getLogger("kerastune_lab").info(
        "no connection to Kaggle: loading preset %r from kagglehub's cache %s", preset,
        display_path(folder))
    try:
        return load(folder)
    except Exception:
        pass
    raise error


@contextlib.contextmanager
def preset_download_errors(preset):
    """`download_errors` around loading `preset` with KerasHub.

    KerasHub turns a refused or failed `config.json` download into "Preset
    ... has no config.json", dropping the cause: the file is asked for again
    (`fetch_preset`), which raises the one-line `DownloadFailed` with it.
    """
    try:
        with download_errors(f"preset {preset!r}", preset=preset):
            yield
    except ValueError as e:
        if f"has no {CONFIG_FILE}" in str(e):
            fetch_preset(preset)
        raise

