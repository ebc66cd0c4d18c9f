"""Issue 22 row 8: a slow remote sink never takes the local sinks' points with it.

The training runs with a JSONL sink and an MLflow sink pointed at a frozen tracking server (a socket on 127.0.0.1
that accepts connections and never answers); it is SIGKILLed after N evaluations. The JSONL file holds every
evaluation but possibly the last one (durable within one evaluation interval): only the remote sink's unsent points
are lost.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from reliability._harness import scalar_steps

from spherewatch.sinks import read_jsonl

pytestmark = pytest.mark.timeout(240)
U = "spherewatch/uniformity"
STEPS = 40

_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from reliability._harness import TinyTrainer
    import spherewatch as sw
    mon = sw.Monitor(sinks=("jsonl", "mlflow"), tracking_uri=sys.argv[2], jsonl_path=sys.argv[3],
                     spool_dir=sys.argv[4], every_n_steps=1, warn=False, sample_first_step=False)
    trainer = TinyTrainer()
    for step in range(int(sys.argv[5])):
        trainer.run(mon, [step])
        time.sleep(0.05)  # the evaluation interval
    print("trained", flush=True)
    time.sleep(600)  # SIGKILLed here
""")


class FrozenServer:
    """Accepts every connection on 127.0.0.1 and never answers (a tracking server that froze)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.conns = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.stopped = True
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_sigkill_with_a_frozen_mlflow_server_loses_no_jsonl_point_but_the_last(tmp_path):
    server = FrozenServer()
    jsonl = tmp_path / "run.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_HTTP_REQUEST_TIMEOUT="300")
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(Path(__file__).parents[1]), server.uri, str(jsonl),
                             str(tmp_path / "spool"), str(STEPS)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "trained"
        deadline = time.monotonic() + 120
        while not server.conns and time.monotonic() < deadline:  # the MLflow sink opens (imports) meanwhile
            time.sleep(0.1)
        assert server.conns  # the MLflow sink is stuck on the frozen server
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
    steps = scalar_steps(read_jsonl(jsonl)["scalars"][U])
    assert steps in (list(range(STEPS)), list(range(STEPS - 1))), steps

