"""`latentplan train` and `latentplan demo`: run PlaNet's loop and print the final table."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from latentplan.config import TrainConfig
from latentplan.evaluation import EnvFailure
from latentplan.io import RunFolderLocked
from latentplan.exploration import make_trainer
from latentplan.training import NonFiniteTraining, TrainSummary

__all__ = ["run_demo", "run_train", "summary_table"]


def summary_table(s: TrainSummary) -> str:
    """The final table printed after a run: the final multi-episode figure first, then the last and
    best single evaluations during training, planning time and wall time."""
    rows = [
        ("episodes", f"{s.episodes}"),
        ("env steps", f"{s.env_steps:,}"),
    ]
    if s.final_returns:
        ci = "" if s.final_return_ci is None else f", 95 % CI [{s.final_return_ci[0]:.1f}, {s.final_return_ci[1]:.1f}]"
        rows.append((f"final return ({len(s.final_returns)} episodes)", f"{s.final_return:.1f}{ci}"))
    rows += [
        ("eval return (last)", f"{s.eval_return:.1f}"),
        ("eval return (best)", f"{s.best_eval_return:.1f}"),
        ("planning ms / action", f"{s.plan_ms:.1f}"),
        ("wall time", f"{s.wall_s / 60:.1f} min"),
        ("run folder", s.run_dir),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    bar = "  " + "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([bar, *lines, bar])


def run_train(config: TrainConfig, args: list[str], *, command: str = "train") -> int:
    """Train with `config` and print the final table.

    Returns:
        0; 2 with a one-line message when a setting is bad, the run folder must not be touched (it
        holds a run, is a file, or another process trains there), the checkpoint does not fit, the
        env fails, or the run diverged; 130 after Ctrl-C, with the line that resumes the run.
    """
    trainer = None
    try:
        trainer = make_trainer(config)  # an ExploreTrainer with --explore
        summary = trainer.run()
    except KeyboardInterrupt:
        print(f"\n{_interrupted(config, trainer, command)}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, RunFolderLocked, NonFiniteTraining, EnvFailure) as e:
        # a bad setting (unknown env, ...), a taken or locked run folder, a checkpoint that does not fit
        # (CheckpointError and CheckpointMismatch are ValueErrors), a diverged run, an env that fails
        # (cannot render, non-finite observation): one line, exit 2
        print(f"latentplan {command}: {e}", file=sys.stderr)
        return 2
    print()
    print(summary_table(summary))
    if summary.stopped_early:
        print(f"  (collection stopped at the {config.max_wall_minutes} min wall-time limit)")
    print(f"  learning curve: {summary.run_dir}/curve.png   metrics: {summary.run_dir}/metrics.jsonl")
    return 0


def _interrupted(config: TrainConfig, trainer, command: str) -> str:
    """The line printed after Ctrl-C: where the run stands and the command that continues it."""
    import shlex

    from latentplan.training import CHECKPOINT, read_run_checkpoint

    resume = f"latentplan {command} --run-dir {shlex.quote(config.run_dir)} --resume"
    try:
        kept = int(read_run_checkpoint(config.run_dir).state["episode"])
    except (OSError, ValueError, KeyError):
        return f"interrupted: no checkpoint in {config.run_dir} yet; {resume} starts the run afresh"
    at = f" at episode {trainer.episode + 1}" if trainer is not None and hasattr(trainer, "episode") else ""
    return (f"interrupted{at}: the checkpoint of episode {kept} ({config.run_dir}/{CHECKPOINT}) is kept; "
            f"continue with: {resume}")


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def free_demo_dir(config: TrainConfig, args: list[str]) -> TrainConfig:
    """The demo never deletes an earlier run: without `--run-dir`, `--resume` or `--overwrite`, a taken
    default folder (`runs/demo`) gives way to the next free `runs/demo-2`, `runs/demo-3`, ..."""
    if _given(args, "--run-dir") or _given(args, "--run_dir") or config.resume or config.overwrite:
        return config
    base = Path(config.run_dir)
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    if path != base:
        print(f"latentplan demo: {base} holds an earlier run; writing to {path} "
              f"(--run-dir {base} --overwrite replaces it)")
    return dataclasses.replace(config, run_dir=str(path))


def run_demo(config: TrainConfig, args: list[str]) -> int:
    """`latentplan demo`: `run_train` in the next free demo folder."""
    return run_train(free_demo_dir(config, args), args, command="demo")
