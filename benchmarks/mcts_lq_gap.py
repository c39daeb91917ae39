"""Why MCTS cannot meet 1 % on the LQ family, and a bound on its gap.

    OMP_NUM_THREADS=1 python benchmarks/mcts_lq_gap.py --instances 20 --seeds 3

A tree that reaches depth d chooses at most the plan's first d actions; the rest is the completion
by the better of its two default policies (here, without a warm start: the last action repeated, or
zero). Whatever the tree chooses, the plan's cost is then at least the optimum over sequences whose
actions after d all repeat action d - 1 or are all zero: two quadratics in d * m free variables,
solved exactly here (bounds ignored, so it is a lower bound). The table gives, per instance, MCTS's excess at its defaults and as the registry builds it
at 120,000 evaluations, the depth its plan's path reached, and that lower bound at that depth.
Writes `benchmarks/results/mcts_lq_gap.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from latentplan.families import LQProblem, lq_family
from latentplan.planners.mcts import MCTS
from latentplan.registry import Budget, make_planner

OUT = Path(__file__).parent / "results" / "mcts_lq_gap.json"


def _best_in_subspace(prob: LQProblem, lift: np.ndarray) -> float:
    """The least excess over sequences u = lift @ z (bounds ignored): J is quadratic in z, solved exactly."""
    h, m = prob.u_star.shape
    cost = lambda z: prob.cost((lift @ z).reshape(h, m))  # noqa: E731
    n = lift.shape[1]
    c0 = cost(np.zeros(n))
    e = np.eye(n)
    grad = np.array([(cost(e[i]) - cost(-e[i])) / 2 for i in range(n)])
    hess = np.zeros((n, n))  # J(z) = z'Hz/2 + grad'z + c0, exactly (J is quadratic)
    for i in range(n):
        for j in range(i, n):
            hess[i, j] = hess[j, i] = cost(e[i] + e[j]) - cost(e[i]) - cost(e[j]) + c0
    return cost(-np.linalg.solve(hess, grad)) / prob.cost_star - 1.0


def tail_bound(prob: LQProblem, depth: int) -> float:
    """A lower bound on the excess of any plan MCTS (no warm start, no proposal policy) returns when its
    tree is `depth` deep: such a plan's actions after `depth` all repeat action depth - 1 or are all zero
    (its two default policies), so its excess is at least the least excess over either set."""
    h, m = prob.u_star.shape
    d = max(1, min(depth, h))
    repeat, zero = np.zeros((h * m, d * m)), np.zeros((h * m, d * m))
    for t in range(h):
        repeat[t * m:(t + 1) * m, min(t, d - 1) * m:(min(t, d - 1) + 1) * m] = np.eye(m)
        if t < d:
            zero[t * m:(t + 1) * m, t * m:(t + 1) * m] = np.eye(m)
    return min(_best_in_subspace(prob, repeat), _best_in_subspace(prob, zero))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=120_000)
    args = ap.parse_args()
    rows = []
    print(f"{'inst':>4} {'n':>2} {'m':>2} {'H':>3} {'mode':>9} {'depth':>5} {'excess %':>10} {'bound %':>10}")
    for i, prob in enumerate(lq_family(args.instances, seed=0)):
        model, objective, start = prob.build()
        for mode in ("defaults", "registry"):
            planner = MCTS(horizon=prob.horizon) if mode == "defaults" else \
                make_planner("mcts", model, Budget(evals=args.budget), horizon=prob.horizon).planner
            for s in range(args.seeds):
                plan = planner.plan(objective, start, generator=torch.Generator().manual_seed(s))
                depth = int(plan.info["max_depth"])
                row = {"instance": i, "mode": mode, "seed": s, "depth": depth,
                       "excess": prob.excess(plan.actions[0].double().numpy()), "bound": tail_bound(prob, depth)}
                rows.append(row)
            worst = max((r for r in rows if r["instance"] == i and r["mode"] == mode), key=lambda r: r["excess"])
            print(f"{i:>4} {prob.B.shape[0]:>2} {prob.B.shape[1]:>2} {prob.horizon:>3} {mode:>9} {worst['depth']:>5} "
                  f"{100 * worst['excess']:>10.2f} {100 * worst['bound']:>10.3f}", flush=True)
    for mode in ("defaults", "registry"):
        sel = [r for r in rows if r["mode"] == mode]
        print(f"{mode}: worst excess {100 * max(r['excess'] for r in sel):.1f} %, median "
              f"{100 * np.median([r['excess'] for r in sel]):.1f} %; worst lower bound at the depth reached "
              f"{100 * max(r['bound'] for r in sel):.2f} %")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows, "command": "python benchmarks/mcts_lq_gap.py " + " ".join(sys.argv[1:])}, indent=1))


if __name__ == "__main__":
    main()
