"""The default head rules (issue 18) on DINO and SwAV trained on scikit-learn's digits: the detection table.

Scenarios (``tests/scenarios/heads.py``): healthy DINO (``examples/dino.py``: centring, teacher-temperature warm-up,
prototypes frozen for 50 steps) and healthy SwAV (Sinkhorn, prototypes frozen), and each collapse switched on at
step 200 of 400: DINO's centring removed (one prototype), DINO's teacher temperature 0.04 -> 1.0 (uniform output),
SwAV's Sinkhorn removed (one prototype). The monitor runs at its DEFAULT settings (every 50 steps, default rules)
with two taps, ``backbone`` (the embeddings) and ``head`` (``observe_head``). The onset is measured without the
monitor: a probe on the teacher's assignments of all 1797 digits against the healthy twin of the run (same seed).

Per scenario: runs, positives (the probe found a collapse), TP (a head alert at most one interval after the onset)
/ FP (a head alert on a run without collapse, or before the switch) / FN / TN, the largest delay from the onset to
the first head alert (target <= one interval; negative: the alert came at the switch, before the probe saw it),
runs with a critical head alert before the onset (target 0), the head rules that fired, and the alerts of the
backbone tap (the embeddings' rules) for comparison.

    python benchmarks/heads.py                     # 3 seeds, every scenario (~5 min on 2 loaded cores)
    python benchmarks/heads.py --seeds 1 --only dino dino_no_centering
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import torch  # noqa: E402

import spherewatch as sw  # noqa: E402


def run(name: str, seed: int, every: int) -> Dict:
    from scenarios.heads import run_head_scenario

    overrides = {} if every == 50 else {"every_n_steps": every}
    mon = sw.Monitor(sinks=("memory",), warn=False, **overrides)
    r = run_head_scenario(name, mon, seed=seed)
    mon.close()
    fired = [a for a in mon.alerts if a.status == "fired"]
    head = [a for a in fired if a.rule.startswith("head_")]
    first = min((a.step for a in head), default=None)
    crit = min((a.step for a in head if a.severity == "critical"), default=None)
    return {
        "name": name, "seed": seed, "onset": r.onset, "first": first,
        "delay": None if (r.onset is None or first is None) else first - r.onset,
        "early_critical": r.onset is not None and crit is not None and crit < r.onset,
        "before_switch": r.switch is not None and first is not None and first < r.switch,
        "rules": sorted({a.rule for a in head}),
        "backbone": sorted({a.rule for a in fired if not a.rule.startswith("head_")}),
        "every": mon.config.every_n_steps,
    }


def table(rows: List[Dict]) -> str:
    lines = ["| scenario | runs | positives | TP | FP | FN | TN | max delay (steps) | critical before onset | head rules "
             "fired | backbone rules fired |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["name"] for r in rows):
        rs = [r for r in rows if r["name"] == name]
        pos = [r for r in rs if r["onset"] is not None]
        tp = sum(1 for r in pos if r["first"] is not None and r["delay"] <= r["every"])
        fn = len(pos) - tp
        # a false alarm: a head alert on a run without collapse, or before the switch of a collapsing one
        fp = sum(1 for r in rs if (r["onset"] is None and r["first"] is not None) or r["before_switch"])
        tn = sum(1 for r in rs if r["onset"] is None and r["first"] is None)
        delays = [r["delay"] for r in pos if r["delay"] is not None]
        lines.append(f"| {name} | {len(rs)} | {len(pos)} | {tp} | {fp} | {fn} | {tn} | "
                     f"{max(delays) if delays else '-'} | {sum(r['early_critical'] for r in rs)} | "
                     f"{', '.join(sorted({x for r in rs for x in r['rules']})) or '-'} | "
                     f"{', '.join(sorted({x for r in rs for x in r['backbone']})) or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    from scenarios.heads import HEAD_SCENARIOS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--every", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    t0 = time.time()
    for name in args.only or list(HEAD_SCENARIOS):
        for seed in range(args.seeds):
            rows.append(run(name, seed, args.every))
            r = rows[-1]
            print(f"{name} seed {seed}: onset {r['onset']}, first head alert {r['first']}, rules {r['rules']}, "
                  f"backbone {r['backbone']}", flush=True)
    out = table(rows)
    print(f"\n{out}\n\n({len(rows)} runs, every {args.every} steps, {time.time() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    main()
