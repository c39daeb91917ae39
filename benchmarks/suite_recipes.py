"""Training recipes on cartpole-swingup from state, as one `latentplan suite` grid: which learns
faster per environment step at a small budget?

    python benchmarks/suite_recipes.py --steps 20000 --seeds 0 1 --out runs/suite-cartpole

Recipes (`latentplan.recipes`): `demo` (the demo's CPU-sized PlaNet), `fast` (`demo` with 3 seed
episodes, 100 updates per episode and a critic bootstrapping the planner at the horizon), and,
defined here as an ablation, `fast_no_value` (`fast` without the critic), which separates the
critic's effect from that of the extra updates and fewer seed episodes. The grid runs on a local
Ray (`--workers`, one torch thread per cell; `--no-ray` in-process, same numbers) and resumes:
cells already done in `--out` are skipped. Prints the grid's table and writes it with every
cell's curve to `--json` (default `benchmarks/results/suite_recipes.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

from latentplan import recipes
from latentplan.suite import SuiteConfig, run_suite


def fast_no_value(**kw):
    """`fast` without the critic: no value learning, the planner sums rewards to the horizon."""
    return dataclasses.replace(recipes.RECIPES["fast"][0](**kw), value_every=0, plan_with_value=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--recipes", nargs="+", default=["demo", "fast", "fast_no_value"])
    p.add_argument("--out", default="runs/suite-cartpole")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--json", default="benchmarks/results/suite_recipes.json")
    args = p.parse_args()
    recipes.RECIPES.setdefault("fast_no_value", (fast_no_value, recipes.RECIPES["fast"][1]))
    cfg = SuiteConfig(tasks=("cartpole-swingup",), recipes=tuple(args.recipes), seeds=tuple(args.seeds),
                      steps=args.steps, final_eval_episodes=5, evaluations=5, out=args.out, workers=args.workers,
                      ray=not args.no_ray)
    result = run_suite(cfg)
    table = Path(result.files["markdown"]).read_text()
    print(table)
    payload = json.loads(Path(result.files["json"]).read_text())
    payload["machine"] = {"python": platform.python_version(), "cpus": 2, "threads_per_cell": cfg.threads}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
