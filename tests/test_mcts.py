"""MCTS against exact answers: bandits, a deceptive deterministic chain, bootstrapping with the
true value, and a discretised linear-quadratic problem solved by exhaustive search."""

import itertools
import time

import numpy as np
import pytest
import torch

from latentplan.planners import Objective, Plan, Planner
from latentplan.planners.mcts import MCTS, MCTSConfig
from latentplan.worldmodels import AnalyticModel, LatentState

ARMS = torch.tensor([[-1.0], [-0.5], [0.0], [0.5], [1.0]])


def _bandit(targets):
    """x' = u from x = the environment's target t: reward -(u - t)^2 of the arrival state.
    State [t, u]: t is carried along, u is the last action."""
    model = AnalyticModel(
        lambda x, u: torch.cat([x[:, :1], u], 1), lambda x: -((x[:, 1] - x[:, 0]) ** 2), 2, [-1.0], [1.0]
    )
    t = torch.as_tensor(targets, dtype=torch.float32)[:, None]
    return model, model.from_observation(torch.cat([t, torch.zeros_like(t)], 1))


def test_discrete_bandit_picks_the_best_arm_per_environment_with_exact_values():
    targets = [0.4, -0.9, 0.1]
    model, state = _bandit(targets)
    plan = MCTS(MCTSConfig(simulations=10, horizon=1), actions=ARMS).plan(Objective(model), state)
    assert isinstance(plan, Plan) and plan.actions.shape == (3, 1, 1)
    arms = ARMS[:, 0].numpy()
    for b, t in enumerate(targets):
        rewards = -((arms - t) ** 2)
        assert plan.first_action[b, 0].item() == arms[rewards.argmax()]
        # one expansion evaluates every arm exactly; the root value is the best arm's reward
        assert plan.value[b].item() == pytest.approx(rewards.max(), abs=1e-6)
        torch.testing.assert_close(plan.info["root_q"][b], torch.tensor(rewards, dtype=torch.float32))
        # Gumbel root: the improved policy softmax(log prior + sigma(q)) peaks on the best arm
        assert plan.info["root_policy"][b].argmax().item() == rewards.argmax()
    # only the root is expanded (depth 1): K model evaluations per environment
    assert plan.info["model_evals"] == 3 * 5
    assert plan.info["root_visits"].sum().item() == 3 * (10 - 1)
    torch.testing.assert_close(plan.info["root_policy"].sum(1), torch.ones(3))
    assert plan.info["root_actions"].shape == (3, 5, 1)


def test_sampled_bandit_chooses_the_best_of_its_samples():
    model, state = _bandit([0.3, -0.6])
    mcts = MCTS(MCTSConfig(simulations=30, children=8, horizon=1, proposal_std=1.0))
    plan = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(0))
    acts = plan.info["root_actions"][:, :, 0]  # [B, K]
    assert acts.shape == (2, 8)
    assert (acts.abs() <= 1.0).all()
    assert (acts[:, 0] == 0).all()  # include_mean: child 0 is the proposal's mean (no warm start: 0)
    true_r = -((acts - torch.tensor([[0.3], [-0.6]])) ** 2)
    best = true_r.argmax(1)
    torch.testing.assert_close(plan.first_action[:, 0], acts[torch.arange(2), best])
    torch.testing.assert_close(plan.value, true_r.max(1).values)


R_CHAIN = torch.tensor([0.2, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0])  # reward of arriving at p = -3 .. 3


def _chain():
    """A deceptive deterministic chain: state [p, t], p' = p + u with u in {-1, 0, 1}, t' = t + 1,
    reward R(p'): a lure of 1 per step at p = -1, 4 at p = 3 (three steps away)."""
    return AnalyticModel(
        lambda x, u: torch.stack([x[:, 0] + u[:, 0], x[:, 1] + 1], 1),
        lambda x: R_CHAIN[(x[:, 0].round().long() + 3).clamp(0, 6)], 2, [-1.0], [1.0],
    )


def _chain_optimum(gamma, steps, p0=0):
    """Brute force over all 3^steps sequences: the best discounted return and its first action."""
    best, first = -np.inf, None
    for seq in itertools.product([-1, 0, 1], repeat=steps):
        p, ret = p0, 0.0
        for t, u in enumerate(seq):
            p += u
            ret += gamma**t * float(R_CHAIN[p + 3])
        if ret > best:
            best, first = ret, seq[0]
    return best, first


@pytest.mark.parametrize("backup", ["mean", "max"])
def test_chain_optimal_first_action_and_root_value(backup):
    gamma = 0.9
    v_star, a_star = _chain_optimum(gamma, 3)
    assert (v_star, a_star) == (pytest.approx(3.24), 1)  # the greedy first action (-1) is wrong
    model = _chain()
    acts = torch.tensor([[-1.0], [0.0], [1.0]])
    obj = Objective(model, discount=gamma)
    plan = MCTS(MCTSConfig(simulations=300, horizon=3, backup=backup), actions=acts).plan(obj, model.initial(1))
    assert plan.first_action.item() == a_star
    assert plan.actions[0, :, 0].tolist() == [1.0, 1.0, 1.0]
    if backup == "max":  # the Bellman backup is exact once the optimal path is in the tree
        assert plan.value.item() == pytest.approx(v_star, abs=1e-5)
    # the averaged root value converges to the true value as simulations grow
    errors = []
    for s in (300, 1000, 3000):
        p = MCTS(MCTSConfig(simulations=s, horizon=3, backup=backup), actions=acts).plan(obj, model.initial(1))
        errors.append(abs(p.value.item() - v_star))
    assert errors[2] <= errors[1] <= errors[0]
    assert errors[2] < 0.05 * v_star


def test_value_at_the_leaves_makes_a_one_step_search_optimal():
    """With the true optimal value-to-go V*(p, t) at the leaves, depth 1 is enough: the root value
    is exactly V*(0, 0) and the first action is optimal. V* by brute force per state."""
    gamma, steps = 0.9, 3
    table = {}
    for t in range(steps + 1):
        for p in range(-t, t + 1):
            table[(p, t)] = _chain_optimum(gamma, steps - t, p)[0] if t < steps else 0.0

    def value(state: LatentState) -> torch.Tensor:
        x = state.deter
        return torch.tensor([table[(int(round(p)), int(round(t)))] for p, t in x.tolist()])

    model = _chain()
    obj = Objective(model, discount=gamma, value=value)
    plan = MCTS(MCTSConfig(simulations=4, horizon=1), actions=torch.tensor([[-1.0], [0.0], [1.0]])).plan(obj, model.initial(1))
    assert plan.first_action.item() == 1.0
    assert plan.value.item() == pytest.approx(table[(0, 0)], abs=1e-5)
    assert plan.info["model_evals"] == 3


def _lq():
    A = np.array([[1.0, 0.1], [0.0, 1.0]])
    B = np.array([[0.005], [0.1]])
    return A, B, np.eye(2), np.array([[0.1]])


def test_discretised_lq_matches_exhaustive_search():
    A, B, Q, R = _lq()
    levels = np.linspace(-1.0, 1.0, 5)
    x0s = np.array([[1.0, 0.5], [-0.3, 0.8]])

    def exhaustive(x0):
        best = (-np.inf, None)
        for seq in itertools.product(levels, repeat=3):
            x, ret = x0.copy(), 0.0
            for u in seq:
                x = A @ x + B[:, 0] * u
                ret -= x @ Q @ x + R[0, 0] * u * u
            best = max(best, (ret, seq), key=lambda z: z[0])
        return best

    model = AnalyticModel.linear(A, B, Q, action_bound=1.0)
    obj = Objective(model, rewards=[lambda s, a: model.reward(s), AnalyticModel.quadratic_action_cost(R)])
    state = model.from_observation(torch.tensor(x0s, dtype=torch.float32))
    acts = torch.tensor(levels, dtype=torch.float32)[:, None]
    # the Bellman ("max") backup is exact after 100 simulations; the average ("mean") approaches
    # the optimum slowly (7 % above it after 1000 here, 3.5 % after 10,000)
    for backup, sims, tol in (("max", 100, 1e-4), ("mean", 1000, 0.08)):
        plan = MCTS(MCTSConfig(simulations=sims, horizon=3, backup=backup), actions=acts).plan(obj, state)
        for b, x0 in enumerate(x0s):
            ret, seq = exhaustive(x0)
            assert plan.first_action[b, 0].item() == pytest.approx(seq[0]), backup
            assert abs(plan.value[b].item() - ret) <= tol * abs(ret), (backup, plan.value[b].item(), ret)


def test_batched_search_equals_separate_searches():
    model, state = _bandit([0.4, -0.9, 0.1])
    mcts = MCTS(MCTSConfig(simulations=20, horizon=2), actions=ARMS)
    joint = mcts.plan(Objective(model), state)
    for b in range(3):
        alone = mcts.plan(Objective(model), state.index(b))
        torch.testing.assert_close(joint.actions[b], alone.actions[0])
        torch.testing.assert_close(joint.info["root_visits"][b], alone.info["root_visits"][0])
        torch.testing.assert_close(joint.value[b], alone.value[0])


class _StandInPolicy:
    """A stand-in `Policy`: deterministic action 0.25 + 0.5 x (out of bounds for large x, to test
    clipping), samples spread around it by +-0.1."""

    def act(self, state, *, generator=None, deterministic=False):
        mode = 0.25 + 0.5 * state.deter[:, :1]
        if deterministic:
            return mode
        return mode + 0.1 * (2 * torch.rand(mode.shape, generator=generator) - 1)


def test_policy_proposal_and_bounds():
    model = AnalyticModel(lambda x, u: x + u, lambda x: -(x[:, 0] ** 2), 1, [-1.0], [1.0])
    state = model.from_observation(torch.tensor([[0.0], [3.0]]))
    mcts = MCTS(MCTSConfig(simulations=10, children=6, horizon=2), proposal=_StandInPolicy())
    assert "policy" in repr(mcts)
    plan = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(0))
    roots = plan.info["root_actions"][:, :, 0]
    assert roots[0, 0].item() == pytest.approx(0.25)  # the deterministic action is child 0
    assert ((roots[0] - 0.25).abs() <= 0.1 + 1e-6).all()  # the others are the policy's samples
    assert (roots[1] == 1.0).all()  # 0.25 + 1.5 +- 0.1 clipped into the bound
    assert (plan.actions.abs() <= 1.0).all()


def test_warm_start_centres_the_proposal_and_is_checked():
    model, state = _bandit([0.5])
    mcts = MCTS(MCTSConfig(simulations=5, children=4, horizon=2, proposal_std=0.01))
    warm = Plan(torch.tensor([[[0.5], [-0.3]]]), torch.zeros(1))
    plan = mcts.plan(Objective(model), state, warm_start=warm, generator=torch.Generator().manual_seed(0))
    assert plan.info["root_actions"][0, 0, 0].item() == 0.5
    assert (plan.info["root_actions"][0, :, 0] - 0.5).abs().max() < 0.05
    with pytest.raises(ValueError, match=r"warm_start.actions must be \[B=1, H', A=1\]"):
        mcts.plan(Objective(model), state, warm_start=Plan(torch.zeros(2, 2, 1), torch.zeros(2)))


def test_nonfinite_returns_rank_last_and_are_counted():
    # NaN reward for every positive action: those children must never be chosen
    def reward(x):
        r = -((x[:, 1] - 0.5) ** 2)
        return torch.where(x[:, 1] > 0, torch.full_like(r, float("nan")), r)

    model = AnalyticModel(lambda x, u: torch.cat([x[:, :1], u], 1), reward, 2, [-1.0], [1.0])
    plan = MCTS(MCTSConfig(simulations=20, horizon=2), actions=ARMS).plan(Objective(model), model.initial(1))
    assert plan.info["nonfinite"] > 0
    assert plan.first_action.item() == 0.0  # the best finite arm
    assert (plan.actions <= 0).all()
    assert torch.isfinite(plan.value).all()
    assert plan.info["root_visits"][0, 3:].sum().item() == 0


def test_anytime_deadline_runs_one_simulation_and_counts_evals():
    model, state = _bandit([0.4, -0.9])
    mcts = MCTS(MCTSConfig(simulations=50, children=8, horizon=3, leaf="value", root="puct"))
    plan = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(0), deadline=time.perf_counter())
    # one simulation (the roots' K children) plus the plan's completion from depth 1 to 3 (two policies)
    assert plan.info["simulations"] == 1 and plan.info["model_evals"] == 2 * 8 + 2 * 2 * 2
    # no child visited yet: the distillation target is one-hot on the chosen (best-Q) action
    assert plan.info["root_policy"].sum(1).tolist() == [1.0, 1.0]
    assert (plan.info["root_policy"].max(1).values == 1.0).all()
    full = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(0))
    # a simulation that ends at a leaf of the depth limit expands nothing and costs nothing
    assert full.info["simulations"] == 50 and full.info["model_evals"] < 2 * 8 * 50
    deep = MCTS(MCTSConfig(simulations=50, children=8, horizon=60, leaf="value"))
    deep_plan = deep.plan(Objective(model), state, generator=torch.Generator().manual_seed(0))
    assert deep_plan.info["model_evals"] == 2 * 8 * 50 + 2 * 2 * (60 - deep_plan.info["max_depth"])
    assert deep.config.model_evals == 400 + 2 * 60
    # with rollouts at the leaves, a child at depth d costs 1 + 2 (H - d) evaluations (two default policies)
    roll = MCTS(MCTSConfig(simulations=1, children=8, horizon=3)).plan(Objective(model), state)
    assert roll.info["model_evals"] == 2 * 8 * (1 + 2 * 2) + 2 * 2 * 2
    # an evaluation budget stops the search before it is passed
    capped = MCTS(MCTSConfig(simulations=1000, children=8, horizon=3, evals=200)).plan(Objective(model), state)
    assert 200 - 2 * 8 * 3 - 2 * 3 <= capped.info["model_evals"] / 2 <= 200


def test_reproducible_from_a_seed_and_a_planner():
    model, state = _bandit([0.4])
    mcts = MCTS(simulations=20, children=4, horizon=2)
    assert isinstance(mcts, Planner)
    p1 = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(3))
    p2 = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(3))
    p3 = mcts.plan(Objective(model), state, generator=torch.Generator().manual_seed(4))
    assert torch.equal(p1.actions, p2.actions) and torch.equal(p1.info["root_visits"], p2.info["root_visits"])
    assert not torch.equal(p1.info["root_actions"], p3.info["root_actions"])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="simulations"):
        MCTSConfig(simulations=0)
    with pytest.raises(ValueError, match="backup"):
        MCTSConfig(backup="min")
    with pytest.raises(ValueError, match="proposal_std"):
        MCTSConfig(proposal_std=0.0)
    with pytest.raises(ValueError, match=r"\[M, A\]"):
        MCTS(actions=torch.zeros(3))
    with pytest.raises(ValueError, match="mask"):
        MCTS(mask=lambda s: torch.ones(s.batch, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        MCTS(actions=ARMS, mask=3)
    with pytest.raises(ValueError, match="root"):
        MCTSConfig(root="uct")
    with pytest.raises(ValueError, match="leaf"):
        MCTSConfig(leaf="random")
    with pytest.raises(ValueError, match="gumbel_scale"):
        MCTSConfig(gumbel_scale=-1.0)
    with pytest.raises(TypeError, match="act"):
        MCTS(proposal=object())
    model, state = _bandit([0.0])
    with pytest.raises(ValueError, match="outside"):
        MCTS(actions=torch.tensor([[2.0]])).plan(Objective(model), state)


# ----------------------------------------------------------------------------- issue 14: defaults that search well
from latentplan.families import lq_family, trap_family  # noqa: E402
from latentplan.planners import CEM  # noqa: E402
from latentplan.planners.mcts_tree import halving_schedule  # noqa: E402


def test_halving_schedule_is_sequential_halving():
    # m = 4, S = 9: two phases; 1 visit each to all 4, then 2 more each to the best 2 (then the rest)
    assert halving_schedule(4, 9).tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3]
    assert halving_schedule(1, 4).tolist() == [0, 1, 2, 3]
    assert len(halving_schedule(16, 1000)) == 1000


def test_gumbel_root_halves_the_considered_arms():
    """4 arms, 9 simulations (one expands the root, 8 are picks): every arm gets one visit, then the two
    best arms two more each, as `halving_schedule(4, 9)` prescribes."""
    model, state = _bandit([0.6])
    arms = torch.tensor([[-1.0], [0.0], [0.5], [1.0]])  # rewards -2.56, -0.36, -0.01, -0.16
    plan = MCTS(MCTSConfig(simulations=9, horizon=1), actions=arms).plan(Objective(model), state)
    assert plan.info["root_visits"][0].tolist() == [1, 1, 3, 3]
    assert plan.first_action.item() == 0.5


def _soft_end(s, a):
    """A continuation in (0, 1): the episode goes on with probability sigmoid(3 - |x|^2)."""
    return torch.sigmoid(3.0 - (s.deter**2).sum(-1))


def _hard_end(s, a):
    """Bool flags: the episode ends on arriving where |x_0| > 0.6 (some paths from these starts do)."""
    return s.deter[:, 0].abs() <= 0.6


@pytest.mark.parametrize("end", [None, _soft_end, _hard_end], ids=["no-end", "soft-end", "hard-end"])
@pytest.mark.parametrize("kw", [dict(), dict(leaf="value"), dict(backup="mean", root="puct"), dict(children=3)])
def test_plan_value_is_the_objectives_return_of_the_plan_with_bootstrap(kw, end):
    """`plan.value == objective.returns(state, plan.actions)` to float rounding, with a discount, a
    value and a terminal term (the bootstrap), whatever the depth the tree reached; with a continuation
    (soft, or bool flags that end some paths) the tree's edges carry gamma * c and the same holds."""
    prob = lq_family(2, seed=3)[0]
    model, obj, start = prob.build(torch.float64)
    m = torch.as_tensor(prob.Qf - prob.Q)
    obj = Objective(model, rewards=obj.rewards, discount=0.95, value=lambda s: -((s.deter @ m) * s.deter).sum(-1) + 1.0,
                    continuation=end)
    state = model.from_observation(torch.as_tensor(np.stack([prob.x0, -0.5 * prob.x0])))
    plan = MCTS(MCTSConfig(horizon=prob.horizon, simulations=40, **kw)).plan(obj, state, generator=torch.Generator().manual_seed(0))
    assert plan.actions.dtype == torch.float64 and plan.info["max_depth"] < prob.horizon  # the plan was completed
    torch.testing.assert_close(plan.value, obj.returns(state, plan.actions), rtol=1e-10, atol=1e-10)
    tree = plan.info["mcts_tree"]
    used = np.arange(tree.disc.shape[1])[None] < tree.size[:, None]
    if end is _hard_end:  # some edges end the episode, and nothing was expanded below them
        assert (used & (tree.disc == 0)).any() and (tree.first_child[used & (tree.disc == 0)] == -1).all()
    elif end is None:
        assert (tree.disc[used & (tree.parent >= 0)] == 0.95).all()


def test_plan_value_includes_a_terminal_term_in_the_discrete_mode():
    model = _chain()

    @__import__("latentplan").reward(stage="terminal")
    def final(obs, ctx):
        return 0.5 * obs["obs"][:, 0]

    obj = Objective(model, discount=0.9, terminal=final)
    plan = MCTS(MCTSConfig(simulations=30, horizon=5), actions=torch.tensor([[-1.0], [0.0], [1.0]])).plan(obj, model.initial(2))
    torch.testing.assert_close(plan.value, obj.returns(model.initial(2), plan.actions), rtol=1e-6, atol=1e-6)


def test_trap_family_defaults_find_the_delayed_prize_where_cem_does_not():
    """A fast subset of the trap family (benchmarks/planner_families.py runs 20 x 3: MCTS 100 %, CEM at
    equal evaluations 0 %, MCTS at its former defaults 0 %): MCTS at its defaults moves toward the prize
    first on every instance; CEM at the same model evaluations mostly takes the lure."""
    family = trap_family(6, seed=1)
    mcts_ok, cem_ok = [], []
    for prob in family:
        model, obj, start = prob.build()
        g = torch.Generator().manual_seed(0)
        plan = MCTS(horizon=prob.horizon).plan(obj, start, generator=g)
        mcts_ok.append(prob.first_action_ok(plan.first_action.item()))
        j = plan.info["model_evals"] // (10 * prob.horizon)
        cem = CEM(horizon=prob.horizon, iterations=10, candidates=j, elites=max(2, j // 10))
        cem_ok.append(prob.first_action_ok(cem.plan(obj, start, generator=torch.Generator().manual_seed(0)).first_action.item()))
    assert all(mcts_ok), mcts_ok
    assert sum(cem_ok) <= 2, cem_ok


def test_masks_remove_invalid_actions_and_priors_come_from_the_policy():
    """A mask forbidding the prize's direction at p = 0 makes the lure optimal; a policy's log-probabilities
    over the action set are the priors (with equal Q values the improved policy is exactly their softmax)."""
    model = _chain()
    acts = torch.tensor([[-1.0], [0.0], [1.0]])

    def mask(state):
        m = torch.ones(state.batch, 3, dtype=torch.bool)
        m[:, 2] = state.deter[:, 0].round() != 0
        return m

    obj = Objective(model, discount=0.9)
    plan = MCTS(MCTSConfig(simulations=100, horizon=3), actions=acts, mask=mask).plan(obj, model.initial(1))
    assert plan.first_action.item() == -1.0 and plan.info["root_visits"][0, 2] == 0
    assert plan.info["root_q"][0, 2] == float("-inf")

    class Prior:
        def act(self, state, *, generator=None, deterministic=False):
            return torch.zeros(state.batch, 1)

        def log_prob(self, state, actions):  # [N, M, A] -> [N, M]
            return torch.tensor([0.0, 1.0, 2.0]).expand(state.batch, 3)

    flat = AnalyticModel(lambda x, u: x, lambda x: torch.zeros(x.shape[0]), 1, [-1.0], [1.0])
    p = MCTS(MCTSConfig(simulations=3, horizon=1), actions=acts, proposal=Prior()).plan(Objective(flat), flat.initial(1))
    torch.testing.assert_close(p.info["root_policy"][0], torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0))
    assert p.first_action.item() == 1.0  # the highest prior, Q being equal


def test_subtree_is_reused_when_the_belief_is_the_predicted_one():
    model = _chain()
    acts = torch.tensor([[-1.0], [0.0], [1.0]])
    obj = Objective(model, discount=0.9)
    mcts = MCTS(MCTSConfig(simulations=60, horizon=4), actions=acts)
    first = mcts.plan(obj, model.initial(2))
    tree = first.info["mcts_tree"]
    child = tree.first_child[0, 0] + tree.root_child[0]
    kept = tree.visits[0, child]
    nxt = LatentState(first.first_action.new_tensor([[1.0, 1.0], [5.0, 1.0]]), model.initial(2).stoch)  # row 1 is elsewhere
    again = MCTS(MCTSConfig(simulations=1, horizon=4), actions=acts).plan(obj, nxt, warm_start=first.shift())
    assert again.info["reused"] == 1
    assert again.info["mcts_tree"].visits[0, 0] == kept + 1 and again.info["mcts_tree"].visits[1, 0] == 1
    torch.testing.assert_close(again.value, obj.returns(nxt, again.actions))
    off = MCTS(MCTSConfig(simulations=1, horizon=4, reuse=False), actions=acts).plan(obj, nxt, warm_start=first.shift())
    assert off.info["reused"] == 0


def test_subtree_is_not_reused_under_another_objective():
    """A changed context value (a moved target) or another discount starts the tree afresh: the kept
    rewards would be stale."""
    import latentplan as lp

    @lp.reward
    def near(obs, action, ctx):
        return -(obs["obs"][:, 0] - ctx["target"]).abs()

    model = _chain()
    acts = torch.tensor([[-1.0], [0.0], [1.0]])
    mcts = MCTS(MCTSConfig(simulations=30, horizon=3), actions=acts)
    first = mcts.plan(Objective(model, rewards=[near], context={"target": 2.0}), model.initial(1))
    nxt = model.imagine_step(model.initial(1), first.first_action)
    same = mcts.plan(Objective(model, rewards=[near], context={"target": 2.0}), nxt, warm_start=first.shift())
    moved = mcts.plan(Objective(model, rewards=[near], context={"target": -2.0}), nxt, warm_start=first.shift())
    other = mcts.plan(Objective(model, rewards=[near], context={"target": 2.0}, discount=0.5), nxt,
                      warm_start=first.shift())
    assert (same.info["reused"], moved.info["reused"], other.info["reused"]) == (1, 0, 0)
    assert moved.first_action.item() == -1.0
