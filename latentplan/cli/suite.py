"""`latentplan suite`: a grid of training runs (tasks x recipes x seeds) on Ray, and its table."""

from __future__ import annotations

import sys

from latentplan.io import RunFolderLocked
from latentplan.suite import SuiteConfig, run_suite

__all__ = ["run"]


def run(cfg: SuiteConfig, args: list[str] | None = None) -> int:
    """Run the grid and print its table.

    Returns:
        0 when every cell finished; 1 when a cell failed every attempt (the table and
        `results.json` name it and its error); 2 for bad input (unknown task or recipe, Ray
        missing, the grid's folder in use); 130 after an interruption (rerun the same command to
        resume: finished cells are skipped, unfinished ones resume from their checkpoints).
    """
    try:
        result = run_suite(cfg)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to resume the grid in {cfg.out}", file=sys.stderr)
        return 130
    except (ValueError, ImportError, RunFolderLocked) as err:
        print(f"latentplan suite: {err}", file=sys.stderr)
        return 2
    print()
    print(open(result.files["markdown"]).read())
    print(f"  {result.skipped} cell(s) were already done and skipped")
    print(f"  {result.files['json']}  {result.files['markdown']}  {result.files['figure']}")
    return 1 if result.failed else 0
