"""`AnalyticModel.pendulum` and `AnalyticModel.cartpole`: one step against the equations by hand."""

import math

import torch

import latentplan as lp


def _step(model, x, u):
    x, u = torch.tensor([x], dtype=torch.float64), torch.tensor([[u]], dtype=torch.float64)
    return model.imagine_step(model.from_observation(x), u).deter[0].tolist()


def test_pendulum_step():
    model = lp.AnalyticModel.pendulum(dtype=torch.float64)
    assert _step(model, [1.0, 0.0, 0.0], 0.0) == [1.0, 0.0, 0.0]  # upright at rest: an equilibrium
    # horizontal at rest, torque 1: th_ddot = 3 g / (2 l) + 3 u / (m l^2) = 18, semi-implicit Euler
    vel = 0.05 * 18.0
    th = math.pi / 2 + 0.05 * vel
    got = _step(model, [0.0, 1.0, 0.0], 1.0)
    assert max(abs(a - b) for a, b in zip(got, [math.cos(th), math.sin(th), vel])) <= 1e-14
    assert model.action_high.tolist() == [2.0] and model.decode(model.initial(1))["velocity"].shape == (1, 1)


def test_cartpole_step():
    model = lp.AnalyticModel.cartpole(dtype=torch.float64)
    assert _step(model, [0.3, 0.0, 1.0, 0.0, 0.0], 0.0) == [0.3, 0.0, 1.0, 0.0, 0.0]  # upright at rest
    # upright at rest, force 2.2 N: c = u / M = 2, th_ddot = -c / (l (4/3 - m_p / M)), x_ddot = c - m_p l th_ddot / M
    c = 2.2 / 1.1
    th_acc = -c / (0.5 * (4 / 3 - 0.1 / 1.1))
    x_acc = c - 0.1 * 0.5 * th_acc / 1.1
    got = _step(model, [0.0, 1.0, 1.0, 0.0, 0.0], 2.2)  # cart moving at 1 m/s
    want = [0.05, 1.0 + 0.05 * x_acc, 1.0, 0.0, 0.05 * th_acc]
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-14
    assert model.action_high.tolist() == [10.0] and model.reward(model.from_observation(
        torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))).item() == 0.9
