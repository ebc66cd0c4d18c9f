"""Record metric traces of small digits SSL runs (monitor every 10 steps + an independent probe), for replaying alert
rules offline (``benchmarks/replay_rules.py``). A trace is one JSON file per run:

    {"name", "family", "seed", "dim", "collapses", "onset", "switch", "every": 10,
     "metrics": [[step, {key: value}], ...], "probe": [[step, knn, pr, var], ...]}

Scenarios beyond ``tests/scenarios/digits_ssl.py``: step-0 collapse (SimSiam without stop-gradient from the first
step) at D in {32, 512, 2048} with the onset measured against a healthy twin at the same step; long runs with LR
warm-up + cosine decay. (The ``barlow`` loss here is a sketch: with these settings it collapses the digits encoder,
so it has no healthy scenario; ``tests/scenarios/families.py`` has the tuned families.)

    python benchmarks/rule_traces.py OUTDIR [--only NAME ...] [--seeds 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import torch  # noqa: E402
from scenarios import digits_ssl as ds  # noqa: E402

import spherewatch as sw  # noqa: E402


def barlow(z1, z2, lam=5e-3):
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
    b = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
    c = a.T @ b / n
    on = (torch.diagonal(c) - 1).pow(2).sum()
    off = (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    return on + lam * off


# name: (method, family, collapses, dim, steps, switch, change, schedule)
RUNS = {
    "simsiam_d32": ("simsiam", "non_contrastive", False, 32, 400, None, {}, None),
    "simclr_d32": ("simclr", "contrastive", False, 32, 400, None, {}, None),
    "byol_d32_warmup": ("byol", "non_contrastive", False, 32, 600, None, {}, "warmup_cosine"),
    "simclr_d32_long_cosine": ("simclr", "contrastive", False, 32, 2000, None, {}, "warmup_cosine"),
    "simsiam_d512": ("simsiam", "non_contrastive", False, 512, 300, None, {}, None),
    "simsiam_d2048": ("simsiam", "non_contrastive", False, 2048, 300, None, {}, None),
    "step0_d32": ("simsiam", "non_contrastive", True, 32, 300, 1, {"stopgrad": False}, None),
    "step0_d512": ("simsiam", "non_contrastive", True, 512, 300, 1, {"stopgrad": False}, None),
    "step0_d2048": ("simsiam", "non_contrastive", True, 2048, 300, 1, {"stopgrad": False}, None),
    "simsiam_nostop_200": ("simsiam", "non_contrastive", True, 32, 400, 200, {"stopgrad": False}, None),
    "simclr_narrow_200": ("simclr", "contrastive", True, 32, 400, 200, {"narrow": 2}, None),
    "simsiam_wd_200": ("simsiam", "non_contrastive", True, 32, 400, 200, {"weight_decay": 0.5}, None),
}


def lr_factor(schedule, step, steps):
    if schedule == "warmup_cosine":
        w = max(1, steps // 10)
        if step <= w:
            return step / w
        return 0.5 * (1 + math.cos(math.pi * (step - w) / (steps - w)))
    return 1.0


def run(name, seed, *, switch_override=None, healthy_twin=False):
    method, family, collapses, dim, steps, switch, change, schedule = RUNS[name]
    if healthy_twin:
        collapses, change = False, {}
    x, _ = ds.digits()
    torch.manual_seed(seed)
    model = ds.SSLMethod("simclr" if method == "barlow" else method, dim=dim)
    if method == "barlow":
        model.method = "barlow"
    lr0 = ds.LR.get(method, 0.02 if method == "barlow" else 0.05)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr0, momentum=0.9,
                          weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    probe = ds.Probe(seed)
    mon = sw.Monitor(sinks=("memory",), warn=False, every_n_steps=10, alerts=False)
    for step in range(1, steps + 1):
        if collapses and step == switch:
            ds._apply(model, opt, change, lr0)
        if schedule:
            for gr in opt.param_groups:
                gr["lr"] = lr0 * lr_factor(schedule, step, steps)
        idx = torch.randint(0, len(x), (ds.BATCH,), generator=g)
        xb = x[idx]
        x1, x2 = ds.augment(xb, g), ds.augment(xb, g)
        if method == "barlow":
            z1, z2 = model.embed(x1), model.embed(x2)
            loss = barlow(z1, z2)
        else:
            loss, z1, z2 = model(x1, x2)
        opt.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            loss.backward()
            opt.step()
        model.after_step()
        mon.observe(z1.detach(), z2.detach())
        mon.step(step)
        if step % 10 == 0 or step == 1:
            probe(model, step)
    metrics = [[s, {k: float(v) for k, v in vals.items()}] for s, vals in mon.sink("memory").scalars]
    mon.close()
    return dict(name=name, family=family, seed=seed, dim=dim, collapses=collapses, switch=switch if collapses else None,
                every=10, metrics=metrics, probe=probe.history, method=method, schedule=schedule)


def onset_vs_twin(tr, twin):
    """First probe step where the run is worse than its healthy twin at the same step (kNN lost a third of the way to
    chance, or participation ratio / total variance below 0.7 of the twin's)."""
    t = {h[0]: h for h in twin["probe"]}
    for s, k, p, v in tr["probe"]:
        if s not in t:
            continue
        _, k0, p0, v0 = t[s]
        if k < k0 - (k0 - 0.1) / 3 or p < 0.7 * p0 or v < 0.7 * v0:
            return s
    return None


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    for name in a.only or list(RUNS):
        for seed in range(a.seeds):
            t0 = time.time()
            tr = run(name, seed)
            if tr["collapses"]:
                if tr["switch"] == 1:
                    tr["onset"] = onset_vs_twin(tr, run(name, seed, healthy_twin=True))
                else:
                    p = ds.Probe(seed)
                    p.history = [tuple(h) for h in tr["probe"]]
                    tr["onset"] = p.onset(tr["switch"])
            else:
                tr["onset"] = None
            with open(os.path.join(a.out, f"{name}_s{seed}.json"), "w") as f:
                json.dump(tr, f)
            print(f"{name} seed {seed}: onset {tr['onset']} ({time.time() - t0:.0f} s)", flush=True)




def run_suite(out, seeds):
    """The existing digits scenarios (tests/scenarios/digits_ssl.py), recorded every 10 steps."""
    fam = {"simclr": "contrastive", "simsiam": "non_contrastive", "byol": "non_contrastive",
           "vicreg": "non_contrastive"}
    for name, sc in ds.SCENARIOS.items():
        for seed in range(seeds):
            mon = sw.Monitor(sinks=("memory",), warn=False, every_n_steps=10, alerts=False)
            r = ds.run_plain(name, mon, seed=seed)
            metrics = [[s, {k: float(v) for k, v in vals.items()}] for s, vals in mon.sink("memory").scalars]
            mon.close()
            tr = dict(name="suite_" + name, family=fam[sc.method], seed=seed, dim=32, collapses=sc.collapses,
                      switch=r.switch, onset=r.onset, every=10, metrics=metrics, probe=r.probe)
            with open(os.path.join(out, f"suite_{name}_s{seed}.json"), "w") as f:
                json.dump(tr, f)
            print(f"suite {name} seed {seed}: onset {r.onset}", flush=True)


if __name__ == "__main__" and os.environ.get("SUITE"):
    run_suite(sys.argv[1], int(os.environ.get("SEEDS", "2")))


if __name__ == "__main__" and not os.environ.get("SUITE"):
    main()
