"""Shared test helpers.

The whole suite runs on the backend in KERAS_BACKEND (CI runs it once per
backend). Tiny presets and generated data are cached in one temporary folder
for the session, never downloaded.
"""

import os
import subprocess
import sys
import tempfile

import pytest

_CACHE = tempfile.mkdtemp(prefix="kerastune-test-cache-")
os.environ["KERASTUNE_CACHE"] = _CACHE
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Nothing may download at test time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TFDS_DISABLE_GCS"] = "1"

from kerastune_lab import backend as backend_lib  # noqa: E402

BACKEND = backend_lib.use_backend(None)


def pytest_collection_modifyitems(config, items):
    """Under mutmut (tests/README.md, "Mutation testing"): each mutant's
    tests, fastest first, by the durations mutmut measured. It runs them
    with `-x`, so a mutant a quick test kills costs that test alone."""
    if not os.environ.get("MUTANT_UNDER_TEST") or not os.path.isfile("mutmut-stats.json"):
        return
    import json

    with open("mutmut-stats.json", encoding="utf-8") as f:
        durations = json.load(f).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))


class CliResult:
    def __init__(self, code, stdout, stderr):
        self.code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def last_line(self):
        lines = self.stdout.strip().splitlines()
        return lines[-1] if lines else ""

    def __repr__(self):
        return f"CliResult(code={self.code}, stderr={self.stderr[-2000:]!r})"


def run_cli(*args, env=None, timeout=600, input=None):
    """Runs the real `kerastune` command in a fresh process."""
    full_env = dict(os.environ, KERAS_BACKEND=BACKEND, **(env or {}))
    proc = subprocess.run(
        [sys.executable, "-m", "kerastune_lab.cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout, input=input,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(capsys):
    """Runs `kerastune` in this process (fast: keras is already imported).

    Returns a function: cli("run", "recipes/x.py", ...) -> CliResult.
    """
    from kerastune_lab.cli import main

    def call(*args):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return call


def assert_one_line_error(result, *fragments):
    """Exit code 2, one line on stderr naming the input, no traceback."""
    assert result.code == 2, result
    lines = [line for line in result.stderr.strip().splitlines()
             if line.startswith("kerastune: error:") or line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def raises_one_line(fn, *fragments):
    """`fn()` raises a one-line KerastuneError holding every fragment."""
    from kerastune_lab.errors import KerastuneError

    with pytest.raises(KerastuneError) as excinfo:
        fn()
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Finished smoke runs of the recipe test modules, {recipe: (run dir, CliResult)},
# for a later module to read instead of running the recipe again
# (tests/test_warnings.py checks their output and the commands on them). Only
# runs of the plain `run_cli`: a spied run (`run_cli_spied`) imports Keras
# before the toolkit quiets TensorFlow's start-up lines.
SMOKE_RUNS = {}


def recipe_path(name):
    return os.path.join(ROOT, "recipes", f"{name}.py")


# `kerastune` in a fresh process where importing keras, TensorFlow, jax or
# torch fails: for the checks that must answer before the heavy imports.
GUARD = """
import sys
HEAVY = ("keras", "keras_hub", "tensorflow", "jax", "torch", "tensorflow_datasets")

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError(f"GUARD: {name} imported before the error")
        return None

sys.meta_path.insert(0, Refuse())
from kerastune_lab.cli import main
main(sys.argv[1:])
"""


def run_in_ascii_locale(code, *args):
    """Runs Python `code` (argv: `args`) in a process whose locale encoding is
    ASCII (LC_ALL=C, no UTF-8 mode, no locale coercion), importing
    kerastune_lab from where this process does (under mutmut, the mutated
    copy). Checks that it exits 0 and that its locale is not UTF-8."""
    import kerastune_lab

    root = os.path.dirname(os.path.dirname(os.path.abspath(kerastune_lab.__file__)))
    code += "\nimport locale\nprint(locale.getpreferredencoding(False))\n"
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=root)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=root, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] != "UTF-8"  # the locale really is not UTF-8
    return proc


def run_guarded(*args):
    """Runs `kerastune` with the heavy imports refused (`GUARD`)."""
    proc = subprocess.run([sys.executable, "-c", GUARD, *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def file_tree(root, mtimes=False):
    """{relative path: sha256 (with `mtimes`: (sha256, mtime_ns))} of every
    file under `root`, and its folders: what a refusal must leave as it was."""
    import hashlib

    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            found[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            found[os.path.relpath(path, root)] = (
                (digest, os.stat(path).st_mtime_ns) if mtimes else digest)
    return found


# `kerastune` in a fresh process with `keras.Model.fit` spied on
# (tests/keras_spy.py): what reached Keras, for the "what was used" checks.
SPIED = """
import sys
from tests import keras_spy
keras_spy.install(sys.argv[1])
from kerastune_lab.cli import main
main(sys.argv[2:])
"""


def run_cli_spied(record, *args, env=None, timeout=600):
    """`run_cli` with every `fit` call recorded into `record` (JSON lines;
    `tests.keras_spy.read(record)` reads them back)."""
    full_env = dict(os.environ, KERAS_BACKEND=BACKEND, **(env or {}))
    proc = subprocess.run([sys.executable, "-c", SPIED, str(record), *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=ROOT)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)
