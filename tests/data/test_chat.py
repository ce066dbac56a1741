"""Chat data: reading JSONL, the template's loss mask, packing."""

import json

import numpy as np
import pytest

from kerastune_lab import testing
from kerastune_lab.data import chat, chat_template
from kerastune_lab.errors import KerastuneError

MULTI_TURN = [("user", "the dog is here"), ("assistant", "oh great a dog"),
              ("user", "and the cat"), ("assistant", "wonderful really")]
SINGLE = [("user", "what is the weather"), ("assistant", "rain again of course")]
# Llama's tokenizer has no `<|endoftext|>`: use its own end token there.
TEMPLATES = {"gpt2": chat.DEFAULT_TEMPLATE,
             "llama": "<|user|>{prompt}{eos}<|assistant|>{response}{eos}"}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def template(request):
    import keras_hub

    tokenizer = keras_hub.models.Tokenizer.from_preset(testing.tiny_preset(request.param))
    return chat.ChatTemplate(tokenizer, TEMPLATES[request.param])


def _detok(tokenizer, ids):
    return chat_template._as_str(tokenizer.detokenize([int(i) for i in ids])).strip()


def _runs(weights):
    """(start, end) of each run of weight 1."""
    runs, start = [], None
    for i, w in enumerate(list(weights) + [0]):
        if w and start is None:
            start = i
        elif not w and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("turns", [SINGLE, MULTI_TURN], ids=["single", "multi_turn"])
def test_loss_mask_weighs_only_the_assistant(template, turns):
    tok = template.tokenizer
    example = template.encode(turns)
    ids, weights = np.array(example.token_ids), np.array(example.weights)
    assert len(ids) == len(weights) and set(weights) == {0.0, 1.0}
    replies = [text for role, text in turns if role == "assistant"]
    prompts = [text for role, text in turns if role == "user"]
    # Each reply is one run of weight 1: its text, then the end token.
    runs = _runs(weights)
    assert len(runs) == len(replies)
    for (start, end), reply in zip(runs, replies):
        assert ids[end - 1] == tok.end_token_id
        assert _detok(tok, ids[start:end - 1]) == reply
    # Everything else (start token, markers, prompts) weighs 0, and holds
    # every prompt and each role marker once a turn, as one id.
    unweighted = _detok(tok, ids[weights == 0])
    assert all(p in unweighted for p in prompts)
    assert not any(r in unweighted for r in replies)
    assert ids[0] == tok.start_token_id and weights[0] == 0
    for marker, count in (("<|user|>", len(prompts)), ("<|assistant|>", len(replies))):
        assert template.markers[marker] == [tok.token_to_id(marker)]
        assert int((ids == tok.token_to_id(marker)).sum()) == count
        assert not weights[ids == tok.token_to_id(marker)].any()


def test_loss_on_all_weighs_every_token_and_padding_none(template):
    examples = template.encode_many([SINGLE, MULTI_TURN], loss_on="all")
    assert all(set(e.weights) == {1.0} for e in examples)
    packed = chat.pack_examples(examples, sequence_length=64)
    x, y, sample_weight = chat.model_inputs(packed)
    real = packed.segment_ids[:, 1:] > 0
    assert (sample_weight[real] == 1).all() and (sample_weight[~real] == 0).all()
    assert (x["padding_mask"] == (packed.segment_ids[:, :-1] > 0)).all()
    assert (y == packed.token_ids[:, 1:]).all()


def test_model_inputs_mask_padding_and_shift_labels(template):
    examples = template.encode_many([SINGLE, MULTI_TURN, SINGLE])
    packed = chat.pack_examples(examples, sequence_length=64, pack=False)
    x, y, sample_weight = chat.model_inputs(packed)
    assert x["token_ids"].shape == y.shape == sample_weight.shape == (3, 64)
    for row, example in enumerate(examples):
        n = len(example.token_ids)
        # Label t is token t + 1, weighed as that token; padding weighs 0.
        assert list(y[row, :n - 1]) == example.token_ids[1:]
        assert list(sample_weight[row, :n - 1]) == example.weights[1:]
        assert not sample_weight[row, n - 1:].any()
        assert x["padding_mask"][row, :n].all() and not x["padding_mask"][row, n:].any()


def test_prompt_for_generation_ends_where_the_reply_starts(template):
    prompt = template.encode_prompt("and the cat", history=[("the dog is here", "oh great a dog")])
    full = template.encode(MULTI_TURN).token_ids
    assert full[:len(prompt)] == prompt
    assert prompt[-1] == template.markers["<|assistant|>"][0]


def test_render_is_the_text_the_ids_spell():
    """`render` (what the Hugging Face chat template reproduces) is the text
    of the ids training uses: GPT-2's byte-level tokenizer gives it back
    exactly, start token, markers and end tokens included."""
    import keras_hub

    tok = keras_hub.models.Tokenizer.from_preset(testing.tiny_preset("gpt2"))
    template = chat.ChatTemplate(tok, chat.DEFAULT_TEMPLATE)
    turns = list(MULTI_TURN) + [("user", "and the cat?")]
    text = template.render(turns)
    ids = template.encode(turns).token_ids
    assert chat_template._as_str(tok.detokenize(ids)) == text
    assert text.startswith("<|endoftext|><|user|>") and text.endswith("<|assistant|>")
    eos = chat.ChatTemplate(tok, "[u]{prompt}{eos}[a]{response}{eos}", add_start_token=False)
    assert eos.render([("user", "hi"), ("assistant", "oh")]) == \
        "[u]hi<|endoftext|>[a]oh<|endoftext|>"


def test_markers_missing_from_the_vocabulary_are_always_the_same_ids():
    import keras_hub

    tok = keras_hub.models.Tokenizer.from_preset(testing.tiny_preset("gpt2"))
    template = chat.ChatTemplate(
        tok, "<|human|>{prompt}<|endoftext|><|bot|>{response}<|endoftext|>")
    human, bot = template.markers["<|human|>"], template.markers["<|bot|>"]
    assert len(human) > 1 and len(bot) > 1  # not in the vocabulary
    assert human == [int(i) for i in tok("<|human|>")]
    ids = template.encode([("user", "the dog"), ("assistant", "oh no"), ("user", "why is it here"),
                           ("assistant", "the cat")]).token_ids
    starts = [i for i in range(len(ids)) if ids[i:i + len(human)] == human]
    assert len(starts) == 2
    assert sum(ids[i:i + len(bot)] == bot for i in range(len(ids))) == 2
    # Generation stops at the end token and cuts a reply at a marker.
    assert template.decode_reply([*tok("oh no"), *human, *tok("the dog")]) == "oh no"
    assert template.decode_reply([*tok("oh no"), tok.end_token_id, *tok("the dog")]) == "oh no"


def _examples(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [chat.Example(list(rng.integers(3, 300, n)), list(rng.integers(0, 2, n).astype(float)))
            for n in lengths]


def test_packing_keeps_every_token_and_never_splits_an_example():
    lengths = list(np.random.default_rng(1).integers(1, 34, 60))
    examples = _examples(lengths)
    packed = chat.pack_examples(examples, sequence_length=32)
    assert packed.token_ids.shape[1] == 33
    for k, example in enumerate(examples, start=1):
        rows, cols = np.nonzero(packed.segment_ids == k)
        assert len(set(rows)) == 1  # one window
        assert list(cols) == list(range(cols[0], cols[0] + len(example.token_ids)))  # contiguous
        assert list(packed.token_ids[rows, cols]) == example.token_ids
        assert list(packed.weights[rows, cols]) == example.weights
    assert (packed.weights[packed.segment_ids == 0] == 0).all()
    real = sum(lengths)
    assert len(packed.token_ids) <= -(-real // 33) + 1  # within a window of the fewest possible
    assert packed.padding_after < packed.padding_before
    assert packed.padding_before == pytest.approx(1 - real / (60 * 33))
    assert packed.padding_after == pytest.approx(1 - real / packed.token_ids.size)
    unpacked = chat.pack_examples(examples, sequence_length=32, pack=False)
    assert len(unpacked.token_ids) == 60
    assert unpacked.padding_after == pytest.approx(packed.padding_before)


def test_overlong_examples_are_truncated_dropped_or_an_error():
    examples = _examples([5, 20, 50, 16])
    truncated = chat.pack_examples(examples, sequence_length=15)
    assert (truncated.truncated, truncated.dropped, truncated.num_examples) == (2, 0, 4)
    for k in (2, 3):
        assert (list(truncated.token_ids[truncated.segment_ids == k])
                == examples[k - 1].token_ids[:16])
    dropped = chat.pack_examples(examples, sequence_length=15, overlong="drop")
    assert (dropped.truncated, dropped.dropped, dropped.num_examples) == (0, 2, 2)
    with pytest.raises(KerastuneError, match=r"example 2 is 20 tokens.*sequence_length=15"):
        chat.pack_examples(examples, sequence_length=15, overlong="error")


def test_read_chat_jsonl_reads_both_forms(tmp_path):
    path = tmp_path / "chat.jsonl"
    records = [{"prompt": "hi", "response": "oh. you.", "split": "train"},
               {"messages": [{"role": r, "content": t} for r, t in MULTI_TURN]}]
    path.write_text(json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n")
    assert chat.read_chat_jsonl(path) == [[("user", "hi"), ("assistant", "oh. you.")], MULTI_TURN]


@pytest.mark.parametrize("line, fragment", [
    ('{"prompt": "hi"', "line 2: not valid JSON"),
    ('{"question": "hi", "answer": "no"}', "line 2: expected keys \"prompt\" and \"response\""),
    ('{"prompt": "hi", "response": "  "}', "line 2: the response is empty"),
    ('{"messages": [{"role": "user", "content": "hi"}]}',
     "line 2: the conversation has no assistant"),
    ('{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}]}',
     "line 2: message 1 is 'assistant'"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', "line 2: message 1 has role 'bot'"),
    ('[1, 2]', "line 2: expected a JSON object"),
])
def test_read_chat_jsonl_names_the_bad_line(tmp_path, line, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n' + line + "\n")
    with pytest.raises(KerastuneError, match="bad.jsonl") as info:
        chat.read_chat_jsonl(path)
    assert fragment in str(info.value)
