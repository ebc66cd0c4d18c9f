"""WebhookChannel against hostile endpoints on 127.0.0.1 (issue 22 row 5): an answer of 1 GB, an endless answer, an
answer that drips one byte at a time, a redirect. Each would hold memory, the sending thread or the alert hostage."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spherewatch.alerts import Alert, WebhookChannel
from spherewatch.alerts.webhook import MAX_ANSWER_BYTES

CHUNK = b"x" * 65536


class HostileEndpoint:
    """Answers every POST the way ``mode`` says and records what it saw: requests (method, path) and the bytes it
    managed to send before the client hung up."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = []
        self.sent = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                with endpoint.lock:
                    endpoint.requests.append((self.command, self.path))

            def do_GET(self):  # only a followed redirect would GET
                self._record()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._record()
                try:
                    if endpoint.mode == "redirect":
                        self.send_response(302)
                        self.send_header("Location", "/elsewhere")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if endpoint.mode == "drip":  # the status line, one byte every 0.2 s, never finished
                        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"y" * 10_000:
                            if endpoint.stop.is_set():
                                return
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.2)
                        return
                    self.send_response(200)
                    if endpoint.mode == "huge":
                        self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    total = 1 << 30 if endpoint.mode == "huge" else 1 << 40  # "endless": no length, no end
                    while endpoint.sent < total and not endpoint.stop.is_set():
                        self.wfile.write(CHUNK)
                        with endpoint.lock:
                            endpoint.sent += len(CHUNK)
                except OSError:  # the client hung up: what a bounded reader does
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secret"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint(request):
    ep = HostileEndpoint(request.param)
    yield ep
    ep.close()


def alert(i=0):
    return Alert("rank_collapse", "spherewatch/effective_rank", 3.5, 100 + i, "warning", f"effective_rank fell ({i})")


@pytest.mark.parametrize("endpoint", ["huge", "endless"], indirect=True)
def test_an_answer_is_read_only_up_to_a_small_fixed_size(endpoint):
    ch = WebhookChannel(endpoint.url, timeout=5.0, backoff_initial=0.05, backoff_max=0.1)
    try:
        ch.send(alert())
        assert ch.flush(timeout=20.0)
        assert (ch.delivered, ch.failed) == (1, 0)  # a 2xx status is a delivery, whatever follows it
    finally:
        ch.close(timeout=1.0)
    time.sleep(0.2)
    # the server got rid of what the client read plus what the sockets' buffers held -- never the 1 GB / endless body
    assert endpoint.sent < 64 * MAX_ANSWER_BYTES, endpoint.sent


@pytest.mark.parametrize("endpoint", ["drip"], indirect=True)
def test_an_attempt_has_a_total_deadline_however_slowly_the_server_answers(endpoint):
    # each read gets a byte every 0.2 s, well within any per-read timeout: only a deadline per attempt ends it
    ch = WebhookChannel(endpoint.url, timeout=0.5, backoff_initial=0.05, backoff_max=0.1, give_up_after=2.5)
    try:
        ch.send(alert())
        assert ch.flush(timeout=15.0), "the alert must be given up once give_up_after has passed"
        assert (ch.delivered, ch.failed) == (0, 1)
        assert len(endpoint.requests) >= 3, endpoint.requests  # attempts were cut and retried, not held forever
    finally:
        ch.close(timeout=1.0)


@pytest.mark.parametrize("endpoint", ["redirect"], indirect=True)
def test_a_redirect_is_a_failure_never_a_get_counted_as_delivered(endpoint, caplog):
    gave_up = []
    ch = WebhookChannel(endpoint.url, timeout=2.0, on_give_up=lambda a, e: gave_up.append(str(e)))
    try:
        ch.send(alert())
        assert ch.flush(timeout=10.0)
    finally:
        ch.close(timeout=1.0)
    assert (ch.delivered, ch.failed) == (0, 1)
    assert endpoint.requests == [("POST", "/services/T000/B000/secret")]  # one POST, no GET to the Location
    assert gave_up and "302" in gave_up[0] and "redirect" in gave_up[0]
    assert "secret" not in gave_up[0]
