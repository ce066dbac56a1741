"""Importing `kerastune_lab.evaluate` has no side effect on matplotlib, and
drawing its figures leaves the plotting backend as the caller set it
(fresh processes: matplotlib's state is per process)."""

import subprocess
import sys

from tests.conftest import ROOT

IMPORT_ONLY = """
import sys
import kerastune_lab.evaluate
from kerastune_lab.evaluate import perplexity
assert "matplotlib" not in sys.modules, "importing kerastune_lab.evaluate imported matplotlib"
"""

DRAW = """
import os, sys
import matplotlib
matplotlib.use("svg")
import numpy as np
from kerastune_lab.evaluate import evaluate_classifier, plot_history
from kerastune_lab.runs import RunDir

run = RunDir.create(os.path.join(sys.argv[1], "run"))
plot_history([{"epoch": 1, "phase": "head", "loss": 0.7, "val_loss": 0.6},
              {"epoch": 2, "phase": "finetune", "loss": 0.5, "val_loss": 0.5}],
             run.file("training_curves.png"))
y = np.array([0, 1, 1, 0, 1, 0])
probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.4, 0.6], [0.1, 0.9], [0.7, 0.3]])
evaluate_classifier(run, y, probs, ["a", "b"], target_recall=0.9)
assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
if "matplotlib.pyplot" in sys.modules:  # scikit-learn's displays import it
    assert sys.modules["matplotlib.pyplot"].get_fignums() == [], "pyplot figures left open"
for name in ("training_curves.png", "confusion_matrix.png", "roc.png", "pr.png"):
    with open(run.file(name), "rb") as f:
        assert f.read(8) == b"\\x89PNG\\r\\n\\x1a\\n", name
"""


def _python(code, *args):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_import_leaves_matplotlib_unimported():
    _python(IMPORT_ONLY)


def test_figures_leave_the_backend_as_set(tmp_path):
    _python(DRAW, tmp_path)
