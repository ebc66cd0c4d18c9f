"""Fixtures for the sink tests: a migrated MLflow SQLite store made once, copied per test."""
from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory):
    """A fully migrated, empty MLflow SQLite database (migrations cost seconds; copying ~0.05 s)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def mlflow_uri(tmp_path, mlflow_template_db):
    """A fresh SQLite tracking URI for one test."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def artifact_dir(tmp_path):
    """Folder for the artifacts of experiments created in a test."""
    path = tmp_path / "artifacts"
    path.mkdir()
    return path
