"""The linear-quadratic test world shared by the policy and distillation tests: the double
integrator of `LinearQuadratic` with its Riccati solution, the exact optimal policy u = -K x, and
the closed loop it produces."""

import numpy as np
import torch

from latentplan.envs.lqr import LinearQuadratic
from latentplan.planners import Objective
from latentplan.worldmodels import AnalyticModel

BOUND = 10.0


def lq_problem():
    """The default double integrator of `LinearQuadratic` with its Riccati solution and gain."""
    env = LinearQuadratic(action_bound=BOUND)
    model = AnalyticModel.linear(env.A, env.B, env.Q, action_bound=BOUND)
    P, K = env.riccati(), env.lqr_gain()
    M = torch.as_tensor(P - env.Q, dtype=torch.float32)

    def factory(m):
        """Rewards -x'Qx (arrival) and -u'Ru, terminal value -x'(P - Q)x: the H-step optimum is the
        infinite-horizon one, u = -K x at every step."""
        return Objective(m, rewards=[lambda s, a: m.reward(s), AnalyticModel.quadratic_action_cost(env.R)],
                         value=lambda s: -((s.deter @ M) * s.deter).sum(-1))

    return env, model, factory, P, K


class LQRPolicy:
    """The exact optimal policy u = -K x (a `Policy`); samples add N(0, 0.5^2) noise."""

    def __init__(self, K):
        self.K = torch.as_tensor(K, dtype=torch.float32)

    def act(self, state, *, generator=None, deterministic=False):
        u = -state.deter @ self.K.T
        if not deterministic:
            u = u + 0.5 * torch.randn(u.shape, generator=generator)
        return u.clamp(-BOUND, BOUND)


def closed_loop(A, B, K, x0, steps):
    """`[N, steps]` actions of u = -K x along the exact closed loop from x0 `[N, 2]`, float64."""
    x, us = np.asarray(x0, np.float64), []
    for _ in range(steps):
        u = -x @ K.T
        us.append(u)
        x = x @ A.T + u @ B.T
    return np.stack(us, 1)


def gain_of(policy, model):
    """Least-squares fit u = -K x of the policy's deterministic actions on a grid of [-1, 1]^2."""
    g = torch.linspace(-1, 1, 21)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    u = policy.act(model.from_observation(grid), deterministic=True).numpy()
    return -np.linalg.lstsq(grid.numpy(), u, rcond=None)[0].T


