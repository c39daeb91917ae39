"""Probe heads on a cartpole-swingup model trained from pixels: how well they decode the named state.

    OMP_NUM_THREADS=1 python benchmarks/pixel_probes.py --episodes 12 --run-dir runs/pixel_probes

Trains a small pixel model with PlaNet's loop (`obs="pixels"`, probes on: the env's
`info["state"]` is the probe target; `probe_detach=True`, so the world model trains exactly as
PlaNet's), then runs one evaluation episode with CEM on the learned reward and compares the
probes' decoded `cart_x`, `pole_cos`, `pole_sin`, `cart_vel`, `pole_angvel` on the filtered
beliefs (posterior) with the true simulator state: mean absolute error, the error of the best
constant guess (the state's own mean) for scale, and the correlation. Also the swingup reward
computed from the probes (`rewards_cartpole.swingup_reward`) against the env's reward.
With `--refit-steps N` the probes are then refit offline (`RSSMWorldModel.fit_probes`, N Adam
steps) on the posterior beliefs of all stored episodes, and measured again on the same held-out
episode; `--skip-train` reuses the run folder's checkpoint as it is.

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
from latentplan.planners.value import posterior_beliefs

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
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--refit-steps", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = lp.demo_config(
        obs="pixels", episodes=args.episodes, seed_episodes=args.seed_episodes, updates_per_episode=args.updates, batch_size=16, chunk_length=32,
        eval_every=1000, run_dir=args.run_dir, seed=args.seed, max_wall_minutes=None, resume=args.resume,
        overwrite=not args.resume,
    )
    t0 = time.time()
    summary = None if args.skip_train else lp.train(cfg)
    train_s = time.time() - t0
    model, _, _ = lp.load_checkpoint(Path(args.run_dir) / "checkpoint.pt")
    out = {"episodes": args.episodes, "updates_per_episode": args.updates, "train_s": round(train_s, 1),
           "eval_return_training": summary.eval_return if summary else None,
           "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    env = lp.make_env(cfg.env, obs="pixels", seed=10_000 + args.seed)
    out["in_loop"] = measure(model, env, cfg, args.seed)
    report("probes trained in the loop", out["in_loop"])
    if args.refit_steps:
        buffer = lp.ReplayBuffer(Path(args.run_dir) / "episodes")
        buffer.load_directory()
        beliefs, _ = posterior_beliefs(model, buffer.episodes, generator=torch.Generator().manual_seed(args.seed))
        targets = torch.from_numpy(np.concatenate([e["state"] for e in buffer.episodes]))
        losses = model.fit_probes(beliefs.features(), targets, steps=args.refit_steps,
                                  generator=torch.Generator().manual_seed(args.seed))
        out["refit"] = {"steps": args.refit_steps, "rows": int(targets.shape[0]), "first_loss": losses[0],
                        "last_loss": float(np.mean(losses[-50:])), **measure(model, env, cfg, args.seed)}
        report(f"probes refit offline ({args.refit_steps} steps on {targets.shape[0]} beliefs)", out["refit"])
    print(f"pixel model: {args.episodes} episodes x {args.updates} updates, {train_s / 60:.1f} min")
    dest = Path(__file__).parent / "results" / "pixel_probes.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))


def report(title: str, m: dict) -> None:
    """Print one measurement as a table."""
    print(f"{title}: episode return {m['episode_return']:.1f}")
    print(f"{'quantity':<12} {'MAE':>8} {'MAE const':>10} {'corr':>6}")
    for r in m["probes"]:
        print(f"{r['name']:<12} {r['mae']:>8.3f} {r['mae_constant']:>10.3f} {r['corr']:>6.3f}")
    print(f"swingup reward per decision from probes vs env: MAE {m['reward_from_probes_mae']:.3f}, "
          f"corr {m['reward_corr']:.3f}")


def measure(model, env, cfg, seed: int) -> dict:
    """One held-out episode with CEM on the learned reward: probe estimates vs the true state."""
    agent = lp.Agent(model, lp.CEM(cfg.planner))
    gen = torch.Generator().manual_seed(seed)
    obs, info = env.reset(seed=10_000 + seed)
    agent.reset(generator=gen)
    est, true, r_env, r_probe = [], [], [], []
    bound = RewardContext(model, {}).bind(swingup_reward)
    done, last = False, None
    while not done:
        action = agent.act(obs)  # filters obs into agent.belief, then plans
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
    return {
        "episode_return": float(sum(r_env) + last[1]),
        "reward_from_probes_mae": float(np.abs(np.array(r_probe) - np.array(r_env)).mean()),
        "reward_corr": float(np.corrcoef(r_probe, r_env)[0, 1]), "probes": rows,
    }


if __name__ == "__main__":
    main()
