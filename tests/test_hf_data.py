"""`data=hf:NAME[:CONFIG][@SPLIT]`: Hugging Face datasets through the real
`datasets` code, offline.

Each check runs in a fresh process (`hubs.run_guarded`) whose
`HF_ENDPOINT` is a loopback `HubServer` serving small dataset repositories
in the Hub's layout (`hubs.hf_dataset_files`: parquet files, a README.md
with `configs:`, the API answers `datasets` asks for), every other request
refused (proxy variables, and a socket guard in the process). The second
read of a dataset is from the datasets cache with no server and
`HF_HUB_OFFLINE=1`. The `datasets` and `huggingface_hub` settings are read
at import, which is why these are fresh processes and not this one.
"""

import json
import os

import pytest

from kerastune_lab import testing
from tests import hubs
from tests.conftest import BACKEND, recipe_path

datasets = pytest.importorskip("datasets")

REVIEWS, CHATS, PAIRS = "org/tiny_reviews", "org/tiny_chats", "org/tiny_pairs"
IMDB, SARCASM = recipe_path("imdb_sentiment"), recipe_path("sarcastic_chat")
# `datasets` counts downloads with a HEAD request to an S3 bucket that
# HF_ENDPOINT does not move (`load.increase_load_count`): refused by the
# guard, and turned off here so that `outside` stays empty.
QUIET = {"HF_UPDATE_DOWNLOAD_COUNTS": "0", "HUBS_NO_RETRY_WAIT": "1",
         "KERAS_BACKEND": BACKEND, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _review_splits():
    splits = {}
    for split, n, seed in (("train", 96, 0), ("test", 32, 1)):
        texts, labels = testing.reviews(n, seed)
        splits[split] = {"text": texts, "label": [int(y) for y in labels],
                         "stars": [float(y) * 4 + 1 for y in labels]}
    splits["train"]["text"][5] = "   "  # an empty text: dropped and counted
    return splits


def _chat_pairs():
    with open(os.path.join(os.path.dirname(IMDB), "data", "sarcastic_chat.jsonl")) as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    return [p for p in pairs if "prompt" in p][:40]


@pytest.fixture(scope="module")
def hub():
    """The loopback Hub with the reviews (ClassLabel, a "plain_text" config
    in README.md), chats (a "messages" column) and pairs (prompt/response)."""
    from datasets import ClassLabel, Value

    pairs = _chat_pairs()
    messages = [[{"role": "user", "content": p["prompt"]},
                 {"role": "assistant", "content": p["response"]}] for p in pairs]
    with hubs.hub_server() as server:
        server.serve_hf_dataset(REVIEWS, hubs.hf_dataset_files(
            _review_splits(), {"text": Value("string"), "label": ClassLabel(names=["neg", "pos"]),
                               "stars": Value("float32")}, config="plain_text"))
        server.serve_hf_dataset(CHATS, hubs.hf_dataset_files(
            {"train": {"messages": messages[:32]}, "test": {"messages": messages[32:]}}))
        server.serve_hf_dataset(PAIRS, hubs.hf_dataset_files(
            {"train": {"prompt": [p["prompt"] for p in pairs[:32]],
                       "response": [p["response"] for p in pairs[:32]]},
             "test": {"prompt": [p["prompt"] for p in pairs[32:]],
                      "response": [p["response"] for p in pairs[32:]]}}))
        yield server


# Reads data as the recipes do and prints what was read, as JSON.
READ = """
import json, sys
from kerastune_lab.data import chat, text

kind, data, *rest = sys.argv[1:]
if kind == "text":
    read = text.read_labelled_texts(data, *rest)
    print(json.dumps({"n": len(read.texts), "labels": sorted(set(read.labels)),
                      "class_names": read.class_names, "dropped": read.dropped_empty,
                      "first": read.texts[0]}))
else:
    train, heldout = chat.read_conversations(data, rest[0])
    print(json.dumps({"train": len(train), "heldout": len(heldout), "first": train[0]}))
"""


def _read(server, home, *args, offline=False):
    port = server.port if server else hubs.closed_port()
    result = hubs.run_guarded(port, "-c", READ, *args,
                              env=dict(hubs.hf_env(server, home, offline=offline), **QUIET),
                              timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.backend_independent  # the hf: reader, the same on every backend
def test_text_from_the_hub_then_from_the_cache_offline(hub, tmp_path):
    hub.clear()
    read = _read(hub, tmp_path, "text", f"hf:{REVIEWS}")
    assert read == {"n": 95, "labels": ["neg", "pos"], "class_names": ["neg", "pos"],
                    "dropped": 1, "first": testing.reviews(96, 0)[0][0]}
    sha = hub.hf_datasets[REVIEWS]["sha"]
    calls = set(hub.hf_calls)
    # What `datasets` asked the Hub: the card, the revision, the file tree,
    # the parquet files (HEAD for the metadata, then GET); nothing else left.
    for call in (f"GET /datasets/{REVIEWS}/resolve/main/README.md",
                 f"GET /api/datasets/{REVIEWS}/revision/{sha}",
                 f"HEAD /datasets/{REVIEWS}/resolve/{sha}/plain_text/train-00000-of-00001.parquet",
                 f"GET /datasets/{REVIEWS}/resolve/{sha}/plain_text/test-00000-of-00001.parquet"):
        assert call in calls, (call, hub.hf_calls)
    assert any(c.startswith(f"GET /api/datasets/{REVIEWS}/tree/{sha}") for c in calls)
    assert hub.outside == []
    # The second run: no server, offline mode, the datasets cache.
    test = _read(None, tmp_path, "text", f"hf:{REVIEWS}", "test", offline=True)
    assert test["n"] == 32 and test["class_names"] == ["neg", "pos"]
    again = _read(None, tmp_path, "text", f"hf:{REVIEWS}:plain_text@train", offline=True)
    assert again == read


@pytest.mark.backend_independent  # the hf: reader, the same on every backend
def test_chat_messages_and_prompt_response_columns(hub, tmp_path):
    hub.clear()
    pairs = _chat_pairs()
    read = _read(hub, tmp_path, "chat", f"hf:{CHATS}", f"hf:{PAIRS}")
    assert read == {"train": 32, "heldout": 8,  # the "test" split unless one is named
                    "first": [["user", pairs[0]["prompt"]], ["assistant", pairs[0]["response"]]]}
    read = _read(hub, tmp_path, "chat", f"hf:{PAIRS}@train", f"hf:{CHATS}@train[:3]")
    assert read["train"] == 32 and read["heldout"] == 3
    assert hub.outside == []


# (id, args for READ, fragments of the KerastuneError's one line)
BAD = [
    ("missing-text-column", ["text", f"hf:{REVIEWS}", "train", "review"],
     [f"hf:{REVIEWS}[train]", "no column 'review'", "'text' (string)",
      "'label' (class label: neg, pos)", "'stars' (float32)", "text_column="]),
    ("label-column-of-floats", ["text", f"hf:{REVIEWS}", "train", "text", "stars"],
     ["column 'stars' is float32, expected class labels", "label_column="]),
    ("text-column-of-labels", ["text", f"hf:{REVIEWS}", "train", "label", "label"],
     ["column 'label' is class label: neg, pos, expected text"]),
    ("chat-without-chat-columns", ["chat", f"hf:{REVIEWS}", f"hf:{CHATS}"],
     ["no column 'messages'", "nor 'prompt' and 'response'", "'text' (string)"]),
    ("unknown-config", ["text", f"hf:{REVIEWS}:sst2"],
     ["no config 'sst2'", "it has plain_text"]),
    ("unknown-split", ["text", f"hf:{REVIEWS}@validation"],
     ["no 'validation' split", "it has train, test"]),
    ("malformed-name", ["text", "hf:org//x"], ["expected hf:NAME"]),
]


@pytest.mark.backend_independent  # the hf: reader, the same on every backend
@pytest.mark.parametrize("case, args, fragments", BAD, ids=[b[0] for b in BAD])
def test_bad_hf_data_is_one_line(hub, tmp_path, case, args, fragments):
    result = hubs.run_guarded(hub.port, "-c", READ, *args,
                              env=dict(hubs.hf_env(hub, tmp_path), **QUIET), timeout=300)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and last.startswith("kerastune_lab.errors.KerastuneError"), \
        result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)


def _cli(server, home, *args, offline=False):
    port = server.port if server else hubs.closed_port()
    return hubs.run_guarded(port, *args, env=dict(hubs.hf_env(server, home, offline=offline),
                                                  **QUIET), timeout=600)


def test_imdb_sentiment_runs_on_hf_data_then_offline(hub, tmp_path):
    hub.clear()
    out = tmp_path / "run"
    args = ["run", IMDB, "--smoke", f"data=hf:{REVIEWS}", "text_column=text",
            "label_column=label", "epochs=1", "sequence_length=16"]
    result = _cli(hub, tmp_path, *args, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(out)
    # ClassLabel names, then the recipe's label_names: neg/pos -> NEGATIVE/POSITIVE.
    assert json.loads((out / "labels.json").read_text()) == ["NEGATIVE", "POSITIVE"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_test"] == 32  # the dataset's own test split
    assert metrics["num_train"] + metrics["num_val"] == 95
    assert metrics["dropped_empty"] == {"train": 1, "test": 0}
    assert hub.outside == []
    again = _cli(None, tmp_path, *args, "--output-dir", tmp_path / "offline", offline=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "offline" / "metrics.json").read_text())["num_test"] == 32


def test_sarcastic_chat_runs_on_hf_data_then_offline(hub, tmp_path):
    hub.clear()
    out = tmp_path / "run"
    args = ["run", SARCASM, "--smoke", f"data=hf:{CHATS}", f"heldout_data=hf:{PAIRS}@test",
            "epochs=1", "sequence_length=64", "max_length=40", "report_prompts=1"]
    result = _cli(hub, tmp_path, *args, "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 32 and metrics["heldout"]["examples"] == 8, metrics
    assert hub.outside == []
    again = _cli(None, tmp_path, *args, "--output-dir", tmp_path / "offline", offline=True)
    assert again.returncode == 0, again.stderr[-3000:]
