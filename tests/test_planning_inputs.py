"""Bad inputs at the boundary of `plan` (and of the registry, `Plan.shift`, the controller): each raises
a clear error naming the argument (report s11/probe_planning, items 1-5, 7-9, 12, 14-16, 18), and the
behaviour fixes give the numbers they should.

The world: x' = x + u, reward -(x - 0.8)^2, one dimension, bounds +-0.5 (or unbounded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import latentplan as lp
from latentplan.planners.base import Plan
from latentplan.registry import Budget, PlannerSpec, make_planner


def _model(dtype=torch.float32, bound=0.5):
    lo = torch.tensor([-bound], dtype=dtype)
    hi = torch.tensor([bound], dtype=dtype)
    return lp.AnalyticModel(lambda x, u: x + u, lambda x: -((x - 0.8) ** 2).sum(-1), 1, lo, hi,
                            names={"x": slice(0, 1)})


def _belief(values=(0.0, 2.0), dtype=torch.float32):
    return lp.LatentState(torch.tensor([[v] for v in values], dtype=dtype), torch.zeros(len(values), 0, dtype=dtype))


PLANNERS = {
    "cem": lambda: lp.CEM(horizon=3, iterations=2, candidates=20, elites=4),
    "icem": lambda: lp.CEM(horizon=3, iterations=2, candidates=20, elites=4, noise_beta=2.0, keep_elites=0.3,
                           include_mean=True),
    "cem_polish": lambda: lp.CEM(horizon=3, iterations=2, candidates=20, elites=4, polish=0.25, max_evals=2000),
    "cmaes": lambda: lp.CMAES(horizon=3, max_evals=600),
    "mppi": lambda: lp.MPPI(horizon=3, samples=20, iterations=2),
    "gradient": lambda: lp.GradientPlanner(horizon=3, restarts=2, max_evals=2000),
    "ilqr": lambda: lp.ILQR(horizon=3, iterations=3),
    "mcts": lambda: lp.MCTS(horizon=3, simulations=10, children=4),
    "policy": lambda: lp.PolicyPlanner(lp.GaussianPolicy(1, 1, [-0.5], [0.5]), horizon=3),
}
WARM = [n for n in PLANNERS if n != "policy"]  # the policy planner ignores its warm start


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- 1. objective batch vs belief batch
def test_returns_rejects_beliefs_of_another_batch_naming_both_sizes():
    @lp.reward
    def to_target(obs, action, ctx):
        return -((obs["x"] - ctx["target"]) ** 2)

    m = _model()
    bad = lp.Objective(m, rewards=[to_target], context={"target": torch.tensor([0.8, -0.8, 5.0])}, batch=3)
    with pytest.raises(ValueError, match=r"batch=3.*N=2"):
        bad.returns(_belief(), torch.zeros(2, 3, 1))
    # the right objective gives the per-environment numbers: env 0 at 0 with target 0.8, env 1 at 2 with -0.8
    good = lp.Objective(m, rewards=[to_target], context={"target": torch.tensor([0.8, -0.8])}, batch=2)
    assert good.returns(_belief(), torch.zeros(2, 3, 1)).tolist() == pytest.approx([-0.64 * 3, -7.84 * 3])


@pytest.mark.parametrize("name", list(PLANNERS))
def test_every_planner_rejects_an_objective_built_for_another_batch(name):
    objective = lp.Objective(_model(), context={"target": torch.tensor([0.8, -0.8, 5.0])}, batch=3)
    with pytest.raises(ValueError, match=r"batch=3.*B=2"):
        PLANNERS[name]().plan(objective, _belief(), generator=_gen())


# ---------------------------------------------------------------- 2. MCTS mask allowing nothing; 15. float mask
def test_mcts_mask_that_allows_no_action_raises_naming_the_environments():
    acts = torch.tensor([[-0.5], [0.0], [0.5]])
    only_env1 = lambda s: torch.stack([s.deter[:, 0] > 1.0] * 3, dim=1)  # noqa: E731 env 0 (x = 0): none valid
    mcts = lp.MCTS(horizon=3, simulations=10, actions=acts, mask=only_env1)
    with pytest.raises(ValueError, match=r"mask allows no action.*\[0\]"):
        mcts.plan(lp.Objective(_model()), _belief(), generator=_gen())


def test_mcts_float_mask_is_rejected_as_its_message_says_bool():
    acts = torch.tensor([[-0.5], [0.0], [0.5]])
    mcts = lp.MCTS(horizon=3, simulations=10, actions=acts, mask=lambda s: torch.ones(s.batch, 3))
    with pytest.raises(TypeError, match="mask must return bool.*float32"):
        mcts.plan(lp.Objective(_model()), _belief(), generator=_gen())
    # an integer 0/1 mask (uint8 included) is the bool mask it encodes
    only_zero = torch.tensor([0, 1, 0], dtype=torch.uint8)
    got = lp.MCTS(horizon=3, simulations=10, actions=acts, mask=lambda s: only_zero.expand(s.batch, 3)).plan(
        lp.Objective(_model()), _belief(), generator=_gen())
    assert got.actions[:, 0, 0].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- 3. policy actions clipped to the model's bounds
@pytest.mark.parametrize("horizon", [1, 3])
def test_policy_planner_clips_a_wider_policy_into_the_model_bounds(horizon):
    torch.manual_seed(0)
    policy = lp.GaussianPolicy(1, 1, [-2.0], [2.0])
    with torch.no_grad():  # mode 2 tanh(3) = 1.99, far outside the model's +-0.5
        for p in policy.parameters():
            p.zero_()
        policy.head.bias[0] = 3.0
    m, b = _model(), _belief((0.0, 2.0, -1.0))
    plan = lp.PolicyPlanner(policy, horizon=horizon, deterministic=False).plan(lp.Objective(m), b, generator=_gen())
    assert plan.actions.abs().max().item() <= 0.5
    if horizon > 1:  # the value is the return of the clipped actions
        assert torch.allclose(plan.value, lp.Objective(m).returns(b, plan.actions))


def test_policy_rollout_clips_before_the_model_steps():
    class Wild:
        def act(self, state, *, generator=None, deterministic=False):
            return torch.full((state.batch, 1), 7.0)

    m = _model()
    actions, ret, _ = lp.planners.policy.policy_rollout(Wild(), lp.Objective(m), _belief((0.0,)), 2, with_returns=True)
    assert actions.flatten().tolist() == [0.5, 0.5]
    # x: 0 -> 0.5 -> 1.0; rewards -(0.5 - 0.8)^2 - (1.0 - 0.8)^2
    assert ret.item() == pytest.approx(-(0.09 + 0.04))


# ---------------------------------------------------------------- 4. infinite bounds
@pytest.mark.parametrize("name", ["cmaes", "gradient", "cem_polish"])
def test_searches_in_a_finite_box_reject_infinite_bounds(name):
    m = _model(bound=math.inf)
    with pytest.raises(ValueError, match=r"action bounds must be finite.*action_low=\[-inf\].*action_high=\[inf\]"):
        PLANNERS[name]().plan(lp.Objective(m), _belief((0.0,)), generator=_gen())


def test_planners_that_handle_infinite_bounds_keep_working():
    m, b = _model(bound=math.inf), _belief((0.0,))
    # the optimum moves to 0.8 in one step: return 0
    ilqr = lp.ILQR(horizon=3, iterations=5).plan(lp.Objective(m), b)
    assert ilqr.value.item() == pytest.approx(0.0, abs=1e-6)
    adam = lp.GradientPlanner(horizon=3, restarts=1, optimizer="adam", squash="clip", iterations=300, lr=0.05,
                              init="zeros", max_evals=None).plan(lp.Objective(m), b, generator=_gen())
    assert adam.value.item() == pytest.approx(0.0, abs=1e-3)
    cem = lp.CEM(horizon=3, iterations=3, candidates=50, elites=5).plan(lp.Objective(m), b, generator=_gen())
    assert math.isfinite(cem.value.item())


# ---------------------------------------------------------------- 5. NaN/inf warm start
@pytest.mark.parametrize("name", WARM)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_warm_start_with_nan_or_inf_is_rejected(name, bad):
    warm = torch.zeros(2, 3, 1)
    warm[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"warm_start\.actions contains NaN or inf \(1 of 6"):
        PLANNERS[name]().plan(lp.Objective(_model()), _belief(), warm_start=Plan(warm, torch.zeros(2)),
                              generator=_gen())


# ---------------------------------------------------------------- 7. NaN/inf belief
@pytest.mark.parametrize("name", list(PLANNERS))
def test_non_finite_belief_is_rejected_before_the_search(name):
    b = _belief((0.0, float("nan")))
    with pytest.raises(ValueError, match=r"state\.deter holds NaN or inf.*\[1\]"):
        PLANNERS[name]().plan(lp.Objective(_model()), b, generator=_gen())


def test_non_finite_stoch_is_named():
    b = lp.LatentState(torch.zeros(1, 1), torch.tensor([[float("inf")]]))
    with pytest.raises(ValueError, match=r"state\.stoch holds NaN or inf"):
        lp.CEM(horizon=2, iterations=1, candidates=4, elites=2).plan(lp.Objective(_model()), b)


# ---------------------------------------------------------------- 8, 9, 16. the registry
def test_registry_elites_above_the_budget_fitted_candidates_raises_naming_spec_and_budget():
    m = _model()
    with pytest.raises(ValueError, match=r"'cem:elites=500'.*elites=500.*J=300.*6000"):
        make_planner("cem:elites=500", m, Budget(evals=6000), horizon=4)
    with pytest.raises(ValueError, match=r"'planet:elites=5000'.*elites=5000"):
        make_planner("planet:elites=5000", m, Budget(evals=6000), horizon=4)
    # an override that fits is kept as given, not K = J
    cfg = make_planner("cem:elites=50", m, Budget(evals=6000), horizon=4).planner.config
    assert (cfg.candidates, cfg.elites) == (300, 50)


@pytest.mark.parametrize("spec, field", [("gradient:restarts=0", "restarts"),
                                         ("gradient:optimizer=adam,restarts=0", "restarts"),
                                         ("mcts:children=0", "children")])
@pytest.mark.parametrize("budget", [Budget(evals=6000), Budget(ms=50.0), None])
def test_registry_zero_counts_give_the_config_error_under_every_budget(spec, field, budget):
    with pytest.raises(ValueError, match=rf"planner '{spec}'.*{field} must be an int >= 1; got 0"):
        make_planner(spec, _model(), budget, horizon=4)


def test_registry_spec_errors():
    m = _model()
    with pytest.raises(ValueError, match=r"'cem:iterations=3,iterations=5'.*'iterations' is given twice"):
        PlannerSpec.parse("cem:iterations=3,iterations=5")
    with pytest.raises(ValueError, match=r"horizon must be an int >= 1; got 2\.5"):
        make_planner("cem", m, Budget(evals=6000), horizon=2.5)
    with pytest.raises(ValueError, match=r"planner 'cem:iterations=0': CEMConfig\.iterations"):
        make_planner("cem:iterations=0", m, Budget(evals=6000), horizon=4)
    with pytest.raises(ValueError, match=r"unknown planner 'CEM'; did you mean 'cem'\?"):
        make_planner("CEM", m, Budget(evals=6000), horizon=4)
    assert make_planner("cem", m, Budget(evals=6000), horizon=np.int64(4)).planner.config.horizon == 4


# ---------------------------------------------------------------- 12. deadline
@pytest.mark.parametrize("name", list(PLANNERS))
@pytest.mark.parametrize("deadline, match", [(float("nan"), "deadline is NaN"),
                                             ("soon", "deadline must be a number.*str")])
def test_bad_deadline_is_a_value_error_naming_deadline(name, deadline, match):
    with pytest.raises(ValueError, match=match):
        PLANNERS[name]().plan(lp.Objective(_model()), _belief(), generator=_gen(), deadline=deadline)


# ---------------------------------------------------------------- 14. wrong types at the boundary
@pytest.mark.parametrize("name", list(PLANNERS))
def test_wrong_state_generator_and_empty_batch(name):
    obj, planner = lp.Objective(_model()), PLANNERS[name]()
    for state in (torch.zeros(2, 1), None):
        with pytest.raises(TypeError, match=r"state must be a LatentState.*got (Tensor|NoneType)"):
            planner.plan(obj, state)
    with pytest.raises(TypeError, match=r"state\.deter must be a floating tensor.*int64"):
        planner.plan(obj, lp.LatentState(torch.tensor([[0], [2]]), torch.zeros(2, 0, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"state has B=0 beliefs"):
        planner.plan(obj, lp.LatentState(torch.zeros(0, 1), torch.zeros(0, 0)))
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator.*int 0"):
        planner.plan(obj, _belief(), generator=0)


def test_value_function_returning_a_list_or_ints_is_a_type_error_naming_value():
    m, b = _model(), _belief()

    def as_list(state):
        return [0.0] * state.batch

    def as_ints(state):
        return torch.zeros(state.batch, dtype=torch.long)

    with pytest.raises(TypeError, match=r"value 'test_value_function.*as_list' must return a floating tensor.*list"):
        lp.Objective(m, value=as_list).returns(b, torch.zeros(2, 3, 1))
    with pytest.raises(TypeError, match=r"value '.*as_ints' must return a floating tensor.*int64"):
        lp.Objective(m, value=as_ints).returns(b, torch.zeros(2, 3, 1))


def test_plan_shift_fill_shapes():
    plan = Plan(torch.arange(6.0).reshape(2, 3, 1), torch.zeros(2))
    with pytest.raises(ValueError, match=r"fill must be a scalar, \[A=1\], \[B=2 or 1, A=1\].*got shape \(2,\)"):
        plan.shift(fill=torch.tensor([1.0, 2.0]).reshape(2))  # [2] on A = 1 is neither [A] nor [B, A]
    with pytest.raises(ValueError, match=r"got shape \(3, 1\)"):
        plan.shift(fill=torch.zeros(3, 1))
    # broadcast forms: [1, A] and [B, 1, A] (as before the checks)
    assert plan.shift(fill=torch.tensor([[3.0]])).actions[:, -1, 0].tolist() == [3.0, 3.0]
    assert plan.shift(fill=torch.tensor([[[7.0]], [[9.0]]])).actions[:, -1, 0].tolist() == [7.0, 9.0]
    with pytest.raises(TypeError, match="fill must be a number"):
        plan.shift(fill="zero")
    assert plan.shift(fill=torch.tensor([[7.0], [9.0]])).actions[:, -1, 0].tolist() == [7.0, 9.0]
    assert plan.shift(fill=-1.0).actions[:, :, 0].tolist() == [[1.0, 2.0, -1.0], [4.0, 5.0, -1.0]]
    assert plan.shift().actions[:, :, 0].tolist() == [[1.0, 2.0, 2.0], [4.0, 5.0, 5.0]]


# ---------------------------------------------------------------- 15. dtype of the warm start: cast, one rule
@pytest.mark.parametrize("name", WARM)
def test_float64_warm_start_on_a_float32_model_is_cast(name):
    obj, b = lp.Objective(_model()), _belief()
    warm32 = torch.tensor([[[0.3], [0.1], [-0.2]], [[-0.4], [0.0], [0.2]]])
    p32 = PLANNERS[name]().plan(obj, b, warm_start=Plan(warm32, torch.zeros(2)), generator=_gen())
    p64 = PLANNERS[name]().plan(obj, b, warm_start=Plan(warm32.double(), torch.zeros(2, dtype=torch.float64)),
                                generator=_gen())
    assert p64.actions.dtype == torch.float32
    assert torch.equal(p32.actions, p64.actions)


# ---------------------------------------------------------------- 18. controller noise
def test_controller_rejects_negative_or_nan_noise():
    from latentplan.control import ControllerConfig, MPCController

    c = MPCController(_model(), lp.CEM(horizon=3, iterations=1, candidates=8, elites=2),
                      ControllerConfig(mode="inline"))
    c.reset(np.array([0.0]))
    for noise in (-1.0, float("nan"), "0.3"):
        with pytest.raises(ValueError, match="noise must be a finite std >= 0"):
            c.act(np.array([0.0]), noise=noise)
    assert c.act(np.array([0.0]), noise=0.0).shape == (1,)


# ---------------------------------------------------------------- 7. a NaN return is -inf in every planner's value
@pytest.mark.parametrize("name", ["ilqr", "mcts", "cem", "gradient"])
def test_nan_value_function_gives_minus_inf_value(name):
    objective = lp.Objective(_model(), value=lambda s: torch.full((s.batch,), float("nan")))
    with np.errstate(invalid="ignore"):
        plan = PLANNERS[name]().plan(objective, _belief(), generator=_gen())
    assert plan.value.tolist() == [float("-inf")] * 2


def test_finite_check_does_not_mistake_an_overflowing_sum_for_a_non_finite_belief():
    from latentplan.planners.validate import check_plan_inputs

    big = lp.LatentState(torch.full((2, 3), 6.0e4, dtype=torch.float16), torch.zeros(2, 0, dtype=torch.float16))
    assert not torch.isfinite(big.deter.sum())  # 3.6e5 overflows float16: checked entry by entry instead
    check_plan_inputs("test", lp.Objective(_model()), big)  # every entry is finite: no error
    big.deter[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"state\.deter holds NaN or inf.*\[1\]"):
        check_plan_inputs("test", lp.Objective(_model()), big)


@pytest.mark.parametrize("leaf", ["rollout", "value"])
def test_mcts_reads_each_rows_own_environments_context_when_only_some_trees_expand(leaf):
    # B = 3 environments; the belief carries its environment's id (a second state entry the dynamics
    # keep), the context gives each environment a target and its id. With H = 3, K = 3 and 30 simulations
    # the trees reach the horizon at different times, so MCTS expands (and rolls out) some
    # environments' rows only; every row must still read its own environment's context.
    seen = []

    @lp.reward
    def to_target(obs, action, ctx):
        x, env = obs["obs"][:, 0], obs["obs"][:, 1]
        seen.append(bool((ctx["env"] == env).all()))
        return -(x - ctx["target"]) ** 2

    model = lp.AnalyticModel(lambda s, u: torch.stack([s[:, 0] + u[:, 0], s[:, 1]], 1), lambda s: s[:, 0] * 0,
                             2, [-1.0], [1.0])
    targets = torch.tensor([0.5, -0.9, 0.2])
    objective = lp.Objective(model, rewards=to_target, batch=3,
                             context={"target": targets, "env": torch.tensor([0.0, 1.0, 2.0])})
    belief = model.from_observation(torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 2.0]]))
    mcts = lp.MCTS(lp.MCTSConfig(horizon=3, simulations=30, children=3, leaf=leaf))
    plan = mcts.plan(objective, belief, generator=_gen(0))
    assert len(seen) >= 14 and all(seen)  # before the fix: 11 of 21 calls (rollout), 2 of 14 (value) mixed rows up
    # and the plan's value is the objective's return of its actions (each environment's own target)
    torch.testing.assert_close(plan.value, objective.returns(belief, plan.actions), rtol=1e-5, atol=1e-5)
