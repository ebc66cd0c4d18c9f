"""Every config input that can fail fails at construction, as a ValueError/TypeError naming the field."""
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import spherewatch as sw
from spherewatch.config import MAX_CONFIG_DEPTH, MAX_SAMPLES_CEILING, MonitorConfig, load_config


@pytest.mark.parametrize(
    "kwargs,field,fragment",
    [
        ({"every_n_steps": True}, "every_n_steps", "boolean"),
        ({"uniformity_t": False}, "uniformity_t", "boolean"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"max_samples": 10**15}, "max_samples", f"less than or equal to {MAX_SAMPLES_CEILING}"),
        ({"webhook_timeout": 1e30}, "webhook_timeout", "less than or equal to 300"),
        ({"default_tap": "/"}, "default_tap", "letters, digits"),
        ({"prefix": "sw:1"}, "prefix", "letters, digits"),
        ({"jsonl_path": "runs/a\x00b.jsonl"}, "jsonl_path", "NUL byte"),
        ({"log_dir": "x\x00"}, "log_dir", "NUL byte"),
        ({"every_n_step": 10}, "every_n_step", "Did you mean 'every_n_steps'?"),
        ({"metrics": ("uniformty",)}, "metrics", "Did you mean 'uniformity'?"),
        ({"loss_family": "simclr"}, "loss_family", "'contrastive', 'non_contrastive' or 'supervised'"),
        ({"rules": [{"kind": "threshold", "metric": "uniformty", "above": -0.5}]}, "rules",
         "Did you mean 'uniformity'?"),
        ({"rules": [{"kind": "threshold", "metric": "nothing_*", "above": 1}]}, "rules", "matches no metric"),
    ],
)
def test_bad_inputs_fail_at_construction_naming_the_field(kwargs, field, fragment):
    with pytest.raises(ValidationError) as info:
        MonitorConfig(**kwargs)
    assert field in str(info.value).splitlines() and fragment in str(info.value)


def test_known_derived_keys_are_valid_rule_metrics():
    MonitorConfig(rules=[{"kind": "threshold", "metric": m, "above": 1.0, "name": m}
                         for m in ("norm_mean", "zero_norm_fraction", "uniformity_stderr", "rows", "alpha_req_r2")])
    MonitorConfig(rules=[{"kind": "nonfinite", "metric": "uniformity*"}])


def test_recursive_and_bomb_structures_fail_fast_naming_the_field():
    deep = inner = {}
    for _ in range(MAX_CONFIG_DEPTH + 5):
        inner["rules"] = {}
        inner = inner["rules"]
    with pytest.raises(ValidationError, match="nested more than"):
        MonitorConfig(rules=deep)
    loop = []
    loop.append(loop)
    with pytest.raises(ValidationError, match="rules"):
        MonitorConfig(rules=loop)
    a = ["x"] * 10
    for _ in range(8):  # 10**9 leaves through shared lists, like a YAML alias bomb
        a = [a] * 10
    with pytest.raises(ValidationError, match="more than 10000 values"):
        MonitorConfig(metrics=a)
    with pytest.raises(ValidationError, match="keys must be strings"):
        MonitorConfig(rules=[{1: "x"}])


def test_yaml_alias_bomb_and_recursion_fail_fast(tmp_path):
    pytest.importorskip("yaml")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    bomb += "spherewatch:\n  metrics: *i\n"  # 10**9 strings once expanded, ~300 bytes on disk
    (tmp_path / "bomb.yaml").write_text(bomb)
    with pytest.raises(ValidationError, match="more than 10000 values"):
        load_config(tmp_path / "bomb.yaml")
    (tmp_path / "deep.yaml").write_text("rules: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match="deep.yaml"):
        load_config(tmp_path / "deep.yaml")
    (tmp_path / "self.yaml").write_text("rules: &r [*r]\n")
    with pytest.raises(ValueError, match="rules"):
        load_config(tmp_path / "self.yaml")


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "latin1.json").write_bytes('{"run_name": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "bad.toml").write_text("every_n_steps = = 3\n")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "keys.yaml").write_text("1: 2\n")
    for name, fragment in (("latin1.json", "not UTF-8"), ("bad.toml", "bad.toml"), ("deep.json", "deep.json"),
                           ("keys.yaml", "must be strings")):
        with pytest.raises(ValueError, match=fragment):
            load_config(tmp_path / name)
    with pytest.raises(ValueError, match="NUL byte"):
        load_config(str(tmp_path / "a\x00.yaml"))


def test_unknown_environment_variable_gets_did_you_mean(monkeypatch):
    monkeypatch.setenv("SPHEREWATCH_EVERY_N_STEP", "10")
    with pytest.raises(ValidationError) as info:
        load_config()
    assert "SPHEREWATCH_EVERY_N_STEP" in str(info.value).splitlines()
    assert "Did you mean 'SPHEREWATCH_EVERY_N_STEPS'?" in str(info.value)


def test_buffer_bytes_are_checked_before_allocating(caplog):
    mon = sw.Monitor(every_n_steps=1, sinks=("memory",), warn=False, max_samples=MAX_SAMPLES_CEILING,
                     max_buffer_bytes=1 << 20)
    mon.observe(torch.randn(8, 64))
    mon.step(0)
    assert mon.faults == {"capture:embeddings": 1} and mon._sampler.taps() == []
    assert "max_buffer_bytes" in caplog.text
    mon.close()


def test_bad_tap_names_are_refused():
    mon = sw.Monitor(every_n_steps=1, sinks=("memory",), warn=False)
    with pytest.raises(ValueError, match="tap name"):
        mon.watch(torch.nn.Linear(2, 2), tap="a/b")
    mon.observe(torch.randn(8, 4), tap="x y")
    mon.step(0)
    assert mon.faults == {"capture:x y": 1}
    mon.close()


# ------------------------------------------------------------------------------------------------ fuzz
FIELDS = list(MonitorConfig.model_fields)
_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["\x00", "/", "a/b", "jsonl", "uniformity", "💥", "1e400"]),
    st.binary(max_size=8),
)
_values = st.recursive(_leaf, lambda c: st.one_of(st.lists(c, max_size=4),
                                                   st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), c,
                                                                   max_size=4)), max_leaves=20)
_keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from([f + "x" for f in FIELDS[:5]] + ["every_n_step"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(_keys, _values, min_size=1, max_size=3))
def test_fuzzed_configs_either_validate_or_fail_naming_a_field(data):
    try:
        cfg = MonitorConfig(**data)
    except (ValidationError, ValueError, TypeError) as err:
        text = str(err)
        assert any(k in text for k in data), text
        assert len(text) < 20_000
        return
    for name in ("every_n_steps", "max_samples", "seed"):
        assert not isinstance(getattr(cfg, name), bool)
    assert math.isfinite(cfg.webhook_timeout) and cfg.webhook_timeout <= 300


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                      _values.map(lambda v: json.dumps({"spherewatch": v}, default=str).encode())),
       suffix=st.sampled_from([".yaml", ".json", ".toml"]))
def test_fuzzed_config_files_fail_only_with_value_errors(tmp_path_factory, blob, suffix):
    path = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    path.write_bytes(blob)
    try:
        load_config(path)
    except (ValidationError, ValueError, TypeError) as err:
        text = str(err)
        assert path.name in text or any(f in text for f in FIELDS), text  # names the file or the field
        assert len(text) < 20_000
