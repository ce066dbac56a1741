"""Out of memory, out of disk, and loading nothing that can run code.

Out-of-memory errors of each backend are raised in-process from a tiny
recipe file (a real one would need a real device to fill); disk failures by
monkeypatching the write calls.
"""

import errno
import json
import os
import shutil
import textwrap

import pytest

from kerastune_lab import testing
from kerastune_lab.errors import KerastuneError, resource_error_message
from kerastune_lab.runs import RunDir, atomic_path, write_json
from tests.conftest import assert_one_line_error


def _oom(kind):
    """An out-of-memory exception as each framework raises it."""
    if kind == "jax":
        from jax.errors import JaxRuntimeError

        return JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                               "17179869184 bytes.")
    if kind == "tensorflow":
        import tensorflow as tf

        return tf.errors.ResourceExhaustedError(
            None, None, "OOM when allocating tensor with shape[32,4096,4096]")
    if kind == "torch":
        import torch

        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB.")
    if kind == "torch_cuda":
        import torch

        return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
    if kind == "chained":  # wrapped by some layer of Keras or the recipe
        try:
            raise _oom("torch")
        except Exception as e:
            try:
                raise RuntimeError("fit failed") from e
            except RuntimeError as outer:
                return outer
    return MemoryError()


RECIPE = textwrap.dedent('''
    """A recipe whose main raises what the test asks for."""
    import dataclasses

    @dataclasses.dataclass
    class Config:
        batch_size: int = 4
        sequence_length: int = 8
        quantize: str = "none"
        seed: int = 0

    RAISE = None  # set by the test

    def main(config, run):
        run.write_json("metrics.json", {"started": True})
        raise RAISE()
''')


@pytest.fixture
def raising_recipe(tmp_path, monkeypatch):
    """A recipe file whose main raises `holder[0]()`; returns (path, holder)."""
    path = tmp_path / "raises.py"
    path.write_text(RECIPE)
    holder = []
    import kerastune_lab.recipe as recipe_lib

    load = recipe_lib.load_recipe

    def load_and_arm(p):
        module = load(p)
        module.RAISE = holder[0]
        return module

    monkeypatch.setattr(recipe_lib, "load_recipe", load_and_arm)
    return path, holder


def _one_line(result, code, *fragments):
    assert result.code == code, result
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("kerastune: error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize("kind, named", [
    ("jax", "RESOURCE_EXHAUSTED"),
    ("tensorflow", "ResourceExhaustedError"),
    ("torch", "OutOfMemoryError"),
    ("torch_cuda", "OutOfMemoryError"),
    ("chained", "OutOfMemoryError"),
    ("memory", "MemoryError"),
])
def test_out_of_memory_in_run_is_one_line_with_what_to_change(cli, raising_recipe, tmp_path,
                                                              kind, named):
    path, holder = raising_recipe
    holder.append(lambda: _oom(kind))
    result = cli("run", path, "--output-dir", tmp_path / "out", "batch_size=2")
    line = _one_line(result, 1, "out of memory", named, "batch_size=",
                     "sequence_length=", "quantize=")
    # Only the recipe's own keys are suggested.
    assert "lora_rank" not in line and "remat" not in line
    assert len(line) < 400


def test_memory_hints_name_lora_and_remat_for_the_lora_recipe():
    from kerastune_lab.cli import _recipe_config_keys
    from tests.conftest import recipe_path

    keys = _recipe_config_keys(recipe_path("lora_chat"))
    message = resource_error_message(MemoryError(), "run", keys)
    for hint in ("batch_size=", "sequence_length=", "quantize=", "lora_rank=", "remat="):
        assert hint in message


def test_memory_hints_name_the_precision_key_not_the_old_one():
    from kerastune_lab.cli import _recipe_config_keys
    from tests.conftest import recipe_path

    # imdb_sentiment keeps the older mixed_precision keys beside precision=.
    keys = _recipe_config_keys(recipe_path("imdb_sentiment"))
    message = resource_error_message(MemoryError(), "run", keys)
    assert "precision=mixed_bfloat16" in message
    assert "mixed_precision=" not in message


@pytest.mark.parametrize("command, target, args, hint", [
    ("predict", "kerastune_lab.predict.predict_images", ["x.jpg"], "fewer images"),
    ("chat", "kerastune_lab.generate.load_chat_generator", [], "--max-length"),
    ("evaluate", "kerastune_lab.predict.evaluate_image_folder", ["--data", "d"],
     "--batch-size"),
])
def test_out_of_memory_in_other_commands(cli, monkeypatch, tmp_path, command, target, args,
                                         hint):
    module, name = target.rsplit(".", 1)

    def fail(*a, **k):
        raise _oom("jax")

    monkeypatch.setattr(__import__(module, fromlist=[name]), name, fail)
    # A run folder whose files pass the checks made before Keras loads.
    (tmp_path / "config.json").write_text('{"recipe": "x", "config": {}}')
    _one_line(cli(command, tmp_path, *args), 1, "out of memory", hint)


def test_other_errors_keep_their_traceback(cli, raising_recipe, tmp_path):
    path, holder = raising_recipe
    holder.append(lambda: RuntimeError("a bug"))
    with pytest.raises(RuntimeError, match="a bug"):
        cli("run", path, "--output-dir", tmp_path / "out")


# --- disk ---------------------------------------------------------------------

def test_disk_full_during_a_run_names_the_file(cli, raising_recipe, tmp_path, monkeypatch):
    path, holder = raising_recipe
    out = tmp_path / "out"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    holder.append(lambda: KeyError("never reached"))
    monkeypatch.setattr(os, "fsync", no_space)  # the first write of the run fails
    line = _one_line(cli("run", path, "--output-dir", out), 1, "cannot write",
                     "No space left on device", "--output-dir")
    assert os.path.join(str(out), "config.json") in line
    # Nothing was trained: no folder is left (README, the run directory), so
    # no temporary either.
    assert not out.exists() and os.listdir(tmp_path) == [os.path.basename(path)]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_disk_errors_are_one_line(code):
    message = resource_error_message(OSError(code, os.strerror(code), "/data/run/x.h5"))
    assert "'/data/run/x.h5'" in message and os.strerror(code) in message
    assert resource_error_message(OSError(errno.ENOENT, "missing", "x")) is None


def test_failed_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src)

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(OSError) as e:
        write_json(path, {"a": 2})
    assert e.value.filename == str(path)  # named as the file, not its temporary
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_writer_out_of_space_keeps_the_old_file(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch\n1\n")
    with pytest.raises(OSError) as e:
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write("epoch\n1\n2")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert e.value.filename == str(path)
    assert path.read_text() == "epoch\n1\n"
    assert sorted(os.listdir(tmp_path)) == ["history.csv"]


def test_failed_folder_replace_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    (target / "w.txt").write_text("old")
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), dst)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            os.makedirs(tmp)
            (open(os.path.join(tmp, "w.txt"), "w")).write("new")
    assert (target / "w.txt").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_run_dir_on_a_full_disk_is_refused_before_it_starts(cli, raising_recipe, tmp_path,
                                                             monkeypatch):
    path, holder = raising_recipe
    holder.append(lambda: AssertionError("main must not run"))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage._replace(free=5 * 2**20))  # 5 MB
    out = tmp_path / "out"
    assert_one_line_error(cli("run", path, "--output-dir", out), str(out), "only 5 MB free",
                          "at least 100 MB", "KERASTUNE_MIN_FREE_MB")
    assert not out.exists()
    monkeypatch.setenv("KERASTUNE_MIN_FREE_MB", "1")
    RunDir.create(out).discard()  # 5 MB is enough for a 1 MB minimum
    monkeypatch.setenv("KERASTUNE_MIN_FREE_MB", "lots")
    with pytest.raises(KerastuneError, match="KERASTUNE_MIN_FREE_MB='lots'"):
        RunDir.create(out)


def test_unwritable_output_dir_is_refused_before_it_starts(cli, raising_recipe, tmp_path,
                                                           monkeypatch):
    path, holder = raising_recipe
    holder.append(lambda: AssertionError("main must not run"))
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    # chmod does not stop root, who runs some CI: pretend instead.
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode)
                        and os.path.abspath(p) != str(locked))
    out = locked / "deeper" / "run"
    assert_one_line_error(cli("run", path, "--output-dir", out), str(out), str(locked),
                          "not writable")
    assert os.listdir(locked) == []
    (tmp_path / "afile").write_text("x")
    assert_one_line_error(cli("run", path, "--output-dir", tmp_path / "afile" / "run"),
                          "afile", "is a file")


# --- loading nothing unsafe -----------------------------------------------------

@pytest.fixture(scope="module")
def resnet_preset():
    return testing.tiny_preset("resnet")


def _copy_preset(src, dst):
    shutil.copytree(src, dst)
    return dst


def _add_lambda(config_path):
    with open(config_path) as f:
        config = json.load(f)
    config["config"]["extra"] = {"module": "keras.layers", "class_name": "Lambda",
                                 "config": {"function": {"class_name": "__lambda__",
                                                         "config": {"code": "4wAAAA=="}}}}
    with open(config_path, "w") as f:
        json.dump(config, f)


def _image_classifier():
    import keras_hub

    return keras_hub.models.ImageClassifier


def test_preset_folder_naming_a_lambda_is_refused(resnet_preset, tmp_path):
    from kerastune_lab.models import load_task

    folder = _copy_preset(resnet_preset, tmp_path / "evil")
    _add_lambda(folder / "config.json")
    with pytest.raises(KerastuneError, match=r"config.json names a Lambda layer.*refused"):
        load_task(_image_classifier(), str(folder), num_classes=2)


@pytest.mark.parametrize("weights", ["model.keras", "model.pkl", "model.pt"])
def test_preset_folder_with_only_unsafe_weights_is_refused(resnet_preset, tmp_path, weights):
    from kerastune_lab.models import resolve_preset

    folder = _copy_preset(resnet_preset, tmp_path / "p")
    for name in os.listdir(folder):
        if name.endswith(".h5"):
            os.remove(folder / name)
    (folder / weights).write_bytes(b"\x80\x04not really")
    with pytest.raises(KerastuneError, match=rf"holds weights only in {weights}.*can run code"):
        resolve_preset(str(folder), _image_classifier())


def test_hugging_face_folder_with_only_pytorch_model_bin_is_refused(tmp_path):
    import keras_hub

    from kerastune_lab.models import resolve_preset

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(KerastuneError, match="pytorch_model.bin"):
        resolve_preset(str(folder), keras_hub.models.TextClassifier)
    # With safetensors beside it the .bin is never read, so the folder passes.
    (folder / "model.safetensors").write_bytes(b"")
    assert resolve_preset(str(folder), keras_hub.models.TextClassifier) == str(folder)


def test_sharded_index_naming_pickle_shards_is_refused(resnet_preset, tmp_path):
    from kerastune_lab.models import resolve_preset

    folder = _copy_preset(resnet_preset, tmp_path / "p")
    (folder / "model.weights.json").write_text(json.dumps(
        {"weight_map": {"a": "model_00000.weights.h5", "b": "shard.pkl"}}))
    with pytest.raises(KerastuneError, match="'shard.pkl'"):
        resolve_preset(str(folder), _image_classifier())


def test_keras_file_as_preset_is_refused(tmp_path):
    from kerastune_lab.models import resolve_preset

    (tmp_path / "model.keras").write_bytes(b"PK")
    with pytest.raises(KerastuneError, match=r"is a file.*\.keras"):
        resolve_preset(str(tmp_path / "model.keras"), _image_classifier())


def test_run_model_with_unsafe_files_is_refused(resnet_preset, tmp_path):
    import keras_hub

    from kerastune_lab.models import load_run_model

    run = RunDir.create(tmp_path / "run")
    _copy_preset(resnet_preset, tmp_path / "run" / "model")
    _add_lambda(tmp_path / "run" / "model" / "config.json")
    with pytest.raises(KerastuneError, match="run model .*names a Lambda layer"):
        load_run_model(run, keras_hub.models.ImageClassifier)
    os.remove(run.file("model/config.json"))
    with pytest.raises(KerastuneError, match="model/ has no config.json"):
        load_run_model(run, keras_hub.models.ImageClassifier)


@pytest.mark.parametrize("name", ["adapter.bin", "adapter.pt", "adapter.lora.pkl"])
def test_adapter_in_another_format_is_refused(tmp_path, name):
    from kerastune_lab.finetune.lora import read_adapter_metadata

    (tmp_path / name).write_bytes(b"\x80\x04pickle")
    with pytest.raises(KerastuneError, match="expected an h5 file"):
        read_adapter_metadata(tmp_path / name)


def test_safe_loading_undoes_enable_unsafe_deserialization():
    import keras
    from keras.src.saving import serialization_lib

    from kerastune_lab.models import safe_loading

    config = serialization_lib.serialize_keras_object(lambda x: x + 1)
    before = serialization_lib.in_safe_mode()
    keras.config.enable_unsafe_deserialization()
    try:
        with pytest.raises(KerastuneError, match="Python lambda.*refused"):
            with safe_loading():
                keras.saving.deserialize_keras_object(config)
        assert serialization_lib.in_safe_mode() is False  # put back as it was
    finally:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("safe_mode_saving", before)


def test_a_tiny_preset_still_loads(resnet_preset):
    import numpy as np

    from kerastune_lab.models import load_image_classifier

    model = load_image_classifier(resnet_preset, num_classes=3)
    assert model.predict(np.zeros((1, 32, 32, 3)), verbose=0).shape == (1, 3)
