"""`latentplan compare`: several planners on one checkpoint at the same seeds and budgets."""

from __future__ import annotations

import sys

import torch

from latentplan.compare import CompareConfig, compare
from latentplan.registry import PlannerNotAvailable

__all__ = ["run"]


def run(cfg: CompareConfig, args: list[str] | None = None) -> int:
    """Print the comparison table and write the results into `cfg.out`.

    Returns:
        The exit code: 0, 2 for bad input (unknown planner, missing checkpoint, ...), 130 after an
        interruption (rerun the same command to resume from `cells.jsonl`).
    """
    torch.set_num_threads(cfg.threads)
    try:
        result = compare(cfg.checkpoint, cfg.planners, episodes=cfg.episodes, seed=cfg.seed, budgets=cfg.budgets(),
                         horizon=cfg.horizon, out_dir=cfg.out, resume=cfg.resume, max_decisions=cfg.max_decisions,
                         progress=cfg.progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished episodes are in {cfg.out}/cells.jsonl; rerun the same command to resume",
              file=sys.stderr)
        return 130
    except (ValueError, PlannerNotAvailable, FileNotFoundError) as err:
        print(f"latentplan compare: {str(err).removeprefix('compare: ')}", file=sys.stderr)
        return 2
    print()
    print(result.table())
    for note in result.notes():  # evaluation counts off the expected, fallbacks, NaN/inf returns
        print(note)
    _print_paired(result)
    print(f"\n  {cfg.out}/results.json  {cfg.out}/results.csv  {cfg.out}/return_vs_ms.png")
    return 0


def _print_paired(result) -> None:
    """Each planner against the first, per budget, paired by seed (`CompareResult.paired`); skipped
    with one planner, one episode, or a NaN/inf return."""
    first = result.rows[0]["planner"] if result.rows else None
    lines = []
    for r in result.rows:
        if r["planner"] == first or r["episodes"] < 2:
            continue
        try:
            d = result.paired(first, r["planner"], r["budget"])
        except ValueError:
            continue
        ci = "-" if d.ci is None else f"[{d.ci[0]:.1f}, {d.ci[1]:.1f}]"
        p = "-" if d.p_value is None else f"{d.p_value:.3g}"
        lines.append(f"| {r['planner']} - {first} | {r['budget']} | {d.n} | {d.mean:+.1f} | {ci} | {p} | "
                     f"{d.wins}/{d.ties}/{d.losses} |")
    if lines:
        print("\npaired by seed (the same start states): return difference against the first planner")
        print("| planners | budget | seeds | difference | 95 % CI | paired t p | wins/ties/losses |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))
