"""Faults in user reward terms that used to pass silently (session-12 probe of the reward API,
/work/scratch/s12/probe_rewards/REPORT.md): a term that detaches its output under a gradient
planner, a term that modifies its inputs in place, weights that overflow or are tensors, options of
the wrong type, copying and pickling objectives and terms, misleading messages, the context cache.

World: x' = x + u in 1-D (`AnalyticModel`), bounds +-0.5, decoded name `x`; from x0 = 0 and 2 the
reward -(x - 0.8)^2 of the arrival state has the exact H = 3 optimum u = (0.5, 0.3, 0) and
(-0.5, -0.5, -0.2): returns -0.09 and -0.53 (= -(0.3^2) and -(0.7^2 + 0.2^2))."""

import copy
import pickle

import numpy as np
import pytest
import torch

from latentplan.planners import CEM, ILQR, AscentConfig, GradientPlanner, Objective
from latentplan.planners.rewards import (
    NoGradientError, RewardContext, check_reward, continuation, learned_reward, reward,
)
from latentplan.worldmodels import AnalyticModel, RSSMConfig, RSSMWorldModel


def _line() -> AnalyticModel:
    return AnalyticModel(lambda x, u: x + u, lambda x: -((x - 0.8) ** 2).sum(-1), 1, [-0.5], [0.5],
                         names={"x": slice(0, 1)})


def _start(m: AnalyticModel):
    return m.from_observation(torch.tensor([[0.0], [2.0]]))


@reward
def to_target(obs, action, ctx):
    return -(obs["x"] - 0.8) ** 2


@reward
def detached(obs, action, ctx):
    return -(obs["x"].detach() - 0.8) ** 2


@reward
def through_numpy(obs, action, ctx):
    x = obs["x"].detach().numpy()
    return torch.as_tensor(-(x - 0.8) ** 2)


@reward(differentiable=False)
def detached_marked(obs, action, ctx):
    return -(obs["x"].detach() - 0.8) ** 2


def _gradient_planners():
    return {
        "GradientPlanner": GradientPlanner(horizon=3, restarts=2, max_evals=2000),
        "ILQR": ILQR(horizon=3, iterations=3),
        "CEM polish": CEM(horizon=3, iterations=2, candidates=20, elites=4, polish=0.25, max_evals=2000),
        "CEM+GD": CEM(horizon=3, iterations=2, candidates=20, elites=4, gradient=AscentConfig(iterations=2)),
    }


# --------------------------------------------------------------------------- no gradient
@pytest.mark.parametrize("term", [detached, through_numpy, to_target + 0.5 * detached], ids=lambda t: t.name)
@pytest.mark.parametrize("planner", list(_gradient_planners()))
def test_a_term_without_gradient_is_refused_by_every_gradient_planner(term, planner):
    # before: GradientPlanner and ILQR returned the zero actions they started from (value -1.92, -4.32)
    m = _line()
    run = lambda: _gradient_planners()[planner].plan(  # noqa: E731
        Objective(m, rewards=[term]), _start(m), generator=torch.Generator().manual_seed(0))
    if planner == "ILQR" and term is through_numpy:  # torch.func refuses .numpy() first; the note names the term
        with pytest.raises(RuntimeError, match="storage") as e:
            run()
        assert "in reward 'through_numpy'" in e.value.__notes__[0]
        return
    with pytest.raises(NoGradientError, match="'detached'|'through_numpy'") as e:
        run()
    assert "marked differentiable but its output carries no gradient" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_the_attached_reward_reaches_the_exact_optimum_and_sampling_planners_accept_the_detached_one():
    m = _line()
    for planner in (GradientPlanner(horizon=3, restarts=2, max_evals=2000), ILQR(horizon=3, iterations=3)):
        plan = planner.plan(Objective(m, rewards=[to_target]), _start(m), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(plan.value, torch.tensor([-0.09, -0.53]), atol=1e-5, rtol=0)
    # CEM plans under no_grad: the detached term is the same function there, so the same plan
    cem = CEM(horizon=3, iterations=2, candidates=20, elites=4)
    a = cem.plan(Objective(m, rewards=[to_target]), _start(m), generator=torch.Generator().manual_seed(0))
    b = cem.plan(Objective(m, rewards=[detached]), _start(m), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.actions, b.actions) and torch.equal(a.value, b.value)
    # marked differentiable=False: the gradient planners' own refusal, as before
    with pytest.raises(ValueError, match="marked differentiable=False"):
        GradientPlanner(horizon=3).plan(Objective(m, rewards=[detached_marked]), _start(m))


def test_a_plain_callable_is_not_checked_for_gradient():
    # the internal signature (next_state, action) -> [N] is for advanced use: a constant spy or
    # placeholder stays allowed under a gradient planner (tests/test_planners.py uses one)
    m = _line()
    seen = []

    def spy(s, a):
        seen.append(a.shape[0])
        return torch.zeros(a.shape[0])

    plan = ILQR(horizon=3, iterations=3).plan(Objective(m, rewards=[to_target, spy]), _start(m))
    torch.testing.assert_close(plan.value, torch.tensor([-0.09, -0.53]), atol=1e-5, rtol=0)
    assert seen


def test_a_bool_continuation_left_differentiable_is_refused_by_the_gradient_planner():
    m = _line()

    @continuation
    def below(obs, action, ctx):
        return obs["x"] < 1.5

    obj = Objective(m, rewards=[to_target], continuation=below)
    with pytest.raises(NoGradientError, match="continuation 'below'.*@lp.continuation"):
        GradientPlanner(horizon=3, restarts=2, max_evals=200).plan(obj, _start(m))
    # no gradient taken: the same term evaluates, exactly
    x = _start(m)
    r = obj.returns(x, torch.full((2, 3, 1), 0.5))
    # env 0: 0.5, 1.0, 1.5 -> rewards -0.09, -0.04, (c_1 = 1, c_2 = 0 after x = 1.5) -0.49
    torch.testing.assert_close(r, torch.tensor([-0.09 - 0.04 - 0.49, -(1.7**2)]))


def test_the_check_is_not_run_when_an_input_carries_no_gradient():
    # a transition term reading only the state before the action: at the first step (the start
    # belief, no gradient) its output has none either, and that is not an error
    m = _line()

    @reward(stage="transition")
    def where_from(prev, obs, action, ctx):
        return -prev["x"] ** 2

    obj = Objective(m, rewards=[where_from])
    u = torch.full((2, 1), 0.5, requires_grad=True)
    with torch.enable_grad():
        nxt, r = obj.step(_start(m), u)
    torch.testing.assert_close(r, torch.tensor([0.0, -4.0]))
    assert nxt.deter.requires_grad and not r.requires_grad


# --------------------------------------------------------------------------- in place
@reward
def mutates_obs(obs, action, ctx):
    obs["x"].mul_(0.0)
    return -(obs["x"] - 0.8) ** 2


@reward
def clamps_action(obs, action, ctx):
    action.clamp_(-0.1, 0.1)
    return -(obs["x"] - 0.8) ** 2


@reward(inputs="latent")
def zeroes_state(state, action, ctx):
    state.deter.zero_()
    return -(state.deter[:, 0] - 0.8) ** 2


@reward
def shifts_target(obs, action, ctx):
    ctx["target"].add_(1.0)
    return -(obs["x"] - ctx["target"]) ** 2


@reward
def reassigns_target(obs, action, ctx):
    ctx["target"] = ctx["target"] + 1.0  # a new tensor in the call's own dict: allowed
    return -(obs["x"] - ctx["target"]) ** 2


@pytest.mark.parametrize("term, culprit", [
    (mutates_obs, "obs['x']"), (clamps_action, "action"), (zeroes_state, "next_state.deter"),
])
@pytest.mark.parametrize("planner", ["cem", "gradient", "mcts"])
def test_a_term_that_modifies_its_inputs_in_place_raises_naming_them(term, culprit, planner):
    # before: CEM, MPPI, CMA-ES, the gradient planner, MCTS and the policy planner planned on the
    # zeroed or clamped tensors (every return -1.92, or actions clamped to 0.1) without a word
    from latentplan.planners import MCTS
    m = _line()
    p = {"cem": CEM(horizon=3, iterations=2, candidates=20, elites=4),
         "gradient": GradientPlanner(horizon=3, restarts=2, max_evals=200),
         "mcts": MCTS(horizon=3, simulations=10, children=4)}[planner]
    with pytest.raises(ValueError, match=rf"reward '{term.name}' modified its inputs in place: .*{__import__('re').escape(culprit)}"):
        p.plan(Objective(m, rewards=[term]), _start(m), generator=torch.Generator().manual_seed(0))


def test_a_transition_term_that_modifies_the_state_before_the_action_is_named():
    m = _line()

    @reward(stage="transition")
    def resets_prev(prev, obs, action, ctx):
        prev["x"].zero_()
        return -(obs["x"] - prev["x"]) ** 2

    with pytest.raises(ValueError, match=r"'resets_prev' modified its inputs in place: prev_state.deter, "
                                         r"prev_obs\['obs'\], prev_obs\['x'\] \(views of one tensor"):
        Objective(m, rewards=[resets_prev]).returns(_start(m), torch.zeros(2, 3, 1))


def test_a_context_tensor_modified_in_place_is_named_and_a_reassigned_key_is_not_an_error():
    m = _line()
    for target in (torch.tensor(0.8), torch.tensor([0.8, 0.8])):
        obj = Objective(m, rewards=[shifts_target], context={"target": target}, batch=2)
        with pytest.raises(ValueError, match=r"'shifts_target' modified its inputs in place: ctx\['target'\]"):
            obj.returns(_start(m), torch.zeros(2, 3, 1))
    obj = Objective(m, rewards=[reassigns_target], context={"target": torch.tensor(0.8)})
    r = obj.returns(_start(m), torch.zeros(2, 3, 1))
    torch.testing.assert_close(r, torch.tensor([-3 * 1.8**2, -3 * 0.2**2]))
    assert obj.context.values["target"].item() == pytest.approx(0.8)


# --------------------------------------------------------------------------- weights and options
def test_weights_that_overflow_divide_by_zero_or_are_tensors_raise_clear_errors():
    with pytest.raises(ValueError, match="cannot divide reward 'to_target' by 0"):
        to_target / 0
    with pytest.raises(ValueError, match="multiply to inf"):
        to_target * 1e200 * 1e200  # before: the term 'inf*to_target'
    with pytest.raises(ValueError, match="must be finite; got inf"):
        to_target / 1e-320
    with pytest.raises(ValueError, match="too large for a float"):
        10**400 * to_target
    for w in (torch.tensor(0.5), torch.tensor([0.5]), np.array([2.0])):
        with pytest.raises(TypeError, match=r"reward 'to_target' \* a (Tensor|ndarray) of shape .*use float\(w\)"):
            w * to_target  # before: Python's "unsupported operand", or (NumPy) an object array
    with pytest.raises(TypeError, match=r"reward 'to_target' \+ a Tensor"):
        to_target + torch.tensor(0.0)
    with pytest.raises(TypeError, match="not bool"):
        True * to_target
    # NumPy numbers, 0-dim arrays included, are weights
    m = _line()
    for w in (np.float32(2.0), np.array(2.0), np.int64(2)):
        term = w * to_target
        assert term.name == "2*to_target"
        torch.testing.assert_close(Objective(m, rewards=[term]).returns(_start(m), torch.zeros(2, 1, 1)),
                                   torch.tensor([-2 * 0.64, -2 * 1.44]))


def test_reward_options_of_the_wrong_type_raise():
    with pytest.raises(TypeError, match="differentiable must be True or False; got 'no'"):
        reward(lambda o, a, c: o["x"], differentiable="no")  # before: truthy, so differentiable
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        reward(lambda o, a, c: o["x"], name=3)
    assert reward(lambda o, a, c: o["x"], differentiable=np.bool_(False)).differentiable is False


def test_the_function_learned_reward_and_the_decorator_given_as_terms_get_a_hint():
    m = _line()
    with pytest.raises(TypeError, match=r"lp.learned_reward itself: call it, rewards=\[lp.learned_reward\(\)\]"):
        Objective(m, rewards=[learned_reward])
    for deco in (reward, reward(inputs="latent"), continuation):
        with pytest.raises(TypeError, match="is the decorator .*apply it to your function"):
            Objective(m, rewards=[deco])


def test_an_n_by_n_output_names_the_broadcast_that_made_it():
    m = _line()

    @reward
    def per_env(obs, action, ctx):
        return -(obs["x"] - ctx["target"]) ** 2  # [N] - [N, 1] -> [N, N]

    obj = Objective(m, rewards=[per_env], context={"target": torch.tensor([[0.8], [0.8]])}, batch=2)
    with pytest.raises(ValueError, match=r"returned shape \(6, 6\); an \[N, N\] result comes from broadcasting"):
        obj.returns(_start(m), torch.zeros(2, 3, 1))


# --------------------------------------------------------------------------- copies, pickles, caches
def _rssm() -> RSSMWorldModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return RSSMWorldModel(RSSMConfig(obs_shape=(2,), action_dim=1, obs_names=(("x", 0, 1), ("y", 1, 2)),
                                         deter=8, stoch=2, hidden=8, embed=8))


@reward
def xy(obs, action, ctx):
    return obs["x"] - ctx["w"] * obs["y"] ** 2


def test_objectives_deepcopy_and_pickle_and_terms_pickle_by_reference():
    # before: copy.deepcopy(objective) and pickle raised "cannot pickle 'mappingproxy' object"; a
    # module-level @reward term raised "not the same object as <module>.xy"
    m = _rssm()
    obj = Objective(m, rewards=[xy + 0.5 * learned_reward()], context={"w": torch.tensor([1.0, 2.0])}, batch=2)
    start = m.initial(2)
    actions = torch.linspace(-1, 1, 6).reshape(2, 3, 1)
    expected = obj.returns(start, actions, generator=torch.Generator().manual_seed(0))
    for other in (copy.deepcopy(obj), pickle.loads(pickle.dumps(obj))):
        got = other.returns(start, actions, generator=torch.Generator().manual_seed(0))
        assert torch.equal(got, expected)
        assert other.context.batch == 2 and list(other.context.values) == ["w"]
    assert pickle.loads(pickle.dumps(xy)) is xy
    renamed = reward(xy.fn, name="renamed")  # not what the module holds under its name: rebuilt
    back = pickle.loads(pickle.dumps(renamed))
    assert back.name == "renamed" and back.fn is xy.fn and back.differentiable


def test_the_expanded_context_cache_is_bounded():
    m = _line()
    ctx = RewardContext(m, {"t": torch.tensor([1.0, 2.0])}, batch=2)
    for n in range(2, 42, 2):
        out = ctx.expand(n, torch.device("cpu"))
        assert torch.equal(out["t"], torch.tensor([1.0, 2.0]).repeat_interleave(n // 2))
    assert len(ctx._expanded) == 8  # the last eight N (before: one entry per N ever seen)


def test_batch_may_be_a_numpy_integer():
    m = _line()
    obj = Objective(m, rewards=[to_target], context={"t": torch.tensor([1.0, 2.0])}, batch=np.int64(2))
    assert obj.context.batch == 2 and type(obj.context.batch) is int
    torch.testing.assert_close(obj.returns(_start(m), torch.zeros(2, 1, 1)), torch.tensor([-0.64, -1.44]))


def test_check_reward_reports_a_term_without_gradient_in_its_own_words():
    with pytest.raises(ValueError, match="is marked differentiable but no gradient reaches the action") as e:
        check_reward(detached, _line())
    assert "backpropagation raised" not in str(e.value)


@pytest.mark.parametrize("name", ["GradientPlanner", "CEM polish", "CEM+GD"])
def test_a_gradient_search_inside_inference_mode_is_refused_and_no_grad_is_fine(name):
    """torch.enable_grad() does not leave inference mode: the search would return its start as if
    converged, so it refuses by name; under torch.no_grad() the same search still finds the optimum."""
    m = _line()
    objective = Objective(m, rewards=[to_target])
    planner = _gradient_planners()[name]
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        planner.plan(objective, _start(m), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plan = planner.plan(objective, _start(m), generator=torch.Generator().manual_seed(0))
    plain = planner.plan(objective, _start(m), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plan.actions, plain.actions)  # no_grad changes nothing
    # from x0 = 0 the optimum moves 0.5 then 0.3 (reward -(x - 0.8)^2 per step): first action 0.5
    assert plan.actions[0, 0, 0].item() == pytest.approx(0.5, abs=1e-3 if name != "CEM+GD" else 0.02)


def test_the_policy_planner_reports_a_nonfinite_return_as_minus_inf():
    from latentplan.planners import GaussianPolicy, PolicyConfig, PolicyPlanner

    m = _line()

    @reward
    def nan_reward(obs, action, ctx):
        return obs["x"] * float("nan")

    policy = GaussianPolicy(1, 1, [-0.5], [0.5])
    plan = PolicyPlanner(policy, horizon=2).plan(Objective(m, rewards=[nan_reward]), _start(m))
    assert torch.equal(plan.value, torch.full((2,), float("-inf"))) and plan.info["nonfinite"] == 2
