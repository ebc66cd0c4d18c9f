"""Replay saved metric traces through alert rules offline: the confusion table of the default rules (and of the rules
before issue 17) without retraining anything.

Reads two trace formats:

* this worktree's ``benchmarks/rule_traces.py`` JSON files (one run per file);
* the traces ``benchmarks/scenarios.py`` saves (see the README.txt beside them), read by :func:`load_traces`.

Each run's logged values are fed to an :class:`~spherewatch.alerts.AlertEngine` at the monitor's default cadence
(``--every``, 50: the first logged step, then every multiple of 50 that was logged), so traces recorded every 10 steps
replay exactly what a default monitor would have seen.

    python benchmarks/replay_rules.py DIR [DIR ...] [--every 50] [--rules new|old|both] [-v]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Any, Dict, List, Optional

from spherewatch.alerts import AlertEngine, default_rules

#: The default rules before issue 17 (for the "old" column).
OLD_RULE_SETTINGS = {
    "uniformity_degradation": dict(kind="drift", metric="uniformity", direction="rise", collapsed=0.0, fraction=0.25,
                                   z=4.0, patience=1, hysteresis=0.1, severity="warning"),
    "rank_collapse": dict(kind="drift", metric="effective_rank", direction="fall", collapsed=1.0, fraction=0.25, z=4.0,
                          patience=1, hysteresis=0.1, severity="warning"),
    "uniformity_degradation_persists": dict(kind="drift", metric="uniformity", direction="rise", collapsed=0.0,
                                            fraction=0.25, z=4.0, patience=3, hysteresis=0.1, severity="critical"),
    "rank_collapse_persists": dict(kind="drift", metric="effective_rank", direction="fall", collapsed=1.0,
                                   fraction=0.25, z=4.0, patience=3, hysteresis=0.1, severity="critical"),
    "mean_cosine_collapse": dict(kind="collapse", metric="mean_cosine", collapsed=1.0, margin=0.1, patience=1,
                                 hysteresis=0.5, severity="warning"),
    "uniformity_collapse": dict(kind="collapse", metric="uniformity", collapsed=0.0, margin=0.4, patience=2,
                                hysteresis=0.5, severity="critical"),
    "rank_one_collapse": dict(kind="collapse", metric="effective_rank", collapsed=1.0, margin=0.5, patience=2,
                              hysteresis=0.5, severity="critical"),
    "normalized_std_collapse": dict(kind="collapse", metric="normalized_std", collapsed=0.0, margin=0.1, relative=True,
                                    patience=2, hysteresis=0.5, severity="critical"),
    "nonfinite": dict(kind="nonfinite", metric="*", severity="critical"),
}


def old_rules() -> List[Dict[str, Any]]:
    return [{"name": n, **s} for n, s in OLD_RULE_SETTINGS.items()]


def _norm_trace(d: Dict[str, Any], path: str) -> Optional[Dict[str, Any]]:
    """One run as ``{name, family, seed, onset, metrics: [(step, {key: value})], tags}``; None if not a trace."""
    metrics = d.get("metrics") or d.get("records") or d.get("values") or d.get("scalars")
    if metrics is None:
        return None
    rows = []
    if isinstance(metrics, dict):  # {step: {key: value}}
        rows = sorted((int(s), v) for s, v in metrics.items())
    else:
        for item in metrics:
            if isinstance(item, dict):
                step = int(item.get("step"))
                vals = item.get("values") or {k: v for k, v in item.items() if k != "step"}
            else:
                step, vals = int(item[0]), item[1]
            rows.append((step, vals))
    name = d.get("scenario") or d.get("name") or os.path.basename(path)
    if d.get("regime") and d.get("regime") != "constant" and d["regime"] not in name:
        name = f"{name}[{d['regime']}]"
    return {
        "name": name, "family": d.get("family") or d.get("loss_family"), "seed": d.get("seed"),
        "loss_family": d.get("loss_family") or d.get("family"),
        "onset": d.get("onset"), "metrics": rows, "path": path,
        "collapses": d.get("collapses", d.get("onset") is not None),
        "regime_change": d.get("regime_change") or d.get("change_step"),
    }


def load_traces(dirs: List[str]) -> List[Dict[str, Any]]:
    out = []
    for d in dirs:
        files = sorted(glob.glob(os.path.join(d, "**", "*.json"), recursive=True))
        files += sorted(glob.glob(os.path.join(d, "**", "*.jsonl"), recursive=True))
        for f in files:
            try:
                if f.endswith(".jsonl"):
                    with open(f) as fh:
                        recs = [json.loads(line) for line in fh if line.strip()]
                    for r in recs:
                        t = _norm_trace(r, f)
                        if t:
                            out.append(t)
                    continue
                with open(f) as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            for r in (data if isinstance(data, list) else data.get("runs", [data])):
                t = _norm_trace(r, f) if isinstance(r, dict) else None
                if t:
                    out.append(t)
    return out


def replay(trace: Dict[str, Any], rules, every: int = 50, loss_family: Optional[str] = None) -> List[Any]:
    engine = AlertEngine(rules, loss_family=loss_family)
    alerts = []
    first = None
    for step, vals in trace["metrics"]:
        if first is None:
            first = step
        elif step % every:
            continue
        alerts += engine.update(step, vals)
    return alerts


def row(trace, alerts, every):
    fired = [a for a in alerts if a.status == "fired" and a.kind == "collapse"]
    collapse = [a for a in fired if a.severity != "info"]
    info = [a for a in fired if a.severity == "info"]
    first = min((a.step for a in collapse), default=None)
    crit = min((a.step for a in collapse if a.severity == "critical"), default=None)
    onset = trace["onset"]
    return dict(name=trace["name"], seed=trace["seed"], family=trace["family"], onset=onset, first=first,
                first_critical=crit, delay=None if onset is None or first is None else first - onset,
                early_critical=onset is not None and crit is not None and crit < onset,
                critical_healthy=onset is None and crit is not None, info=len(info),
                rules=sorted({a.rule for a in collapse}), every=every)


def table(rows) -> str:
    out = ["| scenario | family | runs | collapsed (probe) | TP | FN | FP | TN | delay steps (max; each) | "
           "delay intervals (max) | critical before onset | info events |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in rows:
        if r["name"] not in keys:
            keys.append(r["name"])
    tot = dict(TP=0, FN=0, FP=0, TN=0, late=0, early=0)
    for k in keys:
        rs = [r for r in rows if r["name"] == k]
        pos = [r for r in rs if r["onset"] is not None]
        neg = [r for r in rs if r["onset"] is None]
        tp = sum(r["first"] is not None for r in pos)
        fp = sum(r["first"] is not None for r in neg)
        delays = [r["delay"] for r in pos if r["delay"] is not None]
        late = sum(d > r["every"] for r, d in ((r, r["delay"]) for r in pos) if d is not None)
        early = sum(r["early_critical"] for r in rs)
        for kk, v in dict(TP=tp, FN=len(pos) - tp, FP=fp, TN=len(neg) - fp, late=late, early=early).items():
            tot[kk] += v
        dl = "" if not delays else f"{max(delays)} ({', '.join(map(str, delays))})"
        iv = "" if not delays else f"{max(delays) / rs[0]['every']:.1f}"
        out.append(f"| {k} | {rs[0]['family']} | {len(rs)} | {len(pos)} | {tp} | {len(pos) - tp} | {fp} | "
                   f"{len(neg) - fp} | {dl} | {iv} | {early} | {sum(r['info'] for r in rs)} |")
    out.append(f"\nTotal: TP {tot['TP']}, FN {tot['FN']}, FP {tot['FP']}, TN {tot['TN']}; later than one interval: "
               f"{tot['late']}; critical before the onset: {tot['early']}.")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--rules", choices=("new", "old", "both"), default="both")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    traces = load_traces(a.dirs)
    print(f"{len(traces)} runs")
    for which in (("old", "new") if a.rules == "both" else (a.rules,)):
        rules = old_rules() if which == "old" else default_rules()
        rows = []
        for t in traces:
            alerts = replay(t, rules, a.every, t["loss_family"] if which == "new" and t["loss_family"] in _FAMILIES else None)
            rows.append(row(t, alerts, a.every))
            if a.verbose and (alerts or t["onset"] is not None):
                print(f"[{which}] {t['name']} seed {t['seed']} onset {t['onset']}:")
                for al in alerts:
                    print(f"    {al.status} {al.severity} {al.rule} @ {al.step}: {al.message[:200]}")
        print(f"\n## {which} rules\n")
        print(table(rows))


try:
    from spherewatch.alerts.advice import LOSS_FAMILIES as _FAMILIES
except ImportError:  # pragma: no cover
    _FAMILIES = ()

if __name__ == "__main__":
    main()
