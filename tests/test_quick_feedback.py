"""`kerastune run` reports what it can check without Keras before Keras (and
TensorFlow, jax, torch) load; `kerastune run RECIPE --help` never loads them.

Each case runs the real CLI in a fresh process whose import system refuses
keras and the frameworks: had the error come after them, the command would
fail on that refusal instead of printing its one line (no timing involved).
"""

import os

import pytest

from tests.conftest import assert_one_line_error, recipe_path, run_guarded

CATS = recipe_path("cats_vs_dogs")
XRAY = recipe_path("xray_pneumonia")


@pytest.fixture
def finished_run(tmp_path):
    run = tmp_path / "done"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "FINISHED").write_text("")
    return run


CASES = [
    # a misspelt key ("did you mean"): tests/test_did_you_mean.py, guarded as here
    ("missing-recipe", ["{tmp}/nope.py"], ["nope.py", "does not exist"]),
    ("not-a-py-file", ["{tmp}/afile"], ["afile", "expected a Python file"]),
    ("missing-data-folder", [CATS, "--smoke", "data={tmp}/nowhere"],
     ["data folder", "nowhere", "does not exist"]),
    ("wrong-type", [CATS, "learning_rate=fast"], ["learning_rate=fast", "expected float"]),
    ("out-of-range", [CATS, "epochs=-1"], ["epochs=-1", "expected >= 0"]),
    ("choice", [XRAY, "class_weight=balance"], ["class_weight='balance'", "'balanced'"]),
    ("not-key-value", [CATS, "epochs"], ["'epochs'", "expected KEY=VALUE"]),
    ("bad-backend", [CATS, "--backend", "theano"], ["unknown backend", "theano"]),
    ("run-folder-under-a-file", [CATS, "--output-dir", "{tmp}/afile/run"],
     ["afile", "is a file"]),
    ("run-folder-finished", [CATS, "--output-dir", "{tmp}/done"],
     ["done", "finished run", "--overwrite"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_comes_before_keras_is_imported(tmp_path, finished_run, args, fragments):
    (tmp_path / "afile").write_text("x")
    fill = lambda s: str(s).format(tmp=tmp_path)  # noqa: E731
    result = run_guarded("run", *map(fill, args))
    assert "GUARD" not in result.stderr, result.stderr
    assert_one_line_error(result, *map(fill, fragments))
    assert sorted(os.listdir(tmp_path)) == ["afile", "done"]


def test_a_good_command_line_gets_past_the_checks(tmp_path):
    # The guard proves the checks themselves import nothing heavy: a valid
    # command reaches the backend, which looks a framework up (refused here).
    result = run_guarded("run", CATS, "--smoke", "epochs=1", "data=" + str(tmp_path),
                         "--output-dir", tmp_path / "run")
    assert "ImportError: GUARD:" in result.stderr, result
    assert not (tmp_path / "run").exists()


def test_run_recipe_help_lists_launch_lines_and_keys():
    result = run_guarded("run", XRAY, "--help")
    assert result.code == 0, result
    out = result.stdout
    assert "Usage: kerastune run" in out
    assert "kerastune run xray_pneumonia data=~/chest_xray class_weight=none " \
           "oversample=true" in out
    assert "kerastune evaluate runs/xray_pneumonia-<time> --data ~/other_hospital/test" in out
    lines = out.splitlines()
    i = lines.index("  target_recall: float = 0.95  (> 0 and <= 1)")
    assert lines[i + 1].strip() == ("recall of positive_class to choose a decision threshold "
                                    "for")
    assert "  class_weight: str | dict = 'balanced'  (one of 'balanced', 'none')" in lines
    assert "  oversample: bool = False" in lines
    # Every key of the recipe's Config, in order.
    keys = [line.split(":")[0].strip() for line in lines
            if line.startswith("  ") and not line.startswith("   ") and ": " in line
            and " = " in line]
    assert keys[0] == "preset" and keys[-1] == "seed" and "positive_class" in keys


def test_run_help_without_a_recipe():
    result = run_guarded("run", "--help")
    assert result.code == 0 and "Usage: kerastune run" in result.stdout, result


def test_predict_with_nothing_to_predict_is_a_kerastune_error(tmp_path):
    result = run_guarded("predict", tmp_path)
    assert result.code == 2, result
    assert result.stderr.startswith("kerastune: error: predict "), result.stderr
    assert "nothing to predict" in result.stderr and "Usage:" not in result.stderr
