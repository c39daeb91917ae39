"""The training loop: checkpoints that round-trip bit-identically, resume after a kill, config errors, CLI."""

import dataclasses
import json

import pytest
import torch

import latentplan as lp
from latentplan import training as train_mod
from latentplan.cli import main

TINY = dict(
    env="dmc:cartpole-swingup", episodes=4, seed_episodes=2, updates_per_episode=3, batch_size=4,
    chunk_length=10, eval_every=1, final_eval_episodes=3, progress=False, device="cpu",
    model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
    planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
)


def _config(tmp_path, name, **kw):
    return lp.TrainConfig(**{**TINY, "run_dir": str(tmp_path / name), **kw})


def _rows(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # timings differ between runs; everything else must not
        for k in [k for k in r if k == "wall_s" or k.endswith("_ms")]:
            r.pop(k)
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted tiny run of 4 episodes."""
    tmp = tmp_path_factory.mktemp("ref")
    summary = lp.Trainer(_config(tmp, "ref")).run()
    return tmp / "ref", summary


def test_run_writes_metrics_checkpoint_curve_and_episodes(reference):
    run_dir, summary = reference
    rows = _rows(run_dir)
    assert [r["episode"] for r in rows] == [1, 2, 3, 4]
    assert [r["env_steps"] for r in rows] == [1000, 2000, 3000, 4000]  # 125 decisions x repeat 8
    assert "loss" not in rows[0] and "loss" in rows[2]  # seed episodes are not preceded by updates
    assert "eval_return" in rows[2] and "eval_return" in rows[3]
    raw = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert raw[3]["plan_ms"] > 0 and raw[3]["eval_plan_ms"] > 0 and raw[3]["wall_s"] > raw[2]["wall_s"]
    assert (run_dir / "checkpoint.pt").exists() and (run_dir / "curve.png").stat().st_size > 5000
    assert len(list((run_dir / "episodes").glob("*.npz"))) == 4
    assert summary.episodes == 4 and summary.env_steps == 4000
    assert summary.eval_return == rows[3]["eval_return"]
    assert 0 <= summary.eval_return <= 1000


def test_checkpoint_round_trip_gives_bit_identical_plans(reference):
    run_dir, _ = reference
    model, config, ckpt = lp.load_checkpoint(run_dir)
    assert config.model.deter == 16 and ckpt.kind == "run" and ckpt.state["episode"] == 4
    # a second model built and loaded independently plans exactly like the first
    model2, _, _ = lp.load_checkpoint(run_dir / "checkpoint.pt")
    obs = torch.tensor([[0.1, -0.9, 0.2, 0.0, 0.5]])
    plans = []
    for m in (model, model2):
        s = m.observe(m.initial(1), torch.zeros(1, 1), obs, torch.ones(1, dtype=torch.bool), sample=False)
        plans.append(lp.CEM(config.planner).plan(lp.Objective(m), s, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(plans[0].actions, plans[1].actions)
    assert torch.equal(plans[0].value, plans[1].value)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k])


def test_resume_after_a_kill_matches_the_uninterrupted_run(tmp_path, monkeypatch, reference):
    ref_dir, _ = reference
    calls = {"n": 0}
    real = train_mod.run_episode

    def dying(env, agent, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # episodes 1-3 and the evaluation after 3 ran; episode 4 "dies" halfway
            raise KeyboardInterrupt("killed")
        return real(env, agent, **kw)

    monkeypatch.setattr(train_mod, "run_episode", dying)
    with pytest.raises(KeyboardInterrupt):
        lp.Trainer(_config(tmp_path, "run")).run()
    monkeypatch.setattr(train_mod, "run_episode", real)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["episode"] == 3
    summary = lp.Trainer(_config(tmp_path, "run", resume=True)).run()
    assert summary.episodes == 4
    assert _rows(run_dir) == _rows(ref_dir)  # same losses, returns, evaluations
    resumed, _, ck_resumed = lp.load_checkpoint(run_dir)
    ref, _, ck_ref = lp.load_checkpoint(ref_dir)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    # compile="auto"'s count of eager transitions carries over, so the switch comes at the same decision
    assert ck_resumed.state["planner_auto_compile"] == ck_ref.state["planner_auto_compile"] > 0
    assert lp.Trainer(_config(tmp_path, "run", resume=True)).planner.auto_compile_progress == \
        ck_ref.state["planner_auto_compile"]


def test_resume_with_another_config_is_refused(tmp_path, reference):
    ref_dir, _ = reference
    import shutil

    shutil.copytree(ref_dir, tmp_path / "copy")
    bad = _config(tmp_path, "copy", resume=True, model=lp.RSSMConfig(deter=32, stoch=4, hidden=16, embed=16))
    with pytest.raises(lp.CheckpointMismatch, match=r"another config \(model\.deter: checkpoint 16, now 32\)$"):
        lp.Trainer(bad)
    with pytest.raises(lp.CheckpointMismatch, match=r"seed: checkpoint 0, now 5"):
        lp.Trainer(_config(tmp_path, "copy", resume=True, seed=5))
    # a longer run is a legal change: it continues from episode 4
    with lp.Trainer(_config(tmp_path, "copy", resume=True, episodes=6)) as longer:
        assert longer.episode == 4 and len(longer.buffer) == 4


def test_checkpoint_from_before_a_config_field_was_added_resumes(tmp_path, reference):
    """A field added to a config since a checkpoint was written takes its default on resume."""
    ref_dir, _ = reference
    import shutil

    shutil.copytree(ref_dir, tmp_path / "old")
    path = tmp_path / "old" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["sha256"]  # edited by hand below: as a checkpoint from before the digest
    cfg = ckpt["config"]["train"]
    del cfg["probes"], cfg["planner"]["noise_beta"]  # as if written before these fields existed
    torch.save(ckpt, path)
    with lp.Trainer(_config(tmp_path, "old", resume=True, episodes=6)) as trainer:
        assert trainer.episode == 4
    cfg["planner"]["not_a_field"] = 1  # a field this version does not know: refused, with a clear error
    torch.save(ckpt, path)
    with pytest.raises(lp.CheckpointMismatch, match="does not fit this version"):
        lp.Trainer(_config(tmp_path, "old", resume=True, episodes=6))


def test_a_checkpoint_from_before_the_envelope_still_loads_and_resumes(tmp_path, reference):
    """Runs written by earlier releases (`{"format": 1, "config": json, ...}`) keep working."""
    import shutil

    ref_dir, summary = reference
    shutil.copytree(ref_dir, tmp_path / "legacy")
    path = tmp_path / "legacy" / "checkpoint.pt"
    env = torch.load(path, weights_only=True)
    state = dict(env["state"])
    legacy = {**state, "format": 1, "config": json.dumps(env["config"]["train"]),
              "model_config": json.dumps(env["config"]["model"]),
              "buffer_rng": json.dumps(state["buffer_rng"]), "last_eval": json.dumps(state["last_eval"])}
    torch.save(legacy, path)
    model, config, envelope = lp.load_checkpoint(path)
    assert envelope.version == 0 and envelope.state["episode"] == 4 and config.model.deter == 16
    with lp.Trainer(_config(tmp_path, "legacy", resume=True)) as trainer:
        assert trainer.episode == 4 and trainer.last_eval == summary_last_eval(ref_dir)


def summary_last_eval(run_dir):
    return dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["state"]["last_eval"])


def test_existing_run_is_not_overwritten_by_accident(tmp_path, reference):
    ref_dir, _ = reference
    with pytest.raises(FileExistsError, match="--overwrite"):
        lp.Trainer(_config(ref_dir.parent, ref_dir.name))
    # --overwrite deletes a run folder's own files only: a folder with anything else is never deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    (mine / "metrics.jsonl").write_text("")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        lp.Trainer(_config(tmp_path, "mine", overwrite=True)).close()
    assert (mine / "thesis.tex").read_text() == "years of work"
    (mine / "thesis.tex").unlink()
    (mine / "episodes").mkdir()
    (mine / "episodes" / "000001.npz").write_bytes(b"old")
    lp.Trainer(_config(tmp_path, "mine", overwrite=True)).close()
    assert sorted(p.name for p in mine.iterdir()) == [".lock", "config.json"]  # the old episode is gone


def test_final_evaluation_is_a_fixed_seed_multi_episode_figure(tmp_path, reference):
    """The run ends with `final_eval_episodes` noise-free episodes from fixed seeds and their own
    generator: the mean and its 95 % t-interval are reported and written to final_eval.json, and
    evaluating the same checkpoint again gives the same returns."""
    import numpy as np
    import scipy.stats

    from latentplan.statistics import t_interval

    ref_dir, summary = reference
    rets = np.array(summary.final_returns)
    assert len(rets) == 3 and summary.final_return == pytest.approx(rets.mean())
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=rets.mean(), scale=scipy.stats.sem(rets))
    assert summary.final_return_ci == pytest.approx((lo, hi))
    assert t_interval(rets) == pytest.approx((lo, hi))
    stored = json.loads((ref_dir / "final_eval.json").read_text())
    assert stored["returns"] == list(summary.final_returns) and stored["episode"] == 4
    # the same checkpoint evaluated afresh (a resumed run that collects nothing more): same returns
    with lp.Trainer(_config(ref_dir.parent, ref_dir.name, resume=True)) as trainer:
        again = trainer.final_evaluation()
    assert again["returns"] == list(summary.final_returns)
    assert json.loads((ref_dir / "metrics.jsonl").read_text().splitlines()[-1])["episode"] == 4


def test_demo_never_deletes_an_earlier_run(tmp_path, monkeypatch):
    """`latentplan demo` without --run-dir writes next to a taken runs/demo; with --run-dir it refuses."""
    from latentplan.cli.train import free_demo_dir as _free_demo_dir

    monkeypatch.chdir(tmp_path)
    cfg = lp.demo_config()
    assert cfg.overwrite is False and _free_demo_dir(cfg, []).run_dir == "runs/demo"
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "config.json").write_text("{}")
    assert _free_demo_dir(cfg, []).run_dir == "runs/demo-2"
    (tmp_path / "runs" / "demo-2").mkdir()
    assert _free_demo_dir(cfg, []).run_dir == "runs/demo-2"  # an empty folder is free
    (tmp_path / "runs" / "demo-2" / "metrics.jsonl").write_text("")
    assert _free_demo_dir(cfg, []).run_dir == "runs/demo-3"
    assert _free_demo_dir(cfg, ["--run-dir", "runs/demo"]).run_dir == "runs/demo"
    assert _free_demo_dir(dataclasses.replace(cfg, overwrite=True), []).run_dir == "runs/demo"
    assert main(["demo", "--run-dir", "runs/demo"]) == 2  # refused before anything is written
    assert (tmp_path / "runs" / "demo" / "config.json").read_text() == "{}"


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        lp.load_checkpoint(tmp_path)
    torch.save({"something": 1}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a latentplan checkpoint"):
        lp.load_checkpoint(tmp_path)


def test_agent_rejects_nan_observations(reference):
    model, config, _ = lp.load_checkpoint(reference[0])
    agent = lp.Agent(model, lp.CEM(config.planner))
    with pytest.raises(ValueError, match="NaN"):
        agent.act([0.0, float("nan"), 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"expected shape \(5,\), received \(2,\)"):
        agent.act([0.0, 1.0])


def test_config_validation():
    with pytest.raises(ValueError, match="obs must be"):
        lp.TrainConfig(obs="rgb")
    with pytest.raises(ValueError, match="seed_episodes"):
        lp.TrainConfig(episodes=3, seed_episodes=5)
    with pytest.raises(ValueError, match="batch_size"):
        lp.TrainConfig(batch_size=0)


def test_cli_train_runs_from_flags_and_prints_the_table(tmp_path, capsys):
    code = main([
        "train", "--run-dir", str(tmp_path / "cli"), "--episodes", "2", "--seed-episodes", "1",
        "--updates-per-episode", "1", "--batch-size", "2", "--chunk-length", "8", "--no-progress",
        "--model.deter", "8", "--model.stoch", "2", "--model.hidden", "8", "--model.embed", "8",
        "--planner.horizon", "2", "--planner.iterations", "1", "--planner.candidates", "8", "--planner.elites", "2",
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "eval return (last)" in out and "env steps" in out and "2,000" in out
    assert "final return (5 episodes)" in out and "95 % CI [" in out
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert cfg["model"]["deter"] == 8 and cfg["planner"]["candidates"] == 8 and cfg["episodes"] == 2


def test_cli_usage_and_unknown_command(capsys):
    assert main([]) == 2
    assert main(["fly"]) == 2
    err = capsys.readouterr().err
    assert "Unrecognized options: fly" in err and "train, demo, compare, control, distill" in err


@pytest.mark.slow
def test_demo_reaches_its_target(tmp_path):
    """The README's main job, end to end (about 10-15 minutes on 2 CPU cores)."""
    summary = train_mod.Trainer(lp.demo_config(run_dir=str(tmp_path / "demo"), progress=False)).run()
    assert summary.wall_s < 15 * 60
    assert summary.eval_return >= 400


def test_pixel_training_stores_frames_and_states(tmp_path):
    """From pixels: uint8 frames in the replay buffer, the true state beside them, a finite ELBO."""
    cfg = _config(
        tmp_path, "pix", obs="pixels", action_repeat=50, episodes=2, seed_episodes=1, updates_per_episode=1,
        batch_size=2, chunk_length=8, model=lp.RSSMConfig(deter=8, stoch=2, hidden=8),
        planner=lp.CEMConfig(horizon=2, iterations=1, candidates=4, elites=2),
    )
    trainer = lp.Trainer(cfg)
    assert trainer.model_config.obs_shape == (3, 64, 64) and trainer.model_config.observation_std == 1.0
    # probe heads for the env's named state, so known rewards over cart_x etc. work on pixel models
    assert trainer.model_config.probe_dim == 5 and ("cart_x", 0, 1) in trainer.model_config.probe_names
    summary = trainer.run()
    ep = trainer.buffer.episodes[1]
    assert ep["obs"].dtype == "uint8" and ep["obs"].shape == (21, 3, 64, 64)  # 1000 steps / repeat 50
    assert ep["state"].shape == (21, 5)
    assert ep["obs"][5].std() > 0 and not (ep["obs"][5] == ep["obs"][15]).all()
    row = json.loads((tmp_path / "pix" / "metrics.jsonl").read_text().splitlines()[1])
    assert row["loss"] == row["loss"] and row["reconstruction"] > 0  # finite and positive
    assert row["probe_nll"] > 0
    decoded = trainer.model.decode(trainer.model.initial(3))
    assert decoded["pole_cos"].shape == (3, 1) and decoded["state"].shape == (3, 5)
    assert summary.env_steps == 2000


def test_cli_resume_reads_the_runs_own_config(tmp_path, capsys):
    flags = ["--run-dir", str(tmp_path / "r"), "--seed-episodes", "1", "--updates-per-episode", "1",
             "--batch-size", "2", "--chunk-length", "8", "--no-progress", "--model.deter", "8", "--model.stoch", "2",
             "--model.hidden", "8", "--model.embed", "8", "--planner.horizon", "2", "--planner.iterations", "1",
             "--planner.candidates", "8", "--planner.elites", "2"]
    assert main(["train", "--episodes", "2", *flags]) == 0
    # only the run folder, --resume and the new length: the stored model size etc. are reused
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--resume", "--episodes", "3"]) == 0
    rows = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [1, 2, 3]
    model, config, _ = lp.load_checkpoint(tmp_path / "r")
    assert config.model.deter == 8 and config.episodes == 3


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    run = tmp_path / "r"
    (run / "episodes").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"episode": 1, "train_return": 5.0}\n{"episo')  # killed mid-line
    cfg = _config(tmp_path, "r", resume=True, episodes=1, seed_episodes=1)
    lp.Trainer(cfg).run()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [1, 1] and rows[0]["train_return"] != 5.0  # the episode, then its evaluation


def test_custom_reward_example_runs_on_a_checkpoint(reference, monkeypatch, capsys):
    """examples/custom_reward.py plans a whole episode for a user reward on a trained checkpoint."""
    import runpy
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "custom_reward.py"
    monkeypatch.setattr(sys, "argv", [str(example), str(reference[0] / "checkpoint.pt"), "--target", "0.25"])
    runpy.run_path(str(example), run_name="__main__")
    out = capsys.readouterr().out
    assert "target +0.25" in out and "ms per decision" in out
    assert 0 <= float(out.split("env return (swingup reward) ")[1].split(";")[0]) <= 1000


def test_value_learning_and_distillation_in_the_loop_resume_identically(tmp_path, monkeypatch):
    """`value_every`/`plan_with_value` and `distill="cem"`: the critic and the student train beside
    the model, are logged, checkpointed, and a resumed run reproduces the uninterrupted one."""
    from latentplan.planners.policy import PolicyPlanner

    extra = dict(
        episodes=4, value_every=2, plan_with_value=True, value=lp.ValueConfig(batch=4, horizon=3, hidden=(8,)),
        distill="cem", distill_every=1,
        distillation=lp.DistillConfig(labels_per_update=4, steps_per_update=2, batch_size=8, label_batch=4),
    )
    full = lp.Trainer(_config(tmp_path, "full", **extra))
    assert full.agent.make_objective(full.model).value is full.value_learner.value
    full.run()
    rows = _rows(tmp_path / "full")
    assert all(k in rows[2] for k in ("value_loss", "value_mean", "distill_loss"))
    # 6 model updates (3 before each of episodes 3 and 4): a critic update every 2nd, 2 distiller steps each
    assert full.value_learner.updates == 3 and full.distiller.steps == 12
    policy = lp.io.load_policy(tmp_path / "full" / "policy.pt")
    s = full.model.initial(2)
    plan = PolicyPlanner(policy).plan(lp.Objective(full.model), s)
    assert plan.actions.shape == (2, 1, 1) and plan.actions.abs().max() <= 1

    real = train_mod.run_episode
    calls = {"n": 0}

    def dying(env, agent, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # seed episodes, episode 3 and its evaluation ran; episode 4 "dies" halfway
            raise KeyboardInterrupt("killed")
        return real(env, agent, **kw)

    monkeypatch.setattr(train_mod, "run_episode", dying)
    with pytest.raises(KeyboardInterrupt):
        lp.Trainer(_config(tmp_path, "split", **extra)).run()
    monkeypatch.setattr(train_mod, "run_episode", real)
    resumed = lp.Trainer(_config(tmp_path, "split", **extra, resume=True))
    assert resumed.episode == 3 and resumed.updates == 3 and resumed.value_learner.updates == 1
    resumed.run()
    assert _rows(tmp_path / "split") == rows
    for a, b in [(full.value_learner.value, resumed.value_learner.value), (full.distiller.policy, resumed.distiller.policy)]:
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k
    with pytest.raises(ValueError, match="plan_with_value needs a critic"):
        lp.TrainConfig(plan_with_value=True)
