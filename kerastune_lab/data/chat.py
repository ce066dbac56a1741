"""Chat data: JSONL conversations -> tokenised, loss-masked, packed windows.

    {"prompt": "Is it going to rain?", "response": "Only if you left the umbrella."}
    {"messages": [{"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Oh. It's you."}, ...]}

or a Hugging Face dataset, `hf:NAME[:CONFIG][@SPLIT]` (`data.hf_data`), with
a `messages` column of role/content messages or `prompt` and `response`
columns, checked as the JSONL records are.

Each conversation is rendered and loss-masked by the chat template
(`data.chat_template`), then packed into windows (`data.packing`). The chat
recipes read their files first (`read_conversations`: bad input fails before
a model downloads), then tokenise and pack with the model's own tokenizer
(`pack_chat_data`).
"""

import json
import logging
import os

from kerastune_lab.data import hf_data
from kerastune_lab.data.chat_template import (  # noqa: F401 (this module's public names)
    DEFAULT_TEMPLATE,
    EOS_TEMPLATE,
    LOSS_ON,
    ROLES,
    ChatTemplate,
    check_settings,
)
from kerastune_lab.data.packing import (  # noqa: F401
    OVERLONG,
    Example,
    Packed,
    model_inputs,
    pack_examples,
    sequence_dataset,
    sequence_stream,
)
from kerastune_lab.errors import KerastuneError
from kerastune_lab.text_checks import unicode_problem

log = logging.getLogger("kerastune_lab")

# The names of earlier versions.
chat_dataset, chat_stream = sequence_dataset, sequence_stream


def _at(line):
    """Where a record is: "line N" of a file, or as given ("row N" of a dataset)."""
    return f"line {line}" if isinstance(line, int) else line


def _text(value, path, line, what):
    if not isinstance(value, str):
        raise KerastuneError(
            f"chat data {path!r} {_at(line)}: the {what} is a {type(value).__name__}, "
            "expected a string")
    if not value.strip():
        raise KerastuneError(f"chat data {path!r} {_at(line)}: the {what} is empty")
    problem = unicode_problem(value, escaped=False)
    if problem:
        raise KerastuneError(f"chat data {path!r} {_at(line)}: the {what}: {problem}; "
                             "expected UTF-8 text")
    return value


def _turns(record, path, line):
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise KerastuneError(
                f"chat data {path!r} {_at(line)}: \"messages\" must be a non-empty list of "
                "{\"role\": ..., \"content\": ...}")
        turns = []
        for n, message in enumerate(messages, start=1):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise KerastuneError(
                    f"chat data {path!r} {_at(line)}: message {n} needs \"role\" and "
                    "\"content\"")
            role = message["role"]
            if role not in ROLES:
                raise KerastuneError(
                    f"chat data {path!r} {_at(line)}: message {n} has role {role!r}, "
                    f"expected one of {', '.join(ROLES)}")
            turns.append((role, _text(message["content"], path, line,
                                      f"content of message {n} ({role})")))
        if not any(role == "assistant" for role, _ in turns):
            raise KerastuneError(
                f"chat data {path!r} {_at(line)}: the conversation has no assistant turn; "
                "expected at least one message with role \"assistant\"")
        for n, (role, _) in enumerate(turns):
            if role != ROLES[n % 2]:
                raise KerastuneError(
                    f"chat data {path!r} {_at(line)}: message {n + 1} is {role!r}; expected "
                    "turns alternating user, assistant, starting with user")
        if turns[-1][0] != "assistant":
            raise KerastuneError(
                f"chat data {path!r} {_at(line)}: the conversation ends with a user turn; "
                "expected it to end with the assistant's reply")
        return turns
    if "prompt" in record and "response" in record:
        return [("user", _text(record["prompt"], path, line, "prompt")),
                ("assistant", _text(record["response"], path, line, "response"))]
    raise KerastuneError(
        f"chat data {path!r} {_at(line)}: expected keys \"prompt\" and \"response\" or "
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
                    f"chat data {path!r} {_at(line)}: not UTF-8 text") from None
            if not content.strip():
                continue
            try:
                record = json.loads(content)
            except (json.JSONDecodeError, RecursionError) as e:
                why = (f"not valid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError)
                       else "JSON nested too deeply to read")
                raise KerastuneError(
                    f"chat data {path!r} {_at(line)}: {why}; "
                    "expected one JSON object a line") from None
            if not isinstance(record, dict):
                raise KerastuneError(
                    f"chat data {path!r} {_at(line)}: expected a JSON object, received "
                    f"{type(record).__name__}")
            conversations.append(_turns(record, path, line))
    if not conversations:
        raise KerastuneError(f"chat data {path!r} holds no conversations")
    return conversations


def read_chat_hf(data, split="train"):
    """Reads chat conversations from a Hugging Face dataset split.

    Args:
        data: str. `hf:NAME[:CONFIG][@SPLIT]`: a `messages` column (lists of
            {"role", "content"}, as `read_chat_jsonl`'s) or `prompt` and
            `response` string columns.
        split: str. The split read when `data` names none. Defaults to "train".

    Returns:
        A list of conversations, each a list of (role, text) turns.
    """
    source, rows = hf_data.read_chat_records(data, split)
    conversations = [_turns(record, source, f"row {row}") for row, record in rows]
    if not conversations:
        raise KerastuneError(f"chat data {source!r} holds no conversations")
    return conversations


def read_chat(data, split="train"):
    """`read_chat_hf(data, split)` for `hf:...`, else `read_chat_jsonl(data)`."""
    return read_chat_hf(data, split) if hf_data.is_hf(data) else read_chat_jsonl(data)


def pack_conversations(conversations, template, sequence_length, loss_on="assistant", pack=True,
                       overlong="truncate", source="chat data"):
    """Tokenises and packs conversations (see `ChatTemplate.encode_many` and
    `pack_examples`); returns `Packed`."""
    examples = template.encode_many(conversations, loss_on)
    pad_id = getattr(template.tokenizer, "pad_token_id", None) or 0
    return pack_examples(examples, sequence_length, pack, overlong, pad_id, source)


def read_conversations(data, heldout_data, max_examples=0):
    """Reads a chat recipe's training and held-out conversations.

    Args:
        data: str. The training conversations: a JSONL file (see
            `read_chat_jsonl`) or `hf:NAME[:CONFIG][@SPLIT]` (its `train`
            split unless it names one; see `read_chat_hf`).
        heldout_data: str. Conversations never trained on, for perplexity:
            a JSONL file or `hf:...` (its `test` split unless it names one).
        max_examples: int. Keep only the first N training conversations; 0
            for all.

    Returns:
        (train, heldout): lists of conversations.
    """
    train = read_chat(data, "train")
    if max_examples:
        train = train[:max_examples]
    return train, read_chat(heldout_data, "test")


def pack_chat_data(train, heldout, template, sequence_length, loss_on="assistant", pack=True,
                   overlong="truncate", sources=("chat data", "held-out chat data")):
    """Tokenises and packs a chat recipe's conversations, and logs the figures.

    The held-out conversations get one example a window, so that no example
    sees another while it is scored.

    Args:
        train, heldout: lists of conversations (`read_conversations`).
        template: ChatTemplate.
        sequence_length, loss_on, pack, overlong: see `pack_examples` and
            `ChatTemplate.encode_many`.
        sources: (str, str). Name the two in errors and warnings.

    Returns:
        (train, heldout): `Packed`.
    """
    train = pack_conversations(train, template, sequence_length, loss_on, pack, overlong,
                               source=sources[0])
    heldout = pack_conversations(heldout, template, sequence_length, loss_on, pack=False,
                                 overlong=overlong, source=sources[1])
    log.info("data: %d train examples in %d windows (padding %.1f%% before packing, %.1f%% "
             "after), %d held out", train.num_examples, len(train.token_ids),
             100 * train.padding_before, 100 * train.padding_after, heldout.num_examples)
    return train, heldout
