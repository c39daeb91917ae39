"""The library's plots, drawn with matplotlib's object-oriented API (a `Figure` saved to a PNG):
pyplot's global state and the user's backend are never touched, so they are safe in a notebook.

- `plot_learning_curve`: a training run's returns against environment steps;
- `plot_return_vs_ms`: a planner comparison, return against time per decision;
- `plot_distillation`: a distillation's loss curve and DAgger rounds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

__all__ = ["plot_distillation", "plot_learning_curve", "plot_return_vs_ms"]


def plot_learning_curve(metrics: str | os.PathLike, out: str | os.PathLike, *, title: str = "",
                        final: dict | None = None) -> Path:
    """Plot training and evaluation returns against environment steps from a `metrics.jsonl`.

    Args:
        metrics: path of the run's `metrics.jsonl`.
        out: PNG path to write.
        title: plot title (e.g. the environment name).
        final: the final evaluation (`Trainer.final_evaluation()`: `returns`, `mean`, `ci95`),
            drawn at the last step as its mean with the 95 % interval and every episode's return.

    Returns:
        The PNG's path.
    """
    from .io import read_jsonl

    rows = read_jsonl(metrics)
    train = [(r["env_steps"], r["train_return"]) for r in rows if "train_return" in r]
    evals = [(r["env_steps"], r["eval_return"]) for r in rows if "eval_return" in r]
    fig = Figure(figsize=(6, 3.6), dpi=120)  # object-oriented: pyplot's global state and backend untouched
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), ".", color="tab:gray", alpha=0.6, label="train episode (with noise)")
    if evals:
        ax.plot(*zip(*evals), "o-", color="tab:blue", label="evaluation (no noise)")
    if final and final.get("returns") and rows:
        x = max(r.get("env_steps", 0) for r in rows)
        ax.plot([x] * len(final["returns"]), final["returns"], "x", color="tab:red", alpha=0.5)
        lo, hi = final["ci95"] or (final["mean"], final["mean"])
        ax.errorbar([x], [final["mean"]], yerr=[[final["mean"] - lo], [hi - final["mean"]]], fmt="s",
                    color="tab:red", capsize=4, label=f"final model, {len(final['returns'])} episodes (95 % CI)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out


def plot_return_vs_ms(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str = "") -> Path:
    """Plot mean return (95 % CI error bars) against median ms per decision (log x) to a PNG.

    Args:
        rows: `CompareResult.rows` (`planner`, `budget`, `ms_p50`, `return_mean`,
            `return_ci_low`/`return_ci_high`).
        path: the PNG to write.
        title: the plot's title (e.g. the env's name).

    Each planner is one colour; its budgets are joined by a line, in order of time.
    """
    import numpy as np

    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    ax = fig.subplots()
    planners = list(dict.fromkeys(r["planner"] for r in rows))
    for i, name in enumerate(planners):
        rs = sorted((r for r in rows if r["planner"] == name), key=lambda r: r["ms_p50"])
        x = np.array([r["ms_p50"] for r in rs])
        y = np.array([r["return_mean"] for r in rs])
        lo = np.array([y[j] - r["return_ci_low"] if r["return_ci_low"] is not None else 0.0 for j, r in enumerate(rs)])
        hi = np.array([r["return_ci_high"] - y[j] if r["return_ci_high"] is not None else 0.0 for j, r in enumerate(rs)])
        ax.errorbar(x, y, yerr=np.vstack([lo, hi]), fmt="o-", capsize=3, color=f"C{i % 10}", label=name)
        for xj, yj, r in zip(x, y, rs):
            ax.annotate(r["budget"], (xj, yj), textcoords="offset points", xytext=(4, 4), fontsize=6, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("ms per decision (median, log scale)")
    ax.set_ylabel("episode return (mean, 95 % bootstrap CI)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    return p


def plot_distillation(metrics: dict[str, Any], path: str | Path) -> Path:
    """Plot the loss curve (per gradient step, with a moving average and the phase boundaries)
    and, when there are DAgger rounds, the student's return per round next to the teacher's.

    Args:
        metrics: a `run_distillation` metrics dict (`loss_history`, `phases`, `rounds`, ...).
        path: the PNG to write.

    Returns:
        The PNG's path.
    """
    import matplotlib.ticker
    import numpy as np

    losses = np.asarray(metrics.get("loss_history", []), dtype=float)
    rounds = metrics.get("rounds", [])
    ncols = 2 if rounds else 1
    fig = Figure(figsize=(5.2 * ncols, 3.6), dpi=120)
    axes = fig.subplots(1, ncols, squeeze=False)
    ax = axes[0, 0]
    if losses.size:
        steps = np.arange(1, losses.size + 1)
        ax.plot(steps, losses, color="tab:gray", alpha=0.35, lw=0.8, label="loss per step")
        w = max(1, min(100, losses.size // 20))
        if w > 1:
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            ax.plot(steps[w - 1:], smooth, color="tab:blue", lw=1.5, label=f"moving average ({w})")
    for name, step in metrics.get("phases", []):
        ax.axvline(step, color="tab:red", alpha=0.3, lw=0.8)
    ax.set_xlabel("gradient step")
    ax.set_ylabel(f"distillation loss ({metrics.get('target', '')})")
    ax.set_title(f"distilling {metrics.get('teacher', '')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if rounds:
        ax = axes[0, 1]
        ax.plot([r["round"] for r in rounds], [r["mean_return"] for r in rounds], "o-", label="student (DAgger episodes)")
        if "student" in metrics:
            ax.axhline(metrics["student"]["mean"], color="tab:blue", ls="--", lw=1, label="student (evaluation)")
        if "teacher_eval" in metrics:
            ax.axhline(metrics["teacher_eval"]["mean"], color="tab:green", ls="--", lw=1, label="teacher (evaluation)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("DAgger round")
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
