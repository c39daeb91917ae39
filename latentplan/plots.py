"""Plots: the learning curve of a training run."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["plot_learning_curve"]


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
    from matplotlib.figure import Figure

    rows = [json.loads(l) for l in Path(metrics).read_text().splitlines() if l.strip()]
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
