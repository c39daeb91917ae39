"""Training runs, checkpoints, resume and the command line on bad or unusual input: each case
asserts the error type and the field it names, or numbers identical to an uninterrupted run."""

import json
import shutil
import types

import pytest
import torch

import latentplan as lp
from latentplan import io
from latentplan import training as train_mod
from latentplan.cli import main
from latentplan.compare import compare

TINY = dict(
    env="gym:Pendulum-v1", action_repeat=8, episodes=4, seed_episodes=1, updates_per_episode=2, batch_size=4,
    chunk_length=8, eval_every=1, final_eval_episodes=1, progress=False, device="cpu",
    model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
    planner=lp.CEMConfig(horizon=4, iterations=2, candidates=16, elites=4),
)
FLAGS = ["--env", "gym:Pendulum-v1", "--action-repeat", "8", "--seed-episodes", "1", "--updates-per-episode", "2",
         "--batch-size", "4", "--chunk-length", "8", "--eval-every", "1", "--final-eval-episodes", "1",
         "--no-progress", "--device", "cpu", "--model.deter", "16", "--model.stoch", "4", "--model.hidden", "16",
         "--model.embed", "16", "--planner.horizon", "4", "--planner.iterations", "2", "--planner.candidates", "16",
         "--planner.elites", "4"]


def _config(run_dir, **kw):
    return lp.TrainConfig(**{**TINY, "run_dir": str(run_dir), **kw})


def _rows(run_dir):
    """metrics.jsonl without the timings (which differ between runs)."""
    rows = io.read_jsonl(run_dir / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k != "wall_s" and not k.endswith("_ms")} for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted tiny run of 4 episodes (an evaluation after each)."""
    run = tmp_path_factory.mktemp("ref") / "ref"
    summary = lp.Trainer(_config(run)).run()
    return run, summary


def _copy(reference, tmp_path, name="copy"):
    shutil.copytree(reference[0], tmp_path / name, ignore=shutil.ignore_patterns(".lock"))
    return tmp_path / name


def _one_line(err):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ 1: an extended run, killed, resumed plainly
def test_a_plain_resume_continues_an_extended_and_killed_run_to_its_extended_length(tmp_path, monkeypatch, reference):
    run = tmp_path / "r"
    assert main(["train", "--run-dir", str(run), "--episodes", "2", *FLAGS]) == 0
    real, calls = train_mod.run_episode, {"n": 0}

    def killed_at_episode_4(env, agent, **kw):  # session 2 dies while collecting episode 4
        if agent is not None and kw.get("noise", 0.0) > 0:
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
        return real(env, agent, **kw)

    monkeypatch.setattr(train_mod, "run_episode", killed_at_episode_4)
    assert main(["train", "--run-dir", str(run), "--resume", "--episodes", "4"]) == 130
    assert json.loads((run / "config.json").read_text())["episodes"] == 4  # rewritten by the resume
    monkeypatch.setattr(train_mod, "run_episode", real)
    assert main(["train", "--run-dir", str(run), "--resume"]) == 0  # no flags: the latest session's config
    _, config, envelope = lp.load_checkpoint(run)
    assert config.episodes == 4 and envelope.state["episode"] == 4
    # an evaluation after every episode: the extended, killed and resumed run is the uninterrupted one
    assert _rows(run) == _rows(reference[0])


# ------------------------------------------------------------------ 3, 15: nothing is deleted or left by a failed start
def test_overwrite_with_a_typo_leaves_the_old_run_intact(tmp_path, reference, capsys):
    run = _copy(reference, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(ValueError, match="Pendulm-v1"):
        lp.Trainer(_config(run, env="gym:Pendulm-v1", overwrite=True))
    assert main(["train", "--run-dir", str(run), *FLAGS, "--env", "gym:Pendulm-v1", "--overwrite"]) == 2
    assert "Pendulm-v1" in _one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
    assert len(list((run / "episodes").glob("*.npz"))) == 4


def test_overwrite_numbers_the_new_runs_episodes_from_zero(tmp_path, reference):
    run = _copy(reference, tmp_path)
    lp.Trainer(_config(run, episodes=2, overwrite=True)).run()
    assert sorted(p.name for p in (run / "episodes").glob("*.npz")) == ["000000.npz", "000001.npz"]


def test_a_failure_after_episodes_were_collected_keeps_them(tmp_path, monkeypatch):
    # no checkpoint before episode 5 (checkpoint_every=5), a failure in episode 3: the collected
    # episodes and metrics stay (they show what happened); only a failure before anything was
    # collected leaves the folder empty (test above)
    run = tmp_path / "r"
    trainer = lp.Trainer(_config(run, episodes=4, checkpoint_every=5))
    real = trainer.update
    calls = []

    def failing_update():
        calls.append(1)
        if len(calls) > 2:  # the updates before episode 3 (2 per episode after 1 seed episode)
            raise RuntimeError("update failed")
        return real()

    monkeypatch.setattr(trainer, "update", failing_update)
    with pytest.raises(RuntimeError, match="update failed"):
        trainer.run()
    assert not (run / "checkpoint.pt").exists()
    assert len(list((run / "episodes").glob("*.npz"))) == 2 and len(io.read_jsonl(run / "metrics.jsonl")) == 2


class _Broken:
    """An env whose first reset fails as a pixel env without a renderer does."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def reset(self, **kw):
        raise RuntimeError("gym:Pendulum-v1: rendering failed (no display)")


def test_an_env_failing_at_start_is_one_line_and_leaves_the_folder_free(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    real = train_mod.lp_envs.make
    monkeypatch.setattr(train_mod.lp_envs, "make", lambda *a, **kw: _Broken(real(*a, **kw)))
    assert main(["train", "--run-dir", str(run), "--episodes", "2", *FLAGS]) == 2
    assert _one_line(capsys.readouterr().err) == (
        "latentplan train: gym:Pendulum-v1: rendering failed (no display)")
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # no config.json to block the corrected run
    monkeypatch.setattr(train_mod.lp_envs, "make", real)
    assert main(["train", "--run-dir", str(run), "--episodes", "1", *FLAGS]) == 0


# ------------------------------------------------------------------ 5: a wall-limited run, resumed
def test_a_wall_limited_run_resumed_equals_the_uninterrupted_run(tmp_path, monkeypatch, reference):
    run = tmp_path / "r"
    trainer = lp.Trainer(_config(run, max_wall_minutes=1.5))
    real = train_mod.time.perf_counter
    # a clock on which every collected episode takes a minute: the limit stops the run after 2
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=lambda: real() + 60 * trainer.episode))
    summary = trainer.run()
    assert summary.stopped_early and summary.episodes == 2
    stopped = io.read_jsonl(run / "metrics.jsonl")[-1]
    assert stopped["stopped_early"] and stopped["episode"] == 2
    for _ in range(2):  # resumed under the same (spent) limit: still one row for the stop, not one per resume
        assert lp.Trainer(_config(run, max_wall_minutes=1.5, resume=True)).run().episodes == 2
        assert sum(bool(r.get("stopped_early")) for r in io.read_jsonl(run / "metrics.jsonl")) == 1
    monkeypatch.setattr(train_mod, "time", __import__("time"))
    resumed = lp.Trainer(_config(run, resume=True)).run()
    assert _rows(run) == _rows(reference[0])
    assert resumed.final_returns == reference[1].final_returns
    assert resumed.best_eval_return == reference[1].best_eval_return


# ------------------------------------------------------------------ 6, 7, 14, 12: the command line
def test_bad_device_is_refused_naming_it(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"TrainConfig.device must be .*got 'gpu'"):
        lp.TrainConfig(device="gpu")
    assert main(["train", "--run-dir", str(tmp_path / "r"), *FLAGS, "--device", "gpu"]) == 2
    assert "device" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_run_folder_that_is_a_file_or_below_one_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(["train", "--run-dir", str(afile), *FLAGS]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"latentplan train: the run folder {afile} is a file; choose another --run-dir")
    with pytest.raises(FileExistsError, match=f"lies below {afile}, which is a file"):
        lp.Trainer(_config(afile / "sub"))
    assert afile.read_text() == "not a folder"


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    real, calls = train_mod.run_episode, {"n": 0}

    def interrupted(env, agent, **kw):
        calls["n"] += 1
        if calls["n"] == 4:  # seed episode 1, episode 2, its evaluation, then Ctrl-C in episode 3
            raise KeyboardInterrupt
        return real(env, agent, **kw)

    monkeypatch.setattr(train_mod, "run_episode", interrupted)
    assert main(["train", "--run-dir", str(run), "--episodes", "3", *FLAGS]) == 130
    line = _one_line(capsys.readouterr().err)
    assert line == (f"interrupted at episode 3: the checkpoint of episode 2 ({run}/checkpoint.pt) is kept; "
                    f"continue with: latentplan train --run-dir {run} --resume")


def test_resume_of_a_folder_with_nothing_to_resume(tmp_path, capsys):
    missing = tmp_path / "typo"
    assert main(["train", "--run-dir", str(missing), "--resume"]) == 2
    assert _one_line(capsys.readouterr().err) == (
        f"latentplan train: nothing to resume in {missing}: it holds no checkpoint.pt and no config.json; drop "
        "--resume to start a new run there")
    assert not missing.exists()
    # with a config given by flags, a new run starts there, and says so
    assert main(["train", "--run-dir", str(missing), "--resume", "--episodes", "1", *FLAGS]) == 0
    assert "starting a new run from the flags given" in capsys.readouterr().err
    assert lp.load_checkpoint(missing)[2].state["episode"] == 1
    # stopped before its first checkpoint: its config.json starts it afresh, and says so
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_text(json.dumps(_config(started, episodes=1).to_dict()))
    assert main(["train", "--run-dir", str(started), "--resume"]) == 0
    assert "holds no checkpoint yet" in capsys.readouterr().err
    assert lp.load_checkpoint(started)[2].state["episode"] == 1


def test_resume_with_run_dir_spelled_with_an_underscore(tmp_path, reference, capsys):
    run = _copy(reference, tmp_path)
    assert main(["train", "--run_dir", str(run), "--resume", "--final-eval-episodes", "0"]) == 0
    assert "episodes" in capsys.readouterr().out and lp.load_checkpoint(run)[1].episodes == 4


# ------------------------------------------------------------------ 8, 9: the resume checks
def test_a_changed_env_names_the_filled_model_fields(tmp_path, reference):
    run = _copy(reference, tmp_path)
    with pytest.raises(lp.CheckpointMismatch) as err:
        lp.Trainer(_config(run, env="gym:MountainCarContinuous-v0", resume=True))
    msg = str(err.value)
    assert "env: checkpoint 'gym:Pendulum-v1', now 'gym:MountainCarContinuous-v0'" in msg
    assert "model.obs_shape: checkpoint [3], now [2]" in msg
    assert "{" not in msg  # fields, not whole config dicts


def test_lr_and_grad_clip_may_change_on_resume(tmp_path, reference):
    run = _copy(reference, tmp_path)
    with lp.Trainer(_config(run, resume=True, lr=1e-4, grad_clip=10.0)) as trainer:
        assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-4]
        assert trainer.config.grad_clip == 10.0 and trainer.episode == 4
    assert json.loads((run / "config.json").read_text())["lr"] == 1e-4
    assert lp.load_checkpoint(run)[1].lr == 1e-4  # the plain --resume after this one keeps it


# ------------------------------------------------------------------ 10, 11: checkpoint files
def test_malformed_envelopes_raise_checkpoint_error_naming_the_problem(tmp_path, reference):
    good = io.load(reference[0] / "checkpoint.pt", "run")
    path = tmp_path / "c.pt"
    io.save(path, "run", good.config, {k: v for k, v in good.state.items() if k != "model"})
    with pytest.raises(io.CheckpointError, match="no model weights"):
        lp.load_checkpoint(path)
    io.save(path, "run", {**good.config, "train": {**good.config["train"], "bogus": 1}}, good.state)
    with pytest.raises(io.CheckpointError, match="does not fit this version.*bogus"):
        lp.load_checkpoint(path)
    io.save(path, "run", {**good.config, "model": {**good.config["model"], "deter": 32}}, good.state)
    with pytest.raises(io.CheckpointError, match="weights do not fit its model config.*size mismatch"):
        lp.load_checkpoint(path)


def test_load_checkpoint_checks_the_device_before_the_file(tmp_path):
    with pytest.raises(ValueError, match="'bogus' is not a torch device"):
        lp.load_checkpoint(tmp_path / "nothing-here", device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' asked for, but CUDA is not available"):
            lp.load_checkpoint(tmp_path / "nothing-here", device="cuda")


def test_a_flipped_byte_inside_a_weight_is_refused(tmp_path, reference):
    path = tmp_path / "checkpoint.pt"
    shutil.copy(reference[0] / "checkpoint.pt", path)
    data = bytearray(path.read_bytes())
    weight = io.load(path, "run").state["model"]["pre_gru.weight"]
    at = bytes(data).find(weight.numpy().tobytes())
    assert at > 0
    data[at + 5] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(io.CheckpointError, match="corrupted: its content does not match the SHA-256 digest"):
        lp.load_checkpoint(path)
    # a checkpoint written before the digest (no `sha256`) still loads
    blob = torch.load(reference[0] / "checkpoint.pt", weights_only=True)
    del blob["sha256"]
    torch.save(blob, path)
    model, _, _ = lp.load_checkpoint(path)
    assert torch.equal(model.state_dict()["pre_gru.weight"], weight)


# ------------------------------------------------------------------ 2: compare keyed on the checkpoint's content
def test_compare_does_not_reuse_cells_of_another_model_at_the_same_path(tmp_path, reference):
    other = tmp_path / "other"
    lp.Trainer(_config(other, episodes=2, final_eval_episodes=0, seed=1)).run()
    ckpt = tmp_path / "model" / "checkpoint.pt"
    ckpt.parent.mkdir()
    budget = [lp.Budget(evals=64)]
    kw = dict(episodes=1, budgets=budget, horizon=4, max_decisions=3, progress=False)
    shutil.copy(reference[0] / "checkpoint.pt", ckpt)
    a = compare(str(ckpt), ["cem"], out_dir=tmp_path / "out", **kw)
    shutil.copy(other / "checkpoint.pt", ckpt)  # retrained in place
    b = compare(str(ckpt), ["cem"], out_dir=tmp_path / "out", **kw)
    fresh = compare(str(ckpt), ["cem"], **kw)
    assert a.meta["checkpoint_episode"] == 4 and b.meta["checkpoint_episode"] == 2
    assert b.rows[0]["returns"] == fresh.rows[0]["returns"] != a.rows[0]["returns"]
    assert len(io.read_jsonl(tmp_path / "out" / "cells.jsonl")) == 2
    again = compare(str(ckpt), ["cem"], out_dir=tmp_path / "out", **kw)  # the same model: reused
    assert again.rows[0]["returns"] == b.rows[0]["returns"]
    assert len(io.read_jsonl(tmp_path / "out" / "cells.jsonl")) == 2


def test_a_nan_final_return_is_reported_without_an_interval_and_written_as_standard_json(tmp_path, monkeypatch,
                                                                                         reference):
    """A final evaluation episode whose return is NaN (an env whose reward is NaN) does not crash the
    run at its end: the figure has no interval, the count says why, final_eval.json stays JSON."""
    import dataclasses as dc

    run = _copy(reference, tmp_path)
    real = train_mod.run_episode

    def nan_second(env, agent, **kw):
        episode, st = real(env, agent, **kw)
        nan_second.n = getattr(nan_second, "n", 0) + 1
        return episode, (dc.replace(st, ret=float("nan")) if nan_second.n == 2 else st)

    with lp.Trainer(_config(run, resume=True, final_eval_episodes=3)) as trainer:
        monkeypatch.setattr(train_mod, "run_episode", nan_second)
        out = trainer.final_evaluation()
    assert out["ci95"] is None and out["nonfinite_returns"] == 1 and len(out["returns"]) == 3
    stored = json.loads((run / "final_eval.json").read_text())  # strict JSON: no NaN token
    assert stored["returns"][1] is None and stored["mean"] is None and stored["nonfinite_returns"] == 1
    assert stored["returns"][0] == out["returns"][0]
