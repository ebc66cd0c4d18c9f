"""Head taps in the Monitor (issue 18): observe_head and watch(kind="head") on the Monitor's schedule, keys,
catalogue, TensorBoard layout, rules that fire on both collapse modes and stay silent on a healthy head."""
import math

import pytest
import torch

import spherewatch as sw
from spherewatch.catalogue import HEAD, head_specs, spec
from spherewatch.config import known_metric_keys
from spherewatch.keys import describe
from spherewatch.metrics.head import head_stats, head_values


def _mon(**kw):
    return sw.Monitor(sinks=("memory",), warn=False, **{"every_n_steps": 5, **kw})


def test_observe_head_logs_the_metrics_of_the_captured_batch_under_the_head_tap():
    mon = _mon()
    batches = {}
    for step in range(1, 11):
        t = torch.randn(32, 16, generator=torch.Generator().manual_seed(step))
        s = t + 0.5
        batches[step] = (t, s)
        mon.observe_head(t, s, teacher_temp=0.1, student_temp=0.2)
        mon.step(step)
    mon.close()
    got = {k: v for k, v in mon.last_values.items() if k.startswith("spherewatch/head/")}
    ref = head_values(head_stats(*batches[10], teacher_temp=0.1, student_temp=0.2))
    assert set(got) == {f"spherewatch/head/{k}" for k in ref}
    for k, v in ref.items():
        assert got[f"spherewatch/head/{k}"] == pytest.approx(float(v), rel=1e-6)
    steps = [s for s, v in mon.sink("memory").scalars if "spherewatch/head/teacher_entropy" in v]
    assert steps == [1, 5, 10]  # the Monitor's schedule (first step, then every 5), as for the embeddings
    assert mon.captures["head"] == 3


def test_observe_head_is_a_flag_check_off_capture_steps_and_takes_one_batch_per_step():
    mon = _mon()
    mon.step(1)  # step 1 is evaluated (sample_first_step); 2 is not a capture step
    assert not mon.armed
    mon.observe_head(torch.zeros(3))  # would be reported if it were looked at
    assert mon.faults == {}
    for step in range(2, 6):
        mon.observe_head(torch.zeros(4, 8))
        mon.observe_head(torch.randn(4, 8))  # a second batch of the same step: not taken
        mon.step(step)
    mon.close()
    assert mon.last_values["spherewatch/head/teacher_entropy"] == pytest.approx(1.0, abs=1e-6)


def test_a_bad_head_batch_is_reported_never_raised_and_strict_raises():
    mon = _mon()
    for step in range(1, 6):
        mon.observe_head(torch.zeros(4))
        mon.step(step)
    mon.close()
    assert mon.faults.get("capture:head") == 2  # the two capture steps (1 and 5), counted, never raised
    strict = _mon(strict=True)
    for step in range(1, 5):
        strict.step(step)
    with pytest.raises(sw.SpherewatchError):
        strict.observe_head(torch.zeros(4))
        strict.step(5)
    strict.close()


def test_watch_kind_head_takes_the_teacher_logits_at_the_current_temperature():
    head = torch.nn.Linear(8, 32)
    temp = {"t": 0.04}
    mon = _mon()
    mon.watch(head, kind="head", tap="teacher", temperature=lambda: temp["t"])
    xs = {}
    for step in range(1, 11):
        temp["t"] = 0.04 + 0.003 * step  # a warm-up schedule
        x = torch.randn(16, 8)
        xs[step] = (x, temp["t"])
        with torch.no_grad():
            head(x)
        mon.step(step)
    mon.close()
    x, t = xs[10]
    ref = head_values(head_stats(head(x).detach(), teacher_temp=t))
    for k, v in ref.items():
        assert mon.last_values[f"spherewatch/teacher/{k}"] == pytest.approx(float(v), rel=1e-5)
    with pytest.raises(ValueError):
        _mon().watch(head, kind="heads")


def test_catalogue_keys_and_tensorboard_layout_have_the_head_metrics(tmp_path):
    names = {s.name for s in head_specs()}
    assert names == {"teacher_entropy", "usage_entropy", "prototypes_in_use", "max_mean_probability",
                     "teacher_student_kl", "dead_prototype_fraction"}
    assert names <= set(known_metric_keys())
    assert not names & set(sw.config.METRICS)  # not a metrics entry of embedding taps
    assert describe("spherewatch/head/usage_entropy").category == HEAD
    assert spec("teacher_entropy").collapsed_value == 1.0
    from spherewatch.sinks.tensorboard import TensorBoardSink

    sink = TensorBoardSink(log_dir=str(tmp_path))
    layout = sink.layout(["spherewatch/uniformity", "spherewatch/head/usage_entropy",
                          "spherewatch/head/teacher_entropy", "spherewatch/norm_mean"])
    assert list(layout) == ["Collapse overview", HEAD, "Health checks"]
    assert set(layout[HEAD]) == {"prototype usage entropy", "teacher entropy"}
    sink.close()


def _feed(mon, make, steps=60):
    for step in range(1, steps + 1):
        mon.observe_head(make(step))
        mon.step(step)
    mon.close()
    return [a for a in mon.alerts if a.status == "fired"]


def test_default_rules_catch_both_modes_within_one_interval_and_escalate():
    k = 128
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(k, 16, generator=g)

    def healthy(step):
        return torch.randn(64, 16, generator=g) @ protos.T * 3

    def uniform_after_30(step):
        return healthy(step) * (0.001 if step > 30 else 1.0)

    def one_prototype_after_30(step):
        x = healthy(step)
        if step > 30:
            x[:, 0] += 100.0
        return x

    assert _feed(_mon(), healthy) == []
    fired = _feed(_mon(), uniform_after_30)
    assert min(a.step for a in fired) == 35 and {a.rule for a in fired} == {"head_uniform_output",
                                                                             "head_uniform_output_persists"}
    assert min(a.step for a in fired if a.severity == "critical") == 45  # three evaluations in a row
    assert "temperature" in fired[0].message and "centring" in fired[0].message
    fired = _feed(_mon(), one_prototype_after_30)
    assert min(a.step for a in fired) == 35
    assert {"head_prototype_collapse", "head_one_prototype"} <= {a.rule for a in fired}
    msg = next(a.message for a in fired if a.rule == "head_prototype_collapse")
    assert "Sinkhorn" in msg and "freezing the prototypes" in msg and "centring" in msg


def test_without_a_head_tap_the_head_rules_see_nothing():
    mon = _mon()
    for step in range(1, 21):
        mon.observe(torch.randn(64, 8))
        mon.step(step)
    mon.close()
    assert not any("/head/" in k for k in mon.last_values)
    assert math.isfinite(mon.last_values["spherewatch/uniformity"])


def test_head_rules_are_part_of_the_defaults_and_escalate_with_persistence():
    from spherewatch.alerts import default_rules
    from spherewatch.alerts.head_defaults import HEAD_RULE_SETTINGS
    from spherewatch.alerts.rules import CollapseRule

    rules = {r.name: r for r in default_rules() if r.name.startswith("head_")}
    assert set(rules) == set(HEAD_RULE_SETTINGS)
    assert all(isinstance(r, CollapseRule) for r in rules.values())
    for base in ("head_uniform_output", "head_prototype_collapse"):
        assert (rules[base].severity, rules[base].patience) == ("warning", 1)
        assert (rules[base + "_persists"].severity, rules[base + "_persists"].patience) == ("critical", 3)
    assert rules["head_one_prototype"].severity == "critical"
    sw.MonitorConfig(rules=list(default_rules()))  # every metric they watch is a known key


def test_the_report_shows_the_head_metrics_and_alerts(tmp_path):
    pytest.importorskip("matplotlib")
    from spherewatch.report import build_report

    mon = sw.Monitor(every_n_steps=5, sinks=("jsonl",), log_dir=str(tmp_path), warn=False)
    for step in range(1, 41):
        mon.observe(torch.randn(64, 8))
        t = torch.randn(64, 32)
        if step > 20:
            t[:, 0] += 50  # one prototype takes every sample
        mon.observe_head(t, teacher_temp=0.5)
        mon.step(step)
    mon.close()
    out = build_report(str(tmp_path / "spherewatch.jsonl"), str(tmp_path / "report"))
    html = (tmp_path / "report" / "report.html").read_text()
    assert "head/prototypes_in_use" in html and "head_prototype_collapse" in html
    assert (tmp_path / "report" / "metrics.png").exists() and out


def test_observe_head_inside_torch_compile_fullgraph_is_taken_at_the_next_step():
    mon = _mon(every_n_steps=2)
    head = torch.nn.Linear(8, 16)

    def f(x):
        t = head(x)
        mon.observe_head(t, teacher_temp=0.5)
        return t.sum()

    compiled = torch.compile(f, fullgraph=True)
    xs = {}
    for step in range(1, 5):
        xs[step] = torch.randn(32, 8)
        compiled(xs[step])
        mon.step(step)
    mon.close()
    ref = head_values(head_stats(head(xs[4]).detach(), teacher_temp=0.5))
    assert mon.last_values["spherewatch/head/teacher_entropy"] == pytest.approx(float(ref["teacher_entropy"]), rel=1e-5)
    assert not mon.faults
