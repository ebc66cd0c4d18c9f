"""Default rules across model families (issue 17): real runs replayed (saved metric records of healthy and broken
runs of several families, tests/alerts/traces/), scales that do not depend on the width D, a change of regime that
is reported as such and never as a collapse, advice per loss family, and a rule that can never fire saying so."""
import glob
import json
import logging
import os

import pytest
import torch
from scenarios.families import LOSS_FAMILY  # what each traced model family is, as a user declares it
from scenarios.traces import replay_records

import spherewatch as sw
from spherewatch.alerts import AlertEngine, ThresholdRule, default_rules
from spherewatch.alerts.advice import ADVICE, LOSS_FAMILIES
from spherewatch.alerts.verdict import verdict

P = "spherewatch/"
TRACES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "traces", "*.json")))
#: Barlow Twins runs with the cross-view redundancy logged: their collapses are caught with the family declared (or
#: inferred by an adapter) only, where ``redundancy_rise`` is on
REDUNDANCY_TRACES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "traces", "redundancy", "*.json")))


def _feed(rows, every=50, engine=None, loss_family=None):
    engine = engine or AlertEngine(default_rules(), loss_family=loss_family)
    out = []
    for i, row in enumerate(rows):
        out += engine.update(1 if i == 0 else i * every, {P + k: v for k, v in row.items()})
    return out


def _fired(alerts):
    return [a for a in alerts if a.status == "fired"]


def _replay(trace, engine):
    """A saved run's records through ``engine`` in step order, with the recipe changes the run marked."""
    return replay_records(trace, engine.update, engine.mark_change)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: os.path.basename(p)[:-5])
def test_saved_runs_of_every_family_replay_to_the_right_verdict(path):
    with open(path) as f:
        trace = json.load(f)
    alerts = _replay(trace, AlertEngine(default_rules()))
    collapse = [a for a in _fired(alerts) if a.kind == "collapse"]
    onset, every = trace["onset"], trace["every_n_steps"]
    if onset is None:  # healthy: not one alert of any severity (a marked change: its one information event)
        assert [a for a in _fired(alerts) if a.rule != "marked_change"] == [], [str(a) for a in alerts]
        return
    assert collapse, f"{trace['scenario']}: no alert, onset {onset}"
    first = min(a.step for a in collapse)
    assert first <= onset + every, f"{trace['scenario']}: onset {onset}, first alert {first}"
    critical = [a.step for a in collapse if a.severity == "critical"]
    assert not critical or min(critical) >= onset


@pytest.mark.parametrize("path", TRACES + REDUNDANCY_TRACES, ids=lambda p: os.path.basename(p)[:-5])
def test_with_the_loss_family_declared_every_collapse_is_caught_within_one_interval(path):
    # declared, a non-contrastive or redundancy-reduction run compares with its first sample too: the step-0 collapse
    # at D = 512 is caught at the second evaluation (step 50, onset 30); healthy runs of every family stay silent
    with open(path) as f:
        trace = json.load(f)
    alerts = _replay(trace, AlertEngine(default_rules(), loss_family=LOSS_FAMILY[trace["family"]]))
    collapse = [a for a in _fired(alerts) if a.kind == "collapse"]
    onset, every = trace["onset"], trace["every_n_steps"]
    if onset is None:
        assert [a for a in _fired(alerts) if a.rule != "marked_change"] == [], [str(a) for a in alerts]
        return
    assert collapse and min(a.step for a in collapse) <= onset + every, [str(a) for a in collapse]
    assert min((a.step for a in collapse if a.severity == "critical"), default=onset) >= onset


def test_by_family_settings_apply_only_to_their_family_and_are_validated():
    from spherewatch.alerts import ApproachRule

    rule = ApproachRule(metric="mean_cosine", collapsed=1.0, by_family={"supervised": {"factor": 3.0, "skip_first": 0}})
    assert rule.for_family("supervised").factor == 3.0 and rule.for_family("supervised").skip_first == 0
    assert rule.for_family("contrastive") is rule and rule.for_family(None) is rule
    assert rule.for_family("supervised").name == rule.name
    engine = AlertEngine([rule], loss_family="supervised")
    assert engine.rules[0].factor == 3.0
    with pytest.raises(ValueError, match="not a loss family.*non_contrastive"):
        ApproachRule(metric="mean_cosine", collapsed=1.0, by_family={"simclr": {"factor": 3.0}})
    with pytest.raises(ValueError, match=r"cannot set \['fator'\]"):
        ApproachRule(metric="mean_cosine", collapsed=1.0, by_family={"supervised": {"fator": 3.0}})
    with pytest.raises(ValueError, match=r"cannot set \['metric'\]"):
        ApproachRule(metric="mean_cosine", collapsed=1.0, by_family={"supervised": {"metric": "uniformity"}})
    with pytest.raises(ValueError, match="factor"):  # the replaced settings are validated like the rule's own
        ApproachRule(metric="mean_cosine", collapsed=1.0, by_family={"supervised": {"factor": 0.5}})
    # the defaults: the spread warnings count the first sample for non-contrastive and redundancy-reduction runs only
    spread = {r.name: r for r in default_rules()}
    counts = {"non_contrastive", "redundancy_reduction"}
    for name in ("uniformity_degradation", "mean_cosine_approach"):
        assert spread[name].for_family(None).skip_first == 1
        assert {f for f in LOSS_FAMILIES if spread[name].for_family(f).skip_first == 0} == counts


def test_a_steady_approach_from_step_0_is_caught_at_the_third_evaluation_a_transient_that_turns_is_not():
    # SimSiam without stop-gradient at D = 2048: mean cosine 0.36 -> 0.59 -> 0.79 (uniformity follows)
    steady = [{"mean_cosine": c, "mean_cosine_stderr": 0.003, "uniformity": u, "uniformity_stderr": 0.02}
              for c, u in ((0.356, -2.45), (0.585, -1.57), (0.787, -0.78))]
    fired = _fired(_feed(steady))
    assert fired and min(a.step for a in fired) == 100 and all(a.severity == "warning" for a in fired)
    assert "steadily over the last 2 evaluations" in fired[0].message or "shrank" in fired[0].message
    # healthy MoCo: its first interval goes further toward collapse (0.27 -> 0.85), then turns
    moco = [{"mean_cosine": c, "mean_cosine_stderr": 0.003, "uniformity": u, "uniformity_stderr": 0.02}
            for c, u in ((0.267, -2.63), (0.854, -0.53), (0.352, -1.73), (0.251, -2.13), (0.316, -2.08))]
    assert _feed(moco) == []


@pytest.mark.parametrize("width", [32, 512, 2048])
def test_the_rank_rule_reads_ratios_the_same_at_every_width(width):
    healthy = width / 3  # a trained encoder uses a share of its width
    base = [{"effective_rank": width * 0.8, "effective_rank_stderr": 0.01 * healthy}] + [
        {"effective_rank": healthy, "effective_rank_stderr": 0.01 * healthy}] * 4
    # a 1.5x decline over three evaluations (healthy Barlow Twins, DINO, BYOL warm-up: 1.33x at most) is silent at
    # every width ...
    assert _feed(base + [{"effective_rank": healthy / f, "effective_rank_stderr": 0.01 * healthy}
                         for f in (1.15, 1.3, 1.5, 1.5)]) == []
    # ... a 2.2x decline is a warning at every width, and critical only at 4x on two evaluations in a row
    fired = _fired(_feed(base + [{"effective_rank": healthy / 2.2, "effective_rank_stderr": 0.01 * healthy}] * 3))
    assert [(a.rule, a.severity) for a in fired] == [("rank_collapse", "warning")]
    deep = _fired(_feed(base + [{"effective_rank": healthy / 5, "effective_rank_stderr": 0.01 * healthy}] * 3))
    assert ("rank_collapse_persists", "critical") in [(a.rule, a.severity) for a in deep]


def test_embeddings_contracting_toward_the_origin_warn_at_a_quarter_of_their_largest_norm():
    # VICReg once its variance term ramps out: the mean norm falls 6.6 -> 1.2 while the directions barely move
    # (uniformity 1.4x closer: healthy runs go 1.66x); healthy MoCo's norm falls 2.0x after its first interval
    spread = {"uniformity": -2.7, "uniformity_stderr": 0.05, "mean_cosine": 0.1, "mean_cosine_stderr": 0.01}
    healthy = [{**spread, "norm_mean": n} for n in (2.1, 8.3, 6.7, 5.5, 4.9, 4.5, 4.3, 4.1, 4.1)]
    assert _feed(healthy) == []
    shrinking = [{**spread, "norm_mean": n} for n in (2.1, 6.6, 5.5, 4.8, 3.7, 2.5, 1.7, 1.2)]
    fired = _fired(_feed(shrinking, loss_family="redundancy_reduction"))
    assert [(a.rule, a.step, a.severity, a.kind) for a in fired] == [("norm_contraction", 350, "warning", "collapse")]
    assert "contracting toward the origin" in fired[0].message and "variance term" in fired[0].message
    # a model whose outputs are L2-normalised (norm 1 at every step) never meets it
    assert _feed([{**spread, "norm_mean": 1.0}] * 8) == []


def test_a_deliberate_change_of_regime_is_reported_as_information_never_as_a_collapse():
    # augmentations twice as strong from step 300: uniformity -2.55 -> -1.31 and held, rank unchanged
    u = [-2.63, -2.50, -2.53, -2.55, -2.54, -2.56, -2.55, -1.45, -1.31, -1.30, -1.32, -1.29, -1.31]
    rows = [{"uniformity": x, "uniformity_stderr": 0.02, "effective_rank": 20.0, "effective_rank_stderr": 0.2,
             "mean_cosine": 0.1 + 0.25 * (2.6 + x) / 1.3} for x in u]
    alerts = _fired(_feed(rows))
    assert [(a.rule, a.kind, a.severity) for a in alerts] == [("uniformity_regime", "regime_change", "info")]
    assert "the geometry changed at step 350" in alerts[0].message and "not a collapse" in alerts[0].message
    assert verdict(alerts, last_step=600) == "healthy: no alerts in 600 steps"


def test_a_change_of_recipe_deep_enough_to_collapse_the_spread_gets_warnings_never_a_critical():
    # SimCLR with augmentations twice as strong from step 300 (the scenario suite's run, seed 2): mean cosine 0.06 -> 0.94 in one
    # interval; the probe over all digits sees it too (total variance 0.8 -> 0.07, the twin's stays above 0.7)
    with open(os.path.join(os.path.dirname(__file__), "traces", "deep_regime", "simclr_aug_x2.json")) as f:
        trace = json.load(f)
    engine, alerts = AlertEngine(default_rules()), []
    for step, values in sorted(trace["records"].items(), key=lambda kv: int(kv[0])):
        alerts += engine.update(int(step), values)
    fired = _fired(alerts)
    assert fired and {a.step for a in fired} == {350} and {a.severity for a in fired} == {"warning"}
    twin = {p[0]: p[3] for p in trace["twin_probe"]}
    assert all(tv < 0.15 * twin[step] for step, _, _, tv in trace["probe"] if step > 300)


def test_the_same_change_marked_by_the_user_is_one_information_event_and_no_collapse_alert():
    # the run above with `monitor.mark_change("augmentations twice as strong")` at step 300 (seed 0, retrained): the
    # rules pause for two intervals, then one info event says what moved, and they watch from the new level
    with open(os.path.join(os.path.dirname(__file__), "traces", "simclr_aug_x2.json")) as f:
        trace = json.load(f)
    assert trace["changes"] == [[300, "augmentations twice as strong"]]
    alerts = _fired(_replay(trace, AlertEngine(default_rules())))
    assert [(a.rule, a.kind, a.severity, a.step) for a in alerts] == [("marked_change", "regime_change", "info", 400)]
    assert "the recipe changed at step 300 (augmentations twice as strong)" in alerts[0].message
    assert "from step 250 to step 400: uniformity -2.6" in alerts[0].message
    assert verdict(alerts, last_step=600) == "healthy: no alerts in 600 steps"
    # unmarked, the same records get the collapse warnings of the test above (never a critical)
    unmarked = _fired(_replay({**trace, "changes": []}, AlertEngine(default_rules())))
    assert unmarked and {a.step for a in unmarked} == {350} and {a.severity for a in unmarked} == {"warning"}


def test_a_collapse_is_not_also_reported_as_a_change_of_regime():
    u = [-2.63, -2.50, -2.53, -2.55, -2.54, -0.6, -0.2, -0.1, -0.08]
    rows = [{"uniformity": x, "uniformity_stderr": 0.02} for x in u]
    alerts = _fired(_feed(rows))
    assert alerts and all(a.kind == "collapse" for a in alerts)
    assert alerts[0].rule == "uniformity_degradation" and alerts[0].step == 250


@pytest.mark.parametrize("family", [None, *LOSS_FAMILIES])
def test_each_alert_carries_the_advice_of_its_loss_family_once(family):
    rows = [{"uniformity": x, "uniformity_stderr": 0.02, "effective_rank": r, "effective_rank_stderr": 0.1}
            for x, r in ((-2.6, 40), (-2.5, 30), (-2.5, 30), (-0.7, 12), (-0.6, 11))]
    alerts = _fired(_feed(rows, loss_family=family))
    assert {a.rule for a in alerts} >= {"uniformity_degradation", "rank_collapse"}
    for a in alerts:
        advice = ADVICE[family][a.key.rsplit("/", 1)[1]]
        assert a.message.count(advice) == 1 and a.message.count("Check ") == 1, a.message
        assert " ".join(str(a).split()).count(advice) == 1  # str(alert) wraps at 120
    if family is not None:  # the families' advice differs from one another and from the neutral one
        assert ADVICE[family]["uniformity"] != ADVICE[None]["uniformity"]
    texts = {ADVICE[f]["uniformity"] for f in LOSS_FAMILIES}
    assert len(texts) == len(LOSS_FAMILIES)


def test_every_loss_family_is_accepted_by_the_config():
    for family in LOSS_FAMILIES:
        assert sw.MonitorConfig(loss_family=family).loss_family == family


def test_a_rule_whose_tap_matches_no_tap_warns_once_at_the_first_evaluation(caplog):
    rule = ThresholdRule(name="encoder_rank", tap="encodr", metric="effective_rank", below=3.0)
    engine = AlertEngine([*default_rules(), rule])
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        for step in (1, 50, 100):
            engine.update(step, {P + "uniformity": -2.0, P + "encoder/effective_rank": 1.0})
    lines = [r.getMessage() for r in caplog.records if "can never fire" in r.getMessage()]
    assert len(lines) == 1 and engine.rule_warnings == [lines[0].replace("spherewatch: ", "", 1)]
    assert "'encoder_rank' watches tap 'encodr'" in lines[0] and "['embeddings', 'encoder']" in lines[0]
    assert "did you mean 'encoder'?" in lines[0]
    # the default rules (tap "*") and a rule on a tap that exists say nothing
    ok = AlertEngine([*default_rules(), ThresholdRule(tap="encoder", metric="effective_rank", below=3.0)])
    ok.update(1, {P + "uniformity": -2.0, P + "encoder/effective_rank": 5.0})
    assert ok.rule_warnings == []


def test_a_tap_typo_is_reported_through_a_real_monitor(caplog):
    rule = {"kind": "threshold", "name": "enc_spread", "tap": "encodr", "metric": "uniformity", "above": -0.5}
    mon = sw.Monitor(sinks=("memory",), warn=False, rules=[rule])
    g = torch.Generator().manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        for step in (1, 50, 100):
            mon.observe(torch.randn(64, 16, generator=g), tap="encoder")
            mon.step(step)
    mon.close()
    lines = [r.getMessage() for r in caplog.records if "can never fire" in r.getMessage()]
    assert len(lines) == 1 and "did you mean 'encoder'?" in lines[0]


def test_the_logged_rule_settings_are_the_ones_that_apply_to_the_declared_family():
    import json as _json

    from spherewatch.config import MonitorConfig
    from spherewatch.keys import config_params

    unknown = _json.loads(config_params(MonitorConfig())["spherewatch.rule.uniformity_degradation"])
    declared = _json.loads(config_params(MonitorConfig(loss_family="non_contrastive"))[
        "spherewatch.rule.uniformity_degradation"])
    assert unknown["skip_first"] == 1 and "non_contrastive" in unknown["by_family"]
    assert declared["skip_first"] == 0 and "by_family" not in declared
    assert "by_family" not in _json.loads(config_params(MonitorConfig())["spherewatch.rule.nonfinite"])
    # a rule that is off for the run's family is not among the run's rules
    assert "redundancy_rise" not in config_params(MonitorConfig())["spherewatch.rules"].split(",")
    on = config_params(MonitorConfig(loss_family="redundancy_reduction"))
    assert "redundancy_rise" in on["spherewatch.rules"].split(",")
    assert _json.loads(on["spherewatch.rule.redundancy_rise"])["enabled"] is True


def test_the_loss_family_is_inferred_only_from_losses_that_agree():
    from spherewatch.alerts.advice import LOSS_CLASS_FAMILIES, infer_loss_family

    def named(name):
        return type(name, (torch.nn.Module,), {})()

    assert set(LOSS_CLASS_FAMILIES.values()) <= set(LOSS_FAMILIES)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    assert infer_loss_family(net) is None
    both = torch.nn.ModuleDict({"net": net, "a": named("VICRegLoss"), "b": named("BarlowTwinsLoss")})
    assert infer_loss_family(both) == ("redundancy_reduction", "VICRegLoss")  # one family, two losses
    mixed = torch.nn.ModuleDict({"dino": named("DINOLoss"), "nce": named("NTXentLoss")})
    assert infer_loss_family(mixed) is None  # two families: none is chosen
    assert infer_loss_family(object()) is None and infer_loss_family(None) is None


# ------------------------------------------------------------------- the cross-view redundancy (Barlow Twins)
def _level_engine(**kw):
    return AlertEngine([sw.alerts.LevelRule(metric="redundancy", direction="rise", **kw)])


def _feed_series(engine, series):
    return _fired(sum((engine.update(step, {P + "redundancy": v}) for step, v in series), []))


def test_a_rise_from_the_floor_during_warm_up_holds_no_level_and_never_fires():
    # the random start sits at the sampling floor (1/N); a warm-up raises the redundancy 4-7x over its first
    # evaluations (healthy Barlow Twins: 0.013 -> 0.088 by step 150): no level is held while it rises
    warm = [(1, 0.013), (50, 0.012), (100, 0.042), (150, 0.082), (200, 0.051), (250, 0.074), (300, 0.053),
            (350, 0.054), (400, 0.041), (450, 0.062)]
    assert _feed_series(_level_engine(), warm) == []
    # ... at every cadence: a steady rise of 1.2x per 10 steps for 200 steps holds no level either
    assert _feed_series(_level_engine(), [(10 * k, 0.01 * 1.2 ** (k / 5)) for k in range(1, 21)]) == []


@pytest.mark.parametrize("every", [10, 50])
def test_a_rise_from_a_held_level_fires_and_names_the_level_at_any_cadence(every):
    steps = range(every, 400 + every, every)
    series = [(s, 0.05 * (1.1 if (s // every) % 2 else 0.9)) for s in steps]  # a level of 0.05 held, +-10%
    engine = _level_engine()
    assert _feed_series(engine, series) == []
    fired = _feed_series(engine, [(400 + every, 0.11), (400 + 2 * every, 0.16)])
    assert [a.step for a in fired] == [400 + 2 * every]  # 2.2x does not fire, 3.2x does
    msg = fired[0].message
    assert "redundancy rose 3.2x from the level 0.05 it held over steps" in msg and "copies of each other" in msg


def test_redundancy_rise_is_on_for_redundancy_reduction_runs_only():
    # at defaults the Barlow Twins collapses of tests/alerts/traces/redundancy/ stay silent (documented); declared
    # they are caught by this rule (test_with_the_loss_family_declared_every_collapse_is_caught_within_one_interval)
    lam0 = os.path.join(os.path.dirname(__file__), "traces", "redundancy", "barlow_lambda0.json")
    with open(lam0) as f:
        records = sorted(json.load(f)["records"].items(), key=lambda kv: int(kv[0]))
    for family, rules in [(None, set()), ("redundancy_reduction", {"redundancy_rise"})]:
        engine = AlertEngine(default_rules(), loss_family=family)
        assert {a.rule for step, v in records for a in _fired(engine.update(int(step), v))} == rules, family
    for family, on in [(None, False), ("contrastive", False), ("non_contrastive", False),
                       ("redundancy_reduction", True)]:
        names = [r.name for r in AlertEngine(default_rules(), loss_family=family).rules]
        assert ("redundancy_rise" in names) is on, family


def test_a_rule_off_because_no_loss_family_is_set_says_which_family_switches_it_on(caplog):
    # Barlow Twins in plain PyTorch without `loss_family`: its collapse is watched only by redundancy_rise, which is
    # off; the first evaluation that logs `redundancy` says so, once, at INFO (a paired tap of any family logs it)
    engine = AlertEngine(default_rules())
    with caplog.at_level(logging.INFO, logger="spherewatch"):
        engine.update(1, {P + "uniformity": -2.0})  # no redundancy yet: nothing to say
        assert engine.rule_notes == []
        for step in (50, 100):
            engine.update(step, {P + "uniformity": -2.0, P + "redundancy": 0.05})
    assert engine.rule_notes == [
        "alert rule 'redundancy_rise' on redundancy is on only for loss_family in ['redundancy_reduction']; none is "
        "set, so it is off. If the loss is a redundancy_reduction one (BarlowTwinsLoss, VICRegLoss, VICRegLLoss, ...), "
        "pass loss_family='redundancy_reduction' (the Lightning and HF callbacks infer it from a loss module in the "
        "model)"]
    assert caplog.text.count("is on only for loss_family") == 1
    for family in ("contrastive", "redundancy_reduction"):  # declared: nothing to say
        declared = AlertEngine(default_rules(), loss_family=family)
        declared.update(50, {P + "redundancy": 0.05})
        assert declared.rule_notes == [], family


def test_a_switched_off_rule_is_not_evaluated_and_does_not_warn_about_its_tap(caplog):
    rule = ThresholdRule(metric="mean_cosine", above=0.5, tap="encodr", enabled=False,
                         by_family={"supervised": {"enabled": True}})
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        engine = AlertEngine([rule])
        assert _fired(engine.update(1, {P + "mean_cosine": 0.9})) == [] and engine.rule_warnings == []
    assert len(AlertEngine([rule], loss_family="supervised").rules) == 1


@pytest.mark.parametrize("every, fires_after", [(10, 3), (50, 1)])
def test_a_held_rise_fires_once_it_has_held_for_hold_steps_at_any_cadence(every, fires_after):
    # the default redundancy_rise holds 30 steps: two evaluations every 50 steps, four every 10; a single noisy batch
    # (one sample at 3x) never fires
    rule = dict(factor=2.0, hold_steps=30)
    level = [(s, 0.05 * (1.1 if (s // every) % 2 else 0.9)) for s in range(every, 400 + every, every)]
    engine = _level_engine(**rule)
    assert _feed_series(engine, level) == []
    assert _feed_series(engine, [(400 + every, 0.15)]) == []  # one spike
    assert _feed_series(engine, [(400 + 2 * every, 0.05)]) == []
    rise = [(400 + (3 + k) * every, 0.15) for k in range(fires_after + 1)]
    fired = _feed_series(engine, rise)
    assert [a.step for a in fired] == [rise[fires_after][0]]


# ---------------------------------------------------- a collapse zone entered at the first trained evaluation
def test_a_zone_entered_at_the_first_trained_sample_is_confirmed_at_a_sample_asked_for_ten_steps_later():
    # MoCo at batch 32 (measured): mean cosine 0.27 at step 1, 0.923 at 50 -- inside the zone -- then 0.891 at 60 on
    # its way out; SimSiam without stop-gradient from step 0: 0.98 at 50, 0.983 at 60
    def run(values):
        engine = AlertEngine(default_rules())
        fired = []
        for step, v, se in values:
            fired += _fired(engine.update(step, {P + "mean_cosine": v, P + "mean_cosine_stderr": se}))
            asked = engine.requested_step(step)
        return fired, asked, engine

    fired, asked, engine = run([(1, 0.27, 0.03), (50, 0.923, 0.008)])
    assert fired == [] and asked == 60  # not yet: the rule asks for step 60
    moco, _, _ = run([(1, 0.27, 0.03), (50, 0.923, 0.008), (60, 0.891, 0.01), (100, 0.72, 0.02)])
    assert moco == []  # recovering at 60: no alert
    collapse, asked, _ = run([(1, 0.27, 0.006), (50, 0.980, 0.0005), (60, 0.983, 0.0005)])
    # (the approach rule confirms the same run at 60 too: 37x closer than its random start, closer again)
    assert ("mean_cosine_collapse", 60) in [(a.rule, a.step) for a in collapse] and asked is None
    assert all(a.step == 60 for a in collapse)
    # a run that is in the zone from its first sample (attached to a collapsed model) is not held back
    arrived, _, _ = run([(1, 0.97, 0.001), (50, 0.975, 0.001)])
    assert [(a.rule, a.step) for a in arrived] == [("mean_cosine_collapse", 50)]


def test_the_monitor_evaluates_at_the_step_a_rule_asks_for():
    torch.manual_seed(0)
    mon = sw.Monitor(sinks=("memory",), warn=False, every_n_steps=50, preset="cheap")
    direction = torch.randn(1, 16)
    for step in range(1, 121):
        spread = 1.0 if step < 10 else 0.02  # a collapse from step 10 on: in the zone at the first trained evaluation
        mon.observe(direction + spread * torch.randn(64, 16))
        mon.step(step)
    mon.close()
    steps = [s for s, _ in mon.sink("memory").history(P + "mean_cosine")]
    assert steps == [1, 50, 60, 100]  # 60: asked for by the zone rules, to confirm the entry at 50
    assert [(a.rule, a.step) for a in _fired(mon.alerts)][:1] == [("mean_cosine_collapse", 60)]


def test_a_checkpoint_between_the_request_and_the_confirmation_resumes_it():
    torch.manual_seed(0)
    direction = torch.randn(1, 16)

    def feed(mon, steps):
        for step in steps:
            mon.observe(direction + (1.0 if step < 10 else 0.02) * torch.randn(64, 16))
            mon.step(step)

    first = sw.Monitor(sinks=("memory",), warn=False, every_n_steps=50, preset="cheap")
    feed(first, range(1, 56))
    state = first.state_dict()
    first.close()
    resumed = sw.Monitor(sinks=("memory",), warn=False, every_n_steps=50, preset="cheap")
    resumed.load_state_dict(state)
    feed(resumed, range(56, 101))
    resumed.close()
    assert [s for s, _ in resumed.sink("memory").history(P + "mean_cosine")] == [60, 100]
    assert [(a.rule, a.step) for a in _fired(resumed.alerts)][:1] == [("mean_cosine_collapse", 60)]


# ------------------------------------------------- an approach from step 0, confirmed at a sample asked for
def _spread_run(values, loss_family=None):
    engine = AlertEngine(default_rules(), loss_family=loss_family)
    fired = []
    for step, v, se in values:
        fired += _fired(engine.update(step, {P + "mean_cosine": v, P + "mean_cosine_stderr": se}))
    return fired, engine


def test_an_approach_from_step_0_is_confirmed_ten_steps_later_a_turning_transient_is_not():
    # measured every 5 steps (docs/alerts-design.md): SimSiam without stop-gradient from step 0 at D = 512 is 3.2-3.5x
    # closer to collapse than its random start at step 50 and 1.19-1.26x closer again at 60; healthy MoCo 2.5-10x at
    # 50, but receding at 60 (0.68-0.96)
    fired, engine = _spread_run([(1, 0.345, 0.004), (50, 0.803, 0.0024)])
    assert fired == [] and engine.requested_step(50) == 60
    fired, _ = _spread_run([(1, 0.345, 0.004), (50, 0.803, 0.0024), (60, 0.837, 0.002)])
    assert [(a.rule, a.step) for a in fired] == [("mean_cosine_approach", 60)]
    assert "from 0.345 (step 1) to 0.837 at step 60 and on from step 50" in fired[0].message
    moco, _ = _spread_run([(1, 0.267, 0.006), (50, 0.854, 0.003), (60, 0.786, 0.005), (100, 0.352, 0.014)])
    assert moco == []
    # not closer enough again (1.05x < 1.1x): a run that slows down is not confirmed
    slow, _ = _spread_run([(1, 0.345, 0.004), (50, 0.803, 0.0024), (60, 0.813, 0.002)])
    assert slow == []
    # a run whose second sample did not come 2.5x closer asks for nothing
    _, engine = _spread_run([(1, 0.264, 0.03), (50, 0.589, 0.03)])
    assert engine.requested_step(50) is None


def test_at_a_finer_cadence_the_approach_is_confirmed_at_the_first_sample_ten_steps_on():
    # every 5 steps: the sample at 55 is not the one asked for; the one at 60 confirms
    fired, engine = _spread_run([(1, 0.345, 0.004), (50, 0.803, 0.0024), (55, 0.806, 0.002)])
    assert fired == [] and engine.requested_step(55) == 60  # still waiting for 60 (on the schedule anyway)
    fired, _ = _spread_run([(1, 0.345, 0.004), (50, 0.803, 0.0024), (55, 0.806, 0.002), (60, 0.837, 0.002)])
    assert [(a.rule, a.step) for a in fired] == [("mean_cosine_approach", 60)]


def test_at_a_finer_cadence_the_zone_is_confirmed_at_the_first_sample_ten_steps_on():
    def run(values):
        engine = AlertEngine(default_rules())
        return [(a.rule, a.step) for step, v in values
                for a in _fired(engine.update(step, {P + "mean_cosine": v, P + "mean_cosine_stderr": 0.0005}))]
    assert run([(1, 0.27), (5, 0.97), (10, 0.975)]) == []  # entered at 5: the sample asked for is at 15
    assert ("mean_cosine_collapse", 15) in run([(1, 0.27), (5, 0.97), (10, 0.975), (15, 0.98)])
