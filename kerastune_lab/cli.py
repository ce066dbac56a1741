"""The `kerastune` command: a thin launcher over the library.

    kerastune run RECIPE [--backend B] [--smoke] [--output-dir DIR] [KEY=VALUE ...]
    kerastune predict RUN_DIR IMAGE ...
    kerastune info
    kerastune presets [KIND]

The backend is chosen before anything imports keras. Exit codes: 0 done,
2 bad input (usage, config, data: one line, no traceback), 1 anything else.
"""

import logging
import sys

import click

from kerastune_lab import backend as backend_lib
from kerastune_lab.errors import KerastuneError

BACKEND_OPTION = click.option(
    "--backend", "-b", default=None, metavar="{jax,tensorflow,torch}",
    help="Keras backend. Defaults to $KERAS_BACKEND, then jax.")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_logging():
    logger = logging.getLogger("kerastune_lab")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("kerastune: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def _select(flag):
    name = backend_lib.use_backend(flag)
    backend_lib.hide_gpus_from_tensorflow()
    return name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Fine-tune pre-trained KerasHub models on JAX, TensorFlow or PyTorch."""
    _setup_logging()


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("recipe", type=click.Path(dir_okay=False))
@BACKEND_OPTION
@click.option("--smoke", is_flag=True,
              help="Tiny offline preset, small generated data, short schedule.")
@click.option("--output-dir", "-o", default=None, type=click.Path(file_okay=False),
              help="Run directory. Defaults to runs/<recipe>-<UTC time>.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def run(recipe, backend, smoke, output_dir, overwrite, overrides):
    """Run RECIPE (a recipe file) with KEY=VALUE config overrides."""
    for item in overrides:
        if item.startswith("-"):
            raise click.UsageError(f"unknown option {item!r}")
    _select(backend)
    from kerastune_lab.recipe import run_recipe

    result = run_recipe(recipe, smoke=smoke, overrides=overrides,
                        output_dir=output_dir, overwrite=overwrite)
    click.echo(result.path)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@BACKEND_OPTION
def predict(run_dir, images, backend):
    """Print the label and probability of each IMAGE with a run's model."""
    _select(backend)
    from kerastune_lab.predict import predict_images

    for path, label, score in predict_images(run_dir, images):
        click.echo(f"{path}\t{label}\t{score:.4f}")


@cli.command()
@BACKEND_OPTION
def info(backend):
    """Print the backend, package versions and the devices Keras sees."""
    name = _select(backend)
    import keras
    import keras_hub

    click.echo(f"backend: {name}")
    click.echo(f"keras: {keras.__version__}")
    click.echo(f"keras-hub: {keras_hub.__version__}")
    click.echo(f"{backend_lib.BACKENDS[name][0]}: {backend_lib.framework_version(name)}")
    click.echo(f"devices: {', '.join(backend_lib.list_devices())}")


TASKS = {
    "image_classifier": "ImageClassifier",
    "text_classifier": "TextClassifier",
    "causal_lm": "CausalLM",
}


@cli.command()
@click.argument("kind", required=False, type=click.Choice(list(TASKS)))
@BACKEND_OPTION
def presets(kind, backend):
    """List KerasHub preset names, for one KIND of task or all."""
    _select(backend)
    import keras_hub

    for task in [kind] if kind else TASKS:
        names = sorted(getattr(keras_hub.models, TASKS[task]).presets)
        click.echo(f"{task}:")
        for name in names:
            click.echo(f"  {name}")


def main(argv=None):
    """Console entry point: maps errors to exit codes 2 (bad input) and 1."""
    try:
        code = cli.main(args=argv, prog_name="kerastune", standalone_mode=False)
    except KerastuneError as e:
        click.echo(f"kerastune: error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("kerastune: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
