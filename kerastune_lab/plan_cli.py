"""`kerastune plan RECIPE [KEY=VALUE ...]`: the command of `plan.py`'s
memory plan (a module of its own: it loads the recipe through `recipe.py`,
which itself plans a run first through `plan.py`)."""

import argparse

import click

from kerastune_lab.errors import KerastuneError
from kerastune_lab.plan import is_plannable, report_text


@click.command("plan", context_settings={"ignore_unknown_options": True})
@click.argument("recipe")
@click.option("--backend", "-b", default=None, metavar="{jax,tensorflow,torch}",
              help="The run's backend (the plan compiles with jax and says so).")
@click.option("--smoke", is_flag=True, help="The recipe's --smoke settings.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def plan(recipe, backend, smoke, overrides):
    """Plan RECIPE's memory with KEY=VALUE overrides: its train step compiled
    on abstract weights from the preset's config.json (the only file of it
    downloaded)."""
    from kerastune_lab import backend as backend_lib
    from kerastune_lab import recipe_file, shipped

    for item in overrides:
        if item.startswith("-"):
            raise click.UsageError(f"unknown option {item!r}")
    run_backend = backend_lib.resolve_backend(backend)
    path, _ = shipped.resolve(recipe)
    source = recipe_file.read(path)
    recipe_file.check_overrides(source, overrides, smoke)
    if not is_plannable(argparse.Namespace(**source.fields)):  # before jax loads
        raise KerastuneError(f"recipe {source.name!r}: the plan covers causal LM recipes "
                             "(preset, sequence_length, batch_size)")
    backend_lib.use_backend("jax")
    from kerastune_lab.recipe import load_recipe, resolve_config

    module = load_recipe(recipe)
    config = resolve_config(module, smoke, overrides)
    click.echo(report_text(module, config, run_backend))
