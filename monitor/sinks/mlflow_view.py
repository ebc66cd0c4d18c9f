"""The MLflow UI view a spherewatch run opens on: the collapse overview first, readable at 1400 px, in MLflow's model
training (not GenAI) mode.

What an MLflow client can set, read from the MLflow 3 UI (the bundle ``mlflow/server/js/build/static/js`` of the
installed wheel; checked against 3.17.2):

* **A saved view of the experiment's runs page**: an experiment tag ``mlflow.sharedViewState.<id>`` holding
  ``{"name", "createdAt", "updatedAt", "state"}``, ``state`` the page's state as JSON, plain or ``deflate;`` + base64
  of its zlib stream (the UI's own format): the search facets (``searchFilter``, ``orderByKey``, ...) and the UI state
  (``compareRunCharts``: the chart cards in order; ``compareRunSections``: the sections, each with ``columns``,
  ``cardHeight`` and ``display`` = open; ``runListHidden``; ``hideEmptyCharts``; ``globalLineChartConfig``: x axis and
  smoothing). ``#/experiments/<id>/runs?viewStateShareKey=<id>`` opens it, and its name is listed in the page's
  "Views" menu. The URL must carry no search facet of its own (the UI ignores the saved view then);
  ``compareRunsMode=CHART`` (not part of a saved view) opens the charts rather than the runs table.
* **The workflow**: the URL parameter ``workflowType=machine_learning`` (it wins over the browser's stored choice;
  the experiment tag ``mlflow.experimentKind`` is only read when the UI's workflow switch is off).

What it cannot set:

* a card title in the experiment's chart view other than the metric key: the runs page renders its chart sections
  with ``useMetricDisplayName: false`` (chunk ``3878.*.js``), so a card's ``displayName`` is not shown there. Titles
  stay whole by card width instead: two columns, and the run list hidden (each chart's legend names the runs);
* the single run page's "Model metrics" tab: its chart layout lives only in the browser's localStorage (store
  ``RunPage``, item ``chartUIState``, chunk ``9930.*.js``) and defaults to the metrics sorted by name
  (``getBaseChartAndSectionConfigs`` in ``main.*.js``), so the view this module saves is the experiment's, with every
  run of it drawn (the demo's healthy and collapsing runs side by side);
* the "MLflow Assistant" panel, which a local server opens by itself on a browser's first visit (localStorage
  ``mlflow.assistant.fab.autoOpenedOnFirstLoad``, ``main.*.js``) and which takes ~330 px of a 1400 px window: the
  two-column cards are sized to stay readable beside it.

Nothing here imports mlflow; :func:`write_view` takes an ``MlflowClient``.

Example:
    >>> state = view_state(["spherewatch/norm_mean", "spherewatch/uniformity", "train/loss",
    ...                     "spherewatch/alerts/count", "spherewatch/effective_rank"])
    >>> [s["name"] for s in state["compareRunSections"]]
    ['Collapse overview', 'Spectrum', 'Health checks']
    >>> [c["metricKey"] for c in state["compareRunCharts"]]
    ['spherewatch/uniformity', 'spherewatch/effective_rank', 'train/loss', 'spherewatch/alerts/count', \
'spherewatch/norm_mean']
    >>> view_url("1", base="http://127.0.0.1:5000")
    'http://127.0.0.1:5000/#/experiments/1/runs?viewStateShareKey=spherewatch&compareRunsMode=CHART&workflowType=machine_learning'
"""
from __future__ import annotations

import base64
import json
import logging
import time
import zlib
from typing import Any, Dict, Iterable, List, Optional

from spherewatch.catalogue import head_specs
from spherewatch.keys import CATEGORIES, alert_count_key, describe, is_loss_key, order_keys, parse_key

__all__ = ["SHARED_VIEW_TAG_PREFIX", "VIEW_ID", "VIEW_NAME", "VIEW_PARAMS", "compress", "decompress", "ui_base",
           "view_path", "view_state", "view_tag", "view_url", "write_view"]

logger = logging.getLogger("spherewatch.sinks")

#: The experiment tag prefix of MLflow's saved views (``viewStateShareKey`` names the rest).
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: The id of spherewatch's saved view in an experiment (its tag: ``mlflow.sharedViewState.spherewatch``).
VIEW_ID = "spherewatch"
#: Its name in the runs page's "Views" menu.
VIEW_NAME = "spherewatch: collapse overview"
#: The URL parameters beside the view's id: the charts (not the runs table), the model training workflow.
VIEW_PARAMS = "compareRunsMode=CHART&workflowType=machine_learning"
#: Cards per row and card height (px) of each section: two columns keep a key like ``spherewatch/effective_rank``
#: whole on a card title at 1400 px, with MLflow's assistant panel open.
COLUMNS = 2
CARD_HEIGHT = 300
#: The UI's own default tracking server address (``mlflow ui`` / ``mlflow server``).
DEFAULT_UI = "http://127.0.0.1:5000"
#: MLflow's limit on an experiment tag value.
_MAX_TAG_VALUE = 20000
_DEFLATE = "deflate;"


def _section_uuid(index: int) -> str:
    return f"spherewatch-section-{index}"


def _line_card(key: str, section: str, index: int) -> Dict[str, Any]:
    """A line chart of one metric (the fields MLflow's ``RunsChartsLineCardConfig`` holds), not smoothed."""
    return {
        "type": "LINE", "uuid": f"spherewatch-chart-{index}", "metricSectionId": section, "isGenerated": False,
        "deleted": False, "metricKey": key, "selectedMetricKeys": [key], "displayName": key, "runsCountToCompare": 10,
        "lineSmoothness": 0, "useGlobalLineSmoothing": False, "xAxisKey": "step", "xAxisScaleType": "linear",
        "scaleType": "linear", "selectedXAxisMetricKey": "", "useGlobalXaxisKey": False, "yAxisKey": "metric",
        "yAxisExpressions": [], "ignoreOutliers": False,
        "range": {"xMin": None, "xMax": None, "yMin": None, "yMax": None},
    }


_HEAD_CATEGORIES = frozenset(spec.category for spec in head_specs())


def view_state(keys: Iterable[str], prefix: str = "spherewatch") -> Dict[str, Any]:
    """The runs page's chart view for a run logging ``keys``: sections "Collapse overview" (the four overview metrics,
    the host's training loss, the alert count), "Spectrum", "Health checks" (closed), in that order, cards in the
    catalogue's order of importance; keys the catalogue does not know (standard errors, the host's other metrics) go
    last in "Health checks". Two cards per row, no smoothing, x axis: step."""
    prefix = prefix.rstrip("/")
    count = alert_count_key(prefix)
    keys = list(dict.fromkeys(str(k) for k in keys))
    if count not in keys and any(parse_key(k, prefix) is not None for k in keys):
        keys.append(count)
    sections: Dict[str, List[str]] = {c: [] for c in CATEGORIES}
    for key in order_keys(keys, prefix):
        info = describe(key, prefix)
        if key == count or is_loss_key(key):
            category = CATEGORIES[0]
        elif info is not None and info.metric != "spectrum":
            category = info.category
        else:
            category = CATEGORIES[-1]
        sections[category].append(key)
    charts: List[Dict[str, Any]] = []
    section_list: List[Dict[str, Any]] = []
    for i, name in enumerate(CATEGORIES):
        if not sections[name] and name in _HEAD_CATEGORIES:  # a run without a head tap has no head section
            continue
        uuid = _section_uuid(i)
        section_list.append({"uuid": uuid, "name": name, "display": name != CATEGORIES[-1], "isReordered": True,
                             "deleted": False, "isGenerated": False, "columns": COLUMNS, "cardHeight": CARD_HEIGHT})
        charts += [_line_card(key, uuid, len(charts)) for key in sections[name]]
    return {
        "compareRunCharts": charts,
        "compareRunSections": section_list,
        "isAccordionReordered": True,
        "runListHidden": True,
        "viewMaximized": False,
        "hideEmptyCharts": True,
        "useGroupedValuesInCharts": True,
        "chartsSearchFilter": "",
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
        # search facets: every run of the experiment, newest first
        "searchFilter": "", "orderByKey": "attributes.start_time", "orderByAsc": False, "startTime": "ALL",
        "lifecycleFilter": "Active", "modelVersionFilter": "All Runs", "datasetsFilter": [],
    }


def view_tag(keys: Iterable[str], prefix: str = "spherewatch", now: Optional[float] = None) -> str:
    """The value of the experiment tag ``mlflow.sharedViewState.spherewatch``: MLflow's saved-view envelope around
    :func:`view_state` (at most 20000 characters: the health checks' cards are dropped first when a run logs that
    many keys)."""
    stamp = int((time.time() if now is None else now) * 1000)
    state = view_state(keys, prefix)
    while True:
        value = json.dumps({"name": VIEW_NAME, "createdAt": stamp, "updatedAt": stamp, "state": compress(state)},
                           separators=(",", ":"))
        if len(value) <= _MAX_TAG_VALUE or not state["compareRunCharts"]:
            return value
        state["compareRunCharts"] = state["compareRunCharts"][:-1]


def compress(state: Dict[str, Any]) -> str:
    """``state`` as the UI stores a saved view: ``deflate;`` + base64 of the zlib-deflated JSON (pako's format)."""
    raw = json.dumps(state, separators=(",", ":")).encode("utf-8")
    return _DEFLATE + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def decompress(text: str) -> Dict[str, Any]:
    """The state of a saved view, compressed (:func:`compress`) or plain JSON."""
    if text.startswith(_DEFLATE):
        text = zlib.decompress(base64.b64decode(text[len(_DEFLATE):])).decode("utf-8")
    return json.loads(text)


def ui_base(tracking_uri: Optional[str]) -> str:
    """Where the MLflow UI of ``tracking_uri`` is: the server itself for ``http(s)://``, else where ``mlflow ui``
    serves by default (``http://127.0.0.1:5000``)."""
    uri = str(tracking_uri or "")
    if uri.startswith(("http://", "https://")):
        from spherewatch.sinks.mlflow_run import redact_uri

        return redact_uri(uri).rstrip("/")
    return DEFAULT_UI


def view_url(run: Any, base: Optional[str] = None) -> str:
    """The URL of spherewatch's chart view of a run's experiment in the MLflow UI (the collapse overview first, in
    model training mode); every run of the experiment is drawn, so a healthy and a collapsing run read side by side.

    Args:
        run: an :class:`~spherewatch.sinks.MLflowSink`, a ``Monitor`` with one, an MLflow ``Run``, or an experiment
            id (``str``).
        base: the UI's address (default: the sink's tracking server when it is one, else ``http://127.0.0.1:5000``,
            where ``mlflow ui`` serves).
    """
    experiment_id, tracking_uri = _experiment_of(run)
    return (base or ui_base(tracking_uri)).rstrip("/") + "/" + view_path(experiment_id)


def view_path(experiment_id: str) -> str:
    """The view's address inside the UI (``#/experiments/...``), for a link on one of its pages."""
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_ID}&{VIEW_PARAMS}"


def _experiment_of(run: Any) -> "tuple[str, Optional[str]]":
    if isinstance(run, (str, int)):
        return str(run), None
    sink = run
    if callable(getattr(run, "sink", None)) and not hasattr(run, "run_id"):  # a Monitor
        sink = run.sink("mlflow")
    info = getattr(sink, "info", None)
    if info is not None and getattr(info, "experiment_id", None) is not None:  # an MLflow Run
        return str(info.experiment_id), None
    experiment_id = getattr(sink, "experiment_id", None)
    if experiment_id is None:
        experiment_id = sink.client.get_run(sink.run_id).info.experiment_id
    return str(experiment_id), getattr(sink, "tracking_uri", None)


def write_view(client: Any, experiment_id: str, keys: Iterable[str], prefix: str = "spherewatch") -> bool:
    """Set spherewatch's saved view on the experiment (tag ``mlflow.sharedViewState.spherewatch``), unless it holds
    that view already with the same charts. Best effort: False when the server refuses (an old server, a read-only
    experiment), logged at debug level."""
    tag = SHARED_VIEW_TAG_PREFIX + VIEW_ID
    try:
        current = (client.get_experiment(experiment_id).tags or {}).get(tag)
        keys = list(dict.fromkeys([*_view_keys(current), *map(str, keys)]))  # other runs' keys stay in the view
        value = view_tag(keys, prefix)
        if current is not None and _same_view(current, value):
            return True
        client.set_experiment_tag(experiment_id, tag, value)
        return True
    except Exception as err:  # the view is a convenience: never fail the run for it
        logger.debug("MLflowSink: could not save the chart view on experiment %s: %s", experiment_id, err)
        return False


def _view_keys(value: Optional[str]) -> List[str]:
    """The metric keys of a saved view spherewatch wrote (none for another view, or an unreadable one)."""
    if not value:
        return []
    try:
        envelope = json.loads(value)
        if envelope.get("name") != VIEW_NAME:
            return []
        return [str(c["metricKey"]) for c in decompress(envelope["state"])["compareRunCharts"] if c.get("metricKey")]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def _same_view(a: str, b: str) -> bool:
    try:
        return decompress(json.loads(a)["state"]) == decompress(json.loads(b)["state"])
    except (ValueError, KeyError, TypeError):
        return False
