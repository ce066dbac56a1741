"""Nothing lost, nothing run that should not be (issue 23, points 1-3).

1. `--overwrite` replaces only a run folder (`runs.MARKER`, or a run of an
   earlier version); a folder of the user's own is refused, flag or not, and
   left as it is, by the check before Keras loads and by `RunDir.create`.
2. A run folder is locked while a process writes it (`runs.RunLock`): a
   second process is refused, naming the first one's PID, before any
   training and without touching the folder; `kill -9` frees the lock.
3. Reading a recipe (`kerastune run RECIPE --help`, the checks of the
   overrides) never runs its code: annotations are read from the AST.

Each refusal is checked for its exit code, its one line, no traceback and the
folder's files (names, content and mtimes) left as they were.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing

import pytest

from kerastune_lab import recipe_file, runs
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir
from tests.conftest import (
    ROOT,
    assert_one_line_error,
    file_tree,
    raises_one_line,
    recipe_path,
    run_cli,
    run_guarded,
)

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

CATS = recipe_path("cats_vs_dogs")
PACKAGE = os.path.join(ROOT, "kerastune_lab")

# A recipe that trains nothing, in a second: its main writes a history and a
# backup (an unfinished run resumes), then, where $KERASTUNE_TEST_HOLD names
# a file, says so in $KERASTUNE_TEST_HOLD.started and waits while that file
# exists (a run that is still "training").
TINY = '''
import dataclasses, os, time


@dataclasses.dataclass
class Config:
    seed: int = 0
    steps: int = 2


def main(config, run):
    run.write_csv("history.csv", [{"epoch": 1, "phase": "head", "loss": 0.5}])
    os.makedirs(run.file("backup"), exist_ok=True)
    hold = os.environ.get("KERASTUNE_TEST_HOLD")
    if hold:
        open(hold + ".started", "w").close()
        while os.path.exists(hold):
            time.sleep(0.05)
    run.write_json("metrics.json", {"val_accuracy": 1.0})
'''

# Takes the lock of a run folder as `kerastune run` does (`RunDir.create`),
# says so on stdout, and holds it until killed.
HOLDER = """
import sys, time
from kerastune_lab.runs import RunDir
run = RunDir.create(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""

# Runs `kerastune` in a process that refuses to import Keras and the
# frameworks: an error printed there came before any of them loaded.
def tree(root):
    return file_tree(root, mtimes=True)


def error_line(result):
    return [line for line in result.stderr.splitlines()
            if line.startswith("kerastune: error:")][0]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(TINY)
    return str(path)


@pytest.fixture
def user_folder(tmp_path):
    """A folder of the user's: a thesis, notes and a subfolder; no run."""
    d = tmp_path / "d"
    (d / "figures").mkdir(parents=True)
    (d / "thesis.txt").write_text("four years of work\n")
    (d / "notes.md").write_text("# notes\n")
    (d / "figures" / "fig1.png").write_bytes(b"\x89PNG")
    return d


# --- 1. --overwrite replaces only a run ------------------------------------------

def test_overwrite_refuses_a_folder_that_is_not_a_run(user_folder):
    # The command of the issue, in a process of its own.
    before = tree(user_folder)
    result = run_cli("run", CATS, "--smoke", "--output-dir", user_folder, "--overwrite")
    assert_one_line_error(result, f"output dir {str(user_folder)!r} is not a kerastune run "
                                  "(it holds figures/, notes.md and 1 more): choose another "
                                  "--output-dir; --overwrite replaces only run folders")
    assert (user_folder / "thesis.txt").read_text() == "four years of work\n"
    assert tree(user_folder) == before
    assert sorted(os.listdir(user_folder.parent)) == ["d"]  # no d.replaced either


def test_a_folder_that_is_not_a_run_is_refused_without_overwrite_too(user_folder):
    before = tree(user_folder)
    result = run_guarded("run", CATS, "--smoke", "--output-dir", user_folder)
    assert "GUARD" not in result.stderr, result.stderr  # refused before Keras loads
    assert_one_line_error(result, "is not a kerastune run", "figures/, notes.md and 1 more",
                          "choose another --output-dir")
    assert "--overwrite" not in error_line(result)  # it would not help: no hint of it
    assert tree(user_folder) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_run_dir_create_refuses_a_folder_that_is_not_a_run(user_folder, overwrite):
    # The second line of defence, after the check before Keras: the library
    # call itself (notebooks, scripts) refuses and deletes nothing.
    before = tree(user_folder)
    raises_one_line(lambda: RunDir.create(user_folder, overwrite=overwrite),
                    "is not a kerastune run", "figures/, notes.md and 1 more")
    raises_one_line(lambda: recipe_file.check_output_dir(user_folder, overwrite=overwrite),
                    "is not a kerastune run")
    assert tree(user_folder) == before and sorted(os.listdir(user_folder.parent)) == ["d"]


def test_run_recipe_refuses_a_folder_that_is_not_a_run_before_main(tiny, user_folder):
    from kerastune_lab.recipe import run_recipe

    before = tree(user_folder)
    with pytest.raises(KerastuneError, match="is not a kerastune run"):
        run_recipe(tiny, output_dir=str(user_folder), overwrite=True)
    assert tree(user_folder) == before


def test_a_hidden_file_alone_is_a_user_folder(tmp_path, tiny):
    d = tmp_path / "d"
    d.mkdir()
    (d / ".secret").write_text("key")
    result = run_guarded("run", tiny, "--output-dir", d, "--overwrite")
    assert_one_line_error(result, "it holds .secret)")
    assert (d / ".secret").read_text() == "key"


def test_an_empty_folder_is_used_and_becomes_a_run(cli, tiny, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    result = cli("run", tiny, "--output-dir", d)
    assert result.code == 0, result
    marker = json.loads((d / runs.MARKER).read_text())
    assert marker["recipe"] == "tiny" and marker["created"] and marker["kerastune_lab"]
    assert (d / "FINISHED").exists() and not (d / runs.LOCK_FILE).exists()


def test_overwrite_replaces_a_run(cli, tiny, tmp_path):
    out = tmp_path / "r"
    assert cli("run", tiny, "--output-dir", out).code == 0
    (out / "metrics.json").write_text('{"old": true}')
    result = cli("run", tiny, "--output-dir", out, "--overwrite")
    assert result.code == 0, result
    assert json.loads((out / "metrics.json").read_text()) == {"val_accuracy": 1.0}
    assert sorted(os.listdir(tmp_path)) == ["r", "tiny.py"]


def _old_run(path, finished=True):
    """A run made before the marker existed: config.json and FINISHED."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"recipe": "tiny", "config": {"seed": 0}}))
    (path / "metrics.json").write_text("{}")
    if finished:
        (path / "FINISHED").write_text("2024-01-01\n")


def test_a_run_of_an_earlier_version_counts_as_a_run(cli, tiny, tmp_path):
    old = tmp_path / "old"
    _old_run(old)
    assert runs.is_run(old)
    assert cli("run", tiny, "--output-dir", old, "--overwrite").code == 0
    assert (old / runs.MARKER).exists() and (old / "FINISHED").exists()
    # Its eval-NAME folders (kerastune evaluate) too: --overwrite replaces them.
    evaluation = tmp_path / "eval-test"
    evaluation.mkdir()
    (evaluation / "evaluation.json").write_text("{}")
    (evaluation / "FINISHED").write_text("x\n")
    assert runs.is_run(evaluation)
    RunDir.create(evaluation, overwrite=True).finish()
    # A config.json alone, or FINISHED alone, is not enough.
    lone = tmp_path / "lone"
    _old_run(lone, finished=False)
    assert not runs.is_run(lone)
    (lone / "config.json").unlink()
    (lone / "FINISHED").write_text("x\n")
    assert not runs.is_run(lone)
    before = tree(lone)
    assert_one_line_error(cli("run", tiny, "--output-dir", lone, "--overwrite"),
                          "is not a kerastune run", "FINISHED, metrics.json")
    assert tree(lone) == before


def test_overwrite_refuses_to_set_aside_onto_a_user_folder(cli, tiny, tmp_path):
    out = tmp_path / "r"
    assert cli("run", tiny, "--output-dir", out).code == 0
    mine = tmp_path / "r.replaced"
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    before, run_before = tree(mine), tree(out)
    assert_one_line_error(cli("run", tiny, "--output-dir", out, "--overwrite"),
                          str(mine), "is not a kerastune run", "move it away")
    assert tree(mine) == before and tree(out) == run_before


# --- 2. one process a run folder -------------------------------------------------

@pytest.fixture
def holder(tmp_path):
    """Starts a process that holds the lock of a run folder the way `kerastune
    run` does; returns (Popen, folder). Killed (SIGKILL) at the end."""
    procs = []

    def start(folder):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)],
                                stdout=subprocess.PIPE, text=True, env=env)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_folder_held_by_another_process_is_refused(cli, holder, tiny, tmp_path):
    out = tmp_path / "r"
    proc = holder(out)
    assert runs.lock_holder(out) == proc.pid
    before = tree(out)
    line = (f"output dir {str(out)!r} is in use by another kerastune process (PID {proc.pid}):"
            " wait for it or choose another --output-dir")
    for args in ([], ["--overwrite"]):
        # Before Keras loads (the check before it) ...
        result = run_guarded("run", CATS, "--smoke", "--output-dir", out, *args)
        assert "GUARD" not in result.stderr, result.stderr
        assert_one_line_error(result, line)
        assert error_line(result) == f"kerastune: error: {line}"
        # ... and the library itself, should the folder be taken after it (in
        # a Python caller's words).
        raises_one_line(lambda: RunDir.create(out, overwrite=bool(args)),
                        line.replace("--output-dir", "output_dir="))
        assert tree(out) == before
    assert sorted(os.listdir(tmp_path)) == ["r", "tiny.py"]  # nothing set aside


def test_second_run_is_refused_while_the_first_trains_then_kill_9_frees_it(cli, tiny,
                                                                           tmp_path):
    # A real `kerastune run`, "training" (waiting in main) until told.
    out, hold = tmp_path / "r", tmp_path / "hold"
    hold.write_text("")
    env = dict(os.environ, KERASTUNE_TEST_HOLD=str(hold))
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        first = subprocess.Popen([sys.executable, "-m", "kerastune_lab.cli", "run", tiny,
                                  "--output-dir", str(out)], env=env, stdout=f, stderr=f)
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(str(hold) + ".started"):
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.1)
        before = tree(out)
        assert (out / runs.LOCK_FILE).read_text().strip() == str(first.pid)
        # The same command (it would resume this unfinished run), in a
        # process of its own: refused, exit 2, the first one's PID named.
        second = run_cli("run", tiny, "--output-dir", out)
        assert_one_line_error(second, f"output dir {str(out)!r} is in use by another "
                                      f"kerastune process (PID {first.pid})")
        third = run_cli("run", tiny, "--output-dir", out, "--overwrite")
        assert_one_line_error(third, f"(PID {first.pid})")
        assert tree(out) == before
        assert first.poll() is None  # still training, undisturbed
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) == -9
    finally:
        first.kill()
        first.wait()
    # kill -9 left the lock file, but no lock: the same command resumes.
    assert (out / runs.LOCK_FILE).exists() and runs.lock_holder(out) is None
    resumed = cli("run", tiny, "--output-dir", out)
    assert resumed.code == 0, resumed
    assert "resuming the unfinished run" in resumed.stderr
    assert (out / "FINISHED").exists() and not (out / runs.LOCK_FILE).exists()


def test_the_lock_is_held_from_create_to_the_end_of_the_run(tmp_path):
    run = RunDir.create(tmp_path / "r")
    assert runs.lock_holder(run.path) == os.getpid()
    run.finish()
    assert runs.lock_holder(run.path) is None
    assert not os.path.exists(run.file(runs.LOCK_FILE))
    # A failed run keeps its folder (FAILED) and lets it go: run_recipe's finally.
    again = RunDir.create(tmp_path / "r", overwrite=True)
    again.write_csv("history.csv", [{"epoch": 1}])
    assert again.fail("kerastune: error: x", 2)
    assert runs.lock_holder(again.path) == os.getpid()
    again.release()
    assert runs.lock_holder(again.path) is None


# --- 3. reading a recipe runs none of it -----------------------------------------

# Annotations that ran `os.system` when the old reader evaluated them (the
# empty builtins were escaped through object's subclasses or `typing`'s
# modules); each as code and as a string annotation (a forward reference).
PAYLOADS = [
    '[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == "catch_warnings"]'
    '[0]()._module.__builtins__["__import__"]("os").system("touch {mark}")',
    'typing.sys.modules["os"].system("touch {mark}")',
]


def _old_reader(text):
    """How recipe_file read an annotation before: `eval` with no builtins."""
    names = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "list": list,
             "tuple": tuple, "None": None, "typing": typing, "Optional": typing.Optional,
             "Union": typing.Union}
    return eval(text, {"__builtins__": {}}, names)


@pytest.mark.parametrize("as_string", [False, True], ids=["code", "string"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=["subclasses", "typing-sys"])
def test_an_annotation_never_runs(cli, tmp_path, payload, as_string):
    # The control: the payload does run code when evaluated as it was.
    control = tmp_path / "CONTROL"
    _old_reader(payload.format(mark=control))
    assert control.exists()
    code = payload.format(mark=tmp_path / "PWNED")
    annotation = repr(code) if as_string else code
    mark = tmp_path / "PWNED"
    recipe = tmp_path / "evil.py"
    recipe.write_text(
        '"""Evil.\n\n    kerastune run evil.py\n"""\nimport dataclasses, typing\n\n\n'
        "@dataclasses.dataclass\nclass Config:\n"
        f"    x: {annotation} = 1\n"
        "    y: int = 2\n\n\ndef main(config, run):\n    pass\n")
    result = cli("run", recipe, "--help")
    assert result.code == 0, result
    assert "  x: " in result.stdout and "  y: int = 2" in result.stdout
    assert recipe_file.read(recipe).fields["x"].annotation is recipe_file.UNKNOWN
    # Overrides refused before the recipe is imported: the file read only.
    assert_one_line_error(cli("run", recipe, "y=abc"), "y=abc", "expected int")
    assert_one_line_error(cli("run", recipe, "nope=1"), "unknown config key 'nope'")
    assert not mark.exists()


def test_no_eval_in_the_package():
    found = []
    for path in glob.glob(os.path.join(PACKAGE, "**", "*.py"), recursive=True):
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                # eval( or exec( called, not a method (`model.eval()`) nor
                # ast.literal_eval
                if re.search(r"(?<![\w.])(eval|exec)\s*\(", line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not found, found


ANNOTATIONS = [
    ("int", int), ("float", float), ("str", str), ("bool", bool), ("dict", dict),
    ("None", None), ("Optional[int]", typing.Optional[int]),
    ("typing.Optional[float]", typing.Optional[float]), ("int | None", int | None),
    ("None | int", int | None), ("str | dict", str | dict),
    ("Union[str, dict]", typing.Union[str, dict]),
    ("typing.Union[int, float, None]", typing.Union[int, float, None]),
    ("list[int]", list[int]), ("tuple[int, ...]", tuple[int, ...]),
    ("tuple[int, str]", tuple[int, str]), ("dict[str, float]", dict[str, float]),
    ("typing.List[int]", typing.List[int]), ("list[int] | None", list[int] | None),
    ("'int | None'", int | None), ("Optional['float']", typing.Optional[float]),
]
NOT_BUILTIN = ["Thing", "os.PathLike", "typing.sys", "list[Thing]", "Optional[Thing]",
               "int.__class__", "print('x')", "[int][0]", "(int, str)", "tuple[...]",
               "list[int, ...]", "Optional[int, str]", "Optional | int", "None | None", "1",
               "'not python('", "lambda: int", "int if True else str", "typing.cast(int, 1)"]


@pytest.mark.parametrize("text, expected", ANNOTATIONS, ids=[a[0] for a in ANNOTATIONS])
def test_annotations_are_built_from_the_ast(tmp_path, text, expected):
    path = tmp_path / "r.py"
    path.write_text(f"class Config:\n    x: {text} = None\n")
    got = recipe_file.read(path).fields["x"].annotation
    assert got == expected and got is not recipe_file.UNKNOWN


@pytest.mark.parametrize("text", NOT_BUILTIN)
def test_other_annotations_are_left_to_the_full_check(tmp_path, text):
    path = tmp_path / "r.py"
    path.write_text(f"class Config:\n    x: {text} = None\n")
    assert recipe_file.read(path).fields["x"].annotation is recipe_file.UNKNOWN
