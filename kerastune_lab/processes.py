"""One run over several processes (hosts): JAX's distributed runtime.

    kerastune run lora_chat --backend jax distribute=data \\
        --coordinator 10.0.0.1:1234 --num-processes 2 --process-id 0   # on host 0
    ... --process-id 1                                                  # on host 1
    kerastune run lora_chat --backend jax distribute=data --coordinator auto  # TPU pod, SLURM

The same command runs on every host, with its own process id (or the
environment variables of `keras.distribution.initialize`:
KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES,
KERAS_DISTRIBUTION_PROCESS_ID). `initialize` joins the processes through
`jax.distributed.initialize` before anything else touches a device; then
`keras.distribution.list_devices()` is every device of every process, and a
recipe's `distribute=data|model` lays its mesh over all of them. Each
process keeps its rows of every batch (`distribute.own_rows`; Keras' own
sharding of datasets is off) and Keras assembles them into the global
batch on the devices, so `batch_size` means the same as on one host.

One writer: process 0 makes the run folder and writes every file of it.
Each other process works in a private copy of the run folder
(`follow`), taken once process 0 has made or reopened the run: it resumes
from the same backup as process 0 and writes only into its copy, which is
removed at the end. The run folder must be on storage that every process
sees (the same disk on one host, NFS or a mounted bucket across hosts);
`follow` refuses one it cannot see.
"""

import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import threading

from kerastune_lab.errors import KerastuneError

ENV_ADDRESS = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_COUNT = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
ENV_TIMEOUT = "KERASTUNE_CONNECT_TIMEOUT"
CONNECT_TIMEOUT = 300  # seconds for every process to join (--connect-timeout)
AUTO = "auto"  # --coordinator auto: JAX detects the cluster (TPU pod slice, SLURM, ...)
_PATH_BYTES = 4096  # the run folder's path, as broadcast from process 0

log = logging.getLogger("kerastune_lab")


@dataclasses.dataclass(frozen=True)
class Processes:
    """How this process joins the others (`from_flags`)."""

    coordinator: str  # HOST:PORT of process 0, or AUTO
    num_processes: int | None  # None with AUTO: from the cluster
    process_id: int | None
    timeout: float  # seconds


def _int(text, what):
    try:
        return int(text)
    except (TypeError, ValueError):
        raise KerastuneError(f"{what} {text!r}: expected a whole number") from None


def from_flags(coordinator=None, num_processes=None, process_id=None, timeout=None,
               environ=None):
    """The `Processes` of the command line's flags, else of the environment
    variables (ENV_ADDRESS, ENV_COUNT, ENV_ID, ENV_TIMEOUT); None when
    neither asks for several processes. A one-line `KerastuneError` for an
    incomplete or inconsistent set."""
    environ = os.environ if environ is None else environ
    if coordinator is None and environ.get(ENV_ADDRESS):
        # Keras takes "host0:port,host1:port,...": the first is the coordinator.
        coordinator = environ[ENV_ADDRESS].split(",")[0].strip()
    if num_processes is None and environ.get(ENV_COUNT):
        num_processes = _int(environ[ENV_COUNT], ENV_COUNT)
    if process_id is None and environ.get(ENV_ID):
        process_id = _int(environ[ENV_ID], ENV_ID)
    if timeout is None:
        timeout = float(environ.get(ENV_TIMEOUT) or CONNECT_TIMEOUT)
    if coordinator is None and num_processes is None and process_id is None:
        return None
    if coordinator is None:
        raise KerastuneError("--num-processes/--process-id need --coordinator HOST:PORT "
                             "(process 0's address), or --coordinator auto on a TPU pod")
    if timeout <= 0:
        raise KerastuneError(f"--connect-timeout {timeout:g}: expected seconds > 0")
    if coordinator != AUTO:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise KerastuneError(f"--coordinator {coordinator!r}: expected HOST:PORT "
                                 "(process 0's address and a free port), or auto")
        if num_processes is None or process_id is None:
            raise KerastuneError(f"--coordinator {coordinator}: also give --num-processes N "
                                 "and --process-id I (0 on the coordinator's host)")
    if num_processes is not None and num_processes < 2:
        raise KerastuneError(f"--num-processes {num_processes}: expected 2 or more "
                             "(one process needs no coordinator)")
    if process_id is not None and not 0 <= process_id < (num_processes or sys.maxsize):
        raise KerastuneError(f"--process-id {process_id}: expected 0 to "
                             f"{num_processes - 1} for --num-processes {num_processes}")
    return Processes(coordinator, num_processes, process_id, float(timeout))


def check_backend(backend_name):
    """Several processes run on jax only: a one-line refusal elsewhere."""
    if backend_name != "jax":
        raise KerastuneError(f"--coordinator/--num-processes need the jax backend (JAX's "
                             f"distributed runtime); this run uses {backend_name}: "
                             "pass --backend jax")


def initialize(spec, backend_name):
    """Joins the processes (`jax.distributed.initialize`), before any device
    is used. Refused in one line on another backend, and when the processes
    have not all joined within `spec.timeout` seconds (this process then
    exits with code 2: JAX's own time-out aborts the process)."""
    check_backend(backend_name)
    import jax

    # Collectives between processes on CPU devices (a test, a CPU cluster):
    # gloo over TCP. GPUs and TPUs use their own (NCCL, ICI).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = "the cluster's coordinator" if spec.coordinator == AUTO else spec.coordinator
    count = spec.num_processes or "cluster's"
    line = (f"kerastune: error: the {count} processes did not "
            f"all join through {where} within {spec.timeout:g} s (--connect-timeout): "
            "start every process with the same --coordinator and --num-processes, "
            "and check that process 0's host and port can be reached\n")
    # JAX aborts with a C++ stack on its own time-out (later): say it in one line first.
    watchdog = threading.Timer(spec.timeout, _give_up, (line,))
    watchdog.daemon = True
    watchdog.start()
    try:
        if spec.coordinator == AUTO:
            jax.distributed.initialize(initialization_timeout=int(spec.timeout) + 60)
        else:
            jax.distributed.initialize(
                coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                process_id=spec.process_id, initialization_timeout=int(spec.timeout) + 60)
    finally:
        watchdog.cancel()
    if spec.num_processes is not None and jax.process_count() != spec.num_processes:
        raise KerastuneError(f"--num-processes {spec.num_processes}: the coordinator "
                             f"{spec.coordinator} runs {jax.process_count()} processes; "
                             "give every process the same count")
    _name_the_process(jax.process_index(), jax.process_count())
    log.info("process %d of %d joined: %d devices in all, %d here", jax.process_index(),
             jax.process_count(), jax.device_count(), jax.local_device_count())


def _give_up(line):
    from kerastune_lab import compat

    sys.stderr.write(line)
    sys.stderr.flush()
    compat.exit_now(2)


def _name_the_process(index, count):
    """Log lines on the terminal say which process speaks: "kerastune[1/2]: ..."."""
    from kerastune_lab.cli_common import _StderrHandler

    for handler in logging.getLogger("kerastune_lab").handlers:
        if isinstance(handler, _StderrHandler):
            handler.setFormatter(logging.Formatter(f"kerastune[{index}/{count}]: %(message)s"))


def process_index():
    """This process's index (0 for a single process, and on torch/tensorflow)."""
    jax = sys.modules.get("jax")
    if jax is None or os.environ.get("KERAS_BACKEND", "jax") != "jax":
        return 0
    return jax.process_index() if _initialized(jax) else 0


def process_count():
    jax = sys.modules.get("jax")
    return jax.process_count() if jax is not None and _initialized(jax) else 1


def _initialized(jax):
    from kerastune_lab import compat

    return compat.jax_distributed_joined()


def lead(path):
    """Process 0's side of `follow`: gives the others the run folder's path
    (None: process 0 failed to make it), then waits until each has checked
    that it sees the folder and taken its copy. Nothing with one process."""
    if process_count() < 2:
        return
    _share_path(path)
    if path is not None:
        _all_agree(True)  # each sees the folder
        _all_agree(True)  # each has its copy: process 0 may write again


def follow(marker_name):
    """The run folder of a process other than 0: a private copy of process
    0's run folder (`runs.RunDir` in a temporary folder, `run.scratch`)
    holding what process 0's holds once it has made or reopened the run
    (its backup: the same resume point). Returns (copy, process 0's path).
    One-line `KerastuneError`s where process 0 failed or where a process
    cannot see its folder."""
    from kerastune_lab.runs import LOCK_FILE, RunDir

    path = _share_path(None)
    if path is None:
        raise KerastuneError("process 0 could not make the run folder: its output says why")
    if not _all_agree(os.path.isfile(os.path.join(path, marker_name))):
        raise KerastuneError(
            f"output dir {path!r}: not every process sees process 0's run folder; "
            "--output-dir must be on storage that every process sees (the same disk, "
            "NFS, a mounted bucket)")
    scratch = tempfile.mkdtemp(prefix=f"kerastune-process{process_index()}-")
    try:
        copy = os.path.join(scratch, os.path.basename(path))
        shutil.copytree(path, copy, ignore=shutil.ignore_patterns(LOCK_FILE))
    finally:
        _all_agree(True)
    run = RunDir(copy)
    run.scratch = scratch
    return run, path


def _share_path(path):
    """`path` as process 0 has it (broadcast); None where process 0 passed None."""
    import numpy as np
    from jax.experimental import multihost_utils

    data = np.zeros(_PATH_BYTES, np.uint8)
    if path is not None:
        raw = os.fsencode(path)[:_PATH_BYTES - 1]
        data[:len(raw)] = np.frombuffer(raw, np.uint8)
        data[_PATH_BYTES - 1] = 1
    data = np.asarray(multihost_utils.broadcast_one_to_all(data))
    if not data[_PATH_BYTES - 1]:
        return None
    return os.fsdecode(bytes(data[:-1]).rstrip(b"\0"))


def _all_agree(ok):
    """Whether `ok` holds in every process (every process learns it)."""
    import numpy as np
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.array([1 if ok else 0], np.int32))
    return bool(np.all(flags))
