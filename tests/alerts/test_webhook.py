"""WebhookChannel against a real local HTTP server (http.server on 127.0.0.1, free port)."""
import logging
import socket
import time

import pytest
from webhook_server import WebhookEndpoint

from spherewatch.alerts import Alert, AlertDispatcher, WebhookChannel

SECRET = "T0000/B0000/XXXXsecretTOKENxxxx"
FAST = {"timeout": 2.0, "backoff_initial": 0.05, "backoff_max": 0.2}


@pytest.fixture(scope="module")
def server():
    hook = WebhookEndpoint(SECRET)
    yield hook
    hook.close()


@pytest.fixture
def hook(server):
    server.reset()
    yield server
    server.release.set()


@pytest.fixture
def channels():
    made = []
    yield made
    for ch in made:
        ch.close(timeout=1.0)


def alert(i=0, message=None):
    return Alert("rank_collapse", "spherewatch/effective_rank", 3.5, 100 + i, "warning",
                 message or f"effective_rank fell (alert {i})")


def numbers(texts):
    """The alert numbers in the delivered texts, in order."""
    return [int(t.split("(alert ")[1].split(")")[0]) for t in texts]


def test_delivers_slack_json_exactly_once(hook, channels):
    ch = WebhookChannel(hook.url, **FAST)
    channels.append(ch)
    ch.send(alert(1))
    assert ch.flush(10)
    ch.close(5)
    (req,) = hook.requests
    assert req["answer"] == 200 and set(req["body"]) == {"text"}
    assert "effective_rank fell (alert 1)" in req["body"]["text"] and "step 101" in req["body"]["text"]
    assert req["headers"]["Content-Type"] == "application/json" and req["path"].endswith(SECRET)
    assert (ch.delivered, ch.failed, ch.dropped) == (1, 0, 0)
    assert not ch._thread.is_alive()


def test_retries_5xx_then_delivers_exactly_once(hook, channels):
    hook.script(*[("status", 500, {})] * 3, ("status", 503, {}))
    ch = WebhookChannel(hook.url, **FAST)
    channels.append(ch)
    ch.send(alert(1))
    ch.send(alert(2))
    assert ch.flush(10)
    assert [r["answer"] for r in hook.requests] == [500, 500, 500, 503, 200, 200]
    assert numbers(hook.texts()) == [1, 2]
    ids = [r["headers"]["X-Spherewatch-Delivery-Id"] for r in hook.requests]
    assert len(set(ids[:5])) == 1 and ids[5] != ids[0]  # one id per alert, kept across retries
    assert (ch.delivered, ch.failed, ch.dropped) == (2, 0, 0)


def test_429_retry_after_is_honoured(hook, channels):
    hook.script(("status", 429, {"Retry-After": "1"}))
    ch = WebhookChannel(hook.url, **FAST)  # backoff 0.05 s would retry much sooner
    channels.append(ch)
    ch.send(alert())
    assert ch.flush(10)
    first, second = hook.requests
    assert (first["answer"], second["answer"]) == (429, 200)
    assert second["time"] - first["time"] >= 1.0
    assert ch.delivered == 1


def test_4xx_gives_up_with_one_log_line(hook, channels, caplog):
    caplog.set_level(logging.DEBUG, logger="spherewatch")
    hook.script(("status", 404, {}))
    ch = WebhookChannel(hook.url, **FAST)
    channels.append(ch)
    ch.send(alert(1))
    ch.send(alert(2))
    assert ch.flush(10)
    assert [r["answer"] for r in hook.requests] == [404, 200]
    assert (ch.delivered, ch.failed) == (1, 1)
    records = [r for r in caplog.records if r.name.startswith("spherewatch")]
    assert len(records) == 1 and "HTTP 404" in records[0].getMessage()
    assert SECRET not in caplog.text


def test_send_never_blocks_while_the_server_hangs(hook, channels):
    hook.script(("hang", 5.0))
    ch = WebhookChannel(hook.url, timeout=2.0, backoff_initial=0.05, backoff_max=0.2)
    channels.append(ch)
    for i in range(20):
        ch.send(alert(i))
    # every send returned before the first request could end (it hangs 5 s, timed out at 2 s): nothing delivered,
    # failed or dropped yet. A send that waited for the server would have seen the first alert through first.
    assert (ch.delivered, ch.failed, ch.dropped) == (0, 0, 0)
    assert hook.wait_for(1)
    assert ch.flush(15)  # the hung request timed out and was retried
    hook.release.set()
    assert ch.delivered == 20 and ch.failed == 0
    texts = hook.texts(200)
    assert len(texts) == 20 and len(set(texts)) == 20  # each alert answered 200 exactly once


def test_full_queue_drops_the_newest_and_logs_once(hook, channels, caplog):
    caplog.set_level(logging.WARNING, logger="spherewatch")
    hook.script(("hang", 5.0))
    ch = WebhookChannel(hook.url, max_queue=3, timeout=4.0, backoff_initial=0.05)
    channels.append(ch)
    ch.send(alert(0))
    assert hook.wait_for(1)  # alert 0 is in flight (hanging), the queue is empty
    for i in range(1, 7):
        ch.send(alert(i))  # 1, 2, 3 fill the queue; 4, 5, 6 are dropped
    assert ch.dropped == 3
    hook.release.set()
    assert ch.flush(10)
    assert numbers(hook.texts("hang")) == [0] and numbers(hook.texts(200)) == [1, 2, 3]
    assert (ch.delivered, ch.dropped, ch.failed) == (4, 3, 0)
    drops = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(drops) == 1 and SECRET not in caplog.text


def test_connection_errors_are_retried_until_give_up_after(channels, caplog):
    caplog.set_level(logging.DEBUG, logger="spherewatch")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/services/{SECRET}"  # nothing listens here
    ch = WebhookChannel(url, timeout=0.5, backoff_initial=0.05, backoff_max=0.1, give_up_after=0.5)
    channels.append(ch)
    ch.send(alert())
    assert ch.flush(10)
    assert (ch.delivered, ch.failed) == (0, 1)
    (record,) = [r for r in caplog.records if r.name.startswith("spherewatch")]
    assert "giving up" in record.getMessage() and SECRET not in caplog.text and url not in caplog.text


def test_close_drains_the_queue_then_stops_the_thread(hook):
    ch = WebhookChannel(hook.url, **FAST)
    for i in range(5):
        ch.send(alert(i))
    ch.close(timeout=10)
    assert ch.delivered == 5 and not ch._thread.is_alive()
    ch.send(alert(9))  # after close: dropped, never raises
    assert ch.dropped == 1 and len(hook.requests) == 5
    ch.close()  # idempotent


def test_close_gives_up_at_its_timeout_while_the_server_hangs(hook, caplog):
    caplog.set_level(logging.WARNING, logger="spherewatch")
    hook.script(("hang", 5.0))
    ch = WebhookChannel(hook.url, timeout=0.5, backoff_initial=0.05)
    for i in range(3):
        ch.send(alert(i))
    assert hook.wait_for(1)
    t0 = time.monotonic()
    ch.close(timeout=0.2)
    assert time.monotonic() - t0 < 3.0
    ch._thread.join(3.0)
    assert not ch._thread.is_alive()
    assert ch.delivered == 0 and ch.dropped + ch.failed == 3
    assert any("not delivered" in r.getMessage() for r in caplog.records) and SECRET not in caplog.text


def test_url_never_appears_in_repr_str_logs_or_errors(hook, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG, logger="spherewatch")
    ch = WebhookChannel(hook.url, **FAST)
    for text in (repr(ch), str(ch), ch.url, repr(AlertDispatcher([ch]))):
        assert SECRET not in text and hook.url not in text
    assert ch.url == f"http://127.0.0.1:{hook.server.server_address[1]}/***"
    hook.script(("status", 400, {}))
    ch.send(alert())
    ch.close(5)
    errors = []
    for bad in (f"ftp://user:{SECRET}@example.com/{SECRET}", f"127.0.0.1/{SECRET}"):
        with pytest.raises(ValueError) as info:
            WebhookChannel(bad)
        errors.append(str(info.value))
    monkeypatch.setenv("SPHEREWATCH_WEBHOOK_URL", f"mailto:{SECRET}")
    with pytest.raises(ValueError) as info:
        WebhookChannel()
    errors.append(str(info.value))
    assert all(SECRET not in e for e in errors) and SECRET not in caplog.text and hook.url not in caplog.text
    assert "HTTP 400" in caplog.text


def test_url_comes_from_the_argument_else_the_env_var(hook, monkeypatch):
    monkeypatch.delenv("SPHEREWATCH_WEBHOOK_URL", raising=False)
    with pytest.raises(ValueError, match=r"WebhookChannel\(url=\.\.\.\).*SPHEREWATCH_WEBHOOK_URL"):
        WebhookChannel()
    monkeypatch.setenv("MY_HOOK", hook.url)
    ch = WebhookChannel(url_env="MY_HOOK", **FAST)
    ch.send(alert())
    ch.close(5)
    assert ch.delivered == 1 and len(hook.requests) == 1

    class Secret:  # like pydantic.SecretStr
        def get_secret_value(self):
            return hook.url

    ch = WebhookChannel(Secret(), **FAST)
    ch.send(alert())
    ch.close(5)
    assert ch.delivered == 1 and len(hook.requests) == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"timeout": 0}, "`timeout` must be a positive number"),
        ({"max_queue": 0}, "`max_queue` must be an integer >= 1"),
        ({"backoff_initial": 2.0, "backoff_max": 1.0}, "`backoff_max`"),
        ({"give_up_after": float("inf")}, "`give_up_after`"),
    ],
)
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WebhookChannel("https://hooks.example.com/x", **kwargs)
