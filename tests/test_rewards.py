"""User reward terms: composition arithmetic, decoded and latent inputs, per-environment context,
output checks naming the function, NaN ranking, the differentiable flag, and `check_reward`."""

import math

import numpy as np
import pytest
import torch

from latentplan.planners import CEM, CEMConfig, Objective
from latentplan.planners.rewards import (
    BoundReward, Reward, RewardContext, check_reward, learned_reward, reward,
)
from latentplan.worldmodels import AnalyticModel, LatentState, RSSMConfig, RSSMWorldModel

CARTPOLE_NAMES = dict(
    position=slice(0, 3), velocity=slice(3, 5), cart_x=slice(0, 1), pole_cos=slice(1, 2),
    pole_sin=slice(2, 3), cart_vel=slice(3, 4), pole_angvel=slice(4, 5),
)


def _integrator() -> AnalyticModel:
    """x' = x + u in 2-D, learned reward -x'_1, named slices x0 and x1 (each [N, 1])."""
    return AnalyticModel(
        lambda x, u: x + u, lambda x: -x[:, 1], 2, [-1.0, -1.0], [1.0, 1.0],
        names={"x0": slice(0, 1), "x1": slice(1, 2), "xy": slice(0, 2)},
    )


@reward
def xcoord(obs, action, ctx):
    return obs["x0"]


@reward(inputs="latent")
def action_cost(state, action, ctx):
    return -(action**2).sum(-1)


@reward(differentiable=False)
def crossed(obs, action, ctx):
    return (obs["x0"] > 0).float()


def _step(term, model, x, u, **kw):
    obj = Objective(model, rewards=[term], **kw)
    return obj.step(model.from_observation(torch.tensor(x)), torch.tensor(u))[1]


X = [[1.0, 2.0], [3.0, -1.0]]
U = [[0.5, -1.0], [0.0, 2.0]]  # x' = [[1.5, 1.0], [3.0, 1.0]]; a = x'_0 = [1.5, 3]; b = -|u|^2 = [-1.25, -4]


def test_decorator_forms_name_flags_and_direct_call():
    assert isinstance(xcoord, Reward) and xcoord.name == "xcoord" and xcoord.inputs == "decoded"
    assert action_cost.inputs == "latent" and action_cost.differentiable and not crossed.differentiable

    @reward()
    def empty_parens(obs, action, ctx):
        return obs["x0"]

    named = reward(lambda s, a, c: a[:, 0], inputs="latent", name="first_u")
    assert empty_parens.name == "empty_parens" and named.name == "first_u"
    # the decorated object still calls the user function unchanged
    assert xcoord({"x0": torch.tensor([4.0])}, None, {}).item() == 4.0
    with pytest.raises(ValueError, match="inputs must be one of"):
        reward(inputs="pixels")
    with pytest.raises(TypeError, match="inputs='latent'"):
        reward("latent")
    with pytest.raises(TypeError, match="not bound to a model"):
        (xcoord + action_cost)(None, None)


def test_composition_arithmetic_on_an_analytic_model():
    m = _integrator()
    a = torch.tensor([1.5, 3.0])
    b = torch.tensor([-1.25, -4.0])
    cases = {
        "2*xcoord + action_cost": (2 * xcoord + action_cost, 2 * a + b),  # [1.75, 2.0]
        "xcoord - action_cost": (xcoord - action_cost, a - b),
        "-xcoord": (-xcoord, -a),
        "3*action_cost": (action_cost * 3, 3 * b),
        "0.5*xcoord": (xcoord / 2, 0.5 * a),
        "xcoord + action_cost + xcoord": (sum([xcoord, action_cost, xcoord]), 2 * a + b),
        "2*(xcoord + action_cost)": (2 * (xcoord + action_cost), 2 * (a + b)),
        "xcoord - 0.5*action_cost": (xcoord + -0.5 * action_cost, a - 0.5 * b),
        "6*xcoord": (2 * (3 * xcoord), 6 * a),
        "0.5*learned_reward": (0.5 * learned_reward(), torch.tensor([-0.5, -0.5])),
    }
    for name, (term, want) in cases.items():
        assert term.name == name
        torch.testing.assert_close(_step(term, m, X, U), want, rtol=0, atol=1e-6)
    torch.testing.assert_close(_step(2 * xcoord + action_cost, m, X, U), torch.tensor([1.75, 2.0]))
    assert 0 + xcoord is xcoord and xcoord - 0 is xcoord and 1 * xcoord is xcoord
    assert (0 - xcoord).name == "-xcoord"
    with pytest.raises(TypeError, match="constant"):
        xcoord + 3.0
    with pytest.raises(TypeError):
        xcoord * action_cost
    with pytest.raises(ValueError, match="finite"):
        math.nan * xcoord


def test_returns_sum_several_entries_over_the_horizon_with_discount():
    m = _integrator()
    # x0 = 0; u = (1, 0) then (0, 1): x1 = (1, 0), x2 = (1, 1)
    # xcoord: 1, 1; 0.5 * learned (-x_1): 0, -0.5; per-step rewards 1, 0.5
    actions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    for discount, want in ((1.0, 1.5), (0.5, 1.25)):
        obj = Objective(m, rewards=[xcoord, 0.5 * learned_reward()], discount=discount)
        assert obj.returns(m.initial(1), actions).item() == pytest.approx(want)


def test_default_reward_is_the_learned_head_and_plain_callables_are_kept():
    m = _integrator()
    obj = Objective(m)
    assert len(obj.rewards) == 1 and obj.rewards[0].name == "learned_reward"
    r = obj.step(m.from_observation(torch.tensor(X)), torch.tensor(U))[1]
    torch.testing.assert_close(r, torch.tensor([-1.0, -1.0]))  # -x'_1

    def plain(next_state, action):
        return next_state.deter[:, 0] * 10

    obj = Objective(m, rewards=[plain, xcoord])
    assert obj.rewards[0] is plain and isinstance(obj.rewards[1], BoundReward)
    r = obj.step(m.from_observation(torch.tensor(X)), torch.tensor(U))[1]
    torch.testing.assert_close(r, torch.tensor([16.5, 33.0]))
    # a single term need not be wrapped in a list
    assert Objective(m, rewards=xcoord).rewards[0].name == "xcoord"
    # no per-step reward: only the terminal value counts
    only_value = Objective(m, rewards=[], value=lambda s: s.deter[:, 0])
    assert only_value.returns(m.initial(1), torch.ones(1, 3, 2)).tolist() == [3.0]


def test_differentiable_flag_propagates_and_gradients_flow():
    assert not (xcoord + 2 * crossed).differentiable and not (-crossed).differentiable
    assert (xcoord + action_cost).differentiable
    obj = Objective(_integrator(), rewards=[xcoord, action_cost + crossed, lambda s, a: a[:, 0]])
    assert [getattr(t, "differentiable", True) for t in obj.rewards] == [True, False, True]
    assert [getattr(t, "name", None) for t in obj.rewards[:2]] == ["xcoord", "action_cost + crossed"]
    assert not obj.differentiable and Objective(_integrator(), rewards=[xcoord]).differentiable
    # d/du of 2*x'_0 - |u|^2 with x' = x + u is (2 - 2 u_0, -2 u_1)
    m = _integrator()
    u = torch.tensor([[[0.5, -1.0]], [[0.0, 2.0]]], requires_grad=True)
    ret = Objective(m, rewards=[2 * xcoord + action_cost]).returns(m.from_observation(torch.tensor(X)), u)
    (g,) = torch.autograd.grad(ret.sum(), u)
    torch.testing.assert_close(g[:, 0], torch.tensor([[1.0, 2.0], [2.0, -4.0]]))


def test_decoded_named_slices_reach_the_function_squeezed():
    m = AnalyticModel(lambda x, u: x, lambda x: x[:, 0], 5, [-1.0], [1.0], names=CARTPOLE_NAMES)
    seen = {}

    @reward
    def upright(obs, action, ctx):
        seen.update({k: tuple(v.shape) for k, v in obs.items()})
        return obs["pole_cos"] - 0.1 * (obs["cart_x"] - ctx["target_x"]).abs()

    x = torch.tensor([[0.7, 0.9, 0.1, 0.0, 0.0], [-0.3, -1.0, 0.0, 2.0, 1.0], [0.5, 0.0, 1.0, 0.0, 0.0]])
    r = Objective(m, rewards=[upright], context={"target_x": 0.5}).step(m.from_observation(x), torch.zeros(3, 1))[1]
    torch.testing.assert_close(r, torch.tensor([0.9 - 0.02, -1.0 - 0.08, 0.0]))
    assert seen == {"obs": (3, 5), "position": (3, 3), "velocity": (3, 2), "cart_x": (3,), "pole_cos": (3,),
                    "pole_sin": (3,), "cart_vel": (3,), "pole_angvel": (3,)}


def _rssm() -> RSSMWorldModel:
    names = tuple((k, s.start, s.stop) for k, s in CARTPOLE_NAMES.items())
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = RSSMConfig(obs_shape=(5,), action_dim=1, obs_names=names, deter=16, stoch=4, hidden=16, embed=16)
        return RSSMWorldModel(config)


@reward
def upright(obs, action, ctx):
    return obs["pole_cos"] - 0.1 * (obs["cart_x"] - ctx["target_x"]).abs()


def test_decoded_terms_on_an_rssm_read_the_decoder_and_pass_check_reward():
    m = _rssm()
    g = torch.Generator().manual_seed(0)
    state = m.imagine_step(m.initial(3), torch.rand(3, 1, generator=g), generator=g)
    action = torch.rand(3, 1, generator=g) * 2 - 1
    with torch.no_grad():
        r = upright.bind(m, {"target_x": 0.5})(state, action)
        dec = m.decoder(state.features())
        torch.testing.assert_close(r, dec[:, 1] - 0.1 * (dec[:, 0] - 0.5).abs())
        # the decode is shared by the terms of one objective: one decoder call per imagined state
        calls = []
        hook = m.decoder.register_forward_hook(lambda *a: calls.append(1))
        obj = Objective(m, rewards=[upright, 2 * upright + learned_reward()], context={"target_x": 0.5})
        total = obj.stage_reward(state, action)
        hook.remove()
        torch.testing.assert_close(total, 3 * r + m.reward(state))
        assert len(calls) == 1
    report = check_reward(upright + 0.5 * learned_reward(), m, context={"target_x": torch.linspace(-1, 1, 4)})
    assert report.gradient_flows and report.differentiable and report.rows == 8


def test_latent_inputs_see_the_latent_state():
    m = _integrator()

    @reward(inputs="latent")
    def latent_sum(state, action, ctx):
        assert isinstance(state, LatentState)
        return state.deter.sum(-1) * ctx["scale"]

    torch.testing.assert_close(_step(latent_sum, m, X, U, context={"scale": 2.0}), torch.tensor([5.0, 8.0]))


def test_per_environment_context_is_expanded_to_rows():
    m = _integrator()
    shapes = {}

    @reward(inputs="latent")
    def read_ctx(state, action, ctx):
        shapes.update({k: tuple(v.shape) for k, v in ctx.items() if isinstance(v, torch.Tensor)})
        return ctx["per_env"] + ctx["shared"][:, 1] + ctx["zero_dim"] + ctx["py"]

    context = {"per_env": torch.tensor([10.0, 20.0]), "shared": torch.tensor([[0.0, 1.0]]),
               "zero_dim": torch.tensor(100.0), "py": 1000, "np": np.array([7.0, 8.0])}
    obj = Objective(m, rewards=[read_ctx], context=context, batch=2)
    r = obj.step(m.initial(2).expand(3), torch.zeros(6, 2))[1]
    assert r.tolist() == [1111.0] * 3 + [1121.0] * 3  # rows b*J + j belong to env b
    assert shapes == {"per_env": (6,), "shared": (6, 2), "zero_dim": (), "np": (6,)}
    with pytest.raises(ValueError, match=r"not a multiple of B"):
        obj.step(m.initial(5), torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"context\['target'\].*B=2.*got 3"):
        Objective(m, rewards=[read_ctx], context={"target": torch.zeros(3)}, batch=2)
    with pytest.raises(ValueError, match=r"context\['target'\].*batch=B"):
        Objective(m, rewards=[read_ctx], context={"target": torch.zeros(2)})
    # [1, ...] needs no batch
    assert Objective(m, rewards=[read_ctx], context={"target": torch.zeros(1, 3)}).context.batch is None


def test_one_cem_call_plans_each_environment_to_its_own_target():
    m = AnalyticModel(lambda x, u: u, lambda x: torch.zeros(x.shape[0]), 2, [-1.0, -1.0], [1.0, 1.0],
                      names={"pos": slice(0, 2)})

    @reward
    def to_target(obs, action, ctx):
        return -((obs["pos"] - ctx["target"]) ** 2).sum(-1)

    targets = torch.tensor([[0.5, -0.2], [-0.4, 0.3]])
    obj = Objective(m, rewards=[to_target], context={"target": targets}, batch=2)
    plan = CEM(CEMConfig(horizon=2, iterations=6, candidates=200, elites=20)).plan(
        obj, m.initial(2), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plan.actions, targets[:, None].expand(2, 2, 2), atol=0.05, rtol=0)
    assert (plan.value > -0.01).all()


def test_bad_outputs_raise_naming_the_function():
    m = _integrator()

    @reward
    def column(obs, action, ctx):
        return obs["x0"][:, None]  # [N, 1]

    @reward(inputs="latent")
    def counts(state, action, ctx):
        return torch.ones(action.shape[0], dtype=torch.long)

    @reward(inputs="latent")
    def scalar(state, action, ctx):
        return 1.0

    @reward(inputs="latent")
    def elsewhere(state, action, ctx):
        return torch.zeros(action.shape[0], device="meta")

    with pytest.raises(ValueError, match=r"reward 'column' must return a \[N=2\].*shape \(2, 1\)"):
        _step(column, m, X, U)
    with pytest.raises(ValueError, match=r"reward 'column'"):  # inside a composite: the leaf is named
        _step(xcoord + 2 * column, m, X, U)
    with pytest.raises(TypeError, match=r"reward 'counts'.*dtype torch.int64"):
        _step(counts, m, X, U)
    with pytest.raises(TypeError, match=r"reward 'scalar'.*returned a float"):
        _step(scalar, m, X, U)
    with pytest.raises(ValueError, match=r"reward 'elsewhere'.*device meta"):
        _step(elsewhere, m, X, U)

    @reward
    def typo(obs, action, ctx):
        return obs["cart_x"]

    with pytest.raises(KeyError) as info:
        _step(typo, m, X, U)
    assert "in reward 'typo'" in info.value.__notes__[0] and "'x0'" in info.value.__notes__[0]


def test_nan_reward_ranks_last_in_cem_and_is_counted():
    m = AnalyticModel(lambda x, u: u, lambda x: torch.zeros(x.shape[0]), 1, [-1.0], [1.0], names={"x": slice(0, 1)})

    @reward
    def nan_right(obs, action, ctx):
        r = -((obs["x"] - 0.5) ** 2)
        return torch.where(obs["x"] > 0, torch.full_like(r, math.nan), r)

    obj = Objective(m, rewards=[nan_right])
    assert torch.isnan(obj.returns(m.initial(1), torch.ones(1, 2, 1))).all()  # NaN is not an error
    plan = CEM(CEMConfig(horizon=2, iterations=4, candidates=200, elites=20)).plan(
        obj, m.initial(1), generator=torch.Generator().manual_seed(0))
    assert plan.info["nonfinite"] > 0
    assert (plan.actions <= 0.05).all() and torch.isfinite(plan.value).all()


def test_check_reward_passes_good_terms_and_reports_gradients():
    m = _integrator()
    rep = check_reward(2 * xcoord + action_cost, m)
    assert rep.name == "2*xcoord + action_cost" and rep.gradient_flows and rep.rows == 8
    assert rep.dtype == torch.float32
    # a non-differentiable term passes and is reported without gradient
    assert check_reward(crossed, m).gradient_flows is False
    # a plain callable with the internal signature is accepted too
    assert check_reward(lambda s, a: -(a**2).sum(-1), m).gradient_flows

    @reward
    def detached(obs, action, ctx):
        return obs["x0"].detach()

    with pytest.raises(ValueError, match=r"(?s)'detached'.*marked differentiable but no gradient reaches the action"):
        check_reward(detached, m)

    def undecorated(obs, action, ctx):
        return obs["x0"]

    with pytest.raises(ValueError, match=r"wrap fn\(obs, action, ctx\) with @reward"):
        check_reward(undecorated, m)


def test_check_reward_catches_mutation_nondeterminism_and_batch_coupling():
    m = _integrator()

    @reward
    def mutates(obs, action, ctx):
        obs["xy"].mul_(2)
        return obs["x0"]

    @reward(inputs="latent")
    def mutates_action(state, action, ctx):
        action.clamp_(0, 1)
        return action[:, 0]

    calls = [0]

    @reward
    def stateful(obs, action, ctx):
        calls[0] += 1
        return obs["x0"] + calls[0]

    @reward
    def normalised(obs, action, ctx):
        return obs["x0"] - obs["x0"].mean()

    with pytest.raises(ValueError, match=r"(?s)'mutates'.*in place.*next_state.deter, obs\['obs'\]"):
        check_reward(mutates, m)
    with pytest.raises(ValueError, match=r"(?s)'mutates_action'.*modified its inputs in place.*: action"):
        check_reward(mutates_action, m)
    with pytest.raises(ValueError, match=r"(?s)'stateful'.*not deterministic") as info:
        check_reward(stateful, m)
    assert "1 problem" in str(info.value)  # row independence is not judged on a nondeterministic term
    with pytest.raises(ValueError, match=r"(?s)'normalised'.*rows are not independent"):
        check_reward(normalised, m)

    @reward
    def wrong(obs, action, ctx):
        return obs["xy"]

    with pytest.raises(ValueError, match=r"(?s)1 problem.*must return a \[N=8\].*shape \(8, 2\)"):
        check_reward(wrong, m)
    # the caller's global RNG is untouched
    before = torch.random.get_rng_state()
    check_reward(xcoord, m)
    assert torch.equal(before, torch.random.get_rng_state())


def test_bind_checks_the_model_has_what_terms_need():
    class NoDecode:
        action_dim = 1
        action_low = torch.tensor([-1.0])
        action_high = torch.tensor([1.0])

        def reward(self, state):
            return state.deter[:, 0]

    with pytest.raises(TypeError, match=r"'xcoord' needs NoDecode.decode"):
        Objective(NoDecode(), rewards=[xcoord + learned_reward()])
    bound = learned_reward().bind(NoDecode())
    assert isinstance(bound, BoundReward) and isinstance(bound.context, RewardContext)
    assert bound(LatentState(torch.ones(2, 1), torch.zeros(2, 0)), torch.zeros(2, 1)).tolist() == [1.0, 1.0]


def test_caches_follow_in_place_updates_of_context_and_state():
    m = _integrator()

    @reward
    def plus_target(obs, action, ctx):
        return obs["x0"] + ctx["t"]

    target = torch.tensor([1.0, 2.0])
    obj = Objective(m, rewards=[plus_target, xcoord], context={"t": target}, batch=2)
    state = m.from_observation(torch.zeros(2, 2))
    assert obj.stage_reward(state, torch.zeros(2, 2)).tolist() == [1.0, 2.0]
    target.add_(10)  # a context tensor updated in place between calls
    state.deter[:, 0] = 1.0  # and the same state object modified in place
    assert obj.stage_reward(state, torch.zeros(2, 2)).tolist() == [13.0, 14.0]


# --------------------------------------------------------------------------- issue 14, item 4
@reward(stage="transition")
def before_and_after(prev, obs, action, ctx):
    return 10 * prev["x0"] + obs["x0"]


@reward(stage="terminal")
def final_x1(obs, ctx):
    return 100 * obs["x1"]


def test_transition_terms_read_the_state_before_and_after_the_action():
    m = _integrator()
    assert before_and_after.stage == "transition" and xcoord.stage == "arrival"
    assert before_and_after.needs_prev and not xcoord.needs_prev and (xcoord + before_and_after).needs_prev
    # X -> x' = X + U: x0 before [1, 3], after [1.5, 3]
    torch.testing.assert_close(_step(before_and_after, m, X, U), torch.tensor([11.5, 33.0]))
    torch.testing.assert_close(_step(xcoord + 2 * before_and_after, m, X, U), torch.tensor([24.5, 69.0]))
    # returns: s0 = (0, 0), s1 = (1, 0), s2 = (1, 1): rewards 10*0 + 1 = 1 and 10*1 + 1 = 11
    actions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).expand(3, 2, 2)
    for discount, want in ((1.0, 12.0), (0.5, 6.5)):
        obj = Objective(m, rewards=[before_and_after], discount=discount)
        assert obj.needs_prev and obj.returns(m.initial(3), actions).tolist() == [want] * 3

    @reward(inputs="latent", stage="transition")
    def moved(prev, state, action, ctx):
        return (state.deter - prev.deter).pow(2).sum(-1)  # |u|^2 for x' = x + u

    torch.testing.assert_close(_step(moved, m, X, U), torch.tensor([1.25, 4.0]))
    with pytest.raises(ValueError, match="needs the state before the action"):
        before_and_after.bind(m)(m.initial(1), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="stage must be one of"):
        reward(stage="initial")
    rep = check_reward(before_and_after, m)
    assert rep.gradient_flows and rep.rows == 8

    @reward(inputs="latent", stage="transition")
    def mutates_prev(prev, state, action, ctx):
        prev.deter.zero_()
        return state.deter[:, 0]

    with pytest.raises(ValueError, match=r"(?s)'mutates_prev'.*in place.*prev_state.deter"):
        check_reward(mutates_prev, m)


def test_terminal_term_is_added_at_the_horizon_beside_the_value():
    m = _integrator()
    actions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # s2 = (1, 1); xcoord rewards 1, 1
    # 1 + 0.5 * 1 + 0.25 * (V = x0 = 1, T = 100 * x1 = 100)
    obj = Objective(m, rewards=[xcoord], discount=0.5, value=lambda s: s.deter[:, 0], terminal=final_x1)
    assert obj.bootstraps and obj.returns(m.initial(1), actions).item() == 1.5 + 0.25 * 101
    assert Objective(m, rewards=[xcoord], terminal=final_x1).returns(m.initial(1), actions).item() == 102.0
    assert obj.bootstrap(m.from_observation(torch.tensor([[2.0, 3.0]]))).tolist() == [302.0]
    # H = 0: only the horizon part of the start; learned_reward() is a valid terminal term (-x_1)
    both = Objective(m, rewards=[], terminal=final_x1 - learned_reward())
    assert both.returns(m.from_observation(torch.tensor([[0.0, 2.0]])), torch.zeros(1, 0, 2)).tolist() == [202.0]
    assert not Objective(m).bootstraps and "terminal='final_x1'" in repr(Objective(m, terminal=final_x1))
    # a planner that ranks by `Objective.returns` follows a terminal-only objective
    line = AnalyticModel(lambda x, u: u, lambda x: x[:, 0], 1, [-1.0], [1.0], names={"x": slice(0, 1)})

    @reward(stage="terminal")
    def near(obs, ctx):
        return -((obs["x"] - ctx["goal"]) ** 2)

    plan = CEM(CEMConfig(horizon=2, iterations=6, candidates=200, elites=20)).plan(
        Objective(line, rewards=[], terminal=near, context={"goal": 0.3}), line.initial(1),
        generator=torch.Generator().manual_seed(0))
    assert abs(plan.actions[0, -1, 0].item() - 0.3) < 0.02


def test_misuse_of_value_rewards_and_terminal_raises_when_the_objective_is_built():
    from latentplan.planners import ValueFunction

    m = _integrator()
    with pytest.raises(TypeError, match=r"value= .*reward term 'xcoord'.*terminal="):
        Objective(m, value=xcoord)
    with pytest.raises(TypeError, match=r"value= .*reward term 'xcoord'"):
        Objective(m, value=xcoord.bind(m))
    with pytest.raises(TypeError, match=r"value= must be a callable state -> \[N\]"):
        Objective(m, value=lambda s, a: s.deter[:, 0])
    with pytest.raises(TypeError, match=r"value= must be a callable"):
        Objective(m, value=3.0)
    assert Objective(m, value=ValueFunction(2, (8,))).value is not None  # a critic is fine
    with pytest.raises(TypeError, match=r"rewards\[1\] 'final_x1' is a stage='terminal' term"):
        Objective(m, rewards=[xcoord, final_x1])
    with pytest.raises(TypeError, match=r"rewards\[0\] .*wrap fn\(obs, action, ctx\) with @lp.reward"):
        Objective(m, rewards=[lambda obs, action, ctx: obs["x0"]])
    with pytest.raises(TypeError, match=r"rewards\[0\] must be a reward term"):
        Objective(m, rewards=[1.0])
    with pytest.raises(TypeError, match=r"terminal= must be a reward term.*value="):
        Objective(m, terminal=lambda s: s.deter[:, 0])
    with pytest.raises(TypeError, match=r"terminal= 'xcoord \+ final_x1' has per-step parts \['xcoord'\]"):
        Objective(m, terminal=SumLike())
    with pytest.raises(TypeError, match="cannot add a stage='terminal' reward to a per-step one"):
        xcoord + final_x1


class SumLike(Reward):
    """A hand-built composite mixing stages (composition itself refuses to build one)."""

    name, differentiable = "xcoord + final_x1", True

    def leaves(self):
        yield xcoord
        yield final_x1


def test_float64_models_plan_in_float64_with_context_and_outputs_cast():
    A = torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=torch.float64)
    B = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    built = AnalyticModel.linear(A, B, torch.eye(2, dtype=torch.float64))  # float64 inferred
    widened = AnalyticModel.linear(A.numpy(), B.numpy(), np.eye(2)).double()  # numpy: float32, then .double()
    assert AnalyticModel.linear(A.numpy(), B.numpy(), np.eye(2)).initial(1).deter.dtype == torch.float32
    seen = {}

    @reward(stage="transition")
    def quad(prev, obs, action, ctx):
        seen.update(Q=ctx["Q"].dtype, w=ctx["w"].dtype)
        x = prev["obs"]
        return -((x @ ctx["Q"]) * x).sum(-1) * ctx["w"]

    @reward
    def in_float32(obs, action, ctx):
        return obs["obs"][:, 0].float()

    x0 = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    for m in (built, widened):
        assert m.initial(1).deter.dtype == torch.float64 == m.from_observation(x0.float()).deter.dtype
        obj = Objective(m, rewards=[quad, in_float32],
                        context={"Q": lp_shared(torch.eye(2)), "w": torch.tensor([0.25])})
        # x: (1, 1) -> (1.5, 1) -> (2, 1); prev costs 2, 3.25; x'_0: 1.5, 2
        ret = obj.returns(m.from_observation(x0), torch.zeros(1, 2, 1, dtype=torch.float64))
        assert ret.dtype == torch.float64 and seen == {"Q": torch.float64, "w": torch.float64}
        assert ret.item() == -(2 + 3.25) * 0.25 + 3.5
        plan = CEM(CEMConfig(horizon=2, iterations=2, candidates=20, elites=4)).plan(
            obj, m.from_observation(x0), generator=torch.Generator().manual_seed(0))
        assert plan.actions.dtype == plan.value.dtype == torch.float64
    # a float32 model reads float64 context values as float32
    m32 = _integrator()

    @reward
    def plus(obs, action, ctx):
        assert ctx["t"].dtype == torch.float32
        return obs["x0"] + ctx["t"][:, 0]

    assert _step(plus, m32, X, U, context={"t": np.array([[0.25]])}).dtype == torch.float32


def lp_shared(value):
    from latentplan.planners import shared

    return shared(value)


def test_shared_context_values_are_not_split_per_environment():
    import latentplan as lp

    assert isinstance(lp.shared(1), lp.Shared) and lp.shared(1).value == 1
    m = _integrator()
    shapes = {}

    @reward(inputs="latent")
    def quad(state, action, ctx):
        shapes.update({k: tuple(v.shape) for k, v in ctx.items()})
        x = state.deter
        return -((x @ ctx["Q"]) * x).sum(-1) + ctx["per_env"]

    Q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    for q in (lp.shared(Q), lp.shared(Q.numpy())):
        obj = Objective(m, rewards=[quad], context={"Q": q, "per_env": torch.tensor([10.0, 20.0])}, batch=2)
        r = obj.step(m.from_observation(torch.tensor(X)).expand(2), torch.zeros(4, 2))[1]
        # rows (1, 2), (1, 2), (3, -1), (3, -1): -(x0^2 + 2 x1^2) = -9, -11, plus 10, 20 per env
        assert r.tolist() == [1.0, 1.0, 9.0, 9.0]
        assert shapes == {"Q": (2, 2), "per_env": (4,)}
    # a 2 x 2 matrix without lp.shared is B = 2 rows of a per-env vector; a 3 x 3 one is an error
    with pytest.raises(ValueError, match=r"context\['Q'\].*B=2.*got 3.*lp.shared\(value\)"):
        Objective(m, rewards=[quad], context={"Q": torch.eye(3)}, batch=2)
    with pytest.raises(ValueError, match=r"context\['Q'\].*lp.shared\(value\)"):
        Objective(m, rewards=[quad], context={"Q": torch.eye(3)})


def test_ilqr_refuses_transition_terms_by_name():
    from latentplan.planners import ILQR

    m = _integrator()
    with pytest.raises(ValueError, match=r"ILQR: reward terms \['before_and_after'\] are stage='transition'"):
        ILQR().plan(Objective(m, rewards=[before_and_after]), m.initial(1))
