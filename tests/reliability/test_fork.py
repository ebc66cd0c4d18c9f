"""Issue 22 row 10: ``os.fork()`` while records are queued. The child exits at once without touching its parent's
queue or spool folder; the parent delivers every point once, and the next run replays nothing twice.

A real fork in a subprocess: the parent's Monitor writes JSONL and a slow local sink (so records are queued at the
fork); the child exits normally (``sys.exit``, atexit hooks run).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from spherewatch.sinks import read_jsonl

pytestmark = pytest.mark.timeout(180)

_RUN = textwrap.dedent("""
    import json, os, sys, time
    import spherewatch as sw
    from spherewatch.sinks import MemorySink

    class Slow(MemorySink):
        name = "slow"
        def log_scalars(self, step, scalars, *, wall_time=None):
            time.sleep(0.02)
            super().log_scalars(step, scalars)

    out = sys.argv[1]
    mon = sw.Monitor(sinks=("jsonl", Slow()), jsonl_path=os.path.join(out, "run.jsonl"),
                     spool_dir=os.path.join(out, "spool"), log_dir=out, warn=False)
    for step in range(100):
        mon.log(step, {"train/loss": float(step)})
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit: atexit hooks run in the child
    os.waitpid(pid, 0)
    child_s = time.monotonic() - started
    mon.close()
    print(json.dumps({"child_s": child_s}), flush=True)
""")

_NEXT = textwrap.dedent("""
    import os, sys
    import spherewatch as sw
    out = sys.argv[1]
    mon = sw.Monitor(sinks=("jsonl",), jsonl_path=os.path.join(out, "run.jsonl"), spool_dir=os.path.join(out, "spool"),
                     log_dir=out, warn=False)
    mon.log(100, {"train/loss": 100.0})
    mon.close()
""")


def test_a_forked_child_exits_at_once_and_no_point_is_duplicated(tmp_path):
    res = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    child_s = json.loads(res.stdout.strip().splitlines()[-1])["child_s"]
    assert child_s < 1.0, child_s
    assert "close_timeout" not in res.stderr  # the child dumped nothing into the parent's spool
    res = subprocess.run([sys.executable, "-c", _NEXT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    steps = [s for s, _ in read_jsonl(tmp_path / "run.jsonl")["scalars"]["train/loss"]]
    assert steps == list(range(101))  # every point once: the next run replayed no duplicate
    assert not list((tmp_path / "spool").glob("*/*.spool.jsonl"))
