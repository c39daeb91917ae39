"""I have a trained checkpoint; I plan for my own goal: keep the pole up with the cart at x = 0.5.

    OMP_NUM_THREADS=1 python examples/custom_reward.py /tmp/ckpt_long.pt [--target 0.5]

The model (dynamics, decoder) is learned; the reward is written here, in torch, over the named
quantities the decoder returns. Nothing is retrained.
"""

import argparse

import torch

import latentplan as lp


@lp.reward(inputs="decoded")
def cart_at_target(obs, action, ctx):
    """obs["pole_cos"], obs["cart_x"], ... are [N] tensors decoded from the imagined latent state."""
    upright = (obs["pole_cos"] + 1) / 2
    near = 0.25 + 0.75 * torch.exp(-(((obs["cart_x"] - ctx["target_x"]) / 0.3) ** 2))
    return upright * near


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    model, config, _ = lp.load_checkpoint(args.checkpoint)
    lp.check_reward(cart_at_target, model, context={"target_x": args.target})  # raises on a malformed reward
    env = lp.make_env(config.env, obs=config.obs, action_repeat=config.action_repeat, seed=args.seed)
    agent = lp.Agent(
        model, lp.CEM(horizon=12, iterations=5, candidates=100, elites=10),
        objective=lambda m: lp.Objective(m, rewards=[cart_at_target], context={"target_x": args.target}),
    )
    episode, stats = lp.run_episode(env, agent, seed=args.seed, generator=torch.Generator().manual_seed(args.seed))
    x, cos = episode["obs"][-1, 0], episode["obs"][-1, 1]  # true state: [cart_x, pole_cos, pole_sin, ...]
    print(f"env return (swingup reward) {stats.ret:.1f}; final cart x {x:+.3f} (target {args.target:+.2f}), "
          f"pole cos {cos:.3f}; {stats.plan_ms:.0f} ms per decision")


if __name__ == "__main__":
    main()
