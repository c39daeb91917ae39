"""Zero-shot goal on a cartpole-swingup checkpoint: how the width of the cart-position term, a
larger CEM and integral action trade holding x = target against keeping the pole up.

    OMP_NUM_THREADS=1 python benchmarks/goal_sweep.py CHECKPOINT --width 0.3 --ki 0.05 --targets 0.5

Reward per decision: `rewards_cartpole.goal_reward`,
8 * upright * small_velocity * small_control * (0.25 + 0.75 exp(-((x - target) / WIDTH)^2)),
with the target passed per plan call through the objective's context. `--ki` adds integral
action (offset-free MPC, as process-control MPC does against model bias): after every decision
with the pole up (cos > 0.9) the commanded target moves by KI * (target - x), accumulated, so a
steady offset of the learned model is cancelled from outside the planner. `--narrow W2` makes the
cart term two-scale: half of the bump from the WIDTH Gaussian (guidance from afar), half from a
W2-wide one (precision near the target). CEM: `--cem H I J K`
(default 16 8 300 30), `--beta` its coloured-noise exponent (iCEM; default 0, white),
`--warm` warm starts from the previous plan. One episode per target (env and planner seed `--seed`); the numbers are
over the last 63 decisions (~500 env steps), from the true environment state.
"""

import argparse
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import latentplan as lp  # noqa: E402
from rewards_cartpole import TAIL_DECISIONS, goal_reward  # noqa: E402


def episode(model, env, target: float, width: float, ki: float, cem: lp.CEM, seed: int, narrow: float | None = None,
            warm_start: bool = False) -> dict:
    """One episode holding `target`; returns the tail statistics."""
    ctx = {"target_x": target, "width": width, **({"narrow": narrow} if narrow else {})}
    agent = lp.Agent(model, cem, objective=lambda m: lp.Objective(m, rewards=[goal_reward], context=dict(ctx)),
                     warm_start=warm_start)
    gen = torch.Generator().manual_seed(seed)
    obs, _ = env.reset(seed=seed)
    agent.reset(generator=gen)
    xs, cos, ret, integral, done = [], [], 0.0, 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(agent.act(obs))
        ret, done = ret + float(r), term or trunc
        xs.append(float(obs[0]))
        cos.append(float(obs[1]))
        if ki and cos[-1] > 0.9:
            integral += target - xs[-1]
        ctx["target_x"] = target + ki * integral
    x, c = np.array(xs[-TAIL_DECISIONS:]), np.array(cos[-TAIL_DECISIONS:])
    err = np.abs(x - target)
    return {"return": ret, "mean_abs_x_error": float(err.mean()), "max_abs_x_error": float(err.max()),
            "frac_within_0.1": float((err < 0.1).mean()), "frac_cos_gt_0.9": float((c > 0.9).mean()),
            "min_cos": float(c.min()), "final_command": ctx["target_x"]}


def main() -> None:
    """Run one episode per target and print the goal statistics."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--width", type=float, default=0.3)
    p.add_argument("--ki", type=float, default=0.0)
    p.add_argument("--narrow", type=float, default=None,
                   help="two-scale cart term: half of the bump from a Gaussian of this width")
    p.add_argument("--targets", type=float, nargs="+", default=[0.5])
    p.add_argument("--cem", type=int, nargs=4, default=[16, 8, 300, 30], metavar=("H", "I", "J", "K"))
    p.add_argument("--beta", type=float, default=0.0, help="iCEM coloured-noise exponent (smoother action sequences)")
    p.add_argument("--warm", action="store_true", help="warm-start each decision from the previous plan, shifted")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, cfg, _ = lp.load_checkpoint(args.checkpoint)
    env = lp.make_env(cfg.env, seed=args.seed)
    h, i, j, k = args.cem
    for t in args.targets:
        s = episode(model, env, t, args.width, args.ki, lp.CEM(horizon=h, iterations=i, candidates=j, elites=k, noise_beta=args.beta), args.seed,
                    args.narrow, args.warm)
        print(f"width {args.width} narrow {args.narrow} ki {args.ki} CEM H{h} I{i} J{j} K{k} beta {args.beta} warm {args.warm} target {t:+.2f}: return {s['return']:.1f}, "
              f"mean |x - t| {s['mean_abs_x_error']:.3f} (max {s['max_abs_x_error']:.3f}), within 0.1: "
              f"{s['frac_within_0.1']:.2f}, pole cos > 0.9: {s['frac_cos_gt_0.9']:.2f} (min {s['min_cos']:.2f}), "
              f"final command {s['final_command']:+.2f}", flush=True)


if __name__ == "__main__":
    main()
