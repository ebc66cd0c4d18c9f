"""Fault row 10: a long run does not leak. 20,000 training steps evaluated every 10 steps (2,000 evaluations, standard
preset) with a JSONL sink: resident memory, open file descriptors and threads stay flat after a warm-up.

The loop is the smallest real one (a linear encoder, two views, backward, SGD; embeddings that require grad go to
``observe``), so the 20,000 steps take seconds: a monitor that kept a reference to a batch, its autograd graph, a
file or a thread per evaluation would show here.
"""
from __future__ import annotations

import gc
import os
import threading

import pytest
import torch
import torch.nn as nn

from spherewatch.sinks import read_jsonl

STEPS = 20_000
WARMUP = 2_000
EVERY = 10

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_twenty_thousand_steps_keep_memory_files_and_threads_flat(make_monitor, tmp_path):
    path = tmp_path / "long.jsonl"
    mon = make_monitor(sinks=("jsonl",), jsonl_path=str(path), every_n_steps=EVERY)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = nn.Linear(16, 8)
    opt = torch.optim.SGD(encoder.parameters(), lr=0.01)
    batches = torch.randn(64, 2, 16, 16, generator=g)  # 64 batches of two views, cycled

    def train(steps):
        for s in steps:
            x1, x2 = batches[s % len(batches)]
            z1, z2 = encoder(x1), encoder(x2)
            mon.observe(z1, z2)
            loss = (z1 - z2).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step(s)

    train(range(WARMUP))  # sinks opened, lazy imports done, allocator warm
    gc.collect()
    rss, fds, threads = _rss_mb(), _open_fds(), threading.active_count()
    train(range(WARMUP, STEPS))
    gc.collect()
    grown = _rss_mb() - rss
    assert grown < 50.0, f"resident memory grew by {grown:.1f} MB over {STEPS - WARMUP} steps"
    assert _open_fds() <= fds
    assert threading.active_count() <= threads
    assert mon.faults == {}
    mon.close()
    history = read_jsonl(path)["scalars"]["spherewatch/uniformity"]
    assert [s for s, _ in history] == list(range(0, STEPS, EVERY))  # every evaluation written, once
