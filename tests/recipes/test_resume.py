"""Resuming and stopping `kerastune run` (the real CLI; subprocesses where a
process must die): SIGKILL mid-epoch then the same command resumes to the
weights of an uninterrupted run; SIGINT/SIGTERM back up and print the
command that resumes; a loss that is not finite stops with one line and
keeps the last good backup. (The callback itself: tests/test_resume.py.)
The signals are sent by the test (`tests.faults`), not by the library."""

import json
import shlex

import numpy as np
import pytest

from kerastune_lab.resume import BACKUP_FILE, STATE_FILE
from tests.conftest import assert_one_line_error, recipe_path
from tests.faults import run_cli_with_signal

# Whole recipe runs, interrupted and resumed in subprocesses: the slowest
# module. CI runs it; `-m "not large"` leaves it out of a quick local run.
pytestmark = pytest.mark.large

CATS = recipe_path("cats_vs_dogs")
LORA = recipe_path("lora_chat")
# 38 training images in batches of 16: 3 steps an epoch; 1 head epoch, 2 finetune.
CATS_ARGS = ["--smoke", "head_epochs=1", "epochs=2", "save_every_steps=1"]
# 32 conversations in 16 windows, 4 a batch: 4 steps, 1 epoch; one short reply before and after.
LORA_ARGS = ["--smoke", "epochs=1", "batch_size=4", "save_every_steps=1",
             "report_prompts=1", "max_length=40"]


def _arrays(path):
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key].astype("float64"), b[key].astype("float64"),
                                   atol=1e-5, err_msg=key)


def _state(out):
    return json.loads((out / "backup" / STATE_FILE).read_text())


def _history(out):
    import csv

    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_cats_vs_dogs_resumes_mid_phase_2_after_sigkill(cli, tmp_path):
    out = tmp_path / "run"
    # Killed in its 6th batch: the last backup is of step 2 of epoch 2 (finetune).
    killed = run_cli_with_signal("KILL@6", "run", CATS, *CATS_ARGS, "--output-dir", out)
    assert killed.code == -9, killed
    state = _state(out)
    assert (state["phase"], state["epoch"], state["step"]) == ("finetune", 1, 2)
    assert not (out / "FINISHED").exists()
    first_row = _history(out)[0]

    # Another config does not resume it (and leaves it as it is).
    assert_one_line_error(cli("run", CATS, *CATS_ARGS, "--output-dir", out, "epochs=3"),
                          str(out), "unfinished run", "epochs=2 there, 3 here", "--overwrite")
    assert _state(out) == state

    resumed = cli("run", CATS, *CATS_ARGS, "--output-dir", out)
    assert resumed.code == 0, resumed
    assert "resumed from the backup of epoch 2, step 2 (finetune phase)" in resumed.stderr
    assert "Epoch 1/3" not in resumed.stdout + resumed.stderr  # phase 1 not run again
    assert not (out / "backup").exists() and (out / "FINISHED").exists()
    rows = _history(out)
    assert rows[0] == first_row  # the killed run's row, kept
    assert [(r["epoch"], r["phase"]) for r in rows] == [
        ("1", "head"), ("2", "finetune"), ("3", "finetune")]
    assert len(json.loads((out / "config.json").read_text())["resumed"]) == 1

    reference = tmp_path / "reference"
    assert cli("run", CATS, *CATS_ARGS, "--output-dir", reference).code == 0
    _assert_same_arrays(_arrays(out / "model" / "model.weights.h5"),
                        _arrays(reference / "model" / "model.weights.h5"))
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows],
                               [float(r["val_loss"]) for r in _history(reference)], atol=1e-5)


def test_lora_resumes_the_same_adapter_after_sigkill(cli, tmp_path):
    out = tmp_path / "run"
    # Killed in its 3rd batch: the last backup is of step 2.
    killed = run_cli_with_signal("KILL@3", "run", LORA, *LORA_ARGS, "--output-dir", out)
    assert killed.code == -9, killed
    with np.load(out / "backup" / BACKUP_FILE) as f:
        state = json.loads(str(f["state"]))
    assert (state["epoch"], state["step"], state["weights"]) == (0, 2, "trainable")
    # The adapter's factors (2 layers x query, value x A, B) and nothing of the base.
    assert len(state["model"]) == 8
    assert all(path.rsplit("/", 1)[-1] in ("lora_a", "lora_b") for path, _ in state["model"])

    resumed = cli("run", LORA, *LORA_ARGS, "--output-dir", out)
    assert resumed.code == 0, resumed
    assert "resumed from the backup of epoch 1, step 2 (train phase)" in resumed.stderr

    reference = tmp_path / "reference"
    assert cli("run", LORA, *LORA_ARGS, "--output-dir", reference).code == 0
    _assert_same_arrays(_arrays(out / "adapter.lora.h5"), _arrays(reference / "adapter.lora.h5"))


@pytest.mark.parametrize("name, code", [("INT", 130), ("TERM", 143)])
def test_interrupt_backs_up_and_prints_the_command_that_resumes(cli, tmp_path, name, code):
    out = tmp_path / "run"
    # Sent in its 2nd batch: held until that batch ends.
    result = run_cli_with_signal(f"{name}@2", "run", CATS, "--smoke", "head_epochs=1",
                                 "epochs=1", "--output-dir", out)
    assert result.code == code, result
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"kerastune: interrupted (SIG{name}); resume with: kerastune run ")
    assert "Traceback" not in result.stderr
    command = shlex.split(last.split("resume with: ", 1)[1])
    assert command[command.index("--output-dir") + 1] == str(out)
    # save_every_steps=0, but the interrupt writes a backup of where it stopped.
    state = _state(out)
    assert (state["phase"], state["epoch"], state["step"]) == ("head", 0, 2)
    if name == "TERM":  # the printed command resumes it (in-process here, for speed)
        resumed = cli(*command[1:])
        assert resumed.code == 0, resumed
        assert "resumed from the backup of epoch 1, step 2 (head phase)" in resumed.stderr
        assert [r["phase"] for r in _history(out)] == ["head", "finetune"]


def test_loss_not_finite_stops_with_one_line_and_keeps_the_backup(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", CATS, "--smoke", "head_epochs=1", "epochs=1", "learning_rate=1e38",
                 "--output-dir", out)
    assert result.code == 1, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("kerastune: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "at epoch 2, step" in errors[0] and "(finetune phase)" in errors[0], errors[0]
    assert "the backup of the end of epoch 1 is kept" in errors[0], errors[0]
    # The folder says why it stopped: FAILED holds the line and the exit code.
    assert (out / "FAILED").read_text() == f"{errors[0]}\nexit code: 1\n"
    assert errors[0].removeprefix("kerastune: ") in (out / "log.txt").read_text()
    state = _state(out)
    assert (state["phase"], state["epoch"], state["step"]) == ("head", 1, 0)
    with np.load(out / "backup" / BACKUP_FILE) as f:
        assert all(np.isfinite(f[k]).all() for k in f.files if k.startswith("model."))
