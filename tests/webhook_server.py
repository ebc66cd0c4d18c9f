"""A scriptable Slack-style webhook endpoint on 127.0.0.1 for the webhook tests (tests/alerts, tests/reliability)."""
from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookEndpoint:
    """Behaviours, consumed in order: ``("status", code, headers)`` or ``("hang", seconds)``; then 200.
    ``hang_all`` makes every request hang until :attr:`release` is set (:meth:`close` sets it). Each request is
    recorded as a dict with ``time``, ``body``, ``text``, ``id`` (the ``X-Spherewatch-Delivery-Id`` header),
    ``headers``, ``path`` and ``answer`` (the status code, or ``"hang"``)."""

    def __init__(self, secret: str) -> None:
        self.lock = threading.Lock()
        self.plan = collections.deque()
        self.requests = []
        self.release = threading.Event()
        self.arrived = threading.Condition(self.lock)
        self.hang_all = False
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with endpoint.lock:
                    behaviour = endpoint.plan.popleft() if endpoint.plan else ("status", 200, {})
                    if endpoint.hang_all:
                        behaviour = ("hang", None)  # until the test releases it
                    endpoint.requests.append({
                        "time": time.monotonic(), "body": body, "text": body.get("text"),
                        "id": self.headers.get("X-Spherewatch-Delivery-Id"), "headers": dict(self.headers),
                        "path": self.path, "answer": behaviour[1] if behaviour[0] == "status" else "hang",
                    })
                    endpoint.arrived.notify_all()
                if behaviour[0] == "hang":
                    endpoint.release.wait(behaviour[1])
                    behaviour = ("status", 200, {})
                try:
                    self.send_response(behaviour[1])
                    for k, v in behaviour[2].items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args):  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/{secret}"

    def script(self, *behaviours):
        with self.lock:
            self.plan.extend(behaviours)

    def reset(self):
        self.release.set()
        with self.lock:
            self.plan.clear()
            self.requests.clear()
        self.release = threading.Event()

    def wait_for(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.requests) < n and time.monotonic() < deadline:
                self.arrived.wait(deadline - time.monotonic())
            return len(self.requests) >= n

    def texts(self, answer=200):
        with self.lock:
            return [r["text"] for r in self.requests if r["answer"] == answer]

    def answered_ok(self):
        """Delivery id -> number of requests of that alert answered 200 at once (not after a hang)."""
        with self.lock:
            return collections.Counter(r["id"] for r in self.requests if r["answer"] == 200)

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
