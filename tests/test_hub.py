"""Download failures are one line (kerastune_lab.hub), through kagglehub's own
code against a fake Kaggle API on 127.0.0.1 (tests/fake_kaggle.py).

The default preset of recipes/sarcastic_chat.py, `gpt2_base_en`, is served
under its real Kaggle handle (read from KerasHub's preset table) as the tiny
GPT-2 preset, or refused: 401, 403, 404, 500, or a body cut off halfway. Each
answer is checked in-process (`hub.fetch_preset`, `models.load_task`) and
through `kerastune run` (exit code 1, one `kerastune: error:` line naming
the preset and the fix, no traceback): the real command in a subprocess for
the download that trains to the end and for a 403, the same `main`
in-process for the other answers and no network (fast). Also: no network (a closed port), a Hugging
Face offline miss, TFDS downloads that fail (imdb_reviews, cats_vs_dogs),
and what a cut-off download leaves in kagglehub's cache.
"""

import glob
import os
import socket

import pytest

from kerastune_lab import hub, models, testing
from kerastune_lab.errors import DownloadFailed, KerastuneError
from tests import fake_kaggle
from tests.conftest import assert_one_line_error, recipe_path, run_cli

# Downloads and their failures go through kagglehub, TFDS and huggingface_hub,
# the same code on every backend: CI runs these once, on jax.
pytestmark = pytest.mark.backend_independent

PRESET = "gpt2_base_en"
GATED = "llama2_7b_en"
BIG = "kerastune-test/gpt2/keras/gpt2_big/1"  # a handle that only the fake server knows

# The fix each refusal's line names (and the kind of failure).
EXPECTED = {
    401: ["HTTP 401", "accept the model's license on https://www.kaggle.com/models/keras/gpt2",
          "KAGGLE_USERNAME and KAGGLE_KEY", "~/.kaggle/kaggle.json", "Kaggle notebook"],
    403: ["HTTP 403", "accept the model's license on https://www.kaggle.com/models/keras/gpt2",
          "KAGGLE_USERNAME and KAGGLE_KEY", "~/.kaggle/kaggle.json", "Kaggle notebook"],
    404: ["HTTP 404", "kaggle://keras/gpt2/keras/gpt2_base_en/", "does not exist",
          "https://www.kaggle.com/models/keras/gpt2"],
    500: ["HTTP 500", "the Kaggle server failed", "try again later"],
    "cut": ["download was interrupted", "bytes read", "more expected",
            "run the same command again", "never loads a half-written file"],
}
NO_CONNECTION = ["no connection", "Connection refused", "KAGGLEHUB_CACHE",
                 "run the same command once online", "copy that folder"]


def handle(preset):
    return hub.kaggle_handle(preset)[len(hub.KAGGLE_SCHEME):]


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def complete_marker(cache, preset, path):
    """kagglehub's completion marker of one file (`Cache().mark_as_complete`)."""
    owner, model, framework, variation, version = handle(preset).split("/")
    return os.path.join(cache, "models", owner, model, framework, variation, ".complete",
                        version, f"{path}.complete")


def cached_file(cache, preset, path):
    return os.path.join(cache, "models", handle(preset), path)


def assert_one_line(message, *fragments):
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def assert_cli_download_failed(result, *fragments):
    """Exit code 1, one `kerastune: error:` line (the last), no traceback."""
    assert result.code == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("kerastune: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-3000:]
    assert_one_line(errors[0], *fragments)


@pytest.fixture(scope="module")
def server():
    tiny = testing.tiny_preset("gpt2")
    with fake_kaggle.FakeKaggle({handle(PRESET): tiny}, lifetime=900) as s:
        s.tiny = tiny
        yield s


@pytest.fixture
def kaggle(server, tmp_path, monkeypatch):
    """kagglehub pointed at the server, fake credentials, an empty cache.
    Returns the cache folder."""
    cache = str(tmp_path / "kagglehub")
    for name, value in server.env(cache).items():
        monkeypatch.setenv(name, value)
    server.answer("ok")
    return cache


def no_network(monkeypatch, cache):
    """kagglehub (and any requests download) sent to a closed port on 127.0.0.1."""
    for name, value in fake_kaggle.proxy_env(f"http://127.0.0.1:{closed_port()}", cache).items():
        monkeypatch.setenv(name, value)


def load_gpt2():
    import keras_hub

    return models.load_task(keras_hub.models.CausalLM, PRESET)


# -- fetch_preset: config.json through kagglehub ---------------------------------------------

def test_fetch_preset_downloads_config_into_kagglehub_cache(server, kaggle):
    assert hub.fetch_preset(PRESET) == PRESET
    assert server.asked() == ["config.json"]
    with open(cached_file(kaggle, PRESET, "config.json"), "rb") as f, \
            open(os.path.join(server.tiny, "config.json"), "rb") as g:
        assert f.read() == g.read()
    assert os.path.exists(complete_marker(kaggle, PRESET, "config.json"))
    server.clear()
    hub.fetch_preset(PRESET)  # cached: KerasHub's next request for it makes none either
    assert server.requests == []


@pytest.mark.parametrize("answer", [401, 403, 404, 500, "cut"])
def test_fetch_preset_failure_is_one_line(server, kaggle, answer):
    server.answer(answer)
    with pytest.raises(DownloadFailed) as e:
        hub.fetch_preset(PRESET)
    assert_one_line(str(e.value), f"cannot download preset '{PRESET}' from Kaggle",
                    *EXPECTED[answer])
    assert server.asked() == ["config.json"]
    assert not os.path.exists(complete_marker(kaggle, PRESET, "config.json"))


def test_gated_model_names_its_license_page(server, kaggle, monkeypatch):
    server.answer(403)
    with pytest.raises(DownloadFailed) as e:
        hub.fetch_preset(GATED)
    assert_one_line(str(e.value), f"preset '{GATED}'", "HTTP 403",
                    "https://www.kaggle.com/models/keras/llama2", "this Kaggle account")
    # Without credentials, the line says so.
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    server.answer(401)
    with pytest.raises(DownloadFailed) as e:
        hub.fetch_preset(GATED)
    assert_one_line(str(e.value), "HTTP 401: no Kaggle credentials are set",
                    "KAGGLE_USERNAME and KAGGLE_KEY")


def test_no_connection(kaggle, monkeypatch):
    no_network(monkeypatch, kaggle)
    with pytest.raises(DownloadFailed) as e:
        hub.fetch_preset(PRESET)
    assert_one_line(str(e.value), f"preset '{PRESET}'", *NO_CONNECTION)
    # A handle without a version asks Kaggle every time: the line says so.
    with pytest.raises(DownloadFailed) as e:
        hub.fetch_preset("kaggle://keras/gpt2/keras/gpt2_base_en")
    assert_one_line(str(e.value), "no connection", "add /VERSION")


def test_resolve_preset_checks_names_then_fetches_config(server, kaggle):
    """A bad name or handle is bad input, refused before any download; a
    known name has its config.json downloaded, and nothing else yet."""
    import keras_hub

    with pytest.raises(KerastuneError, match="unknown preset 'gpt2_base_enn'.*gpt2_base_en"):
        models.resolve_preset("gpt2_base_enn", keras_hub.models.CausalLM)
    with pytest.raises(KerastuneError, match="not a Kaggle model handle"):
        models.resolve_preset("kaggle://keras/gpt2", keras_hub.models.CausalLM)
    assert server.requests == []
    assert models.resolve_preset(PRESET, keras_hub.models.CausalLM) == PRESET
    assert server.asked() == ["config.json"]
    server.answer(403)
    with pytest.raises(DownloadFailed, match="HTTP 403"):
        models.resolve_preset(GATED, keras_hub.models.CausalLM)


def test_hf_offline_miss(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(DownloadFailed) as e:
        hub.fetch_preset("hf://org/name")
    assert_one_line(str(e.value), "preset 'hf://org/name'", "HF_HUB_OFFLINE",
                    "not in the Hugging Face cache", str(tmp_path), "run the same command once "
                    "online")


# -- download_errors: KerasHub's from_preset -------------------------------------------------

@pytest.mark.parametrize("answer", [500, 403])
def test_weights_download_failure_is_one_line(server, kaggle, answer):
    server.answer(answer, only={"model.weights.h5"})
    with pytest.raises(DownloadFailed) as e:
        load_gpt2()
    if answer == 403:  # KerasHub takes a refused file for an absent one, then asks for shards
        fragments = ["has no model.weights.json", "refused", "accept its license"]
    else:
        fragments = EXPECTED[answer]
    assert_one_line(str(e.value), f"preset '{PRESET}'", *fragments)


def test_keras_hub_no_config_json_is_asked_again(server, kaggle):
    """KerasHub says "Preset gpt2_base_en has no config.json" for a refused
    config.json, its cause dropped: download_errors asks again to say why."""
    import keras_hub

    server.answer(403)
    with pytest.raises(DownloadFailed) as e:
        models.from_preset(keras_hub.models.CausalLM, PRESET)  # no resolve_preset first
    assert_one_line(str(e.value), f"preset '{PRESET}'", *EXPECTED[403])


@pytest.fixture(scope="module")
def big(server, tmp_path_factory):
    """A GPT-2 preset whose weights (~4 MB) are over twice kagglehub's 1 MiB
    read size, so that a download cut off halfway leaves part of the file
    written; served under a `kaggle://` handle of its own."""
    import keras_hub

    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor.from_preset(server.tiny)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size(), num_layers=2,
        num_heads=2, hidden_dim=192, intermediate_dim=768, max_sequence_length=64)
    path = str(tmp_path_factory.mktemp("big") / "gpt2_big")
    keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor) \
        .save_to_preset(path)
    server.models[BIG] = path
    return path


@pytest.mark.parametrize("accept_ranges", [False, True], ids=["restart", "resume"])
def test_cut_off_download_is_never_loaded_and_the_next_run_completes(server, kaggle, big,
                                                                      accept_ranges):
    """kagglehub writes a file at its cache path as it arrives and marks it
    complete only at the end: a cut-off file stays unmarked, is never loaded,
    and the next run downloads it again (or resumes it with a Range request)."""
    import kagglehub
    import keras_hub

    weights, preset = "model.weights.h5", hub.KAGGLE_SCHEME + BIG
    with open(os.path.join(big, weights), "rb") as f:
        whole = f.read()
    assert len(whole) > 2 * 2**20
    server.answer("cut", only={weights}, accept_ranges=accept_ranges)
    hub.fetch_preset(preset)
    with pytest.raises(DownloadFailed) as e:  # as KerasHub asks for it (checked above)
        with hub.download_errors(f"preset {preset!r}", preset=preset):
            kagglehub.model_download(BIG, weights)
    assert_one_line(str(e.value), f"preset '{preset}'", *EXPECTED["cut"])
    partial = os.path.join(kaggle, "models", BIG, weights)
    written = os.path.getsize(partial)
    assert 0 < written < len(whole)  # half-written, in place...
    assert not os.path.exists(os.path.join(  # ...with no completion marker
        kaggle, "models", BIG.rsplit("/", 1)[0], ".complete", "1", f"{weights}.complete"))
    assert os.path.exists(os.path.join(
        kaggle, "models", BIG.rsplit("/", 1)[0], ".complete", "1", "config.json.complete"))
    assert hub.cached_preset_folder(preset) is None  # never loaded offline either

    server.answer("ok", accept_ranges=accept_ranges)
    if accept_ranges:  # the path of a real download (storage answers ranges): load it all
        model = models.load_task(keras_hub.models.CausalLM, preset)
        assert model.backbone.hidden_dim == 192
    else:  # the file KerasHub would load
        hub.fetch_preset(preset)
        kagglehub.model_download(BIG, weights)
    with open(partial, "rb") as f:
        assert f.read() == whole
    assert os.path.exists(os.path.join(
        kaggle, "models", BIG.rsplit("/", 1)[0], ".complete", "1", f"{weights}.complete"))
    ranges = [detail for method, path, detail in server.requests
              if path.endswith("/" + weights) and detail]
    assert ranges == ([f"bytes={written}-"] if accept_ranges else [])


def test_download_then_offline_load_from_cache_only_when_whole(server, kaggle, monkeypatch):
    """`load_task` downloads each file through kagglehub. Offline, KerasHub
    still asks Kaggle for the files a preset lacks (task.weights.h5): a
    preset that kagglehub's cache holds whole loads from there instead; one
    with an unmarked (maybe half-written) file does not."""
    assert type(load_gpt2()).__name__ == "GPT2CausalLM"
    asked = server.asked()
    assert asked[0] == "config.json" and "model.weights.h5" in asked
    with open(cached_file(kaggle, PRESET, "model.weights.h5"), "rb") as f, \
            open(os.path.join(server.tiny, "model.weights.h5"), "rb") as g:
        assert f.read() == g.read()
    assert "task.weights.h5" in asked  # absent from the preset: a 404, and not cached
    no_network(monkeypatch, kaggle)
    assert type(load_gpt2()).__name__ == "GPT2CausalLM"
    os.remove(complete_marker(kaggle, PRESET, "model.weights.h5"))
    with pytest.raises(DownloadFailed) as e:
        load_gpt2()
    assert_one_line(str(e.value), f"preset '{PRESET}'", *NO_CONNECTION)


def test_download_errors_passes_other_errors_through():
    import requests

    with pytest.raises(ValueError, match="not a download"):
        with hub.download_errors("preset 'x'"):
            raise ValueError("not a download")
    with pytest.raises(KerastuneError):
        with hub.download_errors("preset 'x'"):
            raise KerastuneError("bad input")
    # A requests error wrapped by a library, as KerasHub and TFDS do.
    with pytest.raises(DownloadFailed) as e:
        with hub.download_errors("TFDS dataset 'x'", source="tfds"):
            try:
                raise requests.exceptions.ConnectTimeout("timed out")
            except requests.RequestException as inner:
                raise RuntimeError("wrapped") from inner
    assert_one_line(str(e.value), "TFDS dataset 'x'", "no connection (timed out)",
                    "TFDS_DATA_DIR")


# -- TFDS ------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", [404, "cut", "closed"])
def test_tfds_download_failure_is_one_line(server, kaggle, tmp_path, monkeypatch, answer):
    """imdb_reviews downloads from an http:// URL with requests: the proxy
    variables bring it to the server (or to a closed port)."""
    from tensorflow_datasets.core.download import downloader

    from kerastune_lab.data import images, text

    data_dir = str(tmp_path / "tfds")
    if answer == "closed":
        # TFDS retries a refused connection 10 times with backoff (~3 min).
        monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
        no_network(monkeypatch, kaggle)
        for name in ("HTTPS_PROXY", "https_proxy"):  # cats_vs_dogs' URL is https
            monkeypatch.setenv(name, os.environ["HTTP_PROXY"])
    else:
        server.answer(answer)
    with pytest.raises(DownloadFailed) as e:
        text.read_tfds("imdb_reviews", "train", data_dir=data_dir)
    fragments = {404: ["from ai.stanford.edu", "HTTP 404", "aclImdb_v1.tar.gz",
                       "upgrade tensorflow-datasets"],
                 "cut": EXPECTED["cut"],
                 "closed": ["no connection", data_dir, "TFDS_DATA_DIR"]}[answer]
    assert_one_line(str(e.value), "cannot download TFDS dataset 'imdb_reviews'", *fragments)
    # Downloads land in a *.tmp.<uuid> folder until whole and checked.
    downloaded = glob.glob(os.path.join(data_dir, "downloads", "*", "*"))
    assert all(".tmp." in os.path.basename(p) for p in downloaded), downloaded
    if answer == "closed":
        with pytest.raises(DownloadFailed) as e:
            images.load_tfds("cats_vs_dogs", 32, 4, data_dir=data_dir)
        assert_one_line(str(e.value), "cannot download TFDS dataset 'cats_vs_dogs'",
                        "no connection", "TFDS_DATA_DIR")


def test_tfds_host_that_does_not_resolve_fails_at_once(tmp_path, monkeypatch):
    """No proxy and a download host without an address: one line before TFDS
    starts its download (it would retry for minutes)."""
    import socket

    import tensorflow_datasets as tfds

    from kerastune_lab.data import images

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    asked = []

    def no_address(host, *args, **kwargs):
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare started")

    monkeypatch.setattr(socket, "getaddrinfo", no_address)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(DownloadFailed) as e:
        images.load_tfds("cats_vs_dogs", 32, 4, data_dir=data_dir)
    assert_one_line(str(e.value), "cannot download TFDS dataset 'cats_vs_dogs' from "
                    "download.microsoft.com: no connection (Name or service not known)",
                    data_dir, "TFDS_DATA_DIR")
    assert asked == ["download.microsoft.com"]


# -- the CLI ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Overrides for a run of recipes/sarcastic_chat.py that takes seconds on
    the tiny preset: 8 conversations, one epoch, 4 held-out examples, no
    report generations."""
    heldout = str(tmp_path_factory.mktemp("chat") / "heldout.jsonl")
    with open(os.path.join(os.path.dirname(recipe_path("sarcastic_chat")), "data",
                           "sarcastic_chat_heldout.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()[:4]
    with open(heldout, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return ["sequence_length=64", "epochs=1", "max_examples=8", "batch_size=4",
            "report_prompts=0", f"heldout_data={heldout}"]


def test_cli_download_then_train(server, tmp_path, small_run):
    """`kerastune run recipes/sarcastic_chat.py` on its default preset, every
    file downloaded through kagglehub from the server: trains to the end."""
    cache, out = str(tmp_path / "kagglehub"), str(tmp_path / "run")
    server.answer("ok")
    result = run_cli("run", recipe_path("sarcastic_chat"), "--output-dir", out, *small_run,
                     env=server.env(cache), timeout=300)
    assert result.code == 0, result
    assert result.last_line == out
    assert os.path.exists(os.path.join(out, "FINISHED"))
    assert server.asked()[0] == "config.json" and "model.weights.h5" in server.asked()
    assert os.path.exists(complete_marker(cache, PRESET, "model.weights.h5"))


def test_cli_gated_download_fails_in_one_line(server, tmp_path, small_run):
    """The real command in a subprocess, Kaggle answering 403."""
    server.answer(403)
    result = run_cli("run", recipe_path("sarcastic_chat"), "--output-dir", tmp_path / "run",
                     *small_run, env=server.env(str(tmp_path / "kagglehub")), timeout=300)
    assert_cli_download_failed(result, f"cannot download preset '{PRESET}'", *EXPECTED[403])
    assert not os.path.exists(tmp_path / "run")  # no half-made run directory left


@pytest.mark.parametrize("answer", [401, 404, 500, "cut", "closed"])
def test_cli_download_failure(server, kaggle, cli, tmp_path, monkeypatch, small_run, answer):
    """The same `main` as the command, in this process (fast)."""
    if answer == "closed":
        no_network(monkeypatch, kaggle)
    else:
        server.answer(answer)
    result = cli("run", recipe_path("sarcastic_chat"), "--output-dir", tmp_path / "run",
                 *small_run)
    assert_cli_download_failed(result, f"cannot download preset '{PRESET}'",
                               *(NO_CONNECTION if answer == "closed" else EXPECTED[answer]))
    assert not os.path.exists(tmp_path / "run")  # no half-made run directory left



# `kerastune plan` compiles with jax whatever the run's backend, in its own
# process: the same on every backend.
@pytest.mark.backend_independent
def test_cli_plan_fetches_the_config_alone(server, tmp_path):
    """`kerastune plan` on the recipe's default preset asks Kaggle for its
    config.json and nothing else (no weights), and plans."""
    server.answer("ok")
    asked_before = len(server.asked())
    result = run_cli("plan", recipe_path("sarcastic_chat"), "sequence_length=64",
                     "batch_size=4", env=server.env(str(tmp_path / "kagglehub")), timeout=300)
    assert result.code == 0, result
    assert "device memory per step:" in result.stdout, result
    assert server.asked()[asked_before:] == ["config.json"]


@pytest.mark.backend_independent
def test_cli_plan_download_failure_is_one_line(server, tmp_path):
    server.answer(403)
    result = run_cli("plan", recipe_path("sarcastic_chat"),
                     env=server.env(str(tmp_path / "kagglehub")), timeout=300)
    assert_cli_download_failed(result, f"cannot download preset '{PRESET}'", *EXPECTED[403])


@pytest.mark.backend_independent
def test_cli_plan_unknown_preset_is_one_line_before_any_download(server, tmp_path):
    asked_before = len(server.asked())
    result = run_cli("plan", recipe_path("sarcastic_chat"), "preset=gpt2_base",
                     env=server.env(str(tmp_path / "kagglehub")), timeout=300)
    assert_one_line_error(result, "unknown preset 'gpt2_base'", "did you mean gpt2_base_en")
    assert server.asked()[asked_before:] == []
