"""SIGINT and SIGTERM during a run: held until the current batch ends.

    with handle_interrupts():      # as `kerastune run` does
        model.fit(..., callbacks=[backup])

While `handle_interrupts` is active, SIGINT and SIGTERM raise `Interrupted`
(exit code 130 or 143). During a `fit` with a `Backup` callback the signal is
held (`pending`) until the current batch ends: the callback writes its backup,
then raises it (`take_pending`). A second signal stops at once; so does one
that comes when no `Backup` is training. Python's `signal` module gives the
handlers; what is written here is only that holding.
"""

import contextlib
import logging
import signal
import threading

from kerastune_lab.errors import Interrupted

log = logging.getLogger("kerastune_lab")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Signals:
    installed = False  # handle_interrupts is active
    training = None  # the Backup callback whose fit is running
    pending = None  # a signal held until the end of the batch


def _on_signal(signum, frame):
    if _Signals.training is not None and _Signals.pending is None:
        _Signals.pending = signum
        log.warning("%s: stopping after this batch, once the backup is written "
                    "(again to stop at once)", signal.Signals(signum).name)
        return
    _Signals.training = None
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_interrupts():
    """While active, SIGINT and SIGTERM raise `Interrupted`; during a `fit`
    with a `Backup` callback, at the end of the current batch, after a backup.
    (Outside the main thread, signals cannot be handled: does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    _Signals.installed, _Signals.pending = True, None
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _Signals.installed, _Signals.pending, _Signals.training = False, None, None


def set_training(callback):
    """Marks `callback` (a `Backup`) as the one training, or None when none
    is: a signal is held only while one is."""
    _Signals.training = callback


def pending():
    """The signal number held until the current batch ends, or None."""
    return _Signals.pending


def take_pending():
    """Returns the held signal number, now handled: nothing is held and no
    callback is training any more."""
    signum, _Signals.pending, _Signals.training = _Signals.pending, None, None
    return signum
