"""Runs shared by the export tests: made once a session (a few training steps
each), never changed by a test (every export writes a new folder)."""

import pytest

from tests.export import runs


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory):
    return runs.lora_run(tmp_path_factory.mktemp("export-runs") / "lora")


@pytest.fixture(scope="session")
def chat_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {kind: runs.chat_run(root / kind, kind) for kind in ("gpt2", "llama")}


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    return runs.image_run(tmp_path_factory.mktemp("export-runs") / "image")
