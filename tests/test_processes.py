"""Several processes, one run (`kerastune_lab.processes`, issue 28): two
`kerastune run` processes on 127.0.0.1, each with 2 virtual CPU devices
(JAX's distributed runtime, gloo collectives), against one process with 4.

The LoRA smoke recipe with distribute=data:
- its adapter equals that of one process with 4 devices and the same global
  batch (and it moved from where it started: the comparison can fail);
- no file of the run folder is written by process 1 (an audit hook records
  every file each process opens for writing, renames, removes or makes);
- a run whose process 1 is killed in its 3rd step, then its process 0,
  resumes from process 0's backup when both are started again, and ends
  where the uninterrupted run ends.
And the refusals: another backend, incomplete or inconsistent flags, a
process count that does not match, processes that do not all join in time.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kerastune_lab.errors import KerastuneError
from kerastune_lab.processes import from_flags
from tests.conftest import ROOT, CliResult, assert_one_line_error, run_cli

# Always --backend jax in their own processes: run once, in CI's tensorflow
# pass (beside the longer jax pass; setup.cfg).
pytestmark = [pytest.mark.backend_independent, pytest.mark.tensorflow_lane]

LORA = ("lora_chat", "--smoke", "--backend", "jax", "distribute=data", "batch_size=4",
        "save_every_steps=1")

# Installed in each process through sitecustomize: every write-like file
# operation, with the process's id, as JSON lines in $AUDIT_LOG.
AUDIT = r'''
import json, os, sys
_log = os.environ.get("AUDIT_LOG")
if _log:
    _who = os.environ.get("AUDIT_WHO", "?")
    _out = open(_log + "." + _who, "a", buffering=1)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def _hook(event, args):
        paths = ()
        if event == "open":
            path, mode, flags = args
            if isinstance(path, (str, bytes)) and (
                    (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE):
                paths = (path,)
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            paths = args[:2]
        elif event in ("os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
            paths = args[:1]
        for p in paths:
            if isinstance(p, (str, bytes)):
                _out.write(json.dumps([event, os.fsdecode(os.path.abspath(p))]) + "\n")
    sys.addaudithook(_hook)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices, audit=None, who=None):
    env = dict(os.environ, KERAS_BACKEND="jax",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    if audit is not None:
        env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(audit), env["PYTHONPATH"]])
        env.update(AUDIT_LOG=audit, AUDIT_WHO=str(who))
    return env


def _start(args, env, fault=None):
    command = ([sys.executable, "-m", "tests.faults", fault] if fault
               else [sys.executable, "-m", "kerastune_lab.cli"])
    return subprocess.Popen(command + [str(a) for a in args], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return CliResult(proc.returncode, out, err)


def _two_processes(args, audit=None, faults=(None, None), timeout=600):
    """Runs `kerastune run *args` as processes 0 and 1 of 2 (2 devices each);
    returns their CliResults."""
    port = _free_port()
    procs = [_start([*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                     "--process-id", i], _env(2, audit, i), faults[i]) for i in range(2)]
    return [_finish(p, timeout) for p in procs]


def _adapter(run):
    return _h5_floats(os.path.join(run, "adapter.lora.h5"))


def _assert_same_adapter(a, b, tol=1e-6):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=tol, err_msg=name)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The LoRA smoke run in one process with 4 devices (it also makes the
    tiny preset's cache, which the two-process runs then share)."""
    out = tmp_path_factory.mktemp("one") / "run"
    proc = subprocess.run([sys.executable, "-m", "kerastune_lab.cli", "run", *LORA, "-o", out],
                          env=_env(4), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out)


def test_two_processes_train_the_adapter_of_one_with_four_devices_and_process_1_writes_nothing(
        one_process, tmp_path):
    audit = tmp_path / "audit" / "sitecustomize.py"
    audit.parent.mkdir()
    audit.write_text(AUDIT)
    out = tmp_path / "run"
    results = _two_processes(["run", *LORA, "-o", out], audit=str(audit))
    for result in results:
        assert result.code == 0, result
        assert result.last_line == str(out)  # both print the run folder
    assert "kerastune[1/2]: process 1 of 2 joined: 4 devices in all, 2 here" in results[1].stderr
    trained = _adapter(out)
    _assert_same_adapter(trained, _adapter(one_process))
    moved = max(float(np.abs(v).max()) for k, v in trained.items() if k.endswith("lora_b"))
    assert moved > 1e-3  # lora_b starts at 0: the runs compared trained something
    # The writers: process 0 wrote the run; process 1 wrote only into its copy.
    run = os.path.realpath(out)
    writes = {who: [json.loads(line) for line in open(f"{audit}.{who}")] for who in (0, 1)}

    def inside(who, folder):
        return [w for w in writes[who] if w[1] == folder or w[1].startswith(folder + os.sep)]

    assert any(path.endswith("adapter.lora.h5") for _, path in inside(0, run))
    assert inside(1, run) == []
    copies = [p for _, p in writes[1] if os.path.basename(os.path.dirname(p)).startswith(
        "kerastune-process1-") or "kerastune-process1-" in p]
    assert any(p.endswith("adapter.lora.h5") for p in copies)  # its copy, then removed
    assert not any(os.path.exists(p) for p in copies)
    _assert_same_history(out, one_process)


def _assert_same_history(a, b, rows=2):
    """history.csv's figures (process 0's: the global batch's) match, but the seconds."""
    from kerastune_lab.runs import read_csv

    rows_a, rows_b = (read_csv(os.path.join(r, "history.csv")) for r in (a, b))
    assert len(rows_a) == len(rows_b) == rows
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if key not in ("seconds", "phase"):
                assert float(row_a[key]) == pytest.approx(float(row_b[key]), abs=1e-5), key


def _h5_floats(path):
    import h5py

    weights = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: weights.__setitem__(name, np.array(obj))
                     if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f" else None)
    assert weights
    return weights


def test_two_processes_fine_tune_the_image_classifier_of_one_with_four_devices(tmp_path):
    """cats_vs_dogs in two phases, augmentation in the pipeline, with a last
    training batch and a validation set that do not split over 4 devices
    (38 and 10 images, batches of 16)."""
    args = ["cats_vs_dogs", "--smoke", "--backend", "jax", "distribute=data"]
    one = tmp_path / "one"
    proc = subprocess.run([sys.executable, "-m", "kerastune_lab.cli", "run", *args, "-o", one],
                          env=_env(4), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = tmp_path / "two"
    for result in _two_processes(["run", *args, "-o", two]):
        assert result.code == 0, result
    from kerastune_lab.runs import read_csv

    rows = read_csv(os.path.join(one, "history.csv"))
    assert [r["phase"] for r in rows] == ["head", "head", "finetune", "finetune"]
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])  # it trained
    _assert_same_history(two, one, rows=4)
    for file in ("model.weights.h5", "task.weights.h5"):  # the backbone, the whole task
        a, b = (_h5_floats(os.path.join(run, "model", file)) for run in (one, two))
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=f"{file} {name}")
    metrics = [json.load(open(os.path.join(r, "metrics.json"))) for r in (one, two)]
    assert metrics[0]["num_val"] == 10
    assert metrics[0]["val_loss"] == pytest.approx(metrics[1]["val_loss"], abs=1e-6)
    assert metrics[0]["val_accuracy"] == metrics[1]["val_accuracy"]


def test_a_killed_process_and_a_restart_of_both_resume_from_the_backup(one_process, tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    args = ["run", *LORA, "-o", out, "--coordinator", f"127.0.0.1:{port}",
            "--num-processes", "2"]
    leader = _start([*args, "--process-id", "0"], _env(2))
    killed = _start([*args, "--process-id", "1"], _env(2), fault="KILL@3")
    assert _finish(killed).code == -9
    time.sleep(2)
    leader.kill()  # if it has not stopped by itself (JAX ends a run whose peer died)
    _finish(leader)
    backup = os.path.join(out, "backup")
    assert os.path.isdir(backup) and not os.path.exists(os.path.join(out, "FINISHED"))
    results = _two_processes(["run", *LORA, "-o", out])
    for result in results:
        assert result.code == 0, result
    assert "resuming the unfinished run" in results[0].stderr
    config = json.load(open(os.path.join(out, "config.json")))
    assert len(config["resumed"]) == 1
    _assert_same_adapter(_adapter(out), _adapter(one_process))
    _assert_same_history(out, one_process)


def test_another_backend_is_refused_in_one_line(tmp_path):
    result = run_cli("run", "lora_chat", "--smoke", "--backend", "torch", "--coordinator",
                     "127.0.0.1:1234", "--num-processes", "2", "--process-id", "0",
                     "-o", tmp_path / "run")
    assert_one_line_error(result, "--coordinator/--num-processes need the jax backend",
                          "torch")
    assert not os.path.exists(tmp_path / "run")


def test_processes_that_do_not_all_join_in_time_stop_in_one_line(tmp_path):
    start = time.monotonic()
    proc = _start(["run", *LORA, "-o", tmp_path / "run", "--coordinator",
                   f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "1",
                   "--connect-timeout", "3"], _env(2))
    result = _finish(proc, timeout=120)
    assert time.monotonic() - start < 60
    assert_one_line_error(result, "the 2 processes did not all join", "within 3 s")
    assert not os.path.exists(tmp_path / "run")


def test_a_process_count_that_does_not_match_is_refused(tmp_path):
    port = _free_port()
    base = ["run", *LORA, "-o", tmp_path / "run", "--coordinator", f"127.0.0.1:{port}",
            "--connect-timeout", "60"]
    leader = _start([*base, "--num-processes", "2", "--process-id", "0"], _env(2))
    other = _start([*base, "--num-processes", "3", "--process-id", "1"], _env(2))
    result = _finish(other, timeout=120)
    leader.kill()
    _finish(leader)
    assert_one_line_error(result, "--num-processes 3", "runs 2 processes")


@pytest.mark.parametrize("flags, environ, fragments", [
    (dict(num_processes=2, process_id=0), {}, ["need --coordinator HOST:PORT"]),
    (dict(coordinator="127.0.0.1:80"), {}, ["also give --num-processes N"]),
    (dict(coordinator="localhost", num_processes=2, process_id=0), {}, ["expected HOST:PORT"]),
    (dict(coordinator="h:99999", num_processes=2, process_id=0), {}, ["expected HOST:PORT"]),
    (dict(coordinator="h:1", num_processes=1, process_id=0), {}, ["expected 2 or more"]),
    (dict(coordinator="h:1", num_processes=2, process_id=2), {}, ["expected 0 to 1"]),
    (dict(coordinator="h:1", num_processes=2, process_id=-1), {}, ["expected 0 to 1"]),
    (dict(coordinator="h:1", num_processes=2, process_id=0, timeout=0), {},
     ["--connect-timeout 0"]),
    ({}, {"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, ["KERAS_DISTRIBUTION_NUM_PROCESSES",
                                                       "expected a whole number"]),
])
def test_incomplete_or_inconsistent_flags_are_refused(flags, environ, fragments):
    with pytest.raises(KerastuneError) as info:
        from_flags(**flags, environ=environ)
    assert "\n" not in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_flags_and_keras_environment_variables():
    assert from_flags(environ={}) is None
    spec = from_flags(environ={"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:5",
                               "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                               "KERAS_DISTRIBUTION_PROCESS_ID": "1",
                               "KERASTUNE_CONNECT_TIMEOUT": "45"})
    assert (spec.coordinator, spec.num_processes, spec.process_id, spec.timeout) == (
        "10.0.0.1:1234", 2, 1, 45.0)
    # Flags win over the environment.
    spec = from_flags("h:2", 4, 3, 9, environ={"KERAS_DISTRIBUTION_PROCESS_ID": "1"})
    assert (spec.coordinator, spec.num_processes, spec.process_id, spec.timeout) == (
        "h:2", 4, 3, 9.0)
    spec = from_flags("auto", environ={})
    assert (spec.coordinator, spec.num_processes, spec.process_id, spec.timeout) == (
        "auto", None, None, 300.0)


class _Sharding:
    """What `own_rows` reads of a data layout's jax sharding: this process
    holds rows `span` of a batch of one row a device."""

    def __init__(self, span):
        self.span = span

    def addressable_devices_indices_map(self, shape):
        lo, hi = self.span
        return {f"device{r}": (slice(r, r + 1),) for r in range(lo, hi)}


class _Distribution:
    """A data-parallel distribution over 4 devices, 2 a process."""

    batch_dim_name = "batch"

    def __init__(self, span):
        self.device_mesh = type("Mesh", (), {"shape": (4,), "axis_names": ("batch",)})()
        self.span = span

    def get_data_layout(self, shape):
        assert shape == (4,)
        return type("Layout", (), {"backend_layout": _Sharding(self.span)})()


@pytest.mark.parametrize("span, rows", [((0, 2), [0, 1, 2, 3]), ((2, 4), [4, 5, 6, 7])])
def test_each_process_keeps_its_rows_of_every_batch(monkeypatch, span, rows):
    """The process whose devices hold rows `span` of 4 keeps those rows of
    each batch of 8, in every element of the batch; a last batch that does
    not split over the 4 devices stays whole. (Both processes feeding the
    whole batch would train the same: the mean over a batch given twice is
    the same mean; only this shows it.)"""
    import keras
    import tensorflow as tf

    from kerastune_lab import distribute, processes

    monkeypatch.setattr(processes, "process_count", lambda: 2)
    monkeypatch.setattr(keras.distribution, "distribution", lambda: _Distribution(span))
    x = np.arange(18).reshape(18, 1)
    ds = tf.data.Dataset.from_tensor_slices(({"ids": x}, x[:, 0] * 10)).batch(8)
    batches = list(distribute.own_rows(ds).as_numpy_iterator())
    assert len(batches) == 3
    for b, (features, labels) in enumerate(batches[:2]):
        expected = [8 * b + r for r in rows]
        assert features["ids"][:, 0].tolist() == expected
        assert labels.tolist() == [10 * e for e in expected]
    assert batches[2][0]["ids"][:, 0].tolist() == [16, 17]  # 2 rows over 4 devices: whole


@pytest.mark.parametrize("recipe, overrides, fragment", [
    ("lora_chat", [], "pass distribute=data to train one model"),
    ("cats_vs_dogs", [], "pass distribute=data to train one model"),
    ("xray_pneumonia", [], "it has no distribute key"),
])
def test_a_recipe_without_a_distribution_is_refused_in_several_processes(
        monkeypatch, tmp_path, recipe, overrides, fragment):
    """Each process would otherwise train a model of its own on its rows."""
    from kerastune_lab import processes
    from kerastune_lab.recipe import run_recipe
    from tests.conftest import raises_one_line

    monkeypatch.setattr(processes, "process_count", lambda: 2)
    raises_one_line(lambda: run_recipe(recipe, smoke=True, overrides=overrides,
                                       output_dir=tmp_path / "run"),
                    f"recipe {recipe!r} runs in 2 processes", fragment)
    assert not os.path.exists(tmp_path / "run")
