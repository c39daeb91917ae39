"""The value function against exact answers: λ-returns by their definition, TD(λ) on a linear
system whose value is a closed-form sum, the behaviour's actions followed, checkpoints."""

import numpy as np
import pytest
import torch

from latentplan.planners import CEM, Objective, Plan
from latentplan.planners.value import (
    ImaginedRollout, ValueConfig, ValueFunction, ValueLearner, lambda_returns, posterior_beliefs,
)
from latentplan.worldmodels import AnalyticModel, LatentState


def test_lambda_returns_match_the_weighted_average_of_n_step_returns():
    rng = np.random.default_rng(0)
    T, N, gamma = 6, 3, 0.9
    r = rng.normal(size=(T, N))
    v = rng.normal(size=(T + 1, N))
    for lam in (0.0, 0.95, 1.0):
        got = lambda_returns(torch.tensor(r), torch.tensor(v), gamma, lam).numpy()
        want = np.zeros((T, N))
        for t in range(T):
            def n_step(n):  # G_t^(n) = sum_{i<n} gamma^i r_{t+i} + gamma^n V(s_{t+n})
                return sum(gamma**i * r[t + i] for i in range(n)) + gamma**n * v[t + n]
            m = T - t  # the longest return, bootstrapped at T, gets the remaining weight lam^(m-1)
            want[t] = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, m)) + lam ** (m - 1) * n_step(m)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match=r"values \[T \+ 1, N\]"):
        lambda_returns(torch.zeros(3, 2), torch.zeros(3, 2), 0.9, 0.5)


class _Constant:
    """A stand-in policy: always the action `u`."""

    def __init__(self, u):
        self.u = u

    def act(self, state, *, generator=None, deterministic=False):
        return torch.full((state.batch, 1), self.u)


def _contraction():
    """x' = 0.5 x + u, reward x' of the arrival state."""
    return AnalyticModel(lambda x, u: 0.5 * x + u, lambda x: x[:, 0], 1, [-1.0], [1.0])


def test_td_lambda_learns_the_value_of_a_linear_system():
    gamma, u = 0.9, 0.1
    model = _contraction()
    cfg = ValueConfig(discount=gamma, td_lambda=0.95, horizon=8, batch=128, lr=3e-3, hidden=(64, 64), tau=0.05)
    learner = ValueLearner(cfg, feature_dim=1, seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        start = model.from_observation(4 * torch.rand(128, 1, generator=g) - 2)
        info = learner.update(model, start, _Constant(u), generator=g)
    assert info["model_evals"] == 8 * 128
    # the true value under "always u": sum_t gamma^(t-1) x_t with x_t = 0.5 x_(t-1) + u, summed to 400 steps
    xs = np.linspace(-1.5, 1.5, 13)
    truth = []
    for x0 in xs:
        x, total = x0, 0.0
        for t in range(400):
            x = 0.5 * x + u
            total += gamma**t * x
        truth.append(total)
    with torch.no_grad():
        got = learner.value(model.from_observation(torch.tensor(xs, dtype=torch.float32)[:, None])).numpy()
    np.testing.assert_allclose(got, truth, atol=0.03 * np.abs(truth).max())  # 1.2-1.4 % over seeds 0-2
    # as the `value=` of an Objective, it bootstraps the planners' returns
    obj = Objective(model, discount=gamma, value=learner.value)
    s = model.from_observation(torch.tensor([[1.0]]))
    ret = obj.returns(s, torch.full((1, 2, 1), u))
    x1, x2 = 0.5 + u, 0.5 * (0.5 + u) + u
    v2 = learner.value(model.from_observation(torch.tensor([[x2]])))
    torch.testing.assert_close(ret, x1 + gamma * x2 + gamma**2 * v2)


class _Scripted:
    """A stand-in planner: its plan is [0.1 k, 0.1 k + 0.01, 0.1 k + 0.02] on its k-th call."""

    def __init__(self):
        self.calls = 0

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
        base = 0.1 * self.calls
        self.calls += 1
        acts = (base + torch.tensor([0.0, 0.01, 0.02])).expand(state.batch, 3)[:, :, None]
        return Plan(acts.clone(), torch.zeros(state.batch), {"model_evals": 7})


def test_planner_behaviour_is_followed_and_replanned():
    model = _contraction()
    learner = ValueLearner(ValueConfig(horizon=7), feature_dim=1)
    r = learner.imagine(model, model.initial(2), _Scripted())
    want = [0.0, 0.01, 0.02, 0.1, 0.11, 0.12, 0.2]
    torch.testing.assert_close(r.actions[:, :, 0], torch.tensor(want)[:, None].expand(7, 2))
    assert r.planner_evals == 3 * 7 and r.features.shape == (8, 2, 1) and r.rewards.shape == (7, 2)
    # the rewards are the objective's: x' with x' = 0.5 x + u
    x, rew = 0.0, []
    for u in want:
        x = 0.5 * x + u
        rew.append(x)
    torch.testing.assert_close(r.rewards[:, 0], torch.tensor(rew))
    learner2 = ValueLearner(ValueConfig(horizon=4, replan_every=2), feature_dim=1)
    r2 = learner2.imagine(model, model.initial(1), _Scripted())
    torch.testing.assert_close(r2.actions[:, 0, 0], torch.tensor([0.0, 0.01, 0.1, 0.11]))
    # a CEM plan is a valid behaviour too
    r3 = learner.imagine(model, model.initial(3), CEM(horizon=3, iterations=1, candidates=8, elites=2),
                         generator=torch.Generator().manual_seed(0))
    assert r3.planner_evals == 3 * (3 * 8 * 3) and (r3.actions.abs() <= 1).all()
    with pytest.raises(TypeError, match="behaviour"):
        learner.imagine(model, model.initial(1), object())


def test_popart_keeps_outputs_and_checkpoints_round_trip():
    model = _contraction()
    learner = ValueLearner(ValueConfig(horizon=3, batch=16, hidden=(8,)), feature_dim=1, seed=1)
    x = torch.linspace(-1, 1, 5)[:, None]
    before = learner.value(x).detach().clone()
    learner._popart(5.0, 5.0**2 + 3.0**2)  # new statistics: mean 5, std 3
    torch.testing.assert_close(learner.value(x), before)
    assert learner.value.loc.item() == 5.0 and learner.value.scale.item() == pytest.approx(3.0)
    g = torch.Generator().manual_seed(0)
    start = model.from_observation(torch.rand(16, 1, generator=g))
    learner.update(model, start, _Constant(0.2))
    clone = ValueLearner(ValueConfig(horizon=3, batch=16, hidden=(8,)), feature_dim=1, seed=7)
    clone.load_state_dict(learner.state_dict())
    torch.testing.assert_close(clone.value(x), learner.value(x))
    a = learner.update(model, start, _Constant(0.2))
    b = clone.update(model, start, _Constant(0.2))
    assert a == b
    torch.testing.assert_close(clone.target(x), learner.target(x))


def test_nonfinite_rewards_are_left_out():
    model = AnalyticModel(lambda x, u: x + u, lambda x: torch.where(x[:, 0] > 0.5, torch.nan, x[:, 0]), 1, [-1.0], [1.0])
    learner = ValueLearner(ValueConfig(horizon=2, batch=4, hidden=(8,)), feature_dim=1)
    start = model.from_observation(torch.tensor([[0.0], [0.1], [0.6], [0.9]]))
    info = learner.update(model, start, _Constant(0.0))
    assert info["nonfinite"] == 2.0 and np.isfinite(info["value_loss"])


def test_posterior_beliefs_of_stored_episodes():
    model = _contraction()
    eps = [
        {"obs": np.arange(4, dtype=np.float32)[:, None], "action": np.zeros((4, 1), np.float32),
         "is_first": np.array([True, False, False, False]), "reward": np.zeros(4, np.float32)},
        {"obs": -np.arange(3, dtype=np.float32)[:, None], "action": np.zeros((3, 1), np.float32),
         "is_first": np.array([True, False, False]), "reward": np.zeros(3, np.float32)},
        {"obs": 10 + np.arange(4, dtype=np.float32)[:, None], "action": np.zeros((4, 1), np.float32),
         "is_first": np.array([True, False, False, False]), "reward": np.zeros(4, np.float32)},
    ]
    beliefs, index = posterior_beliefs(model, eps)
    # the analytic model's posterior is the observation itself; rows per episode in order
    want = np.concatenate([e["obs"][:, 0] for e in eps])
    np.testing.assert_array_equal(beliefs.deter[:, 0].numpy(), want)
    assert index.tolist() == [0] * 4 + [1] * 3 + [2] * 4
    with pytest.raises(ValueError, match="lacks"):
        posterior_beliefs(model, [{"obs": np.zeros((2, 1))}])


def test_bad_configs_and_inputs_raise():
    with pytest.raises(ValueError, match="td_lambda"):
        ValueConfig(td_lambda=1.5)
    with pytest.raises(ValueError, match="tau"):
        ValueConfig(tau=0.0)
    with pytest.raises(ValueError, match="horizon"):
        ValueConfig(horizon=0)
    v = ValueFunction(3, (4,))
    with pytest.raises(ValueError, match=r"features \[N, 3\]"):
        v(LatentState(torch.zeros(2, 2), torch.zeros(2, 0)))
    learner = ValueLearner(ValueConfig(), feature_dim=3)
    with pytest.raises(ValueError, match="3"):
        learner.update(_contraction(), _contraction().initial(2), _Constant(0.0))
    assert isinstance(ImaginedRollout(torch.zeros(2, 1, 1), torch.zeros(1, 1), torch.zeros(1, 1, 1)).horizon, int)
