"""Planners on a cliff that ends the episode, with and without `Objective(continuation=...)`.

    OMP_NUM_THREADS=1 python benchmarks/continuation_cliff.py [--seeds 10] [--horizons 4 8]

The world: p' = p + u, u in [-1, 1], from p = 0; reward 3 on arriving at p <= -1/2 (the cliff), 1 at
p >= 1/2 (the far side), 0 in between; gamma = 1. With the continuation `p' > -1/2` the episode ends on
the cliff: the reward of that step counts, nothing after it. The exact optimum is by brute force over
{-1, 0, 1}^H (the continuous problem has the same optimum: the thresholds are 1/2 from the grid): with
the continuation it starts right, collects 1 per step and steps over the edge at the last step
(H = 4: 5, H = 8: 9); without it the planner should go over the edge at once and stay (3 H).

Each planner runs at its defaults with the horizon H; a row counts the seeds whose plan's first action
has the optimum's sign and whose return (`Objective.returns` of the plan) equals the exact optimum.
A last table times CEM's eager plan on a small RSSM with and without a continuation (interleaved calls,
median ratio): the cost of the per-step continuation call and its [0, 1] range check.

Writes `benchmarks/results/continuation_cliff.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import latentplan as lp
from latentplan.planners.mcts import MCTS, MCTSConfig


def cliff_model() -> lp.AnalyticModel:
    bound = torch.ones(1, dtype=torch.float64)
    return lp.AnalyticModel(lambda x, u: x + u, lambda x: torch.zeros_like(x[:, 0]), 1, -bound, bound,
                            names={"p": slice(0, 1)})


@lp.reward
def cliff_reward(obs, action, ctx):
    p = obs["p"]
    return torch.where(p <= -0.5, 3.0, torch.where(p >= 0.5, 1.0, 0.0)).to(p.dtype)


@lp.continuation(differentiable=False)
def off_the_edge(obs, action, ctx):
    return obs["p"] > -0.5


def exact(h: int, terminates: bool) -> tuple[float, float]:
    """(the optimal return, the sign of its first action) by brute force over {-1, 0, 1}^h."""
    best, first = -1.0, 0.0
    for seq in itertools.product([-1, 0, 1], repeat=h):
        p, ret, alive = 0.0, 0.0, 1.0
        for u in seq:
            p += u
            ret += alive * (3.0 if p <= -0.5 else (1.0 if p >= 0.5 else 0.0))
            if terminates and p <= -0.5:
                alive = 0.0
        if ret > best:
            best, first = ret, float(seq[0])
    return best, first


def planners(h: int) -> dict:
    return {
        "CEM": lambda: lp.CEM(horizon=h),
        "iCEM": lambda: lp.CEM(horizon=h, noise_beta=2.0, keep_elites=0.3, population_decay=1.25, momentum=0.1),
        "MPPI": lambda: lp.MPPI(horizon=h),
        "MCTS (continuous)": lambda: MCTS(horizon=h),
        "MCTS (discrete {-1,0,1})": lambda: MCTS(MCTSConfig(horizon=h), actions=torch.tensor([[-1.0], [0.0], [1.0]])),
    }


def cliff_rows(horizons: list[int], seeds: int) -> list[dict]:
    model = cliff_model()
    start = model.from_observation(torch.zeros(1, 1, dtype=torch.float64))
    rows = []
    for h in horizons:
        for terminates in (True, False):
            best, first = exact(h, terminates)
            obj = lp.Objective(model, rewards=[cliff_reward], continuation=off_the_edge if terminates else None)
            for name, make in planners(h).items():
                planner = make()
                right, optimal, gaps = 0, 0, []
                for seed in range(seeds):
                    plan = planner.plan(obj, start, generator=torch.Generator().manual_seed(seed))
                    ret = float(obj.returns(start, plan.actions))
                    right += int(float(plan.first_action.sign()) == first)
                    optimal += int(abs(ret - best) < 1e-9)
                    gaps.append(best - ret)
                rows.append(dict(horizon=h, continuation=terminates, planner=name, optimum=best, first_action=first,
                                 right_first_action=right, optimal=optimal, seeds=seeds, worst_gap=max(gaps)))
    return rows


def overhead(repeats: int) -> dict:
    """CEM (eager) on a small RSSM, B = 4: median plan time with a continuation / without, interleaved."""
    torch.manual_seed(0)
    model = lp.RSSMWorldModel(lp.RSSMConfig(obs_shape=(5,), action_dim=1)).eval()
    state = model.initial(4)

    @lp.continuation(inputs="latent")
    def alive(s, action, ctx):
        return torch.sigmoid(s.deter[:, 0])

    plain, ends = lp.Objective(model, batch=4), lp.Objective(model, batch=4, continuation=alive)
    cem = lp.CEM(horizon=12, iterations=5, candidates=200, elites=20, compile="eager")
    times = {"plain": [], "continuation": []}
    for i in range(repeats + 1):
        for key, obj in (("plain", plain), ("continuation", ends)):
            t0 = time.perf_counter()
            cem.plan(obj, state, generator=torch.Generator().manual_seed(i))
            if i:  # the first round warms up
                times[key].append(time.perf_counter() - t0)
    ratio = statistics.median(c / p for c, p in zip(times["continuation"], times["plain"]))
    return {"plain_ms": 1e3 * statistics.median(times["plain"]),
            "continuation_ms": 1e3 * statistics.median(times["continuation"]), "ratio": ratio, "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--horizons", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load = os.getloadavg()[0]
    rows = cliff_rows(args.horizons, args.seeds)
    print(f"| H | continuation | planner | optimum | right first action | exact optimum | worst gap |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['horizon']} | {'yes' if r['continuation'] else 'no'} | {r['planner']} | {r['optimum']:g} | "
              f"{r['right_first_action']}/{r['seeds']} | {r['optimal']}/{r['seeds']} | {r['worst_gap']:.3g} |")
    cost = overhead(args.repeats)
    print(f"\nCEM eager, RSSM (default size), B=4, H=12, 5 x 200 candidates: {cost['plain_ms']:.1f} ms plain, "
          f"{cost['continuation_ms']:.1f} ms with a continuation; median ratio {cost['ratio']:.3f}")
    print(f"load average (1 min) at the start: {load:.2f}")
    out = Path(__file__).parent / "results" / "continuation_cliff.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "overhead": cost, "load_average": load, "seeds": args.seeds,
                               "torch": torch.__version__, "machine": platform.machine()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
