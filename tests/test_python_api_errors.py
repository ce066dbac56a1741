"""Errors raised to a Python caller name Python arguments; the CLI prints the
same errors with its flags. A finished fit says it has nothing left to do."""

import logging

import pytest

from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir
from tests.conftest import assert_one_line_error, recipe_path


def test_a_python_caller_reads_python_words(tmp_path):
    run = RunDir.create(tmp_path / "mine")
    run.finish()
    with pytest.raises(KerastuneError) as caught:
        RunDir.create(tmp_path / "mine")
    message = str(caught.value)
    assert "pass overwrite=True" in message and "output_dir=" in message
    assert "--" not in message, message
    # The command line's words for the same error, unchanged.
    assert "choose another --output-dir or pass --overwrite" in caught.value.cli_message


def test_the_cli_prints_its_flags(cli, tmp_path):
    run = RunDir.create(tmp_path / "done")
    run.write_json("config.json", {"recipe": "cats_vs_dogs", "config": {}})
    run.finish()
    result = cli("run", recipe_path("cats_vs_dogs"), "--smoke", "--output-dir", run.path)
    assert_one_line_error(result, "choose another --output-dir or pass --overwrite")
    assert "overwrite=True" not in result.stderr


def test_flags_inside_words_are_left_alone():
    error = KerastuneError("--output-dir x; --outputs; a--overwrite; --name or --overwrite")
    assert str(error) == "output_dir= x; --outputs; a--overwrite; name= or overwrite=True"


def test_fit_resumable_says_a_finished_fit_has_nothing_to_train(tmp_path, caplog):
    from kerastune_lab.resume import Backup
    from tests.test_resume import _fit, _model, _stream

    model = _model()
    _fit(model, _stream(), Backup(str(tmp_path / "mine")), epochs=2)
    caplog.set_level(logging.INFO, logger="kerastune_lab")
    again = _model()
    history = _fit(again, _stream(), Backup(str(tmp_path / "mine")), epochs=2)
    assert history.epoch == []  # nothing trained...
    lines = [r.getMessage() for r in caplog.records if "trained already" in r.getMessage()]
    assert len(lines) == 1, caplog.text  # ...and it says so, with what to do
    assert "at epoch 2 of 2" in lines[0] and str(tmp_path / "mine") in lines[0]
    assert "use another folder" in lines[0]
