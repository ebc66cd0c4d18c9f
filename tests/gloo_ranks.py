"""Two (or more) real ``torch.distributed`` gloo processes on 127.0.0.1 for the tests under tests/distributed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Sequence

from mlflow_server import free_port


def run_ranks(worker: Path, argv: Callable[[int, str], Sequence[str]], out: Path, *, timeout: float,
              world: int = 2, label: str = "ranks") -> List[str]:
    """Start ``python worker *argv(rank, port)`` on every rank (cwd ``out``, one free port, gloo over loopback), wait
    up to ``timeout`` s for each, and fail naming the exit codes with each rank's last 3,000 characters of output
    unless every rank exits 0; returns the outputs."""
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    env.pop("RANK", None)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(worker), *argv(r, port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=env, cwd=str(out)) for r in range(world)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            p.kill()
            logs.append(p.communicate()[0].decode(errors="replace"))
    codes = [p.returncode for p in procs]
    assert codes == [0] * world, f"{label}: ranks exited {codes}\n" + "\n".join(log[-3000:] for log in logs)
    return logs
