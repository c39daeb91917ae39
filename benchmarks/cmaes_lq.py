"""How close can a sampling planner get on the LQ family at PlaNet's budget? Our `CMAES` beside pycma.

    OMP_NUM_THREADS=1 python benchmarks/cmaes_lq.py                 # 20 instances x 3 seeds at 120k evaluations
    OMP_NUM_THREADS=1 python benchmarks/cmaes_lq.py --needed 6 8 14 15 --seeds 1   # evaluations needed for 1 %

The excess cost J(u)/J* - 1 of the returned plan, per instance the worst over seeds, for
`latentplan.planners.CMAES` at its defaults and for pycma (`pip install cma`, an optional peer,
never a dependency: Hansen's reference implementation, its default settings, bounds [-1, 1] by its
own boundary handling, sigma0 = 0.5) optimising the exact cost of the instance with as many
function evaluations as the budget buys (one evaluation = one rollout = H model evaluations). pycma's
plan is the better of its best evaluated point and its final mean.

`--needed I ...`: for those instances, the model evaluations each needs before its plan is within
1 % of the optimum (budgets doubled from 120k until it is, up to `--max-budget`).

Prints a table and writes `benchmarks/results/cmaes_lq.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from latentplan.families import LQProblem, lq_family
from latentplan.planners import CMAES

OUT = Path(__file__).parent / "results" / "cmaes_lq.json"


def ours(prob: LQProblem, seed: int, budget: int) -> float:
    """Excess of `CMAES` at its defaults with `max_evals=budget`, float32 (the family's default build)."""
    model, objective, start = prob.build()
    plan = CMAES(horizon=prob.horizon, max_evals=budget).plan(objective, start, generator=torch.Generator().manual_seed(seed))
    return prob.excess(plan.actions[0].double().numpy())


def pycma(prob: LQProblem, seed: int, budget: int) -> float | None:
    """Excess of pycma's plan with budget // H function evaluations, or None without pycma."""
    try:
        import cma
    except ImportError:
        return None
    m = prob.B.shape[1]
    f = lambda u: prob.excess(np.asarray(u).reshape(prob.horizon, m))  # noqa: E731
    es = cma.CMAEvolutionStrategy(np.zeros(prob.horizon * m), 0.5, {
        "bounds": [-1, 1], "maxfevals": budget // prob.horizon, "verbose": -9, "seed": seed + 1})
    while not es.stop():
        xs = es.ask()
        es.tell(xs, [f(x) for x in xs])
    return min(es.best.f, f(np.clip(es.result.xfavorite, -1, 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=120_000)
    ap.add_argument("--needed", type=int, nargs="*", default=[], help="instances: evaluations needed for 1 %%")
    ap.add_argument("--max-budget", type=int, default=7_680_000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.time()
    family = lq_family(args.instances, seed=0)
    result: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.needed:
        rows = []
        print(f"| instance | n, m, H | zero plan | latentplan CMAES (worst of {args.seeds}) | pycma (worst of {args.seeds}) |")
        print("|---|---|---|---|---|")
        for i, prob in enumerate(family):
            a = [ours(prob, s, args.budget) for s in range(args.seeds)]
            b = [pycma(prob, s, args.budget) for s in range(args.seeds)]
            zero = prob.excess(np.zeros_like(prob.u_star))
            rows.append({"instance": i, "n": prob.A.shape[0], "m": prob.B.shape[1], "horizon": prob.horizon,
                         "zero_plan": zero, "ours": a, "pycma": None if b[0] is None else b})
            pc = "-" if b[0] is None else f"{100 * max(b):,.2f} %"
            print(f"| {i} | {prob.A.shape[0]}, {prob.B.shape[1]}, {prob.horizon} | {100 * zero:,.0f} % | "
                  f"{100 * max(a):,.2f} % | {pc} |", flush=True)
        worst = lambda key: [max(r[key]) for r in rows if r[key] is not None]  # noqa: E731
        for key in ("ours", "pycma"):
            w = worst(key)
            if w:
                print(f"{key}: worst {100 * max(w):,.1f} %, median of instances {100 * float(np.median(w)):.4f} %, "
                      f"{sum(x <= 0.01 for x in w)}/{len(w)} instances within 1 %")
        result["budget_rows"] = rows
        result["budget"] = args.budget
    else:
        needed = {}
        for i in args.needed:
            prob = family[i]
            for name, fn in (("ours", ours), ("pycma", pycma)):
                for s in range(args.seeds):
                    budget, got = args.budget, None
                    while budget <= args.max_budget:
                        ex = fn(prob, s, budget)
                        if ex is None:
                            break
                        print(f"instance {i} {name} seed {s}: {budget:,} evaluations -> {100 * ex:,.3f} %", flush=True)
                        if ex <= 0.01:
                            got = budget
                            break
                        budget *= 2
                    needed[f"{i}:{name}:{s}"] = got
        result["needed_for_1pct"] = {**result.get("needed_for_1pct", {}), **needed}
    result["meta"] = {"command": "python benchmarks/cmaes_lq.py " + " ".join(os.sys.argv[1:]), "seconds": time.time() - t0,
                      "torch": torch.__version__, "machine": platform.machine(), "load": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
