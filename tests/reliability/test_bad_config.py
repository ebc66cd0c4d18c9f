"""Fault row 5: bad configuration fails at construction, naming the field path (what tests/engine/test_config.py does
not cover yet: rules, webhook_timeout, sink combinations, environment overrides, values in files)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError
from reliability._harness import TinyTrainer

import spherewatch as sw
from spherewatch.config import MonitorConfig, load_config
from spherewatch.sinks import MemorySink, read_jsonl


@pytest.mark.parametrize(
    "kwargs,path,fragment",
    [
        ({"rules": [{"kind": "threshold", "metric": "uniformity"}]}, "rules.0.threshold",
         "needs `above` and/or `below`"),
        ({"rules": [{"kind": "threshold", "metric": "mean_cosine", "above": 0.9, "patience": 0}]},
         "rules.0.threshold.patience", "greater than or equal to 1"),
        ({"rules": [{"kind": "nonfinite", "severity": "fatal"}]}, "rules.0.nonfinite.severity",
         "'info', 'warning' or 'critical'"),
        ({"rules": [{"kind": "degradation", "metric": "uniformity", "direction": "rise", "fraction": 2}]},
         "rules.0.degradation.fraction", "less than or equal to 1"),
        ({"rules": [{"kind": "nonfinite"}, {"kind": "nonfinite"}]}, "rules", "names must be unique, got ['nonfinite']"),
        ({"rules": "nonfinite"}, "rules", "valid tuple"),
        ({"webhook_timeout": 0}, "webhook_timeout", "greater than 0"),
        ({"webhook_timeout": -1.5}, "webhook_timeout", "greater than 0"),
        ({"webhook_timeout": float("inf")}, "webhook_timeout", "finite number"),
        ({"webhook_timeout": "soon"}, "webhook_timeout", "valid number"),
        ({"uniformity_t": float("inf")}, "uniformity_t", "finite number"),
        ({"sinks": ("jsonl", "neptune")}, "sinks.1", "'tensorboard', 'mlflow', 'wandb', 'trackio', 'jsonl' or 'memory'"),
        ({"sinks": "jsonl"}, "sinks", "valid tuple"),  # a bare string in a file or dict; the Monitor keyword takes one
    ],
)
def test_invalid_field_names_its_path(kwargs, path, fragment):
    with pytest.raises(ValidationError) as info:
        MonitorConfig(**kwargs)
    lines = str(info.value).splitlines()
    assert path in lines and fragment in str(info.value)


def test_invalid_value_in_a_monitor_keyword_fails_before_training(tmp_path):
    with pytest.raises(ValidationError, match="sinks.0"):
        sw.Monitor(sinks="neptune")
    with pytest.raises(ValidationError, match="webhook_timeout"):
        sw.Monitor(sinks=("memory",), webhook_url="https://hooks.example.invalid/x", webhook_timeout=0)


def test_a_sink_object_without_the_sink_methods_is_rejected_at_construction():
    class NotASink:
        def log_scalars(self, step, scalars):
            pass

    with pytest.raises(TypeError, match="NotASink lacks log_histogram, log_alert, flush, close"):
        sw.Monitor(sinks=(NotASink(), "memory"))
    with pytest.raises(TypeError, match="object lacks log_scalars"):
        sw.Monitor(sinks=[object()])


def test_a_sink_named_twice_logs_each_point_once(make_monitor, tmp_path):
    path = tmp_path / "run.jsonl"
    mon = make_monitor(sinks=("jsonl", "memory", "jsonl"), jsonl_path=str(path), every_n_steps=2)
    assert mon.config.sinks == ("jsonl", "memory")
    TinyTrainer().run(mon, range(6))
    mon.close()
    steps = [s for s, _ in read_jsonl(path)["scalars"]["spherewatch/uniformity"]]
    assert steps == [0, 2, 4]


def test_sink_names_and_objects_combine(make_monitor, tmp_path):
    extra = MemorySink()
    mon = make_monitor(sinks=("jsonl", extra), jsonl_path=str(tmp_path / "run.jsonl"), every_n_steps=2)
    TinyTrainer().run(mon, range(4))
    mon.close()
    assert [s for s, _ in extra.history("spherewatch/uniformity")] == [0, 2]
    assert [s for s, _ in read_jsonl(tmp_path / "run.jsonl")["scalars"]["spherewatch/uniformity"]] == [0, 2]


@pytest.mark.parametrize(
    "name,value,path",
    [
        ("SPHEREWATCH_WEBHOOK_TIMEOUT", "0", "webhook_timeout"),
        ("SPHEREWATCH_SINKS", "jsonl,neptune", "sinks.1"),
        ("SPHEREWATCH_STRICT", "maybe", "strict"),
        ("SPHEREWATCH_PRESET", "fast", "preset"),
        ("SPHEREWATCH_METRICS", "uniformityy", "metrics"),
        ("SPHEREWATCH_MAX_SAMPLES", "1", "max_samples"),
        ("SPHEREWATCH_RULES", '[{"kind": "magic", "metric": "x"}]', "rules.0"),
        ("SPHEREWATCH_WINDOW_STEPS", "500", "window_steps=500 must not exceed every_n_steps=50"),
    ],
)
def test_bad_environment_override_names_the_field(name, value, path, monkeypatch, tmp_path):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        sw.Monitor(log_dir=str(tmp_path))  # keywords would win over the environment: none for this field
    assert path in str(info.value)
    with pytest.raises(ValidationError):
        load_config()


def test_bad_values_in_a_file_name_their_path(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "bad.yaml").write_text("every_n_steps: 10\nrules:\n  - kind: threshold\n    metric: uniformity\n")
    (tmp_path / "bad.toml").write_text("[spherewatch]\nwebhook_timeout = 0\n")
    (tmp_path / "bad.json").write_text('{"sinks": ["jsonl", "jsonl", "kafka"]}')
    for name, path in (("bad.yaml", "rules.0.threshold"), ("bad.toml", "webhook_timeout"), ("bad.json", "sinks.2")):
        with pytest.raises(ValidationError) as info:
            sw.Monitor(str(tmp_path / name))
        assert path in str(info.value).splitlines(), name


def test_a_misconfigured_sink_fails_at_construction_without_network_io_or_leaking_credentials(tmp_path):
    with pytest.raises(ValueError, match="schemes http, https, sqlite") as info:
        sw.Monitor(sinks=("mlflow",), tracking_uri="htp://bob:hunter2@tracking.internal", log_dir=str(tmp_path))
    assert "hunter2" not in str(info.value) and "htp://***@tracking.internal" in str(info.value)
    assert not (tmp_path / "spool").exists()  # nothing was opened


@pytest.mark.parametrize("url", [["https://hooks.slack.com/services/T0/B0/listSECRET"],
                                 {"url": "https://hooks.slack.com/services/T0/B0/dictSECRET"}])
def test_a_webhook_url_of_the_wrong_type_is_not_echoed_in_the_error(url):
    with pytest.raises(ValidationError, match="webhook_url") as info:
        sw.Monitor(sinks=("memory",), webhook_url=url)
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(info.value)
