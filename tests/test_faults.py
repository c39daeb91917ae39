"""Faults a user meets, injected: each is handled, nothing is lost, nothing fails silently.

Training: two runs started together into one folder; a divergent run; torn files; files that are
not checkpoints.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import latentplan as lp
from latentplan import io

TINY = dict(
    env="dmc:cartpole-swingup", episodes=4, seed_episodes=2, updates_per_episode=3, batch_size=4,
    chunk_length=10, eval_every=10, final_eval_episodes=0, progress=False, device="cpu",
    model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
    planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
)

_TRAIN = [sys.executable, "-m", "latentplan.cli", "train", "--episodes", "3", "--seed-episodes", "2",
          "--updates-per-episode", "2", "--batch-size", "4", "--chunk-length", "8", "--final-eval-episodes", "0",
          "--no-progress", "--device", "cpu", "--model.deter", "8", "--model.stoch", "2", "--model.hidden", "8",
          "--model.embed", "8", "--planner.horizon", "2", "--planner.iterations", "1", "--planner.candidates", "8",
          "--planner.elites", "2"]


def test_two_trainings_started_together_into_one_folder(tmp_path):
    """Exactly one runs; the other exits with code 2 and a message naming the lock's holder."""
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([*_TRAIN, "--run-dir", str(tmp_path / "run"), "--seed", str(seed)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (0, 1)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert "is in use by pid" in loser and "choose another --run-dir" in loser
    winner_seed = next(seed for seed, (code, _, _) in zip((0, 1), results) if code == 0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    _, ckpt_config, _ = lp.load_checkpoint(tmp_path / "run")
    assert config["seed"] == ckpt_config.seed == winner_seed  # one run's files only
    assert [r["episode"] for r in io.read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_a_lock_is_released_when_the_run_ends_or_fails(tmp_path):
    cfg = lp.TrainConfig(**{**TINY, "run_dir": str(tmp_path / "run")})
    with io.RunLock(tmp_path / "run"):
        with pytest.raises(io.RunFolderLocked, match=f"pid {os.getpid()}"):
            lp.Trainer(cfg)
    lp.Trainer(cfg).run()
    with io.RunLock(tmp_path / "run") as lock:  # free again after run()
        assert lock.held
    with pytest.raises(FileExistsError):  # refused, and the refusal released the lock too
        lp.Trainer(cfg)
    io.RunLock(tmp_path / "run").release()


def test_a_divergent_run_keeps_its_last_good_checkpoint_and_stops(tmp_path):
    """NaN injected into the loss from the 7th update on: updates are skipped and counted, the run stops
    with NonFiniteTraining after `max_nonfinite_updates` in a row, and the checkpoint on disk is the
    last good one (finite weights, resumable)."""
    cfg = lp.TrainConfig(**{**TINY, "run_dir": str(tmp_path / "run"), "episodes": 8, "max_nonfinite_updates": 4})
    trainer = lp.Trainer(cfg)
    elbo = trainer.model.elbo
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        terms = elbo(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 6:
            terms = dataclasses.replace(terms, loss=terms.loss * float("nan"))
        return terms

    trainer.model.elbo = poisoned
    with pytest.raises(lp.training.NonFiniteTraining, match="4 model updates in a row.*last good checkpoint"):
        trainer.run()
    # updates 1-6 were finite (episodes 3 and 4 of 3 updates each); 7-9 skipped before episode 5, 10 stopped it
    rows = io.read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["episode"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["skipped_updates"] == 3
    model, _, envelope = lp.load_checkpoint(tmp_path / "run")
    assert envelope.state["episode"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with lp.Trainer(lp.TrainConfig(**{**TINY, "run_dir": str(tmp_path / "run"), "episodes": 8, "resume": True})) as t:
        assert t.episode == 5


def test_weights_that_became_non_finite_are_never_saved(tmp_path):
    cfg = lp.TrainConfig(**{**TINY, "run_dir": str(tmp_path / "run"), "episodes": 3})
    with lp.Trainer(cfg) as trainer:
        trainer.t_start = 0.0
        good = trainer.save_checkpoint().read_bytes()
        with torch.no_grad():
            next(trainer.model.parameters()).fill_(float("inf"))
        with pytest.raises(lp.training.NonFiniteTraining, match="weights became non-finite"):
            trainer.save_checkpoint()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == good


@pytest.mark.parametrize("content", [b"", b"\x00\x01 random bytes", b"PK\x03\x04 truncated zip"])
def test_a_file_that_is_not_a_checkpoint_is_one_named_error(tmp_path, content, capsys):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(io.CheckpointError, match=str(path)):
        lp.load_checkpoint(path)
    from latentplan.cli import main

    assert main(["control", "--checkpoint", str(path), "--steps", "1"]) == 2
    assert str(path) in capsys.readouterr().err


def test_a_truncated_config_json_does_not_stop_a_resume(tmp_path):
    """The checkpoint holds the run's config; a config.json cut short by a kill is not needed."""
    cfg = lp.TrainConfig(**{**TINY, "run_dir": str(tmp_path / "run"), "episodes": 3})
    lp.Trainer(cfg).run()
    (tmp_path / "run" / "config.json").write_text('{"env": "dmc:cartp')
    from latentplan.cli import main

    code = main(["train", "--run-dir", str(tmp_path / "run"), "--resume", "--episodes", "4", "--no-progress"])
    assert code == 0
    assert lp.load_checkpoint(tmp_path / "run")[2].state["episode"] == 4


def test_unknown_names_get_one_line_and_a_close_match(tmp_path, capsys):
    from latentplan.cli import main

    assert main(["train", "--env", "dmc:cartpole-swingupp", "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentplan train: unknown dm_control task cartpole-swingupp; did you mean "
                          "dmc:cartpole-swingup") and err.count("\n") == 1
    with pytest.raises(ValueError, match="unknown planner 'icme'; did you mean 'icem'"):
        lp.make_planner("icme", lp.AnalyticModel.linear([[1.0]], [[1.0]], [[1.0]]))


def test_wrong_types_at_the_objective_and_the_planners_are_named():
    model = lp.AnalyticModel.linear([[1.0]], [[1.0]], [[1.0]])
    with pytest.raises(TypeError, match="Objective: rewards must be a reward term.*got int 5"):
        lp.Objective(model, rewards=5)
    with pytest.raises(ValueError, match=r"CEMConfig.horizon must be an int >= 1; got 2.5"):
        lp.CEMConfig(horizon=2.5)
    cem = lp.CEM(horizon=2, iterations=1, candidates=4, elites=2)
    belief = lp.LatentState(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 0, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"AnalyticModel.imagine_step: state.deter must be \[4, 1\] float32.*float64"):
        cem.plan(lp.Objective(model), belief, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_training_killed_at_random_moments_resumes_to_the_uninterrupted_run(tmp_path):
    """SIGKILL at seeded random moments, then `--resume`, until the run is done: after every kill the
    checkpoint loads (or there is none yet), at most the episode in flight is lost, the lock is free
    again, and the final metrics and weights equal an uninterrupted run's."""
    import random
    import signal
    import time

    args = ["--episodes", "6", "--seed-episodes", "2", "--updates-per-episode", "4", "--batch-size", "4",
            "--chunk-length", "8", "--final-eval-episodes", "0", "--eval-every", "2", "--no-progress", "--device", "cpu",
            "--model.deter", "16", "--model.stoch", "4", "--model.hidden", "16", "--model.embed", "16",
            "--planner.horizon", "3", "--planner.iterations", "2", "--planner.candidates", "16", "--planner.elites", "4"]
    base = [sys.executable, "-m", "latentplan.cli", "train", *args]
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([*base, "--run-dir", str(tmp_path / "ref")], env=env, check=True, capture_output=True, timeout=600)
    full = time.perf_counter() - t0
    rng, run, kills = random.Random(0), tmp_path / "killed", 0
    for attempt in range(20):
        cmd = [*base, "--run-dir", str(run)] + (["--resume"] if attempt else [])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            proc.wait(timeout=rng.uniform(0.3, 0.8) * full if kills < 4 else 600)
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        if (run / "checkpoint.pt").exists():
            _, _, envelope = lp.load_checkpoint(run)  # always whole: written atomically
            logged = [r["episode"] for r in io.read_jsonl(run / "metrics.jsonl")] if (run / "metrics.jsonl").exists() else []
            assert max(logged, default=0) - envelope.state["episode"] <= 1  # at most the episode in flight
        with io.RunLock(run):  # the killed process's lock died with it
            pass
    assert kills >= 1

    def stripped(d):
        return [{k: v for k, v in r.items() if k != "wall_s" and not k.endswith("_ms")} for r in io.read_jsonl(d / "metrics.jsonl")]

    assert stripped(run) == stripped(tmp_path / "ref")
    a, b = lp.load_checkpoint(run)[0].state_dict(), lp.load_checkpoint(tmp_path / "ref")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
