"""The commands that read a checkpoint (`compare`, `control`, `distill`) on tasks other than cartpole-swingup:
a dm_control task with A = 6 and other observation keys (walker-walk, action repeat 2) and a Gymnasium env
(Pendulum-v1: 200-step episodes, action repeat 1). The library is developed on cartpole; these guard the
shapes and names that only other tasks exercise (session 12's sweep over PlaNet's six tasks,
/work/scratch/s12/probe_family/REPORT.md)."""

import json
import math

import pytest

import latentplan as lp
from latentplan.cli import main
from latentplan.registry import available_planners, load_policy


def _tiny_run(run_dir, env: str, episodes: int) -> "object":
    """A tiny RSSM checkpoint on `env`: one random episode, then `episodes - 1` planned ones."""
    config = lp.demo_config(
        env=env, run_dir=str(run_dir), episodes=episodes, seed_episodes=1, updates_per_episode=2, batch_size=4,
        chunk_length=8, final_eval_episodes=0, progress=False, device="cpu", max_wall_minutes=None,
        model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
        planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
    )
    lp.train(config)
    return run_dir / "checkpoint.pt"


@pytest.fixture(scope="module")
def pendulum_checkpoint(tmp_path_factory):
    """One random episode of gym:Pendulum-v1 (200 decisions) and a model that saw it."""
    return _tiny_run(tmp_path_factory.mktemp("pendulum") / "run", "gym:Pendulum-v1", episodes=1)


def test_control_refuses_a_gymnasium_model_naming_its_env(pendulum_checkpoint, capsys):
    # before: SimulatedRobot's internal error ("SimulatedRobot: env must be a dm_control task"), after the
    # action repeat had been looked up in dm_control's table (2) for a gym env (1)
    code = main(["control", "--checkpoint", str(pendulum_checkpoint), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'gym:Pendulum-v1'" in err and "dm_control" in err and "latentplan compare" in err


def test_compare_on_a_gymnasium_model_keeps_the_budget(pendulum_checkpoint, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--checkpoint", str(pendulum_checkpoint), "--planners", "cem", "mppi", "--episodes", "1",
                 "--budget-evals", "240", "--max-decisions", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    rows = {r["planner"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"cem", "mppi"}
    for row in rows.values():  # A = 1, 3 decisions of one step each: Pendulum's reward is in [-16.3, 0] per step
        assert row["decisions"] == 3 and row["model_evals_per_decision"] == 240
        assert -3 * 16.3 <= row["return_mean"] <= 0.0


@pytest.mark.slow
def test_every_planner_and_distill_on_a_six_action_task(tmp_path, capsys):
    """walker-walk (A = 6; `orientations` [14], `height` [1], `velocity` [9]): every registered planner
    through `compare`, a tiny `distill` and its student as the `policy` planner, and `control`."""
    ckpt = _tiny_run(tmp_path / "run", "dmc:walker-walk", episodes=2)
    model, config, _ = lp.load_checkpoint(str(ckpt))
    assert model.config.action_dim == 6 and config.env == "dmc:walker-walk"
    assert [(n, b - a) for n, a, b in model.config.obs_names] == [("orientations", 14), ("height", 1), ("velocity", 9)]

    planners = [p for p in available_planners() if p != "policy"]
    out = tmp_path / "cmp"
    code = main(["compare", "--checkpoint", str(ckpt), "--planners", *planners, "--episodes", "1", "--horizon", "5",
                 "--budget-evals", "400", "--max-decisions", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    rows = {r["planner"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == set(planners)
    for name, row in rows.items():
        assert row["decisions"] == 2 and row["planner_failures"] == 0 and row["fallbacks"] == 0, name
        assert math.isfinite(row["return_mean"]) and 0.0 <= row["return_mean"] <= 2 * 2, name  # reward in [0, 1] x 2 steps
        assert 0 < row["model_evals_per_decision"] <= 400, name
    for name in ("cem", "mppi", "planet"):  # the fixed-size searches spend the budget exactly
        assert rows[name]["model_evals_per_decision"] == 400, name

    dist = tmp_path / "distill"
    code = main(["distill", "--checkpoint", str(ckpt), "--teacher", "cem", "--budget-evals", "100", "--horizon", "5",
                 "--out", str(dist), "--replay-states", "16", "--fit-steps", "5", "--dagger-rounds", "1",
                 "--dagger-episodes", "1", "--dagger-steps", "5", "--eval-episodes", "0", "--no-progress"])
    assert code == 0
    policy = load_policy(str(dist / "policy.pt"), model)
    assert policy is not None
    out2 = tmp_path / "cmp_policy"
    code = main(["compare", "--checkpoint", str(ckpt), "--planners", f"policy:checkpoint={dist / 'policy.pt'}",
                 "--episodes", "1", "--max-decisions", "2", "--out", str(out2), "--no-progress"])
    assert code == 0
    (row,) = json.loads((out2 / "results.json").read_text())["rows"]
    assert row["decisions"] == 2 and row["model_evals_per_decision"] == 0

    code = main(["control", "--checkpoint", str(ckpt), "--planner", "icem", "--budget-evals", "200", "--steps", "3",
                 "--mode", "sync", "--json", str(tmp_path / "control.json")])
    assert code == 0
    assert "2 physics steps of 25 ms per decision, real-time factor 1;" in capsys.readouterr().out  # 20 Hz x 2 x 25 ms
    stats = json.loads((tmp_path / "control.json").read_text())["stats"]
    assert stats["controller"]["steps"] == 3 and stats["invalid_actions"] == 0
    assert stats["robot"]["actions_received"] == 3 and stats["robot"]["actions_rejected"] == 0
