"""The report's HTML page: verdicts, sources, the figures' sections, the alerts, the final values, the notes.

The page is self-contained (the figures are embedded as ``data:image/png;base64`` URIs, the style is inline) and
reads at 900 px without horizontal scrolling.

Example:
    >>> from spherewatch.report.rundata import RunData
    >>> run = RunData("jsonl", "/runs/a/spherewatch.jsonl", {"spherewatch/uniformity": [(0, -3.9), (300, -3.8)]},
    ...               {}, [], name="a")
    >>> page = render_page([run], [], "spherewatch")
    >>> "a: healthy: no alerts in 300 steps" in page, 'id="alerts-none"' in page
    (True, True)
"""
from __future__ import annotations

import base64
import html
import math
from typing import List, Tuple

import numpy as np

from spherewatch._version import __version__
from spherewatch.alerts.verdict import collapse_alerts, severity_rank
from spherewatch.keys import order_keys
from spherewatch.report.figures import RUN_COLORS, step_range
from spherewatch.report.run_verdict import verdict
from spherewatch.report.rundata import RunData

__all__ = ["embed_png", "render_page"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1400px;
color:#212121;padding:0 16px}
h1{margin-bottom:4px;overflow-wrap:anywhere}h2{margin-top:28px;border-bottom:1px solid #e0e0e0;padding-bottom:4px}
code{background:#f5f5f5;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
img{max-width:100%;height:auto;border:1px solid #eeeeee}
table{border-collapse:collapse;font-size:14px;max-width:100%}th,td{border:1px solid #e0e0e0;padding:4px 8px;
text-align:left;vertical-align:top;overflow-wrap:break-word}th{background:#fafafa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.sev{font-weight:600;color:#fff;border-radius:3px;padding:1px 6px;white-space:nowrap}
td.run{min-width:7em}
.sev-resolved{background:#2b9348}.sev-info{background:#1f77b4}.sev-warning{background:#ff8c00}.sev-critical{background:#d62728}
.missing{color:#616161;font-style:italic}.meta{color:#616161;overflow-wrap:anywhere}
#verdict{list-style:none;padding:0;margin:12px 0}
#verdict li{font-size:20px;font-weight:600;padding:10px 14px;margin:6px 0;border-radius:6px;border-left:8px solid}
#verdict li.collapsed{background:#fdecea;border-color:#d62728}#verdict li.healthy{background:#e8f5e9;border-color:#2b9348}
#verdict .swatch{display:inline-block;width:14px;height:14px;border-radius:3px;margin-right:8px;vertical-align:-1px}
"""


def _fmt(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else str(value)


def embed_png(path: str, alt: str) -> str:
    """An ``<img>`` of the PNG file ``path``, embedded as a data URI."""
    with open(path, "rb") as f:
        encoded = base64.b64encode(f.read()).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _alerts_html(runs: List[RunData]) -> str:
    """The alerts, one row each: run, step, severity, then what happened (rule, key, value, message) in one wide
    cell, so the table fits a narrow window."""
    rows = []
    several = len(runs) > 1
    for data in runs:
        for a in data.alerts:
            run_cell = f"<td class=\"run\">{html.escape(data.name)}</td>" if several else ""
            resolved = getattr(a, "status", "fired") == "resolved"
            badge = ('<span class="sev sev-resolved">resolved</span>' if resolved else
                     f'<span class="sev sev-{html.escape(a.severity)}">{html.escape(a.severity)}</span>')
            rows.append(
                f"<tr>{run_cell}<td class=\"num\">{a.step}</td><td>{badge}</td><td><code>{html.escape(a.rule)}</code> on "
                f"<code>{html.escape(a.key)}</code> = {_fmt(a.value)}<br>{html.escape(a.message or a.rule)}</td></tr>"
            )
    if not rows:
        return '<p id="alerts-none">No alerts fired.</p>'
    head = "<th>run</th>" if several else ""
    return (f'<table id="alerts"><thead><tr>{head}<th>step</th><th>severity</th><th>what happened</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _values_html(runs: List[RunData], prefix: str) -> str:
    several = len(runs) > 1
    keys = order_keys({k for d in runs for k in d.scalars}, prefix)
    head = "".join(f"<th>{html.escape(d.name)}: final</th>" for d in runs) if several else (
        "<th>points</th><th>first value</th><th>final value</th>")
    rows = []
    for key in keys:
        cells = []
        for data in runs:
            points = data.scalars.get(key) or []
            if not points:
                cells.append('<td class="num">–</td>' if several else "")
                continue
            (first_step, first), (last_step, last) = points[0], points[-1]
            if several:
                cells.append(f'<td class="num">{_fmt(last)} <span class="meta">(step {last_step})</span></td>')
            else:
                cells.append(
                    f'<td class="num">{len(points)}</td>'
                    f'<td class="num">{_fmt(first)} <span class="meta">(step {first_step})</span></td>'
                    f'<td class="num">{_fmt(last)} <span class="meta">(step {last_step})</span></td>')
        rows.append(f"<tr><td><code>{html.escape(key)}</code></td>{''.join(cells)}</tr>")
    for key in sorted({k for d in runs for k in d.spectra}):
        cells = []
        for data in runs:
            if key not in data.spectra:
                cells.append("<td>–</td>")
                continue
            step, values = data.spectra[key][-1]
            finite = values[np.isfinite(values)]
            top = _fmt(float(finite.max())) if finite.size else "nan"
            if several:
                cells.append(f'<td class="num">{values.size} eigenvalues, largest {top}</td>')
            else:
                cells.append(
                    f'<td class="num">{len(data.spectra[key])}</td><td class="num" colspan="2">{values.size} '
                    f'eigenvalues, largest {top} <span class="meta">(step {step})</span></td>')
        rows.append(f"<tr><td><code>{html.escape(key)}</code></td>{''.join(cells)}</tr>")
    return (f'<table id="final-values"><thead><tr><th>key</th>{head}</tr></thead><tbody>' + "".join(rows)
            + "</tbody></table>")


def _summary(data: RunData, prefix: str) -> str:
    steps = step_range([data])  # what the figures' step axes span (the metrics and the host's loss)
    span = f"steps {steps[0]}–{steps[1]}" if steps else "no scalar steps"
    worst_first = sorted({a.severity for a in data.alerts}, key=severity_rank, reverse=True)
    counts = ", ".join(f"{sum(a.severity == s for a in data.alerts)} {s}" for s in worst_first)
    return (f"{len(data.scalars)} keys, {span}, {len(data.alerts)} alert(s)" + (f" ({counts})" if counts else ""))


def render_page(runs: List[RunData], sections: List[Tuple[str, str]], prefix: str) -> str:
    """The HTML page of ``runs``: ``sections`` are ``(heading, html)`` pairs, the first shown before the alerts."""
    kinds = {"jsonl": "JSONL file", "tensorboard": "TensorBoard log dir", "mlflow": "MLflow"}
    title = ", ".join(d.name or d.source for d in runs)
    items = []
    for r, data in enumerate(runs):
        state = "collapsed" if collapse_alerts(data.alerts) else "healthy"
        color = RUN_COLORS[r % len(RUN_COLORS)]
        items.append(f'<li class="{state}"><span class="swatch" style="background:{color}"></span>'
                     f"{html.escape(data.name)}: {html.escape(verdict(data, prefix))}</li>")
    body = [
        f"<h1>spherewatch report: {html.escape(title)}</h1>",
        '<ul id="verdict">' + "".join(items) + "</ul>",
    ]
    for data in runs:
        body.append(f'<p class="meta">{html.escape(data.name)} — source ({kinds[data.kind]}): '
                    f'<code class="source">{html.escape(data.source)}</code></p>')
    body.append('<p id="summary">' + "<br>".join(
        html.escape((f"{d.name}: " if len(runs) > 1 else "") + _summary(d, prefix)) for d in runs) + "</p>")
    # the first run's source keeps its id (a single-run page reads as before)
    body[2] = body[2].replace('<code class="source">', '<code class="source" id="source">', 1)
    sections = list(sections)
    if sections:
        heading, content = sections.pop(0)
        body += [f"<h2>{html.escape(heading)}</h2>", content]
    body += ["<h2>Alerts</h2>", _alerts_html(runs)]
    for heading, content in sections:
        body += [f"<h2>{html.escape(heading)}</h2>", content]
    body += ["<h2>Final values</h2>", _values_html(runs, prefix)]
    notes = [f"{d.name}: {n}" if len(runs) > 1 else n for d in runs for n in d.notes]
    if notes:
        body += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    body.append(f'<p class="meta">Made by spherewatch {html.escape(__version__)}.</p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>spherewatch report: {html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )

