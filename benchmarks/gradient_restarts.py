"""The gradient planner's restarts against its steps on the hard instances of the LQ family, at a fixed budget.

    OMP_NUM_THREADS=1 python benchmarks/gradient_restarts.py                      # Adam, R = 10, 2, 1 at 120,000
    OMP_NUM_THREADS=1 python benchmarks/gradient_restarts.py --optimizer lbfgs --restarts 10 1 --out ..._lbfgs.json
    OMP_NUM_THREADS=1 python benchmarks/gradient_restarts.py --restarts 1 --instances all

Each planner is the registry's `gradient:restarts=R,optimizer=O` at `--budget` model evaluations per
decision (a backward pass counted as `VJP_EVALS` = 2 forward transitions). With a first-order optimizer
(`adam`, the default here, as the registry built it before L-BFGS) the steps are (budget // (H R) - 1) // 3
per restart; L-BFGS (the planner's default now) stops earlier when converged. Reports, per instance, the
worst excess cost J/J* - 1 over `--seeds` seeds, the mean wall time and the mean evaluations per decision.
The LQ cost is convex: the question is whether the budget is better spent on more restarts or on more
steps. Writes `benchmarks/results/gradient_restarts.json` (or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from latentplan.families import lq_family
from latentplan.registry import Budget, make_planner

OUT = Path(__file__).parent / "results" / "gradient_restarts.json"
HARD = [6, 8, 11, 14, 15]  # the instances where the samplers miss 1 % (docs/planners.md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--restarts", type=int, nargs="+", default=[10, 2, 1])
    ap.add_argument("--instances", default="hard", help="'hard' (6, 8, 11, 14, 15) or 'all' (20)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=120_000)
    ap.add_argument("--optimizer", default="adam", help="the gradient planner's optimizer: adam (as before) or lbfgs")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    family = lq_family(20, seed=0)
    chosen = HARD if args.instances == "hard" else list(range(20))
    rows = []
    for r in args.restarts:
        worst, ms, evals = [], [], []
        for i in chosen:
            prob = family[i]
            model, objective, start = prob.build()
            planner = make_planner(f"gradient:restarts={r},optimizer={args.optimizer}", model, Budget(evals=args.budget), horizon=prob.horizon).planner
            ex = []
            for s in range(args.seeds):
                t0 = time.perf_counter()
                plan = planner.plan(objective, start, generator=torch.Generator().manual_seed(s))
                ms.append((time.perf_counter() - t0) * 1e3)
                evals.append(plan.info["model_evals"])
                ex.append(prob.excess(plan.actions[0].double().numpy()))
            worst.append(max(ex))
        rows.append({"restarts": r, "instances": chosen, "worst_per_instance": worst, "worst": max(worst),
                     "median_of_instances": float(np.median(worst)), "ms_mean": float(np.mean(ms)),
                     "evals_mean": float(np.mean(evals))})
        print(f"R = {r:2d}: worst per instance % {np.round(100 * np.array(worst), 3).tolist()}, "
              f"{np.mean(ms):,.0f} ms and {np.mean(evals):,.0f} evaluations per decision", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"budget": args.budget, "seeds": args.seeds, "optimizer": args.optimizer, "rows": rows,
                               "load": os.getloadavg()[0], "command": "python benchmarks/gradient_restarts.py "
                               + " ".join(os.sys.argv[1:])}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
