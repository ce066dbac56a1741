"""Chat data: JSONL conversations -> tokenised, loss-masked, packed windows.

    {"prompt": "Is it going to rain?", "response": "Only if you left the umbrella."}
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Oh. It's you."}, ...]}

Each conversation is rendered with a chat template, by default

    <|user|>{prompt}<|endoftext|><|assistant|>{response}<|endoftext|>

once per user/assistant turn pair (a multi-turn conversation repeats it). The
template's literal text (role markers, end tokens) is tokenised on its own,
never together with the text around it, so a marker is the same ids every
time: one id when the tokenizer knows it as a token (`<|endoftext|>` in GPT-2,
`<|user|>` in the tiny test presets), else the ids of the marker tokenised
alone (`<`, `|`, `user`, `|`, `>` in `gpt2_base_en`). `{eos}` in a template
stands for the tokenizer's own end token, whatever its text.

Sample weights: 1 on the assistant's tokens and on the template text that
closes its turn (the end token: the model must learn to stop), 0 on the
prompt, the role markers and padding (`loss_on="assistant"`, the default);
`loss_on="all"` weighs every real token 1.

Packing: examples are placed whole into windows of `sequence_length + 1`
tokens (first-fit, longest first), so little compute goes to padding; an
example is never split across windows. An example longer than a window is
truncated or dropped (counted), or is an error, as configured. Packed
examples share one causal attention mask: a later example in a window can
attend to the earlier ones (KerasHub backbones take a padding mask, not a
block-diagonal one); positions also run on across the window.

The model is fed with its preprocessor detached
(`kerastune_lab.models.detached_preprocessor`): x = {"token_ids",
"padding_mask"} of `sequence_length`, y = the next tokens, sample weights.

Hand-written because KerasHub's `CausalLMPreprocessor` tokenises one string
per example with the loss on every token; it has no chat template, no
per-turn loss mask and no packing.
"""

import bisect
import dataclasses
import json
import logging
import os
import re

import numpy as np

from kerastune_lab.errors import KerastuneError

log = logging.getLogger("kerastune_lab")

DEFAULT_TEMPLATE = "<|user|>{prompt}<|endoftext|><|assistant|>{response}<|endoftext|>"
# The same with the tokenizer's own end token: for vocabularies without
# <|endoftext|> (Llama's `</s>`).
EOS_TEMPLATE = "<|user|>{prompt}{eos}<|assistant|>{response}{eos}"
ROLES = ("user", "assistant")
LOSS_ON = ("assistant", "all")
OVERLONG = ("truncate", "drop", "error")

# A marker in a template's literal text: `<|user|>`, `</s>`, `<start_of_turn>`.
_MARKER = re.compile(r"<[^<>\s]+>")
_FIELD = re.compile(r"\{(prompt|response|eos)\}")


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _text(value, path, line, what):
    if not isinstance(value, str):
        raise KerastuneError(
            f"chat data {path!r} line {line}: the {what} is a {type(value).__name__}, "
            "expected a string")
    if not value.strip():
        raise KerastuneError(f"chat data {path!r} line {line}: the {what} is empty")
    return value


def _turns(record, path, line):
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise KerastuneError(
                f"chat data {path!r} line {line}: \"messages\" must be a non-empty list of "
                "{\"role\": ..., \"content\": ...}")
        turns = []
        for n, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise KerastuneError(
                    f"chat data {path!r} line {line}: message {n} needs \"role\" and "
                    "\"content\"")
            role = message["role"]
            if role not in ROLES:
                raise KerastuneError(
                    f"chat data {path!r} line {line}: message {n} has role {role!r}, "
                    f"expected one of {', '.join(ROLES)}")
            turns.append((role, _text(message["content"], path, line,
                                      f"content of message {n} ({role})")))
        if not any(role == "assistant" for role, _ in turns):
            raise KerastuneError(
                f"chat data {path!r} line {line}: the conversation has no assistant turn; "
                "expected at least one message with role \"assistant\"")
        for n, (role, _) in enumerate(turns):
            if role != ROLES[n % 2]:
                raise KerastuneError(
                    f"chat data {path!r} line {line}: message {n + 1} is {role!r}; expected "
                    "turns alternating user, assistant, starting with user")
        if turns[-1][0] != "assistant":
            raise KerastuneError(
                f"chat data {path!r} line {line}: the conversation ends with a user turn; "
                "expected it to end with the assistant's reply")
        return turns
    if "prompt" in record and "response" in record:
        return [("user", _text(record["prompt"], path, line, "prompt")),
                ("assistant", _text(record["response"], path, line, "response"))]
    raise KerastuneError(
        f"chat data {path!r} line {line}: expected keys \"prompt\" and \"response\" or "
        f"\"messages\", the record has {', '.join(map(repr, record)) or 'no keys'}")


def read_chat_jsonl(path):
    """Reads chat conversations from a JSONL file.

    Args:
        path: str. UTF-8, one JSON object a line (blank lines skipped), each
            `{"prompt": str, "response": str}` or `{"messages": [{"role":
            "user"|"assistant", "content": str}, ...]}` alternating user and
            assistant, starting with user and ending with assistant. Other
            keys (e.g. `"split"`) are ignored.

    Returns:
        A list of conversations, each a list of (role, text) turns.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise KerastuneError(f"chat data {path!r} does not exist: expected a JSONL file")
    conversations = []
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                content = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError:
                raise KerastuneError(
                    f"chat data {path!r} line {line}: not UTF-8 text") from None
            if not content.strip():
                continue
            try:
                record = json.loads(content)
            except json.JSONDecodeError as e:
                raise KerastuneError(
                    f"chat data {path!r} line {line}: not valid JSON ({e.msg}); "
                    "expected one JSON object a line") from None
            if not isinstance(record, dict):
                raise KerastuneError(
                    f"chat data {path!r} line {line}: expected a JSON object, received "
                    f"{type(record).__name__}")
            conversations.append(_turns(record, path, line))
    if not conversations:
        raise KerastuneError(f"chat data {path!r} holds no conversations")
    return conversations


# ---------------------------------------------------------------------------
# Template and tokenisation
# ---------------------------------------------------------------------------


def _as_list(ids):
    """Token ids from any backend's tokenizer output -> (nested) Python lists."""
    if hasattr(ids, "to_list"):  # tf.RaggedTensor
        return ids.to_list()
    if hasattr(ids, "numpy"):
        ids = ids.numpy()
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _as_str(text):
    if hasattr(text, "numpy"):
        text = text.numpy()
    if isinstance(text, np.ndarray):
        text = text.item()
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


@dataclasses.dataclass
class Example:
    """One tokenised conversation."""

    token_ids: list  # int
    weights: list  # float, 1 where the loss counts


def check_settings(template=DEFAULT_TEMPLATE, loss_on="assistant", overlong="truncate"):
    """Checks a template and the loss/length options before any model loads."""
    fields = _FIELD.findall(template)
    if fields.count("prompt") != 1 or fields.count("response") != 1 or (
            fields.index("prompt") > fields.index("response")):
        raise KerastuneError(
            f"chat template {template!r}: expected {{prompt}} then {{response}}, once each")
    if loss_on not in LOSS_ON:
        raise KerastuneError(f"loss_on={loss_on!r}: expected one of {', '.join(LOSS_ON)}")
    if overlong not in OVERLONG:
        raise KerastuneError(f"overlong={overlong!r}: expected one of {', '.join(OVERLONG)}")


class ChatTemplate:
    """Renders conversations with a chat template and tokenises them.

    Args:
        tokenizer: a KerasHub tokenizer (e.g. `model.preprocessor.tokenizer`).
        template: str. Holds `{prompt}` then `{response}` once each, and may
            hold `{eos}` (the tokenizer's end token). Defaults to
            `DEFAULT_TEMPLATE`.
        add_start_token: bool. Begin every sequence with the tokenizer's
            start token (GPT-2 `<|endoftext|>`, Llama `<s>`), as KerasHub's
            preprocessors do. Defaults to `True`.

    Example:

    ```python
    template = ChatTemplate(causal_lm.preprocessor.tokenizer)
    example = template.encode([("user", "Hi"), ("assistant", "Oh. You again.")])
    prompt_ids = template.encode_prompt("Any plans today?")
    ```
    """

    def __init__(self, tokenizer, template=DEFAULT_TEMPLATE, add_start_token=True):
        self.tokenizer = tokenizer
        self.template = template
        self.add_start_token = add_start_token
        check_settings(template)
        head, rest = template.split("{response}")
        before, between = head.split("{prompt}")
        # Literal pieces, each tokenised on its own: (user part) before the
        # prompt and between prompt and response, (assistant part) after it.
        self._before = self._literal(before)
        self._between = self._literal(between)
        self._after = self._literal(rest)
        start = getattr(tokenizer, "start_token_id", None)
        self._start = [start] if add_start_token and start is not None else []
        self._marker_ids = {}
        for piece in _FIELD.sub(" ", template).split():
            for marker in _MARKER.findall(piece):
                self._marker_ids[marker] = self._marker(marker)
        end = getattr(tokenizer, "end_token_id", None)
        singles = {ids[0] for ids in self._marker_ids.values() if len(ids) == 1}
        self.stop_token_ids = tuple(sorted(singles | ({end} if end is not None else set())))
        self.stop_sequences = [ids for ids in self._marker_ids.values() if len(ids) > 1]

    def __repr__(self):
        return f"ChatTemplate({self.template!r})"

    @property
    def markers(self):
        """{marker text: its token ids}, as every sequence holds them."""
        return dict(self._marker_ids)

    def _tokenize(self, texts):
        return [[int(i) for i in ids] for ids in _as_list(self.tokenizer(list(texts)))]

    def _marker(self, marker):
        try:
            token_id = int(self.tokenizer.token_to_id(marker))
            if self.tokenizer.id_to_token(token_id) == marker:
                return [token_id]
        except (ValueError, KeyError, TypeError):
            pass
        ids = self._tokenize([marker])[0]
        log.info("chat marker %r is not one token of this tokenizer: always encoded as "
                 "the %d ids %s", marker, len(ids), ids)
        return ids

    def _literal(self, text):
        ids = []
        for n, part in enumerate(re.split(r"(\{eos\}|<[^<>\s]+>)", text)):
            if not part:
                continue
            if part == "{eos}":
                end = getattr(self.tokenizer, "end_token_id", None)
                if end is None:
                    raise KerastuneError(
                        f"chat template {self.template!r} uses {{eos}}, but the tokenizer has "
                        "no end token")
                ids.append(int(end))
            elif n % 2:  # a marker
                ids += self._marker(part)
            else:
                ids += self._tokenize([part])[0]
        return ids

    def encode_many(self, conversations, loss_on="assistant"):
        """Tokenises conversations; returns a list of `Example`.

        Args:
            conversations: list of lists of (role, text), as `read_chat_jsonl`
                returns.
            loss_on: str. `"assistant"` (weight 1 on the assistant's tokens
                and the end of its turn, 0 elsewhere) or `"all"`. Defaults to
                `"assistant"`.
        """
        if loss_on not in LOSS_ON:
            raise KerastuneError(f"loss_on={loss_on!r}: expected one of {', '.join(LOSS_ON)}")
        texts = sorted({text for turns in conversations for _, text in turns})
        ids = dict(zip(texts, self._tokenize(texts))) if texts else {}
        marker_weight = 1.0 if loss_on == "all" else 0.0
        examples = []
        for turns in conversations:
            tokens, weights = list(self._start), [marker_weight] * len(self._start)
            for role, text in turns:
                if role == "user":
                    pieces = [(self._before, marker_weight), (ids[text], marker_weight),
                              (self._between, marker_weight)]
                else:
                    pieces = [(ids[text], 1.0), (self._after, 1.0)]
                for piece, weight in pieces:
                    tokens += piece
                    weights += [weight] * len(piece)
            examples.append(Example(tokens, weights))
        return examples

    def encode(self, turns, loss_on="assistant"):
        """Tokenises one conversation; returns an `Example`."""
        return self.encode_many([turns], loss_on)[0]

    def encode_prompt(self, prompt, history=()):
        """Token ids that ask for the assistant's next reply.

        Args:
            prompt: str. The user's message.
            history: list of (user text, assistant text) pairs before it.
        """
        turns = [t for user, reply in history for t in (("user", user), ("assistant", reply))]
        # Ends with the user part of the template, e.g. `...<|assistant|>`.
        return self.encode(turns + [("user", prompt)]).token_ids

    def decode_reply(self, ids):
        """Text of generated ids, cut at the first stop token or marker."""
        ids = [int(i) for i in ids]
        for n, token in enumerate(ids):
            if token in self.stop_token_ids:
                ids = ids[:n]
                break
        for seq in self.stop_sequences:
            for n in range(len(ids) - len(seq) + 1):
                if ids[n:n + len(seq)] == seq:
                    ids = ids[:n]
                    break
        if not ids:
            return ""
        return _as_str(self.tokenizer.detokenize(ids)).strip()


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Packed:
    """Examples placed whole into fixed-length windows.

    Arrays are (windows, sequence_length + 1); `segment_ids` is 0 on padding
    and k on the tokens of the k-th kept example (1-based, in input order).
    """

    token_ids: np.ndarray  # int32
    weights: np.ndarray  # float32
    segment_ids: np.ndarray  # int32
    num_examples: int  # examples kept (truncated ones included)
    truncated: int  # examples cut to the window length
    dropped: int  # examples left out for being too long
    padding_before: float  # padding fraction with one example a window
    padding_after: float  # padding fraction of these windows

    def summary(self):
        """The figures for `metrics.json`."""
        return {"examples": self.num_examples, "windows": int(len(self.token_ids)),
                "truncated": self.truncated, "dropped": self.dropped,
                "padding_fraction_before_packing": round(self.padding_before, 4),
                "padding_fraction_after_packing": round(self.padding_after, 4)}


def pack_examples(examples, sequence_length, pack=True, overlong="truncate", pad_id=0,
                  source="chat data"):
    """Places examples whole into windows of `sequence_length + 1` tokens.

    Args:
        examples: list of `Example`.
        sequence_length: int. Model input length; a window holds one more
            token, for the shifted labels.
        pack: bool. Several examples a window (first-fit, longest first);
            `False` gives one example a window. Defaults to `True`.
        overlong: str. An example longer than a window is `"truncate"`d
            (its end cut), `"drop"`ped, or an `"error"`. Both are counted.
            Defaults to `"truncate"`.
        pad_id: int. Token id of padding (masked out anyway). Defaults to 0.
        source: str. Names the data in errors.
    """
    if overlong not in OVERLONG:
        raise KerastuneError(f"overlong={overlong!r}: expected one of {', '.join(OVERLONG)}")
    window = sequence_length + 1
    kept, truncated, dropped = [], 0, 0
    for n, example in enumerate(examples):
        length = len(example.token_ids)
        if length > window:
            if overlong == "error":
                raise KerastuneError(
                    f"{source}: example {n + 1} is {length} tokens, longer than "
                    f"sequence_length={sequence_length} (+1 for the labels); raise "
                    "sequence_length or set overlong=truncate or overlong=drop")
            if overlong == "drop":
                dropped += 1
                continue
            truncated += 1
            example = Example(example.token_ids[:window], example.weights[:window])
        kept.append(example)
    if truncated or dropped:
        log.warning("%s: %d example(s) longer than sequence_length=%d %s", source,
                    truncated or dropped, sequence_length,
                    "truncated" if truncated else "dropped")
    if not kept:
        raise KerastuneError(f"{source}: no example fits sequence_length={sequence_length}")

    if pack:
        # First-fit decreasing: each example goes into the first window with
        # room, longest first; `free` keeps (room left, window) sorted.
        windows, free = [], []
        for index in sorted(range(len(kept)), key=lambda i: -len(kept[i].token_ids)):
            need = len(kept[index].token_ids)
            at = bisect.bisect_left(free, (need, -1))
            if at == len(free):
                windows.append([index])
                room, w = window - need, len(windows) - 1
            else:
                room, w = free.pop(at)
                windows[w].append(index)
                room -= need
            if room > 0:
                bisect.insort(free, (room, w))
        for members in windows:
            members.sort()
    else:
        windows = [[i] for i in range(len(kept))]

    shape = (len(windows), window)
    token_ids = np.full(shape, pad_id, dtype="int32")
    weights = np.zeros(shape, dtype="float32")
    segment_ids = np.zeros(shape, dtype="int32")
    for w, members in enumerate(windows):
        at = 0
        for index in members:
            example = kept[index]
            end = at + len(example.token_ids)
            token_ids[w, at:end] = example.token_ids
            weights[w, at:end] = example.weights
            segment_ids[w, at:end] = index + 1
            at = end
    real = sum(len(e.token_ids) for e in kept)
    return Packed(token_ids, weights, segment_ids, len(kept), truncated, dropped,
                  padding_before=1.0 - real / (len(kept) * window),
                  padding_after=1.0 - real / token_ids.size)


def model_inputs(packed):
    """Returns (x, y, sample_weight) numpy arrays for a CausalLM with its
    preprocessor detached: x = {"token_ids", "padding_mask"}."""
    x = {"token_ids": packed.token_ids[:, :-1],
         "padding_mask": packed.segment_ids[:, :-1] > 0}
    y = packed.token_ids[:, 1:]
    sample_weight = packed.weights[:, 1:] * (packed.segment_ids[:, 1:] > 0)
    return x, y, sample_weight.astype("float32")


def chat_dataset(packed, batch_size, shuffle=False, seed=None):
    """A batched tf.data pipeline of (x, y, sample_weight) from `model_inputs`."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(model_inputs(packed))
    if shuffle:
        ds = ds.shuffle(len(packed.token_ids), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def chat_stream(packed, batch_size, seed=0):
    """`model_inputs(packed)` as a resumable training `Stream` of (x, y,
    sample_weight) batches, shuffled per (seed, epoch)."""
    import tensorflow as tf

    from kerastune_lab.data.stream import Stream

    examples = tf.data.Dataset.from_tensor_slices(model_inputs(packed))
    return Stream(examples, len(packed.token_ids), batch_size, seed)


def pack_conversations(conversations, template, sequence_length, loss_on="assistant", pack=True,
                       overlong="truncate", source="chat data"):
    """Tokenises and packs conversations (see `ChatTemplate.encode_many` and
    `pack_examples`); returns `Packed`."""
    examples = template.encode_many(conversations, loss_on)
    pad_id = getattr(template.tokenizer, "pad_token_id", None) or 0
    return pack_examples(examples, sequence_length, pack, overlong, pad_id, source)


def load_chat_data(path, template, sequence_length, loss_on="assistant", pack=True,
                   overlong="truncate", max_examples=0):
    """Reads, tokenises and packs a chat JSONL file.

    Args:
        path: str. A JSONL file (see `read_chat_jsonl`).
        template: ChatTemplate.
        sequence_length: int. Model input length.
        loss_on, pack, overlong: see `ChatTemplate.encode_many` and
            `pack_examples`.
        max_examples: int. Use only the first N conversations; 0 for all.

    Returns:
        Packed.
    """
    conversations = read_chat_jsonl(path)
    if max_examples:
        conversations = conversations[:max_examples]
    return pack_conversations(conversations, template, sequence_length, loss_on, pack, overlong,
                              source=f"chat data {os.fspath(path)!r}")
