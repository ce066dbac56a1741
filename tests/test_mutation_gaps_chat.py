"""The chat template and packing cases that mutmut found untested
(tests/README.md, "Mutation testing"): kerastune_lab/data/chat_template.py
and kerastune_lab/data/packing.py. A word-level tokenizer written here
makes every id and weight exact (tests/data/test_chat.py uses the real
KerasHub tokenizers)."""

import numpy as np
import pytest

from kerastune_lab.data import chat_template, packing
from kerastune_lab.data.chat_template import ChatTemplate, check_settings
from kerastune_lab.data.packing import Example, model_inputs, pack_examples
from kerastune_lab.errors import KerastuneError

# Plain Python on every backend (tf.data for the datasets, as on all three).
pytestmark = pytest.mark.backend_independent

VOCAB = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|endoftext|>",
         "hi", "there", "oh", "no", "why", "Q:", "A:"]


class WordTokenizer:
    """Whitespace words; a word outside VOCAB is its characters (100 + ord)."""

    def __init__(self, start="<s>", end="</s>", missing=KeyError):
        self.start_token, self.end_token = start, end
        self.start_token_id = VOCAB.index(start) if start else None
        self.end_token_id = VOCAB.index(end) if end else None
        self.missing = missing  # what token_to_id raises for an unknown token

    def token_to_id(self, token):
        if token not in VOCAB:
            if self.missing is None:
                return 0  # SentencePiece style: the unknown id
            raise self.missing(token)
        return VOCAB.index(token)

    def id_to_token(self, token_id):
        return VOCAB[token_id] if token_id < len(VOCAB) else chr(token_id - 100)

    def __call__(self, texts):
        return [[i for word in text.split() for i in (
            [VOCAB.index(word)] if word in VOCAB else [100 + ord(c) for c in word])]
            for text in texts]

    def detokenize(self, ids):
        return " ".join(self.id_to_token(int(i)) for i in ids)


HI, THERE, OH, NO, WHY = 6, 7, 8, 9, 10
TURNS = [("user", "hi there"), ("assistant", "oh no"), ("user", "why"), ("assistant", "no")]


def test_default_template_ids_weights_and_stop_tokens():
    template = ChatTemplate(WordTokenizer())
    assert template.markers == {"<|user|>": [3], "<|endoftext|>": [5], "<|assistant|>": [4]}
    assert template.stop_token_ids == (2, 3, 4, 5) and template.stop_sequences == []
    example = template.encode(TURNS)
    assert example.token_ids == [1, 3, HI, THERE, 5, 4, OH, NO, 5, 3, WHY, 5, 4, NO, 5]
    assert example.weights == [0.0] * 6 + [1.0] * 3 + [0.0] * 4 + [1.0] * 2
    assert template.encode(TURNS, loss_on="all").weights == [1.0] * 15
    assert template.encode_prompt("why", history=[("hi there", "oh no")]) == \
        example.token_ids[:13]
    assert template.encode_prompt("hi") == [1, 3, HI, 5, 4]
    with pytest.raises(KerastuneError, match="loss_on='none'"):
        template.encode_many([TURNS], loss_on="none")
    assert repr(template) == f"ChatTemplate({chat_template.DEFAULT_TEMPLATE!r})"


def test_the_start_token_only_when_asked_for_and_known():
    assert ChatTemplate(WordTokenizer(), add_start_token=False).encode(
        TURNS[:2]).token_ids == [3, HI, THERE, 5, 4, OH, NO, 5]
    no_start = ChatTemplate(WordTokenizer(start=None))
    assert no_start.encode(TURNS[:2]).token_ids == [3, HI, THERE, 5, 4, OH, NO, 5]
    assert no_start.render(TURNS[:2]) == "<|user|>hi there<|endoftext|><|assistant|>oh no" \
        "<|endoftext|>"
    assert not no_start.jinja().startswith("{{")
    # No end token: the stop ids are the one-id markers alone.
    assert ChatTemplate(WordTokenizer(end=None)).stop_token_ids == (3, 4, 5)


class BareTokenizer(WordTokenizer):
    """Ids only: no start token, no end token and no attribute naming them."""

    def __init__(self):
        super().__init__()
        del self.start_token, self.end_token, self.start_token_id, self.end_token_id


def test_a_tokenizer_without_start_or_end_token_attributes():
    template = ChatTemplate(BareTokenizer())
    assert template.stop_token_ids == (3, 4, 5)
    assert template.encode(TURNS[:2]).token_ids == [3, HI, THERE, 5, 4, OH, NO, 5]
    assert template.render(TURNS[:2]) == \
        "<|user|>hi there<|endoftext|><|assistant|>oh no<|endoftext|>"
    assert template.jinja().startswith("{% for message in messages %}")
    with pytest.raises(KerastuneError, match="uses {eos}, but the tokenizer has no end token"):
        ChatTemplate(BareTokenizer(), chat_template.EOS_TEMPLATE)


class TwoIdMarker(WordTokenizer):
    """`<|bot|>` is not in the vocabulary and tokenises to two ids."""

    def __call__(self, texts):
        return [[198, 199] if text == "<|bot|>" else ids
                for text, ids in zip(texts, super().__call__(texts))]


def test_a_marker_of_two_ids_is_a_stop_sequence():
    template = ChatTemplate(TwoIdMarker(), "<|user|>{prompt}<|bot|>{response}{eos}")
    assert template.stop_sequences == [[198, 199]] and template.stop_token_ids == (2, 3)
    assert template.decode_reply([OH, 198, 199, NO]) == "oh"
    assert template.decode_reply([OH, 198, NO]) == "oh b no"  # id 198 alone: "b"


def test_text_after_a_marker_is_tokenised_as_text(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="kerastune_lab"):
        template = ChatTemplate(WordTokenizer(), "<|user|> Q: {prompt}<|assistant|> A: "
                                                 "{response} A:{eos}")
    # Every marker is one id, and " Q: " is no marker: nothing to report.
    assert [r.getMessage() for r in caplog.records if "chat marker" in r.getMessage()] == []
    example = template.encode([("user", "why"), ("assistant", "no")])
    assert example.token_ids == [1, 3, 11, WHY, 4, 12, NO, 12, 2]
    assert example.weights == [0.0] * 6 + [1.0] * 3


def test_eos_and_markers_outside_the_vocabulary():
    template = ChatTemplate(WordTokenizer(), "<|human|>{prompt}{eos}<|bot|>{response}{eos}")
    human = [100 + ord(c) for c in "<|human|>"]
    bot = [100 + ord(c) for c in "<|bot|>"]
    assert template.markers == {"<|human|>": human, "<|bot|>": bot}
    assert template.stop_token_ids == (2,) and template.stop_sequences == [human, bot]
    example = template.encode(TURNS[:2])
    assert example.token_ids == [1, *human, HI, THERE, 2, *bot, OH, NO, 2]
    assert example.weights == [0.0] * (1 + len(human) + 3 + len(bot)) + [1.0] * 3
    assert template.render(TURNS[:2]) == "<s><|human|>hi there</s><|bot|>oh no</s>"
    # Generation stops at the end token, a one-id marker or a marker's ids.
    assert template.decode_reply([OH, NO, *bot, HI]) == "oh no"
    assert template.decode_reply([OH, *human, NO, *bot]) == "oh"
    assert template.decode_reply([OH, 2, NO]) == "oh"
    assert template.decode_reply([2, OH]) == "" and template.decode_reply([]) == ""
    assert template.decode_reply(np.array([OH, NO])) == "oh no"
    with pytest.raises(KerastuneError, match="uses {eos}, but the tokenizer has no end token"):
        ChatTemplate(WordTokenizer(end=None), chat_template.EOS_TEMPLATE)


def test_literal_text_around_the_fields_is_tokenised_on_its_own():
    template = ChatTemplate(WordTokenizer(), "Q: {prompt} A: {response}{eos}")
    assert template.markers == {} and template.stop_token_ids == (2,)
    example = template.encode([("user", "why"), ("assistant", "no")])
    assert example.token_ids == [1, 11, WHY, 12, NO, 2]
    assert example.weights == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert template.render([("user", "why"), ("assistant", "no")]) == "<s>Q: why A: no</s>"


@pytest.mark.parametrize("missing", [KeyError, ValueError, TypeError, None])
def test_a_marker_the_tokenizer_does_not_know_is_its_text_ids(missing):
    template = ChatTemplate(WordTokenizer(missing=missing),
                            "<|human|>{prompt}<|endoftext|><|assistant|>{response}")
    assert template.markers["<|human|>"] == [100 + ord(c) for c in "<|human|>"]
    assert template.markers["<|assistant|>"] == [4]


def test_jinja_spells_the_template():
    template = ChatTemplate(WordTokenizer(), "<|user|>{prompt}{eos}<|assistant|>{response}{eos}")
    assert template.jinja() == (
        '{{ "<s>" }}{% for message in messages %}{% if message[\'role\'] == \'user\' %}'
        '{{ "<|user|>" }}{{ message[\'content\'] }}{{ "</s><|assistant|>" }}'
        '{% elif message[\'role\'] == \'assistant\' %}{{ message[\'content\'] }}{{ "</s>" }}'
        "{% else %}{{ raise_exception('this model was tuned on user and assistant turns "
        "only, not ' + message['role']) }}{% endif %}{% endfor %}")


@pytest.mark.parametrize("template", ["{response}{prompt}", "{prompt}{prompt}{response}",
                                      "{prompt}{response}{response}", "{prompt}",
                                      "{response}"])
def test_check_settings_refuses_a_template_without_prompt_then_response(template):
    with pytest.raises(KerastuneError, match="expected {prompt} then {response}, once each"):
        check_settings(template)


def test_check_settings_accepts_each_documented_value():
    check_settings()
    check_settings("{prompt}{response}")
    for loss_on in ("assistant", "all"):
        check_settings(loss_on=loss_on)
    for overlong in ("truncate", "drop", "error"):
        check_settings(overlong=overlong)
    with pytest.raises(KerastuneError, match="loss_on='none'"):
        check_settings(loss_on="none")
    with pytest.raises(KerastuneError, match="overlong='cut'"):
        check_settings(overlong="cut")


def test_as_str_and_as_list_take_every_backend_output():
    import tensorflow as tf

    assert chat_template._as_str(b"caf\xc3\xa9") == "café"
    assert chat_template._as_str(b"\xffok") == "\ufffdok"
    assert chat_template._as_str(np.array(b"hi")) == "hi"
    assert chat_template._as_str(tf.constant("hi")) == "hi"
    assert chat_template._as_str(5) == "5"
    assert chat_template._as_list(tf.ragged.constant([[1, 2], [3]])) == [[1, 2], [3]]
    assert chat_template._as_list(tf.constant([[1, 2]])) == [[1, 2]]
    assert chat_template._as_list(np.array([4, 5])) == [4, 5]
    assert chat_template._as_list((6, 7)) == [6, 7]


def _ex(*lengths):
    """Examples whose ids say where they come from: example k holds 10k + 1, ...;
    its weights alternate 1, 0, starting at 1."""
    return [Example([10 * k + i for i in range(1, n + 1)], [float(i % 2 == 0) for i in range(n)])
            for k, n in enumerate(lengths)]


def test_first_fit_decreasing_in_exact_windows():
    # Windows of 5: 3 and 3 open a window each; the 2s fill the first with room.
    packed = pack_examples(_ex(3, 2, 2, 3), sequence_length=4)
    assert packed.segment_ids.tolist() == [[1, 1, 1, 2, 2], [3, 3, 4, 4, 4]]
    assert packed.token_ids.tolist() == [[1, 2, 3, 11, 12], [21, 22, 31, 32, 33]]
    assert packed.weights.tolist() == [[1, 0, 1, 1, 0], [1, 0, 1, 0, 1]]
    assert (packed.token_ids.dtype, packed.weights.dtype, packed.segment_ids.dtype) == (
        np.int32, np.float32, np.int32)
    assert (packed.num_examples, packed.truncated, packed.dropped) == (4, 0, 0)
    assert packed.summary() == {
        "examples": 4, "windows": 2, "truncated": 0, "dropped": 0,
        "padding_fraction_before_packing": 0.5, "padding_fraction_after_packing": 0.0}
    # An exact fit for the longest goes into the window whose room is exactly it.
    packed = pack_examples(_ex(4, 1, 1, 3), sequence_length=4, pad_id=9)
    assert packed.segment_ids.tolist() == [[1, 1, 1, 1, 2], [3, 4, 4, 4, 0]]
    assert packed.token_ids.tolist() == [[1, 2, 3, 4, 11], [21, 31, 32, 33, 9]]
    assert packed.summary()["padding_fraction_after_packing"] == 0.1
    assert packed.summary()["padding_fraction_before_packing"] == 0.55


def test_unpacked_windows_and_the_rounded_summary():
    packed = pack_examples(_ex(1, 2, 4), sequence_length=5, pack=False, pad_id=7)
    assert packed.segment_ids.tolist() == [[1, 0, 0, 0, 0, 0], [2, 2, 0, 0, 0, 0],
                                           [3, 3, 3, 3, 0, 0]]
    assert packed.token_ids[0].tolist() == [1, 7, 7, 7, 7, 7]
    assert packed.padding_before == packed.padding_after == 1 - 7 / 18
    assert packed.summary()["padding_fraction_after_packing"] == 0.6111
    assert packed.summary()["padding_fraction_before_packing"] == 0.6111


def test_overlong_counts_and_the_cut():
    examples = _ex(2, 7, 6, 8)
    cut = pack_examples(examples, sequence_length=5, pack=False)
    assert (cut.truncated, cut.dropped, cut.num_examples) == (2, 0, 4)
    assert cut.token_ids[1].tolist() == [11, 12, 13, 14, 15, 16]  # 6 fits whole
    assert cut.token_ids[3].tolist() == [31, 32, 33, 34, 35, 36]
    assert cut.weights[3].tolist() == [1, 0, 1, 0, 1, 0]
    assert cut.token_ids[2].tolist() == [21, 22, 23, 24, 25, 26]
    dropped = pack_examples(examples, sequence_length=5, overlong="drop")
    assert (dropped.truncated, dropped.dropped, dropped.num_examples) == (0, 2, 2)
    assert dropped.summary()["dropped"] == 2 and dropped.summary()["truncated"] == 0
    assert dropped.segment_ids.tolist() == [[2, 2, 2, 2, 2, 2], [1, 1, 0, 0, 0, 0]]
    with pytest.raises(KerastuneError, match="example 2 is 7 tokens"):
        pack_examples(examples, sequence_length=5, overlong="error")
    assert pack_examples(_ex(6), sequence_length=5, overlong="error").truncated == 0
    with pytest.raises(KerastuneError, match="no example fits sequence_length=1"):
        pack_examples(_ex(3, 4), sequence_length=1, overlong="drop")
    with pytest.raises(KerastuneError, match="overlong='cut'"):
        pack_examples(_ex(1), sequence_length=1, overlong="cut")


def test_overlong_warning_says_what_was_done(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="kerastune_lab"):
        pack_examples(_ex(2, 7), sequence_length=5, source="chat file x")
        pack_examples(_ex(2, 7, 9), sequence_length=5, overlong="drop")
        pack_examples(_ex(2), sequence_length=5)
    assert [r.getMessage() for r in caplog.records] == [
        "chat file x: 1 example(s) longer than sequence_length=5 truncated",
        "chat data: 2 example(s) longer than sequence_length=5 dropped"]


def test_model_inputs_shift_and_mask_exactly():
    packed = pack_examples(_ex(3, 1), sequence_length=5, pack=False)
    x, y, sample_weight = model_inputs(packed)
    assert x["token_ids"].tolist() == [[1, 2, 3, 0, 0], [11, 0, 0, 0, 0]]
    assert x["padding_mask"].tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4]
    assert y.tolist() == [[2, 3, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert sample_weight.tolist() == [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert sample_weight.dtype == np.float32


def test_the_datasets_batch_shuffle_and_reshuffle():
    packed = pack_examples(_ex(*[1] * 8), sequence_length=1, pack=False)
    first = lambda ds: [int(t) for x, _, _ in ds for t in x["token_ids"][:, 0]]  # noqa: E731
    ordered = packing.sequence_dataset(packed, batch_size=3)
    assert [int(x["token_ids"].shape[0]) for x, _, _ in ordered] == [3, 3, 2]
    assert first(ordered) == [1, 11, 21, 31, 41, 51, 61, 71]
    shuffled = packing.sequence_dataset(packed, batch_size=8, shuffle=True, seed=1)
    epochs = [first(shuffled), first(shuffled)]
    assert sorted(epochs[0]) == first(ordered) != epochs[0] != epochs[1]
    # The seed is used: the same seed, the same order.
    assert first(packing.sequence_dataset(packed, batch_size=8, shuffle=True, seed=1)) \
        == epochs[0]
    stream = packing.sequence_stream(packed, batch_size=3, seed=2)
    assert (stream.num_examples, stream.batch_size, stream.seed) == (8, 3, 2)
    rows = [(x["token_ids"].numpy().tolist(), y.numpy().tolist(), w.numpy().tolist())
            for x, y, w in stream.examples]
    assert rows[1] == ([11], [0], [0.0]) and len(rows) == 8
    assert packing.sequence_stream(packed, batch_size=3).seed == 0


def test_model_inputs_weigh_padding_zero_whatever_its_weight():
    """A Packed built by hand with weights on its padding: model_inputs masks
    them by the segment ids, not by trusting the weights."""
    packed = packing.Packed(np.array([[5, 6, 7, 0]], "int32"), np.ones((1, 4), "float32"),
                            np.array([[1, 1, 1, 0]], "int32"), 1, 0, 0, 0.25, 0.25)
    _, _, sample_weight = model_inputs(packed)
    assert sample_weight.tolist() == [[1, 1, 0]]


def test_no_conversation_tokenises_nothing():
    calls = []

    class Spy(WordTokenizer):
        def __call__(self, texts):
            calls.append(list(texts))
            return super().__call__(texts)

    template = ChatTemplate(Spy())
    calls.clear()
    assert template.encode_many([]) == []
    assert calls == []
    assert template.encode_many([TURNS[:2], TURNS[:2]])[1].token_ids == \
        [1, 3, HI, THERE, 5, 4, OH, NO, 5]
    assert calls == [["hi there", "oh no"]]  # each text once, sorted
