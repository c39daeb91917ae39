"""Distillation on the LQ family: a linear student recovers the gain its teacher acts with, so the
teacher's quality bounds the student's (issue 14, item 6).

    OMP_NUM_THREADS=1 python benchmarks/distill_lq.py                          # 20 instances x 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/distill_lq.py --instances 4 --seeds 1 --teachers ilqr cem

For every instance of `latentplan.families.lq_family(instances, seed=0)` and seed, a teacher labels
`--states` start states with its first action and a linear student (`PolicyConfig(layers=0)`) is
fitted to them (`latentplan.families.distill_gain`). Reported: the relative Frobenius error of the
student's gain against the exact finite-horizon gain K_0(H) of the teacher's horizon (what a converged
teacher acts with), the same for the teacher's own least-squares gain, and how far K_0(H) is from the
DARE gain. Teachers:

- `ilqr`: the registry's `ilqr` at its defaults (10 iterations, relative tolerance 1e-6): converged.
- `cem`: the registry's `cem` at its default size (I = 5, J = 100, K = 10).
- `cem@120k`: the registry's `cem` at `latentplan compare`'s budget, 120,000 evaluations per decision.
- `planet`: `CEM(horizon=H)`, PlaNet's settings (I = 10, J = 1000, K = 100), as issue 14 measured.
- `planet_i40`: PlaNet's settings with 40 iterations (a better-converged CEM).
- `gradient`: the registry's `gradient` without a budget (L-BFGS, 10 restarts, `GradientConfig`'s
  120,000 evaluations per environment; converged).

Prints the table and writes `benchmarks/results/distill_lq.json` (after every teacher, so a partial
run keeps what it measured).
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

from latentplan.families import distill_gain, gain_error, lq_family
from latentplan.planners import CEM
from latentplan.registry import Budget, make_planner

OUT = Path(__file__).parent / "results" / "distill_lq.json"
TEACHERS = ["ilqr", "cem", "cem@120k", "planet", "planet_i40", "gradient"]


def teacher_for(name: str, model, horizon: int):
    """The teacher planner `name` (see the module docstring) for a problem of horizon H."""
    if name == "planet":
        return CEM(horizon=horizon)
    if name == "planet_i40":
        return CEM(horizon=horizon, iterations=40)
    spec, _, budget = name.partition("@")
    evals = None if not budget else int(budget.rstrip("k")) * 1000
    return make_planner(spec, model, Budget(evals=evals) if evals else None, horizon=horizon).planner


def teacher_row(name: str, instances: int, seeds: int, states: int, steps: int) -> dict:
    """Worst and median errors of one teacher over instances x seeds, with its cost per label."""
    runs = []
    start = time.perf_counter()
    for i, problem in enumerate(lq_family(instances, seed=0)):
        model, _, _ = problem.build()
        for seed in range(seeds):
            torch.manual_seed(seed)
            r = distill_gain(problem, teacher_for(name, model, problem.horizon), states=states, steps=steps, seed=seed)
            runs.append({"instance": i, "seed": seed, **{k: float(r[k]) for k in (
                "student_error", "teacher_error", "student_vs_dare", "finite_vs_dare", "model_evals", "teacher_ms")}})
    col = {k: np.array([r[k] for r in runs]) for k in runs[0] if k not in ("instance", "seed")}
    return {
        "teacher": name, "runs": runs, "wall_s": time.perf_counter() - start,
        "student_worst": float(col["student_error"].max()), "student_median": float(np.median(col["student_error"])),
        "teacher_worst": float(col["teacher_error"].max()), "teacher_median": float(np.median(col["teacher_error"])),
        "student_minus_teacher_worst": float(np.max(col["student_error"] - col["teacher_error"])),
        "evals_median": float(np.median(col["model_evals"])), "ms_median": float(np.median(col["teacher_ms"])),
    }


def main() -> None:
    """Run the teachers, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--states", type=int, default=64, help="labelled start states per run")
    ap.add_argument("--steps", type=int, default=300, help="Adam steps of the student")
    ap.add_argument("--teachers", nargs="+", default=TEACHERS, choices=TEACHERS)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    family = lq_family(args.instances, seed=0)
    gap = np.array([gain_error(p.gains()[0], p.dare_gain()) for p in family])
    result = {"instances": args.instances, "seeds": args.seeds, "states": args.states, "steps": args.steps,
              "finite_vs_dare": {"median": float(np.median(gap)), "worst": float(gap.max()), "per_instance": gap.tolist()},
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "load": os.getloadavg()},
              "rows": []}
    for name in args.teachers:
        result["rows"].append(teacher_row(name, args.instances, args.seeds, args.states, args.steps))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        r = result["rows"][-1]
        print(f"{name}: done in {r['wall_s']:.0f} s", flush=True)
    print(f"\nLQ family, {args.instances} instances x {args.seeds} seeds; gain errors against K_0(H) "
          f"(K_0(H) vs the DARE gain: median {np.median(gap):.2%}, worst {gap.max():.2%})")
    print("| teacher | student median | student worst | teacher median | teacher worst | evals / label | ms / label |")
    print("|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['teacher']} | {r['student_median']:.2%} | {r['student_worst']:.2%} | {r['teacher_median']:.2%} | "
              f"{r['teacher_worst']:.2%} | {r['evals_median']:,.0f} | {r['ms_median']:.2f} |")
    print(f"load average at the end: {os.getloadavg()}; JSON: {args.out}")


if __name__ == "__main__":
    main()
