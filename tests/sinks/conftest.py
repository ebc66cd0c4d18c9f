"""Fixtures for the sink tests (the MLflow store: tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture
def artifact_dir(tmp_path):
    """Folder for the artifacts of experiments created in a test."""
    path = tmp_path / "artifacts"
    path.mkdir()
    return path
