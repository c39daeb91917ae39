"""Probe heads on a cartpole-swingup model trained from pixels: how well they decode the named state.

    OMP_NUM_THREADS=1 python benchmarks/pixel_probes.py --episodes 12 --run-dir runs/pixel_probes

Trains a small pixel model with PlaNet's loop (`obs="pixels"`, probes on: the env's
`info["state"]` is the probe target; `probe_detach=True`, so the world model trains exactly as
PlaNet's), then runs one evaluation episode with CEM on the learned reward and compares the
probes' decoded `cart_x`, `pole_cos`, `pole_sin`, `cart_vel`, `pole_angvel` on the filtered
beliefs (posterior) with the true simulator state: mean absolute error, the error of the best
constant guess (the state's own mean) for scale, and the correlation. Also the swingup reward
computed from the probes (`rewards_cartpole.swingup_reward`) against the env's reward.

Writes a table to stdout and `benchmarks/results/pixel_probes.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import latentplan as lp
from latentplan.planners.rewards import RewardContext

from rewards_cartpole import swingup_reward

NAMES = ("cart_x", "pole_cos", "pole_sin", "cart_vel", "pole_angvel")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--seed-episodes", type=int, default=5)
    p.add_argument("--run-dir", default="runs/pixel_probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = lp.demo_config(
        obs="pixels", episodes=args.episodes, seed_episodes=args.seed_episodes, updates_per_episode=args.updates, batch_size=16, chunk_length=32,
        eval_every=1000, run_dir=args.run_dir, seed=args.seed, max_wall_minutes=None, resume=args.resume,
        overwrite=not args.resume,
    )
    t0 = time.time()
    summary = lp.train(cfg)
    train_s = time.time() - t0
    model, _, _ = lp.load_checkpoint(Path(args.run_dir) / "checkpoint.pt")
    env = lp.make_env(cfg.env, obs="pixels", seed=10_000 + args.seed)
    agent = lp.Agent(model, lp.CEM(cfg.planner))
    gen = torch.Generator().manual_seed(args.seed)
    obs, info = env.reset(seed=10_000 + args.seed)
    agent.reset()
    est, true, r_env, r_probe = [], [], [], []
    bound = RewardContext(model, {}).bind(swingup_reward)
    done, last = False, None
    while not done:
        action = agent.act(obs, generator=gen)  # filters obs into agent.belief, then plans
        with torch.no_grad():
            est.append(model.probe(agent.belief)[0].numpy())
            if last is not None:  # reward of arriving here, from the probes, vs the env's
                r_probe.append(float(bound(agent.belief, last[0])[0]))
                r_env.append(last[1])
        true.append(info["state"])
        obs, reward, term, trunc, info = env.step(action)
        last = (torch.as_tensor(action)[None], float(reward))
        done = term or trunc
    est, true = np.array(est), np.array(true)
    sl = env.obs_slices
    rows = []
    for name in NAMES:
        i = sl[name].start
        e, t = est[:, i], true[:, i]
        rows.append({
            "name": name, "mae": float(np.abs(e - t).mean()), "mae_constant": float(np.abs(t - t.mean()).mean()),
            "corr": float(np.corrcoef(e, t)[0, 1]),
        })
    out = {
        "episodes": args.episodes, "updates_per_episode": args.updates, "train_s": round(train_s, 1),
        "eval_return_training": summary.eval_return, "episode_return": float(sum(r_env) + last[1]),
        "reward_from_probes_mae": float(np.abs(np.array(r_probe) - np.array(r_env)).mean()),
        "reward_corr": float(np.corrcoef(r_probe, r_env)[0, 1]), "probes": rows,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
    }
    print(f"pixel model: {args.episodes} episodes x {args.updates} updates, {train_s / 60:.1f} min; "
          f"eval episode return {out['episode_return']:.1f}")
    print(f"{'quantity':<12} {'MAE':>8} {'MAE const':>10} {'corr':>6}")
    for r in rows:
        print(f"{r['name']:<12} {r['mae']:>8.3f} {r['mae_constant']:>10.3f} {r['corr']:>6.3f}")
    print(f"swingup reward per decision from probes vs env: MAE {out['reward_from_probes_mae']:.3f}, "
          f"corr {out['reward_corr']:.3f}")
    dest = Path(__file__).parent / "results" / "pixel_probes.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
