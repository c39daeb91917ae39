"""Plan2Explore: the vmapped ensemble equals a loop over its members, disagreement's exact values as a
reward term on a tiny analytic world, planners maximise it, training pairs, coverage, and
task-free training that checkpoints and resumes."""

import json

import numpy as np
import pytest
import torch

import latentplan as lp
from latentplan import training as train_mod
from latentplan.exploration import ExploreTrainer, coverage, load_explored, make_trainer, transition_pairs
from latentplan.planners import CEM, CEMConfig, GradientConfig, GradientPlanner, ILQR, ILQRConfig, MPPI, MPPIConfig
from latentplan.planners import Objective, disagreement, learned_reward
from latentplan.worldmodels import AnalyticModel, EnsembleConfig, LatentState, PredictorEnsemble


def _line(x: int) -> AnalyticModel:
    """x' = x + u in 1-D, u in [-1, 1], learned reward -x'^2."""
    return AnalyticModel(lambda x, u: x + u, lambda x: -x[:, 0] ** 2, 1, [-1.0], [1.0])


def _two_members(condition: str, offset: float = 0.0) -> PredictorEnsemble:
    """K = 2, one hidden unit: member 0 predicts 0, member 1 predicts its last input v plus `offset` (v is
    the action u for `transition`, x' for `arrival`): the disagreement is (v + offset)^2 / 4 exactly."""
    in_dim = 2 if condition == "transition" else 1
    ens = PredictorEnsemble(EnsembleConfig(members=2, hidden=1, layers=1, condition=condition), in_dim, 1)
    with torch.no_grad():
        for p in ens.params.values():
            p.zero_()
        ens.params["net__0__weight"][1, 0, -1] = 1.0   # hidden = ELU(v + 10) = v + 10 for v > -10
        ens.params["net__0__bias"][1, 0] = 10.0
        ens.params["net__2__weight"][1, 0, 0] = 1.0
        ens.params["net__2__bias"][1, 0] = offset - 10.0
    return ens


def test_vmapped_ensemble_equals_a_python_loop_over_members():
    g = torch.Generator().manual_seed(0)
    ens = PredictorEnsemble(EnsembleConfig(members=5, hidden=32, layers=2), 12, 7, generator=g)
    x = torch.randn(64, 12, generator=g)
    out = ens(x)
    assert out.shape == (5, 64, 7)
    torch.testing.assert_close(out, ens.forward_loop(x), rtol=1e-5, atol=1e-6)
    for k in range(5):  # and each member equals an ordinary MLP holding member k's weights
        mlp = lp.worldmodels.MLP(12, 7, 32, 2)
        mlp.load_state_dict({n.replace("__", "."): p[k] for n, p in ens.params.items()})
        torch.testing.assert_close(out[k], mlp(x), rtol=1e-5, atol=1e-6)
    # gradients: the summed loss gives every member its own loss's gradient
    y = torch.randn(64, 7, generator=g)
    ens.loss(x, y).backward()
    mlp.zero_grad()
    (0.5 * ((mlp(x) - y) ** 2).sum(-1).mean()).backward()
    torch.testing.assert_close(ens.params["net__0__weight"].grad[4], mlp.net[0].weight.grad, rtol=1e-5, atol=1e-6)


def test_disagreement_is_the_population_variance_averaged_over_outputs():
    ens = PredictorEnsemble(EnsembleConfig(members=3, hidden=4, layers=1), 2, 2)
    with torch.no_grad():
        for p in ens.params.values():
            p.zero_()
        ens.params["net__2__bias"].copy_(torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]))
    # dim 0: {0, 1, 2} -> 2/3; dim 1: {0, 2, 4} -> 8/3; mean 5/3
    torch.testing.assert_close(ens.disagreement(torch.randn(4, 2)), torch.full((4,), 5.0 / 3.0))
    with pytest.raises(ValueError, match=r"inputs must be \[N, 2\]"):
        ens(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="members must be an int >= 2"):
        EnsembleConfig(members=1)


def test_disagreement_term_exact_returns_and_composition():
    model, start = _line(1), LatentState(torch.ones(1, 1), torch.zeros(1, 0))
    actions = torch.tensor([[[0.5], [-1.0]]])  # x: 1 -> 1.5 -> 0.5
    explore = disagreement(_two_members("transition"))
    assert explore.stage == "transition" and explore.name == "disagreement"
    # disagreement u^2/4: 0.0625 + 0.25
    torch.testing.assert_close(Objective(model, rewards=[explore]).returns(start, actions), torch.tensor([0.3125]))
    # task + 0.5 * disagreement: -(2.25 + 0.25) + 0.15625
    directed = learned_reward() + 0.5 * explore
    assert directed.name == "learned_reward + 0.5*disagreement"
    torch.testing.assert_close(Objective(model, rewards=[directed]).returns(start, actions), torch.tensor([-2.34375]))
    # arrival: members read x', disagreement x'^2 / 4: (2.25 + 0.25) / 4
    arrival = disagreement(_two_members("arrival"))
    assert arrival.stage == "arrival"
    torch.testing.assert_close(Objective(model, rewards=[arrival]).returns(start, actions), torch.tensor([0.625]))
    with pytest.raises(TypeError, match="PredictorEnsemble"):
        disagreement(object())


@pytest.mark.parametrize("make", [
    lambda: CEM(CEMConfig(horizon=3, iterations=4, candidates=64, elites=8)),
    lambda: MPPI(MPPIConfig(horizon=3, iterations=4, samples=64)),
    lambda: GradientPlanner(GradientConfig(optimizer="adam", horizon=3, iterations=30, restarts=4, lr=0.3)),
], ids=["cem", "mppi", "gradient"])
def test_planners_maximise_disagreement(make):
    """Disagreement (u + 1)^2 / 4 is largest at u = 1 (1 per step): every planner finds it."""
    model = _line(1)
    obj = Objective(model, rewards=[disagreement(_two_members("transition", offset=1.0))])
    plan = make().plan(obj, LatentState(torch.zeros(2, 1), torch.zeros(2, 0)), generator=torch.Generator().manual_seed(0))
    assert plan.actions.min() > 0.8
    assert float(plan.value.min()) > 0.9 * 3


def test_ilqr_plans_with_the_arrival_form_and_names_the_transition_form():
    model = _line(1)
    start = LatentState(torch.full((1, 1), 0.5), torch.zeros(1, 0))
    obj = Objective(model, rewards=[disagreement(_two_members("arrival"))])  # x'^2/4: move away from 0
    plan = ILQR(ILQRConfig(horizon=3)).plan(obj, start)
    zero = obj.returns(start, torch.zeros(1, 3, 1)).detach()
    assert float(plan.value.detach()) > float(zero) and float(plan.actions[0, 0, 0]) > 0.9
    with pytest.raises(ValueError, match="disagreement"):
        ILQR(ILQRConfig(horizon=3)).plan(Objective(model, rewards=[disagreement(_two_members("transition"))]), start)


def test_transition_pairs_skip_episode_starts():
    model = lp.RSSMWorldModel(lp.RSSMConfig(obs_shape=(3,), action_dim=1, deter=4, stoch=2, hidden=8, embed=5))
    b, t = 2, 4
    batch = {"obs": torch.randn(b, t, 3), "action": torch.randn(b, t, 1), "is_first": torch.zeros(b, t, dtype=torch.bool)}
    batch["is_first"][1, 2] = True  # row 1's pair (1 -> 2) crosses an episode start
    post = LatentState(torch.randn(b * t, 4), torch.randn(b * t, 2))
    x, y = transition_pairs(model, batch, post, EnsembleConfig())
    assert x.shape == (5, 4 + 2 + 1) and y.shape == (5, 5)
    # row 1's pairs are (0 -> 1) and (2 -> 3): the 5th input is s_2 of row 1 and the action a_3
    torch.testing.assert_close(x[4], torch.cat([post.deter[6], post.stoch[6], batch["action"][1, 3]]))
    torch.testing.assert_close(y[4], model.embed(batch["obs"][1, 3:4])[0])
    xs, ys = transition_pairs(model, batch, post, EnsembleConfig(condition="arrival", target="stoch"))
    torch.testing.assert_close(xs[0], post.deter[1])
    torch.testing.assert_close(ys[0], post.stoch[1])


def test_coverage_counts_visited_cells():
    share, counts = coverage(np.array([[0.1, 0.1], [0.2, 0.2], [0.9, 0.1], [5.0, -5.0]]), (0, 0), (1, 1), (2, 2))
    # cells (0, 0) twice, (1, 0) once, and the clipped point in (1, 0): 2 of 4 cells
    assert share == 0.5 and counts.tolist() == [[2, 0], [2, 0]]
    with pytest.raises(ValueError, match="low < high"):
        coverage(np.zeros((1, 2)), (0, 0), (0, 1))
    # three dimensions: 2 of 8 cells
    share3, _ = coverage(np.array([[0.1, 0.1, 0.1], [0.9, 0.9, 0.9]]), (0, 0, 0), (1, 1, 1), (2, 2, 2))
    assert share3 == 0.25
    with pytest.raises(ValueError, match=r"points must be \[N, 2\]"):
        coverage(np.zeros((1, 3)), (0, 0), (1, 1))


TINY = dict(
    env="gym:Pendulum-v1", action_repeat=4, episodes=4, seed_episodes=2, updates_per_episode=3, batch_size=4,
    chunk_length=8, eval_every=1, final_eval_episodes=1, progress=False, device="cpu", explore=True,
    model=lp.RSSMConfig(deter=8, stoch=4, hidden=8, embed=8),
    planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
    ensemble=EnsembleConfig(hidden=8),
)


def _rows(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s" and not k.endswith("_ms")} for r in rows]


@pytest.mark.slow  # about 6 s alone, 17 s on a loaded machine
def test_explore_training_checkpoints_and_resumes_identically(tmp_path, monkeypatch):
    cfg = lp.TrainConfig(**TINY, run_dir=str(tmp_path / "full"))
    with pytest.raises(ValueError, match="ExploreTrainer"):
        lp.Trainer(cfg)
    full = make_trainer(cfg)
    assert isinstance(full, ExploreTrainer)
    assert full.agent.make_objective(full.model).rewards[0].name == "disagreement"
    full.run()
    rows = _rows(tmp_path / "full")
    assert "ensemble_loss" in rows[2] and "eval_return" in rows[2]
    real, calls = train_mod.run_episode, {"n": 0}

    def dying(env, agent, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # seed episodes, episode 3 and its evaluation ran; episode 4 "dies"
            raise KeyboardInterrupt("killed")
        return real(env, agent, **kw)

    monkeypatch.setattr(train_mod, "run_episode", dying)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(lp.TrainConfig(**TINY, run_dir=str(tmp_path / "split"))).run()
    monkeypatch.setattr(train_mod, "run_episode", real)
    make_trainer(lp.TrainConfig(**TINY, run_dir=str(tmp_path / "split"), resume=True)).run()
    assert _rows(tmp_path / "split") == rows
    _, a, _ = load_explored(tmp_path / "full")
    _, b, _ = load_explored(tmp_path / "split")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(lp.CheckpointMismatch, match="ensemble"):  # another ensemble cannot resume it
        make_trainer(lp.TrainConfig(**{**TINY, "ensemble": EnsembleConfig(members=3, hidden=8), "episodes": 5},
                                    run_dir=str(tmp_path / "full"), resume=True))
