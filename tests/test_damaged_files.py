"""Damaged files and a hostile environment: one line each, no traceback.

The bad-input rows (exit code 2) are in `test_bad_input.py`'s table; here
are the environment's failures, exit code 1 (a file over the file size
limit, an unwritable HOME under --smoke), and the readers of a run's files
(`run_files`) and of text (`text_checks`) called directly.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from kerastune_lab import models, run_files, testing, text_checks
from kerastune_lab.errors import KerastuneError, NotWritable, resource_error_message
from tests.conftest import BACKEND, raises_one_line, recipe_path

CATS = recipe_path("cats_vs_dogs")


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("kerastune: error:")]


def _assert_one_line_exit_1(proc, *fragments):
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# Runs the command after it: SIGXFSZ ignored (so that a write past the
# limit fails with EFBIG instead of killing the process) and RLIMIT_FSIZE set
# to argv[1] bytes, both kept across exec. (Not a preexec_fn: this process
# may hold JAX's threads, which fork does not mix with.)
_LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "limit = int(sys.argv[1]); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); "
            "os.execv(sys.argv[2], sys.argv[2:])")


def _kerastune(*args, limit):
    """`kerastune ARGS` in a subprocess whose files may not grow past
    `limit` bytes."""
    return subprocess.run(
        [sys.executable, "-c", _LIMITED, str(limit), sys.executable, "-m", "kerastune_lab.cli",
         *map(str, args)], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, KERAS_BACKEND=BACKEND))


# EFBIG: the file size limit (`ulimit -f`) is a disk error like a full disk.

def test_file_over_the_size_limit_is_one_line(tmp_path):
    dest = tmp_path / "mine.py"
    proc = _kerastune("cp", "lora_chat", dest, limit=1000)
    _assert_one_line_exit_1(proc, f"cannot write '{dest}.partial': File too large",
                            "file size limit of 1000 bytes", "`ulimit -f`",
                            "ulimit -f unlimited")
    assert os.listdir(tmp_path) == []  # no half-written copy


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from kerastune_lab.models import load_image_classifier
    from kerastune_lab.runs import RunDir

    run = RunDir.create(tmp_path_factory.mktemp("runs") / "image")
    run.write_json("config.json", {"recipe": "cats_vs_dogs", "config": {"image_size": 32}})
    run.write_json("labels.json", ["cat", "dog"])
    run.save_model(load_image_classifier(testing.tiny_preset("resnet"), num_classes=2))
    run.finish()
    return run.path


def test_model_export_over_the_size_limit_is_one_line(image_run, tmp_path):
    out = tmp_path / "exported"
    proc = _kerastune("export", image_run, "--format", "keras", "--output", out,
                      limit=100_000)
    _assert_one_line_exit_1(proc, f"cannot write '{out}': File too large",
                            "file size limit of 100000 bytes")
    assert os.listdir(tmp_path) == []


def test_file_too_large_names_the_file_written():
    import errno

    copy = OSError(errno.EFBIG, "File too large", "/src/recipe.py", None, "/dst/mine.py")
    line = resource_error_message(copy, "cp")
    assert line.startswith("cannot write '/dst/mine.py': File too large, over ")
    assert "\n" not in line


# HOME unwritable under --smoke (no KERASTUNE_CACHE): the tiny presets and
# data have nowhere to go.

def _unprivileged():
    """A command prefix under which file permissions apply (root ignores a
    read-only folder), or None where there is none."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else None


@pytest.mark.parametrize("home", ["read-only folder", "a file"])
def test_unwritable_home_under_smoke_is_one_line(home):
    user = _unprivileged() if home == "read-only folder" else []
    if user is None:
        pytest.skip("root, and no setpriv to run as another user")
    work = tempfile.mkdtemp(prefix="kerastune-home-")
    try:
        os.chmod(work, 0o777)  # the unprivileged user writes its output here
        home_path = os.path.join(work, "home")
        if home == "a file":
            with open(home_path, "w") as f:
                f.write("not a folder\n")
        else:
            os.mkdir(home_path, 0o555)
            os.chmod(home_path, 0o555)
        out = os.path.join(work, "out")
        env = {k: v for k, v in os.environ.items() if k != "KERASTUNE_CACHE"}
        proc = subprocess.run(
            [*user, sys.executable, "-m", "kerastune_lab.cli", "run", CATS, "--smoke",
             "--output-dir", out], capture_output=True, text=True, timeout=600, cwd=work,
            env=dict(env, KERAS_BACKEND=BACKEND, HOME=home_path))
        _assert_one_line_exit_1(proc, f"cache folder '{home_path}/.cache/kerastune_lab/",
                                f"it is under HOME='{home_path}'",
                                "set KERASTUNE_CACHE to a writable folder")
        assert not os.path.exists(out)
        if home != "a file":
            assert os.listdir(home_path) == []
    finally:
        os.chmod(work, 0o700)
        shutil.rmtree(work, ignore_errors=True)


def test_cache_dir_under_a_file_names_kerastune_cache(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("KERASTUNE_CACHE", str(tmp_path / "afile"))
    with pytest.raises(NotWritable) as excinfo:
        testing.cache_dir("presets")
    assert excinfo.value.exit_code == 1
    assert "it is under KERASTUNE_CACHE" in str(excinfo.value)


# A run's files, read directly: each names the run, the file and what is wrong.

@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text('{"recipe": "x", "config": {"image_size": 32}}')
    (run / "labels.json").write_text('["cat", "dog"]')
    return str(run)


@pytest.mark.parametrize("content, why", [
    (b"", "(empty)"),
    (b"\xef\xbb\xbf[\"cat\"", "(not valid JSON at line 1)"),
    (b"[" * 100_000 + b"]" * 100_000, "(nested too deeply to read)"),
    (b'["cat", "cat"]', "(class 'cat' is named twice)"),
    (b'["cat", ""]', "(class 2 is an empty name)"),
    (b'["cat", "\\udc80"]', "lone surrogate \\udc80"),
    (b"[]", "(an empty list)"),
])
def test_damaged_labels(run_dir, content, why):
    with open(os.path.join(run_dir, "labels.json"), "wb") as f:
        f.write(content)
    raises_one_line(lambda: run_files.class_names(run_dir),
                    f"run dir {run_dir!r}: labels.json is damaged", why,
                    "expected the list of class names the run wrote", run_files.FIX)


def test_missing_labels_is_left_to_the_caller(run_dir):
    os.remove(os.path.join(run_dir, "labels.json"))
    with pytest.raises(FileNotFoundError):
        run_files.class_names(run_dir)


@pytest.mark.parametrize("point, why", [
    ({"positive_class": "cow", "threshold": 0.5, "target_recall": 0.9},
     "its positive_class 'cow' is not one of ['cat', 'dog']"),
    ({"positive_class": "dog", "threshold": "0.5", "target_recall": 0.9},
     "its threshold is a string, '0.5', not a number in [0, 1]"),
    ({"positive_class": "dog", "threshold": 0.5, "target_recall": 7},
     "its target_recall is a number, 7"),
])
def test_damaged_threshold(run_dir, point, why):
    with open(os.path.join(run_dir, "threshold.json"), "w") as f:
        json.dump(point, f)
    raises_one_line(lambda: run_files.check_run(run_dir), "threshold.json is damaged", why,
                    "expected the decision threshold the run wrote")


@pytest.mark.parametrize("settings, why", [
    ({"template": "{response} before {prompt}"}, "lacks {prompt} then {response}"),
    ({"template": "{prompt}{response}", "add_start_token": "yes"},
     "its add_start_token is a string, not true or false"),
    ({"templates": "{prompt}{response}"}, "it has no \"template\""),
])
def test_damaged_chat_settings(run_dir, settings, why):
    with open(os.path.join(run_dir, "chat.json"), "w") as f:
        json.dump(settings, f)
    raises_one_line(lambda: run_files.chat_settings(run_dir), "chat.json is damaged", why)


def test_weights_folder_or_empty_file(run_dir):
    os.makedirs(os.path.join(run_dir, "model", "model.weights.h5"))
    raises_one_line(lambda: models.check_weights(run_dir),
                    "model/model.weights.h5 is damaged (a folder)")
    os.rmdir(os.path.join(run_dir, "model", "model.weights.h5"))
    open(os.path.join(run_dir, "model", "model.weights.h5"), "wb").close()
    raises_one_line(lambda: models.check_weights(run_dir),
                    "model/model.weights.h5 is damaged (empty)")


def test_weights_whose_bytes_changed_are_refused_by_their_recorded_sha256(run_dir):
    # Bytes overwritten inside a whole HDF5 file: h5py opens it and Keras
    # would load it; only the SHA-256 recorded when it was saved tells.
    import h5py

    from kerastune_lab.atomic import SUMS_FILE, write_sums

    model = os.path.join(run_dir, "model")
    os.mkdir(model)
    path = os.path.join(model, "model.weights.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("vars/0", data=[1.0, 2.0, 3.0])
    write_sums(model)
    models.check_weights(run_dir)  # as saved
    # sha256sum's own format: the tool checks the folder as is.
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--check", "--strict", SUMS_FILE], cwd=model,
                       check=True, capture_output=True)
    with open(os.path.join(model, SUMS_FILE)) as f:
        assert [line.split("  ")[1] for line in f.read().splitlines()] == ["model.weights.h5"]
    with h5py.File(path, "r+") as f:
        f["vars/0"][1] = 2.5
    raises_one_line(lambda: models.check_weights(run_dir),
                    f"run dir {run_dir!r}: model/model.weights.h5 is damaged (its bytes are not "
                    "those whose SHA-256 SHA256SUMS records): expected the weights the run "
                    "saved (an HDF5 file written by save_to_preset); re-run the recipe or "
                    "restore the file")
    os.remove(path)
    raises_one_line(lambda: models.check_weights(run_dir),
                    "model/model.weights.h5 is damaged (missing; SHA256SUMS records it)")
    # A folder saved by an earlier version has no SHA256SUMS: the other checks.
    with h5py.File(path, "w") as f:
        f.create_dataset("vars/0", data=[0.0])
    os.remove(os.path.join(model, SUMS_FILE))
    models.check_weights(run_dir)
    # Lines that are not `<sha256>  <name>` are left out, not trusted.
    with open(os.path.join(model, SUMS_FILE), "w") as f:
        f.write("not a sum  model.weights.h5\n" + "0" * 63 + "  model.weights.h5\n")
    models.check_weights(run_dir)


def test_checks_import_no_keras(run_dir):
    # What the CLI checks before Keras loads must not load it itself.
    import h5py

    os.mkdir(os.path.join(run_dir, "model"))
    with h5py.File(os.path.join(run_dir, "model", "model.weights.h5"), "w") as f:
        f.create_group("layers")
    code = ("import sys; from kerastune_lab import run_files, text_checks; "
            f"run_files.check_run({run_dir!r}); text_checks.check_texts(['ok']); "
            "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_image_size_of_the_wrong_type_is_not_blamed_on_the_image(tmp_path):
    from kerastune_lab.data.images import load_images

    testing.make_image_folder(tmp_path, ("cat",), per_class=1)
    image = str(tmp_path / "cat" / "cat_0000.jpg")
    raises_one_line(lambda: load_images([image], "32"), "image_size='32'",
                    "expected a whole number of pixels")


def test_evaluate_batch_size_is_checked_first():
    from kerastune_lab.predict import evaluate_image_folder

    raises_one_line(lambda: evaluate_image_folder("nowhere", "nodata", batch_size=0),
                    "batch_size=0", "1 or more")


# Text that is not UTF-8.

@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_stdin_lines_not_utf8(errors):
    stream = io.TextIOWrapper(io.BytesIO(b"\xef\xbb\xbfhello\n\n caf\xe9 \n"),
                              encoding="utf-8", errors=errors)
    lines = text_checks.stdin_lines(stream)
    assert next(lines) == (1, "hello")
    assert next(lines) == (2, "")
    with pytest.raises(KerastuneError, match="standard input line 3: byte 0xe9 at position 5 "
                                             "is not UTF-8"):
        next(lines)


def test_stdin_lines_of_a_text_stream():
    lines = text_checks.stdin_lines(io.StringIO("fine\ncaf\udce9\n"))
    assert next(lines) == (1, "fine")
    with pytest.raises(KerastuneError, match="standard input line 2: byte 0xe9 at position 4"):
        next(lines)


def test_classifier_input_not_unicode():
    from kerastune_lab.classifier import TextClassifierPipeline

    pipeline = TextClassifierPipeline(model=None, class_names=["neg", "pos"])
    raises_one_line(lambda: pipeline(["fine", "bad \ud800"]), "classifier input 2",
                    "the character at position 5 is a lone surrogate \\ud800")
