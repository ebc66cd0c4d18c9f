"""Issue 22 row 7: a password in the tracking URI is never shown by the config (str, repr, model_dump, JSON), while
the config itself keeps it for the sink that needs it."""
from __future__ import annotations

import json

import spherewatch as sw
from spherewatch.config import load_config

PASSWORD = "s3cr3t-PASSWORD"
URI = f"http://bob:{PASSWORD}@127.0.0.1:5000"


def test_the_config_never_shows_the_password_but_keeps_it():
    cfg = sw.MonitorConfig(tracking_uri=URI, sinks=("mlflow",))
    shown = [str(cfg), repr(cfg), json.dumps(cfg.model_dump(), default=str), cfg.model_dump_json(),
             json.dumps(cfg.model_dump(mode="json"))]
    assert all(PASSWORD not in text for text in shown)
    assert "http://***@127.0.0.1:5000" in repr(cfg)
    assert cfg.tracking_uri == URI  # the sink gets the real one
    assert load_config(cfg, every_n_steps=7).tracking_uri == URI  # a config rebuilt from a config keeps it
