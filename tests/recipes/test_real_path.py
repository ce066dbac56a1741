"""Each recipe's real default command, offline, through the hubs' own code.

No `--smoke`: the preset is the recipe's default name (`resnet_50_imagenet`,
...), which KerasHub turns into its Kaggle handle and kagglehub resolves
from a kagglehub cache holding a tiny preset under that handle; `tfds:`
data is downloaded by TFDS's `download_and_prepare` from a loopback server
that serves small archives in the upstream formats; `hf://` loads through
huggingface_hub's cache. Only sizes are overridden (epochs, image_size,
batch_size, numbers of examples, sequence_length). tests/hubs.py says how
each stand-in works and why that way.

Most runs go through the in-process `cli` fixture: TFDS's URL redirection
is an in-process patch, the socket guard sees every connection, and keras
is imported once. The xray run is the real `kerastune` command in a
subprocess, configured by environment variables alone (KAGGLEHUB_CACHE,
KAGGLE_API_ENVIRONMENT, proxies), as a user's shell would; it starts with
the module and runs beside the others.
"""

import json
import os
import subprocess
import sys
import types

import pytest

from kerastune_lab import testing
from tests import hubs
from tests.conftest import BACKEND, CliResult, recipe_path

# What these check is the download path (KerasHub -> kagglehub, TFDS's
# download_and_prepare, huggingface_hub's cache), the same on every backend;
# training on each backend is tests/recipes/test_<recipe>.py's. CI runs these
# once, on jax.
pytestmark = pytest.mark.backend_independent

PER_CLASS = 24  # good images a class in the stand-in PetImages zip
IMDB = {"train": 48, "test": 32, "unsup": 8}  # reviews in the stand-in aclImdb tar.gz


@pytest.fixture(scope="module")
def hub():
    with hubs.hub_server() as server:
        yield server


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """{"root": the kagglehub cache, preset name: (folder, files)}."""
    root = str(tmp_path_factory.mktemp("kagglehub"))
    return {"root": root, **hubs.kaggle_cache(root)}


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("hf_hub"))
    hubs.place_hf_model(root, hubs.HF_MINILM, hubs.minilm_folder())
    return root


@pytest.fixture
def hub_env(hub, kaggle):
    """Environment of a run: the kagglehub cache, every proxy-aware client
    sent to the loopback server, kagglehub's API pointed at its stand-in."""
    hub.clear()
    return {**hub.env(), "KAGGLEHUB_CACHE": kaggle["root"]}


@pytest.fixture
def in_process(hub_env, hub, hf_cache, monkeypatch):
    """`hub_env` and the HF cache in this process, and the socket guard.
    Yields the hub server."""
    import huggingface_hub.constants

    for key, value in {**hub_env, "HF_HUB_CACHE": hf_cache}.items():
        monkeypatch.setenv(key, value)
    # huggingface_hub reads HF_HUB_CACHE once, at import (HF_HUB_OFFLINE=1
    # comes from conftest, before that import).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hf_cache)
    with hubs.network_guard(hub):
        yield hub


@pytest.fixture(scope="module", autouse=True)
def xray_run(request, kaggle, tmp_path_factory):
    """xray_pneumonia's default command, the real `kerastune` in a subprocess
    configured by environment variables alone, with its own loopback
    server. Started when the module starts (if its test was selected), it
    runs beside the in-process runs (2 cores or more); its test waits for
    it."""
    if not any(item.name.startswith("test_xray") for item in request.session.items):
        yield None
        return
    tmp = tmp_path_factory.mktemp("xray")
    data = testing.make_chest_xray(tmp / "chest_xray", size=32, counts={
        "train": (8, 24), "val": (1, 1), "test": (4, 6)})
    out = tmp / "run"
    args = ["run", recipe_path("xray_pneumonia"), "--output-dir", out, f"data={data}",
            "image_size=32", "batch_size=16", "head_epochs=1", "epochs=1"]
    with hubs.hub_server() as server, open(tmp / "stdout", "w+") as stdout, \
            open(tmp / "stderr", "w+") as stderr:
        env = dict(os.environ, KERAS_BACKEND=BACKEND, KAGGLEHUB_CACHE=kaggle["root"],
                   **server.env())
        proc = subprocess.Popen([sys.executable, "-m", "kerastune_lab.cli", *map(str, args)],
                                stdout=stdout, stderr=stderr, text=True, env=env)

        def wait():
            proc.wait(timeout=600)
            stdout.seek(0)
            stderr.seek(0)
            return CliResult(proc.returncode, stdout.read(), stderr.read()), out, data, server

        try:
            yield types.SimpleNamespace(wait=wait)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_finished(out, result, preset, data=None):
    """Exit 0, the run dir printed last and finished, the default preset (and
    data) recorded. Returns (config.json, metrics.json)."""
    assert result.code == 0, result
    assert result.last_line == str(out)
    assert os.path.exists(out / "FINISHED")
    config = read_json(out / "config.json")
    assert config["backend"] == BACKEND
    assert not config.get("smoke")
    assert config["config"]["preset"] == preset
    if data is not None:
        assert config["config"]["data"] == data
    return config, read_json(out / "metrics.json")


def check_accuracy(out, metrics, split):
    """The accuracy recorded for `split` is that of the run's own evaluation:
    the diagonal of confusion_matrix.json over its count (these runs train a
    tiny preset for an epoch: what they learned is not the point here)."""
    matrix = read_json(out / "confusion_matrix.json")["matrix"]
    total = sum(map(sum, matrix))
    assert total == metrics[f"{split}_num_examples"] > 0
    assert metrics.get(f"num_{split}", total) == total
    right = sum(row[i] for i, row in enumerate(matrix))
    assert metrics[f"{split}_accuracy"] == pytest.approx(right / total, abs=1e-9)


def check_from_cache(hub, kaggle, preset, probed=()):
    """The preset came from the kagglehub cache, under its real handle:
    kagglehub asked the Kaggle API (stand-in: 404) only for the files in
    `probed`, which the preset does not have, and nothing went anywhere
    else."""
    folder, files = kaggle[preset]
    handle = hubs.kaggle_handle(preset)
    assert folder.replace(os.sep, "/").endswith(handle)
    assert not set(probed) & set(files)
    assert hub.kaggle_files() == sorted((handle, f) for f in probed)
    assert hub.outside == []


def saved_backbone(out):
    """The backbone of the run's saved model: {"class_name", "config", ...}."""
    return read_json(out / "model" / "config.json")


def tiny_backbone(kind):
    """The backbone config of the tiny preset of `kind`."""
    return read_json(os.path.join(testing.tiny_preset(kind), "config.json"))["config"]


# -- TFDS: downloaded from the loopback server, verified, built -----------------------------


def test_cats_vs_dogs_default(cli, in_process, kaggle, tmp_path, caplog):
    hub = in_process
    archive, corrupt = hubs.cats_vs_dogs_zip(per_class=PER_CLASS, size=40)
    data_dir = tmp_path / "tensorflow_datasets"
    out = tmp_path / "run"
    with hubs.tfds_mirror(hub, {"cats_vs_dogs": archive}, data_dir) as urls, \
            caplog.at_level("WARNING"):
        result = cli("run", recipe_path("cats_vs_dogs"), "--output-dir", out,
                     "image_size=32", "batch_size=16", "head_epochs=1", "epochs=1")
    config, metrics = check_finished(out, result, "resnet_50_imagenet", "tfds:cats_vs_dogs")

    # TFDS downloaded the zip once, from the loopback server, checked its
    # registered sha256, skipped the corrupt JPEGs and built the dataset.
    assert hub.served == [urls["cats_vs_dogs"].removeprefix(hub.url)]
    assert f"{corrupt} images were corrupted and were skipped" in caplog.text
    (version,) = os.listdir(data_dir / "cats_vs_dogs")
    info = read_json(data_dir / "cats_vs_dogs" / version / "dataset_info.json")
    (train,) = [s for s in info["splits"] if s["name"] == "train"]
    assert sum(int(n) for n in train["shardLengths"]) == 2 * PER_CLASS
    assert [f for f in os.listdir(data_dir / "downloads" / "cats_vs_dogs") if f.endswith(".zip")]
    assert metrics["num_train"] + metrics["num_val"] == 2 * PER_CLASS
    check_accuracy(out, metrics, "val")
    assert read_json(out / "labels.json") == ["cat", "dog"]

    # The model is the tiny preset placed under resnet_50_imagenet's handle.
    assert saved_backbone(out)["config"]["stackwise_num_filters"] == (
        tiny_backbone("resnet")["stackwise_num_filters"])
    check_from_cache(hub, kaggle, "resnet_50_imagenet")


def test_imdb_sentiment_default(cli, in_process, kaggle, tmp_path):
    hub = in_process
    archive = hubs.aclimdb_tar(**IMDB)
    data_dir = tmp_path / "tensorflow_datasets"
    out = tmp_path / "run"
    with hubs.tfds_mirror(hub, {"imdb_reviews": archive}, data_dir) as urls:
        # The tiny DistilBERT takes at most 128 tokens (the default is 256).
        result = cli("run", recipe_path("imdb_sentiment"), "--output-dir", out,
                     "sequence_length=32", "batch_size=16", "epochs=1")
    config, metrics = check_finished(out, result, "distil_bert_base_en_uncased",
                                     "tfds:imdb_reviews")
    assert hub.served == [urls["imdb_reviews"].removeprefix(hub.url)]
    assert os.path.isdir(data_dir / "imdb_reviews" / "plain_text")
    # The TFDS train split (validation carved from it) and its test split.
    assert metrics["num_train"] + metrics["num_val"] == IMDB["train"]
    assert metrics["num_test"] == IMDB["test"]
    check_accuracy(out, metrics, "test")
    assert read_json(out / "labels.json") == ["NEGATIVE", "POSITIVE"]
    assert saved_backbone(out)["config"]["hidden_dim"] == tiny_backbone("distilbert")["hidden_dim"]
    check_from_cache(hub, kaggle, "distil_bert_base_en_uncased")


# -- Hugging Face cache ------------------------------------------------------------------------


def test_imdb_sentiment_hf_minilm(cli, in_process, tmp_path):
    hub = in_process
    data = testing.make_review_file(tmp_path / "IMDB Dataset.csv", n=40)
    out = tmp_path / "run"
    preset = "hf://" + hubs.HF_MINILM
    result = cli("run", recipe_path("imdb_sentiment"), "--output-dir", out, f"preset={preset}",
                 f"data={data}", "text_column=review", "label_column=sentiment",
                 "sequence_length=32", "batch_size=16", "epochs=1")
    config, metrics = check_finished(out, result, preset)
    # The real all-MiniLM-L6-v2 encoder, converted by KerasHub from the HF cache.
    backbone = saved_backbone(out)
    assert backbone["class_name"] == "BertBackbone"
    assert backbone["config"]["hidden_dim"] == 384 and backbone["config"]["num_layers"] == 6
    check_accuracy(out, metrics, "test")
    assert hub.kaggle_calls == [] and hub.outside == []


# -- kagglehub cache -------------------------------------------------------------------------


def test_xray_pneumonia_default_in_a_subprocess(xray_run, kaggle):
    result, out, data, hub = xray_run.wait()
    config, metrics = check_finished(out, result, "resnet_50_imagenet", str(data))
    assert config["validation"]  # val/ too small: a split of train/ was used
    check_accuracy(out, metrics, "test")
    assert os.path.exists(out / "report.md")
    check_from_cache(hub, kaggle, "resnet_50_imagenet")


def test_sarcastic_chat_default(cli, in_process, kaggle, tmp_path):
    hub = in_process
    out = tmp_path / "run"
    result = cli("run", recipe_path("sarcastic_chat"), "--output-dir", out, "max_examples=8",
                 "sequence_length=64", "batch_size=8", "epochs=1", "report_prompts=0")
    config, metrics = check_finished(out, result, "gpt2_base_en")
    assert metrics["heldout_perplexity_after"] > 0
    assert saved_backbone(out)["config"]["hidden_dim"] == tiny_backbone("gpt2")["hidden_dim"]
    # GPT-2's task has no weights of its own: KerasHub probes task.weights.h5,
    # which the preset lacks, and the Kaggle API (stand-in) answers 404.
    check_from_cache(hub, kaggle, "gpt2_base_en", probed=["task.weights.h5"])


def test_lora_chat_default_offline(cli, in_process, kaggle, tmp_path):
    """With the Kaggle API unreachable (no network): llama2_7b_en, fully
    cached, still loads (the product falls back to the cached folder when
    KerasHub's probe for task.weights.h5 cannot connect)."""
    hub = in_process
    hub.kaggle_api = "unreachable"
    out = tmp_path / "run"
    # report_prompts=0 (no generations): lora_chat once failed on it.
    result = cli("run", recipe_path("lora_chat"), "--output-dir", out, "max_examples=8",
                 "sequence_length=64", "epochs=1", "max_length=40", "report_prompts=0")
    config, metrics = check_finished(out, result, "llama2_7b_en")
    # ...and the run went on from the cached folder (the product logs which).
    assert kaggle["llama2_7b_en"][0] in result.stderr
    assert config["config"]["quantize"] == "int8" and metrics["quantize"] == "int8"
    assert os.path.getsize(out / "adapter.lora.h5") == metrics["adapter_bytes"] > 0
    assert not os.path.exists(out / "model")  # the adapter is kept, not the base
    # The probe was tried (and dropped); nothing else was asked for.
    check_from_cache(hub, kaggle, "llama2_7b_en", probed=["task.weights.h5"])
