"""The report of a `latentplan suite` grid: one table (JSON and markdown) and one figure.

Per task and recipe: the return of the final, fixed-seed evaluation (mean and 95 % Student
t-interval: over seeds, each seed's mean over its evaluation episodes, when two or more seeds
finished; over the evaluation episodes of the one seed otherwise, and the table says which),
environment steps, episodes and wall time per cell, and the cells that failed. The figure has one
panel per task: each recipe's evaluation returns against environment steps, each seed thin and
their mean (over seeds that evaluated at the same steps) thick, its training episodes as faint dots
(with exploration noise; the first are the random seed episodes), and the final evaluation's mean
over seeds as an open diamond.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from . import io
from .statistics import finite_json, t_interval

__all__ = ["aggregate", "markdown_table", "plot_suite_curves", "write_report"]


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, recipe) in grid order, from the cells' results.

    Returns:
        Rows with `task`, `recipe`, `seeds` (finished cells), `failed` (cells that failed every
        attempt), `return_mean`, `ci_low`, `ci_high`, `ci_over` (`"seeds"` or `"episodes"`),
        `per_seed` (each finished seed's mean final return), `nonfinite_returns` (final returns
        that are NaN or inf: the row then has no interval), `env_steps` (mean per cell),
        `episodes`, `wall_s` (mean per cell). A grid run with `final_eval_episodes=0` has
        finished cells without final returns: their rows have `seeds` but no return.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in cells:
        groups.setdefault((c["task"], c["recipe"]), []).append(c)
    rows = []
    for (task, recipe), group in groups.items():
        finished = [c for c in group if c["status"] == "done"]
        done = [c for c in finished if c["final_returns"]]  # with a final evaluation
        returns = [[float("nan") if x is None else float(x) for x in c["final_returns"]] for c in done]
        per_seed = [float(np.mean(r)) for r in returns]
        nonfinite = sum(not math.isfinite(x) for r in returns for x in r)
        if nonfinite:
            ci, over = None, ("seeds" if len(done) >= 2 else "episodes")  # NaN/inf has no interval
        elif len(done) >= 2:
            ci, over = t_interval(per_seed), "seeds"
        elif done:
            ci, over = t_interval(returns[0]), "episodes"
        else:
            ci, over = None, None
        mean = lambda key: float(np.mean([c[key] for c in finished])) if finished else None  # noqa: E731
        rows.append({
            "task": task, "recipe": recipe, "seeds": len(finished), "failed": len(group) - len(finished),
            "return_mean": float(np.mean(per_seed)) if done else None,
            "ci_low": None if ci is None else ci[0], "ci_high": None if ci is None else ci[1], "ci_over": over,
            "per_seed": per_seed, "nonfinite_returns": nonfinite,
            "env_steps": mean("env_steps"), "episodes": mean("episodes"), "wall_s": mean("wall_s"),
        })
    return rows


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{digits}f}"


def markdown_table(rows: list[dict[str, Any]], cells: list[dict[str, Any]] | None = None) -> str:
    """The rows as a markdown table; under it the rows with NaN/inf final returns, and the failed
    cells with their errors."""
    lines = ["| task | recipe | return (mean) | 95 % CI | CI over | seeds | env steps | episodes | wall / cell |",
             "|---|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = "—" if r["ci_low"] is None else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        seeds = f"{r['seeds']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        wall = "—" if r["wall_s"] is None else f"{r['wall_s'] / 60:.1f} min"
        lines.append(f"| {r['task']} | {r['recipe']} | {_fmt(r['return_mean'])} | {ci} | {r['ci_over'] or '—'} | "
                     f"{seeds} | {_fmt(r['env_steps'], 0)} | {_fmt(r['episodes'], 0)} | {wall} |")
    for r in rows:
        if r.get("nonfinite_returns"):
            lines.append(f"\n{r['task']}/{r['recipe']}: {r['nonfinite_returns']} final return(s) are NaN or inf "
                         f"(no interval)")
    for c in cells or []:
        if c["status"] != "done":
            error = c["error"].splitlines()[-1] if c["error"] else ""
            lines.append(f"\nfailed after {c['attempts']} attempt(s): {c['task']}/{c['recipe']}/seed{c['seed']}: {error}")
    return "\n".join(lines) + "\n"


def plot_suite_curves(cells: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """One figure, one panel per task: returns against environment steps per recipe (see the module doc).

    Args:
        cells: the cells' results (each with `task`, `recipe`, `status`, `final_returns`, `env_steps`,
            `curve` and optionally `train_curve`, both `[[env_steps, return], ...]`).
        path: the PNG to write.
        title: the figure's title (e.g. the step budget).
    """
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(c["task"] for c in cells))
    recipes = list(dict.fromkeys(c["recipe"] for c in cells))
    cols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows), dpi=110)
    axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
    for ax, task in zip(axes, tasks):
        for i, recipe in enumerate(recipes):
            done = [c for c in cells if c["task"] == task and c["recipe"] == recipe and c["status"] == "done"]
            for c in done:
                if c.get("train_curve"):
                    tr = np.asarray(c["train_curve"], dtype=float)
                    ax.plot(tr[:, 0], tr[:, 1], ".", color=f"C{i}", alpha=0.25, ms=3)
            finals = [float(np.mean(c["final_returns"])) for c in done if c["final_returns"]]
            if finals:
                x = max(c["env_steps"] for c in done)
                ax.plot([x], [np.mean(finals)], "D", color=f"C{i}", ms=6, mfc="none")
            curves = [np.asarray(c["curve"], dtype=float) for c in done if c["curve"]]
            for cv in curves:
                ax.plot(cv[:, 0], cv[:, 1], color=f"C{i}", alpha=0.3, lw=0.8)
            if curves and all(len(cv) == len(curves[0]) and np.array_equal(cv[:, 0], curves[0][:, 0]) for cv in curves):
                mean = np.mean([cv[:, 1] for cv in curves], axis=0)
                ax.plot(curves[0][:, 0], mean, "o-", color=f"C{i}", ms=3, lw=1.6,
                        label=f"{recipe} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.set_ylabel("episode return", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_report(result, cfg, *, wall_s: float) -> dict[str, str]:
    """Write `results.json`, `results.md` and `curves.png` into the grid's folder.

    Args:
        result: the `SuiteResult`.
        cfg: the `SuiteConfig`.
        wall_s: wall time of this invocation, in seconds (cells skipped as done cost none).

    Returns:
        `{"json": path, "markdown": path, "figure": path}`.
    """
    out = Path(result.out)
    rows = aggregate(result.cells)
    budget = f"{cfg.steps:,} env steps per cell, seeds {list(cfg.seeds)}"
    payload = {"grid": io.config_dict(cfg), "rows": rows, "cells": result.cells, "skipped": result.skipped,
               "wall_s": wall_s}
    files = {"json": str(out / "results.json"), "markdown": str(out / "results.md"), "figure": str(out / "curves.png")}
    # standard JSON: a NaN/inf return is written as null (the row's nonfinite_returns counts them)
    io.atomic_write_text(files["json"], json.dumps(finite_json(payload), indent=2, allow_nan=False))
    io.atomic_write_text(files["markdown"], f"Budget: {budget}.\n\n" + markdown_table(rows, result.cells))
    plot_suite_curves(result.cells, files["figure"], title=budget)
    return files
