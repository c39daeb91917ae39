"""Simulations per second of `MCTS` on the CPU, B = 1 and B = 16 environments, K = 8 children.

    OMP_NUM_THREADS=1 python benchmarks/mcts_speed.py --checkpoint runs/cartpole_long.pt

The model is the trained cartpole-swingup RSSM (a freshly initialised one of the same size if
the checkpoint is missing), the objective its learned reward plus a critic (`ValueFunction` on
the 230 latent features, 2 x 200 hidden; untrained, which costs the same) with γ = 0.99. Each
row is the best of `--repeats` plan calls of `--simulations` simulations at depth `--depth`
(one warm-up call first, which also loads the compiled kernels).

Rows:
- `numba`: the library's tree (numpy arrays, numba-compiled selection and backup);
- `python`: the same kernels run as plain Python (what happens without numba);
- `model only`: the model and value calls of the same number of expansions alone, `B * K`
  rows each (the floor for any tree implementation).
A last line times one level of a pUCT selection written as batched torch ops over `[B, K]`
(the alternative to the numba tree: one such level per tree level per simulation).

Writes `benchmarks/results/mcts_speed.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import latentplan as lp
from latentplan.planners import mcts as mcts_module
from latentplan.planners.mcts import MCTS, MCTSConfig

#: the defaults these rows were measured with, before issue 14 (MuZero's: pUCT at the root, c1 1.25, mean
#: backup, the critic at the leaves); the current defaults search with a Gumbel root and rollouts instead
FORMER = dict(root="puct", c1=1.25, backup="mean", leaf="value")


def former_mcts(**fields) -> MCTS:
    """`MCTS` at the former defaults with `fields` overridden."""
    return MCTS(MCTSConfig(**{**FORMER, **fields}))
from latentplan.planners.value import ValueFunction

KERNELS = ("_descend", "_widen", "_best_child", "_expand_backup", "_principal_path")


def load_model(path: str):
    if os.path.exists(path):
        return lp.load_checkpoint(path)[0]
    cfg = lp.RSSMConfig(obs_shape=(5,), action_dim=1)
    return lp.RSSMWorldModel(cfg)


def time_plan(planner, objective, state, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    planner.plan(objective, state, generator=g)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        planner.plan(objective, state, generator=g)
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def time_model_only(objective, state, k: int, sims: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    rows = state.expand(k)
    a = torch.zeros(rows.batch, objective.action_dim)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(sims):
            nxt, _ = objective.step(rows, a, generator=g)
            objective.bootstrap(nxt)
        best = min(best, time.perf_counter() - t0)
    return best


def time_torch_level(b: int, k: int, nodes: int, reps: int = 2000) -> float:
    """Microseconds for one pUCT level as batched torch ops on packed `[B, nodes, K, 4]` stats."""
    stats = torch.rand(b, nodes, k, 4)
    cur = torch.zeros(b, dtype=torch.long)
    ar = torch.arange(b)
    lo, hi = torch.zeros(b, 1), torch.ones(b, 1)

    def level(cur):
        n, v, r, p = stats[ar, cur].unbind(-1)
        q = r + 0.99 * v
        qn = (q - lo) / (hi - lo)
        npar = n.sum(-1, keepdim=True) + 1
        score = qn + p * npar.sqrt() / (1 + n) * (1.25 + torch.log((npar + 19653) / 19652))
        score = torch.where(torch.isfinite(q), score, torch.full_like(score, float("-inf")))
        return (cur * k + 1 + score.argmax(-1)).clamp_max(nodes - 1)

    for _ in range(50):
        level(cur)
    t0 = time.perf_counter()
    for _ in range(reps):
        level(cur)
    return (time.perf_counter() - t0) / reps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/cartpole_long.pt")
    p.add_argument("--simulations", type=int, default=200)
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--children", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="benchmarks/results/mcts_speed.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.checkpoint)
    value = ValueFunction(model.feature_size)
    value.eval()
    objective = lp.Objective(model, discount=0.99, value=value)
    planner = former_mcts(simulations=args.simulations, children=args.children, horizon=args.depth)
    originals = {name: getattr(mcts_module, name) for name in KERNELS}
    rows = []
    print(f"MCTS on the CPU, torch threads {torch.get_num_threads()}, K = {args.children}, depth {args.depth}, "
          f"{args.simulations} simulations per call")
    print(f"{'B':>3} {'tree':>10} {'sims/s':>9} {'ms/call':>9} {'model evals/s':>14}")
    for b in (1, 16):
        g = torch.Generator().manual_seed(b)
        obs = torch.randn(b, *model.config.obs_shape, generator=g)
        state = model.observe(model.initial(b), torch.zeros(b, model.action_dim), obs, torch.ones(b, dtype=torch.bool))
        for impl in ("numba", "python"):
            if impl == "python":
                for name, fn in originals.items():
                    setattr(mcts_module, name, fn.py_func)
            try:
                dt = time_plan(planner, objective, state, args.repeats)
                evals = planner.plan(objective, state, generator=torch.Generator().manual_seed(0)).info["model_evals"]
            finally:
                for name, fn in originals.items():
                    setattr(mcts_module, name, fn)
            row = {"B": b, "tree": impl,
                   "sims_per_s": args.simulations / dt, "ms_per_call": dt * 1e3, "model_evals_per_s": evals / dt}
            rows.append(row)
            print(f"{b:>3} {row['tree']:>10} {row['sims_per_s']:>9.0f} {row['ms_per_call']:>9.1f} {row['model_evals_per_s']:>14.0f}")
        dt = time_model_only(objective, state, args.children, args.simulations, args.repeats)
        row = {"B": b, "tree": "model only", "sims_per_s": args.simulations / dt, "ms_per_call": dt * 1e3,
               "model_evals_per_s": args.simulations * b * args.children / dt}
        rows.append(row)
        print(f"{b:>3} {'model only':>10} {row['sims_per_s']:>9.0f} {row['ms_per_call']:>9.1f} {row['model_evals_per_s']:>14.0f}")
    level = {b: time_torch_level(b, args.children, 1 + args.simulations * args.children) for b in (1, 16)}
    print("one pUCT level as batched torch ops: " + ", ".join(f"B={b}: {us:.0f} µs" for b, us in level.items())
          + f" (x up to {args.depth} levels per simulation, plus the backup)")
    out = {"rows": rows, "torch_level_us": {str(b): us for b, us in level.items()}, "simulations": args.simulations,
           "depth": args.depth, "children": args.children, "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "processor": platform.processor(),
           "checkpoint": args.checkpoint if os.path.exists(args.checkpoint) else None}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
