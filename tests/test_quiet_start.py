"""A quiet start: a command's output holds only the toolkit's own lines and
Keras' progress, with no TensorFlow/absl start-up lines, in a fresh process
whose environment does not set TF_CPP_MIN_LOG_LEVEL."""

import os
import re
import subprocess
import sys

from kerastune_lab.console import is_startup_noise
from tests.conftest import BACKEND, ROOT, recipe_path

PROGRESS = [
    re.compile(r"^Epoch \d+/\d+$"),
    re.compile(r"^\d+/\d+ .*\d+m?s(/step)?( - [\w/]+: [-\d.e+na]+)*$"),
]


def fresh(*args):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "GRPC_VERBOSITY")}
    env["KERAS_BACKEND"] = BACKEND
    proc = subprocess.run([sys.executable, "-m", "kerastune_lab.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return proc


def foreign(lines, own):
    """The lines that are neither the toolkit's (`own`) nor Keras progress."""
    return [line for line in lines if line.strip() and not own(line)
            and not any(p.match(line.strip()) for p in PROGRESS)]


def test_startup_noise_is_recognised():
    assert is_startup_noise("I0000 00:00:1795962001.543389   29333 port.cc:153] oneDNN custom "
                            "operations are on.")
    assert is_startup_noise("W0000 00:00:1732.5  12 cuda_dnn.cc:8310] TF-TRT Warning: ...")
    assert is_startup_noise("WARNING: All log messages before absl::InitializeLog() is called "
                            "are written to STDERR")
    assert not is_startup_noise("kerastune: error: data folder 'x' does not exist")
    assert not is_startup_noise("UserWarning: something a user should see")


def test_info_prints_only_its_own_lines():
    proc = fresh("info")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert not foreign(proc.stdout.splitlines(), lambda line: re.match(r"^[\w -]+: ", line))
    assert re.match(rf"kerastune_lab: \S+\nbackend: {BACKEND}\n", proc.stdout), proc.stdout


def test_smoke_run_prints_only_its_own_lines_and_progress(tmp_path):
    out = tmp_path / "run"
    proc = fresh("run", recipe_path("cats_vs_dogs"), "--smoke", "head_epochs=1", "epochs=1",
                 "--output-dir", out)
    assert proc.returncode == 0, proc.stderr
    assert not foreign(proc.stderr.splitlines(), lambda line: line.startswith("kerastune: "))
    assert not foreign(proc.stdout.splitlines(), lambda line: line == str(out))
    assert "Epoch 2/2" in proc.stdout and proc.stdout.strip().endswith(str(out))
