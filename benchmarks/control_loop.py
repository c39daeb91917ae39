"""The 20 Hz control loop on the CPU: a budgeted CEM controlling the simulated cartpole in real time.

    OMP_NUM_THREADS=1 python benchmarks/control_loop.py --checkpoint runs/cartpole_long.pt --seeds 0 1 2

For each seed, three episodes of dmc:cartpole-swingup (1000 physics steps, 125 decisions):

1. `offline`: `run_episode` with the same planner and no deadline (the environment waits for
   the planner; the reference return).
2. `sync`: `SimulatedRobot` at real-time factor 1.6 (one 80 ms decision of simulated time per
   50 ms of wall time), `run_control_loop(mode="sync")` at 20 Hz: each tick reads the state,
   `MPCController.act` plans within `--budget-ms` (thread mode: the fallback answers if the
   plan is late) and the action goes out when it is ready (the robot holds the previous one
   meanwhile).
3. `async`: the same robot, `run_control_loop(mode="async")`: planning in a background thread
   for the next tick from the predicted belief, actions sent on the tick from the newest plan.

Then one `sync` episode with a planner far too slow for the period (PlaNet's CEM, J = 1000,
I = 10, about 1 s per decision): the controller must still answer every tick through its
fallback. Everything single-threaded (torch and the simulator share the process; the loop
uses two Python threads). The load average of the machine is recorded with every episode:
other processes on the same cores cause deadline misses that are not the controller's.

Writes the table to stdout and the rows to `benchmarks/results/control_loop.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import latentplan as lp
from latentplan.control import ControllerConfig, MPCController, SimulatedRobot, run_control_loop


def _realtime(model, planner, warm, seed, mode, rate, rtf, budget_ms):
    robot = SimulatedRobot("dmc:cartpole-swingup", real_time_factor=rtf, seed=seed)
    ctrl = MPCController(model, planner, ControllerConfig(budget_ms=budget_ms, mode="thread", warm_start=warm, seed=seed))
    ctrl.warmup(robot.reset(seed))
    load0 = os.getloadavg()[0]
    stats = run_control_loop(robot, ctrl, rate, None, mode=mode)
    ctrl.close()
    c, r = stats.controller, stats.robot
    return {
        "mode": mode, "seed": seed, "return": r["return"], "decisions": c.steps,
        "out_of_bounds": r["actions_rejected"] + r["actions_clipped"] + stats.invalid_actions,
        "deadline_misses": c.deadline_misses, "miss_rate": c.deadline_misses / max(c.steps, 1),
        "fallbacks": c.fallbacks, "planner_failures": c.planner_failures, "late_actions": c.late_steps,
        "latency_ms_p50": c.latency_ms_p50, "latency_ms_p95": c.latency_ms_p95, "latency_ms_p99": c.latency_ms_p99,
        "latency_ms_max": c.latency_ms_max, "send_delay_ms_p99": stats.send_delay_ms_p99, "overruns": stats.overruns,
        "model_evals_per_decision": c.model_evals_per_step, "iterations_mean": c.iterations_mean,
        "sim_time_s": r["sim_time_s"], "wall_s": stats.wall_s, "load_avg_1min": [load0, os.getloadavg()[0]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/cartpole_long.pt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rate", type=float, default=20.0, help="control rate, Hz")
    p.add_argument("--candidates", type=int, default=50)
    p.add_argument("--iterations", type=int, default=4)
    p.add_argument("--elites", type=int, default=5)
    p.add_argument("--budget-ms", type=float, default=35.0, help="the sync controller's latency budget")
    p.add_argument("--modes", nargs="+", default=["offline", "sync", "async"])
    p.add_argument("--skip-slow-planner", action="store_true")
    p.add_argument("--compile", default="auto", choices=["auto", "eager", "fused", "fused_compile"],
                   help="the CEM's compile mode; fused_compile is compiled by a warm-up plan before the first episode "
                        "(under a deadline, auto plans eagerly)")
    p.add_argument("--json", default="benchmarks/results/control_loop.json")
    args = p.parse_args()
    torch.set_num_threads(1)

    model, config, _ = lp.load_checkpoint(args.checkpoint)
    repeat = config.action_repeat or 8
    rtf = args.rate * repeat * 0.01
    planner = lp.CEM(horizon=12, iterations=args.iterations, candidates=args.candidates, elites=args.elites,
                     compile=args.compile)
    if args.compile == "fused_compile":  # compile (or load the cached kernels) before any loop runs
        t0 = time.perf_counter()
        belief = model.initial(1)
        for _ in range(2):
            planner.plan(lp.Objective(model), belief, generator=torch.Generator().manual_seed(0))
        print(f"  compiled the fused search in {time.perf_counter() - t0:.1f} s", flush=True)
    warm = False
    rows = []
    for seed in args.seeds:
        for mode in args.modes:
            t0 = time.perf_counter()
            if mode == "offline":
                env = lp.make_env(config.env, obs=config.obs, action_repeat=config.action_repeat, seed=seed)
                load0 = os.getloadavg()[0]
                _, st = lp.run_episode(env, lp.Agent(model, planner, warm_start=warm), seed=seed,
                                       generator=torch.Generator().manual_seed(seed))
                row = {"mode": mode, "seed": seed, "return": st.ret, "decisions": st.decisions, "plan_ms_mean": st.plan_ms,
                       "model_evals_per_decision": st.model_evals, "load_avg_1min": [load0, os.getloadavg()[0]]}
            else:
                row = _realtime(model, planner, warm, seed, mode, args.rate, rtf, args.budget_ms if mode == "sync" else None)
            rows.append(row)
            extra = "" if mode == "offline" else (
                f" misses {row['deadline_misses']}/{row['decisions']}  p50/p95/p99 {row['latency_ms_p50']:.1f}/"
                f"{row['latency_ms_p95']:.1f}/{row['latency_ms_p99']:.1f} ms  out of bounds {row['out_of_bounds']}")
            print(f"  seed {seed} {mode:7s}: return {row['return']:.1f}{extra}  load {row['load_avg_1min'][0]:.2f}"
                  f" ({time.perf_counter() - t0:.0f} s)", flush=True)

    slow = None
    if not args.skip_slow_planner:
        slow = _realtime(model, lp.CEM(horizon=12, iterations=10, candidates=1000, elites=100), False, args.seeds[0],
                         "sync", args.rate, rtf, args.budget_ms)
        print(f"  PlaNet CEM (J=1000, I=10) at {args.rate:g} Hz: {slow['deadline_misses']}/{slow['decisions']} misses, "
              f"{slow['fallbacks']} fallbacks, {slow['late_actions']} late actions, p99 {slow['latency_ms_p99']:.1f} ms, "
              f"return {slow['return']:.1f}")

    period = 1e3 / args.rate
    print(f"\n{args.rate:g} Hz ({period:.0f} ms), real-time factor {rtf:g}; CEM H=12 I={args.iterations} "
          f"J={args.candidates} K={args.elites}; sync budget {args.budget_ms:g} ms; seeds {args.seeds}\n")
    print("| mode | return (mean) | vs offline | out of bounds | deadline misses | latency p50 / p95 / p99 ms | "
          "model evals/decision | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.fmean(r["return"] for r in rows if r["mode"] == "offline") if "offline" in args.modes else None
    summary = {}
    for mode in args.modes:
        rs = [r for r in rows if r["mode"] == mode]
        mean = statistics.fmean(r["return"] for r in rs)
        rel = "" if base is None else f"{100 * (mean / base - 1):+.1f} %"
        load = statistics.fmean(r["load_avg_1min"][0] for r in rs)
        if mode == "offline":
            print(f"| offline (no deadline) | {mean:.1f} | | | | plan {statistics.fmean(r['plan_ms_mean'] for r in rs):.1f} (mean) "
                  f"| {statistics.fmean(r['model_evals_per_decision'] for r in rs):.0f} | {load:.2f} |")
            summary[mode] = {"return_mean": mean}
            continue
        n = sum(r["decisions"] for r in rs)
        miss = sum(r["deadline_misses"] for r in rs)
        oob = sum(r["out_of_bounds"] for r in rs)
        p99 = max(r["latency_ms_p99"] for r in rs)
        print(f"| {mode} | {mean:.1f} | {rel} | {oob} | {miss}/{n} ({100 * miss / n:.1f} %) | "
              f"{statistics.fmean(r['latency_ms_p50'] for r in rs):.1f} / {statistics.fmean(r['latency_ms_p95'] for r in rs):.1f}"
              f" / {p99:.1f} (worst episode) | {statistics.fmean(r['model_evals_per_decision'] for r in rs):.0f} | {load:.2f} |")
        summary[mode] = {"return_mean": mean, "return_vs_offline": None if base is None else mean / base,
                         "out_of_bounds": oob, "deadline_misses": miss, "decisions": n, "miss_rate": miss / n,
                         "latency_ms_p99_worst": p99, "p99_under_period": p99 < period}
    out = {
        "checkpoint": args.checkpoint, "env": config.env, "rate_hz": args.rate, "period_ms": period,
        "real_time_factor": rtf, "planner": repr(planner), "sync_budget_ms": args.budget_ms, "seeds": args.seeds,
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "summary": summary, "rows": rows, "too_slow_planner": slow,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
