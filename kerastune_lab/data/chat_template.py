"""The chat template: conversations -> token ids with a per-token loss mask.

Training (`data.chat`) and generation (`kerastune_lab.generate`) share it, so
a prompt is rendered at inference exactly as in training. The default is

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

Hand-written because KerasHub's `CausalLMPreprocessor` tokenises one string
per example with the loss on every token; it has no chat template and no
per-turn loss mask.
"""

import logging
import re

import numpy as np

from kerastune_lab.data.packing import OVERLONG, Example
from kerastune_lab.errors import KerastuneError

log = logging.getLogger("kerastune_lab")

DEFAULT_TEMPLATE = "<|user|>{prompt}<|endoftext|><|assistant|>{response}<|endoftext|>"
# The same with the tokenizer's own end token: for vocabularies without
# <|endoftext|> (Llama's `</s>`).
EOS_TEMPLATE = "<|user|>{prompt}{eos}<|assistant|>{response}{eos}"
ROLES = ("user", "assistant")
LOSS_ON = ("assistant", "all")

# A marker in a template's literal text: `<|user|>`, `</s>`, `<start_of_turn>`.
_MARKER = re.compile(r"<[^<>\s]+>")
_FIELD = re.compile(r"\{(prompt|response|eos)\}")


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

    def _text(self, literal):
        """A template piece as text, `{eos}` spelled as the tokenizer's end token."""
        end = getattr(self.tokenizer, "end_token", None)
        return literal.replace("{eos}", end) if end is not None else literal

    def render(self, turns):
        """The text of a conversation as the template lays it out: the string
        the token ids of `encode` spell (each piece tokenised on its own
        there), with the start token first when `add_start_token`.

        Args:
            turns: list of (role, text), roles "user" and "assistant".
        """
        head, after = self.template.split("{response}")
        before, between = head.split("{prompt}")
        start = getattr(self.tokenizer, "start_token", None)
        parts = [start] if self.add_start_token and start is not None else []
        for role, text in turns:
            parts += ([self._text(before), text, self._text(between)] if role == "user"
                      else [text, self._text(after)])
        return "".join(parts)

    def jinja(self):
        """The template as a Jinja chat template (Hugging Face's
        `tokenizer.chat_template`): `apply_chat_template` on role/content
        messages renders exactly `render` of the same turns. The user part
        ends where the assistant's reply begins, so a conversation that ends
        with a user message is the prompt for the next reply (with or without
        `add_generation_prompt`)."""
        import json

        head, after = self.template.split("{response}")
        before, between = head.split("{prompt}")
        start = getattr(self.tokenizer, "start_token", None)
        quote = lambda text: "{{ " + json.dumps(self._text(text)) + " }}"  # noqa: E731
        return ("".join([quote(start)] if self.add_start_token and start is not None else [])
                + "{% for message in messages %}"
                + "{% if message['role'] == 'user' %}" + quote(before)
                + "{{ message['content'] }}" + quote(between)
                + "{% elif message['role'] == 'assistant' %}{{ message['content'] }}"
                + quote(after)
                + "{% else %}{{ raise_exception('this model was tuned on user and assistant "
                  "turns only, not ' + message['role']) }}{% endif %}{% endfor %}")

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
