"""Checkpoints of a `latentplan distill` run, so that a run killed halfway resumes from its last
finished phase (`DistillRunConfig.resume`, `--resume`) and ends exactly as the uninterrupted run.

A run is a list of phases (`replay labels`, `fit`, then `round r labels` and `round r steps` for
each DAgger round, then `evaluation`). After each one, `save` writes two files into `out`:

- `distiller.pt`: a `distiller` envelope (`latentplan.io.save_distiller`: student, optimiser,
  counters, loss history and the labelled data set), which carries the run's state beside the
  distiller: `config["run"]` is the run's `DistillRunConfig`, `state["run"]` the phases done,
  the state of the run's generator, the metrics so far (as JSON text), the wall time so far, the
  digest of the model checkpoint it distils, and whether the run is finished. One file, written
  atomically: the phases recorded as done always match the weights, labels and generator beside
  them. `latentplan.io.load_distiller` reads it as any distiller file.
- `progress.json`: the same progress for people (phases done, the next one, labels, gradient
  steps, metrics so far), written after `distiller.pt`. A resume reads `distiller.pt` only. The
  finished run removes it (its `metrics.json` holds everything).

The finished run rewrites `distiller.pt` without its data set unless `save_data` is set (as before
resumable runs). A resume reloads the distiller's state, the generator state and the metrics, so
the remaining phases make the same labels, take the same minibatches and write the same weights
and metrics as the uninterrupted run (wall times aside). `lock` holds the folder for one run at a
time. `DistillResult`, what `run_distillation` returns, lives here too (re-exported by
`latentplan.distillation`, which stays under the facade's 500-line limit).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from . import io
from .training import _MISSING, CheckpointMismatch, _flatten

__all__ = ["PROGRESS", "STATE", "DistillResult", "RunState", "load", "lock", "phases", "restore", "save", "wall_s"]

STATE = "distiller.pt"  #: the distiller and the run's state
PROGRESS = "progress.json"  #: the progress, readable
NOT_COMPARED = ("resume", "progress", "out")  #: config fields a resume may change (they change no result)


@dataclass
class DistillResult:
    """What `run_distillation` produced.

    Attributes:
        distiller: the learner, a `Distiller` (its `policy` is the student).
        teacher: the teacher, a `Planner`.
        model: the world model of the checkpoint.
        env: the environment the rounds and evaluations ran in.
        metrics: everything written to `metrics.json` (label timings, per-round student returns,
            evaluation returns of student and teacher, wall times).
        out: the output folder.
    """

    distiller: Any
    teacher: Any
    model: Any
    env: Any
    metrics: dict[str, Any]
    out: Path


@dataclass
class RunState:
    """What a resume restores (read from `out/distiller.pt` by `load`).

    Attributes:
        done: names of the finished phases, in order.
        distiller: the `Distiller.state_dict()` to load.
        generator: the run generator's state (`torch.Generator.get_state()`, a CPU `uint8` tensor).
        metrics: the run's metrics so far; phase_steps: `(phase, total steps)` of each fit so far.
        wall_s: seconds the earlier sessions ran.
        checkpoint_sha256: the digest of the model checkpoint the labels were made with.
        path: the file read.
    """

    done: list[str]
    distiller: dict[str, Any]
    generator: torch.Tensor
    metrics: dict[str, Any]
    phase_steps: list[tuple[str, int]]
    wall_s: float
    checkpoint_sha256: str
    path: Path

    def check_checkpoint(self, sha256: str) -> None:
        """Refuse a model checkpoint other than the one the stored labels were made with.

        Raises:
            CheckpointMismatch: the checkpoint's digest differs (e.g. training went on and rewrote it).
        """
        if sha256 != self.checkpoint_sha256:
            raise CheckpointMismatch(f"cannot resume {self.path}: the model checkpoint changed since the run began "
                                     "(another file, or training went on and rewrote it); its labels were made with "
                                     "the old model: choose another --out to start afresh")


def _check_config(stored: dict[str, Any], cfg: Any, path: Path) -> None:
    then, now = _flatten(stored), _flatten(io.config_dict(cfg))
    diff = sorted(k for k in set(then) | set(now)
                  if k.split(".")[0] not in NOT_COMPARED and then.get(k, _MISSING) != now.get(k, _MISSING))
    if diff:
        detail = ", ".join(f"{k}: stored {then.get(k, _MISSING)!r}, now {now.get(k, _MISSING)!r}" for k in diff)
        raise CheckpointMismatch(f"cannot resume {path}: the run was made with another config ({detail}); resume "
                                 "with the same settings, or choose another --out to start afresh")


def load(cfg: Any, out: Path) -> RunState | None:
    """How a run in `out` begins: `None` to start afresh, or the state to resume from.

    Without `cfg.resume`, a folder with no `distiller.pt`, a `distiller.pt` of a finished run or one
    that is not a run's state starts afresh: its files are overwritten as the run writes its own
    (the behaviour before resumable runs). With `cfg.resume`, a folder without `distiller.pt`
    (killed before its first phase ended) also starts afresh, as `latentplan train --resume` does.

    Args:
        cfg: the `DistillRunConfig` of this session.
        out: the output folder.

    Returns:
        `None`, or the `RunState` to restore (the config has been checked).

    Raises:
        ValueError: without `resume`, if `out` holds an unfinished run (its labels would be lost).
        CheckpointMismatch (a `ValueError`): with `resume`, if `distiller.pt` is unreadable or holds
            no run's state, or the run was made with another config (the message names every field
            that differs; `resume`, `progress` and `out` may differ).
    """
    path = out / STATE
    if not path.is_file():
        return None
    try:
        env = io.load(path, "distiller")
    except io.CheckpointError as e:
        if cfg.resume:
            raise CheckpointMismatch(f"cannot resume: {e}") from e
        return None
    run, stored = env.state.get("run"), env.config.get("run")
    if not isinstance(run, dict) or not isinstance(stored, dict):
        if cfg.resume:
            raise CheckpointMismatch(f"cannot resume {path}: it holds a distiller without a run's state (written by "
                                     "save_distiller, or by a latentplan without resumable runs)")
        return None
    if not cfg.resume:
        if run["finished"]:
            return None
        raise ValueError(f"out {str(out)!r} holds an unfinished distillation run (done: {', '.join(run['done'])}); "
                         "pass --resume to continue it, or choose another --out (or delete its distiller.pt to "
                         "start afresh there)")
    _check_config(stored, cfg, path)
    saved = json.loads(run["metrics_json"])
    return RunState(list(run["done"]), {k: v for k, v in env.state.items() if k != "run"}, run["generator"],
                    saved["metrics"], [tuple(p) for p in saved["phase_steps"]], float(run["wall_s"]),
                    run["checkpoint_sha256"], path)


@contextlib.contextmanager
def lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive `flock` on the folder `out` itself (created if missing) for the life of a
    run, so that two runs (e.g. a resume started while the run still goes on) never write into one
    folder. The kernel releases it when the process dies, and no lock file is left in `out`.

    Raises:
        ValueError: `out` is a file, or another run holds the folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {str(out)!r} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"out {str(out)!r} is in use by another distillation run; wait for it to finish, or "
                             "choose another --out") from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def phases(run: Any) -> list[tuple[str, Callable[[], None]]]:
    """The phases of `run` (a `latentplan.distillation._DistillRun`), `(name, callable)` in order:
    `replay labels` and `fit` (with `replay_states`), `round r labels` and `round r steps` for each
    DAgger round, `evaluation`. `run_distillation` saves the run's state after each."""
    cfg, out = run.cfg, []
    if cfg.replay_states > 0:
        out += [("replay labels", run.label_replay), ("fit", lambda: run.fit(cfg.fit_steps, "fit"))]
    for r in range(cfg.dagger_rounds):
        out += [(f"round {r + 1} labels", lambda r=r: run.dagger_labels(r)),
                (f"round {r + 1} steps", lambda r=r: run.dagger_steps(r))]
    return out + [("evaluation", run.evaluate)]


def wall_s(run: Any) -> float:
    """Seconds `run` has taken, its earlier sessions included."""
    return run.wall_before + time.perf_counter() - run.t_start


def save(run: Any, *, finished: bool = False) -> None:
    """Write the run's state into `run.out`: `distiller.pt` (atomically; with the data set, except in a
    finished run without `save_data`), then `progress.json` (removed once the run is finished).

    Args:
        run: the run (`latentplan.distillation._DistillRun`: its `cfg`, `out`, `distiller`, `gen`,
            `done`, `metrics`, `phase_steps`, `checkpoint_sha256` and `wall_s()`).
        finished: the run has written its outputs.
    """
    d, seconds = run.distiller, wall_s(run)
    metrics_json = json.dumps({"metrics": run.metrics, "phase_steps": run.phase_steps}, default=float)
    state = {"done": list(run.done), "generator": run.gen.get_state().cpu(), "metrics_json": metrics_json,
             "wall_s": seconds, "checkpoint_sha256": run.checkpoint_sha256, "finished": finished}
    io.save_distiller(d, run.out / STATE, with_data=run.cfg.save_data or not finished,
                      run={"config": io.config_dict(run.cfg), "state": state})
    if finished:  # metrics.json has it all; progress.json describes unfinished runs only
        (run.out / PROGRESS).unlink(missing_ok=True)
        return
    pending = [name for name, _ in phases(run) if name not in run.done]
    progress = {"done": list(run.done), "next": pending[0] if pending else None, "finished": finished,
                "labels": d.labels, "steps": d.steps, "dataset": len(d), "wall_s": seconds, "metrics": run.metrics}
    io.atomic_write_text(run.out / PROGRESS, json.dumps(progress, indent=2, default=float) + "\n")


def restore(run: Any, state: RunState | None) -> None:
    """Set up a freshly built run's bookkeeping (`done`, `wall_before`) and, for a resume (`state`
    not `None`), load the distiller's state, the generator state, the metrics, the fits' steps, the
    phases done and the earlier sessions' wall time into it.

    Raises:
        CheckpointMismatch: the run's model checkpoint is not the one `state` was made with.
    """
    run.done, run.wall_before = [], 0.0
    if state is None:
        return
    state.check_checkpoint(run.checkpoint_sha256)
    run.distiller.load_state_dict(state.distiller)
    run.gen.set_state(state.generator.cpu())
    run.metrics, run.phase_steps, run.done = state.metrics, state.phase_steps, list(state.done)
    run.wall_before = state.wall_s


def against_teacher(student_mean: float, teacher_mean: float) -> dict[str, float]:
    """How the student's mean return compares with the teacher's, on the same seeds.

    `return_difference` is `student - teacher` (return units; > 0: the student did better).
    `return_ratio` is `student / teacher`, defined only when both means are > 0 (NaN otherwise):
    with negative returns a ratio reads backwards (-859 / -794 = 1.08 for a worse student).
    """
    ratio = student_mean / teacher_mean if student_mean > 0 and teacher_mean > 0 else float("nan")
    return {"return_ratio": ratio, "return_difference": student_mean - teacher_mean}


def metrics_text(metrics: dict[str, Any]) -> str:
    """`metrics.json`'s text: standard JSON, NaN and +-inf written as `null` (tensors and NumPy
    numbers as floats)."""
    from .statistics import finite_json

    plain = json.loads(json.dumps(metrics, default=float))
    return json.dumps(finite_json(plain), indent=2, allow_nan=False) + "\n"



def stored_config(out: str | Path) -> dict[str, Any] | None:
    """The config (`io.config_dict` of its `DistillRunConfig`) of the unfinished run saved in `out`
    (`distiller.pt`), or `None` when `out` holds no readable run's state or a finished one: what
    `latentplan distill --resume --out DIR` starts from, so the run's flags need not be repeated
    (flags given still override it, and `load` then checks what differs)."""
    path = Path(out) / STATE
    if not path.is_file():
        return None
    try:
        env = io.load(path, "distiller")
    except io.CheckpointError:
        return None  # the run itself explains why it cannot resume
    run, stored = env.state.get("run"), env.config.get("run")
    if not isinstance(run, dict) or not isinstance(stored, dict) or run.get("finished"):
        return None
    return stored
