"""Load a recipe file and run it: what `kerastune run` does, importable.

A recipe is a Python file with
    Config          a dataclass: typed, commented defaults
    main(config, run)   data, model, training, evaluation, saving
    KIND            optional: the kind of run it makes (a key of
                    `runs.KINDS`, e.g. "image_classifier"), recorded in the
                    run folder when it is created (`RunDir.kind`)
    smoke()         optional: returns the overrides of `--smoke` (a tiny
                    preset and small generated data in the real layout)

`run_recipe` applies `--smoke`, then the command line's `key=value`
overrides, makes the run directory, writes `config.json`, chooses the run's
settings (`run.settings`: precision, jit_compile, TensorBoard folder;
`training.run_settings`), calls `main` under that precision, plots the
training curves and marks the run finished.

An unfinished run directory of the same recipe, backend and config is
resumed: `main` runs again, and its `resume.Backup` callbacks restore the
training state where the backup left it. SIGINT and SIGTERM stop the run
after a backup (`resume.handle_interrupts`); the error says how to resume.
"""

import dataclasses
import datetime
import importlib.util
import logging
import os
import shlex
import shutil
import sys

from kerastune_lab import config as config_lib
from kerastune_lab import errors, processes, shipped
from kerastune_lab.errors import KerastuneError
from kerastune_lab.runs import (
    CONFIG,
    KINDS,
    MARKER,
    RunDir,
    default_run_dir,
    package_versions,
)

log = logging.getLogger("kerastune_lab")


def load_recipe(path):
    """Imports a recipe (a file, or the name of a shipped one) as a module and
    checks it has Config and main."""
    path, _ = shipped.resolve(path)
    if not os.path.isfile(path):
        raise KerastuneError(f"recipe file {path!r} does not exist")
    if not path.endswith(".py"):
        raise KerastuneError(f"recipe file {path!r}: expected a Python file ending in .py")
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"kerastune_recipe_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not dataclasses.is_dataclass(getattr(module, "Config", None)):
        raise KerastuneError(f"recipe file {path!r} has no Config dataclass")
    if not callable(getattr(module, "main", None)):
        raise KerastuneError(f"recipe file {path!r} has no main(config, run) function")
    kind = getattr(module, "KIND", None)
    if kind is not None and kind not in KINDS:
        raise KerastuneError(f"recipe file {path!r}: KIND = {kind!r}: expected one of "
                             f"{', '.join(KINDS)}")
    module.RECIPE_NAME = name
    return module


def resolve_config(module, smoke=False, overrides=()):
    """Returns the recipe's config with `--smoke` then `overrides` applied."""
    cfg = module.Config()
    if smoke:
        if not callable(getattr(module, "smoke", None)):
            raise KerastuneError(f"recipe {module.RECIPE_NAME!r} has no smoke() settings")
        cfg = config_lib.apply_overrides(cfg, module.smoke())
    return config_lib.apply_overrides(cfg, list(overrides))


def _add_log_file(run):
    handler = logging.FileHandler(run.log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("kerastune_lab")
    if logger.level == logging.NOTSET:  # called from Python: log.txt gets the INFO lines too
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return handler


def resume_command(path, backend, smoke, overrides, output_dir):
    """The `kerastune run` command line that resumes a run, shell-quoted
    (`path` as the user named the recipe: a shipped name or a file)."""
    words = ["kerastune", "run", os.fspath(path), "--backend", backend]
    words += ["--smoke"] if smoke else []
    words += ["--output-dir", os.fspath(output_dir), *overrides]
    return shlex.join(words)


def run_recipe(path, smoke=False, overrides=(), output_dir=None, overwrite=False,
               plan_first=True):
    """Runs a recipe end to end and returns its RunDir.

    `path` is a recipe file or the name of a shipped recipe
    (`run_recipe("cats_vs_dogs", smoke=True)`).

    The backend must already be chosen (`kerastune_lab.backend.use_backend`).
    An unfinished run in `output_dir` of the same recipe, backend and config
    is resumed from its backup. With `plan_first`, a causal LM recipe on a
    GPU or TPU (jax) is planned before anything is written or downloaded
    but the preset's config.json (`plan.plan_before_run`), and refused when
    its train step does not fit the device.
    """
    named = path
    path, _ = shipped.resolve(path)
    module = load_recipe(path)
    # The config with and without the overrides (the run's identity holds
    # both), --smoke's settings made once (they may generate data and say so).
    defaults = resolve_config(module, smoke)
    cfg = config_lib.apply_overrides(defaults, list(overrides))
    import keras

    from kerastune_lab import resume

    if processes.process_count() > 1 and getattr(cfg, "distribute", "none") == "none":
        # Each process would train a model of its own on its rows of the batches.
        raise KerastuneError(
            f"recipe {module.RECIPE_NAME!r} runs in {processes.process_count()} processes: "
            + ("pass distribute=data to train one model over their devices"
               if hasattr(cfg, "distribute") else
               "it has no distribute key, so it runs in one process only"))
    if plan_first:
        _plan_first(module, cfg)
    identity = {"recipe": module.RECIPE_NAME, "backend": keras.backend.backend(),
                "config": config_lib.to_dict(cfg),
                "defaults": config_lib.to_dict(defaults)}
    if processes.process_index():  # not process 0: a private copy of its run folder
        run, shared = processes.follow(MARKER)
    else:
        try:
            run = RunDir.create(output_dir or default_run_dir(module.RECIPE_NAME),
                                overwrite=overwrite, resume=identity,
                                kind=getattr(module, "KIND", None))
        except BaseException:
            processes.lead(None)
            raise
        shared = run.path
    handler = _add_log_file(run)
    command = resume_command(named, identity["backend"], smoke, overrides, shared)
    told = bool(run.scratch)  # whether the other processes have the run's path
    try:
        if run.resumed:
            log.info("resuming the unfinished run in %s", run.path)
            resumed = run.read_json(CONFIG).get("resumed", [])
            run.update_json(CONFIG, resumed=resumed + [{
                "command": sys.argv,
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}])
        elif not run.scratch:
            _write_config(run, module, path, smoke, overrides, cfg, identity["backend"])
        if not told:  # process 0, config.json written: the others copy the folder now
            told = processes.lead(run.path) or True
        with resume.handle_interrupts():
            if hasattr(cfg, "seed"):
                keras.utils.set_random_seed(cfg.seed)
            from kerastune_lab.training import dtype_policy, run_settings

            # precision, jit_compile, TensorBoard folder: chosen once, handed down
            run.settings = run_settings(cfg, run)
            with dtype_policy(run.settings.precision):
                module.main(cfg, run)
            if os.path.exists(run.history_path):
                from kerastune_lab.evaluate import plot_history
                from kerastune_lab.runs import read_csv

                plot_history(read_csv(run.history_path), run.training_curves_path)
            run.finish()
    except resume.Interrupted as e:
        e.resume_command = command
        # In log.txt only: the CLI prints it on stderr. The run and its
        # backup stay for the resume.
        _log_to_file(handler, e)
        raise
    except Exception as e:
        if not told:
            processes.lead(None)
        # Bad input found late, a download that failed, a loss not finite, a
        # crash: the line goes into log.txt; a run with something trained is
        # marked FAILED (line and exit code), one with nothing is removed.
        line = _log_to_file(handler, e, tuple(config_lib.to_dict(cfg)))
        logging.getLogger("kerastune_lab").removeHandler(handler)
        handler.close()
        try:
            if not run.scratch and run.fail("kerastune: " + line, errors.exit_code(e)):
                log.info("the run directory %s is kept, marked FAILED", run.path)
        except OSError:  # e.g. the disk that failed the run: the error says it
            pass
        raise
    finally:
        logging.getLogger("kerastune_lab").removeHandler(handler)
        handler.close()
        run.release()  # the run folder's lock (runs.RunLock), held since RunDir.create
        if run.scratch:  # another process's copy: process 0 wrote the run
            shutil.rmtree(run.scratch, ignore_errors=True)
    return RunDir(shared) if run.scratch else run


def _plan_first(module, cfg):
    """`plan.plan_before_run` in the precision the run will choose (where
    the recipe has a `precision` key): raises the one-line refusal (exit 2)
    when a causal LM's step does not fit this GPU or TPU; nothing elsewhere."""
    from kerastune_lab import plan

    accelerator = plan.detected_accelerator() if plan.is_plannable(cfg) else None
    if accelerator is None:
        return
    precision = None
    if hasattr(cfg, "precision"):
        from kerastune_lab import backend

        precision, _ = backend.choose_precision(cfg.precision, backend.accelerators(),
                                                getattr(cfg, "quantize", "none"))
    plan.plan_before_run(module, cfg, accelerator, precision=precision)


def _log_to_file(handler, exc, config_keys=()):
    """Writes the line `kerastune` prints for `exc` into log.txt; returns it."""
    line = errors.error_line(exc, "run", config_keys)
    handler.handle(logging.LogRecord(log.name, logging.ERROR, __file__, 0, "%s", (line,), None))
    return line


def _write_config(run, module, path, smoke, overrides, cfg, backend):
    run.write_json(CONFIG, {
        "recipe": module.RECIPE_NAME,
        "recipe_path": os.path.abspath(path),
        "backend": backend,
        "smoke": smoke,
        "overrides": list(overrides),
        "config": config_lib.to_dict(cfg),
        "versions": package_versions(),
        "command": sys.argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    })
