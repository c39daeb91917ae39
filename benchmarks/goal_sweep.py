"""Zero-shot goal on a cartpole-swingup checkpoint: how the width of the cart-position term and a
larger CEM trade holding x = target against keeping the pole up.

    OMP_NUM_THREADS=1 python benchmarks/goal_sweep.py CHECKPOINT WIDTH TARGET [TARGET ...]

CEM: H=16, I=8, J=300, K=30. One episode per target (seed 0); the numbers are over the last 63
decisions (~500 env steps), from the true environment state. Reward per decision: `rewards_cartpole.goal_reward`,
8 * upright * small_velocity * small_control * (0.25 + 0.75 exp(-((x - target) / WIDTH)^2)).
"""

import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import latentplan as lp  # noqa: E402
from rewards_cartpole import goal_reward  # noqa: E402


def main() -> None:
    """Run one episode per target and print the goal statistics."""
    torch.set_num_threads(1)
    checkpoint, width, targets = sys.argv[1], float(sys.argv[2]), [float(x) for x in sys.argv[3:]]

    model, cfg, _ = lp.load_checkpoint(checkpoint)
    env = lp.make_env(cfg.env, seed=0)
    for t in targets:
        agent = lp.Agent(model, lp.CEM(horizon=16, iterations=8, candidates=300, elites=30),
                         objective=lambda m: lp.Objective(m, rewards=[goal_reward], context={"target_x": t, "width": width}))
        ep, st = lp.run_episode(env, agent, seed=0, generator=torch.Generator().manual_seed(0))
        last = ep["obs"][-63:]
        err = np.abs(last[:, 0] - t)
        print(f"width {width} target {t:+.2f}: return {st.ret:.1f}, mean |x - t| {err.mean():.3f}, "
              f"within 0.1: {(err < 0.1).mean():.2f}, pole cos > 0.9: {(last[:, 1] > 0.9).mean():.2f}, "
              f"{st.plan_ms:.0f} ms per decision", flush=True)


if __name__ == "__main__":
    main()
