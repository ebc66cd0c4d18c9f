"""Shared test settings (offline, quiet, deterministic) and the fixtures every test folder uses: a migrated MLflow
SQLite store made once per session and copied per test."""
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # property tests: random examples while developing, the same fixed examples in CI (a landing is reproducible)
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory):
    """A fully migrated, empty MLflow SQLite database (migrations cost seconds; copying it ~0.05 s)."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def mlflow_uri(tmp_path, mlflow_template_db):
    """A fresh SQLite tracking URI for one test (a copy of the template)."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_template_db, db)
    return f"sqlite:///{db}"
