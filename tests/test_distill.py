"""Distillation of planners into a policy: the LQR gain recovered from a CEM teacher, the MCTS
visit target's exact minimiser, bounds, the policy planner and proposals with exact answers, DAgger
on the linear-quadratic system, the `latentplan distill` command."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import latentplan as lp
from latentplan.cli import main
from latentplan.distillation import dagger_round, replay_beliefs
from latentplan.envs.lqr import LinearQuadratic
from latentplan.planners import CEM, CEMConfig, GradientConfig, GradientPlanner, Objective, Plan, Planner, Policy
from latentplan.planners.distill import (
    DistillConfig, Distiller, GaussianPolicy, PolicyConfig, PolicyPlanner, policy_rollout,
)
from latentplan.worldmodels import AnalyticModel, LatentState

BOUND = 10.0


# --------------------------------------------------------------------------- the LQ world


def _lq():
    """The default double integrator of `LinearQuadratic` with its Riccati solution and gain."""
    env = LinearQuadratic(action_bound=BOUND)
    model = AnalyticModel.linear(env.A, env.B, env.Q, action_bound=BOUND)
    P, K = env.riccati(), env.lqr_gain()
    M = torch.as_tensor(P - env.Q, dtype=torch.float32)

    def factory(m):
        """Rewards -x'Qx (arrival) and -u'Ru, terminal value -x'(P - Q)x: the H-step optimum is the
        infinite-horizon one, u = -K x at every step."""
        return Objective(m, rewards=[lambda s, a: m.reward(s), AnalyticModel.quadratic_action_cost(env.R)],
                         value=lambda s: -((s.deter @ M) * s.deter).sum(-1))

    return env, model, factory, P, K


class LQRPolicy:
    """The exact optimal policy u = -K x (a `Policy`); samples add N(0, 0.5^2) noise."""

    def __init__(self, K):
        self.K = torch.as_tensor(K, dtype=torch.float32)

    def act(self, state, *, generator=None, deterministic=False):
        u = -state.deter @ self.K.T
        if not deterministic:
            u = u + 0.5 * torch.randn(u.shape, generator=generator)
        return u.clamp(-BOUND, BOUND)


def _closed_loop(A, B, K, x0, steps):
    """`[N, steps]` actions of u = -K x along the exact closed loop from x0 `[N, 2]`, float64."""
    x, us = np.asarray(x0, np.float64), []
    for _ in range(steps):
        u = -x @ K.T
        us.append(u)
        x = x @ A.T + u @ B.T
    return np.stack(us, 1)


def _gain_of(policy, model):
    """Least-squares fit u = -K x of the policy's deterministic actions on a grid of [-1, 1]^2."""
    g = torch.linspace(-1, 1, 21)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    u = policy.act(model.from_observation(grid), deterministic=True).numpy()
    return -np.linalg.lstsq(grid.numpy(), u, rcond=None)[0].T


# --------------------------------------------------------------------------- the policy


@settings(max_examples=40, deadline=None)
@given(
    scale=st.floats(1e-3, 1e6),
    weight_scale=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**31 - 1),
    deterministic=st.booleans(),
)
def test_policy_actions_are_always_within_bounds(scale, weight_scale, seed, deterministic):
    low, high = torch.tensor([-1.0, 0.0, -20.0]), torch.tensor([2.0, 0.5, -19.0])
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG left as it was
        torch.manual_seed(seed)
        policy = GaussianPolicy(4, 3, low, high, PolicyConfig(hidden=16))
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(weight_scale)
    feats = torch.randn(64, 4) * scale
    a = policy.act(LatentState(feats, torch.zeros(64, 0)), generator=torch.Generator().manual_seed(seed),
                   deterministic=deterministic)
    assert a.shape == (64, 3)
    assert torch.isfinite(a).all()
    assert (a >= low).all() and (a <= high).all()


def test_log_prob_is_the_squashed_gaussian_density():
    low, high = torch.tensor([-2.0]), torch.tensor([3.0])
    policy = GaussianPolicy(2, 1, low, high)
    feats = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    mean, log_std = policy(feats)
    # integrates to 1 over the box (the density of a bijection of a Gaussian)
    grid = torch.linspace(-2.0, 3.0, 200_001)[1:-1]
    dens = policy.log_prob(feats, grid[None, :, None].expand(2, -1, 1)).exp()
    mass = torch.trapezoid(dens, grid, dim=1)
    torch.testing.assert_close(mass, torch.ones(2), atol=2e-3, rtol=0)
    # and equals torch.distributions' change of variables at some points
    base = torch.distributions.Normal(mean, log_std.exp())
    dist = torch.distributions.TransformedDistribution(base, [
        torch.distributions.TanhTransform(), torch.distributions.AffineTransform(low + 2.5, 2.5)])
    a = torch.tensor([[-1.5], [2.9]])
    torch.testing.assert_close(policy.log_prob(feats, a), dist.log_prob(a).sum(-1), atol=1e-4, rtol=1e-4)


def test_policy_rejects_bad_sizes_and_bounds():
    with pytest.raises(ValueError, match="low < high"):
        GaussianPolicy(3, 1, [1.0], [1.0])
    with pytest.raises(ValueError, match=r"\[A=2\]"):
        GaussianPolicy(3, 2, [0.0], [1.0])
    policy = GaussianPolicy(3, 1, [-1.0], [1.0])
    with pytest.raises(ValueError, match="F=3"):
        policy.act(LatentState(torch.zeros(2, 2), torch.zeros(2, 2)))


# --------------------------------------------------------------------------- distillation: exact answers


@pytest.mark.parametrize("target", ["action", "plan"])
def test_distilled_policy_recovers_the_lqr_gain(target):
    """A CEM teacher on the LQ problem (terminal value from the Riccati solution), distilled on
    states from [-1, 1]^2: the student's linear part is -K of scipy's DARE within 5 %."""
    env, model, factory, P, K = _lq()
    teacher = CEM(CEMConfig(horizon=4, iterations=8, candidates=200, elites=20, init_std=5.0))
    g = torch.Generator().manual_seed(0)
    states = model.from_observation(torch.rand(512, 2, generator=g) * 2 - 1)
    d = Distiller(DistillConfig(policy=PolicyConfig(hidden=64), target=target, lr=3e-3, batch_size=512, label_batch=512,
                                init_seed=0), 2, 1, model.action_low, model.action_high)
    info = d.relabel(model, states, teacher, factory, generator=g)
    assert info["labels"] == (512 if target == "action" else 512 * 4)
    assert info["model_evals"] == 8 * 200 * 4 and len(d) == info["labels"]
    d.train(1000, generator=g)
    K_fit = _gain_of(d.policy, model)
    rel = np.linalg.norm(K_fit - K) / np.linalg.norm(K)
    print(f"distilled gain {K_fit.ravel()} vs LQR {K.ravel()}: relative error {rel:.4f}")
    assert rel < 0.05, (K_fit, K, rel)


class SyntheticMCTS:
    """A stand-in for MCTS: fixed root actions and visit distributions per belief, in `Plan.info`."""

    def __init__(self, root_actions, root_policy):
        self.root_actions, self.root_policy = root_actions, root_policy

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
        idx = state.deter[:, 0].long()
        actions = self.root_actions[idx]
        best = actions.gather(1, self.root_policy[idx].argmax(1)[:, None, None].expand(-1, 1, actions.shape[2]))
        info = {"root_actions": actions, "root_policy": self.root_policy[idx],
                "root_visits": self.root_policy[idx] * 100, "root_value": torch.zeros(state.batch), "model_evals": 0}
        return Plan(best, torch.zeros(state.batch), info)


def test_visit_target_matches_the_visit_weighted_moments():
    """The cross-entropy -sum_k pi_k log p(a_k | s) is minimised, for a Gaussian in u = atanh(a),
    by the visit-weighted mean and standard deviation of the u_k: the trained policy reproduces them."""
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    root_actions = torch.tensor([[[-1.5], [-0.5], [0.4], [1.2]], [[0.1], [0.6], [1.0], [1.9]]])
    root_policy = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.15, 0.1]])
    teacher = SyntheticMCTS(root_actions, root_policy)
    model = AnalyticModel(lambda x, u: x, lambda x: x[:, 0], 1, low, high)
    states = model.from_observation(torch.tensor([[0.0], [1.0]]))
    d = Distiller(DistillConfig(target="visits", lr=1e-2, batch_size=2, policy=PolicyConfig(hidden=32)), 1, 1, low, high)
    d.relabel(model, states, teacher, Objective, generator=torch.Generator().manual_seed(0))
    assert len(d) == 2
    d.train(500, generator=torch.Generator().manual_seed(1))
    mean, log_std = d.policy(states)
    u = torch.atanh(root_actions / 2.0)[..., 0]                      # [2, K]
    m = (root_policy * u).sum(1)
    s = ((root_policy * (u - m[:, None]) ** 2).sum(1)).sqrt()
    torch.testing.assert_close(mean[:, 0], m, atol=0.02, rtol=0)
    torch.testing.assert_close(log_std.exp()[:, 0], s, atol=0.02, rtol=0.02)


def test_visit_target_needs_the_mcts_keys():
    _, model, factory, _, K = _lq()
    d = Distiller(DistillConfig(target="visits"), 2, 1, model.action_low, model.action_high)
    with pytest.raises(ValueError, match="root_actions"):
        d.relabel(model, model.from_observation(torch.zeros(3, 2)), CEM(horizon=2, iterations=1, candidates=8, elites=2), factory)


# --------------------------------------------------------------------------- the planner and proposals


def test_policy_planner_acts_in_one_pass_and_rolls_out_exactly():
    env, model, factory, P, K = _lq()
    x0 = np.array([[1.0, 0.0], [-0.5, 0.8], [0.7, -0.6]])
    state = model.from_observation(torch.tensor(x0, dtype=torch.float32))
    one = PolicyPlanner(LQRPolicy(K))
    assert isinstance(one, Planner) and isinstance(LQRPolicy(K), Policy)
    plan = one.plan(factory(model), state)
    assert plan.actions.shape == (3, 1, 1) and plan.info["model_evals"] == 0
    assert torch.isnan(plan.value).all()  # nothing estimated: NaN, not 0
    np.testing.assert_allclose(plan.actions[:, 0].numpy(), -x0 @ K.T, rtol=1e-5, atol=1e-6)

    h = 6
    plan = PolicyPlanner(LQRPolicy(K), horizon=h).plan(factory(model), state)
    assert plan.actions.shape == (3, h, 1) and plan.info["model_evals"] == 3 * h
    np.testing.assert_allclose(plan.actions[..., 0].numpy(), _closed_loop(env.A, env.B, K, x0, h)[..., 0], rtol=1e-4, atol=1e-5)
    # the closed loop's return with the Riccati terminal value is the optimum -x0'(P - Q)x0 (Bellman)
    optimum = -np.einsum("ni,ij,nj->n", x0, P - env.Q, x0)
    np.testing.assert_allclose(plan.value.numpy(), optimum, rtol=1e-4)
    actions, ret, evals = policy_rollout(LQRPolicy(K), factory(model), state, h)
    assert ret is None and evals == 3 * (h - 1)
    torch.testing.assert_close(actions, plan.actions)


def test_cem_with_a_policy_proposal_keeps_the_policy_rollout():
    """CEM with one iteration and one elite: the optimal policy's mode rollout beats every random
    candidate, so the plan is exactly the LQR closed loop; without a proposal it is not."""
    env, model, factory, P, K = _lq()
    x0 = np.array([[1.0, 0.0], [-0.5, 0.8]])
    state = model.from_observation(torch.tensor(x0, dtype=torch.float32))
    h, j = 5, 20
    cfg = CEMConfig(horizon=h, iterations=1, candidates=j, elites=1, policy_fraction=0.2)
    assert cfg.policy_candidates == 4
    plan = CEM(cfg, proposal=LQRPolicy(K)).plan(factory(model), state, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(plan.actions[..., 0].numpy(), _closed_loop(env.A, env.B, K, x0, h)[..., 0], rtol=1e-4, atol=1e-5)
    assert plan.info["model_evals"] == 2 * j * h + 2 * 4 * (h - 1)  # J rows evaluated + the policy rollouts
    plain = CEM(cfg).plan(factory(model), state, generator=torch.Generator().manual_seed(0))
    assert float((plain.actions - plan.actions).abs().max()) > 0.1
    assert plain.info["model_evals"] == 2 * j * h
    # the fraction alone (no proposal) is plain CEM, draw for draw
    torch.testing.assert_close(plain.actions, CEM(horizon=h, iterations=1, candidates=j, elites=1).plan(
        factory(model), state, generator=torch.Generator().manual_seed(0)).actions)
    with pytest.raises(ValueError, match="policy_fraction"):
        CEM(CEMConfig(horizon=h), proposal=LQRPolicy(K))
    with pytest.raises(ValueError, match="policy_fraction"):
        CEMConfig(policy_fraction=1.5)


def test_gradient_planner_starts_from_the_policy_rollout():
    env, model, factory, P, K = _lq()
    x0 = np.array([[0.6, -0.3]])
    state = model.from_observation(torch.tensor(x0, dtype=torch.float32))
    h = 5
    planner = GradientPlanner(GradientConfig(horizon=h, iterations=1, restarts=1, lr=1e-6, init="policy"), proposal=LQRPolicy(K))
    plan = planner.plan(factory(model), state, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(plan.actions[..., 0].numpy(), _closed_loop(env.A, env.B, K, x0, h)[..., 0], rtol=1e-3, atol=1e-4)
    assert plan.info["model_evals"] == 1 * h * 2 + (h - 1)
    with pytest.raises(ValueError, match="proposal"):
        GradientPlanner(GradientConfig(init="policy"))
    with pytest.raises(ValueError, match="proposal"):
        GradientPlanner(GradientConfig(), proposal=LQRPolicy(K))


# --------------------------------------------------------------------------- the learner's bookkeeping


def test_distiller_state_dict_round_trips_through_weights_only_files(tmp_path):
    _, model, factory, _, K = _lq()
    g = torch.Generator().manual_seed(0)
    d = Distiller(DistillConfig(policy=PolicyConfig(hidden=16), batch_size=8, steps_per_update=3, labels_per_update=5),
                  2, 1, model.action_low, model.action_high)
    out = d.update(model, model.from_observation(torch.rand(12, 2, generator=g)), PolicyPlanner(LQRPolicy(K)), factory, generator=g)
    assert out["labels"] == 5 and len(d) == 5 and d.steps == 3 and math.isfinite(out["loss"])
    torch.save(d.state_dict(), tmp_path / "d.pt")
    e = Distiller(d.config, 2, 1, model.action_low, model.action_high)
    e.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    assert len(e) == 5 and e.steps == 3 and e.labels == 5
    s = model.from_observation(torch.rand(7, 2, generator=g))
    torch.testing.assert_close(e.policy.act(s, deterministic=True), d.policy.act(s, deterministic=True))
    d.train(2, generator=torch.Generator().manual_seed(5))
    e.train(2, generator=torch.Generator().manual_seed(5))
    for p, q in zip(d.policy.parameters(), e.policy.parameters()):
        torch.testing.assert_close(p, q)
    d.policy.save(tmp_path / "policy.pt")
    loaded = GaussianPolicy.load(tmp_path / "policy.pt")
    torch.testing.assert_close(loaded.act(s, deterministic=True), d.policy.act(s, deterministic=True))
    with pytest.raises(ValueError, match="not a latentplan policy"):
        GaussianPolicy.load(tmp_path / "d.pt")
    # the capacity drops the oldest labels first
    small = Distiller(DistillConfig(capacity=4), 2, 1, model.action_low, model.action_high)
    small.add_labels(torch.arange(12.0).reshape(6, 2), actions=torch.zeros(6, 1))
    assert len(small) == 4 and small.labels == 6
    torch.testing.assert_close(small._data["features"][0], torch.tensor([4.0, 5.0]))


# --------------------------------------------------------------------------- the facade


def test_replay_beliefs_and_dagger_round_on_the_linear_quadratic_system():
    env, model, factory, P, K = _lq()
    env = LinearQuadratic(action_bound=BOUND, horizon=10)
    d = Distiller(DistillConfig(policy=PolicyConfig(hidden=16), label_batch=7), 2, 1, model.action_low, model.action_high)
    teacher = PolicyPlanner(LQRPolicy(K))  # an exact teacher: labels are -K x
    g = torch.Generator().manual_seed(0)
    # beta = 1: the teacher acts everywhere; the return is the LQR closed loop's, the labels -K x
    res = dagger_round(env, model, d, teacher, factory, seeds=[3, 4], beta=1.0, generator=g)
    assert res["decisions"] == 20 and res["teacher_steps"] == 20 and res["labels"] == 20
    x0 = np.stack([env.reset(seed=s)[0] for s in (3, 4)]).astype(np.float64)
    us = _closed_loop(env.A, env.B, K, x0, 10)
    xs = [x0]
    for t in range(9):
        xs.append(xs[-1] @ env.A.T + us[:, t] @ env.B.T)
    xs = np.stack(xs, 1)
    want = -(np.einsum("nti,ij,ntj->n", xs, env.Q, xs) + np.einsum("nti,ij,ntj->n", us, env.R, us))
    np.testing.assert_allclose(res["returns"], want, rtol=1e-4)
    np.testing.assert_allclose(d._data["actions"].numpy(), -d._data["features"].numpy() @ K.T, rtol=1e-5, atol=1e-5)
    # beta = 0: the (untrained) student acts; every belief it visits is relabelled by the teacher
    before = len(d)
    res = dagger_round(env, model, d, teacher, factory, seeds=[5], beta=0.0, generator=g)
    assert res["teacher_steps"] == 0 and res["labels"] == 10 and len(d) == before + 10
    np.testing.assert_allclose(d._data["actions"].numpy(), -d._data["features"].numpy() @ K.T, rtol=1e-5, atol=1e-5)
    # replay beliefs of an analytic model are the observations at the decisions
    ep, _ = lp.run_episode(env, lp.Agent(model, teacher, objective=factory), seed=3)
    beliefs = replay_beliefs(model, [ep, ep])
    assert beliefs.batch == 20
    torch.testing.assert_close(beliefs.deter[:10], torch.as_tensor(ep["obs"][:10]))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """Two random episodes of cartpole (20 decisions each) and an untrained tiny RSSM: enough to run the command."""
    tmp = tmp_path_factory.mktemp("distill")
    cfg = lp.TrainConfig(
        env="dmc:cartpole-swingup", action_repeat=50, episodes=2, seed_episodes=2, progress=False, device="cpu", run_dir=str(tmp / "run"),
        model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
        planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
    )
    lp.Trainer(cfg).run()
    return tmp / "run"


def test_cli_distill_writes_policy_curve_and_metrics(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        "distill", "--checkpoint", str(tiny_checkpoint / "checkpoint.pt"), "--out", str(out),
        "--horizon", "3", "--teacher", "cem:iterations=2,candidates=16,elites=4", "--replay-states", "30",
        "--fit-steps", "20", "--dagger-rounds", "1", "--dagger-episodes", "1", "--dagger-steps", "5",
        "--eval-episodes", "1", "--no-eval-teacher", "--no-progress", "--distill.batch-size", "16",
    ])
    assert code == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["replay"]["labels"] == 30 and m["replay"]["beliefs_available"] == 40
    assert m["rounds"][0]["labels"] == 20 and m["labels"] == 50 and m["steps"] == 25
    assert len(m["loss_history"]) == 25 and 0.0 <= m["student"]["mean"] <= 1000.0
    blob = torch.load(out / "policy.pt", weights_only=True)
    assert blob["feature_dim"] == 20 and blob["action_dim"] == 1
    assert (out / "loss.png").stat().st_size > 5000
    assert "student return" in capsys.readouterr().out
    # a missing checkpoint is a clean error, not a traceback
    assert main(["distill", "--checkpoint", str(tmp_path / "nope.pt"), "--no-progress"]) == 2
    # MCTS: its root visit distribution is the target, and the horizon is its tree's depth
    args = ["distill", "--checkpoint", str(tiny_checkpoint), "--teacher", "mcts:simulations=8", "--horizon", "4",
            "--replay-states", "6", "--fit-steps", "3", "--dagger-rounds", "0", "--eval-episodes", "0", "--no-progress",
            "--out", str(tmp_path / "m")]
    assert main(args) == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["target"] == "visits" and m["labels"] == 6 and m["steps"] == 3
    assert "simulations=8" in m["teacher_repr"] and "depth=4" in m["teacher_repr"]
