import importlib.util

import pytest

from kerastune_lab import backend
from kerastune_lab.errors import KerastuneError
from tests.conftest import BACKEND, assert_one_line_error, run_cli


def test_resolution_order(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert backend.resolve_backend("tensorflow") == "tensorflow"
    assert backend.resolve_backend(None) == "torch"
    monkeypatch.delenv("KERAS_BACKEND")
    assert backend.resolve_backend(None) == "jax"


def test_unknown_backend():
    with pytest.raises(KerastuneError,
                       match="unknown backend --backend='mxnet'.*jax, tensorflow, torch"):
        backend.resolve_backend("mxnet")


def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(KerastuneError, match="pip install torch"):
        backend.use_backend("torch")


def test_cannot_switch_after_keras_import():
    other = next(b for b in backend.BACKENDS if b != BACKEND)
    import keras  # noqa: F401

    with pytest.raises(KerastuneError, match="already imported"):
        backend.use_backend(other)


def test_info_in_a_fresh_process():
    result = run_cli("info")
    assert result.code == 0, result
    lines = dict(line.split(": ", 1) for line in result.stdout.strip().splitlines())
    assert lines["backend"] == BACKEND
    import keras
    import keras_hub

    assert lines["keras"] == keras.__version__
    assert lines["keras-hub"] == keras_hub.__version__
    framework = backend.BACKENDS[BACKEND][0]
    assert lines[framework] == backend.framework_version(BACKEND)
    assert "cpu" in lines["devices"].lower()


def test_backend_flag_beats_environment():
    other = next(b for b in backend.BACKENDS if b != BACKEND)
    result = run_cli("info", "--backend", other)
    assert result.code == 0, result
    assert f"backend: {other}" in result.stdout.splitlines()


def test_unknown_backend_from_cli(cli):
    assert_one_line_error(cli("info", "--backend", "mxnet"), "mxnet", "jax, tensorflow, torch")
