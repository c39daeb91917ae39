"""Plots: the learning curve of a training run."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["plot_learning_curve"]


def plot_learning_curve(metrics: str | os.PathLike, out: str | os.PathLike, *, title: str = "") -> Path:
    """Plot training and evaluation returns against environment steps from a `metrics.jsonl`.

    Args:
        metrics: path of the run's `metrics.jsonl`.
        out: PNG path to write.
        title: plot title (e.g. the environment name).

    Returns:
        The PNG's path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(l) for l in Path(metrics).read_text().splitlines() if l.strip()]
    train = [(r["env_steps"], r["train_return"]) for r in rows if "train_return" in r]
    evals = [(r["env_steps"], r["eval_return"]) for r in rows if "eval_return" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    if train:
        ax.plot(*zip(*train), ".", color="tab:gray", alpha=0.6, label="train episode (with noise)")
    if evals:
        ax.plot(*zip(*evals), "o-", color="tab:blue", label="evaluation (no noise)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
