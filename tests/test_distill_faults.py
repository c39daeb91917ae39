"""Faults of distillation and of the learned value, found by the session-12 probe
(/work/scratch/s12/probe_distill/REPORT.md): failed teacher plans, unusable labels, a model whose
action box is not the student's, checkpoints of another config, runs that would do nothing, and
TD(λ) against the exact Riccati value of a scalar linear-quadratic system for λ = 0 and λ = 1."""

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from latentplan.distillation import DistillRunConfig, dagger_round, run_distillation
from latentplan.planners import Objective, Plan
from latentplan.planners.distill import DistillConfig, Distiller
from latentplan.planners.policy import PolicyConfig
from latentplan.planners.value import ValueConfig, ValueLearner, lambda_returns
from latentplan.worldmodels import AnalyticModel, LatentState


def _model(low=-1.0, high=1.0):
    """x' = x + u, reward -(x - 0.5)^2."""
    return AnalyticModel(lambda x, u: x + u, lambda x: -(x[:, 0] - 0.5) ** 2, 1, [low], [high])


def _distiller(**kw):
    kw.setdefault("policy", PolicyConfig(hidden=8))
    return Distiller(DistillConfig(batch_size=4, init_seed=0, **kw), 1, 1, [-1.0], [1.0])


class _Teacher:
    """Plans `u` at every step; rows with an even index get NaN when `nan_even`. Counts its calls."""

    def __init__(self, u=0.3, horizon=2, nan_even=False, action_dim=1):
        self.u, self.h, self.nan_even, self.a, self.calls = u, horizon, nan_even, action_dim, 0

    def plan(self, objective, state, *, warm_start=None, generator=None, deadline=None):
        self.calls += 1
        acts = torch.full((state.batch, self.h, self.a), self.u)
        if self.nan_even:
            acts[::2] = math.nan
        return Plan(acts, torch.zeros(state.batch), {"model_evals": 0})


def _finite(module):
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


# --------------------------------------------------------------------------- distillation labels


@pytest.mark.parametrize("target, kept, skipped", [("action", 3, 3), ("plan", 6, 6)])
def test_failed_teacher_plans_are_left_out_and_counted(target, kept, skipped):
    """A teacher that returns NaN for half of the beliefs: those rows (for target "plan" every step of
    the failed plans) are left out and counted; before, they were stored and the first gradient step
    turned every weight of the student into NaN."""
    m = _model()
    d = _distiller(target=target)
    states = m.from_observation(torch.linspace(-1, 1, 6)[:, None])
    info = d.relabel(m, states, _Teacher(nan_even=True), Objective)
    assert (info["labels"], info["skipped"]) == (kept, skipped) and (len(d), d.skipped) == (kept, skipped)
    assert torch.equal(d._data["actions"], torch.full((kept, 1), 0.3))
    np.testing.assert_allclose(d._data["features"][:3, 0].numpy(), [-0.6, 0.2, 1.0], rtol=1e-6)  # rows 1, 3, 5
    if target == "plan":  # their second step starts from x + 0.3
        np.testing.assert_allclose(d._data["features"][3:, 0].numpy(), [-0.3, 0.5, 1.3], rtol=1e-6)
    assert math.isfinite(d.train(3, generator=torch.Generator().manual_seed(0))["loss"]) and _finite(d.policy)
    # a teacher that always fails leaves nothing to train on: a clear error, not a NaN policy
    e = _distiller()
    assert e.relabel(m, states, _Teacher(u=math.nan), Objective)["skipped"] == 6 and len(e) == 0
    with pytest.raises(ValueError, match="no labelled data"):
        e.train(1)


def test_unusable_raw_labels_are_rejected_by_name_and_nothing_is_stored():
    d = _distiller()
    z = torch.zeros(2, 1)
    with pytest.raises(ValueError, match=r"features has NaN/inf in rows \[0\]"):
        d.add_labels(torch.tensor([[math.nan], [0.0]]), actions=z)
    with pytest.raises(ValueError, match=r"actions has NaN/inf in rows \[1\]"):
        d.add_labels(z, actions=torch.tensor([[0.0], [math.inf]]))
    with pytest.raises(ValueError, match=r"weights has NaN/inf"):
        d.add_labels(z, actions=z, weights=torch.tensor([math.nan, 1.0]))
    with pytest.raises(ValueError, match=r"weights must be >= 0; rows \[0\]"):
        d.add_labels(z, actions=z, weights=torch.tensor([-1.0, 1.0]))
    assert len(d) == 0 and d.labels == 0
    v = _distiller(target="visits")
    ra = torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="root_policy has NaN/inf"):
        v.add_labels(z, root_actions=ra, root_policy=torch.tensor([[math.nan, 0.5, 0.5], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="negative"):
        v.add_labels(z, root_actions=ra, root_policy=torch.tensor([[-0.5, 1.0, 0.5], [1.0, 0.0, 0.0]]))
    # a root without mass used to be stored and to fail later, in whichever minibatch drew it
    with pytest.raises(ValueError, match=r"rows \[0\] have no positive mass"):
        v.add_labels(z, root_actions=ra, root_policy=torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert len(v) == 0
    # from a teacher's plan, such a root is left out and counted instead
    plan = Plan(torch.zeros(2, 1, 1), torch.zeros(2),
                {"root_actions": ra, "root_policy": torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])})
    assert v.add_plan(Objective(_model()), _model().from_observation(z), plan) == 1 and v.skipped == 1


def test_train_steps_must_be_a_count():
    d = _distiller()
    d.add_labels(torch.zeros(2, 1), actions=torch.zeros(2, 1))
    for bad in (-3, 2.0, True):
        with pytest.raises(ValueError, match="steps must be an int >= 0"):
            d.train(bad)
    assert d.train(0)["steps"] == 0.0 and d.steps == 0


@pytest.mark.parametrize("model, match", [
    (AnalyticModel(lambda x, u: x + u.sum(-1, keepdim=True), lambda x: x[:, 0], 1, [-1.0, -1.0], [1.0, 1.0]),
     "the model has A=2 action dimensions; the policy has A=1"),
    (_model(-3.0, 3.0), r"action bounds \[\[-3.0\], \[3.0\]\] differ from the policy's \[\[-1.0\], \[1.0\]\]"),
    (_model(-0.2, 0.2), "differ from the policy's"),
])
def test_a_model_with_another_action_box_is_refused_before_the_teacher_runs(model, match):
    """Before, a teacher planning in [-3, 3] gave labels such as 2.5 that the student squashed into
    [-1, 1] can never produce; it was trained on them without a word."""
    teacher = _Teacher(action_dim=model.action_dim)
    with pytest.raises(ValueError, match=match):
        _distiller().relabel(model, model.from_observation(torch.zeros(3, 1)), teacher, Objective)
    assert teacher.calls == 0
    with pytest.raises(ValueError, match=match):
        dagger_round(None, model, _distiller(), teacher, Objective, seeds=[0])
    _distiller().check_model(AnalyticModel(lambda x, u: x + u, lambda x: x[:, 0], 1,
                                           torch.tensor([-1.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)))


# --------------------------------------------------------------------------- distiller checkpoints


def test_loading_a_distiller_state_keeps_this_config_and_refuses_other_boxes_and_targets():
    src = _distiller(lr=1e-3)
    src.add_labels(torch.arange(6.0)[:, None], actions=torch.linspace(-0.5, 0.5, 6)[:, None])
    src.train(2, generator=torch.Generator().manual_seed(0))
    state = src.state_dict()
    # the new run's lr stays (torch's Optimizer.load_state_dict would bring back 1e-3), and its capacity applies
    d = _distiller(lr=0.5, capacity=3)
    d.load_state_dict(state)
    assert d.optimizer.param_groups[0]["lr"] == 0.5 and len(d) == 3 and d.steps == 2
    assert d._data["features"][:, 0].tolist() == [3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="labels of another target"):
        _distiller(target="visits").load_state_dict(state)
    wide = Distiller(DistillConfig(policy=PolicyConfig(hidden=8)), 1, 1, [-5.0], [5.0])
    with pytest.raises(ValueError, match=r"acts in \[\[-1.0\], \[1.0\]\], this one in \[\[-5.0\], \[5.0\]\]"):
        wide.load_state_dict(state)
    # a state written before the bounds were stored still loads
    old = {k: v for k, v in state.items() if k not in ("low", "high", "skipped")}
    e = _distiller()
    e.load_state_dict(old)
    assert e.skipped == 0 and len(e) == 6


# --------------------------------------------------------------------------- the facade's run config


def test_distill_runs_that_would_do_nothing_are_refused(tmp_path):
    with pytest.raises(ValueError, match="nothing to distil"):
        DistillRunConfig(checkpoint="c", replay_states=0, dagger_rounds=0)
    with pytest.raises(ValueError, match="dagger_episodes must be >= 1"):
        DistillRunConfig(checkpoint="c", dagger_episodes=0)
    with pytest.raises(ValueError, match="no gradient step"):
        DistillRunConfig(checkpoint="c", fit_steps=0, dagger_steps=0)
    with pytest.raises(ValueError, match="no gradient step"):
        DistillRunConfig(checkpoint="c", dagger_rounds=0, fit_steps=0)
    DistillRunConfig(checkpoint="c", fit_steps=0, dagger_rounds=0, save_data=True)  # a labelling run
    DistillRunConfig(checkpoint="c", replay_states=0, dagger_rounds=1, fit_steps=0)  # the round's steps train
    # an --out that is a file is named before the (here missing) checkpoint is read
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        run_distillation(DistillRunConfig(checkpoint=str(tmp_path / "missing.pt"), out=str(f), progress=False))


# --------------------------------------------------------------------------- the value function


class _Const:
    """u = 0.3 everywhere."""

    def act(self, state, *, generator=None, deterministic=False):
        return torch.full((state.batch, 1), 0.3)


class _Linear:
    """u = -k x."""

    def __init__(self, k):
        self.k = k

    def act(self, state, *, generator=None, deterministic=False):
        return -self.k * state.deter


def _scalar_lq(gamma=0.9, a=0.9, b=1.0, q=1.0, r=0.5):
    """x' = a x + b u with reward -(q x'^2 + r u^2), discount gamma: (P, k) of the Riccati equation
    (scipy's DARE on the discounted system, the arrival cost written with the cross term) with
    V*(x) = -P x^2 and u* = -k x; the model and the objective."""
    Qs, Rs, N = q * a * a, r + q * b * b, q * a * b
    Ag, Bg = math.sqrt(gamma) * a, math.sqrt(gamma) * b
    P = float(scipy.linalg.solve_discrete_are(np.array([[Ag]]), np.array([[Bg]]), np.array([[Qs]]), np.array([[Rs]]),
                                              s=np.array([[N]]))[0, 0])
    k = (Bg * P * Ag + N) / (Rs + Bg * Bg * P)
    c = a - b * k  # the closed loop; its value coefficient is the Riccati P
    assert abs((q * c * c + r * k * k) / (1 - gamma * c * c) - P) < 1e-12
    model = AnalyticModel(lambda x, u: a * x + b * u, lambda x: -q * x[:, 0] ** 2, 1, [-10.0], [10.0])
    objective = Objective(model, discount=gamma, rewards=[lambda s, u: model.reward(s), lambda s, u: -r * u[:, 0] ** 2])
    return P, k, c, model, objective


def test_lambda_returns_of_the_exact_value_are_the_exact_value():
    """Bellman consistency: along the optimal closed loop of the LQ system, with the Riccati value
    as the bootstrap, every λ-return equals V*(s_t) (float64, to 1e-12), for λ = 0, 0.5, 1 and γ = 0.9."""
    P, k, c, _, _ = _scalar_lq()
    x = 0.8 * c ** np.arange(7)  # x_0 .. x_6
    rewards = -(x[1:] ** 2 + 0.5 * (k * x[:-1]) ** 2)
    values = -P * x ** 2
    for lam in (0.0, 0.5, 1.0):
        g = lambda_returns(torch.tensor(rewards)[:, None], torch.tensor(values)[:, None], 0.9, lam)
        np.testing.assert_allclose(g[:, 0].numpy(), values[:-1], rtol=1e-12, atol=1e-15)
    for kw, match in [(dict(discount=1.5), "discount must be in"), (dict(td_lambda=2.0), "td_lambda must be in"),
                      (dict(discount=math.nan), "discount must be in")]:
        args = {"discount": 0.9, "td_lambda": 0.5, **kw}
        with pytest.raises(ValueError, match=match):
            lambda_returns(torch.ones(2, 1), torch.zeros(3, 1), args["discount"], args["td_lambda"])
    with pytest.raises(ValueError, match=r"continues must lie in \[0, 1\]"):
        lambda_returns(torch.ones(2, 1), torch.zeros(3, 1), 0.9, 0.5, torch.full((2, 1), 2.0))


@pytest.mark.parametrize("td_lambda", [0.0, 1.0])
def test_td_lambda_converges_to_the_riccati_value(td_lambda):
    """The critic of the optimal linear policy, learnt by TD(0) or by 5-step Monte-Carlo returns
    (λ = 1), against V*(x) = -P x^2 (P = 0.2900): max error over x in [-0.8, 0.8] below 0.025 (13 %
    of |V*(0.8)| = 0.186); measured 0.013 for λ = 0 and 0.007 for λ = 1 (seed 0, 300 updates)."""
    P, k, _, model, objective = _scalar_lq()
    assert abs(P - 0.290009) < 1e-6
    cfg = ValueConfig(discount=0.9, td_lambda=td_lambda, horizon=5, batch=128, lr=3e-3, hidden=(32, 32), tau=0.05)
    learner = ValueLearner(cfg, feature_dim=1, seed=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        learner.update(model, model.from_observation(2 * torch.rand(128, 1, generator=g) - 1), _Linear(k),
                       objective=objective, generator=g)
    xs = torch.tensor([[-0.8], [-0.4], [0.0], [0.4], [0.8]])
    with torch.no_grad():
        got = learner.value(model.from_observation(xs)).numpy()
    err = np.abs(got - (-P * xs[:, 0].numpy() ** 2)).max()
    assert err < 0.025, (got, err)


def test_value_learner_rejects_empty_rollouts():
    m = _model()
    learner = ValueLearner(ValueConfig(horizon=3, batch=8, hidden=(8,)), feature_dim=1)
    for h in (0, -2, 1.5):
        with pytest.raises(ValueError, match="horizon must be an int >= 1"):
            learner.imagine(m, m.initial(2), _Linear(0.0), horizon=h)
    with pytest.raises(ValueError, match=r"no beliefs \(B = 0\)"):
        learner.update(m, m.initial(0), _Linear(0.0))


def test_a_nan_belief_with_finite_targets_is_left_out():
    """A model that resets (x' = u): from a NaN start belief the targets are finite, but the critic is
    fitted on the NaN features. Before, that made every weight NaN; now the trajectory is left out
    and the update is exactly the one on the clean row alone."""
    m = AnalyticModel(lambda x, u: u.clone(), lambda x: -x[:, 0] ** 2, 1, [-1.0], [1.0])
    cfg = ValueConfig(horizon=2, batch=8, hidden=(8,))
    a, b = ValueLearner(cfg, feature_dim=1), ValueLearner(cfg, feature_dim=1)
    info = a.update(m, LatentState(torch.tensor([[math.nan], [0.2]]), torch.zeros(2, 0)), _Const())
    ref = b.update(m, LatentState(torch.tensor([[0.2]]), torch.zeros(1, 0)), _Const())
    assert info["nonfinite"] == 1.0 and _finite(a.value)
    assert info["value_loss"] == ref["value_loss"]
    for p, q in zip(a.value.parameters(), b.value.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_loading_a_critic_of_another_discount_or_shape_is_refused_and_the_new_lr_kept():
    m = _model()
    src = ValueLearner(ValueConfig(discount=0.99, horizon=2, batch=8, hidden=(8,)), feature_dim=1)
    src.update(m, m.initial(4), _Linear(0.0))
    with pytest.raises(ValueError, match="discount 0.99; this learner's is 0.5"):
        ValueLearner(ValueConfig(discount=0.5, horizon=2, hidden=(8,)), feature_dim=1).load_state_dict(src.state_dict())
    with pytest.raises(ValueError, match="the stored critic has parameters"):
        ValueLearner(ValueConfig(discount=0.99, hidden=(16,)), feature_dim=1).load_state_dict(src.state_dict())
    dst = ValueLearner(ValueConfig(discount=0.99, td_lambda=0.5, lr=1.0, hidden=(8,)), feature_dim=1)
    dst.load_state_dict(src.state_dict())  # λ may change: on-policy TD(λ) has one fixed point for every λ
    assert dst.optimizer.param_groups[0]["lr"] == 1.0 and dst.updates == 1
    x = torch.linspace(-1, 1, 5)[:, None]
    torch.testing.assert_close(dst.value(x), src.value(x))


# --------------------------------------------------------------------------- the policy and DAgger's counts


def test_policy_sizes_and_log_std_bounds_are_checked():
    from latentplan.planners.policy import GaussianPolicy, PolicyPlanner

    with pytest.raises(ValueError, match="must be finite"):
        PolicyConfig(max_log_std=math.inf)  # gave log_std = inf and NaN samples
    with pytest.raises(ValueError, match="must be finite"):
        PolicyConfig(min_log_std=-math.inf)
    with pytest.raises(ValueError, match="feature_dim and action_dim must be ints >= 1; got 2.5, 1"):
        GaussianPolicy(2.5, 1, [-1.0], [1.0])
    policy = GaussianPolicy(1, 1, [-1.0], [1.0], PolicyConfig(hidden=4))
    for h in (2.5, True, 0):
        with pytest.raises(ValueError, match="horizon must be an int >= 1"):
            PolicyPlanner(policy, horizon=h)  # 2.5 used to become 2
    assert PolicyPlanner(policy, horizon=np.int64(3)).horizon == 3


def test_dagger_round_counts_the_failed_teacher_labels():
    """beta = 1 with a teacher that always fails: every decision is answered by the agent's fallback,
    and its five labels are counted as skipped, not stored."""
    from latentplan.envs.lqr import LinearQuadratic

    env = LinearQuadratic(action_bound=1.0, horizon=5)
    model = AnalyticModel.linear(env.A, env.B, env.Q, action_bound=1.0)
    d = Distiller(DistillConfig(policy=PolicyConfig(hidden=4)), 2, 1, model.action_low, model.action_high)
    res = dagger_round(env, model, d, _Teacher(u=math.nan), Objective, seeds=[0], beta=1.0)
    assert (res["decisions"], res["teacher_steps"], res["labels"], res["skipped"]) == (5, 5, 0, 5) and len(d) == 0
    res = dagger_round(env, model, d, _Teacher(u=math.nan), Objective, seeds=[1], beta=0.0)
    assert (res["teacher_steps"], res["labels"], res["skipped"]) == (0, 0, 5) and d.skipped == 10


def test_a_teacher_that_scores_zero_gives_a_nan_ratio_not_a_crash(monkeypatch):
    """On a sparse task the teacher fails (mean return 0.0), `return_ratio` was a ZeroDivisionError raised
    after the whole run and before any file was written; now it is NaN (the evaluate stage, stubbed)."""
    import latentplan.distillation as facade

    scores = {"student eval": 3.0, "teacher eval": 0.0}
    monkeypatch.setattr(facade, "evaluate_planner", lambda *a, desc, **kw: {"mean": scores[desc]})
    run = object.__new__(facade._DistillRun)
    run.cfg = DistillRunConfig(checkpoint="c", eval_episodes=2, progress=False)
    run.env = run.model = run.teacher = run.factory = None
    run.distiller, run.metrics = _distiller(), {}
    run.evaluate()
    assert math.isnan(run.metrics["return_ratio"]) and run.metrics["student"]["mean"] == 3.0
    scores["teacher eval"] = 4.0
    run.evaluate()
    assert run.metrics["return_ratio"] == 0.75 and run.metrics["return_difference"] == -1.0
    scores.update({"student eval": -859.0, "teacher eval": -794.0})  # negative returns: no ratio, the difference
    run.evaluate()
    assert math.isnan(run.metrics["return_ratio"]) and run.metrics["return_difference"] == -65.0
    text = facade.run_state.metrics_text(run.metrics)  # metrics.json: standard JSON, NaN as null
    assert json.loads(text)["return_ratio"] is None and "NaN" not in text
