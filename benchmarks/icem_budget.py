"""iCEM at about a third of CEM's model evaluations: which iCEM settings reach CEM's return.

    OMP_NUM_THREADS=1 python benchmarks/icem_budget.py --checkpoint runs/cartpole_long.pt --episodes 4

Pinneri et al. 2020 report iCEM reaching CEM's performance with 2.7-22x fewer samples. Here:
PlaNet-style CEM (H=12, I=5, J=100, K=10: 6,000 model evaluations per decision) against
several iCEM settings at about 2,000 evaluations per decision (3x fewer), on the same trained
cartpole-swingup model, the same env and planner seeds (seed + i), learned reward head,
single-threaded. Every cell reports the measured `info["model_evals"]` per decision.

Writes a table to stdout and `benchmarks/results/icem_budget.json`. With `--summarize FILE ...`
it runs nothing: it reads the rows of earlier runs (same seeds) and prints each cell's mean return
as a fraction of the 6k CEM cell's, with a 95 % paired bootstrap confidence interval
(`scipy.stats.bootstrap`) of the difference of returns per seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import latentplan as lp

H = 12
ICEM = dict(keep_elites=0.3, include_mean=True)


def cells() -> list[tuple[str, lp.CEM, bool]]:
    """`(label, planner, warm_start)`: CEM at 6k, then iCEM variants at ~2k evaluations."""
    return [
        ("CEM I5 J100 K10 (6k)", lp.CEM(horizon=H, iterations=5, candidates=100, elites=10), False),
        ("CEM I5 J33 K5 (2k)", lp.CEM(horizon=H, iterations=5, candidates=33, elites=5), False),
        ("iCEM I3 J54 K6 b2", lp.CEM(horizon=H, iterations=3, candidates=54, elites=6, noise_beta=2.0, **ICEM), True),
        ("iCEM I3 J54 K6 b1", lp.CEM(horizon=H, iterations=3, candidates=54, elites=6, noise_beta=1.0, **ICEM), True),
        ("iCEM I3 J54 K6 b2 std.5", lp.CEM(horizon=H, iterations=3, candidates=54, elites=6, noise_beta=2.0,
                                           warm_start_std=0.5, **ICEM), True),
        ("iCEM I4 J56 K6 b2 decay", lp.CEM(horizon=H, iterations=4, candidates=56, elites=6, noise_beta=2.0,
                                           population_decay=1.25, **ICEM), True),
        ("iCEM I2 J82 K8 b2", lp.CEM(horizon=H, iterations=2, candidates=82, elites=8, noise_beta=2.0, **ICEM), True),
        ("iCEM I3 J54 K6 b0.5", lp.CEM(horizon=H, iterations=3, candidates=54, elites=6, noise_beta=0.5, **ICEM), True),
        ("iCEM I3 J53 K6 b1", lp.CEM(horizon=H, iterations=3, candidates=53, elites=6, noise_beta=1.0, **ICEM), True),
        ("iCEM I4 J40 K6 b1", lp.CEM(horizon=H, iterations=4, candidates=40, elites=6, noise_beta=1.0, **ICEM), True),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/cartpole_long.pt")
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", type=int, default=None, help="indices of the cells to run")
    p.add_argument("--json", default="benchmarks/results/icem_budget.json")
    p.add_argument("--summarize", nargs="*", default=None, help="JSON files of earlier runs to compare; runs nothing")
    args = p.parse_args()
    if args.summarize:
        summarize([json.loads(Path(f).read_text()) for f in args.summarize])
        return
    torch.set_num_threads(1)
    model, config, _ = lp.load_checkpoint(args.checkpoint)
    env = lp.make_env(config.env, obs=config.obs, action_repeat=config.action_repeat, seed=args.seed)
    rows = []
    for k, (label, planner, warm) in enumerate(cells()):
        if args.only is not None and k not in args.only:
            continue
        agent = lp.Agent(model, planner, warm_start=warm)
        rets, evals, ms = [], [], []
        t0 = time.perf_counter()
        for i in range(args.episodes):
            _, st = lp.run_episode(env, agent, seed=args.seed + i, generator=torch.Generator().manual_seed(args.seed + i))
            rets.append(st.ret)
            evals.append(st.model_evals)
            ms.append(st.plan_ms)
        row = {
            "cell": label, "config": repr(planner), "warm_start": warm, "returns": rets,
            "mean": statistics.fmean(rets), "std": statistics.stdev(rets) if len(rets) > 1 else 0.0,
            "model_evals": statistics.fmean(evals), "plan_ms": statistics.fmean(ms),
        }
        rows.append(row)
        print(f"{label:26s} evals {row['model_evals']:6.0f}  return {row['mean']:6.1f} ± {row['std']:5.1f}  "
              f"{[round(r) for r in rets]}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    out = {"checkpoint": args.checkpoint, "episodes": args.episodes, "seed": args.seed, "rows": rows,
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def summarize(runs: list[dict]) -> None:
    """Print every cell against the CEM 6k cell: mean ratio and the paired 95 % bootstrap CI of
    the per-seed difference (cells must share `seed` and `episodes`)."""
    import numpy as np
    from scipy.stats import bootstrap

    rows = [r for run in runs for r in run["rows"]]
    ref = next(r for r in rows if r["cell"].startswith("CEM I5 J100"))
    base = np.array(ref["returns"])
    print(f"reference {ref['cell']}: {base.mean():.1f} at {ref['model_evals']:.0f} evaluations per decision")
    for r in rows:
        if r is ref or len(r["returns"]) != len(base):
            continue
        x = np.array(r["returns"])
        ci = bootstrap((x - base,), np.mean, confidence_level=0.95, random_state=0).confidence_interval
        print(f"{r['cell']:26s} {r['model_evals']:6.0f} evals ({ref['model_evals'] / r['model_evals']:.2f}x fewer): "
              f"{x.mean():.1f} = {x.mean() / base.mean():.1%} of CEM; paired difference {x.mean() - base.mean():+.1f}, "
              f"95% CI [{ci.low:+.1f}, {ci.high:+.1f}]")


if __name__ == "__main__":
    main()
