"""Alerts: rules that watch logged metrics, one evaluator per rule kind (``alerts.evaluators``), the engine that
decides when they fire, and the channels that deliver them (one ``CollapseWarning`` or one log record, a callable,
a Slack-compatible webhook).

Example:
    >>> from spherewatch.alerts import AlertEngine, default_rules
    >>> engine = AlertEngine(default_rules())
    >>> engine.update(0, {"spherewatch/uniformity": float("nan")})[0].rule
    'nonfinite'
"""
from spherewatch.alerts.alert import SEVERITIES, Alert, Severity
from spherewatch.alerts.channels import AlertDispatcher, CallableChannel, Channel, LoggingChannel
from spherewatch.alerts.engine import AlertEngine
from spherewatch.alerts.rules import (
    DEFAULT_RULE_SETTINGS,
    RULE_ADAPTER,
    ApproachRule,
    CollapseRule,
    DegradationRule,
    DriftRule,
    LevelRule,
    NonFiniteRule,
    RegimeRule,
    Rule,
    ThresholdRule,
    TrendRule,
    default_rules,
    parse_rules,
)
from spherewatch.alerts.webhook import WebhookChannel, format_alert_text

__all__ = [
    "DEFAULT_RULE_SETTINGS",
    "RULE_ADAPTER",
    "SEVERITIES",
    "Alert",
    "AlertDispatcher",
    "AlertEngine",
    "ApproachRule",
    "CallableChannel",
    "Channel",
    "CollapseRule",
    "DegradationRule",
    "DriftRule",
    "LevelRule",
    "LoggingChannel",
    "NonFiniteRule",
    "RegimeRule",
    "Rule",
    "Severity",
    "ThresholdRule",
    "TrendRule",
    "WebhookChannel",
    "default_rules",
    "format_alert_text",
    "parse_rules",
]
