"""Every planner over families of problems with exact answers, reporting the WORST case.

    OMP_NUM_THREADS=1 python benchmarks/planner_families.py                    # both families, 20 x 3
    OMP_NUM_THREADS=1 python benchmarks/planner_families.py --family trap --instances 20 --seeds 3

Families (`latentplan.families`):

- **LQ**: random linear-quadratic problems (n <= 6, m <= 3, H from 8 to 20, A with spectral radius
  0.9-1.1 and up to 90 degrees of rotation per step, Q, R, Q_f with condition numbers up to 100,
  optimal actions within |u| <= 0.6 of the bound 1); the exact optimum by the backward Riccati
  recursion in float64. Measure: the excess cost J(u) / J* - 1 of the returned plan (open loop, one
  decision from x0), worst over instances x seeds. Each planner twice: at its own defaults (its
  config class with only `horizon` = H) and as the planner registry builds it for `latentplan
  compare` at 120,000 model evaluations per decision (PlaNet's budget).
- **Trap**: deceptive 1-D chains (a lure next to the start; k = 2..5 cells of cost before a large
  prize the other way; moving toward the prize first is the unique optimum and trails the lure
  for k steps). Measure: the fraction of (instance, seed) whose first action moves toward the
  prize. MCTS at its defaults (only `horizon` = H), MCTS at its former defaults (pUCT root,
  c1 = 1.25, mean backup, value leaves: MuZero's) and CEM (PlaNet's I = 10, 10 % elites) at the
  same mean number of model evaluations as MCTS at its defaults.

Prints the tables and writes `benchmarks/results/planner_families.json`.
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

from latentplan.families import lq_family, trap_family
from latentplan.planners import CEM, CMAES, ILQR, MPPI, CEMConfig, GradientPlanner
from latentplan.planners.mcts import MCTS, MCTSConfig
from latentplan.registry import PRESETS, Budget, make_planner

OUT = Path(__file__).parent / "results" / "planner_families.json"
PLANNERS = ["cem", "icem", "cem_gd", "cmaes", "mppi", "gradient", "ilqr", "mcts"]


def default_planner(name: str, horizon: int):
    """The planner `name` at its config's defaults with only the horizon set (iCEM and CEM+GD: the
    registry's preset fields on CEM's defaults)."""
    if name == "cem":
        return CEM(horizon=horizon)
    if name in ("icem", "cem_gd"):
        return CEM(CEMConfig(horizon=horizon, **PRESETS[name][0]))
    return {"cmaes": CMAES, "mppi": MPPI, "gradient": GradientPlanner, "ilqr": ILQR, "mcts": MCTS}[name](horizon=horizon)


def lq_rows(instances: int, seeds: int, planners: list[str], budget: int) -> list[dict]:
    """One row per (planner, mode): worst and median excess over instances x seeds, evals, ms."""
    family = lq_family(instances, seed=0)
    rows = []
    for name in planners:
        for mode in ("defaults", "registry"):
            excess, evals, ms = [], [], []
            for i, prob in enumerate(family):
                model, objective, start = prob.build()
                if mode == "registry":
                    build = make_planner(name, model, Budget(evals=budget), horizon=prob.horizon)
                    planner = build.planner
                    objective = build.objective(model) if build.objective is not None else objective
                else:
                    planner = default_planner(name, prob.horizon)
                for s in range(seeds):
                    t0 = time.perf_counter()
                    plan = planner.plan(objective, start, generator=torch.Generator().manual_seed(s))
                    ms.append((time.perf_counter() - t0) * 1e3)
                    excess.append(prob.excess(plan.actions[0].double().numpy()))
                    evals.append(plan.info.get("model_evals", 0))
            worst = int(np.argmax(excess))
            rows.append({"family": "lq", "planner": name, "mode": mode, "worst_excess": float(max(excess)),
                         "median_excess": float(np.median(excess)), "worst_instance": worst // seeds,
                         "worst_seed": worst % seeds, "evals_mean": float(np.mean(evals)), "ms_mean": float(np.mean(ms)),
                         "runs": len(excess)})
            print(_lq_line(rows[-1]), flush=True)
    return rows


def _lq_line(r: dict) -> str:
    return (f"{r['planner']:<9} {r['mode']:<9} worst {100 * r['worst_excess']:9.3f} %  median "
            f"{100 * r['median_excess']:8.3f} %  (instance {r['worst_instance']}, seed {r['worst_seed']})  "
            f"evals {r['evals_mean']:9.0f}  {r['ms_mean']:8.1f} ms")


OLD_MCTS = dict(root="puct", c1=1.25, backup="mean", leaf="value")  # the former defaults (MuZero's)


def trap_rows(instances: int, seeds: int) -> list[dict]:
    """MCTS at its defaults, at its former defaults and CEM, at MCTS's mean evaluations per instance."""
    family = trap_family(instances, seed=0)
    hits: dict[str, list[bool]] = {"mcts": [], "mcts_former": [], "cem": []}
    evals: dict[str, list[int]] = {k: [] for k in hits}
    for prob in family:
        model, objective, start = prob.build()
        h = prob.horizon
        for s in range(seeds):
            plan = MCTS(horizon=h).plan(objective, start, generator=torch.Generator().manual_seed(s))
            hits["mcts"].append(prob.first_action_ok(plan.first_action.item()))
            evals["mcts"].append(plan.info["model_evals"])
            budget = plan.info["model_evals"]
            old = MCTS(MCTSConfig(horizon=h, evals=budget, simulations=budget, **OLD_MCTS))
            p_old = old.plan(objective, start, generator=torch.Generator().manual_seed(s))
            hits["mcts_former"].append(prob.first_action_ok(p_old.first_action.item()))
            evals["mcts_former"].append(p_old.info["model_evals"])
            j = max(10, budget // (10 * h))
            cem = CEM(horizon=h, iterations=10, candidates=j, elites=max(2, j // 10))
            p_cem = cem.plan(objective, start, generator=torch.Generator().manual_seed(s))
            hits["cem"].append(prob.first_action_ok(p_cem.first_action.item()))
            evals["cem"].append(p_cem.info["model_evals"])
    rows = []
    for name, h_list in hits.items():
        per_instance = np.array(h_list).reshape(len(family), seeds).mean(1)
        rows.append({"family": "trap", "planner": name, "optimal_first_action": float(np.mean(h_list)),
                     "worst_instance_rate": float(per_instance.min()), "evals_mean": float(np.mean(evals[name])),
                     "runs": len(h_list)})
        print(f"{name:<12} optimal first action {100 * rows[-1]['optimal_first_action']:5.1f} %  worst instance "
              f"{100 * rows[-1]['worst_instance_rate']:5.1f} %  evals {rows[-1]['evals_mean']:8.0f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["lq", "trap", "all"], default="all")
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--planners", default=",".join(PLANNERS), help="LQ family: comma-separated registry names")
    ap.add_argument("--budget", type=int, default=120_000, help="LQ family: the registry's evaluations per decision")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.time()
    rows = []
    if args.family in ("trap", "all"):
        print(f"trap family: {args.instances} instances x {args.seeds} seeds")
        rows += trap_rows(args.instances, args.seeds)
    if args.family in ("lq", "all"):
        print(f"LQ family: {args.instances} instances x {args.seeds} seeds; excess cost J/J* - 1, worst case")
        rows += lq_rows(args.instances, args.seeds, args.planners.split(","), args.budget)
    meta = {"command": "python benchmarks/planner_families.py " + " ".join(os.sys.argv[1:]), "seconds": time.time() - t0,
            "torch": torch.__version__, "machine": platform.machine(), "load": os.getloadavg()[0]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    old.update({f"{r['family']}:{r['planner']}:{r.get('mode', '')}": r for r in rows})
    old["meta"] = meta
    args.out.write_text(json.dumps(old, indent=1))
    print(f"wrote {args.out} ({meta['seconds']:.0f} s, load {meta['load']:.1f})")


if __name__ == "__main__":
    main()
