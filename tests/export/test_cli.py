"""`kerastune export`: bad input is one line (exit 2) and writes nothing."""

import json
import shutil

import pytest

from tests.conftest import assert_one_line_error, run_cli


def test_export_bad_input(lora_run, cli, tmp_path):
    run = lora_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = cli("export", run, "--format", "peft", "--output", out)
    assert_one_line_error(result, "already exists", str(out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"config": {}}))
    result = cli("export", empty, "--format", "hf", "--output", tmp_path / "a")
    assert_one_line_error(result, str(empty), "no model/ or adapter.lora.h5")

    for fmt in ("keras", "serving"):
        result = cli("export", run, "--format", fmt, "--output", tmp_path / "b")
        assert_one_line_error(result, f"--format {fmt} does not fit", "a LoRA run",
                              "hf or peft")
    result = cli("export", run, "--format", "hf", "--with-base", "--output", tmp_path / "b")
    assert_one_line_error(result, "--with-base")
    # The tiny base has no Hugging Face name for base_model_name_or_path.
    result = cli("export", run, "--format", "peft", "--output", tmp_path / "b")
    assert_one_line_error(result, "no known Hugging Face name", "--with-base")
    # A KerasHub name is written as the Hugging Face model it was converted from.
    named = tmp_path / "named"
    result = cli("export", run, "--format", "peft", "--preset", "llama2_7b_en",
                 "--output", named)
    assert result.code == 0, result
    config = json.loads((named / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    shutil.rmtree(named)
    result = cli("export", run, "--format", "onnx", "--output", tmp_path / "b")
    assert result.code == 2 and "onnx" in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


def test_export_refuses_a_format_of_another_kind_of_run(image_run, chat_runs, cli, tmp_path):
    image = image_run
    for fmt in ("hf", "peft"):
        result = cli("export", image, "--format", fmt, "--output", tmp_path / "x")
        assert_one_line_error(result, f"--format {fmt} does not fit",
                              "a classification run", "keras or serving")
    chat = chat_runs["gpt2"]
    result = cli("export", chat, "--format", "peft", "--output", tmp_path / "x")
    assert_one_line_error(result, "--format peft does not fit", "a chat run", "--format hf")
    gpt2_lora = tmp_path / "gpt2_lora"
    _gpt2_lora_run(gpt2_lora)
    result = cli("export", gpt2_lora, "--format", "peft", "--output", tmp_path / "x")
    assert_one_line_error(result, "GPT2Backbone", "--format hf")
    assert not (tmp_path / "x").exists()


def _gpt2_lora_run(path):
    import keras_hub

    from kerastune_lab import testing
    from kerastune_lab.finetune import lora

    preset = testing.tiny_preset("gpt2")
    model = keras_hub.models.CausalLM.from_preset(preset)
    lora.enable_lora(model, rank=2)
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"config": {}}))
    lora.save_adapter(model, path / "adapter.lora.h5", preset=preset)


@pytest.mark.backend_independent  # the atomic write, the same on every backend
def test_a_killed_export_leaves_a_temporary_the_next_one_removes(lora_run, tmp_path):
    """SIGKILL after the files are written, before the rename: the output is
    not there, a hidden temporary is; the next export into the same place
    removes it and writes the output."""
    from tests.faults import run_cli_with_signal

    out = tmp_path / "peft"
    result = run_cli_with_signal("KILL@export", "export", lora_run, "--format", "peft",
                                 "--preset", "llama2_7b_en", "--output", out)
    assert result.code == -9, result
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".peft.")]
    assert len(leftovers) == 1, list(tmp_path.iterdir())
    result = run_cli("export", lora_run, "--format", "peft", "--preset", "llama2_7b_en",
                     "--output", out)
    assert result.code == 0, result
    assert (out / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peft"]


@pytest.mark.backend_independent  # the atomic write, the same on every backend
def test_an_interrupted_export_exits_130_and_leaves_nothing(lora_run, tmp_path):
    from tests.faults import run_cli_with_signal

    out = tmp_path / "peft"
    result = run_cli_with_signal("INT@export", "export", lora_run, "--format", "peft",
                                 "--preset", "llama2_7b_en", "--output", out)
    assert result.code == 130, result
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.backend_independent  # the atomic write, the same on every backend
def test_output_paths_as_the_user_means_them(lora_run, cli, tmp_path, monkeypatch):
    """A trailing slash (as the README writes folders) and `~` name the same
    folder as without them."""
    result = cli("export", lora_run, "--format", "peft", "--preset", "llama2_7b_en",
                 "--output", f"{tmp_path}/slash/")
    assert result.code == 0, result
    assert (tmp_path / "slash" / "adapter_config.json").is_file()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    result = cli("export", lora_run, "--format", "peft", "--preset", "llama2_7b_en",
                 "--output", "~/adapters/")
    assert result.code == 0, result
    assert result.last_line == str(tmp_path / "home" / "adapters")
    assert (tmp_path / "home" / "adapters" / "adapter_config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "slash"]
    assert_one_line_error(cli("export", lora_run, "--format", "peft", "--output",
                              f"{tmp_path}/slash/"), "already exists")
