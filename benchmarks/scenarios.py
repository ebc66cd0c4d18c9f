"""The default alert rules on real training runs: a confusion table per model family, with detection delays.

Suites (every run uses the monitor at its DEFAULT settings: every 50 steps, default rules, ``loss_family`` unset):

* ``families`` -- ``tests/scenarios/families.py``: SimCLR, MoCo v2, SimSiam, BYOL, Barlow Twins, VICReg, DINO,
  SwAV and a supervised classifier's penultimate layer on scikit-learn's digits, healthy at 400 and 2,000 steps
  under constant LR, warm-up + cosine, step decay, warm restarts, an augmentation twice as strong from step 300,
  a batch-size change (both deliberate: the run tells the monitor, ``Monitor.mark_change``, as a user would;
  ``--replay DIR --unmarked`` scores them as if it had not); SimSiam without stop-gradient from step 0 at
  D = 32 / 512 / 2048; a slow (2,000-step) dimensional collapse; one bug per family switched on at step 200.
  Onset from an independent probe against a healthy twin (the module docstring defines it).
* ``classic`` -- ``tests/scenarios/digits_ssl.py``: the earlier suite (SimCLR, SimSiam, BYOL, VICReg; 200 healthy
  steps then broken), plain PyTorch and Lightning's real ``Trainer`` for two of them.
* ``sentence`` -- ``tests/scenarios/sentence_pairs.py``: sentence-transformers MNRL fine-tunes of a tiny BERT built
  from a config (through ``MonitorTrainerCallback``).

Per family: runs, positives (runs whose probe found a collapse), TP, FP, FN, TN, the largest delay from the onset
to the first alert in steps and in sampling intervals (target <= 1 interval), alerts later than one interval, and
runs with a critical alert before the onset (target 0). An "alert" is a fired event of kind ``collapse`` (faults and
any other kind of event are not counted). Then the same per scenario.

    python benchmarks/scenarios.py                                  # every suite, 3 seeds
    python benchmarks/scenarios.py --seeds 1 --suites families --save-traces /tmp/traces
    python benchmarks/scenarios.py --replay /tmp/traces             # no training: the CURRENT rules on saved records
    python benchmarks/scenarios.py --replay /tmp/traces --loss-family --messages   # with each family's advice
    python benchmarks/scenarios.py --only dino dino_no_centering --seeds 2

``--save-traces DIR`` writes one JSON per run (``<suite>__<scenario>__s<seed>.json``; format in
``tests/scenarios/traces.py``'s :func:`save_trace`). ``--replay DIR`` feeds every trace's logged records, in step
order, through the same :class:`spherewatch.alerting.AlertPipeline` the Monitor uses (default rules of the installed
spherewatch), and prints the same tables: rules can be tuned in seconds against a fixed set of runs.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging  # noqa: E402

import torch  # noqa: E402
from scenarios.traces import TRACE_FORMAT, records_of, replay_records, save_trace  # noqa: E402

import spherewatch as sw  # noqa: E402
from spherewatch.alerts.verdict import collapse_alerts  # noqa: E402

LIGHTNING = ("simclr", "simsiam_no_stopgrad")  # classic suite: also run under Lightning's Trainer (seed 0)
#: families suite: also run under Lightning's Trainer (seed 0), the callback at default settings: it infers the loss
#: family from the model's ``BarlowTwinsLoss`` (what a Lightning user gets without naming it)
LIGHTNING_FAMILIES = ("barlow", "barlow_lambda0", "barlow_slow_collapse")


# ------------------------------------------------------------------------------------------------ one run
def _fired(alerts) -> List[Any]:
    """The collapse alerts that fired (the verdict's: no resolution, no fault, no change of regime)."""
    return collapse_alerts(alerts)


def make_row(meta: Dict[str, Any], alerts: List[Any]) -> Dict[str, Any]:
    """A table row from a run's description (``family``, ``scenario``, ``seed``, ``onset``, ``switch``,
    ``every_n_steps``, ``healthy``, ...) and its alert events."""
    fired = _fired(alerts)
    first = min((a.step for a in fired), default=None)
    first_crit = min((a.step for a in fired if a.severity == "critical"), default=None)
    onset, switch = meta["onset"], meta.get("switch")
    return {
        **{k: meta.get(k) for k in ("suite", "family", "scenario", "regime", "how", "seed", "D", "switch",
                                    "every_n_steps", "healthy", "probe_ok")},
        "onset": onset, "first": first, "first_critical": first_crit,
        "delay": None if (onset is None or first is None) else first - onset,
        "early_critical": first_crit is not None and (onset is None or first_crit < onset),
        "before_bug": first is not None and switch is not None and switch > 0 and first < switch,
        "rules": sorted({a.rule for a in fired}),
        "severities": sorted({a.severity for a in fired}),
    }


def _line(r: Dict[str, Any]) -> str:
    probe = "" if r["probe_ok"] is None else f", probe {'ok' if r['probe_ok'] else 'NOT HEALTHY'}"
    return (f"  {r['scenario']:<34} {r.get('how') or '':<9} seed {r['seed']}: onset {r['onset']}, first alert "
            f"{r['first']}, first critical {r['first_critical']}, rules {r['rules']}{probe}")


# ------------------------------------------------------------------------------------------------- suites
def _lightning_callback() -> Any:
    """The callback a Lightning run of either suite is watched with: default settings, ``z`` / ``z_pos`` from what
    ``training_step`` returns, points kept in memory."""
    from spherewatch.integrations.lightning import MonitorCallback

    return MonitorCallback(output_key="z", output_key_pos="z_pos", sinks=("memory",), warn=False, log_to_module=False)


#: What a trace says of a run when its suite does not say otherwise.
META_DEFAULTS: Dict[str, Any] = {"what": "", "regime": "constant", "how": None, "D": None, "steps": None,
                                 "switch": None, "loss_family": None, "inferred_loss_family": None, "probe_ok": None,
                                 "twin": None, "changes": []}


def _jobs(seeds: List[int], lightning: bool) -> List[tuple]:
    """``(how, seed)`` of one scenario's runs: plain PyTorch for every seed, then Lightning's Trainer for seed 0."""
    return [("torch", s) for s in seeds] + ([("lightning", 0)] if lightning else [])


def _watched(how: str, name: str, seed: int, root: str, plain: Any, under_lightning: Any) -> tuple:
    """Run scenario ``name`` as ``how`` says at the monitor's defaults: ``plain(name, monitor, seed=)`` with a
    ``Monitor``, or ``under_lightning(name, callback, seed=, root=)`` with the Lightning callback.
    Returns ``(run, monitor, the loss family the callback inferred or None)``."""
    if how == "torch":
        mon = sw.Monitor(sinks=("memory",), warn=False)
        run = plain(name, mon, seed=seed)
        mon.close()
        return run, mon, None
    cb = _lightning_callback()
    run = under_lightning(name, cb, seed=seed, root=root)
    return run, cb.monitor, (cb.inferred_loss_family or (None,))[0]


def _finish(rows: List[Dict[str, Any]], traces: Optional[str], mon: Any, meta: Dict[str, Any],
            extra: Dict[str, Any]) -> None:
    """One run done: its table row (printed as it comes) and, with ``--save-traces``, its trace."""
    meta = {**META_DEFAULTS, **meta, "every_n_steps": mon.config.every_n_steps}
    alerts = list(mon.sink("memory").alerts)
    rows.append(make_row(meta, alerts))
    print(_line(rows[-1]), flush=True)
    if traces:
        save_trace(traces, meta, records_of(mon), alerts, extra)


def run_families(names: Optional[List[str]], seeds: List[int], traces: Optional[str], lightning: bool = False,
                 root: str = ".") -> List[Dict[str, Any]]:
    from scenarios import families as fam

    chosen = [n for n in fam.SCENARIOS if names is None or n in names]
    # healthy runs first: their probes are the twins of the broken runs of the same seed (no retraining)
    chosen.sort(key=lambda n: fam.SCENARIOS[n].collapses)
    rows: List[Dict[str, Any]] = []
    for name in chosen:
        sc = fam.SCENARIOS[name]
        for how, seed in _jobs(seeds, lightning and name in LIGHTNING_FAMILIES):
            run, mon, inferred = _watched(how, name, seed, root, fam.run_scenario, fam.run_lightning)
            meta = {"suite": "families", "family": sc.family, "scenario": name, "what": sc.what, "regime": sc.regime,
                    "how": how if how != "torch" else None, "seed": seed, "D": fam.watched_width(sc),
                    "steps": sc.steps, "switch": sc.switch if sc.switch is not None else (sc.ramp[3] if sc.ramp else None),
                    "loss_family": fam.LOSS_FAMILY[sc.family], "inferred_loss_family": inferred,
                    "healthy": not sc.collapses, "onset": run.onset, "probe_ok": run.probe_ok, "twin": sc.twin,
                    "changes": run.changes}
            _finish(rows, traces, mon, meta,
                    {"probe": run.probe, "twin_probe": run.twin_probe, "losses_every_10": run.losses[::10]})
    return rows


def run_classic(names: Optional[List[str]], seeds: List[int], lightning: bool, traces: Optional[str],
                root: str) -> List[Dict[str, Any]]:
    from scenarios.digits_ssl import SCENARIOS, run_lightning, run_plain

    rows: List[Dict[str, Any]] = []
    for name in SCENARIOS:
        if names is not None and name not in names:
            continue
        sc = SCENARIOS[name]
        for how, seed in _jobs(seeds, lightning and name in LIGHTNING):
            run, mon, inferred = _watched(how, name, seed, root, run_plain, run_lightning)
            meta = {"suite": "classic", "family": sc.method, "scenario": name, "what": sc.what,
                    "how": how if how != "torch" else None, "seed": seed, "D": 32, "steps": 400,
                    "switch": run.switch, "inferred_loss_family": inferred, "healthy": not sc.collapses,
                    "onset": run.onset}
            _finish(rows, traces, mon, meta, {"probe": run.probe, "twin_probe": None})
    return rows


def run_sentences(names: Optional[List[str]], seeds: List[int], traces: Optional[str], root: str) -> List[Dict]:
    from scenarios.sentence_pairs import SENTENCE_SCENARIOS, run_sentence_scenario

    from spherewatch.integrations.hf import MonitorTrainerCallback

    rows: List[Dict[str, Any]] = []
    for name in SENTENCE_SCENARIOS:
        if names is not None and name not in names:
            continue
        for seed in seeds:
            cb = MonitorTrainerCallback(sinks=("memory",), warn=False)
            run = run_sentence_scenario(name, cb, root, seed=seed)
            meta = {"suite": "sentence", "family": "sentence-transformers", "scenario": name,
                    "what": getattr(SENTENCE_SCENARIOS[name], "what", ""), "seed": seed,
                    "switch": getattr(run, "switch", None), "loss_family": "contrastive",
                    "healthy": not SENTENCE_SCENARIOS[name].collapses, "onset": run.onset}
            _finish(rows, traces, cb.monitor, meta, {"probe": getattr(run, "probe", None)})
    return rows


# ------------------------------------------------------------------------------------------------- replay
def replay_trace(doc: Dict[str, Any], with_loss_family: bool = False, marks: bool = True) -> List[Any]:
    """The alert events the CURRENT default rules emit on a trace's records: the records go, in step order,
    through :class:`spherewatch.alerting.AlertPipeline` -- what ``Monitor.step`` calls at each evaluation.
    ``with_loss_family``: configure the trace's ``loss_family`` (the runs themselves used the default, unset, or
    under an adapter the family it inferred, ``inferred_loss_family``)."""
    from spherewatch.alerting import AlertPipeline
    from spherewatch.faults import FaultReporter

    # at defaults a run under an adapter had the family the adapter inferred (from the model's loss module)
    family = _loss_family(doc) if with_loss_family else doc.get("inferred_loss_family")
    extra = {"loss_family": family} if family else {}
    config = sw.MonitorConfig(every_n_steps=int(doc.get("every_n_steps") or 50), warn=False, **extra)
    box: Dict[str, Any] = {}
    faults = FaultReporter(config, lambda alerts: box["pipeline"].dispatch(alerts), lambda: box.get("step"))
    pipeline = box["pipeline"] = AlertPipeline(config, [], faults)

    def update(step: int, values: Dict[str, float]) -> List[Any]:
        box["step"] = step
        return pipeline.update(step, values)

    # the recipe changes the run marked (``marks=False``: as if the user had not told the monitor)
    events = replay_records(doc, update, pipeline.engine.mark_change, marks)
    pipeline.close(0.1)
    return events


def _loss_family(doc: Dict[str, Any]) -> Optional[str]:
    """The loss family of a trace's model family (``tests/scenarios/families.py``'s LOSS_FAMILY, the current mapping,
    also for the classic suite's methods; sentence-transformers' MNRL is contrastive); else what the trace says."""
    try:
        from scenarios.families import LOSS_FAMILY
    except ImportError:
        LOSS_FAMILY = {}
    if doc.get("suite") == "sentence":
        return "contrastive"
    return LOSS_FAMILY.get(doc.get("family")) or doc.get("loss_family")


def _relabel(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The onset and the healthy check recomputed from the trace's probes with the CURRENT definitions of
    ``tests/scenarios/families.py`` (when it is importable and the trace has its twin's probe)."""
    if doc.get("suite") != "families" or not doc.get("probe"):
        return doc
    try:
        from scenarios.families import SCENARIOS, onset_vs_twin, probe_ok
    except ImportError:
        return doc
    doc = dict(doc)
    probe, twin = [tuple(p) for p in doc["probe"]], doc.get("twin_probe")
    twin = [tuple(p) for p in twin] if twin else None
    sc = SCENARIOS.get(doc["scenario"])
    if doc.get("healthy"):
        doc["probe_ok"] = probe_ok(probe, twin)
    elif twin is not None and sc is not None:
        doc["onset"] = onset_vs_twin(probe, twin, doc["switch"] or 0)
    return doc


def replay(directory: str, names: Optional[List[str]] = None, with_loss_family: bool = False,
           show_messages: bool = False, marks: bool = True) -> List[Dict[str, Any]]:
    rows = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path) as f:
            doc = json.load(f)
        if doc.get("format") != TRACE_FORMAT or (names is not None and doc["scenario"] not in names):
            continue
        events = replay_trace(doc, with_loss_family, marks)
        rows.append(make_row(_relabel(doc), events))
        was = [(a["rule"], a["step"], a["severity"]) for a in doc.get("alerts", []) if a.get("status") == "fired"
               and a.get("kind", "collapse") == "collapse"]
        now = [(a.rule, a.step, a.severity) for a in _fired(events)]
        rows[-1]["same_as_recorded"] = was == now
        print(_line(rows[-1]) + ("" if was == now else "  (differs from the recorded run)"), flush=True)
        if show_messages:
            for a in _fired(events):
                print(f"      {a}")
    if rows:
        same = sum(r["same_as_recorded"] for r in rows)
        print(f"\n{same} of {len(rows)} traces: the replayed alerts are the ones the run recorded (different rules, "
              "or a different spherewatch, explain the others)")
    return rows


# -------------------------------------------------------------------------------------------------- tables
def _summary(rs: List[Dict[str, Any]]) -> Dict[str, Any]:
    pos = [r for r in rs if r["onset"] is not None]
    neg = [r for r in rs if r["onset"] is None]
    tp = sum(r["first"] is not None for r in pos)
    fp = sum(r["first"] is not None for r in neg)
    delays = [(r["delay"], r["every_n_steps"]) for r in pos if r["delay"] is not None]
    dmax = max(delays, default=None, key=lambda d: d[0] / d[1])
    return {
        "runs": len(rs), "pos": len(pos), "TP": tp, "FP": fp, "FN": len(pos) - tp, "TN": len(neg) - fp,
        "delay": None if dmax is None else dmax[0], "intervals": None if dmax is None else dmax[0] / dmax[1],
        "late": sum(d > e for d, e in delays), "early": sum(r["early_critical"] for r in pos),
        "crit_fp": sum(r["first_critical"] is not None for r in neg),
        "before_bug": sum(r["before_bug"] for r in rs),
        "not_healthy": sum(r["probe_ok"] is False for r in rs),
        "delays": [d for d, _ in delays],
    }


def _fmt(x, spec="") -> str:
    return "" if x is None else format(x, spec)


def table(rows: List[Dict[str, Any]], by: str = "family") -> str:
    head = ("| family | runs | positives | TP | FP | FN | TN | max delay (steps) | max delay (intervals) | "
            "late (> 1 interval) | critical before onset | critical on negatives |")
    if by == "scenario":
        head = head.replace("| family |", "| scenario | delays (steps) |")
    out = [head, "|" + " --- |" * (head.count("|") - 1)]
    def key(r: Dict[str, Any]) -> str:
        if by != "scenario":
            return r[by]
        tags = [t for t in (r.get("suite") if r.get("suite") == "classic" else None, r.get("how")) if t]
        return r[by] + (f" [{', '.join(tags)}]" if tags else "")

    keys: List[str] = []
    for r in rows:
        if key(r) not in keys:
            keys.append(key(r))
    for k in keys:
        rs = [r for r in rows if key(r) == k]
        s = _summary(rs)
        lead = f"| {k} |" + (f" {', '.join(map(str, s['delays']))} |" if by == "scenario" else "")
        out.append(f"{lead} {s['runs']} | {s['pos']} | {s['TP']} | {s['FP']} | {s['FN']} | {s['TN']} | "
                   f"{_fmt(s['delay'])} | {_fmt(s['intervals'], '.1f')} | {s['late']} | {s['early']} | "
                   f"{s['crit_fp']} |")
    t = _summary(rows)
    out.append(f"\nTotal: {t['runs']} runs, {t['pos']} collapsed (probe): TP {t['TP']}, FN {t['FN']}, FP {t['FP']}, "
               f"TN {t['TN']}; alerts later than one sampling interval after the onset: {t['late']}; runs with a "
               f"critical alert before the onset: {t['early']}; negatives with a critical alert: {t['crit_fp']}; "
               f"broken runs alerted before the bug was switched on: {t['before_bug']}; healthy runs the probe "
               f"does not confirm: {t['not_healthy']}.")
    return "\n".join(out)


def report(rows: List[Dict[str, Any]]) -> str:
    return ("Per family\n\n" + table(rows, "family") + "\n\nPer scenario\n\n" + table(rows, "scenario"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed (default 0): seeds K..K+N-1")
    p.add_argument("--only", nargs="*", default=None, help="scenario names")
    p.add_argument("--suites", nargs="*", default=["families", "classic", "sentence"],
                   choices=["families", "classic", "sentence"])
    p.add_argument("--no-lightning", action="store_true", help="skip the Lightning runs (classic; Barlow Twins in families)")
    p.add_argument("--save-traces", metavar="DIR", default=None, help="write one JSON trace per run into DIR")
    p.add_argument("--replay", metavar="DIR", default=None,
                   help="no training: re-evaluate DIR's traces through the current default rules")
    p.add_argument("--loss-family", action="store_true",
                   help="replay: configure each trace's loss_family (what its model family is: contrastive, "
                        "non_contrastive, redundancy_reduction, self_distillation, clustering, supervised)")
    p.add_argument("--messages", action="store_true", help="replay: print every fired alert's line")
    p.add_argument("--unmarked", action="store_true",
                   help="replay: without the recipe changes the runs marked (Monitor.mark_change), as if unmarked")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the rows as JSON")
    a = p.parse_args(argv)
    t0 = time.time()
    logging.getLogger("spherewatch").setLevel(logging.ERROR)  # the alerts are in the rows; not each line
    if a.replay:
        rows = replay(a.replay, a.only, a.loss_family, a.messages, not a.unmarked)
    else:
        torch.set_num_threads(1)
        seeds = list(range(a.seed_start, a.seed_start + a.seeds))
        rows = []
        with tempfile.TemporaryDirectory() as root:
            if "families" in a.suites:
                rows += run_families(a.only, seeds, a.save_traces, not a.no_lightning, root)
            if "classic" in a.suites:
                rows += run_classic(a.only, seeds, not a.no_lightning, a.save_traces, root)
            if "sentence" in a.suites:
                rows += run_sentences(a.only, seeds, a.save_traces, root)
    print()
    print(report(rows))
    print(f"\n{len(rows)} runs in {time.time() - t0:.0f} s (torch {torch.__version__}, 1 thread, spherewatch "
          f"{sw.__version__})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else o)


if __name__ == "__main__":
    main()
