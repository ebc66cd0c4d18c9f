"""A forked child (a DataLoader worker, a subprocess made with fork) neither sends its parent's queued alerts nor
waits at exit for the parent's sending thread."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    from webhook_server import WebhookEndpoint
    from spherewatch.alerts import Alert, WebhookChannel

    hook = WebhookEndpoint("T/B/secret")
    hook.hang_all = True  # the parent's thread is stuck on its first alert; the rest stay queued
    ch = WebhookChannel(hook.url, timeout=30.0, exit_timeout=20.0)
    for i in range(5):
        ch.send(Alert("rank_collapse", "spherewatch/effective_rank", 3.0, i, "warning", f"fell ({i})"))
    assert hook.wait_for(1)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # a normal exit: the atexit hooks run
    _, status = os.waitpid(pid, 0)
    took = time.monotonic() - start
    seen = len(hook.requests)
    hook.release.set()
    ch.close(timeout=5.0)
    print(json.dumps({"took": took, "code": os.waitstatus_to_exitcode(status), "requests_after_fork": seen}))
    os._exit(0)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_exits_at_once_and_sends_nothing():
    tests_dir = str(Path(__file__).resolve().parents[1])
    res = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    assert out["took"] < 10.0, out  # before: the child waited exit_timeout (20 s) for a thread it does not have
    assert out["requests_after_fork"] == 1  # the child sent none of the parent's queued alerts
