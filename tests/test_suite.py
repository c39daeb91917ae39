"""`latentplan suite`: a tiny grid in-process, resume, retries, the report, and the same numbers on Ray."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.stats

import latentplan.suite as suite_mod
from latentplan.cli import main
from latentplan.recipes import recipe_config
from latentplan.suite import SuiteConfig, cells_of, run_suite
from latentplan.suite_report import aggregate

# Pendulum with action repeat 8: 25 decisions, 200 env steps per episode; 3 episodes per cell
TINY = dict(tasks=("gym:Pendulum-v1",), recipes=("tiny",), seeds=(0, 1), steps=600, action_repeat=8,
            final_eval_episodes=2, evaluations=2, ray=False, progress=False)


def numbers(result):
    return [(c["task"], c["recipe"], c["seed"], c["final_returns"], c["curve"], c["env_steps"]) for c in result.cells]


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid")
    return out, run_suite(SuiteConfig(**TINY, out=str(out)))


def test_tiny_grid_in_process(tiny_grid):
    out, result = tiny_grid
    assert [c["status"] for c in result.cells] == ["done", "done"] and result.skipped == 0
    for c in result.cells:
        assert c["episodes"] == 3 and c["env_steps"] == 600 and len(c["final_returns"]) == 2
        assert [s for s, _ in c["curve"]] == [400, 600]  # evaluations after episodes 2 and 3
        assert [s for s, _ in c["train_curve"]] == [200, 400, 600]  # every collected episode
    stored = json.loads((out / "results.json").read_text())
    (row,) = stored["rows"]
    per_seed = [np.mean(c["final_returns"]) for c in result.cells]
    assert row["return_mean"] == pytest.approx(np.mean(per_seed)) and row["ci_over"] == "seeds"
    half = scipy.stats.t.ppf(0.975, 1) * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert row["ci_high"] - row["return_mean"] == pytest.approx(half)
    assert "| gym:Pendulum-v1 | tiny |" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 0
    for c in cells_of(SuiteConfig(**TINY, out=str(out))):
        assert (c.config.run_dir.endswith(f"cells/gym-Pendulum-v1/tiny/seed{c.seed}"))
        assert os.path.exists(os.path.join(c.config.run_dir, "checkpoint.pt"))


def test_a_rerun_skips_done_cells_and_redoes_a_lost_one(tiny_grid, tmp_path):
    out, first = tiny_grid
    kept = out / "cells/gym-Pendulum-v1/tiny/seed0/result.json"
    stamp = kept.stat().st_mtime_ns
    lost = out / "cells/gym-Pendulum-v1/tiny/seed1"
    for p in sorted(lost.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    again = run_suite(SuiteConfig(**TINY, out=str(out)))
    assert again.skipped == 1 and kept.stat().st_mtime_ns == stamp
    assert numbers(again) == numbers(first)  # the lost cell, rerun from scratch, gives the same numbers


def test_a_failing_cell_is_retried_then_reported(monkeypatch, tmp_path):
    real, calls = suite_mod.run_cell, []

    def flaky(cell):
        calls.append(cell.seed)
        if cell.seed == 1 or calls.count(0) == 1:
            raise RuntimeError(f"boom on seed {cell.seed}")
        return real(cell)

    monkeypatch.setattr(suite_mod, "run_cell", flaky)
    result = run_suite(SuiteConfig(**TINY, out=str(tmp_path), retries=2))
    ok, bad = result.cells
    assert ok["status"] == "done" and ok["attempts"] == 2
    assert bad["status"] == "failed" and bad["attempts"] == 3 and "boom on seed 1" in bad["error"]
    assert calls == [0, 0, 1, 1, 1]
    text = (tmp_path / "results.md").read_text()
    assert "1 (+1 failed)" in text and "failed after 3 attempt(s): gym:Pendulum-v1/tiny/seed1" in text
    assert [c["status"] for c in json.loads((tmp_path / "results.json").read_text())["cells"]] == ["done", "failed"]


def test_the_cli_exits_1_when_a_cell_fails(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(suite_mod, "run_cell", lambda cell: (_ for _ in ()).throw(ValueError("no")))
    code = main(["suite", "--tasks", "gym:Pendulum-v1", "--recipes", "tiny", "--steps", "200", "--action-repeat", "8",
                 "--out", str(tmp_path), "--no-ray", "--no-progress", "--retries", "0"])
    assert code == 1 and "failed after 1 attempt(s)" in capsys.readouterr().out


def test_aggregate_over_one_seed_uses_its_episodes():
    cells = [{"task": "t", "recipe": "r", "seed": 0, "status": "done", "final_returns": [1.0, 3.0], "env_steps": 10,
              "episodes": 1, "wall_s": 2.0}]
    (row,) = aggregate(cells + [{"task": "t", "recipe": "r", "seed": 1, "status": "failed"}])
    assert row["ci_over"] == "episodes" and row["return_mean"] == 2.0 and row["failed"] == 1 and row["seeds"] == 1
    assert row["ci_high"] == pytest.approx(2.0 + scipy.stats.t.ppf(0.975, 1))  # s = sqrt(2), n = 2


def test_bad_grids_are_refused_with_what_exists(tmp_path):
    with pytest.raises(ValueError, match="planet, demo, fast, tiny"):
        SuiteConfig(recipes=("plannet",))
    with pytest.raises(ValueError, match="gpus_per_cell"):
        SuiteConfig(gpus_per_cell=1.5)
    with pytest.raises(ValueError, match="distinct"):
        SuiteConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="planet6"):
        SuiteConfig(tasks=("cartpol",))
    assert main(["suite", "--tasks", "dmc:nope-nope", "--out", str(tmp_path), "--no-ray"]) == 2


def test_planet_recipe_is_the_papers():
    c = recipe_config("planet", env="dmc:walker-walk", episodes=100, seed=3, run_dir="x")
    assert (c.planner.horizon, c.planner.iterations, c.planner.candidates, c.planner.elites) == (12, 10, 1000, 100)
    assert (c.model.deter, c.model.stoch, c.model.hidden) == (200, 30, 200)
    assert (c.seed_episodes, c.updates_per_episode, c.batch_size, c.chunk_length) == (5, 100, 50, 50)
    assert (c.exploration_noise, c.lr, c.model.free_nats) == (0.3, 1e-3, 3.0)
    assert recipe_config("planet", env="dmc:walker-walk", episodes=3, seed=0, run_dir="x").seed_episodes == 2
    fast = recipe_config("fast", env="dmc:walker-walk", episodes=100, seed=0, run_dir="x")
    assert fast.plan_with_value and fast.value_every > 0


@pytest.mark.slow
def test_ray_gives_the_same_numbers(tiny_grid, tmp_path):
    pytest.importorskip("ray")
    _, sequential = tiny_grid
    on_ray = run_suite(SuiteConfig(**{**TINY, "ray": True, "workers": 2}, out=str(tmp_path)))
    assert numbers(on_ray) == numbers(sequential)


@pytest.mark.slow
def test_a_killed_grid_resumes_without_redoing_finished_cells(tiny_grid, tmp_path):
    _, whole = tiny_grid
    args = [sys.executable, "-m", "latentplan.cli", "suite", "--tasks", "gym:Pendulum-v1", "--recipes", "tiny",
            "--seeds", "0", "1", "--steps", "600", "--action-repeat", "8", "--final-eval-episodes", "2",
            "--evaluations", "2", "--no-ray", "--no-progress", "--out", str(tmp_path)]
    first = tmp_path / "cells/gym-Pendulum-v1/tiny/seed0/result.json"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not first.exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # seed 1 is in flight (or not started)
    proc.wait()
    stamp = first.stat().st_mtime_ns
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    assert "1 cell(s) were already done and skipped" in out and first.stat().st_mtime_ns == stamp
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert [(c["seed"], c["final_returns"], c["curve"]) for c in resumed["cells"]] == [
        (c["seed"], c["final_returns"], c["curve"]) for c in whole.cells]
