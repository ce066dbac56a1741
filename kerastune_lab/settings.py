"""Run settings: what the runner decides for a run, handed down explicitly.

`kerastune run` (`recipe.run_recipe`) builds one `RunSettings` from the
recipe's config, the backend and the accelerator (`training.run_settings`),
sets Keras' dtype policy from it around the recipe's `main` (and puts the
previous one back), and hands it to the recipe as `run.settings`. The recipe
passes what it needs on as arguments:

    compile_classifier(model, config.learning_rate, jit_compile=run.settings.jit_compile)
    fit_resumable(model, train, epochs, backup, tensorboard=run.settings.tensorboard)

Nothing reads a setting from a module global, so a notebook that makes the
same calls with the same arguments gets the same run. A `RunDir` made by
hand carries `RunSettings()`: Keras' current dtype policy, "auto"
jit_compile, no TensorBoard logs.

This module imports nothing heavy: `runs.RunDir` holds a `RunSettings`
before Keras loads.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The settings of one run, chosen once by the runner.

    Args:
        precision: str or None. The Keras dtype policy the run computes in
            ("float32", "mixed_bfloat16", "mixed_float16"), chosen from the
            config's `precision` key; None: Keras' current policy.
        jit_compile: bool or "auto". The `jit_compile` of every
            `model.compile` of the run (`training.choose_jit_compile` of the
            config's `jit_compile` key, on the run's backend).
        tensorboard: str or None. The folder `fit_resumable` writes
            TensorBoard logs into (`<run>/tensorboard`); None: no logs.
    """

    precision: str | None = None
    jit_compile: bool | str = "auto"
    tensorboard: str | None = None
