"""What every `kerastune` command shares: the `--backend` option, choosing
the backend before anything imports Keras (`select_backend`), and the stderr
handler of the `kerastune_lab` logger (`setup_logging`)."""

import logging
import sys

import click

from kerastune_lab import backend as backend_lib

BACKEND_OPTION = click.option(
    "--backend", "-b", default=None, metavar="{jax,tensorflow,torch}",
    help="Keras backend. Defaults to $KERAS_BACKEND, then jax.")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging():
    logger = logging.getLogger("kerastune_lab")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("kerastune: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def select_backend(flag):
    from kerastune_lab.console import filtered_stderr

    name = backend_lib.use_backend(flag)
    with filtered_stderr():  # TensorFlow's device probe logs "failed call to cuInit" in C++
        backend_lib.hide_gpus_from_tensorflow()
    return name
