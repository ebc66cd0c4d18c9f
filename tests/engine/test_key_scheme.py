"""The key scheme (issue 11): short keys for the default tap, tap keys for the others, the 0.1 keys on request,
and both read back the same way (rules, resume, report)."""
import pytest
import torch

from spherewatch import Monitor
from spherewatch.keys import RESERVED_TAPS, KeyScheme, metric_key, parse_key

MLFLOW_TITLE_CHARS = 29  # MLflow's chart cards cut a title after this many characters ("spherewatch/embeddings/unifor…")


def _memory(mon):
    return next(s for s in mon.sinks if getattr(s, "name", "") == "memory")


def _run(scheme=None, **kw):
    kw.setdefault("preset", "full")
    if scheme is not None:
        kw["key_scheme"] = scheme
    mon = Monitor(sinks=("memory",), every_n_steps=1, warn=False, num_classes=4, **kw)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(256, 32, generator=g)
    mon.observe(z, z + 0.1 * torch.randn(256, 32, generator=g), labels=torch.arange(256) % 4)
    mon.observe(z, tap="encoder")
    mon.step()
    keys = set(_memory(mon).keys())
    mon.close()
    return keys


def test_default_tap_keys_are_short_and_other_taps_keep_their_name():
    keys = _run()
    assert {"spherewatch/uniformity", "spherewatch/effective_rank", "spherewatch/rows",
            "spherewatch/encoder/uniformity", "spherewatch/encoder/effective_rank"} <= keys
    assert not [k for k in keys if k.startswith("spherewatch/embeddings/")]


def test_tap_scheme_logs_the_keys_of_spherewatch_0_1():
    keys = _run("tap")
    assert {"spherewatch/embeddings/uniformity", "spherewatch/encoder/uniformity"} <= keys
    assert all(k.count("/") == 2 for k in keys)
    # the same metrics, only named differently: each key of one scheme is the other's, renamed
    assert {KeyScheme().canonical(k) for k in keys} == _run()


def test_every_default_tap_key_of_the_full_preset_is_distinct_where_mlflow_cuts_chart_titles():
    short = sorted(k for k in _run() if k.count("/") == 1)
    assert len(short) >= 25
    assert len({k[:MLFLOW_TITLE_CHARS] for k in short}) == len(short)
    cut = {k[:MLFLOW_TITLE_CHARS] for k in _run("tap") if k.startswith("spherewatch/embeddings/")}
    assert len(cut) < len(short)  # what issue 11 saw: several cards read the same in the tap scheme


def test_both_schemes_parse_to_the_same_tap_and_metric():
    for scheme in ("short", "tap"):
        keys = KeyScheme(scheme=scheme)
        for tap in ("embeddings", "encoder"):
            assert parse_key(keys.key("uniformity", tap)) == (tap, "uniformity")
            assert keys.canonical(metric_key("uniformity", tap, scheme="tap")) == keys.key("uniformity", tap)
    custom = KeyScheme(prefix="sw", default_tap="z")
    assert custom.key("mean_cosine") == "sw/mean_cosine" and custom.parse("sw/mean_cosine") == ("z", "mean_cosine")
    for key in ("spherewatch/alerts/count", "spherewatch/monitor/capture:z", "spherewatch/params", "train/loss",
                "spherewatch/", "spherewatch//x", "spherewatch/encoder/"):
        assert parse_key(key) is None, key
    with pytest.raises(ValueError, match="key scheme"):
        KeyScheme(scheme="long")


@pytest.mark.parametrize("tap", RESERVED_TAPS)
def test_reserved_names_cannot_be_taps(tap):
    mon = Monitor(sinks=("memory",), warn=False)
    with pytest.raises(ValueError, match=f"tap name '{tap}' is reserved"):
        mon.watch(torch.nn.Linear(4, 4), tap=tap)
    mon.observe(torch.randn(8, 4), tap=tap)  # inside the loop: reported and skipped, never raised
    assert mon.faults == {f"capture:{tap}": 1}
    mon.close()
    with pytest.raises(ValueError, match="reserved"):
        Monitor(sinks=("memory",), default_tap=tap)


def test_a_rule_naming_the_default_tap_watches_its_short_keys():
    rule = {"kind": "threshold", "metric": "mean_cosine", "above": 0.9, "tap": "embeddings", "name": "same_way"}
    mon = Monitor(sinks=("memory",), every_n_steps=1, warn=False, rules=[rule], preset="cheap")
    z = torch.randn(1, 16).repeat(64, 1) + 1e-3 * torch.randn(64, 16)
    mon.observe(z)
    fired = mon.step()
    mon.observe(z, tap="other")  # a rule's tap is matched: another tap is not watched
    fired_other = mon.step()
    mon.close()
    assert [(a.rule, a.key) for a in fired] == [("same_way", "spherewatch/mean_cosine")]
    assert [a for a in fired_other if a.rule == "same_way"] == []


def test_a_run_saved_under_the_tap_scheme_resumes_under_the_short_one_with_its_references():
    rule = {"kind": "degradation", "metric": "effective_rank", "direction": "fall", "fraction": 0.5,
            "name": "rank_drop"}
    g = torch.Generator().manual_seed(1)
    healthy = torch.randn(512, 32, generator=g)
    collapsed = torch.randn(512, 1, generator=g) @ torch.randn(1, 32, generator=g) + 1e-3 * healthy

    old = Monitor(sinks=("memory",), every_n_steps=1, warn=False, rules=[rule], preset="standard", key_scheme="tap")
    for step in range(3):
        old.observe(healthy)
        old.step(step)
    state = old.state_dict()
    old.close()
    assert "spherewatch/embeddings/effective_rank" in state["alert_engine"]["states"]["rank_drop"]

    new = Monitor(sinks=("memory",), every_n_steps=1, warn=False, rules=[rule], preset="standard")
    new.load_state_dict(state)
    assert set(new.last_values) == {KeyScheme().canonical(k) for k in state["last_values"]}
    new.observe(collapsed)
    fired = [a for a in new.step(3) if a.rule == "rank_drop"]
    new.close()
    # the reference is the best rank before the resume, kept across the renaming
    assert [a.key for a in fired] == ["spherewatch/effective_rank"]
    assert "best, step" in fired[0].message and "step 3" in fired[0].message


def test_report_reads_runs_of_both_schemes_and_overlays_them(tmp_path):
    from spherewatch.report import build_report, load_run, verdict
    from spherewatch.sinks.jsonl import JsonlSink

    paths = []
    for scheme in ("tap", "short"):
        keys = KeyScheme(scheme=scheme)
        path = tmp_path / f"{scheme}.jsonl"
        with JsonlSink(str(path)) as sink:
            for step in range(0, 50, 10):
                sink.log_scalars(step, {keys.key("uniformity"): -3.0 + step / 25,
                                        keys.key("effective_rank"): 30.0 - step / 2}, wall_time=1.7e9 + step)
        paths.append(str(path))
    runs = [load_run(p) for p in paths]
    parsed = [sorted(parse_key(k) for k in r.scalars) for r in runs]
    assert parsed[0] == parsed[1] == [("embeddings", "effective_rank"), ("embeddings", "uniformity")]
    assert [verdict(r) for r in runs] == ["healthy: no alerts in 40 steps"] * 2
    out = build_report(paths, tmp_path / "report", names=["tap keys", "short keys"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "tap keys" in html and "short keys" in html and out
