"""How long can a failing destination hold a training step? Worst single step with each fault vs the same loop
without it, and points recorded vs delivered once the fault is over.

Run: ``.venv/bin/python benchmarks/stall.py`` (about 8 minutes: a real ``mlflow server`` needs ~30 s per start).
``--freeze 60 --restart 30 --hang 120 --disk 10`` are the fault durations (seconds); shorten them while developing,
``--only frozen,webhook`` runs a subset.

Faults (each on its own Monitor and tracking run; MLflow's HTTP settings are left at their defaults):

- ``unreachable``: ``sinks=("mlflow",)`` pointing at a port with no server; the server is started ``--late`` s later;
- ``frozen``: the server is SIGSTOPped for ``--freeze`` s, then SIGCONTed;
- ``restart``: the server is killed, and started again on the same port and store ``--restart`` s later;
- ``tb-full`` / ``tb-readonly``: the TensorBoard log folder is on a tmpfs that is filled up / remounted read-only for
  ``--disk`` s (needs root for ``mount``; otherwise the folder is replaced by a file, the same error path);
- ``webhook``: every webhook request hangs for ``--hang`` s (the channel's timeout is 5 s; it retries).
- ``startup``: no fault: the first ``--startup`` s of a fresh process with ``sinks=("jsonl", "mlflow")`` on a new
  SQLite store (the sink opens: ``import mlflow``, the store's migrations) next to one with ``sinks=("jsonl",)``;
  every step counts, from the first (issue 22 row 9: steps of 0.5-1.6 s there before the writer yielded during
  opening). Its own table.

The loop: an MLP encoder (64 -> 256 -> 64) on two noisy views of 128 rows, an InfoNCE loss, SGD; the monitor
evaluates every ``--every`` steps (``standard`` preset). One torch thread. A step's time is the whole iteration
(forward, backward, optimizer, ``observe`` and ``step``), worst over the fault and its recovery, after 3 s of
warm-up (first-call costs: lazy imports, the first evaluation); ``monitor`` is the time inside ``observe`` + ``step`` alone,
which is what the targets are about (worst ``<= 50 ms`` on an evaluation step, ``<= 1 ms`` off-sample) and far less
noisy on a shared machine than a difference of step times. Delivered points are read back from the destination
(MLflow metric histories, TensorBoard event files, the endpoint's log) after ``close()``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torch.nn as nn
import torch.nn.functional as F

import spherewatch as sw

KEY = "spherewatch/uniformity"


# --------------------------------------------------------------------------------------------------- training loop
class Loop:
    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01)
        self.step = 0
        self.eval_worst = self.off_worst = 0.0
        self.mon_eval_worst = self.mon_off_worst = 0.0
        self.recorded = 0
        self.evaluations = 0
        self.nan_every = 0
        self.mon_off: list = []

    def warmed_up(self) -> None:
        """Forget the worst times so far (first-call costs: lazy imports, opening the sinks, the first evaluation)."""
        self.eval_worst = self.off_worst = self.mon_eval_worst = self.mon_off_worst = 0.0
        self.mon_off = []

    def off_p999(self) -> float:
        """99.9th percentile of the monitor's time on off-sample steps (robust to a rare preemption by the OS)."""
        if not self.mon_off:
            return 0.0
        xs = sorted(self.mon_off)
        return xs[min(len(xs) - 1, int(0.999 * len(xs)))]

    def run(self, mon, seconds: float, until=None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until()):
            t0 = time.perf_counter()
            x = torch.randn(128, 64)
            z1 = self.net(x + 0.1 * torch.randn_like(x))
            z2 = self.net(x + 0.1 * torch.randn_like(x))
            loss = F.cross_entropy(F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.5, torch.arange(128))
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            seen = z1.detach()
            if self.nan_every and self.evaluations % self.nan_every == 1:
                seen = seen.clone()
                seen[0] = float("nan")
            m0 = time.perf_counter()
            mon.observe(seen, z2.detach())
            mon.step(self.step)
            m1 = time.perf_counter()
            total, inside = m1 - t0, m1 - m0
            if mon.last_evaluation_step == self.step:
                self.evaluations += 1
                self.recorded += len(mon.last_values)
                self.eval_worst = max(self.eval_worst, total)
                self.mon_eval_worst = max(self.mon_eval_worst, inside)
            else:
                self.off_worst = max(self.off_worst, total)
                self.mon_off_worst = max(self.mon_off_worst, inside)
                self.mon_off.append(inside)
            self.step += 1


# ------------------------------------------------------------------------------------------------- mlflow server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, workdir: str, template_db: str) -> None:
        self.workdir = workdir
        self.db = os.path.join(workdir, "server.db")
        shutil.copyfile(template_db, self.db)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(os.path.join(self.workdir, "server.log"), "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.db}",
                 "--artifacts-destination", os.path.join(self.workdir, "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def signal(self, sig) -> None:
        os.killpg(self.proc.pid, sig)


def mlflow_delivered(uri: str, run_id: str) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    total = 0
    for key in run.data.metrics:
        if key.endswith("/alerts/count"):
            continue
        total += len({m.step for m in client.get_metric_history(run_id, key)})
    return total


# ------------------------------------------------------------------------------------------------ webhook endpoint
class HangingEndpoint:
    def __init__(self) -> None:
        self.hang_until = 0.0
        self.ok = set()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                wait = endpoint.hang_until - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    endpoint.ok.add(self.headers.get("X-Spherewatch-Delivery-Id"))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/B0/bench"


# ------------------------------------------------------------------------------------------------------ tmpfs faults
@contextlib.contextmanager
def tmpfs(path: str):
    os.makedirs(path, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", path], capture_output=True).returncode == 0
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", "-l", path], capture_output=True)


def tb_delivered(log_dir: str) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = 0
    for root, _, files in os.walk(log_dir):
        if not any(f.startswith("events.") for f in files):
            continue
        ea = EventAccumulator(root, size_guidance={"scalars": 0})
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            total += len({e.step for e in ea.Scalars(tag)})
    return total


# ---------------------------------------------------------------------------------------------------------- faults
def monitor(tmp: str, name: str, args, **kw):
    kw.setdefault("log_dir", os.path.join(tmp, name))
    return sw.Monitor(every_n_steps=args.every, warn=False, sample_first_step=False,
                      spool_dir=os.path.join(tmp, "spool", name), close_timeout=600, **kw)


class NoMonitor:
    """The same calls as a Monitor, doing nothing: the noise floor of timing ``observe`` + ``step`` on this machine."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.last_evaluation_step = None
        self.last_values: dict = {}

    def observe(self, *args, **kwargs) -> None:
        pass

    def step(self, step: int) -> list:
        if step % self.every == 0:
            self.last_evaluation_step = step
        return []


def run_fault(name: str, args, tmp: str, template_db: str):
    loop = Loop()
    note = ""
    if name == "bare":
        loop.run(NoMonitor(args.every), 3)
        loop.warmed_up()
        loop.run(NoMonitor(args.every), args.baseline)
        return loop, 0, "no monitor: no-op observe/step (timing noise floor)"
    if name in ("unreachable", "frozen", "restart", "mlflow-baseline"):
        server = Server(tempfile.mkdtemp(dir=tmp), template_db)
        if name != "unreachable":
            server.start()
        mon = monitor(tmp, name, args, sinks=("mlflow",), tracking_uri=server.uri, experiment_name="stall",
                      run_name=name)
        try:
            loop.run(mon, 3)
            loop.warmed_up()
            if name == "unreachable":
                started = threading.Thread(target=lambda: (time.sleep(args.late), server.start()), daemon=True)
                started.start()
                loop.run(mon, args.late + 120, until=lambda: not started.is_alive())
                note = f"server up after {args.late:.0f} s + its start"
            elif name == "frozen":
                server.signal(signal.SIGSTOP)
                loop.run(mon, args.freeze)
                server.signal(signal.SIGCONT)
                note = f"SIGSTOP {args.freeze:.0f} s"
            elif name == "restart":
                server.stop()
                restarted = threading.Thread(target=lambda: (time.sleep(args.restart), server.start()), daemon=True)
                restarted.start()
                loop.run(mon, args.restart + 120, until=lambda: not restarted.is_alive())
                note = f"killed, restarted {args.restart:.0f} s later"
            else:
                loop.run(mon, args.baseline)
            loop.run(mon, 5)
            mon.close()
            delivered = mlflow_delivered(server.uri, mon.sink("mlflow").run_id)
        finally:
            server.stop()
        return loop, delivered, note
    if name in ("tb-full", "tb-readonly", "tb-baseline"):
        mnt = os.path.join(tmp, f"mnt-{name}")
        with tmpfs(mnt) as mounted:
            log_dir = os.path.join(mnt, "tb")
            mon = monitor(tmp, name, args, sinks=("tensorboard",), log_dir=log_dir)
            loop.run(mon, 3)
            loop.warmed_up()
            filler = os.path.join(mnt, "filler")
            if name == "tb-full":
                if mounted:
                    with open(filler, "wb") as f, contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * (1 << 20))
                            f.flush()
                    note = f"tmpfs full for {args.disk:.0f} s"
                else:
                    os.rename(log_dir, log_dir + "-moved")
                    open(log_dir, "w").close()
                    note = f"log folder replaced by a file for {args.disk:.0f} s (no mount)"
                loop.run(mon, args.disk)
                if mounted:
                    os.remove(filler)
                else:
                    os.remove(log_dir)
                    os.rename(log_dir + "-moved", log_dir)
            elif name == "tb-readonly":
                if mounted:
                    subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
                    note = f"tmpfs read-only for {args.disk:.0f} s"
                    loop.run(mon, args.disk)
                    subprocess.run(["mount", "-o", "remount,rw", mnt], check=True)
                else:
                    note = "skipped (no mount)"
            else:
                loop.run(mon, args.baseline)
            loop.run(mon, 5)
            mon.close()
            delivered = tb_delivered(log_dir)
        return loop, delivered, note
    if name in ("webhook", "webhook-baseline"):
        endpoint = HangingEndpoint()
        mon = monitor(tmp, name, args, sinks=("memory",), webhook_url=endpoint.url)
        loop.nan_every = 200  # a non-finite batch every 200th evaluation: alerts keep firing (fewer than the queue holds)
        loop.run(mon, 3)
        loop.warmed_up()
        if name == "webhook":
            endpoint.hang_until = time.monotonic() + args.hang
            loop.run(mon, args.hang)
            note = f"every request hangs for {args.hang:.0f} s"
        else:
            loop.run(mon, args.baseline)
        loop.nan_every = 0  # the fault is over: no new alerts, let the queued ones arrive
        fired = len(mon.alerts)
        channel = next(c.inner for c in mon._dispatcher.channels if type(getattr(c, "inner", c)).__name__ ==
                       "WebhookChannel")
        loop.run(mon, 90, until=lambda: len(endpoint.ok) >= fired - channel.dropped)
        mon.close()
        loop.recorded = fired  # for this row: alerts fired vs alerts posted
        return loop, len(endpoint.ok), note + f" (alerts; {channel.dropped} dropped by the bounded queue)"
    raise ValueError(name)


FAULTS = ("bare", "mlflow-baseline", "unreachable", "frozen", "restart", "tb-baseline", "tb-full", "tb-readonly",
          "webhook-baseline", "webhook", "startup")

_STARTUP = """
import json, sys, tempfile, time
import torch, torch.nn as nn, torch.nn.functional as F
torch.set_num_threads(1)
import spherewatch as sw
d = tempfile.mkdtemp()
sinks = tuple(sys.argv[1].split(","))
kw = {"tracking_uri": f"sqlite:///{d}/mlflow.db"} if "mlflow" in sinks else {}
mon = sw.Monitor(sinks=sinks, log_dir=d, every_n_steps=int(sys.argv[3]), warn=False, **kw)
net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 64))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
times, step, t_end = [], 0, time.perf_counter() + float(sys.argv[2])
while time.perf_counter() < t_end:
    t0 = time.perf_counter()
    x = torch.randn(128, 64)
    z1, z2 = net(x + 0.1 * torch.randn_like(x)), net(x + 0.1 * torch.randn_like(x))
    loss = F.cross_entropy(F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.5, torch.arange(128))
    opt.zero_grad(); loss.backward(); opt.step()
    mon.observe(z1.detach(), z2.detach()); mon.step(step)
    times.append(time.perf_counter() - t0); step += 1
mon.close()
print(json.dumps({"steps": len(times), "worst_ms": 1e3 * max(times), "over_50ms": sum(t > 0.05 for t in times)}))
"""


def startup(args) -> None:
    """The ``startup`` row: worst step from the first, with and without the MLflow sink (fresh processes)."""
    print("| startup (first %.0f s, every step) | steps | worst step (ms) | steps > 50 ms |" % args.startup)
    print("|---|---:|---:|---:|")
    for sinks in ("jsonl", "jsonl,mlflow"):
        out = subprocess.run([sys.executable, "-c", _STARTUP, sinks, str(args.startup), str(args.every)],
                             capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {sinks} | {row['steps']} | {row['worst_ms']:.1f} | {row['over_50ms']} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--freeze", type=float, default=60.0)
    p.add_argument("--restart", type=float, default=30.0)
    p.add_argument("--hang", type=float, default=120.0)
    p.add_argument("--disk", type=float, default=10.0)
    p.add_argument("--late", type=float, default=10.0)
    p.add_argument("--baseline", type=float, default=20.0)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--startup", type=float, default=5.0)
    p.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(FAULTS))
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwind: stop servers, unmount tmpfs folders
    torch.set_num_threads(1)
    only = [f for f in args.only.split(",") if f] or list(FAULTS)
    if "startup" in only:
        startup(args)
        only.remove("startup")
        if not only:
            return
    with tempfile.TemporaryDirectory() as tmp:
        template_db = os.path.join(tmp, "template.db")
        if any(f in ("mlflow-baseline", "unreachable", "frozen", "restart") for f in only):
            from mlflow import MlflowClient

            MlflowClient(f"sqlite:///{template_db}").search_experiments()
        rows = []
        for name in only:
            loop, delivered, note = run_fault(name, args, tmp, template_db)
            rows.append((name, loop, delivered, note))
            print(json.dumps({"fault": name, "steps": loop.step, "evaluations": loop.evaluations,
                              "eval_step_worst_ms": round(loop.eval_worst * 1e3, 2),
                              "off_step_worst_ms": round(loop.off_worst * 1e3, 2),
                              "monitor_eval_worst_ms": round(loop.mon_eval_worst * 1e3, 2),
                              "monitor_off_worst_ms": round(loop.mon_off_worst * 1e3, 3),
                              "monitor_off_p999_ms": round(loop.off_p999() * 1e3, 3),
                              "recorded": loop.recorded, "delivered": delivered, "note": note}), flush=True)
    print()
    print("| fault | steps | worst eval step (ms) | worst off-sample step (ms) | monitor, eval worst (ms) "
          "| monitor, off worst (ms) | monitor, off p99.9 (ms) | recorded | delivered | |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, loop, delivered, note in rows:
        print(f"| {name} | {loop.step} | {loop.eval_worst * 1e3:.1f} | {loop.off_worst * 1e3:.1f} | "
              f"{loop.mon_eval_worst * 1e3:.1f} | {loop.mon_off_worst * 1e3:.2f} | {loop.off_p999() * 1e3:.3f} | "
              f"{loop.recorded} | {delivered} | "
              f"{note} |")


if __name__ == "__main__":
    main()
