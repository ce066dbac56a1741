"""Backups keep the previous good copy (issue 23, points 5 and 6): a damaged
newest backup (one byte flipped, emptied, deleted) is passed over for the
previous one, with a line naming both; with no intact copy the run says it
starts over from epoch 1, and does, to the result of an uninterrupted run.
Never a traceback, never BadZipFile, EOFError or "aborted" (exit 130).

In-process on the tiny model of tests/test_resume.py, then through the real
CLI (`cats_vs_dogs --smoke` killed with SIGKILL mid-phase 2, as in
tests/recipes/test_resume.py)."""

import json
import logging
import os
import shutil

import numpy as np
import pytest

from kerastune_lab.resume import (
    BACKUP_FILE,
    MANIFEST_FILE,
    PREVIOUS_FILE,
    STATE_FILE,
    Backup,
    BackupUnreadable,
    read_state,
    snapshot,
)
from tests.test_resume import _Crash, _fit, _model, _stream

# The files' handling is the same on every backend (resume's exactness on each
# backend: tests/recipes/test_resume.py): CI runs these once, on jax.
pytestmark = pytest.mark.backend_independent


def _flip_byte(path, at=None):
    """Flips every bit of one byte of `path` (the middle one by default)."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def lines():
    """The lines logged by kerastune_lab (a list, filled as they come)."""
    logger = logging.getLogger("kerastune_lab")
    seen = []

    class Handler(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- the files, without fit ---------------------------------------------------


INFO = {"phase": "train", "epoch": 0, "step": 1, "steps_per_epoch": 3, "weights": "all"}


def _write_two(directory):
    """Writes the backups of step 1 then step 2; returns the bytes of each."""
    model = _model()
    snapshot.write(directory, INFO, snapshot.model_variables(model))
    first = (directory / BACKUP_FILE).read_bytes()
    model.layers[1].kernel.assign(model.layers[1].kernel * 2)
    snapshot.write(directory, dict(INFO, step=2), snapshot.model_variables(model))
    return first, (directory / BACKUP_FILE).read_bytes()


def test_two_copies_each_recorded_by_its_checksum(tmp_path):
    import hashlib

    first, second = _write_two(tmp_path)
    assert (tmp_path / PREVIOUS_FILE).read_bytes() == first != second
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert [(e["file"], e["step"]) for e in manifest["backups"]] == [
        (BACKUP_FILE, 2), (PREVIOUS_FILE, 1)]
    for entry, data in zip(manifest["backups"], (second, first)):
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
    assert json.loads((tmp_path / STATE_FILE).read_text())["step"] == 2
    # A third backup drops the first: two copies, never more.
    snapshot.write(tmp_path, dict(INFO, step=3), snapshot.model_variables(_model()))
    assert (tmp_path / PREVIOUS_FILE).read_bytes() == second
    assert sorted(os.listdir(tmp_path)) == [BACKUP_FILE, MANIFEST_FILE, PREVIOUS_FILE,
                                            STATE_FILE]


@pytest.mark.parametrize("damage, why", [
    ("flip", "latest.npz does not match its SHA-256"),
    ("flip-header", "latest.npz does not match its SHA-256"),  # outside zip's CRC-32
    ("empty", "latest.npz is empty"),
    ("cut", "latest.npz has 100 bytes, "),
    ("delete", "latest.npz is missing"),
])
def test_a_damaged_newest_copy_is_passed_over(tmp_path, damage, why):
    _write_two(tmp_path)
    latest = tmp_path / BACKUP_FILE
    if damage == "flip":
        _flip_byte(latest)
    elif damage == "flip-header":
        _flip_byte(latest, at=10)  # the first entry's modification time
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "cut":
        latest.write_bytes(latest.read_bytes()[:100])
    else:
        latest.unlink()
    found = snapshot.choose(tmp_path)
    assert found.path == str(tmp_path / PREVIOUS_FILE) and found.state["step"] == 1
    assert [(s.entry["step"], s.file) for s in found.skipped] == [(2, BACKUP_FILE)]
    assert found.skipped[0].why.startswith(why), found.skipped[0].why
    assert read_state(tmp_path)["step"] == 1


def test_both_damaged_is_no_backup_and_one_line(tmp_path):
    _write_two(tmp_path)
    _flip_byte(tmp_path / BACKUP_FILE)
    (tmp_path / PREVIOUS_FILE).write_bytes(b"")
    found = snapshot.choose(tmp_path)
    assert (found.path, found.state) == (None, None)
    assert [s.why for s in found.skipped] == ["latest.npz does not match its SHA-256",
                                             "previous.npz is empty"]
    with pytest.raises(BackupUnreadable, match="cannot be read .*latest.npz does not match.*"
                                               "previous.npz is empty.*overwrite"):
        read_state(tmp_path)
    with pytest.raises(BackupUnreadable):
        snapshot.restore(tmp_path, snapshot.model_variables(_model()))


def test_a_crash_while_writing_leaves_a_recorded_copy(tmp_path):
    # Between the two renames: latest.npz gone, the newest copy under
    # previous.npz. It is found by its checksum, with nothing skipped.
    first, second = _write_two(tmp_path)
    os.replace(tmp_path / BACKUP_FILE, tmp_path / PREVIOUS_FILE)
    found = snapshot.choose(tmp_path)
    assert (found.path, found.state["step"], found.skipped) == (
        str(tmp_path / PREVIOUS_FILE), 2, [])
    # Written from there, the copy resumed from becomes the previous one.
    snapshot.write(tmp_path, dict(INFO, step=3), snapshot.model_variables(_model()),
                   previous=found.entry)
    assert (tmp_path / PREVIOUS_FILE).read_bytes() == second
    assert [s["step"] for s in json.loads((tmp_path / MANIFEST_FILE).read_text())["backups"]] \
        == [3, 2]

    # After the renames, before the manifest: a newer latest.npz it does not
    # record yet; the newest recorded copy (now previous.npz) is resumed.
    recorded = (tmp_path / BACKUP_FILE).read_bytes()
    os.replace(tmp_path / BACKUP_FILE, tmp_path / PREVIOUS_FILE)
    (tmp_path / BACKUP_FILE).write_bytes(first)
    found = snapshot.choose(tmp_path)
    assert (found.path, found.state["step"], found.skipped) == (
        str(tmp_path / PREVIOUS_FILE), 3, [])
    assert (tmp_path / PREVIOUS_FILE).read_bytes() == recorded


def test_a_damaged_manifest_falls_back_to_reading_the_copies_whole(tmp_path):
    _write_two(tmp_path)
    manifest = tmp_path / MANIFEST_FILE
    manifest.write_text(manifest.read_text().replace('"step": 2', '"step": 7'))
    assert snapshot.choose(tmp_path).state["step"] == 2  # its own checksum fails
    manifest.unlink()  # as a run of an earlier version: latest.npz alone
    (tmp_path / PREVIOUS_FILE).unlink()
    found = snapshot.choose(tmp_path)
    assert (found.state["step"], found.skipped) == (2, [])
    (tmp_path / BACKUP_FILE).write_bytes(b"")  # np.load: EOFError, here a line
    found = snapshot.choose(tmp_path)
    assert found.path is None
    assert len(found.skipped) == 1
    assert found.skipped[0].why.startswith("latest.npz cannot be read (EOFError"), found.skipped


# --- the Backup callback, in-process ------------------------------------------


def _killed(directory):
    """A run backed up at each step, crashed in its 6th batch (epoch 2, step
    3): its newest backup is of epoch 2, step 2, the previous of step 1."""
    with pytest.raises(RuntimeError, match="crash"):
        _fit(_model(), _stream(), Backup(directory, save_every_steps=1), extra=[_Crash(6)])
    steps = [(e["epoch"], e["step"])
             for e in json.loads((directory / MANIFEST_FILE).read_text())["backups"]]
    assert steps == [(1, 2), (1, 1)]


def _reference(tmp_path):
    reference = _model()
    _fit(reference, _stream(), Backup(tmp_path / "reference", save_every_steps=1))
    return reference.get_weights()


def _assert_same_weights(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("damage, why", [("flip", "latest.npz does not match its SHA-256"),
                                         ("empty", "latest.npz is empty")])
def test_backup_resumes_from_the_previous_copy(tmp_path, lines, damage, why):
    run = tmp_path / "run"
    _killed(run)
    if damage == "flip":
        _flip_byte(run / BACKUP_FILE)
    else:
        (run / BACKUP_FILE).write_bytes(b"")
    backup = Backup(run, save_every_steps=1)
    assert backup.start("train") == (1, 1)
    assert lines == [f"backup of epoch 2, step 2 (train phase) is damaged ({why}): resuming "
                     "from the previous backup, of epoch 2, step 1 (train phase)"]
    resumed = _model()
    history = _fit(resumed, _stream(), backup)
    assert len(history.history["loss"]) == 2  # epochs 2 and 3
    assert "resumed from the backup of epoch 2, step 1 (train phase)" in lines
    _assert_same_weights(resumed.get_weights(), _reference(tmp_path))
    # The damaged copy is replaced; the one resumed from was kept until then.
    assert snapshot.choose(run).skipped == []


@pytest.mark.parametrize("damage", ["both", "deleted"])
def test_backup_with_no_usable_copy_starts_over(tmp_path, lines, damage):
    run = tmp_path / "run"
    _killed(run)
    if damage == "both":
        _flip_byte(run / BACKUP_FILE)
        _flip_byte(run / PREVIOUS_FILE)
        expected = (f"no usable backup in {run} (backup of epoch 2, step 2 (train phase): "
                    "latest.npz does not match its SHA-256; backup of epoch 2, step 1 (train "
                    "phase): previous.npz does not match its SHA-256): starting over from "
                    "epoch 1")
    else:
        for name in os.listdir(run):
            os.remove(run / name)
        expected = (f"no backup in {run} (none was written before the run stopped, or it "
                    "was deleted): starting over from epoch 1")

    class Resumed:  # a RunDir of a resumed run (RunDir.create(resume=...))
        resumed = True

        def file(self, name):
            return str(run)

    backup = Backup(Resumed(), save_every_steps=1)
    assert backup.start("train") == (0, 0)
    assert lines == [expected]
    started = _model()
    assert len(_fit(started, _stream(), backup).history["loss"]) == 3
    _assert_same_weights(started.get_weights(), _reference(tmp_path))
    assert not any(line.startswith("resumed") for line in lines)
    assert [s["epoch"] for s in json.loads((run / MANIFEST_FILE).read_text())["backups"]] \
        == [3, 2]


def test_a_new_run_says_nothing(tmp_path, lines):
    Backup(tmp_path / "new")
    assert lines == []


# --- the real CLI -------------------------------------------------------------


_CLI = {}  # the killed run and the reference of this session, made once


def _cli_runs(cli, tmp_path_factory):
    """(killed, reference): a `cats_vs_dogs --smoke` run killed in its 6th
    batch (backups of epoch 2, steps 2 and 1, finetune phase), and the same
    run uninterrupted."""
    from tests.faults import run_cli_with_signal
    from tests.recipes.test_resume import CATS, CATS_ARGS

    if not _CLI:
        root = tmp_path_factory.mktemp("backup-copies")
        killed = run_cli_with_signal("KILL@6", "run", CATS, *CATS_ARGS,
                                     "--output-dir", root / "killed")
        assert killed.code == -9, killed
        reference = cli("run", CATS, *CATS_ARGS, "--output-dir", root / "reference")
        assert reference.code == 0, reference
        _CLI.update(killed=root / "killed", reference=root / "reference")
    return _CLI["killed"], _CLI["reference"]


def _resume_damaged(cli, tmp_path, tmp_path_factory, damage, in_process=True):
    """Resumes a copy of the killed run with `damage` done to its backup
    folder, with `kerastune run` in this process or (`in_process=False`) in
    a process of its own (`run_cli`)."""
    from tests.conftest import run_cli
    from tests.recipes.test_resume import CATS, CATS_ARGS

    killed, reference = _cli_runs(cli, tmp_path_factory)
    out = tmp_path / "run"
    shutil.copytree(killed, out)
    damage(out / "backup")
    result = (cli if in_process else run_cli)("run", CATS, *CATS_ARGS, "--output-dir", out)
    assert result.code == 0, result  # not 1 (a traceback), 2 or 130 ("aborted")
    assert "Traceback" not in result.stderr and "aborted" not in result.stderr, result.stderr
    return result, out, reference


def _assert_same_run(out, reference):
    from tests.recipes.test_resume import _arrays, _assert_same_arrays, _history

    assert (out / "FINISHED").exists() and not (out / "backup").exists()
    _assert_same_arrays(_arrays(out / "model" / "model.weights.h5"),
                        _arrays(reference / "model" / "model.weights.h5"))
    rows, expected = _history(out), _history(reference)
    assert [(r["epoch"], r["phase"]) for r in rows] == [
        ("1", "head"), ("2", "finetune"), ("3", "finetune")]
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows],
                               [float(r["val_loss"]) for r in expected], atol=1e-5)


def _cli_lines(result):
    """The lines that say what is resumed (TensorBoard's, the metrics' left out)."""
    return [line for line in result.stderr.splitlines()
            if line.startswith(("kerastune: resum", "kerastune: backup of", "kerastune: no "))
            or "damaged" in line or "starting over" in line]


@pytest.mark.large
@pytest.mark.parametrize("damage, why, in_process", [
    (lambda b: _flip_byte(b / BACKUP_FILE), "latest.npz does not match its SHA-256", True),
    # Once np.load's EOFError, which click turned into "aborted", exit 130.
    (lambda b: (b / BACKUP_FILE).write_bytes(b""), "latest.npz is empty", False),
], ids=["flipped", "empty"])
def test_cli_resumes_from_the_previous_copy(cli, tmp_path, tmp_path_factory, damage, why,
                                            in_process):
    result, out, reference = _resume_damaged(cli, tmp_path, tmp_path_factory, damage,
                                             in_process)
    assert _cli_lines(result) == [
        f"kerastune: resuming the unfinished run in {out}",
        f"kerastune: backup of epoch 2, step 2 (finetune phase) is damaged ({why}): "
        "resuming from the previous backup, of epoch 2, step 1 (finetune phase)",
        "kerastune: resumed from the backup of epoch 2, step 1 (finetune phase)",
    ], result.stderr
    _assert_same_run(out, reference)


@pytest.mark.large
def test_cli_with_both_copies_damaged_starts_over(cli, tmp_path, tmp_path_factory):
    def damage(backup):
        _flip_byte(backup / BACKUP_FILE)
        (backup / PREVIOUS_FILE).write_bytes(b"")

    result, out, reference = _resume_damaged(cli, tmp_path, tmp_path_factory, damage)
    assert _cli_lines(result) == [
        f"kerastune: resuming the unfinished run in {out}",
        f"kerastune: no usable backup in {out / 'backup'} (backup of epoch 2, step 2 (finetune "
        "phase): latest.npz does not match its SHA-256; backup of epoch 2, step 1 (finetune "
        "phase): previous.npz is empty): starting over from epoch 1",
    ], result.stderr
    _assert_same_run(out, reference)


@pytest.mark.large
def test_cli_with_the_backup_deleted_starts_over(cli, tmp_path, tmp_path_factory):
    def damage(backup):
        for name in os.listdir(backup):
            os.remove(backup / name)

    result, out, reference = _resume_damaged(cli, tmp_path, tmp_path_factory, damage)
    assert _cli_lines(result) == [
        f"kerastune: resuming the unfinished run in {out}",
        f"kerastune: no backup in {out / 'backup'} (none was written before the run stopped, "
        "or it was deleted): starting over from epoch 1",
    ], result.stderr
    _assert_same_run(out, reference)


def test_the_newest_copy_deleted_the_previous_one_is_kept_under_its_own_checksum(tmp_path):
    import hashlib

    # Both copies have the same size (same shapes): found by size alone, the
    # previous copy was recorded under the deleted one's checksum, and lost.
    first, second = _write_two(tmp_path)
    assert len(first) == len(second) and first != second
    (tmp_path / BACKUP_FILE).unlink()
    snapshot.write(tmp_path, dict(INFO, step=3), snapshot.model_variables(_model()))
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert [(e["file"], e["step"], e["sha256"]) for e in manifest["backups"][1:]] == [
        (PREVIOUS_FILE, 1, hashlib.sha256(first).hexdigest())]
    assert (tmp_path / PREVIOUS_FILE).read_bytes() == first
    # It is there to fall back on.
    _flip_byte(tmp_path / BACKUP_FILE)
    found = snapshot.choose(tmp_path)
    assert (found.path, found.state["step"]) == (str(tmp_path / PREVIOUS_FILE), 1)
    assert [s.why for s in found.skipped] == ["latest.npz does not match its SHA-256"]


def test_the_newest_copy_under_the_other_name_is_kept_by_default(tmp_path):
    # A crash between the two renames of a write, then a write that keeps
    # the newest copy (the default): found under previous.npz by checksum.
    first, second = _write_two(tmp_path)
    os.replace(tmp_path / BACKUP_FILE, tmp_path / PREVIOUS_FILE)
    snapshot.write(tmp_path, dict(INFO, step=3), snapshot.model_variables(_model()))
    assert (tmp_path / PREVIOUS_FILE).read_bytes() == second
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert [(e["file"], e["step"]) for e in manifest["backups"]] == [
        (BACKUP_FILE, 3), (PREVIOUS_FILE, 2)]
