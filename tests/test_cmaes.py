"""CMA-ES over action sequences: its constants, convergence to exact LQ optima, budgets, bounds and bad input."""

import math

import numpy as np
import pytest
import torch

import latentplan as lp
from latentplan.families import lq_family
from latentplan.planners import CMAES, CMAESConfig, cma_constants
from latentplan.registry import Budget, make_planner


def test_constants_follow_hansens_table():
    k = cma_constants(d=2, lam=6)
    # mu = 3 weights proportional to ln(3.5) - ln(i), normalised: (0.6370, 0.2846, 0.0784)
    raw = np.log(3.5) - np.log([1.0, 2.0, 3.0])
    w = raw / raw.sum()
    assert k["mu"] == 3
    np.testing.assert_allclose(k["weights"].numpy(), w, rtol=1e-12)
    assert k["mu_eff"] == pytest.approx(1.0 / (w**2).sum(), rel=1e-12)
    assert k["mu_eff"] == pytest.approx(2.0286, abs=1e-3)
    mu_eff = k["mu_eff"]
    assert k["c_sigma"] == pytest.approx((mu_eff + 2) / (2 + mu_eff + 5))
    assert k["c_1"] == pytest.approx(2 / (3.3**2 + mu_eff))
    assert k["chi"] == pytest.approx(math.sqrt(2) * (1 - 1 / 8 + 1 / 84))
    assert k["c_1"] + k["c_mu"] <= 1.0
    with pytest.raises(ValueError, match="lam >= 2"):
        cma_constants(d=3, lam=1)


def test_default_population_is_hansens():
    assert CMAESConfig(horizon=12).lam(6) == 4 + int(3 * math.log(72)) == 16
    assert CMAESConfig(horizon=2).lam(1) == 6
    assert CMAESConfig(horizon=2, population=7).lam(1) == 7


@pytest.mark.parametrize("index", [3, 13, 19])
def test_converges_to_the_exact_lq_optimum_before_the_budget(index):
    prob = lq_family(20, seed=0)[index]  # n, m, H: (6, 1, 14), (2, 1, 9), (3, 1, 9)
    model, objective, start = prob.build(torch.float64)
    plan = CMAES(horizon=prob.horizon).plan(objective, start, generator=torch.Generator().manual_seed(0))
    assert plan.actions.dtype == torch.float64
    assert plan.info["stopped"] == "converged"
    assert plan.info["model_evals"] < 120_000
    assert prob.excess(plan.actions[0].numpy()) < 1e-5
    np.testing.assert_allclose(plan.actions[0].numpy(), prob.u_star, atol=5e-3)
    assert plan.value.item() == pytest.approx(-prob.cost(plan.actions[0].numpy()), rel=1e-10)  # the plan's own return


def test_a_coupled_problem_where_cem_stalls():
    # instance 12: n = 3, m = 2, H = 8, the zero plan costs 80 times the optimum; the Hessian's condition number is 5,000
    prob = lq_family(20, seed=0)[12]
    model, objective, start = prob.build(torch.float64)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    cma = CMAES(horizon=prob.horizon).plan(objective, start, generator=g())
    planet = lp.CEM(horizon=prob.horizon, iterations=10, candidates=1000, elites=100, compile="eager")
    cem = planet.plan(objective, start, generator=g())  # PlaNet's CEM: up to 80,000 evaluations
    assert cem.info["model_evals"] <= 80_000 and cma.info["model_evals"] <= 120_000
    assert prob.excess(cma.actions[0].numpy()) < 1e-4
    assert prob.excess(cem.actions[0].numpy()) > 0.02


def test_budget_is_an_upper_bound_and_stops_the_search():
    prob = lq_family(20, seed=0)[8]  # the hardest instance: the budget, not convergence, stops it
    model, objective, start = prob.build()
    plan = CMAES(horizon=prob.horizon, max_evals=5_000).plan(objective, start, generator=torch.Generator().manual_seed(0))
    rows = CMAESConfig(horizon=prob.horizon).lam(3) + 1
    assert plan.info["stopped"] == "budget"
    assert plan.info["model_evals"] == plan.info["iterations"] * rows * prob.horizon + prob.horizon <= 5_000
    assert (plan.info["iterations"] + 1) * rows * prob.horizon + prob.horizon > 5_000
    capped = CMAES(horizon=prob.horizon, iterations=3).plan(objective, start, generator=torch.Generator().manual_seed(0))
    assert capped.info["stopped"] == "iterations" and capped.info["iterations"] == 3


def test_batched_environments_each_reach_their_own_optimum_at_the_bounds():
    # x' = x + u with |u| <= 0.5, reward -(x - 0.8)^2: from 0 and 2 the best is full speed towards 0.8, then stop
    model = lp.AnalyticModel(lambda x, u: x + u, lambda x: -((x - 0.8) ** 2).sum(-1), 1, [-0.5], [0.5])
    belief = model.from_observation(torch.tensor([[0.0], [2.0]], dtype=torch.float64))
    plan = CMAES(horizon=4).plan(lp.Objective(model), belief, generator=torch.Generator().manual_seed(0))
    expected = torch.tensor([[0.5, 0.3, 0.0, 0.0], [-0.5, -0.5, -0.2, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(plan.actions[..., 0], expected.to(plan.actions.dtype), atol=2e-3, rtol=0)
    assert bool((plan.actions.abs() <= 0.5).all())


def test_nonfinite_returns_rank_last():
    def reward(x):  # NaN wherever x > 0: such sequences must never be chosen
        r = -((x - 0.5) ** 2).sum(-1)
        return torch.where(x[:, 0] > 0, torch.full_like(r, float("nan")), r)

    model = lp.AnalyticModel(lambda x, u: u, reward, 1, [-1.0], [1.0])
    plan = CMAES(horizon=2, max_evals=2_000).plan(lp.Objective(model), model.initial(1),
                                                  generator=torch.Generator().manual_seed(0))
    assert plan.info["nonfinite"] > 0
    assert bool((plan.actions <= 1e-3).all()) and torch.isfinite(plan.value).all()


def test_warm_start_and_bad_input():
    prob = lq_family(20, seed=0)[13]
    model, objective, start = prob.build(torch.float64)
    near = lp.Plan(torch.as_tensor(prob.u_star[None]) + 0.01, torch.zeros(1), {})
    warm = CMAES(horizon=prob.horizon).plan(objective, start, warm_start=near, generator=torch.Generator().manual_seed(0))
    cold = CMAES(horizon=prob.horizon).plan(objective, start, generator=torch.Generator().manual_seed(0))
    assert prob.excess(warm.actions[0].numpy()) < 1e-5
    assert warm.info["model_evals"] < cold.info["model_evals"]  # starting next to the optimum converges sooner
    with pytest.raises(ValueError, match=r"warm_start.actions must be \[B=1, H=9, A=1\]"):
        CMAES(horizon=prob.horizon).plan(objective, start, warm_start=lp.Plan(torch.zeros(1, 3, 1), torch.zeros(1), {}))
    for bad in (dict(population=3), dict(init_std=0.0), dict(max_evals=0), dict(tol=-1.0), dict(horizon=0)):
        with pytest.raises(ValueError, match="CMAESConfig"):
            CMAESConfig(**bad)


def test_registry_sizes_it_by_the_budget():
    prob = lq_family(20, seed=0)[13]
    model, objective, start = prob.build()
    build = make_planner("cmaes", model, Budget(evals=6_000), horizon=prob.horizon)
    assert build.planner.config.max_evals == 6_000 and build.warm_start
    plan = build.planner.plan(objective, start, generator=torch.Generator().manual_seed(0))
    assert plan.info["model_evals"] <= 6_000
    timed = make_planner("cmaes:population=20", model, Budget(ms=50), horizon=prob.horizon)
    assert timed.planner.config.max_evals == 10**12 and timed.planner.config.population == 20
    with pytest.raises(ValueError, match="max_evals is set by the evaluation budget"):
        make_planner("cmaes:max_evals=10", model, Budget(evals=6_000), horizon=prob.horizon)


def test_a_continuation_keeps_it_off_the_cliff_but_plateaus_can_hold_it():
    """The cliff world of tests/test_continuation.py (H = 4; exact optimum 5 with the episode ending at the cliff,
    12 without). CMA-ES is a local search: with the continuation its first step is away from the cliff on every
    seed, but on this piecewise-constant reward it converges on a plateau worth 4 on some seeds (documented)."""
    from test_continuation import _cliff, _start, cliff_reward, off_the_edge

    model = _cliff()
    objective = lp.Objective(model, rewards=[cliff_reward], continuation=off_the_edge)
    values = []
    for seed in range(4):
        plan = CMAES(horizon=4, max_evals=20_000).plan(objective, _start(model), generator=torch.Generator().manual_seed(seed))
        assert plan.first_action.item() > 0.5  # never towards the edge first
        torch.testing.assert_close(plan.value, objective.returns(_start(model), plan.actions))
        values.append(plan.value.item())
    assert set(values) <= {4.0, 5.0} and values.count(5.0) >= 1
