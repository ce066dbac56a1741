import pytest

from kerastune_lab import testing
from kerastune_lab.errors import KerastuneError
from kerastune_lab.models import load_image_classifier, resolve_preset


def _classifier():
    import keras_hub

    return keras_hub.models.ImageClassifier


def test_known_names_handles_and_folders_pass(tmp_path, monkeypatch):
    from kerastune_lab import hub

    fetched = []  # names and handles are fetched (tests/test_hub.py); folders are not
    monkeypatch.setattr(hub, "fetch_preset", lambda preset: fetched.append(preset) or preset)
    cls = _classifier()
    assert resolve_preset("resnet_50_imagenet", cls) == "resnet_50_imagenet"
    assert resolve_preset("kaggle://keras/resnetv2/keras/resnet_50_imagenet", cls).startswith("kaggle://")
    assert resolve_preset("hf://someone/model", cls) == "hf://someone/model"
    folder = testing.tiny_preset("resnet")
    assert resolve_preset(folder, cls) == folder
    assert fetched == ["resnet_50_imagenet", "kaggle://keras/resnetv2/keras/resnet_50_imagenet",
                       "hf://someone/model"]


@pytest.mark.parametrize("preset, fragment", [
    ("./no/such/folder", "folder does not exist"),
])
def test_unknown_presets(preset, fragment):
    with pytest.raises(KerastuneError, match=fragment):
        resolve_preset(preset, _classifier())


def test_folder_without_config(tmp_path):
    with pytest.raises(KerastuneError, match="has no config.json"):
        resolve_preset(str(tmp_path), _classifier())


def test_new_head_has_the_asked_classes():
    model = load_image_classifier(testing.tiny_preset("resnet"), num_classes=3)
    assert model.get_layer("predictions").units == 3


def test_presets_command_lists_names(cli):
    result = cli("presets", "image_classifier")
    assert result.code == 0, result
    assert "  resnet_50_imagenet" in result.stdout.splitlines()
