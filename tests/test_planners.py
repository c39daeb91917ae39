"""iCEM / MPPI options of CEM, the CEM+GD hybrid and GradientPlanner against exact answers.

The linear-quadratic system and its objective come from test_planning_exact.py: rewards -x'Qx of
the arrival state and -u'Ru, terminal value -x'(P - Q)x with P from the discrete algebraic
Riccati equation, so the best horizon-12 cost from x0 is exactly x0'(P - Q)x0.
"""

import dataclasses
import math
import time

import numpy as np
import pytest
import torch

from latentplan.planners import CEM, AscentConfig, CEMConfig, Objective, Plan, rank_returns
from latentplan.planners.cem import colored_noise
from latentplan.planners.gradient import GradientConfig, GradientPlanner
from latentplan.worldmodels import AnalyticModel
from latentplan.worldmodels.rssm import RSSMConfig, RSSMWorldModel

from test_planning_exact import _lq, _lq_objective, _true_cost

X0S = np.array([[1.0, 0.0], [-0.5, 0.8], [0.7, -0.6]])


def _lq_setup():
    A, B, Q, R, P = _lq()
    model = AnalyticModel.linear(A, B, Q, action_bound=10.0)
    state = model.from_observation(torch.tensor(X0S, dtype=torch.float32))
    return (A, B, Q, R, P), model, state, _lq_objective(model, Q, R, P)


def _excess(mats, plan: Plan) -> list[float]:
    """Relative excess of each environment's true LQ cost over the optimum x0'(P - Q)x0."""
    A, B, Q, R, P = mats
    out = []
    for b, x0 in enumerate(X0S):
        optimum = x0 @ (P - Q) @ x0
        cost = _true_cost(A, B, Q, R, P, x0, plan.actions[b].double().numpy())
        assert optimum <= cost + 1e-9
        out.append(cost / optimum - 1.0)
    return out


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _nan_model() -> AnalyticModel:
    """x' = u, reward -(x - 0.5)^2, but NaN whenever x > 0: the best finite sequence is 0."""

    def reward(x):
        r = -((x - 0.5) ** 2).sum(-1)
        return torch.where(x[:, 0] > 0, torch.full_like(r, float("nan")), r)

    return AnalyticModel(lambda x, u: u, reward, 1, [-1.0], [1.0])


def _planet_cem_reference(cfg: CEMConfig, objective, state, generator):
    """PlaNet's CEM exactly as planners/cem.py implemented it before the iCEM/MPPI/GD options."""
    model = objective.model
    b, h, j, k, a = state.batch, cfg.horizon, cfg.candidates, cfg.elites, objective.action_dim
    low, high = model.action_low, model.action_high
    mean = torch.zeros(b, h, a)
    std = torch.full((b, h, a), cfg.init_std)
    starts = state.expand(j)
    for _ in range(cfg.iterations):
        noise = torch.randn(b, j, h, a, generator=generator)
        cand = torch.maximum(torch.minimum(mean[:, None] + std[:, None] * noise, high), low)
        ret, _ = rank_returns(objective.returns(starts, cand.reshape(b * j, h, a), generator=generator).reshape(b, j))
        elite_returns, idx = ret.topk(k, dim=1)
        elites = cand.gather(1, idx[:, :, None, None].expand(b, k, h, a))
        mean = elites.mean(dim=1)
        std = elites.std(dim=1, unbiased=False).clamp_min(cfg.min_std)
    return mean, elite_returns.mean(dim=1)


# --------------------------------------------------------------------------- coloured noise


def test_white_noise_is_plain_randn_and_default_cem_is_bit_identical_to_planet():
    """Exact: beta = 0 noise equals torch.randn bit for bit, and CEM with every new option at its
    default (also spelled out explicitly) gives the same actions, value and model_evals as the
    pre-iCEM PlaNet CEM for the same seed."""
    assert torch.equal(colored_noise((3, 7, 5, 2), 0.0, generator=_gen(5)), torch.randn(3, 7, 5, 2, generator=_gen(5)))
    mats, model, state, obj = _lq_setup()
    base = CEMConfig(horizon=12, iterations=4, candidates=200, elites=20, min_std=0.05)
    explicit = CEMConfig(
        horizon=12, iterations=4, candidates=200, elites=20, min_std=0.05, noise_beta=0.0, keep_elites=0.0,
        include_mean=False, population_decay=1.0, momentum=0.0, refit="topk", temperature=1.0,
        return_best=False, gradient=None,
    )
    ref_mean, ref_value = _planet_cem_reference(base, obj, state, _gen(11))
    for cfg in (base, explicit):
        plan = CEM(cfg).plan(obj, state, generator=_gen(11))
        assert torch.equal(plan.actions, ref_mean)
        assert torch.equal(plan.value, ref_value)
        assert plan.info["model_evals"] == 4 * 3 * 200 * 12 == 3 * cfg.model_evals


def test_colored_noise_has_unit_variance_and_a_power_law_spectrum():
    """Measured on 20000 series of length 32: every step has variance 1 (+-4 %) for beta = 0 and 2;
    white noise has a flat periodogram (every bin within 10 % of the mean bin); beta = 2 puts more
    than 5x white's power in the lowest non-zero frequency bin, less than white's in the top bins,
    and its log-log periodogram slope is -2 (+-0.3; the crop from 2H to H leaks a little power).
    For H = 12, steps 0 and 1 correlate (> 0.75) but steps 0 and 11 do not (|r| < 0.3)."""
    h, n = 32, 20000
    white = colored_noise((n, h, 1), 0.0, generator=_gen(0))[..., 0]
    red = colored_noise((n, h, 1), 2.0, generator=_gen(1))[..., 0]
    for x in (white, red):
        assert x.shape == (n, h)
        torch.testing.assert_close(x.var(dim=0), torch.ones(h), atol=0.04, rtol=0)
    p_white = (torch.fft.rfft(white, dim=1).abs() ** 2).mean(0)
    p_red = (torch.fft.rfft(red, dim=1).abs() ** 2).mean(0)
    assert ((p_white[1:] / p_white[1:].mean() - 1).abs() < 0.1).all()
    assert p_red[1] > 5 * p_white[1]
    assert (p_red[-4:] < p_white[-4:]).all()
    f = torch.fft.rfftfreq(h)
    slope = np.polyfit(np.log(f[1:-1].numpy()), np.log(p_red[1:-1].numpy()), 1)[0]
    assert -2.3 < slope < -1.7, slope
    # H = 12: neighbours strongly correlated, first and last step not (a periodic length-H inverse
    # FFT would correlate them exactly as much as neighbours, 0.71 for beta = 2)
    c = torch.corrcoef(colored_noise((n, 12, 1), 2.0, generator=_gen(2))[..., 0].T)
    assert c[0, 1] > 0.75 and abs(c[0, 11]) < 0.3
    with pytest.raises(ValueError, match="beta must be finite"):
        colored_noise((2, 3), float("nan"))


# --------------------------------------------------------------------------- LQ optimum within 1 %


def test_icem_reaches_lq_optimum_within_one_percent():
    """Exact answer: cost <= 1.01 x0'(P - Q)x0 for three x0 with iCEM (beta = 2, keep 30 % of the
    elites, population shrinking by 1.25 per iteration, momentum 0.1, mean as a candidate, best
    sequence returned); the population schedule is J_i = max(2K, floor(J / 1.25^i)) and
    model_evals is exactly B * H * sum_i rows_i."""
    mats, model, state, obj = _lq_setup()
    cfg = CEMConfig(
        horizon=12, iterations=10, candidates=1000, elites=100, noise_beta=2.0, keep_elites=0.3,
        population_decay=1.25, momentum=0.1, include_mean=True, return_best=True,
    )
    assert [cfg.population(i) for i in range(10)] == [1000, 800, 640, 512, 409, 327, 262, 209, 200, 200]
    assert cfg.rows(0) == 1001 and cfg.rows(1) == 800 + 30 + 1
    plan = CEM(cfg).plan(obj, state, generator=_gen(0))
    excess = _excess(mats, plan)
    assert max(excess) < 0.01, excess
    assert plan.info["iterations"] == 10
    assert plan.info["model_evals"] == 3 * 12 * sum(cfg.rows(i) for i in range(10)) == 3 * cfg.model_evals
    assert plan.info["nonfinite"] == 0
    # return_best: the value is the objective's (exact, deterministic) return of the returned sequence
    torch.testing.assert_close(plan.value, obj.returns(state, plan.actions), rtol=1e-5, atol=1e-5)


def test_the_softmax_refit_option_reaches_lq_optimum_within_one_percent():
    """Exact answer: cost <= 1.01 x0'(P - Q)x0 with the MPPI refit (temperature 0.2 over 1000
    candidates, 15 iterations); the value, the weighted mean return of the last candidates, is
    never above the best return -x0'(P - Q)x0 and within 5 % of it."""
    mats, model, state, obj = _lq_setup()
    cfg = CEMConfig(horizon=12, iterations=15, candidates=1000, elites=100, refit="mppi", temperature=0.2,
                    max_evals=None, tol=0.0)  # all 15 iterations (180,000 evaluations, past the default budget)
    plan = CEM(cfg).plan(obj, state, generator=_gen(0))
    excess = _excess(mats, plan)
    assert max(excess) < 0.01, excess
    A, B, Q, R, P = mats
    for b, x0 in enumerate(X0S):
        optimum = x0 @ (P - Q) @ x0
        assert optimum - 1e-5 <= -plan.value[b].item() < 1.05 * optimum
    assert plan.info["model_evals"] == 15 * 3 * 1000 * 12


@pytest.mark.parametrize("squash, steps, lr, excess_max", [("tanh", 100, 0.05, 1e-4), ("clip", 60, 0.1, 0.01)])
def test_gradient_planner_reaches_lq_optimum_within_one_percent(squash, steps, lr, excess_max):
    """Exact answer: cost <= 1.01 x0'(P - Q)x0 by Adam through the model (tanh squash, 100 steps:
    <= 1.0001 x0'(P - Q)x0 and the first action within 0.05 of the LQR feedback -K x0; clip, 60
    steps at twice the rate: <= 1.01); model_evals = B * R * H * (3 steps + 1): every step a forward
    and a backward pass, the backward counted as VJP_EVALS = 2 forward passes."""
    mats, model, state, obj = _lq_setup()
    planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=12, iterations=steps, restarts=4, lr=lr, squash=squash))
    plan = planner.plan(obj, state, generator=_gen(0))
    excess = _excess(mats, plan)
    assert max(excess) < excess_max, excess
    if squash == "tanh":
        A, B, Q, R, P = mats
        K = np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
        np.testing.assert_allclose(plan.first_action.numpy(), -(X0S @ K.T), atol=0.05)
    info = plan.info
    assert info["iterations"] == steps and info["model_evals"] == 3 * 4 * 12 * (3 * steps + 1)
    assert info["nonfinite"] == 0 and info["nonfinite_grads"] == 0
    assert not info["vanishing"] and not info["exploding"]
    assert info["grad_norm_first"] > info["grad_norm_last"] > 0
    torch.testing.assert_close(plan.value, obj.returns(state, plan.actions), rtol=1e-5, atol=1e-5)


def test_cem_gd_hybrid_reaches_lq_optimum_where_plain_cem_with_its_samples_does_not():
    """Exact answer: with 100 samples, 10 elites and 4 iterations, CEM+GD (10 Adam steps on the
    elites per iteration) reaches cost <= 1.01 x0'(P - Q)x0, while plain CEM with the same
    samples and seed stays above 1.01 for at least one x0; model_evals counts both parts."""
    mats, model, state, obj = _lq_setup()
    small = dict(horizon=12, iterations=4, candidates=100, elites=10)
    hybrid = CEM(CEMConfig(**small, gradient=AscentConfig(iterations=10, lr=0.05))).plan(obj, state, generator=_gen(0))
    plain = CEM(CEMConfig(**small)).plan(obj, state, generator=_gen(0))
    assert max(_excess(mats, hybrid)) < 0.01, _excess(mats, hybrid)
    assert max(_excess(mats, plain)) > 0.01
    assert hybrid.info["model_evals"] == 4 * 3 * 12 * (100 + 10 * (10 * 3 + 1))  # a backward pass counts 2


# --------------------------------------------------------------------------- behaviours


def test_mppi_temperature_to_zero_is_top1_and_to_infinity_is_the_plain_average():
    """Exact: with temperature 1e-30 the MPPI refit puts weight 1 on the best candidate, so plans
    equal top-K CEM with K = 1 bit for bit (mean and value, over 2 iterations); with temperature
    1e30 the weights are uniform and one iteration's mean is the average of all candidates."""
    model = AnalyticModel(lambda x, u: u, lambda x: -((x - 0.3) ** 2).sum(-1), 2, [-1.0] * 2, [1.0] * 2)
    obj = Objective(model)
    common = dict(horizon=3, iterations=2, candidates=64, elites=1, min_std=0.1)
    top1 = CEM(CEMConfig(**common)).plan(obj, model.initial(2), generator=_gen(3))
    cold = CEM(CEMConfig(**common, refit="mppi", temperature=1e-30)).plan(obj, model.initial(2), generator=_gen(3))
    assert torch.equal(top1.actions, cold.actions)
    assert torch.equal(top1.value, cold.value)
    hot = CEM(CEMConfig(horizon=3, iterations=1, candidates=64, elites=1, refit="mppi", temperature=1e30))
    plan = hot.plan(obj, model.initial(2), generator=_gen(4))
    cand = torch.randn(2, 64, 3, 2, generator=_gen(4)).clamp(-1.0, 1.0)
    torch.testing.assert_close(plan.actions, cand.mean(dim=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("squash", ["tanh", "clip"])
def test_gradient_planner_actions_stay_within_bounds(squash):
    """Exact: every sequence the model is ever given, and the plan, lies in the asymmetric box
    [-0.5, 2] x [-1, 0.25]; the optimum (target (3, -3) outside the box) is the corner (2, -1)."""
    low, high = torch.tensor([-0.5, -1.0]), torch.tensor([2.0, 0.25])
    target = torch.tensor([3.0, -3.0])
    seen = []

    def spy(next_state, action):
        seen.append(action.detach().clone())
        return torch.zeros(action.shape[0])

    model = AnalyticModel(lambda x, u: u, lambda x: -((x - target) ** 2).sum(-1), 2, low, high)
    obj = Objective(model, rewards=[lambda s, a: model.reward(s), spy])
    planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=4, iterations=40, restarts=5, lr=1.0, squash=squash, init="random"))
    plan = planner.plan(obj, model.initial(3), generator=_gen(0))
    every = torch.cat(seen + [plan.actions.reshape(-1, 2)])
    assert (every >= low).all() and (every <= high).all()
    torch.testing.assert_close(plan.actions, torch.tensor([2.0, -1.0]).expand(3, 4, 2), atol=1e-3, rtol=0)


def test_gradient_planner_is_seed_reproducible_and_varies_with_the_seed():
    """Exact: the same seed gives bit-identical plans (random restarts), another seed does not."""
    mats, model, state, obj = _lq_setup()
    planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=12, iterations=5, restarts=3, lr=0.05, init="random"))
    p1 = planner.plan(obj, state, generator=_gen(7))
    p2 = planner.plan(obj, state, generator=_gen(7))
    p3 = planner.plan(obj, state, generator=_gen(8))
    assert torch.equal(p1.actions, p2.actions) and torch.equal(p1.value, p2.value)
    assert not torch.equal(p1.actions, p3.actions)


def test_gradient_planner_through_a_stochastic_rssm():
    """Through a tiny RSSM (reparameterised prior samples): bit-identical plans for one seed (also
    when called under torch.no_grad()), the
    learned reward improves over the zero sequence's, the model parameters' .grad stay None,
    and use_mean=True (prior means, `imagine_step(sample=False)`) gives seed-independent plans."""
    torch.manual_seed(0)  # the RSSM's initial weights only; planning takes generator=
    model = RSSMWorldModel(RSSMConfig(obs_shape=(3,), action_dim=2, deter=16, stoch=4, hidden=16, embed=16))
    state = model.initial(2)
    obj = Objective(model)
    planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=5, iterations=10, restarts=2, lr=0.1, init="zeros"))
    p1 = planner.plan(obj, state, generator=_gen(1))
    p2 = planner.plan(obj, state, generator=_gen(1))
    assert torch.equal(p1.actions, p2.actions)
    with torch.no_grad():  # as the agent loop calls planners: gradients are enabled inside
        p3 = planner.plan(obj, state, generator=_gen(1))
    assert torch.equal(p1.actions, p3.actions)
    assert (p1.actions.abs() <= 1.0).all()
    assert all(p.grad is None for p in model.parameters())
    zero = obj.returns(state.expand(256), torch.zeros(512, 5, 2), generator=_gen(2)).reshape(2, 256).mean(1)
    planned = obj.returns(state.expand(256), p1.actions.repeat_interleave(256, 0), generator=_gen(2)).reshape(2, 256).mean(1)
    assert (planned > zero).all()
    # use_mean=True rolls out prior means: restart 0 (from zeros) no longer depends on the seed
    mean_planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=5, iterations=10, restarts=1, lr=0.1, init="zeros", use_mean=True))
    m1 = mean_planner.plan(obj, state, generator=_gen(1))
    m2 = mean_planner.plan(obj, state, generator=_gen(2))
    assert torch.equal(m1.actions, m2.actions) and torch.equal(m1.value, m2.value)
    assert not torch.equal(m1.actions, torch.zeros_like(m1.actions))
    # a deterministic model (no stochastic part) accepts use_mean: samples are the means
    _, lq_model, lq_state, lq_obj = _lq_setup()
    out = GradientPlanner(GradientConfig(optimizer="adam", horizon=12, iterations=2, use_mean=True)).plan(lq_obj, lq_state)
    assert out.actions.shape == (3, 12, 1)


def test_gradient_norm_diagnostics_are_exact_and_flag_vanishing_and_exploding():
    """Exact: for x' = c x + u from x = 0 with only a terminal value -(x_H - 1)^2, the gradient at
    the zero sequence is dJ/du_t = 2 c^(H-1-t), so grad_norm_first = 2 c^11 and grad_norm_last = 2
    (H = 12). c = 0.01 flags vanishing (2e-22 < 1e-8), c = 10 exploding (2e11 > 1e6), c = 0.5
    neither; planning still returns a plan inside the bounds."""
    for c, vanishing, exploding in [(0.01, True, False), (10.0, False, True), (0.5, False, False)]:
        model = AnalyticModel(lambda x, u, c=c: c * x + u, lambda x: torch.zeros(x.shape[0]), 1, [-1.0], [1.0])
        obj = Objective(
            model, rewards=[lambda s, a: torch.zeros(a.shape[0])],
            value=lambda s: -((s.deter[:, 0] - 1.0) ** 2),
        )
        cfg = GradientConfig(optimizer="adam", horizon=12, iterations=3, restarts=1, lr=0.01, squash="clip", init="zeros")
        plan = GradientPlanner(cfg).plan(obj, model.initial(1), generator=_gen(0))
        info = plan.info
        assert math.isclose(info["grad_norm_first"], 2 * c**11, rel_tol=1e-4)
        assert math.isclose(info["grad_norm_last"], 2.0, rel_tol=1e-6)
        assert (info["vanishing"], info["exploding"]) == (vanishing, exploding)
        assert (plan.actions.abs() <= 1.0).all()


def test_non_differentiable_reward_term_is_refused_by_gradient_planners_only():
    """Exact behaviour: a term with `differentiable = False` makes GradientPlanner.plan and CEM with
    a gradient config raise ValueError naming the term (function `__name__`, or an object's
    `name`); plain CEM plans with it."""
    model = AnalyticModel(lambda x, u: u, lambda x: -(x**2).sum(-1), 1, [-1.0], [1.0])

    def lookup_table_reward(next_state, action):
        return -next_state.deter[:, 0].round()

    lookup_table_reward.differentiable = False

    class Collision:
        name = "collision_checker"
        differentiable = False

        def __call__(self, next_state, action):
            return torch.zeros(action.shape[0])

    for term, label in [(lookup_table_reward, "lookup_table_reward"), (Collision(), "collision_checker")]:
        obj = Objective(model, rewards=[lambda s, a: model.reward(s), term])
        with pytest.raises(ValueError, match=f"GradientPlanner.*{label}"):
            GradientPlanner(GradientConfig(optimizer="adam", horizon=2, iterations=1)).plan(obj, model.initial(1))
        with pytest.raises(ValueError, match=f"CEM \\(gradient refinement\\).*{label}"):
            CEM(CEMConfig(horizon=2, iterations=1, candidates=8, elites=2, gradient=AscentConfig(iterations=1))).plan(
                obj, model.initial(1))
        plan = CEM(CEMConfig(horizon=2, iterations=1, candidates=8, elites=2)).plan(obj, model.initial(1), generator=_gen(0))
        assert plan.actions.shape == (1, 2, 1)


@pytest.mark.parametrize(
    "options",
    [
        dict(noise_beta=2.0, keep_elites=0.3, population_decay=1.25, momentum=0.1, include_mean=True, return_best=True),
        dict(noise_beta=2.0, keep_elites=0.3, population_decay=1.25, momentum=0.1),
        dict(refit="mppi", temperature=0.05),
        dict(refit="mppi", temperature=0.05, keep_elites=0.5, return_best=True),
    ],
    ids=["icem-best", "icem-mean", "mppi", "mppi-keep-best"],
)
def test_nan_returns_rank_as_minus_inf_for_icem_and_mppi(options):
    """Exact: candidates with a NaN return (any action > 0) never enter a refit with non-zero
    weight nor become the best, so every returned action is <= 0 (the best finite choice is 0),
    the value is finite and the NaNs are counted in info."""
    model = _nan_model()
    cfg = CEMConfig(horizon=2, iterations=4, candidates=200, elites=20, **options)
    plan = CEM(cfg).plan(Objective(model), model.initial(2), generator=_gen(0))
    assert plan.info["nonfinite"] > 0
    assert (plan.actions <= 0).all()
    assert plan.actions.max() > -0.1  # close to the optimum 0
    assert torch.isfinite(plan.value).all()


def test_all_nan_returns_give_minus_inf_value_not_nan():
    """Exact: when every candidate's return is NaN, MPPI's weights fall back to uniform, the plan
    stays finite, the value is -inf and all B * rows * I returns are counted; GradientPlanner
    likewise returns value -inf and counts every evaluation."""
    model = AnalyticModel(lambda x, u: u, lambda x: torch.full((x.shape[0],), float("nan")), 1, [-1.0], [1.0])
    obj = Objective(model)
    plan = CEM(CEMConfig(horizon=2, iterations=3, candidates=16, elites=4, refit="mppi")).plan(
        obj, model.initial(2), generator=_gen(0))
    assert torch.isfinite(plan.actions).all()
    assert torch.equal(plan.value, torch.full((2,), float("-inf")))
    assert plan.info["nonfinite"] == 3 * 2 * 16
    g = GradientPlanner(GradientConfig(optimizer="adam", horizon=2, iterations=3, restarts=2)).plan(obj, model.initial(2), generator=_gen(0))
    assert torch.equal(g.value, torch.full((2,), float("-inf")))
    assert g.info["nonfinite"] == 2 * 2 * 4 and g.info["nonfinite_grads"] == 2 * 2 * 3
    assert torch.isfinite(g.actions).all()


def test_gradient_planner_never_prefers_a_nan_sequence():
    """Exact: with NaN returns for any action > 0 and the finite optimum at 0, ascent pushes some
    restarts into the NaN region; the returned sequence is still the best finite one seen (<= 0,
    close to 0), NaNs are counted and their gradients dropped."""
    model = _nan_model()
    planner = GradientPlanner(GradientConfig(optimizer="adam", horizon=2, iterations=30, restarts=4, lr=0.05, squash="clip", init="random"))
    plan = planner.plan(Objective(model), model.initial(2), generator=_gen(0))
    assert (plan.actions <= 0).all() and plan.actions.max() > -0.1
    assert torch.isfinite(plan.value).all()
    assert plan.info["nonfinite"] > 0 and plan.info["nonfinite_grads"] > 0


def test_deadline_in_the_past_runs_exactly_one_iteration_or_step():
    """Exact: a deadline already passed gives iterations == 1 and the model_evals of exactly one
    iteration (iCEM: B * H * rows_0; CEM+GD: plus B * H * K * (3 steps + 1), a backward pass counted as
    2 forward passes); GradientPlanner takes one step, B * R * H * (3 + 1) transitions."""
    _, model, state, obj = _lq_setup()
    past = time.perf_counter() - 1.0
    icem = CEMConfig(horizon=12, iterations=5, candidates=100, elites=10, noise_beta=2.0, keep_elites=0.3,
                     population_decay=1.25, include_mean=True)
    plan = CEM(icem).plan(obj, state, generator=_gen(0), deadline=past)
    assert plan.info["iterations"] == 1 and plan.info["model_evals"] == 3 * 12 * 101
    gd = CEMConfig(horizon=12, iterations=5, candidates=100, elites=10, gradient=AscentConfig(iterations=3, lr=0.05),
                   refit="mppi")
    plan = CEM(gd).plan(obj, state, generator=_gen(0), deadline=past)
    assert plan.info["iterations"] == 1 and plan.info["model_evals"] == 3 * 12 * (100 + 10 * (3 * 3 + 1))
    plan = GradientPlanner(GradientConfig(optimizer="adam", horizon=12, iterations=50, restarts=2)).plan(
        obj, state, generator=_gen(0), deadline=past)
    assert plan.info["iterations"] == 1 and plan.info["model_evals"] == 3 * 2 * 12 * (3 + 1)


def test_warm_start_with_include_mean_and_return_best_is_never_worse():
    """Exact (deterministic model): the warm start is itself a candidate, so the returned
    sequence's return is >= the warm start's, here the LQ optimum found by GradientPlanner, even
    for a tiny, noisy CEM that alone lands far from it; the same warm start also seeds
    GradientPlanner's restart 0 (init='warm_start')."""
    mats, model, state, obj = _lq_setup()
    good = GradientPlanner(GradientConfig(optimizer="adam", horizon=12, iterations=100, restarts=1, lr=0.05)).plan(obj, state, generator=_gen(0))
    warm_value = obj.returns(state, good.actions)
    tiny = CEMConfig(horizon=12, iterations=2, candidates=8, elites=2, include_mean=True, return_best=True, noise_beta=1.0)
    plan = CEM(tiny).plan(obj, state, warm_start=good, generator=_gen(1))
    assert (plan.value >= warm_value - 1e-5 * warm_value.abs()).all()
    assert max(_excess(mats, plan)) < 0.001
    alone = CEM(tiny).plan(obj, state, generator=_gen(1))
    assert max(_excess(mats, alone)) > 0.1
    one = GradientPlanner(GradientConfig(optimizer="adam", horizon=12, iterations=1, restarts=1, lr=1e-6, squash="clip"))
    again = one.plan(obj, state, warm_start=good, generator=_gen(2))
    torch.testing.assert_close(again.actions, good.actions, atol=1e-5, rtol=0)


def test_bad_options_raise_naming_the_field():
    """Exact behaviour: each out-of-range option raises ValueError naming its field; optimizer
    names resolve case-insensitively to torch.optim classes (SGD also solves the toy problem)."""
    for kwargs, field in [
        (dict(keep_elites=1.5), "keep_elites"), (dict(population_decay=0.5), "population_decay"),
        (dict(momentum=1.0), "momentum"), (dict(refit="softmax"), "refit"), (dict(temperature=0.0), "temperature"),
        (dict(noise_beta=float("inf")), "noise_beta"), (dict(init_std=0.0), r"CEMConfig\.init_std must be a positive"),
        (dict(gradient={"iterations": 0}), r"AscentConfig\.iterations must be an int >= 1; got 0"),
        (dict(gradient={"lr": 0.0}), r"AscentConfig\.lr"), (dict(gradient=3), "CEMConfig.gradient"),
        (dict(horizon=2.5), r"CEMConfig\.horizon must be an int >= 1; got 2.5"),
        (dict(candidates=True), r"CEMConfig\.candidates must be an int >= 1; got True"),
        (dict(init_std=float("nan")), r"CEMConfig\.init_std must be a positive number; got nan"),
    ]:
        with pytest.raises(ValueError, match=field):
            CEMConfig(**kwargs)
    # a dict is read as an AscentConfig (configs from JSON); dataclasses.replace works on both levels
    cfg = CEMConfig(gradient={"iterations": 4, "lr": 0.02}, max_evals=None)
    assert cfg.gradient == AscentConfig(iterations=4, lr=0.02)
    assert dataclasses.replace(cfg, gradient=dataclasses.replace(cfg.gradient, lr=0.5)).gradient.lr == 0.5
    assert dataclasses.replace(cfg, gradient=None).model_evals == CEMConfig().model_evals == 120_000
    assert cfg.model_evals == CEMConfig().model_evals + 10 * 12 * 100 * (4 * 3 + 1)  # a backward pass counts 2
    # under the default budget of 120,000 only 4 of CEM+GD's iterations (12,000 + 15,600 each) fit
    capped = dataclasses.replace(cfg, max_evals=120_000)
    assert capped.planned_iterations == 4 and capped.model_evals == 4 * (12 * 1000 + 12 * 100 * (4 * 3 + 1)) == 110_400
    for kwargs, field in [
        (dict(optimizer="nope"), "AscentConfig.optimizer"), (dict(squash="sigmoid"), "AscentConfig.squash"),
        (dict(grad_clip=-1.0), r"AscentConfig\.grad_clip must be a positive number or None; got -1.0"),
    ]:
        with pytest.raises(ValueError, match=field):
            AscentConfig(**kwargs)
    for kwargs, field in [
        (dict(restarts=0), "restarts"), (dict(lr=-1.0), "lr"), (dict(squash="sigmoid"), "squash"),
        (dict(init="ones"), "init"), (dict(grad_clip=0.0), "grad_clip"), (dict(optimizer="nope"), "optimizer"),
        (dict(optimizer="SparseAdam"), "optimizer"), (dict(max_evals=0), "max_evals"), (dict(tol=-1.0), "tol"),
        (dict(history=0), "history"), (dict(optimizer="lbfgs", squash="clip"), "squash='clip'"),
        (dict(grad_clip=1.0), "grad_clip=1.0"), (dict(compile="static"), "compile='static'"),
    ]:
        with pytest.raises(ValueError, match=field):
            GradientConfig(**kwargs)
    model = AnalyticModel(lambda x, u: u, lambda x: -((x - 0.3) ** 2).sum(-1), 1, [-1.0], [1.0])
    plan = GradientPlanner(GradientConfig(horizon=2, iterations=200, restarts=1, lr=0.1, optimizer="SGD", grad_clip=1.0)).plan(
        Objective(model), model.initial(1), generator=_gen(0))
    torch.testing.assert_close(plan.actions, torch.full((1, 2, 1), 0.3), atol=1e-3, rtol=0)


# ------------------------------------------------------------------ stopping: budget and convergence
def _lq_problems(count=3, **kw):
    from latentplan.families import lq_family

    return lq_family(count, seed=0, **kw)


@pytest.mark.parametrize("options", [{}, dict(noise_beta=2.0, white_fraction=0.5, keep_elites=0.3, population_decay=1.25,
                                              include_mean=True)], ids=["cem", "icem"])
def test_cem_budget_stop_spends_at_most_max_evals_and_says_why(options):
    """Over three LQ instances: with `iterations` a large cap, the search stops at the last iteration
    that fits in `max_evals` (the next would pass it), reports `stopped="budget"`, and spends exactly
    `CEMConfig.model_evals`; with a small `iterations` it reports `"iterations"`; with a deadline
    already past it runs one iteration and reports `"deadline"`."""
    for prob in _lq_problems():
        _, objective, start = prob.build()
        h = prob.horizon
        cfg = CEMConfig(horizon=h, iterations=10_000, candidates=60, elites=6, max_evals=9_000, tol=0.0, compile="eager",
                        **options)
        plan = CEM(cfg).plan(objective, start, generator=_gen(0))
        n = plan.info["iterations"]
        assert plan.info["stopped"] == "budget" and n == cfg.planned_iterations > 1
        assert plan.info["model_evals"] == cfg.model_evals == sum(h * cfg.rows(i) for i in range(n)) <= 9_000
        assert plan.info["model_evals"] + h * cfg.rows(n) > 9_000  # one more iteration would pass the budget
        few = dataclasses.replace(cfg, iterations=3)
        plan = CEM(few).plan(objective, start, generator=_gen(0))
        assert plan.info["stopped"] == "iterations" and plan.info["iterations"] == 3
        assert plan.info["model_evals"] == sum(h * few.rows(i) for i in range(3))
        plan = CEM(cfg).plan(objective, start, generator=_gen(0), deadline=0.0)
        assert plan.info["stopped"] == "deadline" and plan.info["iterations"] == 1
    # the first iteration always runs, even when it alone is over the budget
    tiny = CEMConfig(horizon=12, candidates=100, elites=10, max_evals=10)
    assert tiny.planned_iterations == 1 and tiny.model_evals == 1200
    # no budget: `iterations` alone counts (PlaNet's fixed count)
    assert CEMConfig(max_evals=None, horizon=20).model_evals == 10 * 20 * 1000
    assert CEMConfig(horizon=20).planned_iterations == 6  # 6 x 20,000 <= 120,000 < 7 x 20,000


def test_cem_convergence_stop_saves_evaluations_at_the_same_excess():
    """On small well-conditioned LQ problems (n = 2, m = 1, H = 8, condition numbers <= 3, <= 10
    degrees of rotation) J = 100, K = 10 collapses its std well before a budget of 40,000: `tol=1e-3`
    stops there (`stopped="converged"`) with at most 60 % of the evaluations, and its plan's excess
    cost is that of the full budget to 0.1 percentage points (measured: 0.38 % vs 0.39 %, 0.030 %
    vs 0.032 %, 1.25 % vs 1.26 % with 46 %, 42 %, 48 % of the evaluations)."""
    for i in (0, 2, 3):
        prob = _lq_problems(4, max_dim=2, max_actions=1, max_horizon=8, max_cond=3.0, max_angle=10.0)[i]
        _, objective, start = prob.build()
        runs = {}
        for tol in (0.0, 1e-3):
            cfg = CEMConfig(horizon=prob.horizon, iterations=1000, candidates=100, elites=10, max_evals=40_000, tol=tol,
                            compile="eager")
            plan = CEM(cfg).plan(objective, start, generator=_gen(0))
            runs[tol] = (prob.excess(plan.actions[0].double().numpy()), plan.info["model_evals"], plan.info["stopped"])
        (full, full_evals, full_stop), (early, early_evals, early_stop) = runs[0.0], runs[1e-3]
        assert (full_stop, full_evals) == ("budget", 40_000)
        assert early_stop == "converged" and early_evals <= 0.6 * full_evals
        assert abs(early - full) < 1e-3, (early, full)
        assert full < 0.02


def test_cem_stopping_options_are_checked():
    for kwargs, field in [(dict(max_evals=0), r"CEMConfig\.max_evals"), (dict(max_evals=1.5), r"CEMConfig\.max_evals"),
                          (dict(tol=-1e-3), r"CEMConfig\.tol"), (dict(tol=float("inf")), r"CEMConfig\.tol"),
                          (dict(white_fraction=1.5), r"CEMConfig\.white_fraction")]:
        with pytest.raises(ValueError, match=field):
            CEMConfig(**kwargs)


def test_white_fraction_draws_that_many_white_rows():
    """`white_fraction` 0.5 of J = 8: the first 4 rows of the noise are exactly `torch.randn`'s
    draw of their shape; with β = 0 the option is ignored (one plain `torch.randn`, PlaNet's)."""
    cem = CEM(CEMConfig(noise_beta=2.0, white_fraction=0.5))
    noise = cem._noise(2, 8, 6, 1, _gen(3), "cpu")
    assert noise.shape == (2, 8, 6, 1)
    torch.testing.assert_close(noise[:, :4], torch.randn((2, 4, 6, 1), generator=_gen(3)))
    plain = CEM(CEMConfig(noise_beta=0.0, white_fraction=0.5))._noise(2, 8, 6, 1, _gen(3), "cpu")
    torch.testing.assert_close(plain, torch.randn((2, 8, 6, 1), generator=_gen(3)))
