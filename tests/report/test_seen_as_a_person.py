"""What a person sees: a real `tensorboard` server serving the run, and report.html rendered by headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
from chromium_browser import CHROMIUM_CANDIDATES, Browser
from mlflow_server import free_port

U = "spherewatch/uniformity"
START_TIMEOUT_S = 60.0


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode("utf-8"))


def _tensorboard_executable() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "tensorboard")  # the virtualenv's own
    found = local if os.path.isfile(local) else shutil.which("tensorboard")
    if found is None:
        pytest.skip("no `tensorboard` executable next to the interpreter nor on PATH (pip install tensorboard)")
    return found


@pytest.fixture(scope="module")
def tensorboard_server(monitored_run, tmp_path_factory):
    """`tensorboard --logdir <run>` (default settings) on 127.0.0.1 in its own process group, answering with the
    spherewatch scalars; yields its base URL. Stopped by killing its process group."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [_tensorboard_executable(), "--logdir", str(monitored_run.log_dir), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _poll(f"{base}/data/plugin/scalars/tags", lambda t: U in t.get(".", {}), proc, log_path,
              "the spherewatch scalars")
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def _poll(url: str, ready, proc, log_path, what: str):
    """GET ``url`` until ``ready(json)`` is true (bounded by START_TIMEOUT_S)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"tensorboard exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            last = _get_json(url)
            if ready(last):
                return last
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"tensorboard did not serve {what} within {START_TIMEOUT_S:.0f} s (last answer: {last!r}); "
                f"log: {log_path.read_text(errors='replace')[-2000:]}")


def test_tensorboard_serves_the_spherewatch_scalars_and_custom_scalars_layout(tensorboard_server, monitored_run):
    from spherewatch.sinks.jsonl import read_jsonl

    base = tensorboard_server
    tags = _get_json(f"{base}/data/plugin/scalars/tags")
    expected = read_jsonl(monitored_run.jsonl)["scalars"]
    assert set(expected) <= set(tags["."])

    query = urllib.parse.urlencode({"run": ".", "tag": U})
    points = _get_json(f"{base}/data/plugin/scalars/scalars?{query}")  # [[wall_time, step, value], ...]
    assert [p[1] for p in points] == [s for s, _ in expected[U]]
    np.testing.assert_allclose([p[2] for p in points], [v for _, v in expected[U]], rtol=1e-6)

    layout = _get_json(f"{base}/data/plugin/custom_scalars/layout")
    assert [c["title"] for c in layout["category"]] == ["Collapse overview", "Spectrum", "Health checks"]
    charts = {c["title"]: c["multiline"]["tag"] for c in layout["category"][0]["chart"]}
    (pattern,) = charts["uniformity"]  # the chart's lines: the served tags its regex matches (TensorBoard's rule)
    assert [t for t in tags["."] if re.match(pattern, t)] == [U]
    assert {"alignment", "effective rank", "mean cosine", "training loss (host)", "alerts fired"} <= set(charts)
    assert layout["category"][-1].get("closed") is True


def test_tensorboard_serves_a_description_for_every_spherewatch_tag(tensorboard_server, monitored_run):
    from spherewatch.keys import describe

    tags = _get_json(f"{tensorboard_server}/data/plugin/scalars/tags")["."]
    for tag, meta in tags.items():
        info = describe(tag)
        if info is not None:
            assert info.description in meta["description"] and "Healthy:" in meta["description"], tag


def _alert_texts(base: str):
    text_tags = _get_json(f"{base}/data/plugin/text/tags")
    texts = []
    for tag in text_tags.get(".", []):
        if tag.startswith("spherewatch/alerts"):
            texts += _get_json(f"{base}/data/plugin/text/text?" + urllib.parse.urlencode({"run": ".", "tag": tag}))
    return texts


def test_tensorboard_text_tab_shows_an_alert_at_every_alerting_step(tensorboard_server, monitored_run):
    texts = _alert_texts(tensorboard_server)
    assert {t["step"] for t in texts} == {a.step for a in monitored_run.alerts}
    assert all("</strong> at step" in t["text"] for t in texts)  # rendered markdown


# Several alerts at one step share one text (TensorBoard's fast loader serves one text per tag and step).
def test_tensorboard_text_tab_shows_every_alert(tensorboard_server, monitored_run):
    texts = _alert_texts(tensorboard_server)
    for alert in monitored_run.alerts:
        assert any(t["step"] == alert.step and alert.severity.upper() in t["text"] and alert.rule in t["text"]
                   for t in texts), f"{alert.severity} alert {alert.rule} at step {alert.step} is not shown"


def _chromium() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        found = candidate if os.path.isfile(candidate) and os.access(candidate, os.X_OK) else shutil.which(candidate)
        if found:
            return found
    pytest.skip("Chromium not found (looked for: " + ", ".join(CHROMIUM_CANDIDATES) + "); install it with "
                "`apt-get install -y chromium` to render the report as a browser does.")


def _screenshot(chromium: str, page: str, png: str, profile: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", f"--user-data-dir={profile}",
         f"--screenshot={png}", "--window-size=1280,2400", "file://" + os.path.abspath(page)],
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )


def _pack_rgb(rgb: np.ndarray) -> np.ndarray:
    q = (rgb * 255).round().astype(np.int64)
    return (q[:, 0] << 16) | (q[:, 1] << 8) | q[:, 2]


def _saturated_colours(png: str):
    """(fraction of clearly coloured pixels, number of distinct clearly coloured RGB values); text is grey."""
    from matplotlib.image import imread

    rgb = imread(png)[..., :3].reshape(-1, 3)
    saturated = (rgb.max(axis=1) - rgb.min(axis=1)) > 60 / 255
    return float(saturated.mean()), int(np.unique(_pack_rgb(rgb[saturated])).size)


def test_report_renders_with_its_figures_in_headless_chromium(reports, tmp_path, png_shows_something):
    chromium = _chromium()
    page = reports["jsonl"]["html"]
    shot = tmp_path / "report.png"
    done = _screenshot(chromium, page, str(shot), str(tmp_path / "profile"))
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    img = png_shows_something(shot)
    assert img.shape[:2] == (2400, 1280)
    assert float(img[..., :3].std()) > 0.08  # far from a blank page

    # The figures are what makes the page colourful: the same page without its <img> tags is mostly grey text.
    text_only = tmp_path / "text_only.html"
    with open(page, encoding="utf-8") as f:
        text_only.write_text(re.sub(r"<img [^>]*>", "", f.read()), encoding="utf-8")
    bare = tmp_path / "text_only.png"
    done = _screenshot(chromium, str(text_only), str(bare), str(tmp_path / "profile"))
    assert done.returncode == 0 and bare.is_file(), done.stderr[-2000:]
    with_figures, without = _saturated_colours(str(shot)), _saturated_colours(str(bare))
    assert with_figures[1] > 500 and with_figures[1] > 4 * without[1], (with_figures, without)
    assert with_figures[0] > 3 * without[0], (with_figures, without)


# --------------------------------------------------------------------------------------------- rendered pages
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the rendered-page tests, driven over the DevTools protocol."""
    chromium = _chromium()
    b = Browser(chromium, str(tmp_path_factory.mktemp("chromium-profile")))
    yield b
    b.close()


def test_tensorboard_custom_scalars_page_shows_the_collapse_overview_first(tensorboard_server, browser, tmp_path):
    browser.resize(1280, 1600)
    browser.goto(f"{tensorboard_server}/#custom_scalars")
    text = browser.wait_for_text("Collapse overview", "Spectrum", "Health checks", "Matches", timeout=90)
    browser.screenshot(str(tmp_path / "custom_scalars.png"))
    overview, spectrum, health = (text.index(t) for t in ("Collapse overview", "Spectrum", "Health checks"))
    assert overview < spectrum < health
    first_category = text[overview:spectrum]
    for chart in ("uniformity", "effective rank", "mean cosine", "alignment", "alerts fired"):
        assert f"\n{chart}\n" in first_category, chart
    assert first_category.index("\nuniformity\n") < first_category.index("\neffective rank\n")
    # "Health checks" is closed: none of its charts is drawn
    assert "spherewatch/norm_mean" not in text[health:]


# Every custom-scalars chart card (in shadow roots): its title and its axes' tick labels, in page order.
CHART_AXES = r"""(() => {
  const cards = [];
  const walk = (n, card) => {
    if (n.nodeType !== 1 && n.nodeType !== 11) return;
    if (n.tagName === 'TF-CUSTOM-SCALAR-MULTI-LINE-CHART-CARD') { card = {title: n.title, y: [], x: []}; cards.push(card); }
    if (card && n.tagName === 'text') {
      const axis = n.closest('.axis');
      const value = parseFloat(n.textContent.replace('\u2212', '-'));
      if (axis && !isNaN(value)) (axis.classList.contains('y-axis') ? card.y : card.x).push(value);
    }
    if (n.shadowRoot) walk(n.shadowRoot, card);
    for (const c of n.children || []) walk(c, card);
  };
  walk(document.body, null);
  return cards;
})()"""
# The Custom Scalars dashboard's smoothing weight (a Polymer property of its dashboard element).
SMOOTHING = r"""(() => {
  let found = null;
  const walk = (n) => {
    if (found || (n.nodeType !== 1 && n.nodeType !== 11)) return;
    if (n.tagName === 'TF-CUSTOM-SCALAR-DASHBOARD') { found = n; return; }
    if (n.shadowRoot) walk(n.shadowRoot);
    for (const c of n.children || []) walk(c);
  };
  walk(document.body);
  return found ? found._smoothingWeight : null;
})()"""


def test_tensorboard_link_marks_the_alerts_in_the_overview_unsmoothed_and_uncut(tensorboard_server, browser,
                                                                                 monitored_run, tmp_path):
    """The URL the demo prints: smoothing off; the overview's alert level and count charts follow the four metrics, over
    the same steps, and their y axes reach the highest level and the final count (TensorBoard's default outlier
    clipping, on in a new browser, does not cut them)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from spherewatch.sinks.tensorboard import ALERT_LEVEL_TITLE, custom_scalars_url

    acc = EventAccumulator(str(monitored_run.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    counts = sorted(e.value for e in acc.Scalars("spherewatch/alerts/count"))
    levels = sorted(e.value for e in acc.Scalars("spherewatch/alerts/level"))
    assert counts[-1] >= 1 and levels[-1] == 3  # the collapsing run: critical
    # TensorBoard scales a chart to its points between the 5% and 95% quantiles unless the browser unticked "ignore
    # outliers" (kept in localStorage, not settable from a URL): the level stays up while an alert is open, so its top
    # is inside; the count's last rise can fall in the top 5% of its points, so only the count held by 10% is asserted
    assert levels[int(0.9 * (len(levels) - 1))] == 3
    held_count = counts[int(0.9 * (len(counts) - 1))]
    browser.resize(1400, 1000)
    browser.goto(custom_scalars_url(tensorboard_server))
    browser.wait_for_text("Collapse overview", ALERT_LEVEL_TITLE, "alerts fired", timeout=90)
    deadline = time.monotonic() + 30
    while True:  # the charts draw their axes once their data is in
        charts = {c["title"]: c for c in browser.evaluate(CHART_AXES)}
        if all(charts.get(t, {}).get("y") for t in ("uniformity", ALERT_LEVEL_TITLE, "alerts fired")):
            break
        assert time.monotonic() < deadline, charts
        time.sleep(0.5)
    browser.screenshot(str(tmp_path / "custom_scalars_1400.png"))
    assert browser.evaluate(SMOOTHING) == 0
    titles = list(charts)
    assert titles[:4] == ["uniformity", "effective rank", "mean cosine", "alignment"]
    assert titles.index(ALERT_LEVEL_TITLE) < titles.index("alerts fired") < titles.index("collapsed dimensions")
    level, count, uniformity = charts[ALERT_LEVEL_TITLE], charts["alerts fired"], charts["uniformity"]
    assert max(level["y"]) >= 3 and min(level["y"]) <= 0, level
    assert max(count["y"]) >= held_count and min(count["y"]) <= 0, count
    tick = uniformity["x"][1] - uniformity["x"][0]  # the same steps as the metrics (axes may tick differently)
    assert abs(max(count["x"]) - max(uniformity["x"])) <= tick and abs(max(level["x"]) - max(uniformity["x"])) <= tick


def test_mlflow_run_page_shows_the_params_and_the_alert_tags(monitored_run, browser, tmp_path):
    from mlflow import MlflowClient
    from mlflow_server import MlflowServer

    run = MlflowClient(monitored_run.tracking_uri).get_run(monitored_run.run_id)
    assert run.data.tags["spherewatch.alert_state"] in ("warning", "critical")
    server = MlflowServer(tmp_path, monitored_run.log_dir / "mlflow.db")  # serves a copy of the run's store
    server.start()
    try:
        browser.resize(1280, 1600)
        browser.goto(f"{server.uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        text = browser.wait_for_text("spherewatch.every_n_steps", "spherewatch.alert_state", timeout=90)
        browser.screenshot(str(tmp_path / "mlflow_run.png"))
    finally:
        server.stop()
    assert "spherewatch.worst_severity" in text and "spherewatch.first_alert_step" in text
    assert "critical" in text
    assert "collapse detected at step" in text  # the run's description: the verdict


def _no_horizontal_overflow(browser, page: str) -> dict:
    browser.resize(900, 1200)
    browser.goto("file://" + os.path.abspath(page))
    browser.wait_for_text("spherewatch report", timeout=30)
    return browser.evaluate(
        "({scroll: document.documentElement.scrollWidth, view: window.innerWidth,"
        " wide: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right >"
        " window.innerWidth + 1).map(e => e.tagName + '.' + e.className).slice(0, 5)})")


def test_report_reads_at_900_px_without_horizontal_overflow(reports, monitored_run, browser, tmp_path):
    from spherewatch.report import build_report

    single = _no_horizontal_overflow(browser, reports["jsonl"]["html"])
    assert single["scroll"] <= single["view"] and not single["wide"], single
    compared = build_report([str(monitored_run.jsonl), str(monitored_run.log_dir)], tmp_path / "cmp",
                            names=["from JSONL", "from TensorBoard"])
    both = _no_horizontal_overflow(browser, compared["html"])
    assert both["scroll"] <= both["view"] and not both["wide"], both
    text = browser.text()
    assert text.index("from JSONL: collapse detected at step") < text.index("Collapse overview")
    browser.screenshot(str(tmp_path / "report_900.png"))
