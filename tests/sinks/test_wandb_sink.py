"""WandbSink with the real wandb client in offline mode: every point goes into the host's run once, at its own step
metric, read back from the run's own .wandb file with wandb's protobuf schema (no network, no account)."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("wandb")

import wandb_files  # noqa: E402
from wandb_files import evaluations, offline_runs  # noqa: E402

import spherewatch as sw  # noqa: E402

wandb_env = wandb_files.wandb_env  # the fixture: offline W&B under tmp_path

U = "spherewatch/uniformity"
STEP = "spherewatch/step"


def _train(mon, steps, log, collapse_at=None):
    g = torch.Generator().manual_seed(0)
    for step in steps:
        z = torch.randn(64, 16, generator=g)
        if collapse_at is not None and step >= collapse_at:  # all rows along one direction: rank and spread collapse
            z = z[:, :1] * torch.ones(1, 16) + 1e-3 * z
        mon.observe(z)
        log(step)
        mon.step(step)


def _spherewatch_rows(run):
    return evaluations(run)


def _assert_every_point_once(run, memory):
    """Each evaluation the Monitor made is one history row, at its step, with every scalar of that evaluation as the
    Monitor computed it (the memory sink beside it)."""
    rows = _spherewatch_rows(run)
    assert [row[STEP] for row in rows] == [step for step, _ in memory.scalars]
    for row, (step, values) in zip(rows, memory.scalars):
        for key, value in values.items():
            assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (step, key)
    return rows


def test_the_hosts_run_gets_every_point_once_against_spherewatchs_step(wandb_env):
    import wandb

    run = wandb.init(project="host")
    memory = sw.sinks.MemorySink()
    mon = sw.Monitor(sinks=("wandb", memory), every_n_steps=5, warn=False, log_dir=str(wandb_env / "sw"),
                     alert_channels=("wandb",), preset="full")
    _train(mon, range(40), lambda step: run.log({"train/loss": 1.0 / (step + 1)}), collapse_at=20)
    mon.close()
    assert wandb.run is run  # the host's run stays the active one, open
    run.finish()

    runs = offline_runs(wandb_env)
    assert [r.run_ids for r in runs] == [[run.id]]  # one run: the host's
    got = runs[0]
    assert len(got.rows_with("train/loss")) == 40  # the host's points: none lost, none moved
    rows = _assert_every_point_once(got, memory)
    assert [row[STEP] for row in rows] == list(range(0, 40, 5))
    by_step = {row[STEP]: row for row in rows}
    assert memory.histograms  # each spectrum in its evaluation's row, as a histogram of its finite values
    for step, key, values in memory.histograms:
        hist = by_step[step][key]
        assert hist["_type"] == "histogram" and sum(hist["values"]) == int(np.isfinite(values).sum())
    assert sum(key in row for row in rows for key in {k for _, k, _ in memory.histograms}) == len(memory.histograms)
    # charts use spherewatch's step, never the host's
    assert any(m.glob_name == "spherewatch/*" and m.step_metric == STEP for m in got.metrics)
    assert any(m.name == U and m.step_metric == STEP for m in got.metrics)
    # alerts: one W&B alert per episode, at its level; the state and the verdict in the summary
    fired = [a for a in memory.alerts if a.status == "fired" and a.count == 1 and a.kind == "collapse"]
    assert fired and len(got.alerts) == len(fired)
    assert len({a.title for a in got.alerts}) == len(got.alerts)
    assert {a.level for a in got.alerts} <= {"WARN", "ERROR"}
    assert got.summary["spherewatch/alert_state"] == "critical"
    assert got.summary["spherewatch/alerts_fired"] == len(fired)
    assert got.summary["spherewatch/verdict"].startswith("collapse detected at step 20")
    assert rows[-1]["spherewatch/alerts/count"] == len(fired)
    assert got.config["spherewatch"]["every_n_steps"] == "5"


def test_a_host_that_logs_with_step_loses_no_point_and_keeps_its_steps(wandb_env):
    """The host passes ``step=`` and logs twice per step: spherewatch's rows ride along with the host's rows
    (``commit=False``), so no host point is dropped for a step that went backwards, and every host row keeps its step."""
    import wandb

    run = wandb.init(project="host")
    memory = sw.sinks.MemorySink()
    mon = sw.Monitor(sinks=("wandb", memory), every_n_steps=5, warn=False, log_dir=str(wandb_env / "sw"))

    g = torch.Generator().manual_seed(0)
    for step in range(40):
        mon.observe(torch.randn(64, 16, generator=g))
        run.log({"train/loss": float(step)}, step=step)
        mon.step(step)
        mon.flush(10)  # the writer has logged this evaluation before the host logs the same step again
        run.log({"train/lr": 0.1 * step}, step=step)
    mon.close()
    run.finish()
    got = offline_runs(wandb_env)[0]
    loss = {row["_step"]: row["train/loss"] for row in got.rows_with("train/loss")}
    lr = {row["_step"]: row["train/lr"] for row in got.rows_with("train/lr")}
    assert loss == {s: float(s) for s in range(40)}
    assert lr == {s: pytest.approx(0.1 * s) for s in range(40)}
    _assert_every_point_once(got, memory)


def test_without_a_host_run_it_opens_its_own_and_finishes_it(wandb_env):
    import wandb

    mon = sw.Monitor(sinks=("wandb",), every_n_steps=2, warn=False, log_dir=str(wandb_env / "sw"),
                     experiment_name="own-project")
    _train(mon, range(10), lambda step: None)
    mon.close()
    assert wandb.run is None  # never the process's global run
    runs = offline_runs(wandb_env)
    assert len(runs) == 1
    got = runs[0]
    assert any(r.WhichOneof("record_type") == "exit" for r in got.records)  # finished by the sink
    assert [row[STEP] for row in _spherewatch_rows(got)] == [0, 2, 4, 6, 8]
    assert got.summary["spherewatch/alert_state"] == "ok"
    assert got.summary["spherewatch/verdict"] == "healthy: no alerts in 8 steps"
    assert got.alerts == []  # the channel is off by default


def test_an_outage_of_run_log_loses_nothing_and_keeps_the_order(wandb_env):
    import wandb

    run = wandb.init(project="host")
    real_log = run.log
    down = threading.Event()
    down.set()
    failures = []

    def log(data, *args, **kwargs):  # the monitor's writer thread finds W&B down; the host's thread never does
        if down.is_set() and threading.current_thread() is not threading.main_thread():
            failures.append(1)
            raise ConnectionError("wandb service unreachable")
        return real_log(data, *args, **kwargs)

    run.log = log
    memory = sw.sinks.MemorySink()
    mon = sw.Monitor(sinks=("wandb", memory), every_n_steps=2, warn=False, log_dir=str(wandb_env / "sw"))
    _train(mon, range(20), lambda step: run.log({"train/loss": float(step)}))
    assert mon.flush(10)
    down.clear()  # back up: close delivers the backlog, in order, once
    mon.close()
    run.log = real_log
    run.finish()
    assert failures
    got = offline_runs(wandb_env)[0]
    rows = _assert_every_point_once(got, memory)
    assert [row[STEP] for row in rows] == list(range(0, 20, 2))
    assert len(got.rows_with("train/loss")) == 20


def test_disabled_mode_writes_nothing_and_training_goes_on(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    mon = sw.Monitor(sinks=("wandb",), every_n_steps=2, warn=False, log_dir=str(wandb_env / "sw"))
    _train(mon, range(6), lambda step: None)
    mon.close()
    assert offline_runs(wandb_env) == []
    assert not any(k.startswith("sink") and n for k, n in mon.faults.items())


def test_the_wandb_alert_channel_alone_adds_the_sink_into_the_hosts_run(wandb_env, monkeypatch):
    import wandb

    from spherewatch.sinks import WandbSink

    monkeypatch.setenv("SPHEREWATCH_ALERT_CHANNELS", "wandb")
    run = wandb.init(project="host")
    mon = sw.Monitor(every_n_steps=5, warn=False, log_dir=str(wandb_env / "sw"),
                     rules=[{"kind": "threshold", "metric": "mean_cosine", "above": -1.0}])
    _train(mon, range(12), lambda step: run.log({"train/loss": float(step)}))
    names = [getattr(s, "name", None) for s in mon.sinks]
    assert names == ["jsonl", "wandb"] and isinstance(mon.sinks[1], WandbSink)
    assert mon.sinks[1].run is run and mon.sinks[1].alerts_enabled
    mon.close()
    run.finish()
    (got,) = offline_runs(wandb_env)
    assert len(got.alerts) == 1 and got.alerts[0].level == "WARN"  # open from step 0 to the end: one W&B alert
    assert got.alerts[0].wait_duration == 3600 * 1000


def test_alert_titles_are_the_alerts_identity_and_fit_w_and_bs_limit():
    from spherewatch.alerts import Alert
    from spherewatch.sinks.wandb import alert_title

    a = Alert("rank_collapse", "spherewatch/effective_rank", 1.2, 40, "critical")
    assert alert_title(a) == "spherewatch critical: rank_collapse on effective_rank"
    long_a = Alert("uniformity_degradation_persists", "spherewatch/a_very_long_tap_name/uniformity", -0.5, 40)
    other = Alert("uniformity_degradation_persists", "spherewatch/a_very_long_tap_name_two/uniformity", -0.5, 40)
    assert len(alert_title(long_a)) < 64 and alert_title(long_a) != alert_title(other)
    assert alert_title(long_a) == alert_title(dataclasses.replace(long_a, step=90, value=-0.1))  # the same condition


def test_points_spooled_while_wandb_was_down_go_into_the_run_once_when_the_run_resumes(wandb_env):
    """W&B fails for the monitor during a whole run: its points wait in the spool folder; the resumed Monitor (same
    state, same spool folder) delivers them into the host's run before its own, each once."""
    import wandb

    run = wandb.init(project="host")
    real_log = run.log

    def down(data, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            raise ConnectionError("wandb service unreachable")
        return real_log(data, *args, **kwargs)

    run.log = down
    spool = str(wandb_env / "spool")
    first = sw.Monitor(sinks=("wandb",), every_n_steps=2, warn=False, log_dir=str(wandb_env / "sw"), spool_dir=spool)
    _train(first, range(10), lambda step: run.log({"train/loss": float(step)}))
    state = first.state_dict()
    first.close()  # still down: the points stay in the spool folder
    run.log = real_log
    memory = sw.sinks.MemorySink()
    second = sw.Monitor(sinks=("wandb", memory), every_n_steps=2, warn=False, log_dir=str(wandb_env / "sw"),
                        spool_dir=spool)
    second.load_state_dict(state)
    _train(second, range(10, 16), lambda step: run.log({"train/loss": float(step)}))
    second.close()
    run.finish()
    (got,) = offline_runs(wandb_env)
    assert got.run_ids == [run.id]
    assert [row[STEP] for row in _spherewatch_rows(got)] == list(range(0, 16, 2))  # once each, in order
    assert len(got.rows_with("train/loss")) == 16


def test_an_online_run_without_credentials_fails_with_the_fix_instead_of_prompting(tmp_path, monkeypatch):
    from spherewatch.sinks import WandbSink

    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    import wandb

    wandb.teardown()  # settings read in this environment, not another test's
    try:
        with pytest.raises(RuntimeError, match="wandb login"):
            WandbSink(project="x", mode="online")
    finally:
        wandb.teardown()
