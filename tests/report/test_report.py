"""`spherewatch.report`: figures and a self-contained HTML page from a JSONL file, a TensorBoard log dir or
an MLflow run of a real (collapsing) training run; every error path."""
from __future__ import annotations

import base64
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest

from spherewatch.alerts.alert import Alert
from spherewatch.keys import metric_key
from spherewatch.report import build_report, load_run
from spherewatch.sinks.jsonl import JsonlSink

U = "spherewatch/uniformity"
A = "spherewatch/alignment"
S = "spherewatch/spectrum"
FIGURES = ["overview.png", "metrics.png", "alignment_uniformity.png", "spectrum.png"]


def _source(run, kind):
    return {"jsonl": str(run.jsonl), "tensorboard": str(run.log_dir), "mlflow": run.run_id}[kind]


def _embedded_pngs(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


KINDS = pytest.mark.parametrize("kind", ["jsonl", "tensorboard", "mlflow"])


# --------------------------------------------------------------------------------------------- from each source
@KINDS
def test_report_writes_the_four_figures_as_pngs_that_show_something(reports, kind, png_shows_something):
    result = reports[kind]
    assert [os.path.basename(p) for p in result["figures"]] == FIGURES
    for path in result["figures"]:
        assert os.path.dirname(path) == os.path.dirname(result["html"])
        png_shows_something(path)


@KINDS
def test_report_html_embeds_every_figure_and_works_alone(reports, kind):
    result = reports[kind]
    with open(result["html"], encoding="utf-8") as f:
        page = f.read()
    assert page.count("data:image/png;base64,") == 4
    embedded = _embedded_pngs(page)
    for path, data in zip(result["figures"], embedded):
        with open(path, "rb") as f:
            assert data == f.read(), f"{path} is not the image embedded in the page"
    # no reference to anything outside the page
    assert not re.search(r'(src|href)="(?!data:)', page)


@KINDS
def test_report_html_lists_final_values_and_the_alerts(reports, kind, monitored_run):
    result = reports[kind]
    with open(result["html"], encoding="utf-8") as f:
        page = f.read()
    assert "<title>spherewatch report" in page
    table = page[page.index('<table id="final-values">'):]
    for key in (U, A, "spherewatch/effective_rank"):
        assert f"<code>{key}</code>" in table
    alerts = page[page.index('<table id="alerts">'):page.index("</table>", page.index('<table id="alerts">'))]
    for fired in monitored_run.alerts:
        row = re.search(rf'<tr><td class="num">{fired.step}</td><td><span class="sev sev-{fired.severity}">'
                        rf"{fired.severity}</span></td><td><code>{fired.rule}</code> on <code>{fired.key}</code>",
                        alerts)
        assert row is not None, f"alert {fired.rule} at step {fired.step} not listed ({kind})"
    assert "possible collapse" in alerts  # the alert's message, not just its name
    source = {"jsonl": str(monitored_run.jsonl), "tensorboard": str(monitored_run.log_dir),
              "mlflow": monitored_run.run_id}[kind]
    assert source in page


def test_all_three_sources_read_back_the_same_run(monitored_run):
    runs = {kind: load_run(_source(monitored_run, kind), tracking_uri=monitored_run.tracking_uri)
            for kind in ("jsonl", "tensorboard", "mlflow")}
    reference = runs["jsonl"]
    assert len(reference.scalars[U]) == 13  # steps 1, 10, ..., 120
    for kind, data in runs.items():
        assert data.kind == kind
        assert sorted(data.scalars) == sorted(reference.scalars), kind
        for key, points in reference.scalars.items():
            steps, values = zip(*points)
            got_steps, got_values = zip(*data.scalars[key])
            assert got_steps == steps, (kind, key)
            np.testing.assert_allclose(got_values, values, rtol=1e-6, atol=1e-7, err_msg=f"{kind} {key}")
        assert [(a.step, a.severity, a.rule, a.key) for a in data.alerts] == [
            (a.step, a.severity, a.rule, a.key) for a in reference.alerts
        ], kind
    assert [s for s, _ in runs["tensorboard"].spectra[S]] == [s for s, _ in reference.spectra[S]]
    assert [s for s, _ in runs["mlflow"].spectra[S]] == [s for s, _ in reference.spectra[S]]  # spectra_history.json


def test_tensorboard_spectrum_is_reconstructed_to_within_one_bucket(monitored_run):
    exact = load_run(monitored_run.jsonl).spectra[S]
    approx = load_run(monitored_run.log_dir).spectra[S]
    for (step, e), (_, a) in zip(exact, approx):
        e = np.sort(e)[::-1]
        assert a.shape == e.shape, step
        assert a[0] == pytest.approx(e[0], rel=1e-12) and a[-1] == pytest.approx(e[-1], rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(a, e, rtol=0.1, atol=1e-11, err_msg=f"step {step}")


def test_report_is_deterministic(monitored_run, reports, tmp_path):
    first = reports["jsonl"]
    second = build_report(monitored_run.jsonl, tmp_path / "again")
    for p, q in zip([first["html"]] + first["figures"], [second["html"]] + second["figures"]):
        with open(p, "rb") as f, open(q, "rb") as g:
            assert f.read() == g.read(), os.path.basename(p)


def test_cli_report_prints_the_page_and_figures(monitored_run, tmp_path, capsys):
    from spherewatch.cli import main

    assert main(["report", str(monitored_run.jsonl), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'cli' / 'report.html'}" in out
    assert out.count("figure: ") == 4
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- partial runs
def _write_jsonl(path, *, taps=("embeddings",), alignment=True, spectrum=False, nonfinite=False, alerts=()):
    with JsonlSink(path) as sink:
        for step in range(0, 50, 5):
            values = {}
            for tap in taps:
                values[metric_key("uniformity", tap)] = -3.0 + step / 20
                if alignment:
                    values[metric_key("alignment", tap)] = 1.0 - step / 100
            if nonfinite and step == 25:
                values = {k: float("nan") for k in values}
                values["spherewatch/uniformity"] = float("inf")
            sink.log_scalars(step, values, wall_time=1.7e9 + step)
            if spectrum:
                sink.log_histogram(step, S, np.geomspace(1.0, 1e-6, 16) * (1 + step), wall_time=1.7e9 + step)
        for alert in alerts:
            sink.log_alert(alert)
    return path


def test_report_without_alignment_or_spectrum_says_so_and_drops_stale_figures(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "spectrum.png").write_bytes(b"stale")
    (out / "alignment_uniformity.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("keep me")
    path = _write_jsonl(tmp_path / "run.jsonl", alignment=False)
    result = build_report(path, out)
    assert [os.path.basename(p) for p in result["figures"]] == ["overview.png", "metrics.png"]
    assert sorted(os.listdir(out)) == ["metrics.png", "notes.txt", "overview.png", "report.html"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'id="no-alignment"' in page and "Alignment was not logged" in page
    assert 'id="no-spectrum"' in page and "No spectrum was logged" in page
    assert 'id="alerts-none"' in page


def test_report_draws_a_trajectory_per_tap_and_a_heatmap_per_spectrum(tmp_path, reports, png_shows_something):
    path = _write_jsonl(tmp_path / "run.jsonl", taps=("encoder", "projector"), spectrum=True)
    result = build_report(path, tmp_path / "out")
    names = [os.path.basename(p) for p in result["figures"]]
    assert names == FIGURES
    two = png_shows_something(result["figures"][2])
    one = png_shows_something(reports["jsonl"]["figures"][2])  # a single tap
    assert two.shape[1] > 1.8 * one.shape[1]  # one alignment-uniformity panel per tap, side by side
    png_shows_something(result["figures"][3])


def test_report_survives_non_finite_values_and_alert_values(tmp_path, png_shows_something):
    alert = Alert("nonfinite", U, float("nan"), 25, "critical", "embeddings are not finite", 1.7e9, "stop")
    path = _write_jsonl(tmp_path / "run.jsonl", nonfinite=True, alerts=[alert])
    result = build_report(path, tmp_path / "out")
    png_shows_something(result["figures"][0])
    page = open(result["html"], encoding="utf-8").read()
    assert "= nan<br>embeddings are not finite</td>" in page
    data = load_run(path)
    assert math.isinf(dict(data.scalars[U])[25]) and math.isnan(data.alerts[0].value)


def test_tensorboard_log_dir_with_a_single_run_folder_reads_that_run(monitored_run, tmp_path):
    run_dir = tmp_path / "runs" / "exp1"
    run_dir.mkdir(parents=True)
    for name in os.listdir(monitored_run.log_dir):
        if "tfevents" in name:
            shutil.copy(monitored_run.log_dir / name, run_dir / name)
    data = load_run(tmp_path / "runs")
    assert data.kind == "tensorboard" and data.source == str(run_dir) and U in data.scalars


def test_prefix_selects_the_keys_of_another_monitor(tmp_path):
    path = tmp_path / "custom.jsonl"
    with JsonlSink(path) as sink:
        sink.log_scalars(1, {"myprefix/enc/uniformity": -2.0, "myprefix/enc/alignment": 0.5})
        sink.log_scalars(2, {"myprefix/enc/uniformity": -1.0, "myprefix/enc/alignment": 0.4})
    with pytest.raises(ValueError, match=r"prefix 'spherewatch'.*myprefix/enc/uniformity.*prefix="):
        build_report(path, tmp_path / "out")
    result = build_report(path, tmp_path / "out", prefix="myprefix")
    assert len(result["figures"]) == 3


# --------------------------------------------------------------------------------------------- errors
def _assert_names_the_three_kinds(message):
    assert "JSONL file" in message and "TensorBoard log dir" in message and "MLflow run id" in message


def test_missing_path_names_the_argument_and_the_accepted_kinds(tmp_path):
    missing = tmp_path / "nope" / "spherewatch.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        build_report(missing, tmp_path / "out")
    assert repr(str(missing)) in str(info.value)
    _assert_names_the_three_kinds(str(info.value))
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_unknown_run_id_names_the_run_and_the_store(monitored_run, tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        build_report("0123456789abcdef0123456789abcdef", tmp_path / "out", tracking_uri=monitored_run.tracking_uri)
    message = str(info.value)
    assert "0123456789abcdef0123456789abcdef" in message and monitored_run.tracking_uri in message
    _assert_names_the_three_kinds(message)


def test_run_id_without_a_store_fails_without_creating_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store is ./mlflow.db
    with pytest.raises(FileNotFoundError, match=r"no MLflow store at sqlite:///mlflow\.db"):
        build_report("abc123", tmp_path / "out")
    uri = f"sqlite:///{tmp_path}/other.db"
    with pytest.raises(FileNotFoundError, match="no MLflow store"):
        load_run("abc123", tracking_uri=uri)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "other.db").exists()


def test_jsonl_file_without_spherewatch_records_is_rejected(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"hello": "world"}\nnot json at all\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"notes\.jsonl.*no spherewatch records.*JSONL file"):
        build_report(path, tmp_path / "out")


def test_binary_file_is_rejected_as_not_jsonl(tmp_path):
    path = tmp_path / "figure.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"figure\.png.*not a spherewatch JSONL file.*not UTF-8"):
        build_report(path, tmp_path / "out")


def test_folder_without_event_files_is_rejected_with_a_hint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"empty.*no TensorBoard event files") as info:
        build_report(empty, tmp_path / "out")
    _assert_names_the_three_kinds(str(info.value))
    _write_jsonl(empty / "spherewatch.jsonl")
    with pytest.raises(ValueError, match=r"It holds 'spherewatch\.jsonl': pass that file instead"):
        build_report(empty, tmp_path / "out")


def test_log_dir_with_several_runs_lists_them(monitored_run, tmp_path):
    event = next(n for n in os.listdir(monitored_run.log_dir) if "tfevents" in n)
    for run in ("a", "b"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        shutil.copy(monitored_run.log_dir / event, tmp_path / "runs" / run / event)
    with pytest.raises(ValueError, match=r"holds 2 runs: 'a', 'b'\. Pass one of them"):
        build_report(tmp_path / "runs", tmp_path / "out")


def test_tensorboard_run_without_spherewatch_scalars_names_what_it_holds(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "tb")) as writer:
        writer.add_scalar("train/loss", 1.0, 0)
    with pytest.raises(ValueError, match=r"no spherewatch values under the prefix 'spherewatch'.*train/loss"):
        build_report(tmp_path / "tb", tmp_path / "out")


def test_mlflow_run_without_spherewatch_metrics_names_what_it_holds(monitored_run, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(monitored_run.tracking_uri)
    run = client.create_run(client.get_experiment_by_name("spherewatch").experiment_id)
    client.log_metric(run.info.run_id, "val_loss", 0.5, step=1)
    with pytest.raises(ValueError, match=rf"MLflow run '{run.info.run_id}'.*val_loss"):
        build_report(run.info.run_id, tmp_path / "out", tracking_uri=monitored_run.tracking_uri)


def test_out_dir_that_is_a_file_is_rejected(monitored_run, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    with pytest.raises(ValueError, match=r"out_dir .*taken.* is not a folder"):
        build_report(monitored_run.jsonl, target)


def test_bad_argument_types_and_values(tmp_path):
    with pytest.raises(TypeError, match=r"`run` must be a path or an MLflow run id \(str\), got int: 42"):
        build_report(42, tmp_path / "out")
    with pytest.raises(ValueError, match="`run` is empty"):
        build_report("  ", tmp_path / "out")
    with pytest.raises(ValueError, match="`prefix` must be a non-empty string"):
        build_report("x", tmp_path / "out", prefix="/")


@pytest.mark.parametrize(
    "modules, source, extra",
    [
        (("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"), "jsonl", "report"),
        (("tensorboard.backend.event_processing.event_accumulator",), "tensorboard", "tensorboard"),
        (("mlflow",), "mlflow", "mlflow"),
    ],
)
def test_missing_optional_dependency_names_the_extra_to_install(monitored_run, tmp_path, monkeypatch, modules,
                                                                source, extra):
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=re.escape(f"pip install 'spherewatch[{extra}]'")):
        build_report(_source(monitored_run, source), tmp_path / "out", tracking_uri=monitored_run.tracking_uri)


def test_tensorboard_texts_holding_several_alerts_are_all_read(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from spherewatch.sinks.tensorboard import alert_markdown

    first = Alert("uniformity_collapse", U, -0.4, 20, "critical", "spread lost\n\nsecond paragraph", 1.7e9, "stop")
    second = Alert("rank_collapse", "spherewatch/effective_rank", float("nan"), 20, "warning", "", 1.7e9)
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar(U, -0.4, 20)
        writer.add_text("spherewatch/alerts", alert_markdown(first) + "\n\n---\n\n" + alert_markdown(second), 20)
        writer.add_text("spherewatch/alerts", "a note in another format", 30)
    alerts = load_run(tmp_path).alerts
    assert [(a.rule, a.severity, a.step, a.action, a.message) for a in alerts] == [
        ("uniformity_collapse", "critical", 20, "stop", "spread lost\n\nsecond paragraph"),
        ("rank_collapse", "warning", 20, "log", ""),
        ("text", "info", 30, "log", "a note in another format"),
    ]
    assert alerts[0].value == pytest.approx(-0.4) and math.isnan(alerts[1].value)


# --------------------------------------------------------------------------------------------- verdict, comparison
def test_verdict_says_when_it_collapsed_or_that_it_stayed_healthy(tmp_path):
    from spherewatch.report import verdict

    healthy = load_run(_write_jsonl(tmp_path / "healthy.jsonl"))
    assert verdict(healthy) == "healthy: no alerts in 45 steps"
    alerts = [Alert("uniformity_degradation", U, -1.0, 10, "warning", "losing spread", 1.7e9),
              Alert("uniformity_collapse", U, -0.4, 20, "critical", "collapsed", 1.7e9 + 1)]
    collapsed = load_run(_write_jsonl(tmp_path / "collapsed.jsonl", alerts=alerts))
    assert verdict(collapsed) == "collapse detected at step 10, critical at step 20"


def test_several_runs_share_one_page_with_a_verdict_each(tmp_path, png_shows_something):
    healthy = _write_jsonl(tmp_path / "healthy.jsonl", spectrum=True)
    alert = Alert("uniformity_collapse", U, -0.4, 20, "critical", "collapsed", 1.7e9)
    collapsed = _write_jsonl(tmp_path / "collapsed.jsonl", spectrum=True, alerts=[alert])
    result = build_report([healthy, collapsed], tmp_path / "out", names=["healthy", "collapsing"])
    assert result["verdicts"] == {"healthy": "healthy: no alerts in 45 steps",
                                  "collapsing": "collapse detected at step 20 (critical)"}
    page = open(result["html"], encoding="utf-8").read()
    banner = page[page.index('<ul id="verdict">'):page.index("</ul>")]
    assert 'class="healthy"' in banner and "healthy: healthy: no alerts in 45 steps" in banner
    assert 'class="collapsed"' in banner and "collapsing: collapse detected at step 20" in banner
    assert page.index('id="verdict"') < page.index("Collapse overview") < page.index('<table id="alerts">')
    assert "<th>run</th>" in page and "<th>healthy: final</th>" in page and "<th>collapsing: final</th>" in page
    for path in result["figures"]:
        png_shows_something(path)


def test_the_hosts_loss_is_read_back_and_drawn_in_the_overview(tmp_path):
    path = tmp_path / "run.jsonl"
    with JsonlSink(path) as sink:
        for step in range(0, 50, 5):
            sink.log_scalars(step, {U: -3.0 + step / 20})
            sink.log_scalars(step, {"train/loss": 1.0 - step / 50, "not_a_metric": 3.0})
    data = load_run(path)
    assert set(data.scalars) == {U, "train/loss"}  # the loss is kept, other host keys are not
    plain = build_report(path, tmp_path / "out")
    from matplotlib.image import imread

    with_loss = imread(plain["figures"][0])
    assert with_loss.shape[1] > 1.4 * 500  # two panels: uniformity and the loss


def test_threshold_lines_come_from_the_rules_the_run_logged(tmp_path):
    from spherewatch.config import MonitorConfig
    from spherewatch.keys import config_params
    from spherewatch.report.thresholds import threshold_lines as _threshold_lines

    path = _write_jsonl(tmp_path / "run.jsonl")
    from spherewatch.alerts.rules import default_rules

    margin = next(r.margin for r in default_rules() if r.name == "uniformity_collapse")
    # defaults: the edge of the uniformity collapse zone
    assert ("uniformity_collapse", "uniformity", "above", -margin) in _threshold_lines(load_run(path))
    config = MonitorConfig(rules=[{"kind": "threshold", "name": "rank_floor", "metric": "effective_rank",
                                   "below": 8.0}])
    with JsonlSink(tmp_path / "custom.jsonl") as sink:
        sink.log_params(config_params(config))
        sink.log_scalars(0, {U: -3.0})
    assert _threshold_lines(load_run(tmp_path / "custom.jsonl")) == [("rank_floor", "effective_rank", "below", 8.0)]


def test_cli_report_compares_several_runs(monitored_run, tmp_path, capsys):
    from spherewatch.cli import main

    other = _write_jsonl(tmp_path / "healthy.jsonl")
    assert main(["report", str(monitored_run.jsonl), str(other), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "collapse detected at step" in out and "healthy: no alerts in 45 steps" in out
    assert (tmp_path / "cmp" / "report.html").is_file()
