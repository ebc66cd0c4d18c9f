"""A scenario run's trace: what the monitor logged and alerted, saved as JSON, and replayed through alert rules.

One place for the format: ``benchmarks/scenarios.py`` writes traces (``--save-traces``) and replays them
(``--replay``); the tests replay the ones kept in ``tests/alerts/traces`` through the current default rules.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

from spherewatch.alerts.engine import default_settle

TRACE_FORMAT = "spherewatch-scenario-trace/1"


def records_of(monitor: Any) -> Dict[str, Dict[str, float]]:
    """``{"<step>": {key: value}}``: every scalar a Monitor with a ``"memory"`` sink logged, by step."""
    out: Dict[str, Dict[str, float]] = {}
    for step, values in monitor.sink("memory").scalars:
        out.setdefault(str(step), {}).update(values)
    return out


def save_trace(directory: str, meta: Dict[str, Any], records: Dict[str, Dict[str, float]], alerts: List[Any],
               extra: Optional[Dict[str, Any]] = None) -> str:
    """Write one run as ``<suite>__<scenario>[_<how>]__s<seed>.json``::

        {"format": "spherewatch-scenario-trace/1",
         "suite", "family", "scenario", "what", "regime", "how", "seed", "D", "steps", "switch" (null: healthy;
         0: the bug from the first step), "every_n_steps", "loss_family" (what the family is; the run itself
         used the default, unset), "inferred_loss_family" (what an adapter inferred, else null), "healthy" (no bug
         in the recipe), "onset" (probe step or null), "positive" (onset is not null), "probe_ok" (healthy runs:
         the probe confirms it), "twin" (healthy twin scenario),
         "changes": [[step, what], ...] (deliberate recipe changes the run told the monitor, ``mark_change``;
                     replayed at the same steps),
         "records": {"<step>": {"<key>": value, ...}, ...}  (what the monitor logged at each evaluation, from the
                     memory sink; NaN/Infinity as JSON's non-standard literals, which Python's json reads),
         "alerts": [Alert.to_dict(), ...]  (every alert event of the run: fired, reminders, resolved),
         "probe": [[step, knn, participation_ratio, total_variance], ...], "twin_probe": same or null,
         "losses_every_10": [...]}
    """
    os.makedirs(directory, exist_ok=True)
    doc = {"format": TRACE_FORMAT, **meta, "positive": meta.get("onset") is not None, "records": records,
           "alerts": [a.to_dict() for a in alerts], **(extra or {})}
    path = os.path.join(directory, f"{meta['suite']}__{meta['scenario']}{'_' + meta['how'] if meta.get('how') else ''}"
                                   f"__s{meta['seed']}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
    return path


def replay_records(
    doc: Mapping[str, Any],
    update: Callable[[int, Dict[str, float]], List[Any]],
    mark_change: Callable[..., None],
    marks: bool = True,
) -> List[Any]:
    """Feed a trace's records in step order to ``update(step, values)`` (an ``AlertEngine``'s or an
    ``AlertPipeline``'s), with the recipe changes the run marked (``doc["changes"]``) handed to
    ``mark_change(step, what, settle_steps=...)`` before the first record at or after their step, settling for the
    Monitor's default (two evaluation intervals). ``marks=False``: as if the user had not told the monitor.
    Returns every alert event ``update`` returned, in order."""
    settle = default_settle(int(doc.get("every_n_steps") or 50))
    changes = sorted((int(c[0]), str(c[1])) for c in doc.get("changes") or []) if marks else []
    events: List[Any] = []
    for step, values in sorted(((int(s), v) for s, v in doc["records"].items()), key=lambda t: t[0]):
        while changes and changes[0][0] <= step:
            at, what = changes.pop(0)
            mark_change(at, what, settle_steps=settle)
        events += update(step, {k: float(v) for k, v in values.items()})
    return events
