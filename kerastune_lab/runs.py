"""Run directories: where every result of a run is written, and the one
place that names its files: a constant for each (`CONFIG`, ...) and a
`RunDir` property for its path (`run.config_path`, ...). Code elsewhere uses
these names, never a string of its own (tests/test_run_layout.py checks).

    runs/<recipe>-<UTC time>/
      kerastune_run.json  MARKER: written first: this folder is a run of this
                      toolkit (recipe, kind, time, version); only such a folder
                      is resumed or replaced by --overwrite (`is_run`); its
                      "kind" is the run's kind (`RunDir.kind`, `KINDS`)
      config.json     CONFIG: resolved config, backend, package versions, command
      log.txt         LOG: the run's log lines
      history.csv     HISTORY: one row per epoch (with its phase)
      training_curves.png  TRAINING_CURVES: plotted from history.csv
      tensorboard/    TENSORBOARD_DIR: TensorBoard logs (where the recipe asks)
      backup/         BACKUP_DIR: the training backup, while unfinished (`resume`)
      model/          MODEL_DIR: the trained model as a KerasHub preset
                      (`from_preset`; task.json names its task class, SHA256SUMS
                      the SHA-256 of its weights, checked when it is loaded)
      adapter.lora.h5 ADAPTER: a LoRA run's adapter, instead of model/
      labels.json     LABELS: class names, index order (classifiers)
      chat.json       CHAT: the chat template the model was tuned with
      metrics.json    METRICS: final figures
      report.md       REPORT: the figures, plots and samples, for people
      classification_report.json, .txt   CLASSIFICATION_REPORT(_TEXT): per class
      confusion_matrix.json, .png        CONFUSION_MATRIX(_PLOT)
      roc.png, pr.png                    ROC_PLOT, PR_PLOT: the curves
      threshold.json  THRESHOLD: the decision threshold (a target recall)
      eval-<name>/    `eval_path(name)`: an evaluation by `kerastune evaluate`,
                      itself a run folder: evaluation.json (EVALUATION: run,
                      data, time), metrics.json, report.md and the files of
                      `evaluate_classifier`
      FINISHED        written last: the run completed
      FAILED          the run stopped on an error: its line and the exit code
                      (kept only where something was trained: see `RunDir.fail`)
      .lock           LOCK_FILE: while a process writes the run: an OS lock on it
                      (with the PID) keeps a second process out (`RunLock`)
    runs/<recipe>-<UTC time>.replaced/   REPLACED: a run set aside by
                      --overwrite until the new one finishes

Every file is written to a temporary name in the same folder and renamed into
place (`os.replace` is atomic on POSIX and Windows), so a crash never leaves a
half-written file; the model folder is saved whole, then renamed.
"""

import datetime
import importlib.metadata
import json
import os
import shutil

from kerastune_lab.atomic import (  # noqa: F401  (part of this module's API)
    _jsonable,
    atomic_path,
    normal_path,
    read_csv,
    write_csv,
    write_json,
    write_sums,
    write_text,
)
from kerastune_lab.errors import KerastuneError
from kerastune_lab.run_guard import (  # noqa: F401  (part of this module's API)
    BACKUP_DIR,
    CONFIG,
    EVALUATION,
    FAILED,
    FINISHED,
    LOCK_FILE,
    LOG,
    MARKER,
    MIN_FREE_MB,
    RunLock,
    _read_json,
    _resumable,
    check_not_foreign,
    check_not_in_use,
    check_writable,
    holds_files,
    is_run,
    lock_holder,
)
from kerastune_lab.settings import RunSettings

# The files and folders of a run (the layout above; CONFIG, LOG, EVALUATION,
# FINISHED, FAILED, BACKUP_DIR, LOCK_FILE and MARKER come from `run_guard`).
HISTORY = "history.csv"
TRAINING_CURVES = "training_curves.png"
TENSORBOARD_DIR = "tensorboard"
MODEL_DIR = "model"
MODEL_TASK = "task.json"  # in model/: KerasHub's record of the task class
ADAPTER = "adapter.lora.h5"
LABELS = "labels.json"
CHAT = "chat.json"
METRICS = "metrics.json"
REPORT = "report.md"
CLASSIFICATION_REPORT = "classification_report.json"
CLASSIFICATION_REPORT_TEXT = "classification_report.txt"
CONFUSION_MATRIX = "confusion_matrix.json"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
ROC_PLOT = "roc.png"
PR_PLOT = "pr.png"
THRESHOLD = "threshold.json"
EVAL_PREFIX = "eval-"  # eval-<name>/: an evaluation of the run
REPLACED = ".replaced"  # suffix of a run set aside by --overwrite

# The kinds of run: what a recipe declares (its `KIND`), recorded in MARKER
# when the run is created and read back by `RunDir.kind`.
KINDS = {
    "image_classifier": "an image-classification run",
    "text_classifier": "a text-classification run",
    "causal_lm": "a chat run (a causal LM)",
    "lora": "a LoRA run",
}
# How the runs that did not record a kind are told apart by their model's
# task class (model/task.json), as `kerastune export` once did.
_TASK_KINDS = (("CausalLM", "causal_lm"), ("ImageClassifier", "image_classifier"),
               ("TextClassifier", "text_classifier"))
PACKAGES = ("keras", "keras-hub", "tensorflow", "jax", "jaxlib", "torch",
            "tensorflow-datasets", "kerastune_lab")


def package_versions():
    """Returns {package: version} for the packages a run depends on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def default_run_dir(recipe_name, root="runs"):
    """Returns `runs/<recipe>-<UTC time>`."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{recipe_name}-{stamp}")


def _in_run(name):
    """A `RunDir` property: the path of the run's file or folder `name`."""
    return property(lambda run: run.file(name), doc=f"The path of the run's {name}.")


def _lock_run(path):
    """`RunLock.acquire` of an existing run folder; None where the lock file cannot be
    made (a read-only folder: `check_writable` says so), unless another process holds it."""
    try:
        return RunLock.acquire(path)
    except OSError:
        check_not_in_use(path)
        return None


class RunDir:
    """A run directory. Create one with `RunDir.create(path)`.

    Example:

    ```python
    run = RunDir.create("runs/mine", kind="image_classifier")
    run.write_json(METRICS, {"val_accuracy": 0.93})  # at run.metrics_path
    run.finish()
    ```
    """

    # Where each file of the run is (the module's layout).
    marker_path = _in_run(MARKER)
    config_path = _in_run(CONFIG)
    log_path = _in_run(LOG)
    history_path = _in_run(HISTORY)
    training_curves_path = _in_run(TRAINING_CURVES)
    tensorboard_path = _in_run(TENSORBOARD_DIR)
    backup_path = _in_run(BACKUP_DIR)
    model_path = _in_run(MODEL_DIR)
    adapter_path = _in_run(ADAPTER)
    labels_path = _in_run(LABELS)
    chat_path = _in_run(CHAT)
    metrics_path = _in_run(METRICS)
    report_path = _in_run(REPORT)
    classification_report_path = _in_run(CLASSIFICATION_REPORT)
    classification_report_text_path = _in_run(CLASSIFICATION_REPORT_TEXT)
    confusion_matrix_path = _in_run(CONFUSION_MATRIX)
    confusion_matrix_plot_path = _in_run(CONFUSION_MATRIX_PLOT)
    roc_plot_path = _in_run(ROC_PLOT)
    pr_plot_path = _in_run(PR_PLOT)
    threshold_path = _in_run(THRESHOLD)
    evaluation_path = _in_run(EVALUATION)
    finished_path = _in_run(FINISHED)
    failed_path = _in_run(FAILED)

    def __init__(self, path):
        self.path = normal_path(path)
        self.resumed = False  # an unfinished run, reused by `create(resume=...)`
        self.lock = None  # the `RunLock` of a run made by `create`, until `release`
        # What the runner chose for the run (precision, jit_compile, TensorBoard
        # folder): `training.run_settings` under `kerastune run`, set before main.
        self.settings = RunSettings()
        self._resume_state = None
        self.scratch = None  # another process's private copy (`processes.follow`)

    @property
    def resume_state(self):
        """What the run resumes from (`resume.state.ResumeState`: the backup's phase, epoch
        and step, and history.csv's rows), read once, at the first ask; `resume.Backup`,
        `training.HistoryWriter`, `training.fit_resumable` and `two_phase.Phases` read it."""
        if self._resume_state is None:
            from kerastune_lab.resume.state import ResumeState

            self._resume_state = ResumeState.read(self.file(BACKUP_DIR), self.history_path)
        return self._resume_state

    def __repr__(self):
        return f"RunDir({self.path!r})"

    def file(self, name):
        """The path of the run's file `name` (one of the module's names)."""
        return os.path.join(self.path, name)

    def eval_path(self, name):
        """The folder of the run's evaluation `name` (`kerastune evaluate`)."""
        return self.file(EVAL_PREFIX + name)

    @property
    def finished(self):
        return os.path.exists(self.finished_path)

    @property
    def kind(self):
        """The kind of run, a key of `KINDS` (None where unknown): as recorded
        when the run was created (`create(kind=...)`: the recipe's `KIND`),
        else as told from its files, for a run of an earlier version or one
        created without a kind."""
        marker = _read_json(self.marker_path)
        if isinstance(marker, dict) and marker.get("kind") in KINDS:
            return marker["kind"]
        return self._kind_from_files()

    def _kind_from_files(self):
        """How the commands told the kinds apart before runs recorded them:
        an adapter without a model, a chat template, the config's keys, the
        model's task class."""
        if os.path.isfile(self.adapter_path) and not os.path.isdir(self.model_path):
            return "lora"
        if os.path.isfile(self.chat_path):
            return "causal_lm"
        saved = _read_json(self.config_path)
        config = saved.get("config") if isinstance(saved, dict) else None
        if isinstance(config, dict) and "image_size" in config:
            return "image_classifier"
        if isinstance(config, dict) and "sequence_length" in config:
            return "text_classifier"
        task = _read_json(os.path.join(self.model_path, MODEL_TASK))
        name = task.get("class_name") if isinstance(task, dict) else None
        return next((kind for suffix, kind in _TASK_KINDS
                     if isinstance(name, str) and name.endswith(suffix)), None)

    @classmethod
    def create(cls, path, overwrite=False, min_free_mb=None, resume=None, kind=None):
        """Makes the folder, refusing to reuse one that holds a run, and
        locks it (`RunLock`) until `finish`, `discard` or `release`.

        Checks first that the folder can be written and that its disk has
        `min_free_mb` free (`check_writable`), so a run fails before it
        trains rather than when it saves. A folder that holds files but is
        not a run (`is_run`) is refused, --overwrite or not, and left as it
        is; so is a run that another process holds.

        Args:
            path: str. The folder to create.
            overwrite: bool. Replace a run that is already there (set aside
                until the new one finishes). Defaults to `False`.
            min_free_mb: float or None. Free space the disk must have, in MB.
                Defaults to $KERASTUNE_MIN_FREE_MB, else `MIN_FREE_MB`.
            resume: dict or None. {"recipe", "backend", "config"} of the run
                to make (and "defaults", see `_resumable`): an unfinished run
                of the same ones at `path` is reused (`resumed` is True), one
                of others is an error.
            kind: str or None. The kind of run (a key of `KINDS`), recorded
                in `MARKER` for `kind` to read back.
        """
        if kind is not None and kind not in KINDS:
            raise KerastuneError(f"run kind {kind!r}: expected one of {', '.join(KINDS)}")
        path = normal_path(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise KerastuneError(f"output dir {path!r} exists and is not a folder")
        check_not_foreign(path, overwrite)
        busy = holds_files(path)
        if busy and not overwrite and os.path.exists(os.path.join(path, FINISHED)):
            raise KerastuneError(f"output dir {path!r} already holds a finished run; choose "
                                 "another --output-dir or pass --overwrite")
        held = _lock_run(path) if busy else None  # a run: locked before it is looked into
        try:
            run = cls._create(path, busy, held, overwrite, min_free_mb, resume, kind)
        except BaseException:
            if held is not None:
                held.release()
            raise
        if held is not None and held is not run.lock:
            held.release()  # the lock of the run set aside or removed
        return run

    @classmethod
    def _create(cls, path, busy, held, overwrite, min_free_mb, resume, kind):
        recipe = (resume or {}).get("recipe")
        resumed = bool(busy and not overwrite and resume is not None
                       and _resumable(path, resume))
        if resumed:
            check_writable(path, min_free_mb)
            run = cls(path)
            run.resumed, run.lock = True, held
            if not os.path.exists(run.marker_path):  # a run of an earlier version
                run._write_marker(recipe, kind)
            return run
        if busy and not overwrite:
            what = ("a finished run" if os.path.exists(os.path.join(path, FINISHED))
                    else "an unfinished run")
            raise KerastuneError(
                f"output dir {path!r} already holds {what}; choose another "
                "--output-dir or pass --overwrite"
            )
        check_writable(path, min_free_mb, set_aside=busy)
        replaced = path + REPLACED
        if busy and os.path.lexists(replaced) and not (os.path.isdir(replaced)
                                                       and is_run(replaced)):
            raise KerastuneError(
                f"output dir {path!r} cannot be set aside for --overwrite: {replaced!r} "
                "exists and is not a kerastune run; move it away or choose another "
                "--output-dir")
        if busy and os.path.isdir(replaced) and not os.path.exists(
                os.path.join(path, FINISHED)):
            # The unfinished run of an earlier --overwrite: the finished run
            # it replaced stays set aside.
            shutil.rmtree(path)
        elif busy:
            # Set aside, not deleted, until the new run finishes (`finish`).
            shutil.rmtree(replaced, ignore_errors=True)  # a run (checked above)
            os.replace(path, replaced)
            if held is not None:  # its lock file went with it
                held.path = os.path.join(replaced, LOCK_FILE)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise KerastuneError(f"output dir {path!r} cannot be created: {e.strerror}")
        if not os.access(path, os.W_OK):
            raise KerastuneError(f"output dir {path!r} is not writable")
        run = cls(path)
        run.lock = RunLock.acquire(path)  # refused if another process took it meanwhile
        try:
            run._write_marker(recipe, kind)
        except BaseException:
            run.discard()  # nothing here yet: put back the run it replaced, if any
            raise
        return run

    def _write_marker(self, recipe=None, kind=None):
        from kerastune_lab import __version__

        # Atomic, not synced: its being there is what counts, and the run's
        # first synced file (config.json) is the one a full disk names.
        write_json(self.marker_path, {
            "recipe": recipe, "kind": kind,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "kerastune_lab": __version__}, sync=False)

    def release(self):
        """Lets other processes use the folder (`RunLock`); idempotent.
        `run_recipe` calls it as it ends, whatever the end."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @classmethod
    def open(cls, path):
        """Opens a finished run directory for reading (predict, evaluate)."""
        path = normal_path(path)
        if not os.path.isdir(path):
            raise KerastuneError(f"run dir {path!r} does not exist")
        if not os.path.exists(os.path.join(path, CONFIG)):
            raise KerastuneError(f"run dir {path!r} has no {CONFIG}: not a kerastune run")
        return cls(path)

    def write_json(self, name, obj):
        write_json(self.file(name), obj)

    def write_text(self, name, text):
        write_text(self.file(name), text)

    def write_csv(self, name, rows):
        write_csv(self.file(name), rows)

    def read_json(self, name):
        with open(self.file(name), encoding="utf-8") as f:
            return json.load(f)

    def update_json(self, name, **values):
        """Adds keys to a JSON file (creating it), atomically."""
        data = self.read_json(name) if os.path.exists(self.file(name)) else {}
        data.update(values)
        self.write_json(name, data)
        return data

    def save_model(self, model, name=MODEL_DIR):
        """Saves a KerasHub task as a preset folder, atomically (SHA256SUMS: `check_weights`)."""
        with atomic_path(self.file(name)) as tmp:
            model.save_to_preset(tmp)
            write_sums(tmp)

    @property
    def trained(self):
        """Whether training left something here: a backup, a history or a model."""
        return any(os.path.exists(self.file(name))
                   for name in (BACKUP_DIR, HISTORY, MODEL_DIR))

    def fail(self, line, exit_code):
        """Records a run that stopped on an error, or removes it.

        A run with something trained in it (`trained`), or an unfinished run
        that was being resumed, is kept and marked with `FAILED` (the error
        line, then `exit code: N`): the same command resumes it from its
        backup. A new run with nothing trained is removed, and the run it
        replaced (`--overwrite`) is put back: it would only look like a run.

        Returns:
            bool. True when the folder was kept.
        """
        if not (self.trained or self.resumed):
            self.discard()
            return False
        self.write_text(FAILED, f"{line}\nexit code: {exit_code}\n")
        return True

    def finish(self):
        """Marks the run finished; drops its training backup, a `FAILED` mark
        of an earlier attempt and the run it replaced, if any."""
        if os.path.exists(self.file(FAILED)):
            os.remove(self.file(FAILED))
        self.write_text(FINISHED, datetime.datetime.now(datetime.timezone.utc).isoformat() + "\n")
        shutil.rmtree(self.file(BACKUP_DIR), ignore_errors=True)
        if is_run(self.path + REPLACED):  # only a run set aside, never a folder of the user's
            shutil.rmtree(self.path + REPLACED, ignore_errors=True)
        self.release()  # finished: nothing more is written

    def discard(self):
        """Removes this unfinished run and puts back the run it replaced."""
        shutil.rmtree(self.path, ignore_errors=True)
        if os.path.isdir(self.path + REPLACED) and is_run(self.path + REPLACED):
            os.replace(self.path + REPLACED, self.path)
        self.release()

