"""Fault row 3: the webhook endpoint answers 500, 429 + Retry-After, or hangs past the timeout, through the Monitor.

A real ``http.server`` on 127.0.0.1 plays the endpoint. Sending happens on the channel's own thread, so each
``monitor.step`` stays fast whatever the endpoint does; each alert is delivered exactly once once it answers; the
queue is bounded; and the URL (a secret) shows up nowhere.
"""
from __future__ import annotations

import logging
import threading
import time

import pytest
from reliability._harness import TinyTrainer
from webhook_server import WebhookEndpoint

import spherewatch as sw
from spherewatch.alerts.webhook import WebhookChannel

SECRET = "T0000/B0000/reliabilitySECRETtoken"
EVERY = 2
NAN_STEPS = (4, 12)  # far enough apart for the first alert to resolve (3 clean evaluations) before the second

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def endpoint():
    ep = WebhookEndpoint(SECRET)
    yield ep
    ep.close()


@pytest.fixture
def posts(monkeypatch):
    """What the webhook channel did, on ``time.perf_counter``'s clock: each HTTP attempt (the thread it ran on,
    ``start``, ``end`` or None while still in flight, the ``channel``) and, under ``"send"`` entries, each ``send``
    call."""
    made = []
    post, send = WebhookChannel._post, WebhookChannel.send

    def recorded(what, call):
        def wrapper(channel, *args):
            entry = {"what": what, "thread": threading.get_ident(), "start": time.perf_counter(), "end": None,
                     "channel": channel}
            made.append(entry)
            try:
                return call(channel, *args)
            finally:
                entry["end"] = time.perf_counter()
        return wrapper

    monkeypatch.setattr(WebhookChannel, "_post", recorded("post", post))
    monkeypatch.setattr(WebhookChannel, "send", recorded("send", send))
    return made


def _assert_no_request_on_the_training_thread(made):
    """Every ``send`` ran on the training thread and no HTTP attempt did; returns ``(attempts, sends)``."""
    posts = [m for m in made if m["what"] == "post"]
    sends = [m for m in made if m["what"] == "send"]
    assert posts and sends, "the channel never tried to send"
    training = threading.get_ident()
    assert all(p["thread"] != training for p in posts), "an HTTP request ran on the training thread"
    assert all(s["thread"] == training for s in sends)
    return posts, sends


def _assert_training_never_waited(made):
    """Training ran to its end, sending alerts, while the endpoint held the channel's first request: no HTTP
    attempt has ended yet, so no ``send`` (nor anything else on the training thread) can have waited for one.

    This is what "a step never waits for the webhook" means, checked by causality (the test holds the request until
    training is over) instead of by a wall-time bound, which on a shared 2-core CI machine measures the machine."""
    posts, sends = _assert_no_request_on_the_training_thread(made)
    assert len(posts) == 1 and posts[0]["end"] is None, "an HTTP attempt ended while training ran"
    after = [s for s in sends if s["start"] > posts[0]["start"]]
    assert after and all(s["end"] is not None for s in after), "no alert was sent while the request was held"


def _request_arrived(endpoint, at_step):
    """A ``before_step`` hook for :class:`TinyTrainer`: at ``at_step`` the training loop (the test, not the monitor)
    waits until the endpoint holds the channel's first request, so that the steps from there run while it is held."""
    def hook(step):
        if step == at_step:
            assert endpoint.wait_for(1, timeout=30.0), "the channel's first request never reached the endpoint"
    return hook


def _nan_batches(step, z1, z2):
    if step in NAN_STEPS:
        z1 = z1.detach().clone()
        z1[:2] = float("nan")
    return z1, z2


def _assert_secret_nowhere(mon, records, *texts):
    places = {
        "logs": "\n".join(r.getMessage() for r in records),
        "repr(monitor)": repr(mon),
        "repr(config)": repr(mon.config),
        "str(config)": str(mon.config),
        "config JSON": mon.config.model_dump_json(),
        "config dict": str(mon.config.model_dump()),
        **{f"text {i}": t for i, t in enumerate(texts)},
    }
    for where, text in places.items():
        assert SECRET not in text and "reliabilitySECRET" not in text, f"the webhook URL leaked into {where}"


TROUBLE = {
    "500 twice": [("status", 500, {}), ("status", 500, {})],
    "429 with Retry-After": [("status", 429, {"Retry-After": "1"})],
    "hangs past the timeout": [("hang", 5.0)],
}


@pytest.mark.parametrize("trouble", list(TROUBLE))
def test_webhook_trouble_never_slows_training_and_each_alert_arrives_exactly_once(
    trouble, endpoint, posts, make_monitor, spherewatch_logs
):
    endpoint.plan.extend(TROUBLE[trouble])
    fired = []
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY, webhook_url=endpoint.url, webhook_timeout=1.0,
                       on_alert=fired.append)
    trainer = TinyTrainer().run(mon, range(14), embeddings=_nan_batches)
    assert trainer.steps_done == list(range(14))
    _assert_no_request_on_the_training_thread(posts)
    assert {a.step for a in trainer.fired} == set(NAN_STEPS) and all(a.rule == "nonfinite" for a in trainer.fired)
    started = time.monotonic()
    mon.close()  # drains the channel's queue (a 5 s budget)
    assert time.monotonic() - started < 20.0  # the budget, with slack for a loaded machine

    assert fired == trainer.fired  # the callable channel got the same alerts, once each; no monitor_fault
    delivered = endpoint.answered_ok()
    assert len(delivered) == len(trainer.fired) and set(delivered.values()) == {1}
    texts = [r["text"] for r in endpoint.requests if r["answer"] == 200]
    for a in trainer.fired:
        assert sum(f"`{a.key}`" in t and f"at step {a.step}" in t for t in texts) == 1, a
    assert mon.faults == {}
    _assert_secret_nowhere(mon, spherewatch_logs.records, *(a.message for a in fired))


def test_a_step_never_waits_for_a_request_in_flight(endpoint, posts, make_monitor):
    endpoint.hang_all = True  # the endpoint holds each request until the test releases it
    fired = []
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY, webhook_url=endpoint.url, webhook_timeout=300.0,
                       on_alert=fired.append)
    trainer = TinyTrainer().run(mon, range(14), embeddings=_nan_batches,
                                before_step=_request_arrived(endpoint, at_step=NAN_STEPS[0] + 1))
    assert trainer.steps_done == list(range(14))
    assert {a.step for a in trainer.fired} == set(NAN_STEPS)  # the second NaN alert was sent while one was held
    _assert_training_never_waited(posts)

    endpoint.release.set()  # the endpoint answers: everything held and queued is delivered, once each
    mon.close()
    channel = posts[0]["channel"]
    assert (channel.delivered, channel.failed, channel.dropped) == (len(fired), 0, 0)
    assert len(endpoint.requests) == len(fired) and len({r["id"] for r in endpoint.requests}) == len(fired)


def test_webhook_queue_is_bounded_while_the_endpoint_hangs(endpoint, posts, make_monitor, spherewatch_logs):
    endpoint.hang_all = True  # the endpoint holds each request until the test ends
    # cooldown=1: a reminder on every NaN sample while the alert stays open (a flapping condition is one open alert)
    mon = make_monitor(sinks=("memory",), every_n_steps=1, webhook_url=endpoint.url, webhook_timeout=300.0,
                       rules=[{"kind": "nonfinite", "cooldown": 1}])

    def every_other_batch_has_nan(step, z1, z2):
        if step % 2:
            z1 = z1.detach().clone()
            z1[0] = float("nan")
        return z1, z2

    trainer = TinyTrainer(batch=8).run(mon, range(400), embeddings=every_other_batch_has_nan,
                                       before_step=_request_arrived(endpoint, at_step=2))
    assert len(trainer.fired) > 1000  # more than the queue holds (1000)
    _assert_training_never_waited(posts)  # not even once the queue was full (a blocking put would wait forever)
    dropping = [r for r in spherewatch_logs.records if "dropping new alerts" in r.getMessage()]
    assert len(dropping) == 1 and dropping[0].levelno == logging.WARNING  # logged once, not per alert
    started = time.monotonic()
    mon.close()  # gives up after its 5 s budget instead of waiting for 1000 hung requests (1000 s and more)
    assert time.monotonic() - started < 20.0  # the budget and the thread's join, with slack for a loaded machine
    assert len(endpoint.requests) == 1  # the one held: the channel never piled up requests
    _assert_secret_nowhere(mon, spherewatch_logs.records)


def test_webhook_url_stays_secret_in_errors_logs_and_reprs(endpoint, make_monitor, spherewatch_logs, monkeypatch):
    endpoint.plan.extend([("status", 404, {})] * 4)  # given up on at once, with a log line
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY, webhook_url=endpoint.url, webhook_timeout=1.0)
    TinyTrainer().run(mon, range(6), embeddings=_nan_batches)
    mon.close()
    gave_up = [r for r in spherewatch_logs.records if "giving up" in r.getMessage()]
    assert gave_up and all("/***" in r.getMessage() for r in gave_up)
    _assert_secret_nowhere(mon, spherewatch_logs.records)

    # a URL the channel refuses: the error says why, without the URL
    with pytest.raises(ValueError) as info:
        sw.Monitor(sinks=("memory",), webhook_url=f"ftp://127.0.0.1/{SECRET}")
    assert "https://host/path" in str(info.value)
    _assert_secret_nowhere(mon, spherewatch_logs.records, str(info.value), repr(info.value))
    monkeypatch.setenv("SPHEREWATCH_WEBHOOK_URL", f"ftp://127.0.0.1/{SECRET}")  # the same from the environment
    with pytest.raises(ValueError) as info:
        sw.Monitor(sinks=("memory",))
    _assert_secret_nowhere(mon, spherewatch_logs.records, str(info.value))
