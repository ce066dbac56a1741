"""Text that is not UTF-8, found before a model sees it.

Python keeps what it cannot decode instead of failing: a command-line
argument or a line of standard input that is not UTF-8 arrives with each bad
byte as a "surrogate escape" (U+DC80..U+DCFF), and a JSON string may hold a
lone surrogate (`"\\ud800"`). Neither can be encoded again, so a tokenizer
or TensorFlow fails on it deep inside, with a traceback. These checks name
the text, the byte or character and where it is, in one line.

    check_text(text, "--text 1")               # a KerastuneError, or the text
    for line_number, prompt in stdin_lines(sys.stdin): ...
"""

import sys

from kerastune_lab.errors import KerastuneError


def unicode_problem(text, escaped=True):
    """Why `text` cannot be written as UTF-8, in words; None when it can.

    Args:
        text: str.
        escaped: bool. The text was decoded with surrogate escapes (command
            line, standard input): a U+DC80..U+DCFF character is a byte that
            was not UTF-8. False for text from JSON (a lone surrogate).
    """
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        at = e.start
    char = text[at]
    if escaped and "\udc80" <= char <= "\udcff":
        return f"byte 0x{ord(char) - 0xdc00:02x} at position {at + 1} is not UTF-8"
    return (f"the character at position {at + 1} is a lone surrogate "
            f"\\u{ord(char):04x}, which is not valid Unicode")


def check_text(text, what, escaped=True):
    """Returns `text`, or raises a one-line `KerastuneError` naming `what`
    (e.g. "--text 2") when it cannot be written as UTF-8."""
    problem = unicode_problem(text, escaped)
    if problem:
        raise KerastuneError(f"{what}: {problem}; expected UTF-8 text")
    return text


def check_texts(texts, option="--text"):
    """`check_text` of each of `texts`, named `--text 1`, `--text 2`, ..."""
    for n, text in enumerate(texts, start=1):
        check_text(text, f"{option} {n}" if len(texts) > 1 else option)
    return texts


def stdin_lines(stream=None):
    """Yields (line number, text stripped) for each line of `stream`
    (standard input), decoded as UTF-8 (a BOM on the first line is
    dropped); a line that is not UTF-8 raises a one-line `KerastuneError`
    naming its number, whatever error handler the stream was opened with."""
    stream = sys.stdin if stream is None else stream
    raw = getattr(stream, "buffer", None)
    for number, line in enumerate(raw if raw is not None else stream, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise KerastuneError(
                    f"standard input line {number}: byte 0x{line[e.start]:02x} at position "
                    f"{e.start + 1} is not UTF-8; expected UTF-8 text, one prompt a "
                    "line") from None
        else:
            check_text(line, f"standard input line {number}")
        yield number, line.strip()


def read_prompt(prompt):
    """`input(prompt)`, stripped, for an interactive chat: a line that is not
    UTF-8 comes back with surrogate escapes (for `check_text` to refuse)
    instead of ending the chat with a `UnicodeDecodeError`."""
    reconfigure = getattr(sys.stdin, "reconfigure", None)
    if reconfigure is not None and getattr(sys.stdin, "errors", "") == "strict":
        reconfigure(errors="surrogateescape")
    return input(prompt).strip()
