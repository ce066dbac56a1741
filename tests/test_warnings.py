"""No warning reaches a learner unless `ALLOWED` says why it may (issue 24).

Each command of the learner's path runs as the learner runs it, a
`kerastune` subprocess on the backend in KERAS_BACKEND: a smoke run of a
classification recipe of each kind (image, text) and of each chat recipe
(whole model, LoRA), then `evaluate`, `predict`, `export` in every format
that fits the run, `chat` with a prompt, and `keras.saving.load_model` of
the exported `model.keras`. Each command's stderr must hold no warning line
(`warning_lines`) that `ALLOWED` does not match. `test_notebooks.py` checks
the stderr of every notebook cell with the same `warning_lines`.

The warnings once seen here and where they went:
- "Skipping variable loading for optimizer 'adam' ... 2 variables whereas
  the saved optimizer has 82" (export, model.keras loaded back): exports
  load the run's model uncompiled (`export/run.py`) and model.keras loads
  back uncompiled (`export/serving.save_keras`).
- "`compile()` was not called as part of model loading" (model.keras):
  the same `save_keras`: the file holds no compile config.
- "`shuffle=True` was passed, but will be ignored" (every fit on tf.data):
  `training.fit_resumable` passes `shuffle=False` for a tf.data pipeline.
- tqdm's "IProgress not found" (Jupyter without ipywidgets): hidden by
  `console.NOT_WARNINGS`, with the reason.
- The smoke data's "broken on purpose" line twice: once per run now
  (`test_smoke_runs_warn_nothing` counts it).
- torch.onnx's `TracerWarning`s and "Constant folding" notes (`--format
  serving` on torch): hidden around the export, with the reasons
  (`export/serving._onnx_trace_notes_hidden`).
"""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import BACKEND, ROOT, SMOKE_RUNS, recipe_path, run_cli

# A line of stderr that is a warning: Python's `warnings` ("x.py:12:
# UserWarning: ..."), a warning printed without its place ("UserWarning:
# ..."), Python logging's (absl, TensorFlow, jax: "WARNING:absl:...",
# "WARNING: ..."), and C++ logging's (glog/absl: "W0000 00:00:17.5 ...").
WARNING_LINE = re.compile(r":\d+: \w*Warning\b|^\w*Warning: |^WARNING\b|^W\d{4} ")

# (regex searched in the warning line, backend or None for all): each a
# warning that is true, or not ours to change, with the reason. Empty: every
# warning seen on the learner's path was removed at its cause or hidden
# where it is false (above). Keep it short.
ALLOWED = [
]


def warning_lines(text, backend=BACKEND):
    """The warning lines of `text` (stderr) that `ALLOWED` does not allow."""
    lines = text.replace("\r", "\n").splitlines()
    return [line for line in lines if WARNING_LINE.search(line)
            and not any(re.search(pattern, line) and where in (None, backend)
                        for pattern, where in ALLOWED)]


@pytest.mark.backend_independent
def test_warning_lines_are_recognised():
    stderr = "\n".join([
        "kerastune: data: 38 train / 10 val images",
        "/x/keras/src/saving/saving_lib.py:869: UserWarning: Skipping variable loading for "
        "optimizer 'adam', because it has 2 variables whereas the saved optimizer has 82",
        "  saveable.load_own_variables(store)",
        "/x/tqdm/auto.py:21: TqdmWarning: IProgress not found. Please update jupyter",
        "WARNING:absl:You are saving your model as an HDF5 file",
        "W0000 00:00:1732.5  12 cuda_dnn.cc:8310] TF-TRT Warning: Could not find TensorRT",
        "2/3 ━━━━━━━━━━━━━━ 0s 5ms/step - loss: 0.61",
        "kerastune: error: adapter 'x' does not exist",
    ])
    found = warning_lines(stderr)
    assert [line.split(":")[0] for line in found] == ["/x/keras/src/saving/saving_lib.py",
                                                      "/x/tqdm/auto.py", "WARNING", "W0000 00"]


def assert_no_warning(result, what):
    found = warning_lines(result.stderr)
    assert not found, f"{what} on {BACKEND} warned:\n" + "\n".join(found)


# --- The runs: one smoke run of each recipe kind, made once for this module.

SMOKE = {  # kind: the recipe and the overrides that keep it short
    "image": ("cats_vs_dogs", ("head_epochs=1", "epochs=1")),
    "text": ("imdb_sentiment", ()),
    "chat": ("sarcastic_chat", ()),
    "lora": ("lora_chat", ()),
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """{kind: (run dir, CliResult)}: the recipe test modules' smoke run when
    they ran before (tests/recipes/ come first), else one made on first use."""
    made = {}
    root = tmp_path_factory.mktemp("warning-runs")

    def get(kind):
        recipe, overrides = SMOKE[kind]
        if kind not in made and recipe in SMOKE_RUNS:  # made by tests/recipes/ already
            made[kind] = SMOKE_RUNS[recipe]
        if kind not in made:
            out = root / kind
            result = run_cli("run", recipe_path(recipe), "--smoke", "--output-dir", out,
                             *overrides)
            assert result.code == 0, result
            made[kind] = out, result
        return made[kind]

    return get


@pytest.mark.large
@pytest.mark.parametrize("kind", sorted(SMOKE))
def test_smoke_runs_warn_nothing(smoke_runs, kind):
    out, result = smoke_runs(kind)
    assert_no_warning(result, f"kerastune run {SMOKE[kind][0]} --smoke")
    assert result.stderr.count("broken on purpose") <= 1, result.stderr


def _smoke_images():
    folder = os.path.join(os.environ["KERASTUNE_CACHE"], "data", "cats_vs_dogs")
    return folder, [os.path.join(folder, "dog", name)
                    for name in sorted(os.listdir(os.path.join(folder, "dog")))[:2]]


@pytest.mark.large
def test_evaluate_and_predict_images_warn_nothing(smoke_runs):
    out, _ = smoke_runs("image")
    folder, images = _smoke_images()
    result = run_cli("evaluate", out, "--data", folder, "--name", "again")
    assert result.code == 0, result
    assert_no_warning(result, "kerastune evaluate")
    result = run_cli("predict", out, *images)
    assert result.code == 0, result
    assert_no_warning(result, "kerastune predict IMAGE")


@pytest.mark.large
def test_predict_text_warns_nothing(smoke_runs):
    out, _ = smoke_runs("text")
    result = run_cli("predict", out, "--text", "A masterpiece.")
    assert result.code == 0, result
    assert_no_warning(result, "kerastune predict --text")


LOAD_KERAS_FILE = """
import sys
import kerastune_lab  # its quiet start: TensorFlow's C++ start-up lines are not warnings
import keras
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
print(type(model).__name__)
"""


@pytest.mark.large
@pytest.mark.parametrize("kind", ["image", "text"])
def test_keras_export_and_its_loading_warn_nothing(smoke_runs, kind, tmp_path):
    """`--format keras` of a run whose saved model holds the trained
    optimizer's state (the text run), and `load_model` of its file."""
    out, _ = smoke_runs(kind)
    result = run_cli("export", out, "--format", "keras", "--output", tmp_path / "k")
    assert result.code == 0, result
    assert_no_warning(result, "kerastune export --format keras")
    proc = subprocess.run([sys.executable, "-c", LOAD_KERAS_FILE, tmp_path / "k" / "model.keras"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, KERAS_BACKEND=BACKEND))
    assert proc.returncode == 0, proc.stderr
    found = warning_lines(proc.stderr)
    assert not found, "keras.saving.load_model(model.keras) warned:\n" + "\n".join(found)


@pytest.mark.large
@pytest.mark.parametrize("kind", ["image", "text"])
def test_serving_export_warns_nothing(smoke_runs, kind, tmp_path):
    out, _ = smoke_runs(kind)
    result = run_cli("export", out, "--format", "serving", "--output", tmp_path / "s")
    # torch: ONNX, a one-line error without the onnx package, and for
    # DistilBERT, which torch.onnx fails on (docs/export.md, "What fails
    # where"); still no warning before it.
    refusals = ["pip install onnx"] + (["failed in torch.onnx"] if kind == "text" else [])
    assert result.code == 0 or (BACKEND == "torch" and result.code == 2 and any(
        line in result.stderr for line in refusals)), result
    assert_no_warning(result, "kerastune export --format serving")


@pytest.mark.large
@pytest.mark.parametrize("kind, fmt", [("chat", "hf"), ("lora", "hf"), ("lora", "peft")])
def test_chat_exports_warn_nothing(smoke_runs, kind, fmt, tmp_path):
    out, _ = smoke_runs(kind)
    base = ["--with-base"] if fmt == "peft" else []  # the tiny base has no Hugging Face name
    result = run_cli("export", out, "--format", fmt, "--output", tmp_path / fmt, *base)
    assert result.code == 0, result
    assert_no_warning(result, f"kerastune export --format {fmt}")


@pytest.mark.large
@pytest.mark.parametrize("kind", ["chat", "lora"])
def test_chat_warns_nothing(smoke_runs, kind):
    out, _ = smoke_runs(kind)
    result = run_cli("chat", out, "--max-length", "40", "--seed", "1",
                     input="Is it Monday again?\n")
    assert result.code == 0, result
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert_no_warning(result, "kerastune chat")
