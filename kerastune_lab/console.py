"""What the toolkit says on the console, and what it keeps others from saying.

- `announce(line)`: a line of the toolkit's own (a phase starting, say),
  logged to the `kerastune_lab` logger, so the CLI shows it on stderr and a
  run writes it into `log.txt`; where nobody has set that logger up (a
  notebook or script calling the library), it is printed instead.
- `quiet_startup()`: keeps TensorFlow's and absl's C++ start-up lines off
  the console ("oneDNN custom operations are on", "Could not find cuda
  drivers", "TF-TRT Warning", "All log messages before absl::InitializeLog()
  is called ...", "failed call to cuInit"). `backend.use_backend` calls it,
  so the CLI and a notebook that chooses its backend get it. It also
  hides one Python warning that is false for a learner: `NOT_WARNINGS`.

Why by hand: those lines are written by C++ code straight to file
descriptor 2, where Python's `warnings` and `logging` cannot filter them.
The ones written after absl's logging starts obey `TF_CPP_MIN_LOG_LEVEL`
(set to 3 here unless the user set it); the ones written while
`import tensorflow` runs come before that and obey nothing, so that one
import runs with descriptor 2 sent to a temporary file, and what is not a
C++ start-up log line is written back to stderr afterwards.
"""

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import warnings

log = logging.getLogger("kerastune_lab")

# Read by TensorFlow's and XLA's C++ logging once absl's logging starts; a
# value the user set is kept. 3: fatal lines only (errors reach Python as
# exceptions anyway).
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GRPC_VERBOSITY": "ERROR"}

# absl/glog C++ lines ("I0000 00:00:1795962001.543389   29333 port.cc:153] ...")
# and absl's note about them.
_CPP_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [\w./-]+:\d+\] ")
_ABSL_NOTE = "WARNING: All log messages before absl::InitializeLog() is called"
_QUIET_MODULES = ("tensorflow",)

# Python warnings that say something false or unactionable to a learner,
# hidden by `quiet_startup` (message regexes, matched at the start):
# - tqdm's "IProgress not found. Please update jupyter and ipywidgets.":
#   `import keras_hub` imports kagglehub, which imports `tqdm.auto`; in a
#   Jupyter kernel without ipywidgets tqdm warns once, then draws its bars
#   as text, which work (and the toolkit's own progress is Keras'). Nothing
#   is wrong that the learner must fix.
NOT_WARNINGS = (r"IProgress not found",)


def is_startup_noise(line):
    """Whether a line of stderr is a C++ start-up log line of TensorFlow/absl."""
    return bool(_CPP_LINE.match(line)) or line.startswith(_ABSL_NOTE)


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self.loader.exec_module(module)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first import of TensorFlow under `filtered_stderr`."""

    busy = False

    def find_spec(self, name, path=None, target=None):
        if name not in _QUIET_MODULES or self.busy:
            return None
        self.busy = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class filtered_stderr:
    """Sends file descriptor 2 to a temporary file for the block, then writes
    back to `sys.stderr` every line that is not `is_startup_noise`."""

    def __enter__(self):
        self.file = None
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            self.file = tempfile.TemporaryFile(mode="w+b")
            os.dup2(self.file.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # no descriptor 2 to redirect
            self.file = None
        return self

    def __exit__(self, *exc):
        if self.file is None:
            return False
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        text = self.file.read().decode("utf-8", "replace")
        self.file.close()
        kept = [line for line in text.splitlines(keepends=True) if not is_startup_noise(line)]
        if kept:
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
        return False


def quiet_startup(environ=None):
    """Keeps TensorFlow's C++ start-up lines off the console: sets the
    variables of `QUIET_ENV` that are not set, and runs the first
    `import tensorflow` under `filtered_stderr`; ignores the warnings of
    `NOT_WARNINGS`. Call it before TensorFlow is imported (later it only
    sets the variables and the filters)."""
    environ = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        environ.setdefault(key, value)
    for message in NOT_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if not any(isinstance(f, _QuietImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImport())


def _shown():
    """Whether an INFO line of the toolkit reaches a console handler (not
    only a log file)."""
    if not log.isEnabledFor(logging.INFO):
        return False
    logger = log
    while logger is not None:
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler)
                    and not isinstance(handler, logging.FileHandler)
                    and handler.level <= logging.INFO):
                return True
        logger = logger.parent if logger.propagate else None
    return False


def announce(message, *args):
    """Logs an INFO line of the toolkit (the console of `kerastune`, a run's
    log.txt); also prints it where no console handler would show it (a
    notebook or script calling the library)."""
    log.info(message, *args)
    if not _shown():
        print("kerastune: " + (message % args if args else message), flush=True)
