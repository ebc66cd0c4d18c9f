"""What the dashboards show, read back from real TensorBoard event files and a real MLflow SQLite store: keys in
order of importance, categories, descriptions, the alert state and count, params, the run's verdict."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from spherewatch.alerts.alert import Alert
from spherewatch.keys import CATALOGUE, CATEGORIES, LOSS_PATTERN, describe, is_loss_key, order_keys

U = "spherewatch/uniformity"
R = "spherewatch/effective_rank"
N = "spherewatch/norm_mean"
C = "spherewatch/collapsed_dimensions"
COUNT = "spherewatch/alerts/count"
LEVEL = "spherewatch/alerts/level"
SIZE_ALL = {"scalars": 0, "tensors": 0, "histograms": 0}


@dataclasses.dataclass(frozen=True)
class ResolvedAlert(Alert):
    """An alert as the alert-semantics work sends it once it has resolved (``status == "resolved"``)."""

    status: str = "resolved"


def _values(step: int) -> dict:
    return {N: 1.0, C: 0.0, R: 30.0 - step / 10, U: -3.0 + step / 100}


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance=SIZE_ALL)
    acc.Reload()
    return acc


# --------------------------------------------------------------------------------------------- the catalogue
def test_catalogue_orders_keys_by_importance_and_describes_each_metric():
    assert [i.metric for i in CATALOGUE[:4]] == ["uniformity", "effective_rank", "mean_cosine", "alignment"]
    assert [i.category for i in CATALOGUE] == sorted((i.category for i in CATALOGUE), key=CATEGORIES.index)
    for info in CATALOGUE:
        assert info.description and info.collapsed and info.healthy and info.title
    keys = ["spherewatch/enc/norm_max", "train/loss", C, "spherewatch/enc/uniformity", U, "spherewatch/x",
            COUNT, R]
    assert order_keys(keys) == [U, "spherewatch/enc/uniformity", R, "train/loss", COUNT, C,
                                "spherewatch/enc/norm_max", "spherewatch/x"]
    assert describe(R).title == "effective rank" and describe("spherewatch/x") is None


def test_every_metric_the_monitor_computes_is_in_the_catalogue():
    from spherewatch.config import METRICS

    names = {i.metric for i in CATALOGUE}
    expanded = {"norm_mean", "norm_std", "norm_min", "norm_max"} if "norm_stats" in METRICS else set()
    expanded |= {"alpha_req_r2"} if "alpha_req" in METRICS else set()
    assert (set(METRICS) - {"norm_stats"}) | expanded <= names


def test_loss_pattern_matches_the_hosts_usual_loss_tags():
    for tag in ("loss", "train/loss", "train_loss", "val_loss_epoch", "train/loss_step"):
        assert is_loss_key(tag) and re.match(LOSS_PATTERN, tag), tag
    for tag in (U, "spherewatch/loss/x", "lossy", "train/glossary", "learning_rate"):
        assert not is_loss_key(tag), tag


# --------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_layout_puts_the_collapse_overview_first_and_health_checks_closed(tmp_path):
    from spherewatch.sinks import TensorBoardSink

    with TensorBoardSink(str(tmp_path)) as sink:
        for step in (0, 10):
            sink.log_scalars(step, _values(step))
    acc = _read(tmp_path)
    (layout,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout.tensor_proto.string_val[0])
    assert [c.title for c in layout.category] == ["Collapse overview", "Spectrum", "Health checks"]
    assert [c.closed for c in layout.category] == [False, False, True]
    overview = [chart.title for chart in layout.category[0].chart]
    assert overview == ["uniformity", "effective rank", "training loss (host)",
                        "alert level (0 ok, 2 warning, 3 critical)", "alerts fired"]
    loss_regex = layout.category[0].chart[2].multiline.tag[0]
    assert re.match(loss_regex, "train/loss") and not re.match(loss_regex, U)


def test_tensorboard_tags_carry_their_description_and_the_alert_count_starts_at_zero(tmp_path):
    from spherewatch.sinks import TensorBoardSink

    with TensorBoardSink(str(tmp_path)) as sink:
        sink.log_scalars(1, _values(1))
        sink.log_scalars(10, _values(10))
        first = Alert("uniformity_degradation", U, -2.0, 10, "warning", "losing spread", 1000.0)
        sink.log_alert(first)
        sink.log_alert(first)  # a replay is not counted twice
        sink.log_alert(ResolvedAlert("uniformity_degradation", U, -2.9, 20, "warning", "back", 1001.0))
        sink.log_scalars(20, _values(20))
    acc = _read(tmp_path)
    info = describe(U)
    assert acc.SummaryMetadata(U).summary_description == info.one_line
    assert "Collapsed:" in info.one_line and "Healthy:" in info.one_line
    # one point per evaluation: the count rises at the alert's step, the level stays up until the alert resolves
    assert [(e.step, e.value) for e in acc.Scalars(COUNT)] == [(1, 0.0), (10, 1.0), (20, 1.0)]
    assert [(e.step, e.value) for e in acc.Scalars(LEVEL)] == [(1, 0.0), (10, 2.0), (20, 0.0)]
    assert "3 critical" in acc.SummaryMetadata(LEVEL).summary_description
    assert acc.SummaryMetadata(COUNT).summary_description == describe(COUNT).one_line
    assert [e.step for e in acc.Scalars(U)] == [1, 10, 20]


def test_tensorboard_receives_keys_in_order_of_importance(tmp_path):
    from spherewatch.sinks import TensorBoardSink

    with TensorBoardSink(str(tmp_path)) as sink:
        sink.log_scalars(1, _values(1))
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    (path,) = tmp_path.glob("events.out.tfevents.*")
    tags = [v.tag for event in EventFileLoader(str(path)).Load() for v in event.summary.value]
    scalar_tags = list(dict.fromkeys(t for t in tags if t.startswith("spherewatch/")))  # first points: twice
    assert scalar_tags == [U, R, C, N, COUNT, LEVEL]  # the alert state follows, once the step's alerts are in


def test_tensorboard_params_are_a_text_table(tmp_path):
    from spherewatch.sinks import TensorBoardSink

    with TensorBoardSink(str(tmp_path)) as sink:
        sink.log_params({"spherewatch.every_n_steps": 10})
        sink.log_params({"lr": 0.05})
    acc = _read(tmp_path)
    own = acc.Tensors("spherewatch/params/text_summary")[0].tensor_proto.string_val[0].decode()
    host = acc.Tensors("hparams/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "`spherewatch.every_n_steps` | `10`" in own and "`lr` | `0.05`" in host


# --------------------------------------------------------------------------------------------- MLflow
def _run(uri, run_id):
    from mlflow import MlflowClient

    return MlflowClient(uri).get_run(run_id)


def _history(uri, run_id, key):
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in sorted(MlflowClient(uri).get_metric_history(run_id, key),
                                              key=lambda m: m.step)]


def test_mlflow_alert_state_is_ok_from_the_start_worst_open_while_firing_and_ok_once_resolved(mlflow_uri):
    from spherewatch.sinks import MLflowSink

    sink = MLflowSink(mlflow_uri, experiment_name="state")
    sink.log_scalars(1, _values(1))
    tags = _run(mlflow_uri, sink.run_id).data.tags
    assert tags["spherewatch.alert_state"] == "ok" and tags["spherewatch.worst_severity"] == "ok"
    assert "spherewatch.first_alert_step" not in tags
    assert _history(mlflow_uri, sink.run_id, COUNT) == [(1, 0.0)]

    sink.log_alert(Alert("uniformity_collapse", U, -0.4, 20, "critical", "collapsed", 1000.0))
    sink.log_alert(Alert("rank_collapse", R, 3.0, 30, "warning", "rank fell", 1001.0))
    tags = _run(mlflow_uri, sink.run_id).data.tags
    assert tags["spherewatch.alert_state"] == "critical"  # the worst still open, not the latest
    assert tags["spherewatch.first_alert_step"] == "20"

    sink.log_alert(ResolvedAlert("uniformity_collapse", U, -2.5, 40, "critical", "spread again", 1002.0))
    assert _run(mlflow_uri, sink.run_id).data.tags["spherewatch.alert_state"] == "warning"
    sink.log_alert(ResolvedAlert("rank_collapse", R, 30.0, 50, "warning", "rank back", 1003.0))
    tags = _run(mlflow_uri, sink.run_id).data.tags
    assert tags["spherewatch.alert_state"] == "ok" and tags["spherewatch.worst_severity"] == "critical"
    assert _history(mlflow_uri, sink.run_id, COUNT) == [(1, 0.0), (20, 1.0), (30, 2.0)]
    sink.close()


def test_mlflow_params_have_a_prefix_and_never_overwrite_the_hosts(mlflow_uri):
    import mlflow

    from spherewatch.sinks import MLflowSink

    mlflow.set_tracking_uri(mlflow_uri)
    try:
        # an explicit experiment: an active experiment id left by an earlier test belongs to another store
        experiment = mlflow.set_experiment("host-params")
        with mlflow.start_run(experiment_id=experiment.experiment_id) as host:
            mlflow.log_param("lr", "0.1")
            sink = MLflowSink(mlflow_uri)
            sink.log_params({"lr": "0.5", "spherewatch.every_n_steps": 10})
            sink.log_params({"spherewatch.every_n_steps": 20})  # logged once: never changed
            sink.log_scalars(1, _values(1))
            sink.close()
            params = _run(mlflow_uri, host.info.run_id).data.params
            tags = _run(mlflow_uri, host.info.run_id).data.tags
    finally:
        mlflow.set_tracking_uri(None)
        import mlflow.tracking.fluent as fluent

        fluent._active_experiment_id = None  # set_experiment is process-global: leave no experiment of this store
    assert params == {"lr": "0.1", "spherewatch.every_n_steps": "10"}
    assert "mlflow.note.content" not in tags  # the host's run: its description is the host's


def test_mlflow_run_the_monitor_owns_gets_the_verdict_config_params_and_the_report(mlflow_uri, tmp_path):
    import torch

    import spherewatch as sw
    from spherewatch.demo import run_scenario

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mon = sw.Monitor(every_n_steps=10, sinks=("mlflow",), tracking_uri=mlflow_uri, experiment_name="owned",
                         warn=False, log_dir=str(tmp_path))
        run_scenario("simsiam_no_stopgrad", mon, steps=60, on_step=lambda s, loss: mon.log(s, {"train/loss": loss})
                     if s % 10 == 0 else None)
        run_id = mon.sink("mlflow").run_id
        mon.close()
    finally:
        torch.set_num_threads(threads)
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.data.params["spherewatch.every_n_steps"] == "10"
    assert run.data.params["spherewatch.preset"] == "standard"
    rule = json.loads(run.data.params["spherewatch.rule.uniformity_collapse"])
    assert rule["kind"] == "collapse" and rule["metric"] == "uniformity" and rule["severity"] == "critical"
    note = run.data.tags["mlflow.note.content"]
    assert re.match(r"\*\*spherewatch: collapse detected at step \d+", note), note
    assert "train/loss" in run.data.metrics
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    report = {a.path for a in client.list_artifacts(run_id, "spherewatch/report")}
    assert {"spherewatch/report/report.html", "spherewatch/report/overview.png"} <= report


def test_a_writer_other_than_torchs_gets_plain_calls_in_the_same_order():
    from spherewatch.sinks import TensorBoardSink

    class Writer:  # e.g. tensorboardX's SummaryWriter: its own protos, so only the public methods are used
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, global_step=None, walltime=None):
            self.calls.append(("scalar", tag))

        def add_custom_scalars(self, layout):
            self.calls.append(("layout", list(layout)))

        def add_histogram(self, *args, **kwargs):
            pass

        def add_text(self, *args, **kwargs):
            pass

        def flush(self):
            pass

    writer = Writer()
    sink = TensorBoardSink(writer=writer)
    sink.log_scalars(1, _values(1))
    sink.close()
    assert writer.calls[0] == ("layout", ["Collapse overview", "Spectrum", "Health checks"])
    assert [tag for kind, tag in writer.calls[1:]] == [U, R, C, N, COUNT, LEVEL]


def test_the_hosts_hyperparameters_reach_the_hparams_tab_with_the_overview_metrics(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    from spherewatch.sinks import TensorBoardSink

    with TensorBoardSink(str(tmp_path)) as sink:
        sink.log_params({"lr": 0.05, "scenario": "simsiam"})
        sink.log_scalars(1, _values(1))
    acc = _read(tmp_path)
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {h.name for h in experiment.hparam_infos} == {"lr", "scenario"}
    assert [m.name.tag for m in experiment.metric_infos] == [U, R, COUNT]


def test_tensorboard_alert_level_and_count_mark_every_evaluation_and_where_alerts_fired(tmp_path):
    """The level is the worst open alert's rank (2 warning, 3 critical), the count rises by one per fired alert at its
    step; a replayed alert counts once, faults never; several alerts of one step add up at that step."""
    from spherewatch.sinks import TensorBoardSink
    from spherewatch.sinks.tensorboard import custom_scalars_url

    with TensorBoardSink(str(tmp_path)) as sink:
        for step in range(0, 70, 10):
            sink.log_scalars(step, _values(step))
            if step == 20:
                first = Alert("uniformity_degradation", U, -2.8, 20, "warning", "losing spread", 1000.0)
                sink.log_alert(first)
                sink.log_alert(first)  # a replay
            if step == 40:
                sink.log_alert(Alert("uniformity_collapse", U, -0.3, 40, "critical", "collapsed", 1001.0))
                sink.log_alert(Alert("rank_collapse", R, 3.0, 40, "warning", "rank fell", 1002.0))
                sink.log_alert(Alert("monitor_fault", "spherewatch/monitor/x", 1.0, 40, "warning", "fault", 1003.0))
            if step == 50:
                sink.log_alert(ResolvedAlert("uniformity_collapse", U, -2.5, 50, "critical", "back", 1004.0))
            sink.flush()
    acc = _read(tmp_path)
    assert [(e.step, e.value) for e in acc.Scalars(COUNT)] == [
        (0, 0.0), (10, 0.0), (20, 1.0), (30, 1.0), (40, 3.0), (50, 3.0), (60, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars(LEVEL)] == [
        (0, 0.0), (10, 0.0), (20, 2.0), (30, 2.0), (40, 3.0), (50, 2.0), (60, 2.0)]
    # the layout's overview charts the level and the count, each from its own tag only
    (layout,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(layout.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for c in layout.category[0].chart}
    (level_regex,) = charts["alert level (0 ok, 2 warning, 3 critical)"]
    (count_regex,) = charts["alerts fired"]
    tags = acc.Tags()["scalars"]
    assert [t for t in tags if re.match(level_regex, t)] == [LEVEL]
    assert [t for t in tags if re.match(count_regex, t)] == [COUNT]
    assert custom_scalars_url("http://127.0.0.1:6006/") == "http://127.0.0.1:6006/#custom_scalars&_smoothingWeight=0"


def test_tensorboard_alert_level_of_alerts_without_evaluations_and_a_failed_write_kept(tmp_path):
    """A sink used directly (alerts, no values) still writes the level and count at the alerts' steps; a write that
    fails keeps them for the next writer."""
    from spherewatch.sinks import TensorBoardSink

    sink = TensorBoardSink(str(tmp_path))
    sink.log_alert(Alert("uniformity_collapse", U, -0.3, 7, "critical", "collapsed", 1000.0))
    real, calls = sink._writer.flush, []

    def failing():
        calls.append(1)
        raise OSError("disk full")

    sink._writer.flush = failing
    with pytest.raises(OSError):
        sink.flush()
    sink._writer.flush = real
    sink.close()  # a new event file: the point is written again
    acc = _read(tmp_path)
    assert {(e.step, e.value) for e in acc.Scalars(COUNT)} == {(7, 1.0)}  # in both event files, the same point
    assert {(e.step, e.value) for e in acc.Scalars(LEVEL)} == {(7, 3.0)}
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2 and calls
