import json
import os

import pytest

from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import RunDir, atomic_path, read_csv, write_json


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"a": 2, "half')
            raise RuntimeError("crash while writing")
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


def test_atomic_folder_replace(tmp_path):
    target = tmp_path / "model"
    for content in ("one", "two"):
        with atomic_path(target) as tmp:
            os.makedirs(tmp)
            (open(os.path.join(tmp, "w.txt"), "w")).write(content)
    assert (target / "w.txt").read_text() == "two"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_finished_run_is_not_overwritten(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_json("metrics.json", {"val_accuracy": 0.9})
    run.finish()
    with pytest.raises(KerastuneError, match="already holds a finished run"):
        RunDir.create(tmp_path / "r")
    assert run.read_json("metrics.json") == {"val_accuracy": 0.9}


def test_overwrite_sets_aside_until_finished(tmp_path):
    old = RunDir.create(tmp_path / "r")
    old.write_json("metrics.json", {"v": 1})
    old.finish()
    new = RunDir.create(tmp_path / "r", overwrite=True)
    assert not os.path.exists(new.file("metrics.json"))
    new.discard()  # the new run failed: the old one comes back
    assert RunDir(tmp_path / "r").read_json("metrics.json") == {"v": 1}
    new = RunDir.create(tmp_path / "r", overwrite=True)
    new.write_json("metrics.json", {"v": 2})
    new.finish()
    assert sorted(os.listdir(tmp_path)) == ["r"]
    assert new.read_json("metrics.json") == {"v": 2}


def test_csv_round_trip(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_csv("history.csv", [{"epoch": 1, "phase": "head", "loss": 0.5},
                                  {"epoch": 2, "phase": "finetune", "loss": 0.25}])
    rows = read_csv(run.file("history.csv"))
    assert [r["phase"] for r in rows] == ["head", "finetune"]
    assert [r["loss"] for r in rows] == [0.5, 0.25]


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KerastuneError, match="not a folder"):
        RunDir.create(blocker)
