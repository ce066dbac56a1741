"""Fault injection for the resume tests, kept out of the library: a signal
sent to this process while it trains its Nth batch, counted from 1 over
every `fit` with a `resume.Backup` callback in the process.

    with signal_at_batch("INT", 2):           # in this process
        model.fit(..., callbacks=[backup])
    run_cli_with_signal("KILL@6", "run", recipe, ...)   # `kerastune` in a new process

The signal is sent as the batch begins, after `Backup`'s own
`on_train_batch_begin` (which writes the backups of the batches before):
SIGINT and SIGTERM are then held until it ends (the backup of that step is
written), and SIGKILL leaves the backups of the batches before it.
"""

import contextlib
import os
import signal
import subprocess
import sys


@contextlib.contextmanager
def signal_at_batch(name, batch):
    """While active, sends SIG`name` to this process as its `batch`th
    training batch with a `Backup` begins."""
    from kerastune_lab.resume import Backup

    original = Backup.on_train_batch_begin
    seen = 0

    def on_train_batch_begin(self, index, logs=None):
        nonlocal seen
        seen += 1
        result = original(self, index, logs)  # the backup of the batch before is written
        if seen == batch:
            os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
        return result

    Backup.on_train_batch_begin = on_train_batch_begin
    try:
        yield
    finally:
        Backup.on_train_batch_begin = original


def run_cli_with_signal(spec, *args, timeout=600):
    """Runs the real `kerastune` command in a fresh process (as
    `conftest.run_cli`), with `spec` ("KILL@6": SIGKILL at the 6th batch)."""
    from tests.conftest import BACKEND, ROOT, CliResult

    env = dict(os.environ, KERAS_BACKEND=BACKEND)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "tests.faults", spec, *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@contextlib.contextmanager
def signal_in_export(name):
    """While active, sends SIG`name` to this process once `kerastune export`
    has written its output into the temporary folder, before the rename."""
    from kerastune_lab.export import run

    original = run._write

    def _write(*args, **kwargs):
        result = original(*args, **kwargs)
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
        return result

    run._write = _write
    try:
        yield
    finally:
        run._write = original


if __name__ == "__main__":
    # python -m tests.faults KILL@6 run RECIPE ...: `kerastune run RECIPE ...`
    # with the signal at the 6th batch; KILL@export export RUN ...: at the end
    # of the export, before its rename. Keras is imported here, on
    # KERAS_BACKEND.
    name, _, after = sys.argv[1].partition("@")
    # Ctrl-C as in a terminal: a process started in the background by a
    # non-interactive shell (CI scripts) inherits SIGINT ignored, and Python
    # then keeps it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from kerastune_lab.cli import main

    with signal_in_export(name) if after == "export" else signal_at_batch(name, int(after)):
        main(sys.argv[2:])
