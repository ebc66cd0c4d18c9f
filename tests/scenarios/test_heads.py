"""Default head rules on real DINO training (examples/dino.py on scikit-learn's digits): silent on the healthy run
(teacher-temperature warm-up, prototypes frozen), an alert within one sampling interval of the onset that the probe
measures against the healthy twin when the teacher's temperature is raised far too high (uniform output). Short
runs (300 steps, ~5 s each on an idle core); benchmarks/heads.py runs the full 400.

benchmarks/heads.py runs every scenario (DINO and SwAV, both collapse modes) with three seeds and prints the table.
"""
import spherewatch as sw
from scenarios.heads import run_head_scenario


def _head_alerts(mon):
    return [a for a in mon.alerts if a.status == "fired" and a.rule.startswith("head_")]


def test_healthy_dino_raises_no_head_alert_at_default_settings():
    mon = sw.Monitor(sinks=("memory",), warn=False)
    run = run_head_scenario("dino", mon, seed=0, steps=300)
    mon.close()
    assert _head_alerts(mon) == [], [str(a) for a in _head_alerts(mon)]
    values = mon.sink("memory").scalars[-1][1]
    assert 0.3 < values["spherewatch/head/teacher_entropy"] < 0.9
    assert values["spherewatch/head/prototypes_in_use"] > 100
    assert "spherewatch/backbone/uniformity" in values  # the two taps
    assert run.probe[-1][1] > 10


def test_dino_hot_teacher_is_caught_within_one_interval_of_the_onset():
    mon = sw.Monitor(sinks=("memory",), warn=False)
    run = run_head_scenario("dino_hot_teacher", mon, seed=0, steps=300, switch=150)
    mon.close()
    alerts = _head_alerts(mon)
    assert run.onset is not None and alerts
    first = min(a.step for a in alerts)
    assert run.switch <= first <= run.onset + mon.config.every_n_steps, (run.onset, first)
    assert {a.rule for a in alerts} >= {"head_uniform_output"}
    critical = [a.step for a in alerts if a.severity == "critical"]
    assert critical and min(critical) >= run.onset and min(critical) > first  # escalates with persistence
