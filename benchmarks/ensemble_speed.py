"""Speed of the Plan2Explore ensemble: one vmapped call over the K members against a Python loop.

    OMP_NUM_THREADS=1 python benchmarks/ensemble_speed.py

`PredictorEnsemble.forward` (stacked parameters, `torch.func.vmap` of `functional_call`) against
`forward_loop` (the same parameters, one `functional_call` per member) and against K separate
`nn.Module`s called in a loop (what one writes without torch.func), at the shapes planning and
training use: the demo's RSSM (deter 128, stoch 30, action 1) gives inputs of 159 features and
a 128-dim embedding target; N = 1200 rows is one CEM iteration of the demo (J = 100 candidates x
H = 12 steps), N = 12000 PlaNet's (J = 1000). Each cell is the median of `--repeats` calls after
a warm-up, forward only (`torch.no_grad`, as in planning) and forward + backward (training). The
two outputs are checked equal to float tolerance first.

Writes the table to stdout and `benchmarks/results/ensemble_speed.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from latentplan.worldmodels import MLP, EnsembleConfig, PredictorEnsemble


def timed(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1e3


def modules_of(ens: PredictorEnsemble) -> list[MLP]:
    """K ordinary MLPs holding the ensemble's member weights."""
    mods = []
    for k in range(ens.members):
        m = MLP(ens.in_dim, ens.out_dim, ens.config.hidden, ens.config.layers)
        m.load_state_dict({n.replace("__", "."): p[k].detach() for n, p in ens.params.items()})
        mods.append(m)
    return mods


def row(k: int, n: int, hidden: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ens = PredictorEnsemble(EnsembleConfig(members=k, hidden=hidden), 159, 128, generator=g)
    mods = modules_of(ens)
    x = torch.randn(n, 159, generator=g)
    with torch.no_grad():
        err = float((ens(x) - ens.forward_loop(x)).abs().max())
        fwd = {
            "vmap": timed(lambda: ens(x), repeats),
            "loop (functional_call)": timed(lambda: ens.forward_loop(x), repeats),
            "loop (modules)": timed(lambda: torch.stack([m(x) for m in mods]), repeats),
        }
    y = torch.randn(n, 128, generator=g)

    def train_vmap():
        ens.zero_grad()
        ens.loss(x, y).backward()

    def train_loop():
        for m in mods:
            m.zero_grad()
        sum(0.5 * ((m(x) - y) ** 2).sum(-1).mean() for m in mods).backward()

    bwd = {"vmap": timed(train_vmap, repeats), "loop (modules)": timed(train_loop, repeats)}
    return {"members": k, "rows": n, "hidden": hidden, "max_abs_diff": err, "forward_ms": fwd, "train_step_ms": bwd}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/ensemble_speed.json")
    args = p.parse_args()
    rows = [row(k, n, 200, args.repeats) for k in (5, 10) for n in (1200, 12000)]
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}, torch {torch.__version__}")
    print("| K | rows | vmap ms | loop ms (functional_call) | loop ms (modules) | speed-up vs modules | "
          "train vmap ms | train loop ms | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        f, b = r["forward_ms"], r["train_step_ms"]
        print(f"| {r['members']} | {r['rows']} | {f['vmap']:.2f} | {f['loop (functional_call)']:.2f} | "
              f"{f['loop (modules)']:.2f} | {f['loop (modules)'] / f['vmap']:.2f}x | {b['vmap']:.2f} | "
              f"{b['loop (modules)']:.2f} | {r['max_abs_diff']:.1e} |")
    meta = {"threads": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0], "torch": torch.__version__,
            "machine": platform.machine(), "repeats": args.repeats}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
