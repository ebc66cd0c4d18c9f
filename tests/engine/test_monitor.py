"""The Monitor engine: schedule, capture, buffer, compute, readback; faults never escape unless strict."""
import logging

import pytest
import torch
import torch.nn as nn

import spherewatch as sw
import spherewatch.metrics as M
from spherewatch.keys import metric_key


def make_monitor(**kw):
    kw.setdefault("sinks", ("memory",))
    kw.setdefault("warn", False)
    return sw.Monitor(**kw)


def key(metric, tap="embeddings"):
    return metric_key(metric, tap)


def test_three_line_loop_logs_standard_metrics_equal_to_the_functions():
    mon = make_monitor(every_n_steps=5, sample_first_step=False)
    g = torch.Generator().manual_seed(0)
    batches = {}
    for step in range(1, 16):
        z1, z2 = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
        batches[step] = (z1, z2)
        mon.observe(z1, z2)
        mon.step(step)
    mem = mon.sink("memory")
    assert [s for s, _ in mem.history(key("uniformity"))] == [5, 10, 15]
    z1, z2 = batches[10]
    vals = dict(mem.history(key("uniformity")))
    assert vals[10] == pytest.approx(M.uniformity(z1).item(), rel=1e-6)
    assert dict(mem.history(key("alignment")))[10] == pytest.approx(M.alignment(z1, z2).item(), rel=1e-6)
    assert dict(mem.history(key("effective_rank")))[10] == pytest.approx(M.effective_rank(z1).item(), rel=1e-6)
    for metric in sw.config.PRESETS["standard"]:
        if metric == "norm_stats":
            assert mem.history(key("norm_mean"))
        else:
            assert mem.history(key(metric)), metric
    mon.close()


def test_off_sample_steps_do_nothing_but_check_a_flag():
    mon = make_monitor(every_n_steps=10, sample_first_step=False)
    mon.step(0)  # evaluation step 0 is due (nothing captured yet)
    assert not mon.armed
    mon.observe("not even a tensor")  # returns before looking at its argument
    mon.observe(torch.empty(8, 4, device="meta"))
    assert mon.faults == {} and mon.captures == {}
    for s in range(1, 9):
        mon.step(s)
        assert not mon.armed
    mon.step(9)
    assert mon.armed  # step 10's forward pass is a capture step
    mon.close()


def test_first_step_and_log_spaced_schedule():
    mon = make_monitor(every_n_steps=50, log_spaced=True, start_step=0)
    for s in range(1, 130):
        mon.observe(torch.randn(32, 8))
        mon.step(s)
    seen = [s for s, _ in mon.sink("memory").history(key("uniformity"))]
    assert seen == [1, 2, 4, 8, 16, 32, 50, 100]
    mon.close()


def test_spectral_metrics_follow_their_slower_cadence():
    mon = make_monitor(every_n_steps=5, spectral_every_n_steps=10, sample_first_step=False)
    for s in range(1, 31):
        mon.observe(torch.randn(32, 8))
        mon.step(s)
    mem = mon.sink("memory")
    assert [s for s, _ in mem.history(key("uniformity"))] == [5, 10, 15, 20, 25, 30]
    assert [s for s, _ in mem.history(key("effective_rank"))] == [5, 10, 20, 30]
    mon.close()


def test_one_capture_per_step_per_tap_with_gradient_accumulation():
    mon = make_monitor(every_n_steps=2, sample_first_step=False, max_samples=1000)
    for s in range(0, 4):  # evaluations at steps 0 and 2
        for micro in range(4):  # four micro-batches per optimizer step
            mon.observe(torch.full((10, 3), float(micro)) + torch.randn(10, 3))
        mon.step(s)
    assert mon.captures["embeddings"] == 2
    mon.close()


def test_reservoir_window_collects_rows_from_several_steps_within_max_samples():
    mon = make_monitor(every_n_steps=10, window_steps=3, max_samples=50, sample_first_step=False, preset="full")
    for s in range(0, 11):
        mon.observe(torch.randn(40, 6))
        mon.step(s)
    assert mon.captures["embeddings"] == 4  # step 0, then steps 8, 9, 10 for the evaluation at 10
    hist = mon.sink("memory").histograms
    assert hist  # spectrum logged with the full preset
    mon.close()


def test_watch_captures_module_output_and_handle_removes_the_hook():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    mon = make_monitor(every_n_steps=1)
    handle = mon.watch(model[0], tap="hidden")
    x = torch.randn(20, 8)
    expected = M.uniformity(torch.nn.functional.linear(x, model[0].weight, model[0].bias)).item()
    model(x)
    mon.step(0)
    assert mon.sink("memory").last(key("uniformity", "hidden")) == pytest.approx(expected, rel=1e-6)
    handle.remove()
    model(x)
    mon.step(1)
    assert mon.captures["hidden"] == 1
    mon.close()


class TupleDictModule(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(4, 6)

    def forward(self, x, attention_mask=None):
        h = self.lin(x)
        if self.kind == "tuple":
            return h, h * 2
        if self.kind == "dict":
            return {"logits": h * 3, "pooler_output": h}
        return h  # tokens (B, T, H)


@pytest.mark.parametrize("kind,select", [("tuple", None), ("tuple", 1), ("dict", None), ("dict", "logits"),
                                         ("dict", lambda out: out["pooler_output"])])
def test_watch_selects_from_tuples_and_dicts(kind, select):
    m = TupleDictModule(kind)
    mon = make_monitor(every_n_steps=1)
    mon.watch(m, tap="t", select=select)
    x = torch.randn(12, 4)
    out = m(x)
    mon.step(0)
    if isinstance(out, tuple):
        target = out[select or 0]
    elif callable(select):
        target = select(out)
    else:
        target = out[select or "pooler_output"]
    assert mon.sink("memory").last(key("uniformity", "t")) == pytest.approx(M.uniformity(target).item(), rel=1e-6)
    mon.close()


def test_token_outputs_are_mean_pooled_with_the_attention_mask():
    m = TupleDictModule("tokens")
    mon = make_monitor(every_n_steps=1)
    mon.watch(m, tap="tok")
    x = torch.randn(10, 7, 4)
    mask = torch.ones(10, 7)
    mask[:, 4:] = 0
    h = m(x, attention_mask=mask)
    mon.step(0)
    pooled = h[:, :4].mean(1)
    assert mon.sink("memory").last(key("uniformity", "tok")) == pytest.approx(M.uniformity(pooled).item(), rel=1e-5)
    mon.close()


def test_hook_fires_once_per_step_under_activation_checkpointing():
    from torch.utils.checkpoint import checkpoint

    inner = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
    mon = make_monitor(every_n_steps=1, sample_first_step=True)
    calls = []
    inner.register_forward_hook(lambda *a: calls.append(1))
    mon.watch(inner, tap="ckpt")
    x = torch.randn(16, 8, requires_grad=True)
    y = checkpoint(inner, x, use_reentrant=True)
    y.sum().backward()  # re-runs inner's forward
    mon.step(0)
    assert len(calls) == 2
    assert mon.captures["ckpt"] == 1
    mon.close()


def test_watched_module_under_torch_compile_captures_once_per_sampling_step():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    mon = make_monitor(every_n_steps=3, sample_first_step=False)
    mon.watch(model[0], tap="c")  # before compile
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for s in range(0, 10):
        loss = compiled(torch.randn(32, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mon.step(s)
    assert mon.captures["c"] == 4
    assert [s for s, _ in mon.sink("memory").history(key("uniformity", "c"))] == [0, 3, 6, 9]
    mon.close()


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.randn(4, 3, 5), "pool"),
        (torch.randn(7), "2-D"),
        (torch.ones(8, 3, dtype=torch.long), "floating"),
        ([1, 2, 3], "torch.Tensor"),
    ],
)
def test_bad_embeddings_are_reported_once_and_training_continues(bad, match, caplog):
    fired = []
    mon = make_monitor(every_n_steps=1, on_alert=fired.append)
    with caplog.at_level(logging.ERROR, logger="spherewatch"):
        for s in range(3):
            mon.observe(bad)
            mon.step(s)
    assert mon.faults["capture:embeddings"] == 3
    errors = [r for r in caplog.records if "capture:embeddings" in r.getMessage()]
    assert len(errors) == 1 and match in errors[0].getMessage()
    assert [a.rule for a in fired] == ["monitor_fault"]
    mon.close()


def test_strict_mode_raises_a_clear_error():
    mon = make_monitor(every_n_steps=1, strict=True)
    with pytest.raises(sw.SpherewatchError, match=r"2-D tensor \(N, D\), got shape \(7,\)"):
        mon.observe(torch.randn(7))
    mon.close()


def test_empty_single_row_nan_and_odd_inputs_do_not_crash():
    mon = make_monitor(every_n_steps=1)
    mon.observe(torch.randn(0, 4))
    mon.step(0)
    mon.observe(torch.randn(1, 4))
    mon.step(1)
    z = torch.randn(16, 4)
    z[3] = float("nan")
    mon.observe(z)
    fired = mon.step(2)
    assert any(a.rule == "nonfinite" for a in fired)
    mon.observe(torch.randn(16, 8, requires_grad=True)[:, ::2].to(torch.bfloat16))  # non-contiguous bf16 with grad
    mon.step(3)
    assert mon.faults == {}
    assert mon.sink("memory").last(key("nonfinite_fraction")) == 0.0
    mon.close()


def _without_times(obj):
    if isinstance(obj, dict):
        # "writer" holds the run's identity (its spool folder, its MLflow run): a different run has another
        return {k: _without_times(v) for k, v in obj.items() if k not in ("time", "writer")}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def test_state_dict_round_trip_resumes_like_an_uninterrupted_run():
    import json

    def feed(mon, steps):
        out = []
        for s in steps:
            g = torch.Generator().manual_seed(s)  # the data of step s does not depend on where the run resumed
            scale = 1.0 if s < 30 else 0.01  # collapse at step 30
            mon.observe(torch.randn(1, 16, generator=g) + scale * torch.randn(64, 16, generator=g))
            out += [(a.rule, a.step, a.value) for a in mon.step(s)]
        return out

    full = make_monitor(every_n_steps=5)
    uninterrupted = feed(full, range(0, 50))
    first = make_monitor(every_n_steps=5)
    before = feed(first, range(0, 25))
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip
    resumed = make_monitor(every_n_steps=5)
    resumed.load_state_dict(state)
    after = feed(resumed, range(25, 50))
    assert any(step == 30 for _, step, _ in uninterrupted), "the collapse at step 30 must fire"
    assert before + after == uninterrupted
    assert _without_times(resumed.state_dict()) == _without_times(full.state_dict())


def test_stop_action_sets_should_stop():
    rules = [{"kind": "threshold", "metric": "mean_cosine", "above": 0.9, "action": "stop"}]
    mon = make_monitor(every_n_steps=1, rules=rules)
    mon.observe(torch.randn(32, 8))
    mon.step(0)
    assert not mon.should_stop
    mon.observe(torch.ones(32, 8) + 1e-3 * torch.randn(32, 8))
    fired = mon.step(1)
    assert [a.action for a in fired] == ["stop"] and mon.should_stop
    mon.close()


def test_monitor_is_a_context_manager_and_close_is_idempotent(tmp_path):
    path = tmp_path / "m.jsonl"
    with sw.Monitor(every_n_steps=1, jsonl_path=str(path), warn=False) as mon:
        mon.observe(torch.randn(8, 3))
        mon.step(0)
    mon.close()
    assert path.exists() and path.read_text().count("\n") >= 1
    assert mon.step(1) == []


def test_nothing_captured_warns_once(caplog):
    mon = make_monitor(every_n_steps=1)
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        for s in range(3):
            mon.step(s)
    assert sum("no usable embeddings reached the monitor" in r.getMessage() for r in caplog.records) == 1
