"""Atomic writes: a killed writer's temporary is removed by the next write to
the same place, a live writer's never."""

import os
import signal
import subprocess
import sys

import pytest

from kerastune_lab.atomic import atomic_path, remove_leftovers, write_text
from tests.conftest import ROOT

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

WRITER = """
import os, sys, time
from kerastune_lab.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    os.makedirs(tmp)
    open(os.path.join(tmp, "half"), "w").write("half")
    print("ready", flush=True)
    time.sleep(120)
"""


def test_a_killed_writers_temporary_goes_with_the_next_write(tmp_path):
    target = tmp_path / "export"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".export.")]
        # Alive: its temporary stays.
        assert remove_leftovers(target) == [] and leftover.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert leftover.exists() and not target.exists()
    # Dead: the next write into the same place removes it.
    with atomic_path(target) as tmp:
        os.makedirs(tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_live_writer_in_this_process_is_left_alone(tmp_path):
    target = tmp_path / "notes.txt"
    with atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("a")
        assert remove_leftovers(target) == []
        write_text(tmp_path / "other.txt", "b")  # another target: no business with this one
        assert os.path.exists(tmp)
    assert target.read_text() == "a"
    # Only mkdtemp's names beside the target are taken for leftovers.
    (tmp_path / ".notes.txt.keep").mkdir()
    (tmp_path / ".notes.txt.abcdefgh").write_text("a file, not a folder")
    # A folder of the user's with a temporary's very name, but not made here.
    mine = tmp_path / ".notes.txt.12345678"
    mine.mkdir()
    (mine / "draft.md").write_text("mine")
    assert remove_leftovers(target) == []
    assert (tmp_path / ".notes.txt.keep").exists() and (mine / "draft.md").read_text() == "mine"
