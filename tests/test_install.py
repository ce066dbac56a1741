"""The install leaves a platform's own torch, jax and TensorFlow alone.

Colab and Kaggle ship CUDA (or TPU) builds of torch and jax. pip replaces an
installed distribution only when a requirement excludes its version, so: the
core names neither torch nor jax (they are extras), and no requirement puts
an upper bound on them or on TensorFlow.
"""

import os

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")

# The same code on every backend: CI runs it once, on jax (setup.cfg).
pytestmark = pytest.mark.backend_independent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("torch", "jax", "jaxlib", "tensorflow")
# Builds that Colab and Kaggle images have shipped, and later ones.
PLATFORM_BUILDS = {
    "torch": ["2.4.1+cu121", "2.6.0+cu124", "2.8.0+cu126", "3.0.0"],
    "jax": ["0.4.33", "0.5.2", "0.7.2", "1.0.0"],
    "jaxlib": ["0.4.33", "0.5.1", "0.7.2", "1.0.0"],
    "tensorflow": ["2.18.0", "2.19.0", "2.20.0", "3.0.0"],
}


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _requirements(names):
    project = _project()
    extras = project["optional-dependencies"]
    lists = [project["dependencies"] if n == "core" else extras[n] for n in names]
    return [Requirement(r) for reqs in lists for r in reqs]


def test_core_names_neither_torch_nor_jax():
    names = {r.name.lower() for r in _requirements(["core"])}
    assert not names & {"torch", "jax", "jaxlib"}, names
    assert not [n for n in names if n.startswith(("nvidia-", "jax-cuda", "libtpu"))]


def test_extras_per_backend():
    extras = _project()["optional-dependencies"]
    assert {r.name for r in _requirements(["jax"])} == {"jax"}
    assert {r.name for r in _requirements(["torch"])} == {"torch"}
    assert "cuda12" in {e for r in _requirements(["jax-cuda12"]) for e in r.extras}
    # The CI line `pip install "torch==2.13.0" -e ".[test]"` gets all three backends.
    test = {r.name for r in _requirements(["test"])} | {r.name for r in _requirements(["core"])}
    assert {"jax", "torch", "tensorflow"} <= test, extras["test"]


@pytest.mark.parametrize("extra", ["core", "jax", "jax-cuda12", "torch", "all", "test"])
def test_no_requirement_excludes_a_platform_build(extra):
    for req in _requirements([extra]):
        for version in PLATFORM_BUILDS.get(req.name.lower(), ()):
            assert req.specifier.contains(version, prereleases=True), (
                f"{extra}: {req} would make pip replace {req.name} {version}")
