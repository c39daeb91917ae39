"""The `latentplan` command line: `train` and `demo` (every flag built from `TrainConfig` by tyro), and
the commands of the other modules (`compare`, `control`, `distill`), each a `cli_main(args) -> int`
in its own module, imported only when it is run."""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import tyro

from .config import TrainConfig, demo_config
from .training import Trainer, TrainSummary

USAGE = """usage: latentplan {train,demo,compare,control,distill} [--flags]

  train    PlaNet's training loop (every TrainConfig field is a flag: latentplan train --help);
           with --resume, the run folder's own config is the default and flags override it
  demo     the embedded default: a CPU-sized run on dmc:cartpole-swingup from state, ending with a
           5-episode evaluation (about 10 minutes on 2 cores; accepts the same flags to override it)
  compare  several planners on one checkpoint, same seeds and budgets: a table, JSON, CSV, a plot
  control  a planner as a real-time controller of a simulated robot (--checkpoint, --rate)
  distill  distil a planner into a policy network on a checkpoint (--checkpoint, --teacher)
"""

# command -> "module:function"; the function takes the remaining arguments and returns the exit code
COMMANDS = {
    "compare": "latentplan.compare:cli_main",
    "control": "latentplan.control:cli_main",
    "distill": "latentplan.distillation:cli_main",
}


def summary_table(s: TrainSummary) -> str:
    """The final table printed after a run."""
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


def _run(config: TrainConfig) -> TrainSummary:
    summary = Trainer(config).run()
    print()
    print(summary_table(summary))
    if summary.stopped_early:
        print(f"  (collection stopped at the {config.max_wall_minutes} min wall-time limit)")
    print(f"  learning curve: {summary.run_dir}/curve.png   metrics: {summary.run_dir}/metrics.jsonl")
    return summary


def _stored_config(args: list[str], default_run_dir: str) -> TrainConfig | None:
    """With `--resume`, the `config.json` of the run folder named by `--run-dir` (if it exists)."""
    if "--resume" not in args:
        return None
    run_dir = default_run_dir
    for i, a in enumerate(args):
        if a == "--run-dir" and i + 1 < len(args):
            run_dir = args[i + 1]
        elif a.startswith("--run-dir="):
            run_dir = a.split("=", 1)[1]
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    return dataclasses.replace(TrainConfig.from_dict(json.loads(path.read_text())), resume=True, overwrite=False)


def _given(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def _free_demo_dir(config: TrainConfig, args: list[str]) -> TrainConfig:
    """The demo never deletes an earlier run: without `--run-dir`, `--resume` or `--overwrite`, a taken
    default folder (`runs/demo`) gives way to the next free `runs/demo-2`, `runs/demo-3`, ..."""
    if _given(args, "--run-dir") or config.resume or config.overwrite:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `latentplan` script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd in COMMANDS:
        module, function = COMMANDS[cmd].split(":")
        return int(getattr(importlib.import_module(module), function)(rest) or 0)
    if cmd not in ("train", "demo"):
        print(f"latentplan: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    default = TrainConfig() if cmd == "train" else demo_config()
    stored = _stored_config(rest, default.run_dir)
    if stored is not None:  # --resume: the run's own config, overridden by the flags given
        default = stored
    config = tyro.cli(TrainConfig, args=rest, default=default, prog=f"latentplan {cmd}")
    if cmd == "demo":
        config = _free_demo_dir(config, rest)
    try:
        _run(config)
    except FileExistsError as e:  # a run folder that must not be touched
        print(f"latentplan {cmd}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
