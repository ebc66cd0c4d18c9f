"""The default alert rules on real frameworks and real data: a confusion table with detection delays per scenario.

Image SSL on scikit-learn's bundled digits (SimCLR, SimSiam, BYOL, VICReg written from the papers; plain PyTorch,
and Lightning's real ``Trainer`` for the runs marked ``[L]``) and sentence-transformers fine-tunes of a tiny BERT
built from a config with a locally trained WordLevel tokenizer (through ``MonitorTrainerCallback``). Every run uses
the monitor at its DEFAULT settings (every 50 steps, default rules). The onset is measured without the monitor on
a fixed probe (``tests/scenarios/digits_ssl.py``, ``tests/scenarios/sentence_pairs.py``).

Per scenario: runs, runs whose probe found a collapse (positives), alerted runs, true/false positives and
negatives, the delay from the onset to the first alert (max over runs; target <= one sampling interval = 50
steps), and runs with a critical alert before the onset (target 0).

    python benchmarks/scenarios.py                 # 3 seeds, all scenarios (~10 min on 2 loaded cores)
    python benchmarks/scenarios.py --seeds 1 --only simclr simsiam_no_stopgrad --no-sentence --no-lightning
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import spherewatch as sw  # noqa: E402

LIGHTNING = ("simclr", "simsiam_no_stopgrad")  # also run under Lightning's Trainer (seed 0)


def _row(name: str, how: str, seed: int, onset, alerts: List, every: int) -> Dict:
    collapse = [a for a in alerts if getattr(a, "kind", "collapse") == "collapse"]
    first = min((a.step for a in collapse), default=None)
    first_crit = min((a.step for a in collapse if a.severity == "critical"), default=None)
    return {
        "name": name, "how": how, "seed": seed, "onset": onset, "first": first, "first_critical": first_crit,
        "delay": None if (onset is None or first is None) else first - onset,
        "early_critical": onset is not None and first_crit is not None and first_crit < onset,
        "rules": sorted({a.rule for a in collapse}), "every": every,
    }


def run_images(names, seeds, lightning: bool, root: str) -> List[Dict]:
    from scenarios.digits_ssl import SCENARIOS, run_lightning, run_plain

    rows = []
    for name in names:
        if name not in SCENARIOS:
            continue
        for seed in seeds:
            mon = sw.Monitor(sinks=("memory",), warn=False)
            run = run_plain(name, mon, seed=seed)
            mon.close()
            rows.append(_row(name, "torch", seed, run.onset, list(mon.alerts), mon.config.every_n_steps))
            print(_line(rows[-1]), flush=True)
        if lightning and name in LIGHTNING:
            from spherewatch.integrations.lightning import MonitorCallback

            cb = MonitorCallback(output_key="z", output_key_pos="z_pos", sinks=("memory",), warn=False,
                                 log_to_module=False)
            run = run_lightning(name, cb, seed=0, root=root)
            rows.append(_row(name, "lightning", 0, run.onset, list(cb.monitor.alerts), cb.config.every_n_steps))
            print(_line(rows[-1]), flush=True)
    return rows


def run_sentences(names, seeds, root: str) -> List[Dict]:
    from scenarios.sentence_pairs import SENTENCE_SCENARIOS, run_sentence_scenario

    from spherewatch.integrations.hf import MonitorTrainerCallback

    rows = []
    for name in names:
        if name not in SENTENCE_SCENARIOS:
            continue
        for seed in seeds:
            cb = MonitorTrainerCallback(sinks=("memory",), warn=False)
            run = run_sentence_scenario(name, cb, root, seed=seed)
            rows.append(_row(name, "sentence-transformers", seed, run.onset, list(cb.monitor.alerts),
                             cb.config.every_n_steps))
            print(_line(rows[-1]), flush=True)
    return rows


def _line(r: Dict) -> str:
    return (f"  {r['name']:<30} {r['how']:<22} seed {r['seed']}: onset {r['onset']}, first alert {r['first']}, "
            f"first critical {r['first_critical']}, rules {r['rules']}")


def table(rows: List[Dict]) -> str:
    out = ["| scenario | framework | runs | collapsed (probe) | alerted | TP | FN | FP | TN | delay onset -> alert "
           "(steps, max) | critical before onset |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    keys = []
    for r in rows:
        if (r["name"], r["how"]) not in keys:
            keys.append((r["name"], r["how"]))
    tot = dict(TP=0, FN=0, FP=0, TN=0, late=0, early=0)
    for name, how in keys:
        rs = [r for r in rows if (r["name"], r["how"]) == (name, how)]
        pos = [r for r in rs if r["onset"] is not None]
        tp = sum(r["first"] is not None for r in pos)
        fn = len(pos) - tp
        neg = [r for r in rs if r["onset"] is None]
        fp = sum(r["first"] is not None for r in neg)
        tn = len(neg) - fp
        delays = [r["delay"] for r in pos if r["delay"] is not None]
        early = sum(r["early_critical"] for r in rs)
        late = sum(d > r["every"] for r, d in ((r, r["delay"]) for r in pos) if d is not None)
        for k, v in dict(TP=tp, FN=fn, FP=fp, TN=tn, late=late, early=early).items():
            tot[k] += v
        delay = "" if not delays else f"{max(delays)} ({', '.join(map(str, delays))})"
        out.append(f"| {name} | {how} | {len(rs)} | {len(pos)} | {sum(r['first'] is not None for r in rs)} | {tp} | "
                   f"{fn} | {fp} | {tn} | {delay} | {early} |")
    out.append(f"\nTotal: TP {tot['TP']}, FN {tot['FN']}, FP {tot['FP']}, TN {tot['TN']}; alerts later than one sampling "
               f"interval after the onset: {tot['late']}; runs with a critical alert before the onset: {tot['early']}.")
    return "\n".join(out)


def main(argv=None) -> None:
    from scenarios.digits_ssl import SCENARIOS
    from scenarios.sentence_pairs import SENTENCE_SCENARIOS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None, help="scenario names")
    p.add_argument("--no-sentence", action="store_true")
    p.add_argument("--no-lightning", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    names = a.only or [*SCENARIOS, *SENTENCE_SCENARIOS]
    seeds = list(range(a.seeds))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as root:
        rows = run_images(names, seeds, not a.no_lightning, root)
        if not a.no_sentence:
            rows += run_sentences(names, seeds, root)
    print()
    print(table(rows))
    print(f"\n{len(rows)} runs in {time.time() - t0:.0f} s (torch {torch.__version__}, 1 thread)")


if __name__ == "__main__":
    main()
