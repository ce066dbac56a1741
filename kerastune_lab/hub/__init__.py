"""Preset and dataset names -> downloads, one-line failures.

A KerasHub preset name (`gpt2_base_en`) stands for a Kaggle handle
(`kaggle://keras/gpt2/keras/gpt2_base_en/3`) whose files KerasHub downloads
one by one with `kagglehub.model_download(handle, path)`; an `hf://ORG/NAME`
handle downloads with `huggingface_hub.hf_hub_download`; a TFDS dataset
downloads in `download_and_prepare`. Each is cached once complete.

    fetch_preset("gpt2_base_en")     # config.json first, through kagglehub's own cache
    with download_errors("TFDS dataset 'imdb_reviews'", source="tfds"):
        tfds.load("imdb_reviews", ...)

A failed download becomes a `DownloadFailed` (exit code 1 from the CLI) with
one line that names the preset or dataset, says what failed and what to do:
no connection (it downloads once and is then cached: run once online or copy
the cache), access refused (Kaggle: accept the model's license, set
credentials), not found, a server error (try again later), or a download cut
off halfway (interrupted: run the same command again).

A download cut off halfway is never loaded: kagglehub writes the file at its
cache path but touches its completion marker (`.complete/<version>/<file>.complete`)
only after the whole body arrived (and matched its MD5, when the server sent
one); without the marker the next `model_download` downloads the file again,
or resumes it with a Range request when the server accepts ranges. TFDS
downloads into a `*.tmp.<uuid>` folder and moves the file into place only once
its checksum matches. (tests/test_hub.py checks the kagglehub side.)

Bad input is not a download failure: a malformed handle is a
`KerastuneError` (exit code 2), like an unknown preset name
(`models.resolve_preset`).
"""

from kerastune_lab.hub.failures import (
    check_hosts_resolve,
    download_errors,
    failure_message,
    is_offline,
)
from kerastune_lab.hub.handles import (
    CONFIG_FILE,
    HF_SCHEME,
    KAGGLE_SCHEME,
    kaggle_handle,
    kaggle_model_url,
    preset_source,
)
from kerastune_lab.hub.presets import (
    cached_preset_folder,
    fetch_preset,
    load_preset,
    preset_download_errors,
)

__all__ = [
    "CONFIG_FILE", "HF_SCHEME", "KAGGLE_SCHEME", "cached_preset_folder", "check_hosts_resolve",
    "download_errors",
    "failure_message", "fetch_preset", "is_offline", "kaggle_handle", "kaggle_model_url",
    "load_preset", "preset_download_errors", "preset_source",
]
