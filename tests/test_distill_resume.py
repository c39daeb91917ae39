"""`latentplan distill` resumes after a kill: the state written after each phase, `--resume`, and the
refusals (another config, another checkpoint, an unfinished run without `--resume`).

A kill is a `KeyboardInterrupt` raised from a monkeypatched function in the middle of a phase; the
resumed run must end bit for bit as the uninterrupted one (weights, labels, optimiser, loss history,
metrics; wall-clock timings aside).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import latentplan as lp
import latentplan.distillation as facade
from latentplan import distill_run_state as run_state
from latentplan.cli import main
from latentplan.distillation import DistillRunConfig, run_distillation
from latentplan.io import load_distiller, save_distiller
from latentplan.planners.distill import Distiller
from latentplan.training import CheckpointMismatch

# wall-clock fields: the only ones a resumed run may write differently
TIMINGS = {"wall_s", "label_s", "teacher_ms", "teacher_ms_per_label", "plan_ms"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Two random cartpole episodes (20 decisions each) and an untrained tiny RSSM."""
    tmp = tmp_path_factory.mktemp("distill_resume")
    cfg = lp.TrainConfig(
        env="dmc:cartpole-swingup", action_repeat=50, episodes=2, seed_episodes=2, progress=False, device="cpu",
        run_dir=str(tmp / "run"), model=lp.RSSMConfig(deter=16, stoch=4, hidden=16, embed=16),
        planner=lp.CEMConfig(horizon=3, iterations=2, candidates=16, elites=4),
    )
    lp.Trainer(cfg).run()
    return tmp / "run" / "checkpoint.pt"


def _cfg(checkpoint, out, **kw):
    base = dict(checkpoint=str(checkpoint), out=str(out), teacher="cem:iterations=2,candidates=16,elites=4",
                horizon=3, replay_states=12, fit_steps=6, dagger_rounds=2, dagger_episodes=1, dagger_steps=4,
                dagger_beta=0.5, dagger_noise=0.2, eval_episodes=1, progress=False,
                distill=lp.DistillConfig(batch_size=8))
    return DistillRunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def uninterrupted(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    res = run_distillation(_cfg(checkpoint, out))
    return out, res


def _strip(value):
    """Metrics without wall-clock timings, and without the config fields a session may change (resume, progress, out)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMINGS and k not in ("resume", "progress", "out")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _same_state(a: dict, b: dict) -> None:
    """Two distiller state_dicts hold bit-identical tensors and equal counters."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _same_state(a[k], b[k])
        else:
            assert a[k] == b[k], k


def _kill_on_call(monkeypatch, owner, name, n):
    """Make `owner.name` raise KeyboardInterrupt on its `n`-th call (1-based); returns the call counter."""
    real, calls = getattr(owner, name), [0]

    def wrapper(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


KILLS = {  # where the kill lands -> (object, attribute, call), and the phases finished before it
    "fit": (Distiller, "train", 1, ["replay labels"]),
    "round 2 labels": (facade, "dagger_round", 2, ["replay labels", "fit", "round 1 labels", "round 1 steps"]),
    "teacher eval": (facade, "evaluate_planner", 2,
                     ["replay labels", "fit", "round 1 labels", "round 1 steps", "round 2 labels", "round 2 steps"]),
}


@pytest.mark.parametrize("where", list(KILLS))
def test_a_killed_run_resumes_to_the_uninterrupted_result_bit_for_bit(checkpoint, uninterrupted, tmp_path, monkeypatch,
                                                                      where):
    whole_out, whole = uninterrupted
    owner, name, n, done = KILLS[where]
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _kill_on_call(m, owner, name, n)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(_cfg(checkpoint, out))
    progress = json.loads((out / "progress.json").read_text())
    assert progress["done"] == done and progress["next"] == {"teacher eval": "evaluation"}.get(where, where)
    assert progress["finished"] is False and not (out / "metrics.json").exists() and not (out / "policy.pt").exists()
    assert len(load_distiller(out / "distiller.pt")) == progress["dataset"] > 0  # the labels so far are kept
    relabels = _kill_on_call(monkeypatch, Distiller, "relabel", 0)  # counts the teacher's labelling passes
    res = run_distillation(_cfg(checkpoint, out, resume=True))
    # the replay beliefs are labelled once (one pass, before the kill); a round's labels are one pass
    assert relabels[0] == {"fit": 2, "round 2 labels": 1, "teacher eval": 0}[where]
    _same_state(res.distiller.state_dict(), whole.distiller.state_dict())
    for f in ("policy.pt", "distiller.pt"):
        _same_state(torch.load(out / f, weights_only=True)["state"] | {"run": None},
                    torch.load(whole_out / f, weights_only=True)["state"] | {"run": None})
    got, want = (json.loads((o / "metrics.json").read_text()) for o in (out, whole_out))
    # every decision of a round is labelled once (the teacher's at once, the student's in the relabel pass)
    assert _strip(got) == _strip(want) and got["labels"] == want["labels"] == 12 + 20 + 20
    assert got["steps"] == 6 + 2 * 4 and len(got["loss_history"]) == 14
    # the finished run: the files of an uninterrupted run, progress.json gone, all 7 phases recorded as done
    assert {p.name for p in out.iterdir()} == {"distiller.pt", "loss.png", "metrics.json", "policy.pt"}
    assert len(torch.load(out / "distiller.pt", weights_only=True)["state"]["run"]["done"]) == 7


def test_resume_refuses_another_config_naming_the_fields(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        _kill_on_call(m, Distiller, "train", 1)
        with pytest.raises(KeyboardInterrupt):
            run_distillation(_cfg(checkpoint, out))
    before = (out / "distiller.pt").read_bytes()
    with pytest.raises(CheckpointMismatch) as err:
        run_distillation(_cfg(checkpoint, out, resume=True, fit_steps=7, seed=3, distill=lp.DistillConfig(lr=5e-4)))
    msg = str(err.value)
    assert "fit_steps: stored 6, now 7" in msg and "seed: stored 0, now 3" in msg
    assert "distill.lr: stored 0.001, now 0.0005" in msg and "distill.batch_size: stored 8, now 256" in msg
    # the session-only fields may change
    state = run_state.load(_cfg(checkpoint, str(out) + "/", resume=True, progress=True), out)
    assert state.done == ["replay labels"] and len(state.distiller["data"]["features"]) == 12
    with pytest.raises(CheckpointMismatch, match="the model checkpoint changed"):
        state.check_checkpoint("0" * 64)
    # without --resume an unfinished run is refused before the checkpoint is read, and its files are kept
    with pytest.raises(ValueError, match="unfinished distillation run .done: replay labels.*--resume"):
        run_distillation(_cfg(checkpoint.parent / "missing.pt", out))
    assert (out / "distiller.pt").read_bytes() == before


def test_without_resume_a_finished_or_unrelated_folder_is_overwritten_as_before(checkpoint, uninterrupted, tmp_path):
    whole_out, whole = uninterrupted
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    save_distiller(whole.distiller, out / "distiller.pt")  # a distiller saved by hand: no run's state
    with pytest.raises(CheckpointMismatch, match="without a run's state"):
        run_distillation(_cfg(checkpoint, out, resume=True))
    res = run_distillation(_cfg(checkpoint, out, dagger_rounds=0, eval_episodes=0))
    assert res.metrics["labels"] == 12 and (out / "notes.txt").read_text() == "mine"
    # the finished run's distiller.pt keeps no data set without save_data (as before resumable runs)
    assert len(load_distiller(out / "distiller.pt")) == 0
    # a finished run, run again without --resume: a fresh run, which writes its own files
    res = run_distillation(_cfg(checkpoint, out, dagger_rounds=0, eval_episodes=0, fit_steps=3))
    assert res.metrics["steps"] == 3 and json.loads((out / "metrics.json").read_text())["steps"] == 3
    # a finished run resumed: nothing left to do, the same result again
    res2 = run_distillation(_cfg(checkpoint, out, dagger_rounds=0, eval_episodes=0, fit_steps=3, resume=True))
    assert res2.metrics["steps"] == 3 and res2.distiller.history == res.distiller.history
    # --resume in an empty folder (killed before its first phase ended) starts afresh
    res3 = run_distillation(_cfg(checkpoint, tmp_path / "empty", dagger_rounds=0, eval_episodes=0, fit_steps=3,
                                 resume=True))
    assert res3.distiller.history == res.distiller.history


def test_cli_resume_flag(checkpoint, uninterrupted, tmp_path, monkeypatch, capsys):
    whole_out, _ = uninterrupted
    out = tmp_path / "out"
    args = ["distill", "--checkpoint", str(checkpoint), "--out", str(out), "--teacher",
            "cem:iterations=2,candidates=16,elites=4", "--horizon", "3", "--replay-states", "12", "--fit-steps", "6",
            "--dagger-rounds", "2", "--dagger-episodes", "1", "--dagger-steps", "4", "--dagger-beta", "0.5",
            "--dagger-noise", "0.2", "--eval-episodes", "1", "--no-progress", "--distill.batch-size", "8"]
    with monkeypatch.context() as m:
        _kill_on_call(m, facade, "dagger_round", 2)
        assert main(args) == 130
    assert "rerun the same command with --resume" in capsys.readouterr().err
    assert main(args) == 2 and "pass --resume to continue it" in capsys.readouterr().err
    assert main(args + ["--resume", "--seed", "1"]) == 2 and "seed: stored 0, now 1" in capsys.readouterr().err
    assert main(["distill", "--resume", "--out", str(out), "--seed", "1"]) == 2  # a flag given still overrides
    assert "seed: stored 0, now 1" in capsys.readouterr().err
    assert main(["distill", "--resume", "--out", str(tmp_path / "typo")]) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert main(["distill", "--resume", "--out", str(out)]) == 0  # the run's own config: no flag repeated
    got, want = (json.loads((o / "metrics.json").read_text()) for o in (out, whole_out))
    assert _strip(got) == _strip(want) and not math.isnan(got["return_ratio"])


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_holds_it(checkpoint, tmp_path):
    out = tmp_path / "out"
    with run_state.lock(out):  # as a run still going on would hold it
        with pytest.raises(ValueError, match="in use by another distillation run.*choose another --out"):
            run_distillation(_cfg(checkpoint, out, resume=True))
    assert not (out / "distiller.pt").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        run_distillation(_cfg(checkpoint, tmp_path / "file"))
