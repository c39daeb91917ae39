"""Distilling CEM into a policy on cartpole-swingup (state): return, latency, and the policy as CEM's proposal.

    OMP_NUM_THREADS=1 python benchmarks/distill_cartpole.py --checkpoint runs/cartpole_long.pt

1. Distillation (`latentplan.distillation.run_distillation`): the teacher is PlaNet's CEM at the
   demo's settings (H=12, I=5, J=100, K=10) on the learned reward. Labels: `--replay-states`
   posterior beliefs from the run's 100 training episodes, then `--dagger-rounds` DAgger rounds
   of `--dagger-episodes` episodes in which the student acts and the teacher labels what it
   visits. With `--policy PATH` an existing policy is evaluated instead.
2. Return: student (`PolicyPlanner`, the policy's mode) and teacher on the same `--episodes`
   seeds (`--eval-seed + i`, disjoint from the training and DAgger seeds), single-threaded.
3. Latency: `plan()` of the teacher and of the student on the same beliefs, alternating, one
   belief per call, single-threaded; medians and their ratio.
4. Proposal: CEM with `--fraction` of its candidates rolled out by the policy (as TD-MPC2) against
   plain CEM, at decreasing candidate counts J (I=5, K=max(2, J/10)), on the same seeds; model
   evaluations per decision are measured (`info["model_evals"]`, the policy rollouts included).
   Reported: the smallest budget at which CEM+policy's mean return reaches plain CEM's at J=100.
5. Optionally (`--gradient`): the gradient planner started from the policy's rollout against the
   same planner started from zeros, at a small budget.
6. Optionally (`--mcts VALUE`): MCTS with the learned value of `benchmarks/mcts_cartpole.py`
   (its defaults at about 1.5k evaluations: S = 188, K = 8, depth 5, gamma = 0.99, warm start)
   with the Gaussian proposal against the same MCTS with the policy as its proposal.

Writes the table to stdout and everything to `--json` (default
`benchmarks/results/distill_cartpole.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import latentplan as lp
from latentplan.distillation import DistillRunConfig, evaluate_planner, replay_beliefs, run_distillation
from latentplan.planners.distill import DistillConfig
from latentplan.planners.policy import GaussianPolicy, PolicyPlanner
from latentplan.worldmodels.replay import ReplayBuffer

H, I, J, K = 12, 5, 100, 10


def _latency(model, teacher, student, beliefs, repeats: int) -> dict:
    """Median/mean milliseconds of `plan()` per decision (B = 1), the two planners alternating."""
    objective = lp.Objective(model)
    g = torch.Generator().manual_seed(0)
    t_ms, s_ms = [], []
    for i in range(repeats):
        b = beliefs.index(i % beliefs.batch)
        for planner, out in ((teacher, t_ms), (student, s_ms)):
            t0 = time.perf_counter()
            planner.plan(objective, b, generator=g)
            out.append((time.perf_counter() - t0) * 1e3)
    s_ms, t_ms = s_ms[1:], t_ms[1:]  # the first call of each warms up
    return {
        "teacher_ms_median": statistics.median(t_ms), "teacher_ms_mean": statistics.fmean(t_ms),
        "student_ms_median": statistics.median(s_ms), "student_ms_mean": statistics.fmean(s_ms),
        "ratio_median": statistics.median(t_ms) / statistics.median(s_ms),
        "calls": len(s_ms),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/cartpole_long.pt")
    p.add_argument("--out", default="runs/distill_cartpole", help="folder for the policy, loss curve and metrics")
    p.add_argument("--policy", default=None, help="evaluate this policy.pt instead of distilling a new one")
    p.add_argument("--episodes", type=int, default=10, help="evaluation episodes per planner (same seeds for all)")
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--replay-states", type=int, default=3000)
    p.add_argument("--fit-steps", type=int, default=3000)
    p.add_argument("--dagger-rounds", type=int, default=4)
    p.add_argument("--dagger-episodes", type=int, default=2)
    p.add_argument("--dagger-steps", type=int, default=1500)
    p.add_argument("--loss", default="nll", choices=["mse", "nll"])
    p.add_argument("--latency-calls", type=int, default=200)
    p.add_argument("--fraction", type=float, default=0.25, help="share of CEM's candidates from the policy")
    p.add_argument("--budgets", default="50,25,12,6", help="candidate counts J to compare below J=100")
    p.add_argument("--skip-proposal", action="store_true")
    p.add_argument("--gradient", action="store_true", help="also compare the gradient planner's policy warm start")
    p.add_argument("--mcts", default=None, metavar="VALUE", help="also compare MCTS's proposals (the value file of mcts_cartpole.py)")
    p.add_argument("--json", default="benchmarks/results/distill_cartpole.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    out: dict = {
        "checkpoint": args.checkpoint, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.processor() or platform.machine(),
        "args": vars(args),
    }
    seeds = [args.eval_seed + i for i in range(args.episodes)]
    teacher = lp.CEM(horizon=H, iterations=I, candidates=J, elites=K)
    factory = lambda m: lp.Objective(m)  # noqa: E731  (the learned reward)

    # 1-2. distil (or load) and evaluate student and teacher on the same seeds
    if args.policy is None:
        cfg = DistillRunConfig(
            checkpoint=args.checkpoint, teacher=f"cem:iterations={I},candidates={J},elites={K}", out=args.out, horizon=H,
            replay_states=args.replay_states, fit_steps=args.fit_steps, dagger_rounds=args.dagger_rounds,
            dagger_episodes=args.dagger_episodes, dagger_steps=args.dagger_steps, eval_episodes=args.episodes,
            eval_seed=args.eval_seed, eval_teacher=True, progress=False,
            distill=DistillConfig(loss=args.loss),
        )
        res = run_distillation(cfg, objective_factory=factory)
        model, env, policy = res.model, res.env, res.distiller.policy
        m = res.metrics
        out["distillation"] = {k: v for k, v in m.items() if k != "loss_history"}
        student, teacher_eval = m["student"], m["teacher_eval"]
        print(f"distilled in {m['wall_s'] / 60:.1f} min: {m['labels']} labels, {m['steps']} steps", flush=True)
        for r in m["rounds"]:
            print(f"  DAgger round {r['round']}: student return {r['mean_return']:.1f} on seeds {r['seeds']}", flush=True)
    else:
        model, train_cfg, _ = lp.load_checkpoint(args.checkpoint)
        env = lp.make_env(train_cfg.env, obs=train_cfg.obs, action_repeat=train_cfg.action_repeat, seed=0)
        policy = lp.io.load_policy(args.policy)
        student = evaluate_planner(env, model, PolicyPlanner(policy), factory, seeds)
        teacher_eval = evaluate_planner(env, model, teacher, factory, seeds)
    ratio = student["mean"] / teacher_eval["mean"]
    out["student"], out["teacher"], out["return_ratio"] = student, teacher_eval, ratio
    print(f"returns on seeds {seeds}: student {student['mean']:.1f} ± {student['std']:.1f} {[round(r) for r in student['returns']]}, "
          f"teacher {teacher_eval['mean']:.1f} ± {teacher_eval['std']:.1f} {[round(r) for r in teacher_eval['returns']]}; "
          f"ratio {ratio:.3f}", flush=True)

    # 3. latency on beliefs of recorded episodes
    ep_dir = Path(args.checkpoint).with_suffix("") / "episodes"
    if not ep_dir.is_dir():
        ep_dir = Path(args.checkpoint).parent / "episodes"
    buf = ReplayBuffer(ep_dir)
    buf.load_directory()
    beliefs = replay_beliefs(model, buf.episodes[-5:], generator=torch.Generator().manual_seed(0))
    lat = _latency(model, teacher, PolicyPlanner(policy), beliefs, args.latency_calls)
    out["latency"] = lat
    print(f"latency per decision (plan(), B=1, 1 thread, {lat['calls']} calls): teacher {lat['teacher_ms_median']:.2f} ms, "
          f"student {lat['student_ms_median']:.3f} ms, ratio {lat['ratio_median']:.0f}x", flush=True)

    # 4. the policy as CEM's proposal
    rows = [{"planner": "CEM", "candidates": J, "elites": K, **{k: teacher_eval[k] for k in ("mean", "std", "returns", "model_evals", "plan_ms")}}]
    if not args.skip_proposal:
        budgets = [J] + [int(b) for b in args.budgets.split(",") if b]
        for j in budgets:
            k = max(2, round(j / 10))
            base = lp.CEMConfig(horizon=H, iterations=I, candidates=j, elites=k)
            configs = [("CEM+policy", lp.CEM(dataclasses.replace(base, policy_fraction=args.fraction), proposal=policy))]
            if j != J:
                configs.insert(0, ("CEM", lp.CEM(base)))
            for name, planner in configs:
                t0 = time.perf_counter()
                r = evaluate_planner(env, model, planner, factory, seeds)
                rows.append({"planner": name, "candidates": j, "elites": k,
                             **{key: r[key] for key in ("mean", "std", "returns", "model_evals", "plan_ms")}})
                print(f"  {name:10s} J={j:3d} K={k:2d}: return {r['mean']:.1f} ± {r['std']:.1f}  "
                      f"{r['model_evals']:.0f} evals/decision  {r['plan_ms']:.1f} ms  ({time.perf_counter() - t0:.0f} s)", flush=True)
        target = teacher_eval["mean"]
        reached = [r for r in rows if r["planner"] == "CEM+policy" and r["mean"] >= target]
        best = min(reached, key=lambda r: r["model_evals"]) if reached else None
        out["proposal"] = {
            "fraction": args.fraction, "rows": rows, "target_return": target,
            "smallest_budget_reaching_target": None if best is None else {
                "candidates": best["candidates"], "model_evals": best["model_evals"], "mean": best["mean"],
                "evals_ratio": rows[0]["model_evals"] / best["model_evals"]},
        }
        print("\n| planner | J | K | model_evals/decision | return mean ± std | ms/decision |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['planner']} | {r['candidates']} | {r['elites']} | {r['model_evals']:.0f} | {r['mean']:.1f} ± {r['std']:.1f} | {r['plan_ms']:.1f} |")
        if best is not None:
            print(f"\nCEM+policy reaches plain CEM's return at J=100 ({target:.1f}, {rows[0]['model_evals']:.0f} evals) with "
                  f"J={best['candidates']}: {best['mean']:.1f} at {best['model_evals']:.0f} evals per decision "
                  f"({out['proposal']['smallest_budget_reaching_target']['evals_ratio']:.1f}x fewer)")
        else:
            print(f"\nCEM+policy did not reach plain CEM's return at J=100 ({target:.1f}) at any budget tried")

    # 5. the gradient planner's warm start
    if args.gradient:
        gcfg = lp.GradientConfig(horizon=H, iterations=10, restarts=4, init="zeros", optimizer="adam", max_evals=None)  # as measured
        grows = []
        for name, planner in (("Gradient (zeros)", lp.GradientPlanner(gcfg)),
                              ("Gradient (policy)", lp.GradientPlanner(dataclasses.replace(gcfg, init="policy"), proposal=policy))):
            r = evaluate_planner(env, model, planner, factory, seeds)
            grows.append({"planner": name, **{key: r[key] for key in ("mean", "std", "returns", "model_evals", "plan_ms")}})
            print(f"  {name:18s}: return {r['mean']:.1f} ± {r['std']:.1f}  {r['model_evals']:.0f} evals  {r['plan_ms']:.0f} ms", flush=True)
        out["gradient"] = grows

    # 6. MCTS's proposal
    if args.mcts:
        learner = lp.io.load_critic(args.mcts)
        vfactory = lambda m: lp.Objective(m, discount=0.99, value=learner.value)  # noqa: E731
        mcfg = lp.MCTSConfig(simulations=188, children=8, horizon=5)
        mrows = []
        for name, planner in (("MCTS+V (Gaussian)", lp.MCTS(mcfg)), ("MCTS+V (policy)", lp.MCTS(mcfg, proposal=policy))):
            r = evaluate_planner(env, model, planner, vfactory, seeds, warm_start=True)
            mrows.append({"planner": name, **{key: r[key] for key in ("mean", "std", "returns", "model_evals", "plan_ms")}})
            print(f"  {name:18s}: return {r['mean']:.1f} ± {r['std']:.1f}  {r['model_evals']:.0f} evals  {r['plan_ms']:.0f} ms", flush=True)
        out["mcts"] = mrows

    out["wall_s"] = time.perf_counter() - t_start
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
