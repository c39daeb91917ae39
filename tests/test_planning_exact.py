"""CEM against exact answers: a quadratic bandit-like objective and the linear-quadratic regulator."""

import numpy as np
import pytest
import scipy.linalg
import torch

from latentplan.planners import CEM, CEMConfig, Objective, Plan
from latentplan.worldmodels import AnalyticModel, LatentState


def _target_model(dim: int = 2) -> AnalyticModel:
    """x' = u, reward -|x - target|^2: the best sequence is `target` at every step."""
    target = torch.tensor([0.3, -0.6])[:dim]
    return AnalyticModel(lambda x, u: u, lambda x: -((x - target) ** 2).sum(-1), dim, [-1.0] * dim, [1.0] * dim), target


def test_cem_finds_quadratic_optimum():
    model, target = _target_model()
    cem = CEM(CEMConfig(horizon=3, iterations=8, candidates=400, elites=40))
    g = torch.Generator().manual_seed(0)
    plan = cem.plan(Objective(model), model.initial(2), generator=g)
    assert plan.actions.shape == (2, 3, 2)
    torch.testing.assert_close(plan.actions, target.expand(2, 3, 2), atol=0.02, rtol=0)
    assert plan.value.shape == (2,)
    assert (plan.value <= 0).all() and (plan.value > -0.01).all()
    assert plan.info["iterations"] == 8
    assert plan.info["model_evals"] == 8 * 2 * 400 * 3
    assert plan.info["nonfinite"] == 0


def test_cem_respects_action_bounds():
    # the optimum (target 3.0) lies outside the bounds [-1, 1]: CEM must stop at the bound
    model = AnalyticModel(lambda x, u: u, lambda x: -((x - 3.0) ** 2).sum(-1), 1, [-1.0], [1.0])
    plan = CEM(CEMConfig(horizon=4, iterations=5, candidates=100, elites=10)).plan(
        Objective(model), model.initial(1), generator=torch.Generator().manual_seed(1))
    assert plan.actions.max() <= 1.0 and plan.actions.min() >= -1.0
    torch.testing.assert_close(plan.actions, torch.ones(1, 4, 1), atol=0.02, rtol=0)


def _lq():
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    Q = np.eye(2)
    R = np.array([[0.1]])
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    return A, B, Q, R, P


def _lq_objective(model, Q, R, P):
    """Rewards -x'Qx (arrival state) and -u'Ru, terminal value -x'(P - Q)x: with these the
    horizon-H optimum from x0 is exactly -x0'(P - Q)x0 (Bellman's equation of the DARE)."""
    M = torch.as_tensor(P - Q, dtype=torch.float32)
    return Objective(
        model,
        rewards=[lambda s, a: model.reward(s), AnalyticModel.quadratic_action_cost(R)],
        value=lambda s: -((s.deter @ M) * s.deter).sum(-1),
    )


def _true_cost(A, B, Q, R, P, x0, actions):
    """The LQ cost of an open-loop action sequence on the exact system, float64."""
    x = x0.copy()
    cost = 0.0
    for u in actions:
        x = A @ x + B @ u
        cost += x @ Q @ x + u @ R @ u
    return cost + x @ (P - Q) @ x


def test_cem_reaches_lqr_optimum_within_one_percent():
    A, B, Q, R, P = _lq()
    model = AnalyticModel.linear(A, B, Q, action_bound=10.0)
    x0s = np.array([[1.0, 0.0], [-0.5, 0.8], [0.7, -0.6]])
    state = model.from_observation(torch.tensor(x0s, dtype=torch.float32))
    cem = CEM(CEMConfig(horizon=12, iterations=12, candidates=1000, elites=100))
    plan = cem.plan(_lq_objective(model, Q, R, P), state, generator=torch.Generator().manual_seed(0))
    for b, x0 in enumerate(x0s):
        optimum = x0 @ (P - Q) @ x0
        cost = _true_cost(A, B, Q, R, P, x0, plan.actions[b].double().numpy())
        assert optimum <= cost + 1e-9
        assert cost <= 1.01 * optimum, (b, cost, optimum)
        # the plan's value is the objective's estimate of the same cost
        assert abs(-plan.value[b].item() - cost) < 0.02 * optimum
    # and the first action is close to the LQR feedback -K x0
    K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    np.testing.assert_allclose(plan.first_action.numpy(), -(x0s @ K.T), atol=0.1)


def test_cem_is_reproducible_from_a_seed_and_varies_with_it():
    model, _ = _target_model()
    cem = CEM(CEMConfig(horizon=3, iterations=2, candidates=50, elites=5))
    obj = Objective(model)
    p1 = cem.plan(obj, model.initial(1), generator=torch.Generator().manual_seed(3))
    p2 = cem.plan(obj, model.initial(1), generator=torch.Generator().manual_seed(3))
    p3 = cem.plan(obj, model.initial(1), generator=torch.Generator().manual_seed(4))
    assert torch.equal(p1.actions, p2.actions)
    assert not torch.equal(p1.actions, p3.actions)


def test_nonfinite_returns_rank_last_and_are_counted():
    # reward is NaN whenever the first action coordinate is positive: those candidates must never be elites
    def reward(x):
        r = -((x - 0.5) ** 2).sum(-1)
        return torch.where(x[:, 0] > 0, torch.full_like(r, float("nan")), r)

    model = AnalyticModel(lambda x, u: u, reward, 1, [-1.0], [1.0])
    plan = CEM(CEMConfig(horizon=2, iterations=4, candidates=200, elites=20)).plan(
        Objective(model), model.initial(1), generator=torch.Generator().manual_seed(0))
    assert plan.info["nonfinite"] > 0
    assert (plan.actions <= 0.05).all()  # the best finite choice is 0 (closest to 0.5 among x <= 0)
    assert torch.isfinite(plan.value).all()


def test_warm_start_shape_is_checked_and_shift_keeps_shape():
    model, _ = _target_model()
    cem = CEM(CEMConfig(horizon=3, iterations=1, candidates=10, elites=2))
    bad = Plan(torch.zeros(1, 5, 2), torch.zeros(1))
    with pytest.raises(ValueError, match=r"warm_start.actions must be \[B=1, H=3, A=2\]"):
        cem.plan(Objective(model), model.initial(1), warm_start=bad)
    p = Plan(torch.arange(6.0).reshape(1, 3, 2), torch.zeros(1))
    s = p.shift()
    assert s.actions.shape == (1, 3, 2)
    assert s.actions[0].tolist() == [[2.0, 3.0], [4.0, 5.0], [4.0, 5.0]]
    assert p.shift(fill=0.0).actions[0, -1].tolist() == [0.0, 0.0]


def test_reward_term_of_wrong_shape_names_the_function():
    model, _ = _target_model()

    def column_reward(s, a):
        return torch.zeros(a.shape[0], 1)

    obj = Objective(model, rewards=[column_reward])
    # the terms see all 10 candidates x 2 steps of the model's rollout in one call
    with pytest.raises(ValueError, match=r"column_reward.*\[N=20\].*\(20, 1\)"):
        CEM(CEMConfig(horizon=2, iterations=1, candidates=10, elites=2)).plan(obj, model.initial(1))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="elites"):
        CEMConfig(candidates=10, elites=20)
    with pytest.raises(ValueError, match="discount"):
        Objective(_target_model()[0], discount=1.5)
    with pytest.raises(ValueError, match="LatentState"):
        LatentState(torch.zeros(2, 3), torch.zeros(3, 1))


def test_transition_stage_cost_with_shared_q_and_terminal_reproduces_finite_horizon_lqr_in_float64():
    """sum_{t<H} x_t'Q x_t + u_t'R u_t + x_H'M x_H written as a transition term (it reads x_t, the
    state before the action) with Q, R shared in the context and M as a terminal term: the Riccati
    actions are a stationary point of `Objective.returns` and their return is -x_0'P_0 x_0."""
    from latentplan.planners import reward, shared

    A = torch.tensor([[1.0, 0.1], [-0.2, 0.95]], dtype=torch.float64)
    B = torch.tensor([[0.0], [0.1]], dtype=torch.float64)
    Q = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    R, M = torch.tensor([[0.5]], dtype=torch.float64), 3 * torch.eye(2, dtype=torch.float64)
    model = AnalyticModel.linear(A, B, Q, action_bound=100.0)  # float64 matrices: a float64 model

    @reward(stage="transition")
    def stage_cost(prev, obs, action, ctx):
        x = prev["x"]
        return -((x @ ctx["Q"]) * x).sum(-1) - ((action @ ctx["R"]) * action).sum(-1)

    @reward(stage="terminal")
    def final_cost(obs, ctx):
        return -((obs["x"] @ ctx["M"]) * obs["x"]).sum(-1)

    x0s = torch.tensor([[1.0, 0.0], [-0.5, 0.8], [0.7, -0.6]], dtype=torch.float64)
    objective = Objective(model, rewards=[stage_cost], terminal=final_cost, batch=3,
                          context={"Q": shared(Q), "R": shared(R), "M": shared(M.numpy())})
    h = 6
    P, gains = M, []
    for _ in range(h):  # backward Riccati recursion
        K = torch.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        P = Q + A.T @ P @ (A - B @ K)
        gains.insert(0, K)
    x, us = x0s, []
    for K in gains:
        us.append(-x @ K.T)
        x = x @ A.T + us[-1] @ B.T
    u = torch.stack(us, 1).requires_grad_(True)  # [3, H, 1]
    ret = objective.returns(model.from_observation(x0s), u)
    assert ret.dtype == torch.float64
    torch.testing.assert_close(ret, -((x0s @ P) * x0s).sum(-1), rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(ret.sum(), u)
    assert g.abs().max() < 1e-12
