"""`benchmarks/explore_cartpole.py`'s diagnostics: the state shares and the open-loop errors, exact on
hand-made data and a stand-in model whose imagination is known in closed form."""

import math

import numpy as np
import pytest
import torch

from latentplan.worldmodels import LatentState
from script_loader import load_script



@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/explore_cartpole.py")  # it imports rewards_cartpole.py beside it


def test_state_shares_count_the_swingup_end_states(bench):
    # (x, angle, x vel, angle vel): balanced; up and slow but the cart fast; up but spinning; down
    pts = np.array([[0.1, 0.05, 0.2, 0.5], [0.1, 0.05, 3.0, 0.5], [1.0, 0.2, 0.0, 5.0], [0.0, math.pi, 0.0, 0.0]])
    shares = bench.state_shares(pts)
    assert list(shares.values()) == [0.75, 0.5, 0.25]


class _Drift:
    """A stand-in model: the belief is the observation `[x, cos, sin, x vel, angle vel]`; imagination
    moves x by `step` per decision and keeps the rest; `decode` names the slices as the cartpole's."""

    def __init__(self, step: float):
        self.step = step

    def initial(self, batch):
        return LatentState(torch.zeros(batch, 5), torch.zeros(batch, 0))

    def observe(self, state, action, obs, is_first, sample=False):
        return LatentState(obs.clone(), torch.zeros(len(obs), 0))

    def imagine_step(self, state, action, sample=False):
        return LatentState(state.deter + torch.tensor([self.step, 0.0, 0.0, 0.0, 0.0]), state.stoch)

    def decode(self, state):
        d = state.deter
        return {"cart_x": d[:, 0:1], "pole_cos": d[:, 1:2], "pole_angvel": d[:, 4:5]}


def test_open_loop_errors_are_exact_on_a_known_model(bench):
    t, h = 20, 4
    x = 0.1 * torch.arange(t + 1, dtype=torch.float32)
    cos = torch.where(torch.arange(t + 1) < 10, -1.0, 1.0)  # pole down for the first 10 observations, then up
    obs = torch.stack([x, cos, torch.zeros(t + 1), torch.full((t + 1,), 0.8), torch.zeros(t + 1)], 1)
    episode = {"obs": obs.numpy(), "action": np.zeros((t + 1, 1), np.float32),
               "is_first": np.eye(1, t + 1, dtype=bool)[0]}
    exact = bench.open_loop_errors(_Drift(0.1), episode, h)  # imagination matches x exactly
    assert exact["all"]["starts"] == t + 1 - h
    assert exact["all"]["x_abs_err"] == pytest.approx(0.0, abs=1e-6)
    assert exact["start pole up"]["starts"] == t + 1 - h - 10
    # frozen x: step k is 0.1 k off; cos is predicted as the start's, so starts 6..9 (down) miss the flip
    frozen = bench.open_loop_errors(_Drift(0.0), episode, h)
    assert frozen["all"]["x_abs_err"] == pytest.approx(0.1 * (h + 1) / 2, rel=1e-5)
    up = frozen["start pole up"]
    # pole up and still, action 0: dm_control's reward per step is only `centered`, (1 + tol(x, margin 2)) / 2
    scale = math.sqrt(-2.0 * math.log(0.1))
    r = lambda xx: 8 * (1.0 + math.exp(-0.5 * (xx / 2.0 * scale) ** 2)) / 2.0
    want = np.mean([abs(r(0.1 * s) - r(0.1 * (s + k))) for s in range(10, t + 1 - h) for k in range(1, h + 1)])
    assert up["reward_abs_err_per_decision"] == pytest.approx(want, rel=1e-5)
    assert up["cos_abs_err"] == 0.0
    down = frozen["start pole down"]
    flips = sum(1 for s in range(10) for k in range(1, h + 1) if s + k >= 10)
    assert down["cos_abs_err"] == pytest.approx(2.0 * flips / (10 * h), rel=1e-6)
