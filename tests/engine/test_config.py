"""MonitorConfig: typed, validated once, loadable from dict / YAML / TOML / JSON / environment."""
import json

import pytest
from pydantic import ValidationError

import spherewatch as sw
from spherewatch.config import METRICS, MonitorConfig, load_config


def test_defaults():
    cfg = MonitorConfig()
    assert cfg.every_n_steps == 50 and cfg.preset == "standard" and cfg.prefix == "spherewatch"
    assert "uniformity" in cfg.metric_names and "effective_rank" in cfg.metric_names
    names = [r.name for r in cfg.alert_rules]
    assert "uniformity_degradation" in names and "rank_collapse" in names


@pytest.mark.parametrize(
    "kwargs,path,fragment",
    [
        ({"every_n_steps": 0}, "every_n_steps", "greater than or equal to 1"),
        ({"every_n_step": 10}, "every_n_step", "Did you mean 'every_n_steps'?"),
        ({"preset": "fast"}, "preset", "'cheap', 'standard' or 'full'"),
        ({"sinks": ("tensorboard", "neptune")}, "sinks.1",
         "'tensorboard', 'mlflow', 'wandb', 'trackio', 'jsonl' or 'memory'"),
        ({"pool": "max"}, "pool", "'mean', 'first' or 'last'"),
        ({"max_samples": 1}, "max_samples", "greater than or equal to 2"),
        ({"uniformity_t": -1}, "uniformity_t", "greater than 0"),
        ({"prefix": "a/b"}, "prefix", "must not contain '/'"),
        ({"rules": [{"kind": "degradation", "metric": "uniformity", "direction": "up"}]}, "rules.0.degradation.direction", "'rise' or 'fall'"),
        ({"rules": [{"kind": "magic", "metric": "x"}]}, "rules.0", "threshold"),
    ],
)
def test_invalid_values_name_the_field_path_and_allowed_values(kwargs, path, fragment):
    with pytest.raises(ValidationError) as info:
        MonitorConfig(**kwargs)
    text = str(info.value)
    assert path in text and fragment in text


def test_unknown_metric_lists_the_available_ones():
    with pytest.raises(ValidationError, match="unknown metric.*'uniformityy'.*use any of: alignment, uniformity"):
        MonitorConfig(metrics=("uniformityy",))


def test_cross_field_rules():
    with pytest.raises(ValidationError, match="multiple of every_n_steps=10"):
        MonitorConfig(every_n_steps=10, spectral_every_n_steps=15)
    with pytest.raises(ValidationError, match="window_steps=20 must not exceed every_n_steps=10"):
        MonitorConfig(every_n_steps=10, window_steps=20)


def test_config_is_frozen():
    cfg = MonitorConfig()
    with pytest.raises(ValidationError):
        cfg.every_n_steps = 3


def test_load_from_yaml_toml_json_and_pyproject(tmp_path):
    (tmp_path / "c.yaml").write_text("every_n_steps: 7\nsinks: [jsonl, memory]\nrules:\n  - kind: nonfinite\n")
    (tmp_path / "c.toml").write_text('[spherewatch]\nevery_n_steps = 8\npreset = "full"\n')
    (tmp_path / "pyproject.toml").write_text('[tool.spherewatch]\nevery_n_steps = 9\n')
    (tmp_path / "c.json").write_text(json.dumps({"every_n_steps": 10, "metrics": ["uniformity"]}))
    y = MonitorConfig.from_file(tmp_path / "c.yaml")
    assert y.every_n_steps == 7 and y.sinks == ("jsonl", "memory") and [r.name for r in y.alert_rules] == ["nonfinite"]
    assert MonitorConfig.from_file(tmp_path / "c.toml").preset == "full"
    assert MonitorConfig.from_file(tmp_path / "pyproject.toml").every_n_steps == 9
    assert MonitorConfig.from_file(tmp_path / "c.json", every_n_steps=11).every_n_steps == 11
    assert sw.Monitor(str(tmp_path / "c.json"), sinks=("memory",)).config.metric_names == ("uniformity",)


def test_config_files_are_parsed_never_evaluated(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("every_n_steps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception) as info:
        MonitorConfig.from_file(evil)
    assert "pwned" not in str(info.value) or "python/object" in str(info.value)


def test_bad_files():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config("nope.yaml")
    with pytest.raises(TypeError, match="MonitorConfig, a dict or a path"):
        load_config(42)


def test_environment_overrides(monkeypatch, tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"every_n_steps": 10, "preset": "cheap"}))
    monkeypatch.setenv("SPHEREWATCH_EVERY_N_STEPS", "25")
    monkeypatch.setenv("SPHEREWATCH_SINKS", "jsonl,memory")
    monkeypatch.setenv("SPHEREWATCH_STRICT", "true")
    cfg = load_config(tmp_path / "c.json")
    assert cfg.every_n_steps == 25 and cfg.preset == "cheap" and cfg.sinks == ("jsonl", "memory") and cfg.strict
    assert load_config(tmp_path / "c.json", every_n_steps=3).every_n_steps == 3  # keywords win
    monkeypatch.setenv("SPHEREWATCH_EVERY_N_STEPS", "soon")
    with pytest.raises(ValidationError, match="every_n_steps"):
        MonitorConfig.from_env()


def test_webhook_url_is_secret():
    cfg = MonitorConfig(webhook_url="https://hooks.example.invalid/T000/B000/XXXX")
    assert "XXXX" not in repr(cfg) and "XXXX" not in str(cfg)


def test_every_metric_name_is_selectable():
    assert MonitorConfig(metrics=METRICS).metric_names == METRICS
