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


# A recipe that fails where a test says: `fail_at` is "start" (nothing
# trained) or "trained" (after history.csv and a backup exist).
FAILING_RECIPE = '''
import dataclasses, os
from kerastune_lab.errors import DownloadFailed, KerastuneError


@dataclasses.dataclass
class Config:
    fail_at: str = "start"
    error: str = "bad"
    seed: int = 0


def main(config, run):
    run.write_json("labels.json", ["a", "b"])
    if config.fail_at == "trained":
        run.write_csv("history.csv", [{"epoch": 1, "phase": "head", "loss": 0.5}])
        os.makedirs(run.file("backup"), exist_ok=True)
    if config.error == "download":
        raise DownloadFailed("cannot download preset 'x': no connection")
    if config.error == "bad":
        raise KerastuneError("data folder 'late' holds a broken file")
    if config.error == "none":
        return
    raise RuntimeError("something broke")
'''


@pytest.fixture
def failing_recipe(tmp_path):
    path = tmp_path / "failing.py"
    path.write_text(FAILING_RECIPE)
    return str(path)


def test_failed_run_with_training_is_kept_and_says_why(cli, failing_recipe, tmp_path):
    out = tmp_path / "run"
    result = cli("run", failing_recipe, "fail_at=trained", "--output-dir", out)
    assert result.code == 2, result
    line = "kerastune: error: data folder 'late' holds a broken file"
    assert line in result.stderr
    assert (out / "FAILED").read_text() == f"{line}\nexit code: 2\n"
    assert "data folder 'late' holds a broken file" in (out / "log.txt").read_text()
    assert not (out / "FINISHED").exists()
    # The same command resumes it; finishing drops the FAILED mark.
    result = cli("run", failing_recipe, "fail_at=trained", "--output-dir", out)
    assert result.code == 2 and (out / "FAILED").exists()


def test_failed_crash_records_exit_code_1(cli, failing_recipe, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        cli("run", failing_recipe, "fail_at=trained", "error=crash", "--output-dir", out)
    assert (out / "FAILED").read_text() == \
        "kerastune: error: RuntimeError: something broke\nexit code: 1\n"
    assert "RuntimeError: something broke" in (out / "log.txt").read_text()


@pytest.mark.parametrize("error, code", [("bad", 2), ("download", 1)])
def test_failed_run_with_nothing_trained_leaves_no_folder(cli, failing_recipe, tmp_path,
                                                          error, code):
    out = tmp_path / "run"
    result = cli("run", failing_recipe, f"error={error}", "--output-dir", out)
    assert result.code == code, result
    assert not out.exists()
    assert os.listdir(tmp_path) == ["failing.py"]


def test_failed_overwrite_puts_the_old_run_back(cli, failing_recipe, tmp_path):
    out = tmp_path / "run"
    assert cli("run", failing_recipe, "error=none", "--output-dir", out).code == 0
    before = (out / "config.json").read_text()
    result = cli("run", failing_recipe, "--overwrite", "--output-dir", out)
    assert result.code == 2
    assert (out / "FINISHED").exists() and (out / "config.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["failing.py", "run"]


def test_finish_drops_a_failed_mark(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_csv("history.csv", [{"epoch": 1}])
    assert run.fail("kerastune: error: x", 2)
    run.finish()
    # kerastune_run.json: the marker of a run folder; no .lock once finished.
    assert sorted(os.listdir(run.path)) == ["FINISHED", "history.csv", "kerastune_run.json"]
