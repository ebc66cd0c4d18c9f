"""``watch()`` and ``observe()`` inside ``torch.compile``: no crash under ``fullgraph=True``, no graph break and
no recompile in the default mode (the hook body is a dict store that dynamo traces; rows are taken at step())."""
import pytest
import torch
import torch.nn as nn

import spherewatch as sw

KEY = "spherewatch/h/uniformity"


def _train(forward, params, mon, steps=12):
    opt = torch.optim.SGD(params, lr=0.05)
    g = torch.Generator().manual_seed(0)
    for s in range(steps):
        loss = forward(torch.randn(32, 8, generator=g)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(s)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_watch_under_fullgraph_compile_trains_and_captures_every_sampling_step():
    model = _model()
    mon = sw.Monitor(every_n_steps=4, sinks=("memory",), sample_first_step=False)
    mon.watch(model[0], tap="h")  # before compiling
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _train(compiled, model.parameters(), mon)
    assert mon.faults == {}
    assert mon.captures["h"] == 3
    assert [s for s, _ in mon.sink("memory").history(KEY)] == [0, 4, 8]
    mon.close()


def test_observe_inside_a_fullgraph_compiled_function_is_taken_at_step():
    model = _model()
    mon = sw.Monitor(every_n_steps=4, sinks=("memory",), sample_first_step=False)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def forward(x):
        h = model[0](x)
        mon.observe(h, tap="h")
        return model[2](model[1](h))

    _train(forward, model.parameters(), mon)
    assert [s for s, _ in mon.sink("memory").history(KEY)] == [0, 4, 8]
    mon.close()


def test_watch_adds_no_graph_break_and_no_recompile_in_default_mode():
    from torch._dynamo.utils import counters

    counters.clear()
    model = _model()
    mon = sw.Monitor(every_n_steps=4, sinks=("memory",), sample_first_step=False)
    mon.watch(model[0], tap="h")
    compiled = torch.compile(model, backend="aot_eager")
    _train(compiled, model.parameters(), mon)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 1 and counters["stats"]["calls_captured"] == 4  # the whole model
    assert counters["frames"]["total"] == 1  # arming and disarming the hook does not recompile
    assert mon.captures["h"] == 3
    mon.close()


def test_values_match_eager_capture():
    """Deferred (compiled) capture sees the same rows as the eager hook on the same data."""
    results = []
    for compile_it in (False, True):
        model = _model()
        mon = sw.Monitor(every_n_steps=4, sinks=("memory",), sample_first_step=False)
        mon.watch(model[0], tap="h")
        fwd = torch.compile(model, fullgraph=True, backend="aot_eager") if compile_it else model
        _train(fwd, model.parameters(), mon)
        results.append(mon.sink("memory").history(KEY))
        mon.close()
    assert [s for s, _ in results[0]] == [s for s, _ in results[1]]
    assert [v for _, v in results[0]] == pytest.approx([v for _, v in results[1]], rel=1e-5)


def test_adapter_capture_hook_under_fullgraph_compile_skips_eval_passes():
    from spherewatch.integrations.torch import watch_path

    model = _model()
    mon = sw.Monitor(every_n_steps=4, sinks=("memory",), sample_first_step=False)
    watch_path(mon, model, "0", tap="h", train_only=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for s in range(8):
        model.eval()
        with torch.no_grad():
            compiled(torch.full((32, 8), 3.0))  # an evaluation pass before the step's batch: never captured
        model.train()
        loss = compiled(torch.randn(32, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(s)
    assert [s for s, _ in mon.sink("memory").history(KEY)] == [0, 4]
    assert all(v < -0.5 for _, v in mon.sink("memory").history(KEY))  # not the constant evaluation batch (0.0)
    mon.close()
