"""stable-worldmodel 0.1.1's planning solvers beside ours on the LQ family, at equal model evaluations.

    pip install --no-deps stable-worldmodel==0.1.1 loguru    # an optional peer, never a dependency
    OMP_NUM_THREADS=1 python benchmarks/peer_swm.py --instances 20 --seeds 3 --budget 120000

stable-worldmodel (https://github.com/galilai-group/stable-worldmodel) ships solvers that optimise
action sequences against a `Costable` model: `get_cost(info_dict, candidates [B, S, H, A]) -> [B, S]`.
Here that model is the exact cost J(u) of one `latentplan.families.lq_family` problem (float32 torch,
actions clipped into the bound 1 as our planners' are), so both libraries optimise the same function.
Its package `__init__` imports its data and environment stack (lancedb, torchvision, ...), so only
`stable_worldmodel.solver` is loaded (the package's top level is bypassed); it needs torch,
gymnasium and loguru.

Budgets: a solver's model evaluations are its candidates x horizon per iteration (`S * H * n_steps`);
`num_samples` is set so that this is the budget (their other settings at their defaults: CEM and
MPPI 30 iterations, top 30 of the samples scaled with them, iCEM beta = 2, GD SGD lr 1 with 30
steps of `num_samples` sequences). Gradient solvers' backward passes are not counted (as ours are
not, issue 14 item 7). Ours: the registry's builds for `latentplan compare` at the same budget.
Measure: excess cost J(u) / J* - 1 of the returned plan, worst and median over instances x seeds.
Writes `benchmarks/results/peer_swm.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import gymnasium
import numpy as np
import torch

from latentplan.families import LQProblem, lq_family
from latentplan.registry import Budget, make_planner

OUT = Path(__file__).parent / "results" / "peer_swm.json"
PAIRS = [("cem", "CEMSolver"), ("icem", "ICEMSolver"), ("mppi", "MPPISolver"), ("gradient", "GradientSolver"),
         (None, "PredictiveSamplingSolver")]


def load_solvers():
    """The module `stable_worldmodel.solver`, imported without running the package's `__init__`
    (`peers.load_swm_solvers`).

    Raises:
        ImportError: stable-worldmodel is not installed.
    """
    import peers  # benchmarks/peers.py, next to this script

    return peers.load_swm_solvers()


class LQCost:
    """A stable-worldmodel `Costable`: the exact LQ cost J(clip(u)) of one problem, `[B, S]` for
    candidates `[B, S, H, m]`; counts the model evaluations (one per candidate and step)."""

    def __init__(self, prob: LQProblem):
        f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        self.A, self.B, self.Q, self.R, self.M = f(prob.A), f(prob.B), f(prob.Q), f(prob.R), f(prob.Qf - prob.Q)
        self.evals = 0

    def get_cost(self, info_dict: dict, candidates: torch.Tensor) -> torch.Tensor:
        x = info_dict["x0"].to(candidates.dtype)  # [B, S, n]
        u_all = candidates.clamp(-1.0, 1.0)
        total = torch.zeros(candidates.shape[:2], dtype=candidates.dtype)
        for t in range(candidates.shape[2]):
            u = u_all[:, :, t]
            x = x @ self.A.T + u @ self.B.T
            total = total + ((x @ self.Q) * x).sum(-1) + ((u @ self.R) * u).sum(-1)
        self.evals += candidates.shape[0] * candidates.shape[1] * candidates.shape[2]
        return total + ((x @ self.M) * x).sum(-1)

    criterion = get_cost


def swm_solver(solver, name: str, cost: LQCost, horizon: int, m: int, budget: int, seed: int):
    """The solver `name` with `num_samples` set so that `num_samples * horizon * n_steps` is the budget."""
    steps = 30
    samples = max(2, budget // (horizon * steps))
    kw = dict(seed=seed)
    if name in ("CEMSolver", "ICEMSolver", "MPPISolver"):
        kw.update(num_samples=samples, n_steps=steps, topk=max(2, samples // 10))
    elif name == "PredictiveSamplingSolver":
        kw.update(num_samples=max(2, budget // horizon))
    elif name == "GradientSolver":
        kw.update(n_steps=steps, num_samples=samples)
    s = getattr(solver, name)(cost, **kw)
    space = gymnasium.spaces.Box(-1.0, 1.0, shape=(1, m), dtype=np.float32)
    s.configure(action_space=space, n_envs=1, config=SimpleNamespace(horizon=horizon, action_block=1))
    return s


def run(instances: int, seeds: int, budget: int) -> list[dict]:
    solver = load_solvers()
    family = lq_family(instances, seed=0)
    rows = []
    for ours, theirs in PAIRS:
        for side, label in (("stable-worldmodel", theirs), ("latentplan", ours)):
            if label is None:
                continue
            excess, evals = [], []
            for prob in family:
                h, m = prob.horizon, prob.B.shape[1]
                for s in range(seeds):
                    if side == "latentplan":
                        model, objective, start = prob.build()
                        plan = make_planner(label, model, Budget(evals=budget), horizon=h).planner.plan(
                            objective, start, generator=torch.Generator().manual_seed(s))
                        u, ev = plan.actions[0].double().numpy(), plan.info["model_evals"]
                    else:
                        cost = LQCost(prob)
                        sol = swm_solver(solver, label, cost, h, m, budget, seed=s)
                        with contextlib.redirect_stdout(io.StringIO()):
                            out = sol.solve({"x0": torch.as_tensor(prob.x0[None], dtype=torch.float32)})
                        u, ev = out["actions"][0].double().clamp(-1, 1).numpy(), cost.evals
                    excess.append(prob.excess(u))
                    evals.append(ev)
            rows.append({"library": side, "planner": label, "worst_excess": float(max(excess)),
                         "median_excess": float(np.median(excess)), "evals_mean": float(np.mean(evals)),
                         "runs": len(excess)})
            r = rows[-1]
            print(f"{side:<18} {label:<25} worst {100 * r['worst_excess']:10.3f} %  median "
                  f"{100 * r['median_excess']:9.3f} %  evals {r['evals_mean']:9.0f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=120_000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.time()
    rows = run(args.instances, args.seeds, args.budget)
    meta = {"command": "python benchmarks/peer_swm.py " + " ".join(sys.argv[1:]), "seconds": time.time() - t0,
            "load": os.getloadavg()[0], "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "meta": meta}, indent=1))
    print(f"wrote {args.out} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
