"""The `latentplan` command line: `train` and `demo`, every flag built from `TrainConfig` by tyro."""

from __future__ import annotations

import sys

import tyro

from .config import TrainConfig, demo_config
from .training import Trainer, TrainSummary

USAGE = """usage: latentplan {train,demo} [--flags]

  train   PlaNet's training loop (every TrainConfig field is a flag: latentplan train --help)
  demo    the embedded default: a CPU-sized run on dmc:cartpole-swingup from state
          (about 15 minutes on 2 cores; accepts the same flags to override it)
"""


def summary_table(s: TrainSummary) -> str:
    """The final table printed after a run."""
    rows = [
        ("episodes", f"{s.episodes}"),
        ("env steps", f"{s.env_steps:,}"),
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `latentplan` script. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "train":
        config = tyro.cli(TrainConfig, args=rest, prog="latentplan train")
    elif cmd == "demo":
        config = tyro.cli(TrainConfig, args=rest, default=demo_config(), prog="latentplan demo")
    else:
        print(f"latentplan: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    _run(config)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
