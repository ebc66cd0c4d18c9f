"""Issue 22 rows 1 and 2: nothing found on disk is trusted, and another run's leftovers never delay this run.

A spool folder left under the spool root (shipped in a cloned repository, an unpacked archive) with a crafted
``run.json`` is replayed only when it is this user's monitor's own, for a destination this run writes to; anything
else is left untouched and named once. Real components: JSONL files, a recording HTTP server on 127.0.0.1 standing
for a tracking server, a closed port standing for an MLflow server that is down.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow_server import free_port

import spherewatch as sw
from spherewatch.sinks import read_jsonl

pytestmark = pytest.mark.timeout(180)
KEY = "0123456789abcdef"
LOSS = "train/loss"


class RecordingServer:
    """An HTTP server on 127.0.0.1 that answers 200 to anything and records each request's method, path, headers."""

    def __init__(self) -> None:
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                server.requests.append((self.command, self.path, dict(self.headers)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_PATCH = do_PUT = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _crafted_folder(spool_dir, sink_spec, name="jsonl"):
    folder = spool_dir / KEY
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_key": KEY, "sinks": [sink_spec]}))
    (folder / f"{name}-0.spool.jsonl").write_text(
        json.dumps({"v": 1, "op": "scalars", "step": 1, "time": 100.0, "values": {"echo pwned #": 1.0}}) + "\n")
    return folder


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _run(tmp_path, n=5, **fields):
    fields.setdefault("sinks", ("jsonl",))
    mon = sw.Monitor(log_dir=str(tmp_path / "runs"), spool_dir=str(tmp_path / "spool"), warn=False, **fields)
    for step in range(n):
        mon.log(step, {LOSS: float(step)})
    mon.close()
    return mon


def test_a_crafted_spool_naming_a_file_outside_is_left_untouched_and_named_once(tmp_path, caplog):
    bashrc = tmp_path / "home" / ".bashrc"
    bashrc.parent.mkdir()
    bashrc.write_text("export PATH=$PATH:~/bin\n")
    before = (bashrc.read_bytes(), bashrc.stat().st_mtime_ns)
    folder = _crafted_folder(tmp_path / "spool", {"name": "jsonl", "path": str(bashrc)})
    left = _snapshot(folder)
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        _run(tmp_path)
        _run(tmp_path)  # a second run in the same process: not named again
    assert (bashrc.read_bytes(), bashrc.stat().st_mtime_ns) == before  # nothing appended
    assert _snapshot(folder) == left  # the folder itself untouched (no lock file, nothing rewritten)
    named = [r for r in caplog.records if str(folder) in r.getMessage() and "not replayed" in r.getMessage()]
    assert len(named) == 1 and str(bashrc) in named[0].getMessage()
    assert [s for s, _ in read_jsonl(tmp_path / "runs" / "spherewatch.jsonl")["scalars"][LOSS]] == [*range(5)] * 2


def test_a_crafted_spool_naming_a_tracking_server_never_gets_a_request_or_the_users_credentials(
    tmp_path, monkeypatch
):
    server = RecordingServer()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-planted")
    try:
        folder = _crafted_folder(tmp_path / "spool", {"name": "mlflow", "tracking_uri": server.uri,
                                                      "run_id": "a" * 32, "created_run": True}, name="mlflow")
        left = _snapshot(folder)
        _run(tmp_path)
    finally:
        server.close()
    assert server.requests == []  # no request at all, hence no Authorization header
    assert _snapshot(folder) == left


@pytest.mark.parametrize("flaw", ["group-writable", "symlink", "foreign file", "run key"])
def test_a_spool_folder_that_is_not_the_monitors_own_is_left_untouched(tmp_path, flaw):
    out = tmp_path / "runs" / "old.jsonl"  # a destination inside this run's log folder: trusted by itself
    folder = _crafted_folder(tmp_path / "spool", {"name": "jsonl", "path": str(out)})
    if flaw == "group-writable":
        os.chmod(folder / "jsonl-0.spool.jsonl", 0o664)
    elif flaw == "symlink":
        (tmp_path / "elsewhere.jsonl").write_text((folder / "jsonl-0.spool.jsonl").read_text())
        (folder / "jsonl-0.spool.jsonl").unlink()
        os.symlink(tmp_path / "elsewhere.jsonl", folder / "jsonl-0.spool.jsonl")
    elif flaw == "foreign file":
        (folder / "notes.txt").write_text("hello")
    else:
        (folder / "run.json").write_text(json.dumps({"run_key": "another", "sinks": [{"name": "jsonl",
                                                                                      "path": str(out)}]}))
    left = _snapshot(folder)
    _run(tmp_path, sinks=("memory",))
    assert not out.exists() and _snapshot(folder) == left


def test_the_monitors_own_leftover_for_this_runs_destination_is_still_replayed_once(tmp_path):
    out = tmp_path / "runs" / "spherewatch.jsonl"
    folder = _crafted_folder(tmp_path / "spool", {"name": "jsonl", "path": str(out)})
    _run(tmp_path, n=2)
    _run(tmp_path, n=0)
    logged = read_jsonl(out)["scalars"]
    assert [s for s, _ in logged["echo pwned #"]] == [1] and not folder.exists()


def test_a_leftover_naming_a_server_that_is_down_never_delays_this_runs_records(tmp_path):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request is refused (and retried by MLflow)
    _crafted_folder(tmp_path / "spool", {"name": "mlflow", "tracking_uri": down, "run_id": "b" * 32,
                                         "created_run": True}, name="mlflow")
    mon = sw.Monitor(sinks=("jsonl", "memory"), log_dir=str(tmp_path / "runs"), spool_dir=str(tmp_path / "spool"),
                     warn=False)
    for step in range(100):
        mon.log(step, {LOSS: float(step)})
    # the writer thread is not busy with the leftover: this run's records are out long before one refused request to
    # it would have ended (MLflow retries it with backoff for a minute and more); 10 s, not 1, for a loaded machine
    assert mon.flush(timeout=10.0)
    memory = mon.sink("memory")
    mon.close()
    assert [s for s, _ in read_jsonl(tmp_path / "runs" / "spherewatch.jsonl")["scalars"][LOSS]] == list(range(100))
    assert [s for s, _ in memory.history(LOSS)] == list(range(100))
