"""lora_chat through the real `kerastune` CLI: the run keeps an adapter, `chat`
puts it back on its base, `merge` writes a plain KerasHub preset, bad input
is one line. (The LoRA math itself is tested in tests/finetune/test_lora.py.)"""

import io
import json
import os
import shutil
import sys

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.finetune import lora
from tests.conftest import BACKEND, SMOKE_RUNS, assert_one_line_error, recipe_path, run_cli

RECIPE = recipe_path("lora_chat")
PROMPTS = "Is it Monday again?\n\nAny tips for my garden?\n"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lora"
    result = run_cli("run", RECIPE, "--smoke", "--output-dir", out)
    assert result.code == 0, result
    assert result.last_line == str(out)
    SMOKE_RUNS["lora_chat"] = out, result
    return out


def _h5_sizes(path):
    import h5py

    sizes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: sizes.append(obj.size)
                     if isinstance(obj, h5py.Dataset) else None)
    return sizes


def test_run_keeps_the_adapter_not_the_base(lora_run):
    out = lora_run
    for name in ("config.json", "history.csv", "metrics.json", "report.md", "chat.json",
                 "adapter.lora.h5", "FINISHED", "tensorboard/train"):
        assert os.path.exists(out / name), name
    assert not os.path.exists(out / "model")
    adapter = out / "adapter.lora.h5"
    metadata = lora.read_adapter_metadata(adapter)
    assert metadata["base"]["preset"] == testing.tiny_preset("llama")
    assert metadata["base"]["class_name"] == "LlamaBackbone"
    assert (metadata["quantize"], metadata["rank"], metadata["targets"]) == (
        "int8", 4, ["query", "value"])
    # The run's lora_alpha (8, not the rank: a scale of 2) is in the file
    # (tests/test_what_was_used.py: the scale a loaded adapter applies).
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["precision"] == "float32"  # the smoke's precision=float32, set for the run
    config = recorded["config"]
    assert metadata["alpha"] == config["lora_alpha"] == 8.0 != metadata["rank"]
    # 2 layers x (query, value): every A and B in the file, nothing else.
    assert len(metadata["layers"]) == 4 and len(_h5_sizes(adapter)) == 8

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adapter_bytes"] == os.path.getsize(adapter)
    assert metrics["trainable_parameters"] == sum(_h5_sizes(adapter))
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    assert metrics["trainable_ratio"] == pytest.approx(
        metrics["trainable_parameters"] / metrics["total_parameters"])
    assert metrics["heldout_perplexity_after"] < metrics["heldout_perplexity_before"]
    assert (metrics["padding_fraction_after_packing"]
            < metrics["padding_fraction_before_packing"])
    assert metrics["train"]["examples"] == 32 and metrics["heldout"]["examples"] == 40
    report = (out / "report.md").read_text()
    for line in ("held-out perplexity", "Adapter:", "- before:", "- after:",
                 "Do you think it will rain"):
        assert line in report, line


def test_chat_with_the_run_and_with_preset_and_adapter(lora_run, cli, monkeypatch):
    # The run directory, through a real pipe in a fresh process.
    piped = run_cli("chat", lora_run, "--sampler", "greedy", "--max-length", "48",
                    input=PROMPTS)
    assert piped.code == 0, piped
    replies = piped.stdout.split("\n")[:3]
    assert replies[1] == "" and replies[0] and replies[2]
    # The same replies from --preset/--adapter (standard input not a terminal).
    monkeypatch.setattr(sys, "stdin", io.StringIO(PROMPTS))
    result = cli("chat", "--preset", testing.tiny_preset("llama"), "--adapter",
                 lora_run / "adapter.lora.h5", "--sampler", "greedy", "--max-length", "48")
    assert result.code == 0, result
    assert result.stdout.split("\n")[:3] == replies


def test_chat_stops_at_the_end_token_the_run_trained_with(lora_run, monkeypatch):
    """Llama's template spells its end token `{eos}` (no `</s>` in the text):
    the stop ids `generate` receives from the run's chat.json hold `</s>`."""
    import keras_hub

    from kerastune_lab.generate import load_chat_generator

    template = json.loads((lora_run / "chat.json").read_text())["template"]
    assert "{eos}" in template and "</s>" not in template
    seen = []
    original = keras_hub.models.CausalLM.generate

    def generate(self, inputs, *args, **kwargs):
        seen.append(kwargs.get("stop_token_ids"))
        return original(self, inputs, *args, **kwargs)

    monkeypatch.setattr(keras_hub.models.CausalLM, "generate", generate)
    chat = load_chat_generator(str(lora_run), sampler="greedy", max_length=32)
    chat.reply("Is it Monday again?")
    tokenizer = chat.model.preprocessor.tokenizer
    assert len(seen) == 1 and seen[0] is not None
    assert tokenizer.token_to_id("</s>") in [int(i) for i in seen[0]]


@pytest.mark.parametrize("recorded, older, expected", [
    ("bfloat16", None, "bfloat16"),       # the run's precision, recorded at its top level
    (None, "bfloat16", "bfloat16"),       # an older run: its config's dtype key
    ("float32", "bfloat16", "float32"),   # the precision wins
])
def test_chat_loads_the_base_in_the_precision_the_run_trained_in(lora_run, tmp_path, recorded,
                                                                  older, expected):
    import shutil

    from kerastune_lab.generate import load_chat_generator

    run = tmp_path / "run"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns(".lock"))
    data = json.loads((run / "config.json").read_text())
    data.pop("precision", None)
    data["config"].pop("dtype", None)
    if recorded:
        data["precision"] = recorded
    if older:
        data["config"]["dtype"] = older
    (run / "config.json").write_text(json.dumps(data))
    chat = load_chat_generator(str(run), sampler="greedy", max_length=16)
    backbone = chat.model.backbone
    assert backbone.dtype_policy.name.endswith(expected)  # "map_<dtype>" when int8
    norms = [w for w in backbone.weights if "norm" in w.path]  # float layers, not int8
    assert norms and {str(w.dtype) for w in norms} == {expected}


def _logits(model):
    import keras

    ids = np.random.default_rng(0).integers(4, 100, (2, 12)).astype("int32")
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    model.preprocessor = None
    return keras.ops.convert_to_numpy(model(x))


def test_merge_writes_a_preset_plain_keras_hub_loads(lora_run, cli, tmp_path):
    import keras_hub

    merged = tmp_path / "merged"
    result = cli("merge", lora_run, "--output", merged)
    assert result.code == 0, result
    assert result.last_line == str(merged)
    plain = keras_hub.models.CausalLM.from_preset(str(merged))
    # What merge wrote names no LoRA layer: the factors are folded into the
    # kernels, and plain KerasHub layers load them.
    assert "lora" not in (merged / "config.json").read_text().lower()
    from kerastune_lab.finetune._backbone import carries_lora

    assert not any(carries_lora(layer) for layer in plain.backbone._flatten_layers())
    # The float base with the adapter on top (the run trained on int8).
    base = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    lora.load_adapter(base, lora_run / "adapter.lora.h5", quantize_base=False)
    np.testing.assert_allclose(_logits(plain), _logits(base), atol=1e-5)
    untouched = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("llama"))
    assert np.abs(_logits(plain) - _logits(untouched)).max() > 1e-4  # it trained

    before = sorted(os.listdir(merged))
    again = cli("merge", lora_run, "--output", merged)
    assert_one_line_error(again, "already exists", str(merged))
    assert sorted(os.listdir(merged)) == before


def _edited_adapter(lora_run, tmp_path, edit):
    import h5py

    path = tmp_path / "edited.lora.h5"
    shutil.copy(lora_run / "adapter.lora.h5", path)
    with h5py.File(path, "r+") as f:
        metadata = json.loads(f.attrs["metadata"])
        edit(metadata)
        f.attrs["metadata"] = json.dumps(metadata)
    return path


def test_adapter_for_another_base_or_rank(lora_run, cli, tmp_path):
    import keras_hub

    gpt2 = keras_hub.models.CausalLM.from_preset(testing.tiny_preset("gpt2"))
    lora.enable_lora(gpt2, rank=2)
    other = lora.save_adapter(gpt2, tmp_path / "gpt2.lora.h5", preset="gpt2")
    llama = testing.tiny_preset("llama")
    result = cli("chat", "--adapter", other, "--preset", llama)
    assert_one_line_error(result, "gpt2.lora.h5", "GPT2Backbone", "LlamaBackbone")

    wider = _edited_adapter(lora_run, tmp_path,
                            lambda m: m["base"]["shape"].update(hidden_dim=32))
    result = cli("merge", wider, "--output", tmp_path / "merged")
    assert_one_line_error(result, "hidden_dim=32", "hidden_dim=16")
    assert not (tmp_path / "merged").exists()

    rank8 = _edited_adapter(lora_run, tmp_path, lambda m: m.update(rank=8))
    result = cli("chat", "--adapter", rank8, "--preset", llama)
    assert_one_line_error(result, "edited.lora.h5", "(16, 8)")


@pytest.mark.parametrize("overrides, fragments", [
    (["distribute=data"], ["distribute=data", "needs 2 or more devices; found 1"]
     if BACKEND == "jax" else ["distribute=data", "needs the jax backend", BACKEND]),
    (["distribute=model"], ["distribute=model"]),
    (["quantize=int3"], ["quantize='int3'", "'int8', 'int4', 'none'"]),
    (["dtype=bfloat16"], ["'dtype' is now 'precision'", "precision=auto, float32"]),
])
def test_bad_input(cli, tmp_path, overrides, fragments):
    out = tmp_path / "run"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, *overrides)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_chat_needs_a_run_or_an_adapter(cli, lora_run):
    assert_one_line_error(cli("chat"), "RUN_DIR or --adapter")
    assert_one_line_error(cli("chat", lora_run, "--adapter", lora_run / "adapter.lora.h5"),
                          "not both")


@pytest.mark.backend_independent
def test_auto_precision_on_a_t4_trains_the_int8_base_in_float32(cli, tmp_path, monkeypatch):
    # On a T4 "auto" is float16, which Keras refuses over an int8 base
    # ("doesn't work well with compute_dtype='float16'"): the run falls back to
    # float32, says why, and trains. (The accelerator is a T4 by monkeypatch;
    # the run is the real one, on this CPU.)
    from kerastune_lab import backend

    t4 = backend.Device("gpu", "Tesla T4", 15 * 2**30, (7, 5))
    monkeypatch.setattr(backend, "accelerators", lambda: [t4])
    out = tmp_path / "t4"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, "epochs=1", "precision=auto")
    assert result.code == 0, result
    with open(out / "config.json") as f:
        config = json.load(f)
    assert (config["config"]["quantize"], config["precision"]) == ("int8", "float32")
    with open(out / "log.txt") as f:
        assert "whose float16 Keras refuses over an int8 base" in f.read()
