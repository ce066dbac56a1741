"""sarcastic_chat through the real `kerastune` CLI, and its shipped data."""

import json
import os

import pytest

from kerastune_lab import testing
from kerastune_lab.data import chat
from tests.conftest import ROOT, SMOKE_RUNS, assert_one_line_error, recipe_path, run_cli

RECIPE = recipe_path("sarcastic_chat")
DATA = os.path.join(ROOT, "recipes", "data", "sarcastic_chat.jsonl")
HELDOUT = os.path.join(ROOT, "recipes", "data", "sarcastic_chat_heldout.jsonl")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sarcastic"
    # 96 tokens: a few of the smoke examples are longer, to be truncated and counted.
    result = run_cli("run", RECIPE, "--smoke", "--output-dir", out, "sequence_length=96")
    assert result.code == 0, result
    SMOKE_RUNS["sarcastic_chat"] = out, result
    return out, result


def test_smoke_run_writes_metrics_report_and_model(smoke_run):
    out, result = smoke_run
    assert result.last_line == str(out)
    for name in ("config.json", "history.csv", "metrics.json", "report.md", "chat.json",
                 "training_curves.png", "FINISHED", "model/config.json", "model/tokenizer.json",
                 "tensorboard/train"):
        assert os.path.exists(out / name), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["heldout_perplexity_after"] < metrics["heldout_perplexity_before"]
    train = metrics["train"]
    assert metrics["padding_fraction_after_packing"] <= metrics["padding_fraction_before_packing"]
    assert train["windows"] < train["examples"] == 48
    assert metrics["heldout"]["examples"] == 40
    # Truncated, not an error, and counted: as many as the template makes too long.
    import keras_hub

    tokenizer = keras_hub.models.Tokenizer.from_preset(testing.tiny_preset("gpt2"))
    examples = chat.ChatTemplate(tokenizer).encode_many(chat.read_chat_jsonl(DATA)[:48])
    too_long = sum(len(e.token_ids) > 97 for e in examples)
    assert train["truncated"] == too_long > 0 and train["dropped"] == 0
    report = (out / "report.md").read_text()
    for line in ("held-out perplexity", "- before:", "- after:", "Do you think it will rain"):
        assert line in report, line
    # The window's 97 tokens are explained: 96 read, each predicting the next.
    assert (f"in {train['windows']} windows of 97 tokens: the model reads sequence_length=96 "
            "of them and predicts each next one") in report
    assert json.loads((out / "chat.json").read_text())["template"] == chat.DEFAULT_TEMPLATE


def test_shipped_data():
    train = chat.read_chat_jsonl(DATA)
    heldout = chat.read_chat_jsonl(HELDOUT)
    pairs = [turns for turns in train if len(turns) == 2]
    assert len(pairs) >= 300 and len(heldout) >= 30
    assert any(len(turns) > 2 for turns in train)  # multi-turn conversations too
    prompts = [turns[0][1] for turns in train]
    assert len(set(prompts)) == len(prompts)
    assert not {turns[0][1] for turns in heldout} & set(prompts)  # never trained on


def _write(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = '{"prompt": "Hi", "response": "Oh. You again."}'
LONG = '{"prompt": "Hi", "response": "' + "oh great another monday meeting " * 6 + '"}'


@pytest.mark.parametrize("lines, overrides, fragments", [
    ([GOOD, '{"prompt": "Hi", "response": "x"'], [], ["line 2", "not valid JSON"]),
    ([GOOD, '{"text": "Hi"}'], [], ["line 2", "expected keys \"prompt\" and \"response\""]),
    ([GOOD, GOOD, '{"prompt": "Hi", "response": ""}'], [], ["line 3", "the response is empty"]),
    ([GOOD, '{"messages": [{"role": "user", "content": "Hi"}]}'], [],
     ["line 2", "no assistant turn"]),
    ([LONG], ["overlong=error", "sequence_length=16"],
     ["example 1 is", "longer than sequence_length=16"]),
    ([GOOD], ["loss_on=prompt"], ["loss_on='prompt'", "'assistant', 'all'"]),
    ([GOOD], ["sampler=nucleus"], ["sampler='nucleus'", "'greedy'"]),
    ([GOOD], ["sequence_length=8"], ["sequence_length=8: expected >= 16"]),
])
def test_bad_input(cli, tmp_path, lines, overrides, fragments):
    data = _write(tmp_path / "chats.jsonl", *lines)
    out = tmp_path / "run"
    result = cli("run", RECIPE, "--smoke", "--output-dir", out, f"data={data}", *overrides)
    assert_one_line_error(result, *fragments)
    if lines != [GOOD]:
        assert "chats.jsonl" in result.stderr
    assert not out.exists()
