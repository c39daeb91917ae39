"""Episode ends inside the horizon (`Objective(continuation=...)`, issue 14 item 3) against exact answers:
a 1-D cliff world where the episode ends at a known step, brute-forced returns, the planners' choices,
MCTS's value equal to `Objective.returns`, and λ-return targets worked by hand."""

import itertools
import math

import numpy as np
import pytest
import torch

import latentplan as lp
from latentplan.planners import CEM, GradientPlanner, Objective, lambda_returns, policy_rollout
from latentplan.planners.capture import StaticObjective, objective_key
from latentplan.planners.fused_search import why_not_fused
from latentplan.planners.mcts import MCTS, MCTSConfig
from latentplan.planners.value import ImaginedRollout, ValueConfig, ValueLearner
from latentplan.worldmodels import AnalyticModel, LatentState

STEPS = torch.tensor([[-1.0], [0.0], [1.0]])


def _cliff(dtype=torch.float64) -> AnalyticModel:
    """p' = p + u, u in [-1, 1]. The model's own reward is unused (the objectives below give theirs)."""
    bound = torch.ones(1, dtype=dtype)
    return AnalyticModel(lambda x, u: x + u, lambda x: torch.zeros_like(x[:, 0]), 1, -bound, bound,
                         names={"p": slice(0, 1)})


def _r(p: float) -> float:
    """3 at and past the cliff edge (p <= -1/2), 1 on the far side (p >= 1/2), 0 in between (the margins
    let a continuous planner's average action that stops just short of a bound count)."""
    return 3.0 if p <= -0.5 else (1.0 if p >= 0.5 else 0.0)


@lp.reward
def cliff_reward(obs, action, ctx):
    p = obs["p"]
    return torch.where(p <= -0.5, 3.0, torch.where(p >= 0.5, 1.0, 0.0)).to(p.dtype)


@lp.continuation(differentiable=False)
def off_the_edge(obs, action, ctx):
    return obs["p"] > -0.5  # bool: the episode ends on arriving at p <= -1/2


def _brute(gamma: float, steps: int, cont=lambda p: 0.0 if p <= -0.5 else 1.0, p0: float = 0.0, value=lambda p: 0.0):
    """Every sequence over {-1, 0, 1}^steps: {sequence: sum_t gamma^t (prod_{k<t} c_k) r_t + gamma^H (prod c) V}."""
    out = {}
    for seq in itertools.product([-1, 0, 1], repeat=steps):
        p, ret, alive = p0, 0.0, 1.0
        for t, u in enumerate(seq):
            p += u
            ret += gamma**t * alive * _r(p)
            alive *= cont(p)
        out[seq] = ret + gamma**steps * alive * value(p)
    return out


def _start(model, p=0.0, b=1):
    return model.from_observation(torch.full((b, 1), p, dtype=model.action_low.dtype))


# ------------------------------------------------------------------------------------------ returns
def test_returns_stop_after_the_step_that_ends_the_episode():
    """Actions (-1, -1, 0), gamma 0.9: p = -1 (r 3, the episode ends there), then -2 and -2 (r 3 each, not
    counted), and the value 100 at the horizon not counted: 3. A soft continuation of 0.5 past the edge:
    3 + 0.9 * 0.5 * 3 + 0.81 * 0.25 * 3 + 0.729 * 0.125 * 100."""
    model = _cliff()
    value = lambda s: torch.full((s.batch,), 100.0, dtype=s.deter.dtype)  # noqa: E731
    acts = torch.tensor([[[-1.0], [-1.0], [0.0]]], dtype=torch.float64)
    hard = Objective(model, rewards=[cliff_reward], discount=0.9, value=value, continuation=off_the_edge)
    assert hard.returns(_start(model), acts).item() == pytest.approx(3.0, abs=1e-12)

    soft = Objective(model, rewards=[cliff_reward], discount=0.9, value=value,
                     continuation=lambda s, a: torch.where(s.deter[:, 0] <= -0.5, 0.5, 1.0).to(s.deter.dtype))
    want = 3 + 0.9 * 0.5 * 3 + 0.81 * 0.25 * 3 + 0.729 * 0.125 * 100
    assert soft.returns(_start(model), acts).item() == pytest.approx(want, abs=1e-12)

    # the reward of the step that ends the episode counts: arriving at the edge on the last step
    late = torch.tensor([[[0.0], [0.0], [-1.0]]], dtype=torch.float64)
    assert hard.returns(_start(model), late).item() == pytest.approx(0.81 * 3.0, abs=1e-12)
    # without a continuation the same objective chases the reward past the edge
    free = Objective(model, rewards=[cliff_reward], discount=0.9, value=value)
    assert free.returns(_start(model), acts).item() == pytest.approx(3 + 0.9 * 3 + 0.81 * 3 + 0.729 * 100, abs=1e-12)


def test_returns_match_brute_force_and_stepwise_transitions_over_every_sequence():
    gamma, h = 0.95, 4
    model = _cliff()
    obj = Objective(model, rewards=[cliff_reward], discount=gamma, continuation=off_the_edge)
    table = _brute(gamma, h)
    seqs = torch.tensor(list(table), dtype=torch.float64)[:, :, None]  # [81, 4, 1]
    state = _start(model, b=seqs.shape[0])
    got = obj.returns(state, seqs)
    torch.testing.assert_close(got, torch.tensor(list(table.values()), dtype=torch.float64), rtol=0, atol=1e-12)
    # H calls of `transition` give the same
    s, total, weight = state, torch.zeros(seqs.shape[0], dtype=torch.float64), torch.ones(seqs.shape[0], dtype=torch.float64)
    for t in range(h):
        s, r, c = obj.transition(s, seqs[:, t])
        assert c.dtype == torch.float64 and set(c.tolist()) <= {0.0, 1.0}
        total, weight = total + weight * r, weight * gamma * c
    torch.testing.assert_close(got, total, rtol=0, atol=1e-12)
    # the best: right, one more step there, back and over the edge at the last step, when nothing is lost
    assert max(table, key=table.get) == (1, 0, -1, -1)
    assert max(table.values()) == pytest.approx(1 + gamma + gamma**3 * 3)


def test_nothing_after_the_end_counts_not_even_nan():
    """A reward (and a value) that is NaN past the cliff does not reach the return when the episode ended."""
    model = _cliff()

    @lp.reward
    def nan_past_the_edge(obs, action, ctx):
        p = obs["p"]
        return torch.where(p < -1.5, torch.full_like(p, float("nan")), -p)

    nan_value = lambda s: torch.where(s.deter[:, 0] < -1.5, float("nan"), 0.0).to(s.deter.dtype)  # noqa: E731
    obj = Objective(model, rewards=[nan_past_the_edge], value=nan_value, continuation=off_the_edge)
    acts = torch.tensor([[[-1.0], [-1.0], [-1.0]]], dtype=torch.float64, requires_grad=True)
    ret = obj.returns(_start(model), acts)
    assert ret.item() == 1.0  # -p at p = -1
    (g,) = torch.autograd.grad(ret.sum(), acts)
    assert torch.isfinite(g).all()


def test_a_soft_continuation_is_differentiable_and_the_gradient_planner_finds_the_exact_optimum():
    """r(p') = p', c(p') = sigmoid(p'), H = 2, gamma = 1: R = u1 + sigmoid(u1) (u1 + u2), increasing in both
    actions, so the optimum in [-1, 1]^2 is (1, 1) with R = 1 + 2 sigmoid(1); the gradient of `returns` is
    dR/du1 = 1 + sigmoid(u1) + sigmoid'(u1) (u1 + u2), dR/du2 = sigmoid(u1)."""
    model = _cliff()

    @lp.reward
    def position(obs, action, ctx):
        return obs["p"]

    @lp.continuation
    def soft(obs, action, ctx):
        return torch.sigmoid(obs["p"])

    obj = Objective(model, rewards=[position], continuation=soft)
    u = torch.tensor([[[0.3], [-0.4]]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(obj.returns(_start(model), u).sum(), u)
    s = 1 / (1 + math.exp(-0.3))
    torch.testing.assert_close(g[0, :, 0], torch.tensor([1 + s + s * (1 - s) * (0.3 - 0.4), s], dtype=torch.float64))
    plan = GradientPlanner(optimizer="adam", horizon=2, iterations=60, restarts=2, lr=0.1, squash="clip").plan(
        obj, _start(model), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(plan.actions[0, :, 0], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-3)
    assert plan.value.item() == pytest.approx(1 + 2 / (1 + math.exp(-1)), abs=1e-3)


# ------------------------------------------------------------------------------------------ validation
def test_misuse_is_caught_when_the_objective_is_built():
    model = _cliff()

    @lp.reward(stage="terminal")
    def final(obs, ctx):
        return obs["p"]

    with pytest.raises(TypeError, match="continuation= 'cliff_reward' is a reward term .*@lp.continuation"):
        Objective(model, continuation=cliff_reward)
    with pytest.raises(TypeError, match="continuation= must be"):
        Objective(model, continuation=0.9)
    with pytest.raises(TypeError, match=r"cannot be called as \(next_state, action\)"):
        Objective(model, continuation=lambda obs, action, ctx: obs["p"] > 0)
    with pytest.raises(TypeError, match=r"rewards\[0\] 'off_the_edge' is a continuation term"):
        Objective(model, rewards=[off_the_edge])
    with pytest.raises(TypeError, match="terminal= 'off_the_edge' is a continuation term"):
        Objective(model, terminal=off_the_edge)
    with pytest.raises(TypeError, match="cannot compose the continuation term 'off_the_edge'"):
        0.5 * off_the_edge
    with pytest.raises(TypeError, match="cannot compose the continuation term"):
        cliff_reward + off_the_edge
    with pytest.raises(TypeError, match="cannot compose"):
        -off_the_edge
    with pytest.raises(ValueError, match="stage must be one of"):
        lp.reward(lambda o, a, c: o, stage="done")
    ok = Objective(model, rewards=[cliff_reward], continuation=off_the_edge, terminal=final)
    assert ok.terminates and not Objective(model).terminates
    assert "continuation='off_the_edge'" in repr(ok)
    assert not ok.differentiable  # marked differentiable=False: gradient planners refuse it


def test_bad_outputs_are_caught_at_call_naming_the_term():
    model = _cliff()
    acts = torch.zeros(2, 3, 1, dtype=torch.float64)
    state = _start(model, b=2)

    @lp.continuation
    def too_big(obs, action, ctx):
        return obs["p"] + 1.5

    @lp.continuation
    def column(obs, action, ctx):
        return (obs["p"] > 0)[:, None]

    @lp.continuation
    def counts(obs, action, ctx):
        return (obs["p"] > 0).long()

    with pytest.raises(ValueError, match=r"continuation 'too_big' must return .* in \[0, 1\].*values in \[1.5, 1.5\]"):
        Objective(model, continuation=too_big).returns(state, acts)
    with pytest.raises(ValueError, match=r"continuation 'column' .*shape \(6, 1\)"):
        Objective(model, continuation=column).returns(state, acts)
    with pytest.raises(TypeError, match="continuation 'counts' .*dtype torch.int64"):
        Objective(model, continuation=counts).returns(state, acts)

    def negative(s, a):
        return -torch.ones(s.batch, dtype=s.deter.dtype)

    with pytest.raises(ValueError, match=r"continuation '.*negative' .*values in \[-1, -1\]"):
        Objective(model, continuation=negative).transition(state, acts[:, 0])
    # a plain callable returning bool is accepted and cast to the state's dtype
    c = Objective(model, continuation=lambda s, a: s.deter[:, 0] > -0.5).continues(state, acts[:, 0])
    assert c.dtype == torch.float64 and c.tolist() == [1.0, 1.0]


# ------------------------------------------------------------------------------------------ planners
def _plans(obj, model, planner):
    return planner.plan(obj, _start(model), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("terminates", [True, False])
def test_planners_walk_away_from_the_cliff_only_when_it_ends_the_episode(terminates):
    """H = 4, gamma = 1. With the continuation the exact optimum (brute force) starts right: (1, 0, -1, -1),
    return 1 + 1 + 0 + 3 = 5 (over the edge at once: 3, then nothing); without it, over the edge at once
    and stay there: 12."""
    h = 4
    model = _cliff()
    table = _brute(1.0, h, cont=(lambda p: 0.0 if p <= -0.5 else 1.0) if terminates else (lambda p: 1.0))
    best = max(table.values())
    assert best == (5.0 if terminates else 12.0)
    first = 1.0 if terminates else -1.0
    assert {seq[0] for seq, v in table.items() if v == best} == {first}
    obj = Objective(model, rewards=[cliff_reward], continuation=off_the_edge if terminates else None)

    mcts = _plans(obj, model, MCTS(MCTSConfig(simulations=200, horizon=h), actions=STEPS))
    assert mcts.first_action.item() == first and mcts.value.item() == best
    # every sampling planner at its defaults (continuous actions) reaches the exact optimum, on the right side
    for planner in (CEM(horizon=h), lp.MPPI(horizon=h), MCTS(horizon=h)):
        for seed in (0, 1):
            plan = planner.plan(obj, _start(model), generator=torch.Generator().manual_seed(seed))
            assert math.copysign(1.0, plan.first_action.item()) == first, (type(planner).__name__, seed)
            assert plan.value.item() == best, (type(planner).__name__, seed, plan.value.item())
            torch.testing.assert_close(plan.value, obj.returns(_start(model), plan.actions))


def test_cem_with_a_continuation_plans_eagerly_and_the_fused_search_refuses_it():
    model = lp.RSSMWorldModel(lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16, obs_shape=(3,), action_dim=1)).eval()

    @lp.continuation(inputs="latent")
    def alive(state, action, ctx):
        return torch.sigmoid(state.deter[:, 0])

    plain, ends = Objective(model), Objective(model, continuation=alive)
    cfg = lp.CEMConfig(horizon=3, iterations=2, candidates=20, elites=4)
    assert why_not_fused(cfg, plain, None) is None
    assert "no continuation" in why_not_fused(cfg, ends, None)
    with pytest.raises(ValueError, match="no continuation"):
        CEM(cfg, compile="fused").plan(ends, model.initial(1))
    plan = CEM(cfg).plan(ends, model.initial(1), generator=torch.Generator().manual_seed(0))  # auto: eager on the CPU
    assert plan.info["compile"] == "eager"
    # the capture key tells the objectives apart, and the static copy keeps the continuation
    assert objective_key(plain) != objective_key(ends)
    copy = StaticObjective(ends, torch.device("cpu")).objective
    assert copy.continuation.term is alive and objective_key(copy) == objective_key(ends)
    static = CEM(cfg, compile="static").plan(ends, model.initial(1), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(static.actions, plan.actions)


def test_ilqr_and_gradient_planners_refuse_what_they_cannot_plan():
    model = _cliff()
    obj = Objective(model, rewards=[cliff_reward], continuation=off_the_edge)
    with pytest.raises(ValueError, match="continuation 'off_the_edge' is marked differentiable=False"):
        GradientPlanner(horizon=3).plan(obj, _start(model))
    smooth = Objective(model, rewards=[cliff_reward], continuation=lambda s, a: torch.sigmoid(s.deter[:, 0]))
    with pytest.raises(ValueError, match="ILQR: the objective has a continuation"):
        lp.ILQR(horizon=3).plan(smooth, _start(model))


def test_policy_rollouts_return_what_the_objective_does():
    model = _cliff()

    class Left:
        def act(self, state, *, generator=None, deterministic=True):
            return -torch.ones(state.batch, 1, dtype=state.deter.dtype)

    value = lambda s: torch.full((s.batch,), 10.0, dtype=s.deter.dtype)  # noqa: E731
    obj = Objective(model, rewards=[cliff_reward], discount=0.9, value=value, continuation=off_the_edge)
    acts, ret, evals = policy_rollout(Left(), obj, _start(model, b=2), 3, with_returns=True)
    assert ret.tolist() == [3.0, 3.0] and evals == 6  # over the edge at once: 3, nothing after
    torch.testing.assert_close(ret, obj.returns(_start(model, b=2), acts))
    plan = lp.PolicyPlanner(Left(), horizon=3).plan(obj, _start(model))
    assert plan.value.item() == 3.0


# ------------------------------------------------------------------------------------------ value targets
def test_lambda_returns_with_a_continuation_by_hand():
    """T = 3, r = (1, 2, 3), V(s_1..s_3) = (10, 20, 30), c = (1, 0, 1), gamma 0.9, lambda 0.5:
    G_2 = 3 + 0.9 * 30 = 30; G_1 = 2 (the episode ends after this step: its reward alone);
    G_0 = 1 + 0.9 * (0.5 * 10 + 0.5 * 2) = 6.4."""
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.0], [10.0], [20.0], [30.0]])
    c = torch.tensor([[1.0], [0.0], [1.0]])
    g = lambda_returns(r, v, 0.9, 0.5, c)
    torch.testing.assert_close(g[:, 0], torch.tensor([6.4, 2.0, 30.0]))
    torch.testing.assert_close(lambda_returns(r, v, 0.9, 0.5), lambda_returns(r, v, 0.9, 0.5, torch.ones_like(c)))
    # a NaN reward after the end does not reach the targets before it
    r_nan = torch.tensor([[1.0], [2.0], [float("nan")]])
    assert torch.isfinite(lambda_returns(r_nan, v, 0.9, 0.5, torch.tensor([[1.0], [0.0], [1.0]]))[:2]).all()
    rollout = ImaginedRollout(torch.zeros(4, 1, 1), r, torch.zeros(3, 1, 1), continues=c)
    assert rollout.weights()[:, 0].tolist() == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="continues must be"):
        lambda_returns(r, v, 0.9, 0.5, c[:2])


def test_value_learner_imagines_continuations_and_ignores_what_follows_an_end():
    model = _cliff(torch.float32)

    class Left:
        def act(self, state, *, generator=None, deterministic=True):
            return -torch.ones(state.batch, 1)

    @lp.reward
    def nan_past(obs, action, ctx):
        p = obs["p"]
        return torch.where(p < -1.5, torch.full_like(p, float("nan")), torch.ones_like(p))

    obj = Objective(model, rewards=[nan_past], continuation=off_the_edge)
    learner = ValueLearner(ValueConfig(horizon=3, batch=4, td_lambda=1.0, discount=0.9, normalize=False), feature_dim=1)
    start = model.from_observation(torch.tensor([[0.0], [0.0], [3.0], [5.0]]))
    rollout = learner.imagine(model, start, Left(), objective=obj)
    # p: 0 -> -1 (ends) ; 3 -> 2 -> 1 -> 0 ; 5 -> 4 -> 3 -> 2
    assert rollout.continues[:, 0].tolist() == [0.0, 0.0, 0.0] and rollout.continues[:, 2].tolist() == [1.0, 1.0, 1.0]
    assert rollout.weights()[:, 0].tolist() == [1.0, 0.0, 0.0]
    info = learner.learn(rollout)
    assert info["nonfinite"] == 0.0 and math.isfinite(info["value_loss"])
    # the target of s_0 in the first rows is the reward into the terminal state alone: 1
    v = learner.target(rollout.features.reshape(-1, 1)).reshape(4, 4)
    g = lambda_returns(rollout.rewards, v, 0.9, 1.0, rollout.continues)
    assert g[0, 0].item() == pytest.approx(1.0) and g[0, 1].item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ MCTS
def test_mcts_never_expands_below_an_episode_end():
    """Every node at p <= -1/2 is absorbing: with the continuation the tree holds no child of one."""
    model = _cliff()
    obj = Objective(model, rewards=[cliff_reward], continuation=off_the_edge)
    plan = MCTS(MCTSConfig(simulations=60, horizon=4, reuse=False), actions=STEPS).plan(obj, _start(model))
    tree = plan.info["mcts_tree"]
    used = np.arange(tree.first_child.shape[1]) < tree.size[0]
    ended = used & (tree.disc[0] == 0.0)
    assert ended.any() and (tree.first_child[0][ended] == -1).all()
    # the p = -1 child of the root: Q is its reward alone
    root = tree.first_child[0, 0] + np.arange(3)
    assert plan.info["root_q"][0, 0].item() == 3.0
    assert tree.disc[0, root].tolist() == [0.0, 1.0, 1.0]


def test_mcts_spends_no_rollout_steps_past_an_episode_end():
    """One simulation, H = 4, actions {-1, 0, 1}: the root's 3 children, each valued by two default policies
    (the action repeated; the highest-prior action, -1 on uniform ties) to the horizon, then the plan's
    completion (both policies, 3 steps each). Without the continuation: 3 + 3 * (3 + 3) + 6 = 27 steps.
    With it the rollouts stop where the episode ends: the child at p = -1 none, the child at p = 0
    3 + 1 (the -1 policy ends at once), the child at p = 1 3 + 2; 3 + 0 + 4 + 5 + 6 = 18."""
    model = _cliff()
    evals = {}
    for end in (off_the_edge, None):
        obj = Objective(model, rewards=[cliff_reward], continuation=end)
        plan = MCTS(MCTSConfig(simulations=1, horizon=4), actions=STEPS).plan(obj, _start(model))
        evals[end is not None] = plan.info["model_evals"]
        torch.testing.assert_close(plan.value, obj.returns(_start(model), plan.actions))
    assert evals == {True: 18, False: 27}


def test_mcts_reuses_a_subtree_only_under_the_same_continuation():
    model = _cliff()
    mcts = MCTS(MCTSConfig(simulations=30, horizon=4), actions=STEPS)
    ends = Objective(model, rewards=[cliff_reward], continuation=off_the_edge)
    first = mcts.plan(ends, _start(model))
    nxt = model.imagine_step(_start(model), first.actions[:, 0])
    same = mcts.plan(Objective(model, rewards=[cliff_reward], continuation=off_the_edge), nxt, warm_start=first.shift())
    other = mcts.plan(Objective(model, rewards=[cliff_reward]), nxt, warm_start=first.shift())
    assert (same.info["reused"], other.info["reused"]) == (1, 0)
    assert same.info["mcts_tree"].disc[0, 0] == 1.0  # the new root's own edge is not part of any Q


@pytest.mark.slow
def test_torch_compile_and_static_cem_plan_a_continuation_as_eager():
    """The range check reads nothing back while torch.compile traces; the compiled and static searches give
    the eager plan (bool flags of the latent, an RSSM)."""
    torch.manual_seed(0)
    model = lp.RSSMWorldModel(lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16, obs_shape=(3,), action_dim=2)).eval()
    state = LatentState(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), torch.zeros(3, 4))

    @lp.continuation(inputs="latent", differentiable=False)
    def alive(s, action, ctx):
        return s.deter[:, 0] > -0.5

    base = dict(horizon=4, iterations=2, candidates=20, elites=4)
    plan = {mode: CEM(compile=mode, **base).plan(Objective(model, continuation=alive), state,
                                                 generator=torch.Generator().manual_seed(1))
            for mode in ("eager", "static", "torch_compile")}
    assert torch.equal(plan["static"].actions, plan["eager"].actions)
    torch.testing.assert_close(plan["torch_compile"].actions, plan["eager"].actions, atol=1e-4, rtol=1e-4)
    assert plan["torch_compile"].info["compile"] == "torch_compile"
