"""What the reward terms' input checks cost per evaluation (docs/rewards.md, "In place" and "No gradient").

Every `@lp.reward` term evaluation compares its inputs' version counters before and after the
user's function (a function that writes into its inputs is refused) and, while gradients are
taken, checks that its output carries one. Both read tensor attributes only. This script times a
decoded term on a small RSSM (deter 32) with and without those checks, in one process, and prints
the share they add; absolute times move with the machine's load, the share less so.

    OMP_NUM_THREADS=1 python benchmarks/reward_checks.py [--json benchmarks/results/reward_checks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import latentplan as lp
from latentplan.planners import rewards as terms
from latentplan.worldmodels import RSSMConfig, RSSMWorldModel


def best_of(fn, calls: int = 3000, repeats: int = 5) -> float:
    """The median over `repeats` of the mean µs per call of `fn` over `calls` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return sorted(times)[repeats // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[8, 2400], help="N, the rows of one evaluation")
    p.add_argument("--json", default="benchmarks/results/reward_checks.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = (("cart_x", 0, 1), ("pole_cos", 1, 2), ("rest", 2, 5))
    model = RSSMWorldModel(RSSMConfig(obs_shape=(5,), action_dim=1, obs_names=names, deter=32, stoch=8, hidden=32,
                                      embed=32))

    @lp.reward
    def upright(obs, action, ctx):
        return obs["pole_cos"] - 0.1 * (obs["cart_x"] - ctx["target_x"]).abs()

    objective = lp.Objective(model, rewards=[upright], context={"target_x": torch.tensor([0.5, -0.5])}, batch=2)
    term, ctx = objective.rewards[0], objective.context
    rows = {}
    print("| N | term evaluation, checks included (µs) | the checks alone (µs) | share |")
    print("|---:|---:|---:|---:|")
    with torch.no_grad():
        for n in args.rows:
            state, action = model.imagine_step(model.initial(n), torch.zeros(n, 1)), torch.zeros(n, 1)
            term(state, action)  # decode cached, context expanded: the steady state of a planner's loop
            full = best_of(lambda: term(state, action))
            decoded, expanded, out = ctx.decode(state), ctx.expand(n, state.device, state.deter.dtype), term(state, action)

            def checks():
                watched = terms._watched_inputs(state, action, None, decoded, None, expanded)
                before = terms._watch_versions(watched)
                _ = terms._watch_versions(watched) != before
                terms.check_reward_gradient(out, "upright", (state, action, None))

            alone = best_of(checks)
            rows[n] = {"evaluation_us": full, "checks_us": alone, "share": alone / full}
            print(f"| {n:,} | {full:.1f} | {alone:.1f} | {100 * alone / full:.0f} % |")
    out = {"rows": rows, "threads": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0],
           "torch": torch.__version__}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json} (load average {out['loadavg_1min']:.1f})")


if __name__ == "__main__":
    main()
