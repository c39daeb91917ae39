"""Our `ILQR` against mpc.pytorch (`mpc`, Amos et al. 2018) on pendulum swing-up and cart-pole with
known dynamics: the converged cost and the wall time, same problem, same run.

    pip install mpc==0.0.6     # the optional peer (extra `peers`); without it only our rows run
    OMP_NUM_THREADS=1 python benchmarks/ilqr_mpc.py [--batch 8] [--repeats 3] [--dtype float64]

Problems (`AnalyticModel.pendulum()` and `AnalyticModel.cartpole()`, whose steps equal
mpc.pytorch's `PendulumDx` and `CartpoleDx` to the last bit): minimise
`sum_{t<H} 1/2 z_t^T C z_t + c^T z_t` over `z_t = (x_{t+1}, u_t)` with mpc.pytorch's example cost
(`get_true_obj`: C = diag(goal weights, 0.001), c = -sqrt(goal weights) * goal state).

- pendulum: x = (cos, sin, th_dot), |u| <= 2, H = 20, goal upright at rest; B start angles uniform
  in [-pi, pi) and velocities in [-1, 1] (seed 0).
- cartpole: x = (x, x_dot, cos, sin, th_dot), |u| <= 10, H = 25, goal upright centred; B start
  angles uniform in [-pi, pi), the rest 0 (seed 0).

Solvers, each for all B starts in one batched call from a cold start (zero actions):

- ours: `ILQR(horizon=H, iterations=100, tolerance=1e-9)` on `Objective(model, rewards=[-cost])`.
- mpc.pytorch `MPC` with `lqr_iter=100, eps=1e-6` and its examples' line search per problem, its
  Jacobians by its own autograd loop (`GradMethods.AUTO_DIFF`, "mpc.pytorch") and, to time its
  solver alone, by a `grad_input` we give it from `torch.func` ("mpc.pytorch+func").

The cost of every solution is evaluated by the same function (`-Objective.returns`) on the
returned actions; "ours <= peer" counts the starts where ours is lower or within 1e-6 relative.
Wall time: the median of `--repeats` calls after one warm-up call. Prints a table and writes
`benchmarks/results/ilqr_mpc.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import latentplan as lp
import peers  # benchmarks/ is on sys.path when run as a script


def problem(name: str, batch: int, dtype: torch.dtype) -> dict:
    """`{"model", "C", "c", "horizon", "state", "line_search"}` for `"pendulum"` or `"cartpole"`."""
    g = torch.Generator().manual_seed(0)
    th = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    if name == "pendulum":
        model = lp.AnalyticModel.pendulum(dtype=dtype)
        vel = torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1
        x0 = torch.stack([th.cos(), th.sin(), vel], 1)
        weights, goal, horizon, line_search = [1.0, 1.0, 0.1], [1.0, 0.0, 0.0], 20, (0.2, 5)
    else:
        model = lp.AnalyticModel.cartpole(dtype=dtype)
        zero = torch.zeros(batch, dtype=torch.float64)
        x0 = torch.stack([zero, zero, th.cos(), th.sin(), zero], 1)
        weights, goal, horizon, line_search = [0.1, 0.1, 1.0, 1.0, 0.1], [0.0, 0.0, 1.0, 0.0, 0.0], 25, (0.5, 2)
    w = torch.tensor(weights + [0.001], dtype=dtype)
    c = torch.cat([-w[:-1].sqrt() * torch.tensor(goal, dtype=dtype), torch.zeros(1, dtype=dtype)])
    return dict(model=model, C=torch.diag(w), c=c, horizon=horizon, state=model.from_observation(x0.to(dtype)),
                line_search=line_search)


def objective(p: dict) -> lp.Objective:
    """The problem's cost as a reward on `(x_{t+1}, u_t)`: `-(1/2 z^T C z + c^T z)`."""
    C, c = p["C"], p["c"]

    @lp.reward(inputs="latent")
    def quadratic_cost(state, action, ctx):
        z = torch.cat([state.deter, action], -1)
        return -(0.5 * ((z @ C) * z).sum(-1) + z @ c)

    return lp.Objective(p["model"], rewards=[quadratic_cost])


def timed(solve, repeats: int) -> tuple[torch.Tensor, list[float]]:
    """The actions of one warm-up call and the wall times (ms) of `repeats` more."""
    actions = solve()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        solve()
        times.append((time.perf_counter() - t0) * 1e3)
    return actions, times


def run(name: str, batch: int, repeats: int, dtype: torch.dtype) -> list[dict]:
    """The rows of one problem: ours, then mpc.pytorch (both Jacobian modes) if installed."""
    p = problem(name, batch, dtype)
    obj, state, h = objective(p), p["state"], p["horizon"]
    info: dict = {}

    def ours() -> torch.Tensor:
        plan = lp.ILQR(horizon=h, iterations=100, tolerance=1e-9).plan(obj, state)
        info.update(plan.info)
        return plan.actions

    solvers = {"ours (ILQR)": ours}
    for label, mode in (("mpc.pytorch", "autograd"), ("mpc.pytorch+func", "func")):
        adapter = peers.mpc_pytorch(p["model"], cost_C=p["C"], cost_c=p["c"], horizon=h, iterations=100, eps=1e-6,
                                    linesearch_decay=p["line_search"][0], max_linesearch_iter=p["line_search"][1],
                                    jacobians=mode)
        if adapter is not None:
            solvers[f"{label}"] = (lambda s=adapter[0]: s(state))
            version = adapter[1]
    rows, ours = [], None
    for label, solve in solvers.items():
        actions, times = timed(solve, repeats)
        with torch.no_grad():
            cost = (-obj.returns(state, actions.to(state.deter.dtype))).double()
        if ours is None:
            ours = cost
        rows.append(dict(
            problem=name, solver=label, version=version if label.startswith("mpc") else "latentplan",
            horizon=h, batch=batch, mean_cost=cost.mean().item(), costs=cost.tolist(),
            ours_le_peer=int((ours <= cost + 1e-6 * cost.abs().clamp(min=1.0)).sum()),
            ms_median=statistics.median(times), ms_all=times,
            iterations=info.get("iterations") if label.startswith("ours") else None,
        ))
    for r in rows:
        r["ms_ratio_to_ours"] = r["ms_median"] / rows[0]["ms_median"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ilqr_mpc.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    rows = [r for name in ("pendulum", "cartpole") for r in run(name, args.batch, args.repeats, dtype)]
    print(f"{'problem':9s} {'solver':17s} {'mean cost':>10s} {'ours<=it':>8s} {'ms':>9s} {'x ours':>7s}")
    for r in rows:
        print(f"{r['problem']:9s} {r['solver']:17s} {r['mean_cost']:10.4f} {r['ours_le_peer']:>5d}/{r['batch']:<2d} "
              f"{r['ms_median']:9.1f} {r['ms_ratio_to_ours']:7.2f}")
    meta = dict(torch=torch.__version__, dtype=args.dtype, threads=1, machine=platform.machine(),
                load=os.getloadavg(), command="OMP_NUM_THREADS=1 python benchmarks/ilqr_mpc.py "
                f"--batch {args.batch} --repeats {args.repeats} --dtype {args.dtype}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")
    print(f"load {os.getloadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()
