"""Known rewards in Python on a cartpole-swingup model: the explicit reward vs the learned head, and new goals.

    OMP_NUM_THREADS=1 python benchmarks/rewards_cartpole.py --checkpoint /tmp/ckpt_long.pt --episodes 4 --seed 0

Three parts, all single-threaded on the CPU, with the demo's CEM (H=12, I=5, J=100, K=10):

1. Sanity check. dm_control's swingup reward re-implemented in torch (`swingup_step_reward`) is
   compared with dm_control's own `timestep.reward` on real simulator states (1 env step each, no
   action repeat): max abs error. The per-decision approximation used for planning, 8 x the
   per-step formula at the arrival state, is compared with the env's reward per decision (the sum
   over the 8 repeated steps) on real decisions.
2. Explicit reward vs learned head: `--episodes` episodes each with the learned reward head and
   with the explicit reward (`@lp.reward` over the decoded quantities), same env seeds and the
   same planner seeds; mean return +- std and the ratio explicit / learned.
3. Zero-shot new goal: hold the cart at x = target with the pole up (`goal_reward`, context
   `{"target_x": t}`), one episode per target; over the last 63 decisions (504 env steps) of
   the true env state: mean |x - target|, fraction with |x - target| < 0.1, fraction with
   pole_cos > 0.9.

Writes the table to stdout and everything to `benchmarks/results/rewards_cartpole.json`.
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

import numpy as np
import torch

import latentplan as lp

#: dm_control's `rewards._DEFAULT_VALUE_AT_MARGIN`.
VALUE_AT_MARGIN = 0.1
#: PlaNet's action repeat for cartpole: one decision is 8 simulator steps.
ACTION_REPEAT = 8
#: The last 500 env steps of a 1000-step episode, in decisions (ceil(500 / 8)).
TAIL_DECISIONS = 63
DEMO_CEM = lp.CEMConfig(horizon=12, iterations=5, candidates=100, elites=10)


# --------------------------------------------------------------------------- rewards in torch
def gaussian_tolerance(x: torch.Tensor, margin: float, value_at_margin: float = VALUE_AT_MARGIN) -> torch.Tensor:
    """dm_control `rewards.tolerance(x, bounds=(0, 0), margin, sigmoid="gaussian")` in torch.

    With bounds (0, 0) the distance to the bounds is |x|, and the gaussian sigmoid is 1 at 0, so
    the in-bounds case needs no branch: exp(-0.5 (|x| / margin * scale)^2), scale = sqrt(-2 ln v).
    """
    scale = math.sqrt(-2.0 * math.log(value_at_margin))
    return torch.exp(-0.5 * (x / margin * scale) ** 2)


def quadratic_tolerance(x: torch.Tensor, margin: float) -> torch.Tensor:
    """dm_control `tolerance(x, margin, value_at_margin=0, sigmoid="quadratic")`: max(0, 1 - (x/margin)^2)."""
    return (1.0 - (x / margin) ** 2).clamp_min(0.0)


def swingup_step_reward(cart_x, pole_cos, pole_angvel, u):
    """dm_control cartpole-swingup's per-step reward (`Balance._get_reward`, sparse=False), `[N]` each.

    upright * centered * small_control * small_velocity with upright = (cos + 1) / 2,
    centered = (1 + tol(x, margin=2)) / 2, small_control = (4 + tol(u, margin=1, 0, quadratic)) / 5,
    small_velocity = (1 + tol(angvel, margin=5)) / 2. In [0, 1]; differentiable.
    """
    upright = (pole_cos + 1.0) / 2.0
    centered = (1.0 + gaussian_tolerance(cart_x, 2.0)) / 2.0
    small_control = (4.0 + quadratic_tolerance(u, 1.0)) / 5.0
    small_velocity = (1.0 + gaussian_tolerance(pole_angvel, 5.0)) / 2.0
    return upright * centered * small_control * small_velocity


@lp.reward(inputs="decoded")
def swingup_reward(obs, action, ctx):
    """The env's reward per decision, approximated as ACTION_REPEAT x the per-step formula evaluated
    at the decoded arrival state (the 8 intermediate states are not imagined by the model)."""
    return ACTION_REPEAT * swingup_step_reward(obs["cart_x"], obs["pole_cos"], obs["pole_angvel"], action[:, 0])


@lp.reward(inputs="decoded")
def goal_reward(obs, action, ctx):
    """Hold the cart at `ctx["target_x"]` with the pole up and still (per decision, 8 env steps).

    upright * small_velocity * small_control as in swingup, times a cart term that replaces
    dm_control's `centered`: near = 0.25 + 0.75 exp(-((x - target) / 0.3)^2). The floor 0.25 keeps
    swinging up worth it anywhere on the track; the 0.3 m width gives CEM a return slope across
    the whole 1-m move (a 0.1-m-wide bump would be flat, exp(-25), from the start) while still
    paying 8 % less at 0.1 m off than on target.
    """
    upright = (obs["pole_cos"] + 1.0) / 2.0
    small_velocity = (1.0 + gaussian_tolerance(obs["pole_angvel"], 5.0)) / 2.0
    small_control = (4.0 + quadratic_tolerance(action[:, 0], 1.0)) / 5.0
    width = ctx.get("width", 0.3)  # benchmarks/goal_sweep.py varies it
    d = obs["cart_x"] - ctx["target_x"]
    bump = torch.exp(-((d / width) ** 2))
    if "narrow" in ctx:  # goal_sweep --narrow: half the bump from a second, narrower Gaussian
        bump = 0.5 * bump + 0.5 * torch.exp(-((d / ctx["narrow"]) ** 2))
    near = 0.25 + 0.75 * bump
    return ACTION_REPEAT * upright * small_velocity * small_control * near


# --------------------------------------------------------------------------- sanity check
def sanity_check(seed: int, steps: int = 1000, decisions: int = 125) -> dict:
    """The torch formula against dm_control on real states; and the per-decision approximation."""
    from dm_control import suite

    rng = np.random.default_rng(seed)
    env = suite.load("cartpole", "swingup", task_kwargs={"random": seed})
    ts = env.reset()
    errors = []
    for _ in range(steps):
        u = rng.uniform(-1.0, 1.0, size=1)
        ts = env.step(u)
        pos, vel = ts.observation["position"], ts.observation["velocity"]
        mine = swingup_step_reward(
            torch.tensor(pos[0], dtype=torch.float64), torch.tensor(pos[1], dtype=torch.float64),
            torch.tensor(vel[1], dtype=torch.float64), torch.tensor(u[0], dtype=torch.float64),
        )
        errors.append(abs(float(mine) - float(ts.reward)))

    # per decision: the env's sum over 8 steps vs 8 x the formula at the arrival state
    penv = lp.make_env("dmc:cartpole-swingup", seed=seed)
    obs, _ = penv.reset(seed=seed)
    approx_err, env_rewards = [], []
    for _ in range(decisions):
        # a smooth random policy visits upright states too (a pure random one rarely does)
        u = np.clip(np.sin(0.15 * len(env_rewards)) + 0.3 * rng.standard_normal(1), -1, 1).astype(np.float32)
        obs, r, term, trunc, _ = penv.step(u)
        o = torch.as_tensor(obs, dtype=torch.float64)
        est = ACTION_REPEAT * float(swingup_step_reward(o[0], o[1], o[4], torch.tensor(float(u[0]), dtype=torch.float64)))
        approx_err.append(abs(est - float(r)))
        env_rewards.append(float(r))
        if term or trunc:
            break
    return {
        "per_step_states": steps,
        "per_step_max_abs_error": max(errors),
        "per_decision_decisions": len(approx_err),
        "per_decision_mean_abs_error": float(np.mean(approx_err)),
        "per_decision_max_abs_error": float(np.max(approx_err)),
        "per_decision_mean_env_reward": float(np.mean(env_rewards)),
        "per_decision_sum_env": float(np.sum(env_rewards)),
    }


# --------------------------------------------------------------------------- episodes
def run(model, env, *, rewards, context, seed: int, planner: lp.CEM | None = None):
    """One episode with CEM planning on `rewards` (None: the learned head); `(episode, stats)`."""
    agent = lp.Agent(
        model, planner or lp.CEM(DEMO_CEM),
        objective=(lambda m: lp.Objective(m, rewards=rewards, context=context)) if rewards is not None else None,
    )
    gen = torch.Generator().manual_seed(seed)
    return lp.run_episode(env, agent, seed=seed, generator=gen)


def tail_metrics(episode: dict, target: float) -> dict:
    """Over the last TAIL_DECISIONS observations (true state): |x - target| and pole statistics."""
    obs = episode["obs"][-TAIL_DECISIONS:]
    x, cos = obs[:, 0], obs[:, 1]
    err = np.abs(x - target)
    return {
        "mean_abs_x_error": float(err.mean()),
        "frac_within_0.1": float((err < 0.1).mean()),
        "frac_cos_gt_0.9": float((cos > 0.9).mean()),
        "final_x": float(x[-1]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="/tmp/ckpt_long.pt")
    p.add_argument("--episodes", type=int, default=4, help="episodes per reward in part 2")
    p.add_argument("--seed", type=int, default=0, help="episode i uses env and planner seed seed + i")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, -0.5, 0.25])
    p.add_argument("--skip", nargs="*", default=[], choices=["sanity", "explicit", "goal"])
    p.add_argument("--json", default="benchmarks/results/rewards_cartpole.json")
    args = p.parse_args()
    torch.set_num_threads(1)

    model, config, _ = lp.load_checkpoint(args.checkpoint)
    env = lp.make_env(config.env, obs=config.obs, action_repeat=config.action_repeat, seed=args.seed)
    out: dict = {
        "checkpoint": args.checkpoint, "env": config.env, "planner": DEMO_CEM.__dict__,
        "seed": args.seed, "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(lp.check_reward(swingup_reward, model))
    print(lp.check_reward(goal_reward, model, context={"target_x": 0.5}))

    if "sanity" not in args.skip:
        s = sanity_check(args.seed)
        out["sanity"] = s
        print("\n## Sanity check: torch reward vs dm_control")
        print(f"per-step formula on {s['per_step_states']} real states: max |torch - dm_control| = "
              f"{s['per_step_max_abs_error']:.2e}")
        print(f"per-decision 8 x r(arrival) vs env's 8-step sum on {s['per_decision_decisions']} decisions: "
              f"mean |err| {s['per_decision_mean_abs_error']:.3f}, max {s['per_decision_max_abs_error']:.3f} "
              f"(mean env reward per decision {s['per_decision_mean_env_reward']:.3f})")

    if "explicit" not in args.skip:
        print("\n## Explicit reward vs learned head (demo CEM)")
        rows = {}
        for label, rewards in [("learned", None), ("explicit", [swingup_reward])]:
            rets, ms = [], []
            for i in range(args.episodes):
                t0 = time.perf_counter()
                _, st = run(model, env, rewards=rewards, context=None, seed=args.seed + i)
                rets.append(st.ret)
                ms.append(st.plan_ms)
                print(f"  {label:8s} seed {args.seed + i}: return {st.ret:7.1f}  ({st.plan_ms:.0f} ms/decision, "
                      f"{time.perf_counter() - t0:.0f} s)", flush=True)
            rows[label] = {
                "returns": rets, "mean": statistics.fmean(rets),
                "std": statistics.stdev(rets) if len(rets) > 1 else 0.0, "plan_ms": statistics.fmean(ms),
            }
        ratio = rows["explicit"]["mean"] / rows["learned"]["mean"]
        out["explicit_vs_learned"] = {**rows, "ratio": ratio, "episodes": args.episodes}
        print(f"\n| reward | episodes | return mean ± std | ms/decision |\n|---|---|---|---|")
        for label, r in rows.items():
            print(f"| {label} | {args.episodes} | {r['mean']:.1f} ± {r['std']:.1f} | {r['plan_ms']:.0f} |")
        print(f"ratio explicit / learned = {ratio:.3f} (target: within 5 %, i.e. >= 0.95)")

    if "goal" not in args.skip:
        print("\n## Zero-shot new goal: hold x = target, pole up (goal_reward, one episode per target)")
        goals = []
        for t in args.targets:
            ep, st = run(model, env, rewards=[goal_reward], context={"target_x": t}, seed=args.seed)
            m = {"target_x": t, "return_env": st.ret, **tail_metrics(ep, t)}
            goals.append(m)
            print(f"  target {t:+.2f}: done ({st.plan_ms:.0f} ms/decision)", flush=True)
        out["goal"] = goals
        print(f"\n| target | env return | mean abs(x - target) | frac abs(x - t) < 0.1 | frac cos > 0.9 | final x |")
        print("|---|---|---|---|---|---|")
        for m in goals:
            print(f"| {m['target_x']:+.2f} | {m['return_env']:.1f} | {m['mean_abs_x_error']:.3f} | "
                  f"{m['frac_within_0.1']:.2f} | {m['frac_cos_gt_0.9']:.2f} | {m['final_x']:+.3f} |")
        print(f"(last {TAIL_DECISIONS} decisions = {TAIL_DECISIONS * ACTION_REPEAT} env steps, true env state)")

    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
