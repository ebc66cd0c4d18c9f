"""The fixed thresholds of a run's alert rules, drawn as dashed lines on the report's figures.

Example:
    >>> from spherewatch.report.rundata import RunData
    >>> run = RunData("jsonl", "run.jsonl", {}, {}, [], params={
    ...     "spherewatch.rule.rank_floor": '{"kind": "threshold", "name": "rank_floor", "metric": "effective_rank", '
    ...                                    '"below": 8.0}'})
    >>> threshold_lines(run)
    [('rank_floor', 'effective_rank', 'below', 8.0)]
"""
from __future__ import annotations

import json
from typing import Any, List, Tuple

from spherewatch.alerts.rules import RULE_ADAPTER, CollapseRule, ThresholdRule, default_rules
from spherewatch.catalogue import collapsed_at_top
from spherewatch.report.rundata import RunData

__all__ = ["threshold_lines"]

#: the params under which a run logged its rules (``spherewatch.rule.<name>``, one JSON rule each)
_RULE_PARAM = "spherewatch.rule."


def threshold_lines(data: RunData) -> List[Tuple[str, str, str, float]]:
    """``(rule name, metric pattern, 'above'|'below', value)`` of the fixed thresholds among the run's rules: those
    the run logged (``spherewatch.rule.<name>`` params), else the default rules it names (``spherewatch.rules``),
    else the default rules."""
    rules: List[Any] = []
    logged = {k[len(_RULE_PARAM):]: v for k, v in data.params.items() if k.startswith(_RULE_PARAM)}
    for raw in logged.values():
        try:
            rules.append(RULE_ADAPTER.validate_python(json.loads(raw)))
        except (ValueError, TypeError):
            continue
    if not logged:
        names = data.params.get("spherewatch.rules")
        rules = [r for r in default_rules() if names is None or r.name in names.split(",")]
    lines = []
    for rule in rules:
        if isinstance(rule, ThresholdRule):
            for side in ("above", "below"):
                value = getattr(rule, side)
                if value is not None:
                    lines.append((str(rule.name), rule.metric, side, float(value)))
        elif isinstance(rule, CollapseRule) and not rule.relative:
            # the edge of the collapse zone |value - collapsed| <= margin, on the side the healthy values lie
            if rule.metric in collapsed_at_top():  # healthy values lie below the collapsed one
                lines.append((str(rule.name), rule.metric, "above", float(rule.collapsed - rule.margin)))
            else:
                lines.append((str(rule.name), rule.metric, "below", float(rule.collapsed + rule.margin)))
    return lines

