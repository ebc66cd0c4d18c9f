"""Run the tiny training loop with a JSONL sink while writes past a file-size limit fail (EFBIG), then lift it.

Usage: ``python _fsize_worker.py OUT_DIR``. A real OS-level fault that works as root: ``RLIMIT_FSIZE`` with
``SIGXFSZ`` ignored makes every write that would grow a file past the limit fail with ``OSError(EFBIG)``, after
writing what fits. Phases: steps 0-9 normal; steps 10-29 with the limit at the JSONL file's size + 100 bytes (the
next record is cut after 100 bytes; the spool file of the backlog hits the same limit a few records later); steps
30-39 with the limit lifted. Writes ``OUT_DIR/summary.json`` for the test to check.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys

import torch
from _harness import TinyTrainer

import spherewatch as sw

EVERY = 2
NAN_STEP = 16  # inside the fault: its alert must reach the file too


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def main(out: str) -> None:
    torch.set_num_threads(1)
    logs = Collect()
    logging.getLogger("spherewatch").addHandler(logs)
    logging.getLogger("spherewatch").setLevel(logging.DEBUG)
    fired = []
    jsonl = os.path.join(out, "run.jsonl")
    spool_dir = os.path.join(out, "spool")
    mon = sw.Monitor(sinks=("jsonl",), jsonl_path=jsonl, spool_dir=spool_dir, every_n_steps=EVERY, warn=False,
                     sample_first_step=False, on_alert=fired.append)

    def poison(step, z1, z2):
        if step == NAN_STEP:
            z1 = z1.detach().clone()
            z1[0] = float("nan")
        return z1, z2

    trainer = TinyTrainer()
    trainer.run(mon, range(0, 10), embeddings=poison)

    mon.flush()  # the file's size is read only once the writer thread wrote steps 0-9 (it could still be writing)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = os.path.getsize(jsonl) + 100
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the default action kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        trainer.run(mon, range(10, 30), embeddings=poison)
        mon.flush()  # every record of the fault's steps reached the sink (and its spool) before the limit is lifted
        spool_during = {name: os.path.getsize(os.path.join(spool_dir, name)) for name in os.listdir(spool_dir)}
        jsonl_during = os.path.getsize(jsonl)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    trainer.run(mon, range(30, 40), embeddings=poison)
    mon.close()

    summary = {
        "steps_done": trainer.steps_done,
        "max_step_seconds": max(trainer.step_seconds),
        "limit": limit,
        "jsonl_size_during_fault": jsonl_during,
        "spool_during_fault": spool_during,
        "spool_after_close": sorted(os.listdir(spool_dir)) if os.path.isdir(spool_dir) else [],
        "faults": dict(mon.faults),
        "fired": [{"rule": a.rule, "key": a.key, "step": a.step, "message": a.message} for a in fired],
        "fault_logs": [r.getMessage() for r in logs.records
                       if r.name == "spherewatch" and " failed (" in r.getMessage()],
        "warnings": [r.getMessage() for r in logs.records if r.levelno >= logging.WARNING],
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1])
