"""A real ``mlflow server`` on 127.0.0.1 for the tests that need one (tests/sinks, tests/reliability)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HEALTH_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` over a SQLite store in its own process group; stop() and start() again on the same port."""

    def __init__(self, workdir, template_db) -> None:
        self.workdir = workdir
        self.db = workdir / "server.db"
        shutil.copyfile(template_db, self.db)  # already migrated: no schema work at start
        self.artifacts = workdir / "served-artifacts"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.proc = None

    def start(self) -> None:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job runner: starts ~2x faster
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
            "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        pytest.fail(f"mlflow server did not answer /health within {HEALTH_TIMEOUT_S:.0f} s:\n{self._log_tail()}")

    def stop(self) -> None:
        """SIGTERM the whole process group (uvicorn worker included), SIGKILL what is left."""
        if self.proc is None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # an orphaned worker of the group, if any
        except (ProcessLookupError, PermissionError):
            pass
        self.proc = None

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"
