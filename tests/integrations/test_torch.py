"""spherewatch.integrations.torch: module paths, torch.compile, wrappers, gradient accumulation."""
from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import spherewatch as sw
from spherewatch.integrations import torch as sw_torch
from spherewatch.integrations.torch import resolve_module, unwrap_model, watch_path


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12))
        self.head = nn.Linear(12, 1)

    def forward(self, x):
        return self.head(self.encoder(x))


def memory_monitor(**kw):
    return sw.Monitor(sinks=("memory",), warn=False, **kw)


def test_docstring_examples_run():
    result = doctest.testmod(sw_torch, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_resolve_module_finds_nested_and_indexed_paths():
    net = Net()
    assert resolve_module(net, "encoder.2") is net.encoder[2]
    assert resolve_module(net, "") is net


def test_unknown_path_error_lists_close_matches():
    with pytest.raises(ValueError) as err:
        resolve_module(Net(), "encoder.3")
    msg = str(err.value)
    assert "'encoder.3'" in msg and "'encoder' has no submodule '3'" in msg
    assert "'encoder.2'" in msg  # a close match
    with pytest.raises(ValueError, match="Top-level modules: 'encoder', 'head'"):
        resolve_module(Net(), "zzz")


def test_resolve_module_looks_through_compile_and_data_parallel():
    net = Net()
    compiled = torch.compile(net, backend="eager")
    assert resolve_module(compiled, "encoder.0") is net.encoder[0]
    assert unwrap_model(nn.DataParallel(compiled)) is net
    net.encoder = torch.compile(net.encoder, backend="eager")  # only a submodule compiled
    target = resolve_module(net, "encoder.0")
    assert isinstance(target, nn.Linear) and target is net.encoder._orig_mod[0]
    assert "'encoder.0'" in str(pytest.raises(ValueError, resolve_module, net, "encoder.9").value)


def test_watch_path_captures_through_torch_compile():
    torch.manual_seed(0)
    net = Net()
    compiled = torch.compile(net, backend="eager")
    mon = memory_monitor(every_n_steps=2)
    watch_path(mon, compiled, "encoder", tap="enc")  # before the first compiled call
    x = torch.randn(32, 8)
    for step in range(6):
        compiled(x).sum().backward()
        mon.step(step)
    mon.close()
    assert [s for s, _ in mon.sink("memory").scalars] == [0, 2, 4]
    assert mon.captures["enc"] == 3  # only on capture steps
    assert mon.last_values["spherewatch/enc/effective_rank"] > 1.0


def test_gradient_accumulation_takes_one_batch_per_optimizer_step():
    net = Net()
    mon = memory_monitor(every_n_steps=1)
    watch_path(mon, net, "encoder")
    for step in range(3):
        for _ in range(4):  # micro-batches
            net(torch.randn(8, 8)).sum().backward()
        mon.step(step)
    assert mon.captures["embeddings"] == 3


def test_train_only_ignores_eval_passes_between_steps():
    net = Net()
    mon = memory_monitor(every_n_steps=1)
    watch_path(mon, net, "encoder", train_only=True)
    constant = torch.ones(16, 8)  # a collapsed batch: mean cosine 1 if it were taken
    for step in range(3):
        net.eval()
        with torch.no_grad():
            net(constant)
        net.train()
        net(torch.randn(16, 8)).sum().backward()
        mon.step(step)
    history = mon.sink("memory").history("spherewatch/mean_cosine")
    assert len(history) == 3 and all(v < 0.99 for _, v in history)


def test_watch_path_rejects_a_non_monitor():
    with pytest.raises(TypeError, match="spherewatch.Monitor"):
        watch_path(object(), Net(), "encoder")
