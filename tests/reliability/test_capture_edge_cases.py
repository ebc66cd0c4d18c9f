"""Fault row 7: capture edge cases at the loop level that tests/engine/test_monitor.py does not cover.

A watched module whose hook fires several times per optimizer step (gradient accumulation, activation
checkpointing that re-runs the forward during backward, both together), or a module compiled in place with its
hook: exactly one capture per sampling step, and it is the first micro-batch's forward output.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import spherewatch.metrics as M

EVERY = 3
STEPS = range(12)
MICRO_BATCHES = 3
U = "spherewatch/enc/uniformity"


def _encoder():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def _train(mon, forward, params, watched, seed=0):
    """Gradient accumulation over MICRO_BATCHES. Returns the watched module's output in the first forward of every
    step, and how many times that module ran forward (recomputations included)."""
    outputs = []
    watched.register_forward_hook(lambda module, args, out: outputs.append(out.detach().clone()))
    opt = torch.optim.SGD(params, lr=0.05)
    g = torch.Generator().manual_seed(seed)
    first = {}
    for s in STEPS:
        for micro in range(MICRO_BATCHES):
            seen = len(outputs)
            z = forward(torch.randn(32, 16, generator=g))
            if micro == 0:
                first[s] = outputs[seen]
            (z.pow(2).mean() / MICRO_BATCHES).backward()
        opt.step()
        opt.zero_grad()
        mon.step(s)
    return first, len(outputs)


def _assert_one_capture_per_sampling_step(mon, first):
    sampling = [s for s in STEPS if s % EVERY == 0]
    assert mon.captures["enc"] == len(sampling)
    history = mon.sink("memory").history(U)
    assert [s for s, _ in history] == sampling
    assert [v for _, v in history] == pytest.approx([M.uniformity(first[s]).item() for s in sampling], rel=1e-5)
    assert mon.faults == {}


@pytest.mark.parametrize("mode", ["plain", "checkpoint, non-reentrant", "checkpoint, reentrant"])
def test_gradient_accumulation_and_checkpointing_capture_the_first_micro_batch_once(mode, make_monitor):
    enc = _encoder()
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY)
    mon.watch(enc[0], tap="enc")  # an inner layer: checkpointing re-runs its forward (and hooks) during backward
    reentrant = mode.endswith(", reentrant")

    def forward(x):
        if mode == "plain":
            return enc(x)
        return checkpoint(enc, x.requires_grad_(reentrant), use_reentrant=reentrant)

    first, forwards = _train(mon, forward, enc.parameters(), enc[0])
    calls = len(STEPS) * MICRO_BATCHES
    assert forwards == calls * (1 if mode == "plain" else 2)
    _assert_one_capture_per_sampling_step(mon, first)


def test_module_compiled_in_place_with_gradient_accumulation_captures_once_per_sampling_step(make_monitor):
    torch._dynamo.reset()
    enc = _encoder()
    mon = make_monitor(sinks=("memory",), every_n_steps=EVERY)
    mon.watch(enc, tap="enc")  # before compiling: hooks added afterwards never fire
    enc.compile(backend="aot_eager")  # nn.Module.compile: the module itself (and its hooks) is compiled
    first, _ = _train(mon, enc, enc.parameters(), enc)
    _assert_one_capture_per_sampling_step(mon, first)
    torch._dynamo.reset()
