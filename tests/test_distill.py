"""Distillation of planners into a policy: the LQR gain recovered from a CEM teacher and, within 2 %,
from a converged iLQR teacher on the LQ family, the MCTS
visit target's exact minimiser, the learner's bookkeeping, DAgger on the linear-quadratic system,
the `latentplan distill` command."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import latentplan as lp
from latentplan.cli import main
from latentplan.distillation import dagger_round, replay_beliefs
from latentplan.envs.lqr import LinearQuadratic
from latentplan.families import distill_gain, gain_error, lq_family
from latentplan.registry import make_planner
from latentplan.planners import CEM, CEMConfig, Objective, Plan
from latentplan.planners.distill import DistillConfig, Distiller
from latentplan.planners.policy import GaussianPolicy, PolicyConfig, PolicyPlanner
from latentplan.worldmodels import AnalyticModel
from lq_world import BOUND, LQRPolicy, closed_loop, gain_of, lq_problem


# --------------------------------------------------------------------------- distillation: exact answers


@pytest.mark.parametrize("target", ["action", "plan"])
def test_distilled_policy_recovers_the_lqr_gain(target):
    """A CEM teacher on the LQ problem (terminal value from the Riccati solution), distilled on
    states from [-1, 1]^2: the student's linear part is -K of scipy's DARE within 5 %."""
    env, model, factory, P, K = lq_problem()
    teacher = CEM(CEMConfig(horizon=4, iterations=8, candidates=200, elites=20, init_std=5.0))
    g = torch.Generator().manual_seed(0)
    states = model.from_observation(torch.rand(512, 2, generator=g) * 2 - 1)
    d = Distiller(DistillConfig(policy=PolicyConfig(hidden=64), target=target, lr=3e-3, batch_size=512, label_batch=512,
                                init_seed=0), 2, 1, model.action_low, model.action_high)
    info = d.relabel(model, states, teacher, factory, generator=g)
    assert info["labels"] == (512 if target == "action" else 512 * 4)
    assert info["model_evals"] == 8 * 200 * 4 and len(d) == info["labels"]
    d.train(1000, generator=g)
    K_fit = gain_of(d.policy, model)
    rel = np.linalg.norm(K_fit - K) / np.linalg.norm(K)
    print(f"distilled gain {K_fit.ravel()} vs LQR {K.ravel()}: relative error {rel:.4f}")
    assert rel < 0.05, (K_fit, K, rel)


def test_finite_horizon_gains_tend_to_the_dare_gain():
    """K_0(H) of the backward Riccati recursion is the DARE gain in the limit of long horizons, and the
    label states' optimal plans stay inside the bounds (|u*| <= 0.6), so -K_0 x is the exact first action."""
    import dataclasses

    p = lq_family(4, seed=0)[3]
    assert gain_error(p.gains()[0], p.dare_gain()) > 0.02  # at H = 14 the two differ
    long = dataclasses.replace(p, horizon=300)
    assert gain_error(long.gains()[0], long.dare_gain()) < 1e-8
    x = p.label_states(64, seed=0)
    peak = np.zeros(64)
    for k in p.gains():
        u = -x @ k.T
        peak = np.maximum(peak, np.abs(u).max(1))
        x = x @ p.A.T + u @ p.B.T
    assert peak.max() <= 0.6 + 1e-12 and peak.min() >= 0.12 - 1e-12


def test_distilled_linear_policy_recovers_the_gain_of_a_converged_teacher():
    """iLQR (the registry's `ilqr`, converged: exact on LQ problems) labels 64 states; a linear
    student (`PolicyConfig(layers=0)`) recovers the teacher's gain K_0(H) within 2 % on three LQ
    family instances (worst case asserted; measured: <= 1e-3). The reference is the finite-horizon
    gain: on instance 3 it is 4.5 % from the DARE gain, so the DARE gain would not be the teacher's
    (benchmarks/distill_lq.py runs 20 instances x 3 seeds, with CEM teachers beside)."""
    worst = 0.0
    for i, p in enumerate(lq_family(4, seed=0)):
        if i == 1:
            continue
        model, _, _ = p.build()
        r = distill_gain(p, make_planner("ilqr", model, horizon=p.horizon).planner, states=64, steps=200, seed=0)
        assert r["teacher_error"] < 1e-4, (i, r["teacher_error"])  # the teacher is converged
        worst = max(worst, r["student_error"])
        if i == 3:
            assert r["finite_vs_dare"] > 0.04 and r["student_vs_dare"] > 0.04
    print(f"worst relative gain error of the student: {worst:.2e}")
    assert worst < 0.02


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
    d = Distiller(DistillConfig(target="visits", lr=1e-2, batch_size=2, policy=PolicyConfig(hidden=32), init_seed=0), 1, 1, low, high)
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
    _, model, factory, _, K = lq_problem()
    d = Distiller(DistillConfig(target="visits"), 2, 1, model.action_low, model.action_high)
    with pytest.raises(ValueError, match="root_actions"):
        d.relabel(model, model.from_observation(torch.zeros(3, 2)), CEM(horizon=2, iterations=1, candidates=8, elites=2), factory)


# --------------------------------------------------------------------------- the learner's bookkeeping


def test_distiller_state_dict_round_trips_through_weights_only_files(tmp_path):
    _, model, factory, _, K = lq_problem()
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
    # the capacity drops the oldest labels first
    small = Distiller(DistillConfig(capacity=4), 2, 1, model.action_low, model.action_high)
    small.add_labels(torch.arange(12.0).reshape(6, 2), actions=torch.zeros(6, 1))
    assert len(small) == 4 and small.labels == 6
    torch.testing.assert_close(small._data["features"][0], torch.tensor([4.0, 5.0]))


# --------------------------------------------------------------------------- the facade


def test_replay_beliefs_and_dagger_round_on_the_linear_quadratic_system():
    env, model, factory, P, K = lq_problem()
    env = LinearQuadratic(action_bound=BOUND, horizon=10)
    d = Distiller(DistillConfig(policy=PolicyConfig(hidden=16), label_batch=7), 2, 1, model.action_low, model.action_high)
    teacher = PolicyPlanner(LQRPolicy(K))  # an exact teacher: labels are -K x
    g = torch.Generator().manual_seed(0)
    # beta = 1: the teacher acts everywhere; the return is the LQR closed loop's, the labels -K x
    res = dagger_round(env, model, d, teacher, factory, seeds=[3, 4], beta=1.0, generator=g)
    assert res["decisions"] == 20 and res["teacher_steps"] == 20 and res["labels"] == 20
    x0 = np.stack([env.reset(seed=s)[0] for s in (3, 4)]).astype(np.float64)
    us = closed_loop(env.A, env.B, K, x0, 10)
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
    assert blob["kind"] == "policy" and blob["config"]["feature_dim"] == 20 and blob["config"]["action_dim"] == 1
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
    assert "simulations=8" in m["teacher_repr"] and "horizon=4" in m["teacher_repr"]
