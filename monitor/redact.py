"""Strip secrets from text before it leaves the process (log records, warnings, alert messages, webhook posts).

Two kinds of secret travel in URLs: credentials (``http://user:password@host``, e.g. an MLflow tracking URI) and
webhook URLs, whose path *is* the credential (``https://hooks.slack.com/services/T00/B00/XXXX``). :func:`redact`
hides both, plus the values of token-like query parameters, and any extra secret string it is given.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable

__all__ = ["RedactingFilter", "install_log_redaction", "redact"]

# scheme://user:pass@   or   scheme://token@
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#'\"]+@")
# any http(s) URL whose host or path says it is a webhook: keep scheme://host, hide the rest
_WEBHOOK = re.compile(r"(?i)\b(https?://[^/\s'\"]*)(/[^\s'\"]*)?")
_WEBHOOK_HINT = re.compile(r"(?i)hook")
# ?token=..., &api_key=..., &sig=...
_QUERY_SECRET = re.compile(
    r"(?i)([?&](?:token|access_token|api_key|apikey|key|secret|password|passwd|sig|signature|auth)=)[^&\s'\"#]+"
)


def _hide_webhook(match: "re.Match[str]") -> str:
    head, path = match.group(1), match.group(2) or ""
    if path and (_WEBHOOK_HINT.search(head) or _WEBHOOK_HINT.search(path)):
        return head + "/***"
    return match.group(0)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL credentials, webhook URL paths, token query values and each of ``secrets`` replaced.

    Args:
        text: any text (a log message, an exception's ``str``, an alert message).
        secrets: exact strings to hide as well (e.g. the configured webhook URL, whatever it looks like).

    Example:
        >>> redact("POST to http://bob:s3cret@mlflow.internal:5000/api failed")
        'POST to http://***@mlflow.internal:5000/api failed'
        >>> redact("url https://hooks.slack.com/services/T0/B0/abc refused")
        'url https://hooks.slack.com/*** refused'
        >>> redact("GET https://x.io/run?token=abc&step=3")
        'GET https://x.io/run?token=***&step=3'
    """
    if not isinstance(text, str):
        text = str(text)
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\1***@", text)
    text = _WEBHOOK.sub(_hide_webhook, text)
    return _QUERY_SECRET.sub(r"\1***", text)


class RedactingFilter(logging.Filter):
    """A ``logging`` filter that redacts a record's message and exception text in place (see :func:`redact`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = tuple(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the caller's problem; leave it alone
            return True
        record.msg, record.args = redact(message, self.secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install_log_redaction(*names: str) -> None:
    """Add one :class:`RedactingFilter` to each named logger (``spherewatch`` and its children by default).

    A logger's filters only see records logged to that logger itself, so each logger that spherewatch writes to
    gets its own. Calling it again adds nothing.
    """
    for name in names or ("spherewatch", "spherewatch.sinks", "spherewatch.alerts", "spherewatch.alerts.webhook",
                          "spherewatch.writer", "spherewatch.integrations", "spherewatch.report"):
        log = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in log.filters):
            log.addFilter(RedactingFilter())
