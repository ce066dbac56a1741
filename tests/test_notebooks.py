"""The notebooks in notebooks/: committed clean, and each runs top to bottom.

`test_notebook_runs` executes every cell of a notebook with nbclient, at
smoke size (`KERASTUNE_SMOKE=1`: the tiny offline presets and generated data
of `--smoke`), on the backend in `KERAS_BACKEND`, in a temporary working
folder (the runs are written there). Then each cell tagged `figure-<name>`
must have shown a PNG image, and the cell tagged `result` (the last section:
the trained model used) must have printed what `EXPECTED` says.

The first cell installs the toolkit, as on Colab: `%pip install` of what
`KERASTUNE_INSTALL` names. CI builds the wheel, makes a fresh virtual
environment with it (`.ci/wheel_check`), and runs the kernels there
(`KERASTUNE_NOTEBOOK_PYTHON`, that environment's python) with
`KERASTUNE_INSTALL` set to the wheel. Without them the kernel is this
Python and the cell reinstalls this checkout (`--no-deps -e`), so a local
run needs no network.
"""

import base64
import json
import os
import re
import resource
import sys
import time

import nbformat
import pytest

from tests.conftest import BACKEND, ROOT
from tests.test_warnings import warning_lines

NOTEBOOKS = os.path.join(ROOT, "notebooks")
INSTALL_LINE = '%pip install -q {os.environ.get("KERASTUNE_INSTALL", "kerastune-lab")}'

# notebook: (the figure cells it must show, a regex the result cell's output must match)
EXPECTED = {
    "cats_vs_dogs": ({"samples", "training-curves", "confusion-matrix", "roc", "predictions"},
                     r"\d\.jpg: (cat|dog) \(0\.\d{3}\)"),
    "xray_pneumonia": ({"counts", "training-curves", "confusion-matrix", "roc", "pr"},
                       r"NORMAL/\S+: P\(PNEUMONIA\) = [01]\.\d{3} -> (NORMAL|PNEUMONIA) at "
                       r"threshold [01]\.\d{3}"),
    "imdb_sentiment": ({"lengths", "training-curves", "confusion-matrix", "roc"},
                       r"loved the music and the ending\. -> \[\{'label': '(POSITIVE|NEGATIVE)',"
                       r" 'score': 0\.\d+\}\]"),
    "sarcastic_chat": ({"packing", "training-curves", "perplexity"},
                       r"you: Is it Monday again\?\nbot: .*\nyou: Should I make coffee\?\nbot: "),
    "lora_chat": ({"parameters", "packing", "training-curves", "perplexity"},
                  r"LoRA rank 4 on 4 layers\nyou: Is it Monday again\?\nbot: .*\n"
                  r"you: Should I make coffee\?\nbot: "),
    "your_own_script": ({"training-curves", "confusion-matrix", "roc"},
                        r"(true +(daisy|rose|tulip), predicted (daisy|rose|tulip)\n){4}"),
}


def read(name):
    with open(os.path.join(NOTEBOOKS, f"{name}.ipynb"), encoding="utf-8") as f:
        return nbformat.read(f, as_version=4)


def tagged(nb, tag):
    return [cell for cell in nb.cells if tag in cell.metadata.get("tags", [])]


def test_every_notebook_is_expected():
    found = sorted(f[:-len(".ipynb")] for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_committed_clean(name):
    nb = read(name)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    # Outputs stay out of the repository.
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]
    # Nothing downloads from a URL of this project (the chat data ships in
    # the package).
    text = "\n".join(cell.source for cell in nb.cells)
    assert "github" not in text.lower() and "get_file(" not in text
    # One install cell, first: the distribution name, as published; the size
    # is its one setting.
    installs = [cell for cell in code if re.search(r"\bpip\b", cell.source)]
    assert installs == [code[0]]
    assert code[0].source.rstrip().splitlines()[-1] == INSTALL_LINE
    assert re.search(r"^SMOKE = None\b", code[0].source, re.M)
    # The figure and result cells the run below checks are there.
    figures, _ = EXPECTED[name]
    for figure in figures:
        assert len(tagged(nb, f"figure-{figure}")) == 1, figure
    assert len(tagged(nb, "result")) == 1


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A Jupyter kernel spec that runs KERASTUNE_NOTEBOOK_PYTHON (CI: the
    wheel's fresh environment), else this very Python (the venv's)."""
    python = os.environ.get("KERASTUNE_NOTEBOOK_PYTHON") or sys.executable
    spec = tmp_path / "jupyter" / "kernels" / "kerastune-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kerastune_lab tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "kerastune-test"


def images_of(cell):
    """The PNG images a cell showed, as bytes."""
    return [base64.b64decode(out["data"]["image/png"]) for out in cell.outputs
            if out.get("output_type") in ("display_data", "execute_result")
            and "image/png" in out.get("data", {})]


def text_of(cell):
    """What a cell printed and returned, as one string."""
    parts = []
    for out in cell.outputs:
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out["text"])
        elif out.get("output_type") in ("display_data", "execute_result"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _children_cpu():
    """CPU seconds (user + system) of this process's finished children: the kernels."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# CI executes the notebooks on jax (issue 13: "on jax at least"); they also
# pass on tensorflow and torch, where KERASTUNE_NOTEBOOKS=all runs them.
ALL_BACKENDS = os.environ.get("KERASTUNE_NOTEBOOKS") == "all"


@pytest.mark.large
@pytest.mark.skipif(BACKEND != "jax" and not ALL_BACKENDS,
                    reason="notebooks run on jax (KERASTUNE_NOTEBOOKS=all: every backend)")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tmp_path, kernel_name, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("KERASTUNE_SMOKE", "1")
    monkeypatch.setenv("KERAS_BACKEND", BACKEND)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if not os.environ.get("KERASTUNE_INSTALL"):  # a local run: this checkout, no download
        monkeypatch.setenv("KERASTUNE_INSTALL", f"--no-deps --no-build-isolation -e {ROOT}")
    nb = read(name)
    client = NotebookClient(nb, kernel_name=kernel_name, timeout=600,
                            resources={"metadata": {"path": str(work)}})
    start, cpu = time.perf_counter(), _children_cpu()
    try:
        client.execute()
    except CellExecutionError as e:
        tail = re.sub(r"\x1b\[[0-9;]*m", "", e.traceback).splitlines()[-30:]
        pytest.fail(f"{name}: a cell failed on {BACKEND}: {e.ename}: {e.evalue}\n"
                    + "\n".join(tail), pytrace=False)
    finally:  # executed copies for a look: KERASTUNE_NOTEBOOK_OUTPUTS=folder
        keep = os.environ.get("KERASTUNE_NOTEBOOK_OUTPUTS") or str(tmp_path)
        os.makedirs(keep, exist_ok=True)
        with open(os.path.join(keep, f"{name}.{BACKEND}.ipynb"), "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
    print(f"\n{name}: executed in {time.perf_counter() - start:.1f} s on {BACKEND} (kernel CPU "
          f"time {_children_cpu() - cpu:.1f} s)")

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code)  # every cell ran
    # No warning a learner would see but those test_warnings.ALLOWED allows
    # (the install cell's are pip's own: left out).
    stderr = "".join(out["text"] for cell in code[1:] for out in cell.outputs
                     if out.get("output_type") == "stream" and out.get("name") == "stderr")
    found = warning_lines(stderr)
    assert not found, f"{name} on {BACKEND} warned:\n" + "\n".join(found)
    installed = os.environ["KERASTUNE_INSTALL"].split()[-1]
    assert "ERROR" not in text_of(code[0]), text_of(code[0])
    if installed.endswith(".whl"):  # the kernel imports the wheel's package, not the checkout
        assert "site-packages" in text_of(code[1]) and ROOT not in text_of(code[1])
    assert "size: smoke" in text_of(code[1])
    figures, result = EXPECTED[name]
    for figure in figures:
        (cell,) = tagged(nb, f"figure-{figure}")
        shown = images_of(cell)
        assert shown, f"cell figure-{figure} showed no image"
        assert all(png.startswith(b"\x89PNG") for png in shown)
    (cell,) = tagged(nb, "result")
    assert re.search(result, text_of(cell)), text_of(cell)
    if name == "lora_chat":  # the GGUF export, chatted with through llama.cpp
        (cell,) = tagged(nb, "gguf")
        assert re.search(r"\['Modelfile', 'model\.gguf'\]\nyou: Is it Monday again\?\n"
                         r"llama\.cpp: .*\nyou: Should I make coffee\?\nllama\.cpp: ",
                         text_of(cell)), text_of(cell)
    # The runs were written in the working folder.
    assert os.listdir(work / "runs")
