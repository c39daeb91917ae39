"""`latentplan distill`: distil a planner (a registry spec) into a policy network on a checkpoint."""

from __future__ import annotations

import math
import sys

from latentplan.distillation import DistillRunConfig, run_distillation

__all__ = ["run"]


def run(cfg: DistillRunConfig, args: list[str] | None = None) -> int:
    """Run the distillation and print its summary.

    Returns:
        The exit code: 0; 2 on a bad setting, a missing input, or a `--resume` with another config;
        130 after an interruption (the same command with `--resume` continues from the last
        finished phase, see `out/progress.json`).
    """
    try:
        res = run_distillation(cfg)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command with --resume (or `latentplan distill --resume --out {cfg.out}`) "
              f"to continue from the last finished phase ({cfg.out}/progress.json)", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:
        print(f"latentplan distill: {e}", file=sys.stderr)
        return 2
    m = res.metrics
    print(f"\n  teacher {cfg.teacher} ({m['target']} target): {m['labels']} labels, {m['steps']} gradient steps, "
          f"{m['wall_s'] / 60:.1f} min")
    if "student" in m:
        line = f"  student return {m['student']['mean']:.1f} ± {m['student']['std']:.1f} ({m['student']['plan_ms']:.2f} ms/decision)"
        if "teacher_eval" in m:
            t = m["teacher_eval"]
            line += (f"   teacher {t['mean']:.1f} ± {t['std']:.1f} ({t['plan_ms']:.1f} ms/decision); student - teacher "
                     f"{m['return_difference']:+.1f}" + ("" if math.isnan(m["return_ratio"]) else f", ratio {m['return_ratio']:.2f}"))
        print(line)
    print(f"  policy: {res.out / 'policy.pt'}   loss curve: {res.out / 'loss.png'}   metrics: {res.out / 'metrics.json'}")
    return 0
