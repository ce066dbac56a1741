"""The `kerastune` command: a thin launcher over the library.

    kerastune recipes
    kerastune run RECIPE [--backend B] [--smoke] [--output-dir DIR] [KEY=VALUE ...]
    kerastune run RECIPE --help
    kerastune plan RECIPE [--smoke] [KEY=VALUE ...]      (will it fit? plan.py)
    kerastune cp RECIPE [DEST]
    kerastune predict RUN_DIR IMAGE ...
    kerastune predict RUN_DIR --text "A masterpiece." [--text ...]
    kerastune chat RUN_DIR [--sampler top_p --temperature 0.8 --max-length 128 ...]
    kerastune chat --preset PRESET --adapter FILE.lora.h5 [...]
    kerastune merge RUN_DIR --output DIR
    kerastune export RUN_DIR --format hf|peft|keras|serving|gguf|gguf-lora -o DIR [...]
    kerastune evaluate RUN_DIR --data FOLDER [--name NAME]
    kerastune info
    kerastune presets [KIND]
    kerastune --version

RECIPE is the name of a shipped recipe (`kerastune recipes` lists them) or
the path of a recipe file (`./my_recipe.py`, `recipes/lora_chat.py` in a
checkout).

The backend is chosen before anything imports keras. Exit codes: 0 done,
2 bad input (usage, config, data: one line, no traceback), 1 anything else,
130/143 interrupted by SIGINT/SIGTERM (a backup is written; the message
says how to resume).
"""

import logging
import sys

import click

from kerastune_lab import backend as backend_lib
from kerastune_lab import processes, run_files, text_checks
from kerastune_lab.cli_common import BACKEND_OPTION, select_backend, setup_logging
from kerastune_lab.errors import (
    DownloadFailed,
    Interrupted,
    KerastuneError,
    RunStopped,
    resource_error_message,
)
from kerastune_lab.recipe_file import config_keys as _recipe_config_keys


def _version_line(ctx, param, value):
    """`kerastune --version`: the toolkit, keras, keras-hub and the backends,
    read from the installed metadata (nothing imported: instant)."""
    if not value or ctx.resilient_parsing:
        return
    versions = backend_lib.installed_versions()
    click.echo(f"kerastune_lab {versions['kerastune_lab']} (keras {versions['keras']}, "
               f"keras-hub {versions['keras-hub']}; backend {backend_lib.default_backend()}; "
               + ", ".join(f"{name} {versions[name]}" for name in backend_lib.FRAMEWORKS)
               + ")")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_version_line, help="Show the versions of the toolkit, keras, "
              "keras-hub and the backends, and exit.")
def cli():
    """Fine-tune pre-trained KerasHub models on JAX, TensorFlow or PyTorch."""
    setup_logging()


@cli.command(context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("recipe", required=False)
@BACKEND_OPTION
@click.option("--smoke", is_flag=True,
              help="Tiny offline preset, small generated data, short schedule.")
@click.option("--output-dir", "-o", default=None, type=click.Path(file_okay=False),
              help="Run directory. Defaults to runs/<recipe>-<UTC time>. An unfinished "
                   "run there with the same config is resumed.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--plan/--no-plan", "plan_first", default=True, show_default=True,
              help="On a GPU or TPU (jax), a chat or LoRA recipe's memory plan first: "
                   "refused before any download when a step does not fit.")
@click.option("--coordinator", default=None, metavar="HOST:PORT",
              help="Several processes (hosts), one run (jax): process 0's address and a "
                   "free port, the same on every process; `auto` on a TPU pod slice or "
                   "SLURM. Or $KERAS_DISTRIBUTION_JOB_ADDRESSES.")
@click.option("--num-processes", default=None, type=int,
              help="With --coordinator: how many processes. Or "
                   "$KERAS_DISTRIBUTION_NUM_PROCESSES.")
@click.option("--process-id", default=None, type=int,
              help="With --coordinator: this process, 0 to N-1 (0 writes the run folder). "
                   "Or $KERAS_DISTRIBUTION_PROCESS_ID.")
@click.option("--connect-timeout", default=None, type=float,
              help="Seconds for every process to join, else exit 2. Default 300, or "
                   "$KERASTUNE_CONNECT_TIMEOUT.")
@click.option("--help", "-h", "show_help", is_flag=True,
              help="Show this message; with RECIPE, its launch lines and config keys.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(ctx, recipe, backend, smoke, output_dir, overwrite, plan_first, coordinator,
        num_processes, process_id, connect_timeout, show_help, overrides):
    """Run RECIPE with KEY=VALUE config overrides.

    RECIPE is a shipped recipe's name (`kerastune recipes` lists them) or
    the path of a recipe file. `kerastune run RECIPE --help` lists the
    recipe's launch lines and its config keys with their types, defaults
    and comments.
    """
    from kerastune_lab import recipe_file, shipped

    if show_help:
        text = (recipe_file.help_text(recipe_file.read(shipped.resolve(recipe)[0]))
                if recipe is not None else None)
        click.echo(ctx.get_help())
        if text:
            click.echo("\n" + text)
        return
    if recipe is None:
        raise click.UsageError("missing argument RECIPE (a shipped recipe's name, e.g. "
                               "cats_vs_dogs, or a recipe file; `kerastune recipes` lists them)")
    for item in overrides:
        if item.startswith("-"):
            raise click.UsageError(f"unknown option {item!r}")
    # What can be checked without Keras, before it loads (seconds): the
    # recipe file, the keys, types and ranges of the overrides, a data=
    # path, the run folder. The backend name first, as it is the cheapest.
    name = backend_lib.resolve_backend(backend)
    several = processes.from_flags(coordinator, num_processes, process_id, connect_timeout)
    if several is not None:
        processes.check_backend(name)
    path, _ = shipped.resolve(recipe)
    recipe_file.precheck(path, overrides, smoke=smoke, output_dir=output_dir,
                         overwrite=overwrite)
    select_backend(backend)
    if several is not None:
        processes.initialize(several, name)
    from kerastune_lab.recipe import run_recipe

    result = run_recipe(recipe, smoke=smoke, overrides=overrides,
                        output_dir=output_dir, overwrite=overwrite, plan_first=plan_first)
    click.echo(result.path)


@cli.command("recipes")
def list_recipes():
    """List the shipped recipes, one line each (run one with `kerastune run NAME`)."""
    from kerastune_lab import shipped

    names = shipped.names()
    width = max(map(len, names))
    for name in names:
        click.echo(f"{name:<{width}}  {shipped.summary(name)}")


@cli.command("cp")
@click.argument("recipe")
@click.argument("dest", required=False)
def copy_recipe(recipe, dest):
    """Copy the shipped RECIPE to DEST (a new .py file, or a folder; defaults
    to ./RECIPE.py) to edit it, then run the copy: `kerastune run ./RECIPE.py`."""
    from kerastune_lab import shipped

    click.echo(shipped.copy(recipe, dest))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.argument("images", nargs=-1)
@click.option("--text", "-t", "texts", multiple=True,
              help="A text to classify (text runs); repeat for more.")
@BACKEND_OPTION
def predict(run_dir, images, texts, backend):
    """Print the label and probability of each IMAGE, or of each --text, with a run's model.

    For --text, one line a text: [{"label": ..., "score": ...}] as JSON.
    """
    if bool(images) == bool(texts):
        raise KerastuneError(
            f"predict {run_dir}: give image files or --text, not both" if images else
            f"predict {run_dir}: nothing to predict: give image files or --text TEXT "
            "(kerastune predict RUN_DIR IMAGE ...)")
    text_checks.check_texts(texts)  # what Keras would fail on, before it loads
    run_files.check_run(run_dir)
    select_backend(backend)
    if texts:
        import json

        from kerastune_lab.classifier import load_classifier

        classifier = load_classifier(run_dir)
        for text in texts:
            click.echo(json.dumps(classifier(text)))
        return
    from kerastune_lab.predict import predict_images

    for path, label, score in predict_images(run_dir, images):
        click.echo(f"{path}\t{label}\t{score:.4f}")


@cli.command()
@click.argument("run_dir", type=click.Path(), required=False)
@click.option("--adapter", default=None, type=click.Path(),
              help="A LoRA adapter file (.lora.h5) or peft adapter folder, instead of RUN_DIR.")
@click.option("--preset", default=None,
              help="The base preset under a LoRA adapter. Defaults to the one it records.")
@click.option("--sampler", default="top_p", show_default=True,
              type=click.Choice(["greedy", "top_k", "top_p", "beam"]),
              help="KerasHub sampler.")
@click.option("--temperature", default=0.8, show_default=True, type=float,
              help="Divides the logits; lower is more predictable.")
@click.option("--top-k", default=50, show_default=True, type=int,
              help="Tokens kept by top_k (and the cap of top_p).")
@click.option("--top-p", default=0.9, show_default=True, type=float,
              help="Probability mass kept by top_p.")
@click.option("--num-beams", default=4, show_default=True, type=int, help="Beams of beam.")
@click.option("--max-length", default=128, show_default=True, type=int,
              help="Most tokens of prompt plus reply.")
@click.option("--seed", default=None, type=int, help="Seed of the random samplers.")
@BACKEND_OPTION
def chat(run_dir, adapter, preset, sampler, temperature, top_k, top_p, num_beams, max_length,
         seed, backend):
    """Chat with the model of a chat run (e.g. the sarcastic_chat recipe), or with
    a LoRA run or adapter (the lora_chat recipe: the base, quantized as
    recorded, with the adapter on top).

    In a terminal: an interactive prompt (Ctrl-D ends). With standard input
    from a pipe: one prompt a line, one reply a line (newlines in a reply
    become spaces; a blank line gets a blank reply).
    """
    if (run_dir is None) == (adapter is None):
        raise click.UsageError("give RUN_DIR or --adapter FILE, not both" if adapter
                               else "give RUN_DIR or --adapter FILE")
    run_files.check_run(run_dir)  # its files, before Keras loads; None with --adapter
    select_backend(backend)
    from kerastune_lab.generate import load_chat_generator

    generator = load_chat_generator(run_dir, sampler=sampler, max_length=max_length,
                                    adapter=adapter, preset=preset,
                                    temperature=temperature, top_k=top_k, top_p=top_p,
                                    num_beams=num_beams, seed=seed)
    if not sys.stdin.isatty():
        for _, prompt in text_checks.stdin_lines(sys.stdin):
            click.echo(" ".join(generator.reply(prompt).split()) if prompt else "")
            sys.stdout.flush()
        return
    click.echo(f"Chatting with the model in {run_dir or adapter}. Ctrl-D ends.", err=True)
    while True:
        try:
            prompt = text_checks.read_prompt("you> ")
        except EOFError:
            click.echo("", err=True)
            return
        if not prompt:
            continue
        try:
            click.echo(f"bot> {generator.reply(text_checks.check_text(prompt, 'prompt'))}")
        except KerastuneError as e:  # e.g. a prompt too long: say so, keep chatting
            click.echo(f"kerastune: error: {e.cli_message}", err=True)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="The preset folder to write; must not exist.")
@click.option("--preset", default=None,
              help="The base preset. Defaults to the one the adapter records.")
@BACKEND_OPTION
def merge(run_dir, output, preset, backend):
    """Fold the LoRA adapter of RUN_DIR (a LoRA run, or an adapter file) into its
    float base and write a preset folder that plain keras_hub loads."""
    import os

    select_backend(backend)
    from kerastune_lab.finetune.lora import save_merged_preset
    from kerastune_lab.runs import ADAPTER, RunDir, normal_path

    adapter = RunDir(run_dir).adapter_path if os.path.isdir(run_dir) else run_dir
    if os.path.isdir(run_dir) and not os.path.isfile(adapter):
        raise KerastuneError(f"run dir {run_dir!r} has no {ADAPTER}: expected a LoRA "
                             "run (kerastune run lora_chat) or an adapter file")

    output = normal_path(output)  # out/ and ~/out as the user means them
    if os.path.exists(output):
        raise KerastuneError(f"output {output!r} already exists: expected a new folder "
                             "(remove it or choose another --output)")
    save_merged_preset(adapter, output, preset=preset)
    click.echo(output)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--format", "-f", "fmt", required=True,
              type=click.Choice(["hf", "peft", "keras", "serving", "gguf", "gguf-lora"]),
              help="hf: transformers folder (LoRA merged); peft: adapter folder (LoRA runs); "
                   "keras: model.keras, serving: SavedModel/ONNX (classification runs); "
                   "gguf: model.gguf and an Ollama Modelfile (chat runs, LoRA merged); "
                   "gguf-lora: the adapter alone for llama.cpp's --lora (LoRA runs).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="The folder to write; must not exist.")
@click.option("--with-base", is_flag=True,
              help="--format peft: also write the float base as a transformers folder "
                   "in OUTPUT/base/; --format gguf-lora: as OUTPUT/base.gguf.")
@click.option("--preset", default=None,
              help="LoRA runs: the base preset. Defaults to the one the adapter records.")
@click.option("--quantize", "-q", default=None,
              type=click.Choice(["f32", "f16", "q8_0", "q4_k_m"]),
              help="--format gguf: the weights' type (default f16); q8_0 and q4_k_m are "
                   "quantized by llama.cpp (needs llama-cpp-python).")
@BACKEND_OPTION
def export(run_dir, fmt, output, with_base, preset, quantize, backend):
    """Write the model of RUN_DIR where other tools read it: a transformers
    folder, a peft adapter, a .keras file, a serving export or a GGUF file
    for llama.cpp and Ollama."""
    run_files.check_run(run_dir)
    select_backend(backend)
    from kerastune_lab.export import export_run

    click.echo(export_run(run_dir, fmt, output, with_base=with_base, preset=preset,
                          quantize=quantize))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--data", "-d", required=True, type=click.Path(),
              help="A folder with one subfolder per class (e.g. chest_xray/test).")
@click.option("--name", "-n", default=None,
              help="Writes into RUN_DIR/eval-NAME/. Defaults to the data folder's name.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier evaluation of that name.")
@click.option("--positive-class", default=None,
              help="Class of the curves and threshold. Defaults to the run's.")
@click.option("--target-recall", default=None, type=float,
              help="Recall of the positive class to pick a threshold for. Defaults to the run's.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@BACKEND_OPTION
def evaluate(run_dir, data, name, overwrite, positive_class, target_recall, batch_size,
             backend):
    """Evaluate a run's saved model on another labelled image folder.

    Writes the classification report, confusion matrix, ROC and
    precision-recall curves, threshold, metrics.json and report.md into
    RUN_DIR/eval-NAME/ and prints that folder.
    """
    run_files.check_run(run_dir)
    select_backend(backend)
    from kerastune_lab.predict import evaluate_image_folder

    out = evaluate_image_folder(run_dir, data, name=name, overwrite=overwrite,
                                batch_size=batch_size, positive_class=positive_class,
                                target_recall=target_recall)
    from kerastune_lab.evaluate.classification import headline
    from kerastune_lab.runs import METRICS

    logging.getLogger("kerastune_lab").info("%s", headline(out.read_json(METRICS)))
    click.echo(out.path)


@cli.command()
@BACKEND_OPTION
def info(backend):
    """Print the backend, package versions, the devices Keras sees, the
    accelerator and the precision a run would choose for it."""
    name = select_backend(backend)
    import keras
    import keras_hub

    import kerastune_lab

    click.echo(f"kerastune_lab: {kerastune_lab.__version__}")
    click.echo(f"backend: {name}")
    click.echo(f"keras: {keras.__version__}")
    click.echo(f"keras-hub: {keras_hub.__version__}")
    click.echo(f"{backend_lib.BACKENDS[name][0]}: {backend_lib.framework_version(name)}")
    click.echo(f"devices: {', '.join(backend_lib.list_devices())}")
    accelerators = backend_lib.accelerators()
    click.echo(f"accelerator: {backend_lib.describe(accelerators)}")
    policy, why = backend_lib.choose_precision("auto", accelerators)
    click.echo(f"precision: {policy} ({why})")


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
    select_backend(backend)
    import keras_hub

    for task in [kind] if kind else TASKS:
        names = sorted(getattr(keras_hub.models, TASKS[task]).presets)
        click.echo(f"{task}:")
        for name in names:
            click.echo(f"  {name}")


cli.add_command(__import__("kerastune_lab.plan_cli", fromlist=["plan"]).plan)  # kerastune plan


def _command(argv):
    """(command, recipe file or None) from the command line's words."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    command = words[0] if words else None
    recipes = [w for w in words[1:] if "=" not in w] if command == "run" else []
    return command, (recipes[0] if recipes else None)


def main(argv=None):
    """Console entry point: maps errors to exit codes 2 (bad input) and 1.

    Out of device memory or disk space: one line that says what to change,
    exit code 1 (`errors.resource_error_message`).
    """
    try:
        code = cli.main(args=argv, prog_name="kerastune", standalone_mode=False)
    except KerastuneError as e:
        click.echo(f"kerastune: error: {e.cli_message}", err=True)
        sys.exit(getattr(e, "exit_code", 2))  # 1 for an IncompatibleVersion
    except click.exceptions.Abort:
        click.echo("kerastune: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except DownloadFailed as e:
        click.echo(f"kerastune: error: {e}", err=True)
        sys.exit(e.exit_code)
    except RunStopped as e:  # interrupted, or a loss not finite: the run and its backup stay
        prefix = "kerastune: " if isinstance(e, Interrupted) else "kerastune: error: "
        click.echo(prefix + str(e), err=True)
        sys.exit(e.exit_code)
    except Exception as e:
        command, recipe = _command(argv)
        message = resource_error_message(e, command, recipe and _recipe_config_keys(recipe))
        if message is None:
            raise
        click.echo(f"kerastune: error: {message}", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
