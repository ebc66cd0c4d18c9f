"""A Slack-compatible webhook channel that never blocks training."""
from __future__ import annotations

import atexit
import email.utils
import http.client
import json
import logging
import math
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable

from spherewatch._version import __version__
from spherewatch.alerts.alert import Alert
from spherewatch.alerts.channels import Channel
from spherewatch.forks import disown_in_forked_child
from spherewatch.redact import redact

__all__ = ["MAX_ANSWER_BYTES", "WebhookChannel", "format_alert_text"]

_log = logging.getLogger("spherewatch.alerts.webhook")


class _GiveUp(Exception):
    """The alert cannot be delivered (4xx other than 429)."""


class WebhookChannel(Channel):
    """POSTs every alert as Slack-compatible JSON ``{"text": "..."}`` from one background daemon thread.

    Delivery:

    * :meth:`send` only puts the alert on a bounded queue and returns at once; it never blocks and never raises.
    * A 2xx answer counts as delivered (once). Connection errors, timeouts and 5xx answers are retried with
      exponential backoff (``backoff_initial`` doubling up to ``backoff_max`` seconds); a 429 answer is retried
      after its ``Retry-After`` (seconds or an HTTP date), but never sooner than the backoff: ``Retry-After: 0``
      cannot make the thread spin. Any other answer (4xx, 3xx) gives up on that alert with one log line: a redirect
      is never followed (urllib would re-send the POST as a body-less GET). An alert
      still not delivered ``give_up_after`` seconds after its first attempt is given up. Each give-up is handed to
      ``on_give_up(alert, error)`` (the Monitor reports it as a ``monitor_fault``).
    * One attempt lasts at most ``timeout`` seconds in all, however slowly the server answers (the connection is
      cut then, and the attempt retried), and at most :data:`MAX_ANSWER_BYTES` of an answer's body are read.
    * The thread starts with the first alert (on rank zero only, since only rank zero sends). Alerts still queued
      when the interpreter exits without :meth:`close` are delivered by an ``atexit`` hook (at most
      ``exit_timeout`` seconds).
    * Each attempt of one alert carries the same ``X-Spherewatch-Delivery-Id`` header, so a receiver can drop
      the duplicate that a retry after a timeout may cause (the server may have received the timed-out request).
    * When the queue is full, the **newest** alert (the one being sent) is dropped: the queued, older alerts
      describe the onset of the problem, which is the most useful part, and every alert is already de-duplicated
      by the engine. Drops are counted in :attr:`dropped` and logged once.

    Counters: :attr:`delivered` (2xx), :attr:`failed` (given up: a 4xx, ``give_up_after`` exceeded, or still
    being retried when :meth:`close` timed out) and :attr:`dropped` (never sent: queue full, still queued when
    :meth:`close` timed out, or sent after close).

    The URL is a secret (it authorises posting to the channel): it never appears in logs, ``repr``, ``str`` or
    exception messages; only ``scheme://host/***`` is shown.

    Args:
        url: the webhook URL (``str`` or a pydantic ``SecretStr``); default: the ``url_env`` environment variable.
        url_env: environment variable read when ``url`` is not given.
        timeout: seconds one attempt (connect, send, answer) may take in all.
        max_queue: alerts waiting at most.
        backoff_initial: first retry delay, seconds.
        backoff_max: longest retry delay, seconds.
        give_up_after: seconds after the first attempt of an alert after which it is given up.
        on_give_up: called as ``on_give_up(alert, error)`` from the sending thread when an alert is given up.
        exit_timeout: seconds the ``atexit`` hook waits for queued alerts.

    Raises:
        ValueError: no URL (naming both ways to set one), a URL that is not http(s), or a bad number.
    """

    def __init__(
        self,
        url: Any | None = None,
        *,
        url_env: str = "SPHEREWATCH_WEBHOOK_URL",
        timeout: float = 5.0,
        max_queue: int = 1000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        give_up_after: float = 600.0,
        on_give_up: Callable[[Alert, Exception], Any] | None = None,
        exit_timeout: float = 5.0,
    ) -> None:
        if url is not None and hasattr(url, "get_secret_value"):
            url = url.get_secret_value()
        if url is None or (isinstance(url, str) and not url.strip()):
            url = os.environ.get(url_env, "").strip() or None
        if url is None:
            raise ValueError(
                f"WebhookChannel needs a URL: pass WebhookChannel(url=...) (or `webhook_url=` in the Monitor config), "
                f"or set the environment variable {url_env}."
            )
        if not isinstance(url, str):
            raise TypeError(f"The webhook URL must be a string, got {type(url).__name__}.")
        url = url.strip()
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"The webhook URL must look like https://host/path (scheme {parts.scheme or '<none>'!r} given; "
                "the URL itself is not shown because it is a secret)."
            )
        for name, value, low in (
            ("timeout", timeout, 0.0), ("backoff_initial", backoff_initial, 0.0), ("backoff_max", backoff_max, 0.0),
            ("give_up_after", give_up_after, 0.0),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
                raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}.")
        if backoff_max < backoff_initial:
            raise ValueError(f"`backoff_max` ({backoff_max}) must be >= `backoff_initial` ({backoff_initial}).")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"`max_queue` must be an integer >= 1, got {max_queue!r}.")

        self.__url = url
        port = f":{parts.port}" if parts.port else ""
        self._masked = f"{parts.scheme}://{parts.hostname}{port}/***"
        self.timeout = float(timeout)
        self.max_queue = max_queue
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self.give_up_after = float(give_up_after)
        self.on_give_up = on_give_up
        self.exit_timeout = float(exit_timeout)

        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self._queue: queue.Queue[tuple[Alert, str]] = queue.Queue(maxsize=max_queue)
        # re-entrant: close() from a signal handler may interrupt send() on the same thread while it holds the lock
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0  # queued + in flight
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._warned_drop = False
        disown_in_forked_child(self)  # a forked child's copy: the thread and queue are the parent's

    def disown(self) -> None:
        """In a forked child: the sending thread and the queued alerts are the parent's. Send nothing, and let the
        child's exit return at once instead of waiting ``exit_timeout`` for a thread that does not exist here."""
        self._lock = threading.RLock()  # the parent's lock may have been held by a thread that is not here
        self._idle = threading.Condition(self._lock)
        self._closed = True
        self._pending = 0
        self._queue = queue.Queue(maxsize=self.max_queue)
        self._thread = None
        try:
            atexit.unregister(self._close_at_exit)
        except Exception:  # pragma: no cover
            pass

    # ------------------------------------------------------------------------------------------------ public
    @property
    def url(self) -> str:
        """The masked URL (``scheme://host/***``); the real one is never exposed."""
        return self._masked

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` for delivery; returns immediately (drops the alert when the queue is full)."""
        with self._lock:
            if self._closed:
                self._drop("the channel is closed")
                return
            try:
                self._queue.put_nowait((alert, uuid.uuid4().hex))
            except queue.Full:
                self._drop(f"the queue is full ({self.max_queue} alerts waiting; the endpoint is slow or down)")
                return
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="spherewatch-webhook", daemon=True)
                self._thread.start()
                atexit.register(self._close_at_exit)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued alert was delivered or given up, at most ``timeout`` s; True if all done."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._idle:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Drain the queue for at most ``timeout`` seconds, then stop the thread. Idempotent.

        Alerts still queued then are counted as dropped; one still being retried as failed.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            atexit.unregister(self._close_at_exit)
        except Exception:  # pragma: no cover
            pass
        drained = self.flush(timeout)
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=min(1.0, self.timeout) + 0.5)
        left = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            left += 1
        if left:
            with self._lock:
                self.dropped += left
                self._pending -= left
        if not drained:
            _log.warning(
                "webhook %s: closed after %.3g s with %d alert(s) not delivered (counted as dropped/failed)",
                self._masked, timeout, left + (1 if thread is not None and thread.is_alive() else 0),
            )

    def _close_at_exit(self) -> None:
        try:
            self.close(self.exit_timeout)
        except Exception:  # noqa: BLE001 - never fail the interpreter's exit
            pass

    def __repr__(self) -> str:
        return (
            f"WebhookChannel(url={self._masked!r}, delivered={self.delivered}, failed={self.failed}, "
            f"dropped={self.dropped}, queued={self._queue.qsize()})"
        )

    __str__ = __repr__

    # ------------------------------------------------------------------------------------------------ worker
    def _drop(self, why: str) -> None:  # called with the lock held
        self.dropped += 1
        if not self._warned_drop:
            self._warned_drop = True
            _log.warning("webhook %s: dropping new alerts because %s (logged once; see .dropped)", self._masked, why)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert, delivery_id = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                outcome = self._deliver(alert, delivery_id)
            except Exception as err:  # noqa: BLE001 - the worker must survive anything
                outcome = "failed"
                _log.error("webhook %s: unexpected %s while sending an alert", self._masked, type(err).__name__)
            with self._idle:
                if outcome == "delivered":
                    self.delivered += 1
                else:
                    self.failed += 1
                self._pending -= 1
                self._idle.notify_all()

    def _gave_up(self, alert: Alert, why: str) -> str:
        if self.on_give_up is not None:
            try:
                self.on_give_up(alert, RuntimeError(f"webhook {self._masked} gave up on alert {alert.rule!r} at step "
                                                    f"{alert.step}: {why}"))
            except Exception:  # noqa: BLE001 - the callback must not kill the sending thread
                _log.debug("webhook %s: the on_give_up callback raised", self._masked, exc_info=True)
        return "failed"

    def _deliver(self, alert: Alert, delivery_id: str) -> str:
        body = json.dumps({"text": redact(format_alert_text(alert), (self.__url,))}).encode("utf-8")
        start = time.monotonic()
        backoff = self.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                status, retry_after = self._post(body, delivery_id)
            except _GiveUp as err:
                _log.error("webhook %s: giving up on alert %r at step %d: %s", self._masked, alert.rule, alert.step, err)
                return self._gave_up(alert, str(err))
            if status is not None and 200 <= status < 300:
                return "delivered"
            # Retry-After is honoured, but never below the backoff (a server answering 429 with Retry-After: 0
            # would otherwise be hammered in a tight loop)
            delay = backoff if retry_after is None else max(retry_after, backoff)
            backoff = min(backoff * 2.0, self.backoff_max)
            if time.monotonic() + delay - start > self.give_up_after:
                _log.error(
                    "webhook %s: giving up on alert %r at step %d after %d attempt(s) in %.3g s (give_up_after=%g)",
                    self._masked, alert.rule, alert.step, attempt, time.monotonic() - start, self.give_up_after,
                )
                return self._gave_up(alert, f"not delivered after {attempt} attempt(s) (give_up_after="
                                            f"{self.give_up_after:g} s)")
            if self._stop.wait(delay):
                return "failed"

    def _post(self, body: bytes, delivery_id: str) -> tuple[int | None, float | None]:
        """One attempt, over within ``timeout`` seconds in all (a watchdog cuts the connection then, however slowly
        the server answers). Returns (status or None for a network error, Retry-After seconds or None)."""
        req = urllib.request.Request(
            self.__url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": f"spherewatch/{__version__}",
                "X-Spherewatch-Delivery-Id": delivery_id,
            },
        )
        connections = _Connections()
        opener = urllib.request.build_opener(_RefuseRedirects, _TrackedHTTPHandler(connections),
                                             _TrackedHTTPSHandler(connections))
        watchdog = threading.Timer(self.timeout, connections.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                resp.read(MAX_ANSWER_BYTES)  # the answer's body is not needed: a hostile one is never read whole
                return resp.status, None
        except urllib.error.HTTPError as err:
            status = err.code
            retry_after = _retry_after(err.headers.get("Retry-After") if err.headers else None)
            err.close()
            if status == 429:
                return status, retry_after
            if 500 <= status < 600:
                return status, None
            why = "a redirect is not followed: give the final URL" if 300 <= status < 400 else \
                "fix the webhook URL or payload"
            raise _GiveUp(f"HTTP {status} {err.reason} (not retried: {why})") from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError):
            # connection refused/reset, DNS, timeouts, the watchdog's cut: retried. Messages are not logged (they may
            # hold the URL).
            return None, None
        finally:
            watchdog.cancel()
            connections.cut()


#: Bytes of an answer's body read at most (a webhook's answer is ``ok``; a hostile one may be endless).
MAX_ANSWER_BYTES = 64 * 1024


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx answer is an error (:class:`urllib.error.HTTPError`), never followed: urllib would turn the POST into a
    body-less GET to wherever the answer points, and count that as delivered."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


class _Connections:
    """The connections of one attempt, so that its watchdog can cut them at the attempt's deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list = []

    def factory(self, connection_class: Any) -> Callable[..., Any]:
        def make(*args: Any, **kwargs: Any) -> Any:
            conn = connection_class(*args, **kwargs)
            with self._lock:
                self._open.append(conn)
            return conn
        return make

    def cut(self) -> None:
        """Shut every connection down: a read blocked in another thread fails at once."""
        with self._lock:
            conns, self._open = self._open, []
        for conn in conns:
            sock = getattr(conn, "sock", None)
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped all the same
                pass


class _Tracked:
    """Mixin for urllib's HTTP(S) handlers: every connection they open is handed to ``connections``."""

    def __init__(self, connections: _Connections) -> None:
        super().__init__()
        self._connections = connections

    def do_open(self, http_class, req, **http_conn_args):  # noqa: D102
        return super().do_open(self._connections.factory(http_class), req, **http_conn_args)


class _TrackedHTTPHandler(_Tracked, urllib.request.HTTPHandler):
    pass


class _TrackedHTTPSHandler(_Tracked, urllib.request.HTTPSHandler):
    pass


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def format_alert_text(alert: Alert) -> str:
    """The Slack message (mrkdwn) for one alert.

    Example:
        >>> print(format_alert_text(Alert("rank_collapse", "spherewatch/effective_rank", 3.0, 40,
        ...                                message="effective_rank fell")))
        :warning: *spherewatch warning* — effective_rank fell
        rule `rank_collapse`, `spherewatch/effective_rank` = 3 at step 40
    """
    icon = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}.get(
        alert.severity, ":warning:"
    )
    value = f"{alert.value:.4g}" if isinstance(alert.value, (int, float)) else str(alert.value)
    return (
        f"{icon} *spherewatch {alert.severity}* — {alert.message or alert.rule}\n"
        f"rule `{alert.rule}`, `{alert.key}` = {value} at step {alert.step}"
    )

