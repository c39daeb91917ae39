"""iLQR / box-DDP against exact answers: the LQR optimum from scipy's Riccati solution (unconstrained)
and scipy's bounded least squares (active action bounds), in float64."""

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch

from latentplan.planners import ILQR, ILQRConfig, Objective, Plan
from latentplan.worldmodels import AnalyticModel, LatentState


def _pd(rng, n, floor=0.1):
    m = rng.standard_normal((n, n))
    return m @ m.T / n + floor * np.eye(n)


def _system(kind, seed=0):
    """A 3-state, 2-action linear system: `unstable` (spectral radius > 1) or `oscillating`
    (a lightly damped rotation), with random positive definite Q and R."""
    rng = np.random.default_rng(seed)
    if kind == "unstable":
        A = np.array([[1.1, 0.2, 0.0], [0.0, 1.05, 0.1], [0.1, 0.0, 0.9]])
    else:
        c, s = np.cos(0.4), np.sin(0.4)
        A = np.array([[0.99 * c, -0.99 * s, 0.0], [0.99 * s, 0.99 * c, 0.0], [0.0, 0.3, 0.95]])
    B = rng.standard_normal((3, 2)) * 0.5
    # rounded to float32 values: `AnalyticModel.linear` stores its matrices in float32 (`.double()`
    # widens them exactly), so the references below see the very system the planner sees
    return tuple(X.astype(np.float32).astype(np.float64) for X in (A, B, _pd(rng, 3), _pd(rng, 2)))


def _problem(A, B, Q, R, bound, M):
    """A float64 `AnalyticModel` and the objective -sum(x'Qx + u'Ru) - x_H' M x_H."""
    model = AnalyticModel.linear(A, B, Q, action_bound=bound).double()
    Rt, Mt = torch.tensor(R), torch.tensor(M)

    def objective(m):
        return Objective(m, rewards=[lambda s, a: m.reward(s), lambda s, a: -((a @ Rt) * a).sum(-1)],
                         value=lambda s: -((s.deter @ Mt) * s.deter).sum(-1))

    return model, objective


def _state(x0):
    x = torch.tensor(np.atleast_2d(x0), dtype=torch.float64)
    return LatentState(x, x.new_zeros(x.shape[0], 0))


def _lstsq_form(A, B, Q, R, M, x0, h):
    """The cost as ||C U - d||^2 over the stacked actions U `[H * m]` (x_{t+1} is linear in U)."""
    n, m = B.shape
    rq, rr, rm = (np.linalg.cholesky(X).T for X in (Q, R, M))
    blocks, rhs = [], []
    for t in range(h):  # state cost of x_{t+1} (with M added at the horizon)
        row = np.zeros((n, h * m))
        for j in range(t + 1):
            row[:, j * m:(j + 1) * m] = np.linalg.matrix_power(A, t - j) @ B
        free = np.linalg.matrix_power(A, t + 1) @ x0
        for root in ([rq, rm] if t == h - 1 else [rq]):
            blocks.append(root @ row)
            rhs.append(-root @ free)
    for t in range(h):
        row = np.zeros((m, h * m))
        row[:, t * m:(t + 1) * m] = rr
        blocks.append(row)
        rhs.append(np.zeros(m))
    return np.vstack(blocks), np.concatenate(rhs)


@pytest.mark.parametrize("kind", ["unstable", "oscillating"])
def test_one_iteration_reaches_the_riccati_optimum(kind):
    A, B, Q, R = _system(kind)
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    model, objective = _problem(A, B, Q, R, 1e3, P - Q)  # terminal P - Q: the optimum is u = -K x forever
    x0s = np.array([[1.0, -0.5, 0.3], [-0.2, 0.8, 1.0]])
    plan = ILQR(ILQRConfig(horizon=8, iterations=1)).plan(objective(model), _state(x0s))
    assert plan.info["iterations"] == 1
    for i, x0 in enumerate(x0s):
        x, want = x0.copy(), []
        for _ in range(8):
            want.append(-K @ x)
            x = A @ x + B @ want[-1]
        want = np.array(want)
        err = np.abs(plan.actions[i].numpy() - want).max() / np.abs(want).max()
        assert err <= 1e-10, err  # measured ~3e-15
        optimum = -x0 @ (P - Q) @ x0  # Bellman's equation of the DARE
        assert abs(plan.value[i].item() - optimum) <= 1e-10 * abs(optimum)


@pytest.mark.parametrize("kind", ["unstable", "oscillating"])
def test_active_bounds_match_the_bounded_least_squares_optimum(kind):
    A, B, Q, R = _system(kind, seed=1)
    h, bound = 6, 0.5  # exact in float32, as the model stores its bounds
    model, objective = _problem(A, B, Q, R, bound, 2 * Q)
    x0 = np.array([2.0, -1.5, 1.0])
    C, d = _lstsq_form(A, B, Q, R, 2 * Q, x0, h)
    ref = scipy.optimize.lsq_linear(C, d, bounds=(-bound, bound), method="bvls", tol=1e-14)
    want = ref.x.reshape(h, 2)
    assert np.isclose(np.abs(want), bound).sum() >= 2  # some bounds are active
    plan = ILQR(ILQRConfig(horizon=h, iterations=30, tolerance=1e-14)).plan(objective(model), _state(x0))
    got = plan.actions[0].numpy()
    assert np.abs(got).max() <= bound
    assert np.abs(got - want).max() <= 1e-10, np.abs(got - want).max()  # measured ~1e-15
    assert abs(-plan.value.item() - np.sum((C @ ref.x - d) ** 2)) <= 1e-10 * ref.cost * 2


def _random_problem(bound=0.5):
    A, B, Q, R = _system("unstable", seed=2)
    return _problem(A, B, Q, R, bound, Q)


def test_a_batch_equals_single_calls():
    model, objective = _random_problem()
    x0s = np.array([[2.0, -1.5, 1.0], [0.1, 0.2, -0.1], [-1.0, 0.5, 0.0]])
    planner = ILQR(ILQRConfig(horizon=5, iterations=10, tolerance=1e-12))
    batch = planner.plan(objective(model), _state(x0s))
    for i, x0 in enumerate(x0s):
        single = planner.plan(objective(model), _state(x0))
        torch.testing.assert_close(batch.actions[i], single.actions[0], atol=1e-12, rtol=0)
        torch.testing.assert_close(batch.value[i], single.value[0], atol=1e-12, rtol=0)


def test_warm_start_from_the_optimum_returns_it_at_once():
    model, objective = _random_problem()
    x0 = np.array([2.0, -1.5, 1.0])
    planner = ILQR(ILQRConfig(horizon=5, iterations=30, tolerance=1e-12))
    best = planner.plan(objective(model), _state(x0))
    again = planner.plan(objective(model), _state(x0), warm_start=best)
    assert again.info["iterations"] <= 1
    torch.testing.assert_close(again.actions, best.actions, atol=1e-12, rtol=0)
    torch.testing.assert_close(again.value, best.value, atol=1e-12, rtol=0)
    # the evaluations: one rollout, then per iteration the linearisation (1 forward + F vector-Jacobian
    # products counted as VJP_EVALS = 2 forward passes each) and L line-search rollouts
    assert again.info["model_evals"] == 5 * (1 + again.info["iterations"] * (1 + 2 * 3 + 8))
    assert ILQRConfig(horizon=5, iterations=1).model_evals(3) == 5 * (1 + 1 + 2 * 3 + 8)


def test_float32_model_reaches_the_optimum_to_float32_precision():
    A, B, Q, R = _system("oscillating")
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    model = AnalyticModel.linear(A, B, Q, action_bound=1e3)
    M = torch.tensor(P - Q, dtype=torch.float32)
    objective = Objective(model, rewards=[lambda s, a: model.reward(s), AnalyticModel.quadratic_action_cost(R)],
                          value=lambda s: -((s.deter @ M) * s.deter).sum(-1))
    x0 = np.array([1.0, -0.5, 0.3])
    plan = ILQR(ILQRConfig(horizon=8, iterations=1)).plan(objective, model.from_observation(torch.tensor(x0[None])))
    assert plan.actions.dtype == torch.float32
    K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
    np.testing.assert_allclose(plan.actions[0, 0].numpy(), -K @ x0, rtol=0, atol=1e-5)


def test_bad_inputs_raise_naming_the_field():
    for field, value in [("horizon", 0), ("iterations", 1.5), ("tolerance", -1.0), ("line_search", 0),
                         ("reg_factor", 1.0), ("reg_min", 0.0), ("state", "sample")]:
        with pytest.raises(ValueError, match=rf"ILQRConfig\.{field} must be"):
            ILQRConfig(**{field: value})
    model, objective = _random_problem()
    with pytest.raises(ValueError, match=r"warm_start.actions must be \[B=1, H=4, A=2\]"):
        ILQR(horizon=4).plan(objective(model), _state([1.0, 0.0, 0.0]), warm_start=Plan(torch.zeros(1, 3, 2),
                                                                                              torch.zeros(1)))
    rough = objective(model)
    rough.rewards[0].differentiable = False
    with pytest.raises(ValueError, match="ILQR"):
        ILQR(horizon=4).plan(rough, _state([1.0, 0.0, 0.0]))


def test_runs_on_the_rssm_in_bounds_and_improves_on_zeros():
    from latentplan.worldmodels import RSSMConfig, RSSMWorldModel

    torch.manual_seed(0)
    model = RSSMWorldModel(RSSMConfig(obs_shape=(3,), action_dim=2, deter=8, stoch=4, hidden=8, embed=8)).eval()
    objective = Objective(model, rewards=[lambda s, a: -(s.features() - 0.5).pow(2).sum(-1)])
    g = torch.Generator().manual_seed(1)
    state = LatentState(torch.randn(2, 8, generator=g), torch.randn(2, 4, generator=g))
    plan = ILQR(ILQRConfig(horizon=4, iterations=5)).plan(objective, state)
    assert plan.actions.shape == (2, 4, 2) and torch.isfinite(plan.value).all()
    assert (plan.actions >= model.action_low).all() and (plan.actions <= model.action_high).all()
    with torch.no_grad():  # the value is the return along the prior-mean path, which beats zero actions
        mean = objective.with_prior_means(state)
        torch.testing.assert_close(plan.value, mean.returns(state, plan.actions), atol=1e-5, rtol=1e-5)
        assert (plan.value > mean.returns(state, torch.zeros(2, 4, 2)) + 1e-3).all()


def test_the_registry_sizes_ilqr_to_an_evaluation_budget_and_spends_it():
    from latentplan.registry import Budget, make_planner

    model, objective = _random_problem()
    build = make_planner("ilqr", model, Budget(evals=1000), horizon=5)
    cfg = build.planner.config
    assert cfg.iterations == (1000 // 5 - 1) // (1 + 2 * 3 + 8) and cfg.tolerance == 0.0  # 13 iterations
    plan = build.planner.plan(objective(model), _state([2.0, -1.5, 1.0]))
    assert plan.info["model_evals"] == build.expected_evals <= 1000
    with pytest.raises(ValueError, match="too small for iLQR"):
        make_planner("ilqr", model, Budget(evals=50), horizon=5)


def _goal_problem(bound, goal, q, r):
    """The unstable system with the reward -q (x - goal)'Q(x - goal) - u' diag(r) u, the goal read
    from the objective's context (`[1, 3]`) and q `[]`, r `[2]` reward weights: float64."""
    import latentplan as lp

    A, B, Q, _ = _system("unstable", seed=2)
    model = AnalyticModel.linear(A, B, Q, action_bound=bound).double()
    Qt = torch.tensor(Q)

    @lp.reward(inputs="latent")
    def tracking(state, action, ctx):
        e = state.deter - ctx["goal"]
        return -q * ((e @ Qt) * e).sum(-1) - (action * action * r).sum(-1)

    return Objective(model, rewards=[tracking], context={"goal": goal[None]},
                     value=lambda s: -((s.deter @ Qt) * s.deter).sum(-1))


def _central_differences(f, params, eps):
    """`[Y, P]` central differences of `f(*params) -> [Y]` over every entry of every tensor in
    `params` (P entries in all, in order), each moved by +-eps on a copy."""
    cols = []
    for i, p in enumerate(params):
        for j in range(p.numel()):
            ends = []
            for sign in (1.0, -1.0):
                moved = [q.clone() for q in params]
                moved[i].view(-1)[j] += sign * eps
                ends.append(f(*moved))
            cols.append((ends[0] - ends[1]) / (2 * eps))
    return torch.stack(cols, 1)


def _jacobians(bound, differentiable="implicit", eps=1e-6):
    """d(actions)/d(goal, q, r) of the plan from x0, by the planner (`[H*A, 6]`) and by central
    finite differences of converged plans, with the plans themselves."""
    params = [torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), torch.tensor(1.5, dtype=torch.float64),
              torch.tensor([1.0, 2.0], dtype=torch.float64)]
    cfg = ILQRConfig(horizon=5, iterations=30, tolerance=1e-14)
    x0 = _state([2.0, -1.5, 1.0])
    leaves = [p.clone().requires_grad_(True) for p in params]
    plan = ILQR(cfg, differentiable=differentiable).plan(_goal_problem(bound, *leaves), x0)
    rows = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(u, leaves, retain_graph=True)])
            for u in plan.actions.reshape(-1)]
    fd = _central_differences(lambda *q: ILQR(cfg).plan(_goal_problem(bound, *q), x0).actions.reshape(-1),
                              params, eps)
    plain = ILQR(cfg).plan(_goal_problem(bound, *params), x0)
    return torch.stack(rows), fd, plan, plain


@pytest.mark.parametrize("bound", [1e3, 0.5])
def test_implicit_gradients_of_the_plan_match_finite_differences(bound):
    jac, fd, plan, plain = _jacobians(bound)
    assert plan.actions.grad_fn is not None and plan.value.grad_fn is not None
    assert torch.equal(plan.actions.detach(), plain.actions) and torch.equal(plan.value.detach(), plain.value)
    err = ((jac - fd).abs().max() / fd.abs().max()).item()
    print(f"bound={bound}: implicit vs central differences, max relative error {err:.1e}")
    assert err <= 1e-4, err  # measured 5.0e-10 (no bound active), 5.4e-10 (two clamped)
    clamped = (plan.actions.detach().abs() >= bound).reshape(-1)
    assert int(clamped.sum()) == (0 if bound > 1 else 2)
    assert (jac[clamped] == 0).all() and (fd[clamped].abs() < 1e-9).all()


def test_the_value_carries_the_envelope_gradient_and_no_grad_mode_gives_a_constant():
    goal = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    q, r = torch.tensor(1.5, dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64)
    cfg = ILQRConfig(horizon=5, iterations=30, tolerance=1e-14, differentiable="implicit")
    x0 = _state([2.0, -1.5, 1.0])
    plan = ILQR(cfg).plan(_goal_problem(0.5, goal, q, r), x0)
    (got,) = torch.autograd.grad(plan.value.sum(), goal)
    eps, want = 1e-6, torch.zeros(3, dtype=torch.float64)
    for j in range(3):
        ends = [ILQR(cfg).plan(_goal_problem(0.5, goal.detach() + s * eps * torch.eye(3, dtype=torch.float64)[j],
                                             q, r), x0).value.item() for s in (1.0, -1.0)]
        want[j] = (ends[0] - ends[1]) / (2 * eps)
    assert ((got - want).abs().max() / want.abs().max()).item() <= 1e-6
    with torch.no_grad():
        assert ILQR(cfg).plan(_goal_problem(0.5, goal, q, r), x0).actions.grad_fn is None


@pytest.mark.parametrize("bound", [1e3, 0.5])
def test_unrolled_and_implicit_gradients_agree(bound):
    import time

    times = {}
    for mode in ("implicit", "unroll"):
        t0 = time.perf_counter()
        jac, fd, plan, plain = _jacobians(bound, mode)
        times[mode] = time.perf_counter() - t0
        assert torch.equal(plan.actions.detach(), plain.actions)  # the option leaves the plan as it is
        if mode == "implicit":
            implicit = jac
    err = ((jac - implicit).abs().max() / implicit.abs().max()).item()
    print(f"bound={bound}: unrolled vs implicit, max relative difference {err:.1e}")
    assert err <= 1e-6, err  # measured ~3e-16 and ~7e-16


def test_the_cost_of_implicit_and_unrolled_backward_passes():
    """Not an assertion on time: prints plan + one backward for both modes (docs/planners.md)."""
    import time

    A, B, Q, R = _system("unstable", seed=2)
    goal = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # shared by all 16 environments
    x0 = _state(np.random.default_rng(0).standard_normal((16, 3)))
    grads = {}
    for mode in ("implicit", "unroll"):
        cfg = ILQRConfig(horizon=20, iterations=10, tolerance=0.0, differentiable=mode)
        objective = _goal_problem(0.5, goal, torch.tensor(1.0, dtype=torch.float64),
                                  torch.tensor([1.0, 1.0], dtype=torch.float64))
        t0 = time.perf_counter()
        plan = ILQR(cfg).plan(objective, x0)
        t1 = time.perf_counter()
        (g,) = torch.autograd.grad(plan.actions[:, 0].sum(), goal)
        t2 = time.perf_counter()
        grads[mode] = g
        print(f"{mode}: plan {1e3 * (t1 - t0):.0f} ms, backward {1e3 * (t2 - t1):.0f} ms (B=16, H=20, 10 iterations)")
    torch.testing.assert_close(grads["implicit"], grads["unroll"], rtol=1e-6, atol=1e-9)


def test_gradients_reach_the_model_and_the_belief():
    """d(sum W * actions)/d(A, B, x0) by implicit gradients against central differences, with a
    bound active (the model's matrices are the parameters here)."""
    A, B, Q, R = _system("unstable", seed=2)
    W = torch.tensor(np.random.default_rng(3).standard_normal((1, 5, 2)))
    cfg = ILQRConfig(horizon=5, iterations=30, tolerance=1e-14)

    def weighted(A_, B_, x0, differentiable=None):
        model, objective = _problem(A, B, Q, R, 0.5, Q)
        model.A, model.B = A_, B_  # replaces the buffers with these (possibly grad-carrying) tensors
        x = x0.reshape(1, 3)
        plan = ILQR(cfg, differentiable=differentiable).plan(objective(model), LatentState(x, x.new_zeros(1, 0)))
        return (plan.actions * W).sum()

    params = [torch.tensor(A), torch.tensor(B), torch.tensor([2.0, -1.5, 1.0], dtype=torch.float64)]
    leaves = [p.clone().requires_grad_(True) for p in params]
    got = torch.cat([g.reshape(-1) for g in torch.autograd.grad(weighted(*leaves, "implicit"), leaves)])
    want = _central_differences(lambda *q: weighted(*q).reshape(1), params, 1e-6)[0]
    err = ((got - want).abs().max() / want.abs().max()).item()
    print(f"model and belief: implicit vs central differences, max relative error {err:.1e}")
    assert err <= 1e-4, err  # measured 5.8e-11
