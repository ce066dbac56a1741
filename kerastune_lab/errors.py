"""The one exception type for bad input.

`KerastuneError` carries a one-line message that names the input and what was
expected. The CLI prints it without a traceback and exits with code 2; any
other exception is a bug or an environment failure (exit code 1).
"""


class KerastuneError(Exception):
    """Bad input (usage, config or data): one line, exit code 2 from the CLI."""
