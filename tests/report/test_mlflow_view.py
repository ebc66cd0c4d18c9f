"""The MLflow view the demo links to: spherewatch's saved chart view of the experiment (collapse overview first,
titles whole at 1400 px, model training workflow), checked on a real SQLite store and rendered by a real `mlflow
server` in headless Chromium."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

pytest.importorskip("mlflow")

from spherewatch.catalogue import head_specs
from spherewatch.keys import CATALOGUE, OVERVIEW
from spherewatch.sinks import mlflow_view as mv
from spherewatch.sinks.mlflow_view import VIEW_NAME, compress, decompress, view_state, view_tag, view_url, write_view

HEAD = {spec.name for spec in head_specs()}

TAG = mv.SHARED_VIEW_TAG_PREFIX + mv.VIEW_ID
U, R, C, A = (f"spherewatch/{m}" for m in ("uniformity", "effective_rank", "mean_cosine", "alignment"))
COUNT = "spherewatch/alerts/count"
OVERVIEW_KEYS = [U, R, C, A]
ALL_KEYS = [f"spherewatch/{i.metric}" for i in CATALOGUE
            if i.metric != "spectrum" and i.metric not in HEAD]  # embeddings
HEAD_KEYS = [f"spherewatch/head/{name}" for name in sorted(HEAD)]  # a head tap (observe_head)


def _saved_state(client, experiment_id):
    envelope = json.loads(client.get_experiment(experiment_id).tags[TAG])
    assert envelope["name"] == VIEW_NAME and isinstance(envelope["createdAt"], int)
    return decompress(envelope["state"])


def _sections(state):
    names = {s["uuid"]: s["name"] for s in state["compareRunSections"]}
    out = {}
    for card in state["compareRunCharts"]:
        out.setdefault(names[card["metricSectionId"]], []).append(card["metricKey"])
    return out


# ------------------------------------------------------------------------------------------------ the state itself
def test_the_overview_section_comes_first_with_the_loss_and_the_alert_count_unsmoothed():
    keys = sorted(ALL_KEYS) + ["train/loss", "lr", "spherewatch/uniformity_stderr"]  # alphabetical, as MLflow has them
    state = view_state(keys)
    assert [s["name"] for s in state["compareRunSections"]] == ["Collapse overview", "Spectrum", "Health checks"]
    assert [s["display"] for s in state["compareRunSections"]] == [True, True, False]  # health checks: closed
    sections = _sections(state)
    assert sections["Collapse overview"] == OVERVIEW_KEYS + ["train/loss", COUNT]
    assert {"spherewatch/collapsed_dimensions", "spherewatch/lidar"} <= set(sections["Spectrum"])
    assert sections["Health checks"][-2:] == ["spherewatch/uniformity_stderr", "lr"]  # unknown keys last
    assert sorted(k for ks in sections.values() for k in ks) == sorted(set(keys) | {COUNT})


def test_a_head_tap_gets_its_section_after_the_spectrum():
    state = view_state(sorted(ALL_KEYS + HEAD_KEYS))
    assert [s["name"] for s in state["compareRunSections"]] == [
        "Collapse overview", "Spectrum", "Assignment head", "Health checks"]
    assert set(_sections(state)["Assignment head"]) == set(HEAD_KEYS)
    for card in state["compareRunCharts"]:  # a count is a count: no smoothing, steps on the x axis
        assert card["type"] == "LINE" and card["lineSmoothness"] == 0 and not card["useGlobalLineSmoothing"]
        assert card["xAxisKey"] == "step" and card["selectedMetricKeys"] == [card["metricKey"]]
    assert state["globalLineChartConfig"]["lineSmoothness"] == 0
    assert all(s["columns"] == 2 for s in state["compareRunSections"]) and state["runListHidden"] is True
    # the search facets: every active run of the experiment, none filtered out
    assert state["searchFilter"] == "" and state["lifecycleFilter"] == "Active" and state["startTime"] == "ALL"


def test_the_overview_gathers_every_tap_and_another_prefix():
    keys = ["mon/enc/uniformity", "mon/uniformity", "mon/proj/effective_rank", "loss"]
    sections = _sections(view_state(keys, prefix="mon/"))
    assert sections["Collapse overview"] == ["mon/uniformity", "mon/enc/uniformity", "mon/proj/effective_rank",
                                             "loss", "mon/alerts/count"]


def test_the_tag_is_the_uis_saved_view_envelope_compressed_as_the_ui_does_and_fits_mlflows_limit():
    value = json.loads(view_tag(ALL_KEYS, now=1000.0))
    assert value["name"] == VIEW_NAME and value["createdAt"] == value["updatedAt"] == 1000000
    assert value["state"].startswith("deflate;")  # pako's zlib stream, base64: what the UI's own views hold
    assert decompress(value["state"]) == view_state(ALL_KEYS)
    assert decompress(json.dumps({"a": 1})) == {"a": 1}  # a plain JSON view reads too
    assert decompress(compress({"a": [1, "é"]})) == {"a": [1, "é"]}
    many = [f"spherewatch/tap{i}/{m}" for i in range(40) for m in ("uniformity", "norm_mean", "lidar", "x")]
    big = view_tag(many)
    assert len(big) <= 20000
    kept = [c["metricKey"] for c in decompress(json.loads(big)["state"])["compareRunCharts"]]
    full = [c["metricKey"] for c in view_state(many)["compareRunCharts"]]
    assert sorted(kept[:40]) == sorted(f"spherewatch/tap{i}/uniformity" for i in range(40)) and kept[40] == COUNT
    assert kept == full[:len(kept)]  # what does not fit goes from the end: the health checks


def test_view_url_opens_the_saved_view_in_the_model_training_charts():
    url = view_url("7", base="http://mlflow.example:5000/")
    assert url == ("http://mlflow.example:5000/#/experiments/7/runs?viewStateShareKey=spherewatch"
                   "&compareRunsMode=CHART&workflowType=machine_learning")
    # no search facet in the URL: the UI would ignore the saved view
    for facet in ("searchFilter", "orderByKey", "orderByAsc", "startTime", "lifecycleFilter", "modelVersionFilter",
                  "datasetsFilter"):
        assert facet not in url
    assert view_url("7").startswith("http://127.0.0.1:5000/#/")  # `mlflow ui`'s address for a local store


# ------------------------------------------------------------------------------------------------ the sink writes it
def test_the_sink_saves_the_view_with_its_first_values_merges_other_runs_and_links_it_from_the_verdict(mlflow_uri):
    from mlflow import MlflowClient

    from spherewatch.alerts.alert import Alert
    from spherewatch.sinks import MLflowSink

    sink = MLflowSink(mlflow_uri, experiment_name="view")
    sink.log_scalars(5, {"train/loss": 1.0})  # the host's loss before the first evaluation: no view yet
    client = MlflowClient(mlflow_uri)
    assert TAG not in client.get_experiment(sink.experiment_id).tags
    sink.log_scalars(10, {"spherewatch/norm_mean": 1.0, U: -3.0, R: 30.0, "train/loss": 0.9})
    assert _sections(_saved_state(client, sink.experiment_id))["Collapse overview"] == [U, R, "train/loss", COUNT]
    sink.log_scalars(20, {"spherewatch/enc/uniformity": -2.0, U: -2.9})  # a tap seen later: added at close
    sink.log_alert(Alert("uniformity_collapse", U, -0.3, 20, "critical", "collapsed", 1000.0))
    sink.close()
    state = _saved_state(client, sink.experiment_id)
    assert _sections(state)["Collapse overview"] == [U, "spherewatch/enc/uniformity", R, "train/loss", COUNT]
    note = client.get_run(sink.run_id).data.tags["mlflow.note.content"]
    assert f"[{VIEW_NAME}](#/experiments/{sink.experiment_id}/runs?viewStateShareKey=spherewatch" in note
    assert sink.view_url() == view_url(sink.experiment_id)

    class Monitor:  # what view_url accepts besides the sink: a Monitor holding it, an MLflow Run
        def sink(self, name):
            return sink

    assert view_url(Monitor()) == view_url(client.get_run(sink.run_id)) == sink.view_url()

    other = MLflowSink(mlflow_uri, experiment_name="view")  # a second run of the experiment keeps the first's keys
    other.log_scalars(10, {A: 0.5})
    other.close()
    overview = _sections(_saved_state(client, sink.experiment_id))["Collapse overview"]
    assert overview == [U, "spherewatch/enc/uniformity", R, A, "train/loss", COUNT]


def test_a_view_the_user_saved_under_the_same_id_is_replaced_only_by_spherewatchs(mlflow_uri):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("mine")
    client.set_experiment_tag(experiment_id, TAG, json.dumps({"name": "mine", "createdAt": 1, "state": "{}"}))
    assert write_view(client, experiment_id, [U])
    assert _sections(_saved_state(client, experiment_id))["Collapse overview"] == [U, COUNT]  # not merged with it
    before = client.get_experiment(experiment_id).tags[TAG]
    time.sleep(0.01)
    assert write_view(client, experiment_id, [U])  # the same view: not rewritten (its timestamps stay)
    assert client.get_experiment(experiment_id).tags[TAG] == before


def test_chart_view_false_saves_nothing_and_a_failure_never_reaches_the_run(mlflow_uri):
    from mlflow import MlflowClient

    from spherewatch.sinks import MLflowSink

    sink = MLflowSink(mlflow_uri, experiment_name="no-view", chart_view=False)
    sink.log_scalars(1, {U: -3.0})
    sink.close()
    assert TAG not in MlflowClient(mlflow_uri).get_experiment(sink.experiment_id).tags

    class Refusing:
        def get_experiment(self, experiment_id):
            raise RuntimeError("read-only server")

    assert write_view(Refusing(), "1", [U]) is False


# ------------------------------------------------------------------------------------------------ seen in a browser
@pytest.fixture(scope="module")
def chromium_page(tmp_path_factory):
    from chromium_browser import Browser, find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not found; `apt-get install -y chromium` to render the MLflow UI as a browser does.")
    browser = Browser(chromium, str(tmp_path_factory.mktemp("chromium-mlflow-view")), 1400, 1000)
    yield browser
    browser.close()


# Every card title in the chart view (an <h4> in a card), in page order, with whether it is cut (ellipsis).
CARD_TITLES = """[...document.querySelectorAll('[data-testid="experiment-view-compare-runs-card"] h4')].map(e => {
  const r = e.getBoundingClientRect();
  return {text: e.textContent.trim(), cut: e.scrollWidth > e.clientWidth + 1, top: Math.round(r.top),
          left: Math.round(r.left), width: Math.round(r.width)};
})"""
SECTION_TITLES = """[...document.querySelectorAll('[data-testid="experiment-view-compare-runs-section-header"]')]
  .map(e => e.textContent.trim())"""


def test_the_demo_link_shows_the_collapse_overview_first_with_whole_titles_at_1400_px(monitored_run, chromium_page,
                                                                                         tmp_path):
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer

    run = MlflowClient(monitored_run.tracking_uri).get_run(monitored_run.run_id)
    server = MlflowServer(tmp_path, monitored_run.log_dir / "mlflow.db")  # serves a copy of the run's store
    server.start()
    browser = chromium_page
    try:
        browser.resize(1400, 1000)
        browser.goto(view_url(run, base=server.uri))
        text = browser.wait_for_text(VIEW_NAME, "Collapse overview", U, R, C, A, timeout=90)
        time.sleep(1.0)  # let the cards lay out
        first_screen = browser.evaluate(CARD_TITLES)
        browser.screenshot(str(tmp_path / "mlflow_view_1400.png"))
        sections = browser.evaluate(SECTION_TITLES)
        browser.resize(1400, 2400)  # the rest of the overview (cards are drawn once on screen)
        browser.wait_for_text(COUNT, timeout=30)
        time.sleep(1.0)
        tall = browser.evaluate(CARD_TITLES)
    finally:
        server.stop()
    # model training, not GenAI: the experiment's side navigation is the runs/models one
    nav = text[:text.index("Experiments")] if "Experiments" in text else text
    assert "Model registry" in nav and "Judges" not in nav and "Playground" not in nav, nav
    assert [s.split("(")[0].strip() for s in sections] == ["Collapse overview", "Spectrum", "Health checks"], sections
    # the first screen: the four overview cards, two per row, titles whole
    visible = [t for t in first_screen if t["top"] < 1000]
    assert [t["text"] for t in visible[:4]] == OVERVIEW_KEYS, first_screen
    assert not any(t["cut"] for t in visible), visible
    assert visible[0]["top"] == visible[1]["top"] and visible[1]["left"] > visible[0]["left"]
    # the whole overview, in order: the alert count follows; no health check is drawn (closed)
    assert [t["text"] for t in tall[:5]] == OVERVIEW_KEYS + [COUNT], tall
    assert not any(t["cut"] for t in tall[:5]), tall[:5]
    assert "spherewatch/norm_mean" not in [t["text"] for t in tall]
    assert os.path.getsize(tmp_path / "mlflow_view_1400.png") > 10000


def test_the_saved_view_survives_a_copy_of_the_store(monitored_run, tmp_path):
    """The monitored run's experiment holds the view (written by the Monitor's own sink), with its overview first."""
    from mlflow import MlflowClient

    db = tmp_path / "copy.db"
    shutil.copyfile(monitored_run.log_dir / "mlflow.db", db)
    client = MlflowClient(f"sqlite:///{db}")
    experiment_id = client.get_run(monitored_run.run_id).info.experiment_id
    overview = _sections(_saved_state(client, experiment_id))[OVERVIEW]
    assert overview == OVERVIEW_KEYS + [COUNT]
