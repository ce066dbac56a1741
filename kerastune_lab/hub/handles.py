"""Preset names and handles: which hub a preset downloads from, and its
Kaggle handle and page."""

KAGGLE_SCHEME = "kaggle://"
HF_SCHEME = "hf://"
CONFIG_FILE = "config.json"  # a preset's config (a run's own is `runs.CONFIG`)


def kaggle_handle(preset):
    """The `kaggle://` handle of a KerasHub preset name or a Kaggle handle, else None."""
    if preset.startswith(KAGGLE_SCHEME):
        return preset
    if "://" in preset:
        return None
    from kerastune_lab import compat

    handle = compat.builtin_presets().get(preset, {}).get("kaggle_handle")
    return handle if handle and handle.startswith(KAGGLE_SCHEME) else None
def kaggle_model_url(handle):
    """https://www.kaggle.com/models/ORG/MODEL, the page with the model's license."""
    parts = handle[len(KAGGLE_SCHEME):].split("/")
    return f"https://www.kaggle.com/models/{parts[0]}/{parts[1]}"
def preset_source(preset):
    if preset is None:
        return None
    if preset.startswith(HF_SCHEME):
        return "hf"
    return "kaggle" if kaggle_handle(preset) else None
