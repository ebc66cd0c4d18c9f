"""One rank of a DDP job whose ranks disagree about the Monitor (run by test_ddp_mismatch.py; not collected).

Usage: ``python _mismatch_worker.py SCENARIO RANK WORLD_SIZE PORT OUT_DIR``. A training loop with one gradient-sized
all_reduce per step (what DDP does), 40 steps, a Monitor as the scenario says:

* ``rank0_only``: only rank 0 creates a Monitor;
* ``schedule``: rank 0 evaluates every 5 steps, rank 1 every 10;
* ``off_by_one``: rank 1 passes ``step + 1`` as the global step.

Writes ``OUT_DIR/<SCENARIO>-rank<RANK>.json``: the faults, the spherewatch log lines and the steps reached.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys

import torch
import torch.distributed as dist

import spherewatch as sw
from spherewatch import distributed as sw_dist

scenario, rank, world, port, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
sw_dist.HANDSHAKE_TIMEOUT_S = 5.0  # the test's stand-in for the default 120 s
lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("spherewatch").addHandler(handler)

# the collective timeout is the test's hang detector: a mismatch that is not caught ends the job with an error here
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
mon = None
if scenario != "rank0_only" or rank == 0:
    every = 10 if (scenario == "schedule" and rank == 1) else 5
    mon = sw.Monitor(every_n_steps=every, sinks=("jsonl",), warn=False, preset="cheap",
                     log_dir=os.path.join(out, f"{scenario}-rank{rank}"))
g = torch.Generator().manual_seed(rank)
reached = 0
for step in range(40):
    grad = torch.randn(256, generator=g)
    dist.all_reduce(grad)  # the gradient all-reduce of DDP, every step on every rank
    if mon is not None:
        mon.observe(torch.randn(32, 8, generator=g))
        mon.step(step + 1 if (scenario == "off_by_one" and rank == 1) else step)
    reached = step
evaluations = 0 if mon is None else len(mon.last_values)  # values of the latest evaluation (sinks: rank 0 only)
faults = {} if mon is None else dict(mon.faults)
if mon is not None:
    mon.close()
dist.destroy_process_group()
with open(os.path.join(out, f"{scenario}-rank{rank}.json"), "w") as f:
    json.dump({"reached": reached, "faults": faults, "lines": lines, "evaluations": evaluations}, f)
