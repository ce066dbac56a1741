"""The one exception type for bad input, and the one-line messages of the
failures a user fixes by changing settings (out of memory, out of disk).

`KerastuneError` carries a one-line message that names the input and what was
expected. The CLI prints it without a traceback and exits with code 2.

Running out of device memory or disk space is not bad input, but the user
fixes it the same way, by changing a setting or freeing space, so the CLI
prints one line for it too (`resource_error_message`), and exits with code
1. Any other exception is a bug or an environment failure (exit code 1,
with its traceback).
"""

import errno
import os
import re
import sys

# A message names what to change as the command line spells it; raised to a
# Python caller it names the argument instead (`str(error)`), and the CLI
# prints it as written (`error.cli_message`).
_PYTHON_WORDS = (("--output-dir", "output_dir="), ("--overwrite", "overwrite=True"),
                 ("--output", "output="), ("--name", "name="))


class KerastuneError(Exception):
    """Bad input (usage, config or data): one line, exit code 2 from the CLI
    (a subclass may set another `exit_code`).

    `str(error)` speaks Python (`pass overwrite=True`), `error.cli_message`
    the command line (`pass --overwrite`): the message is written in the
    command line's words, and the few that name an option are mapped.
    """

    @property
    def cli_message(self):
        return super().__str__()

    def __str__(self):
        text = super().__str__()
        for flag, word in _PYTHON_WORDS:
            text = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", word, text)
        return text


class IncompatibleVersion(KerastuneError):
    """An installed Keras or KerasHub outside the range kerastune_lab was
    tested with, where a private name it needs is used (`compat`): one line
    naming the package, its version and the range; exit code 1 (the
    environment, not the input)."""

    exit_code = 1


class NotWritable(KerastuneError):
    """A folder the toolkit must write outside the run cannot be written (a
    cache under an unwritable HOME): one line naming it and the variable
    that moves it; exit code 1 (the machine, not the input)."""

    exit_code = 1


# OSError numbers that mean "this disk cannot take the file": full, over
# quota, read-only, or the file over the size limit (`ulimit -f`, or the
# largest file the file system takes).
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG} | (
    {errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())

# What to change when a model does not fit in device memory, per command;
# for `run`, the recipe's config keys that exist are named.
MEMORY_HINTS = {
    "batch_size": "a smaller batch_size=",
    "sequence_length": "a shorter sequence_length=",
    "image_size": "a smaller image_size=",
    "quantize": "quantize=int8 or int4",
    "lora_rank": "a smaller lora_rank=",
    "lora_targets": "fewer lora_targets=",
    "remat": "remat=activations",
    "precision": "precision=mixed_bfloat16 (mixed_float16 on a T4, P100 or V100)",
}
COMMAND_MEMORY_HINTS = {
    "predict": "a shorter --text, fewer images at a time, or a smaller model",
    "evaluate": "a smaller --batch-size",
    "chat": "a smaller --max-length or --num-beams (sampler), or a LoRA run with a "
            "quantized base (quantize=int8)",
    "merge": "a machine with more memory: merging loads the float base",
}


def _chain(exc):
    """`exc` and the exceptions it was raised from or during, outermost first."""
    seen = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _is_out_of_memory(exc):
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    text = str(exc)
    if name in ("XlaRuntimeError", "JaxRuntimeError") and "RESOURCE_EXHAUSTED" in text:
        return True  # jax
    tf = sys.modules.get("tensorflow")
    errors = getattr(tf, "errors", None)
    if errors is not None and isinstance(exc, errors.ResourceExhaustedError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None)  # also torch.cuda.OutOfMemoryError
    if oom is not None and isinstance(exc, oom):
        return True
    # torch on MPS and older torch builds raise a plain RuntimeError.
    return isinstance(exc, RuntimeError) and ("CUDA out of memory" in text
                                              or "MPS backend out of memory" in text)


def out_of_memory(exc):
    """Returns the out-of-memory exception in `exc`'s chain, or None.

    Recognises jax's `XlaRuntimeError` RESOURCE_EXHAUSTED, TensorFlow's
    `ResourceExhaustedError`, torch's `OutOfMemoryError` (and the plain
    "out of memory" RuntimeErrors of CUDA/MPS), and Python's `MemoryError`.
    """
    return next((e for e in _chain(exc) if _is_out_of_memory(e)), None)


def disk_error(exc):
    """Returns the OSError in `exc`'s chain that says a disk is full, over
    quota or read-only, or None."""
    return next((e for e in _chain(exc)
                 if isinstance(e, OSError) and e.errno in DISK_ERRNOS), None)


def memory_hints(command, config_keys=()):
    """What to change, for `kerastune COMMAND`: for `run`, the hints whose
    config key is in `config_keys` (all of them when none is known)."""
    if command != "run":
        return COMMAND_MEMORY_HINTS.get(command, "a smaller model or batch")
    keys = [k for k in MEMORY_HINTS if not config_keys or k in config_keys]
    if not keys:
        return "a smaller batch or model"
    return ", ".join(MEMORY_HINTS[k] for k in keys)


def resource_error_message(exc, command=None, config_keys=()):
    """The one-line message for an out-of-memory or full-disk `exc`, or None.

    Args:
        exc: the exception that ended the command.
        command: str or None. The `kerastune` command ("run", "chat", ...).
        config_keys: the recipe's config keys, for the hints of `run`.
    """
    oom = out_of_memory(exc)
    if oom is not None:
        first = (str(oom).strip().splitlines() or [type(oom).__name__])[0]
        kind = f"{type(oom).__name__}: {first}" if first != type(oom).__name__ else first
        if len(kind) > 160:
            kind = kind[:157] + "..."
        return (f"out of memory ({kind}); try {memory_hints(command, config_keys)}")
    disk = disk_error(exc)
    if disk is not None:
        # A copy's error names the source first, the file written second.
        where = getattr(disk, "filename2", None) or disk.filename
        where = (repr(os.fspath(where)) if where else
                 "a file" if disk.errno == errno.EFBIG else "the output folder")
        what = os.strerror(disk.errno)
        if disk.errno == errno.EFBIG:
            return f"cannot write {where}: {what}, {file_size_limit()}"
        fix = ("free some space or choose another --output-dir" if disk.errno != errno.EROFS
               else "choose a writable --output-dir")
        return f"cannot write {where}: {what}; {fix}"
    return None


def file_size_limit():
    """Why a file could not grow (EFBIG), and what to do, in words: this
    process's file size limit (`ulimit -f`), else the file system's."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        unlimited = soft == resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        soft, unlimited = None, True
    if unlimited:
        return ("over the largest file its file system takes; write to a disk whose file "
                "system takes larger files")
    return (f"over this process's file size limit of {soft} bytes, `ulimit -f`; raise it "
            "(`ulimit -f unlimited`) and run again")


class DownloadFailed(Exception):
    """A preset or dataset could not be downloaded (no network, refused,
    not found, server error, cut off): one line that names it, says what
    failed and what to do; exit code 1 from the CLI (the input may be right,
    the download is what failed). Raised by `kerastune_lab.hub`."""

    exit_code = 1


class RunStopped(Exception):
    """Training stopped before its end, its run directory and backup kept
    (`resume.Backup`): the CLI prints one line and exits with `exit_code`."""

    exit_code = 1


class Interrupted(RunStopped):
    """SIGINT or SIGTERM during `kerastune run`: exit code 128 + the signal's
    number (130, 143); the message says how to resume."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
        self.resume_command = None  # set by `kerastune run`

    def __str__(self):
        import signal

        text = f"interrupted ({signal.Signals(self.signum).name})"
        if self.resume_command:
            text += f"; resume with: {self.resume_command}"
        return text


class LossNotFinite(RunStopped):
    """The loss became NaN or infinite: exit code 1. Not counted as bad input
    (exit code 2): the settings that led to it, such as a learning rate,
    were valid values, and the run directory is kept with its last good
    backup."""


def exit_code(exc):
    """The exit code of `kerastune` for `exc`: 2 bad input (1 for an
    `IncompatibleVersion`), the code of a download failure or a stopped run,
    1 anything else."""
    if isinstance(exc, KerastuneError):
        return getattr(exc, "exit_code", 2)
    return getattr(exc, "exit_code", 1) if isinstance(exc, (DownloadFailed, RunStopped)) else 1


def error_line(exc, command=None, config_keys=()):
    """The one line `kerastune` prints for `exc` (without "kerastune: ")."""
    if isinstance(exc, Interrupted):
        return str(exc)
    if isinstance(exc, KerastuneError):
        return f"error: {exc.cli_message}"
    if isinstance(exc, (DownloadFailed, RunStopped)):
        return f"error: {exc}"
    message = resource_error_message(exc, command, config_keys)
    if message is None:
        first = (str(exc).strip().splitlines() or [""])[0]
        message = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"error: {message}"
