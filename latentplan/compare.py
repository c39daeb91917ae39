"""Fair planner comparisons on one trained model: the same seeds and the same compute budget for
every planner, a table with bootstrap confidence intervals, JSON, CSV and a plot, resumable runs.

A budget is either a number of model evaluations per decision (imagined transitions, what the
planners' `info["model_evals"]` counts) or a wall-clock budget in milliseconds per decision. For
an evaluation budget, each planner's factory scales its own size to it (CEM: the candidates per
iteration; the gradient planner: its steps; MCTS: its simulations) and the harness reports the
measured count next to it. For a time budget, each planner gets a large configuration and the
deadline, and anytime planners stop there.

Planners are built by name through `latentplan.registry` (`make_planner`, `register_planner`).
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from latentplan.planners.validate import check_int

from .control import ControllerConfig, MPCController
from .evaluation import check_max_decisions, run_episode
from .io import append_jsonl, atomic_write_text, read_jsonl
from .registry import Budget, PlannerBuild, PlannerSpec, make_planner
from .statistics import PairedDifference, bootstrap_ci, finite_json, paired_difference

__all__ = ["CompareConfig", "CompareResult", "compare", "run_cell"]


# ---------------------------------------------------------------------------------------- cells
def run_cell(model: Any, build: PlannerBuild, env: Any, seed: int, *, max_decisions: int | None = None,
             on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One evaluation episode of one planner: env seed and planner seed `seed`.

    The episode is `latentplan.evaluation.run_episode` with the planner inside an
    `MPCController` in inline mode (`budget_ms=build.deadline_ms`):
    the belief is filtered, the plan warm-started if `build.warm_start`, and a time budget is
    the planner's deadline (minus one iteration's estimated time, so it ends near the budget).

    Returns:
        A dict: `seed`, `return` (undiscounted, action repeat included), `decisions`,
        `latency_ms` (per decision, `[decisions]`), `model_evals_per_decision`,
        `iterations_mean`, `deadline_misses`, `planner_failures`, `fallbacks`, `wall_s`.
    """
    margin = 1.0 if build.deadline_ms is None else min(1.0, build.deadline_ms / 10)
    ctrl = MPCController(model, build.planner, ControllerConfig(
        budget_ms=build.deadline_ms, mode="inline", warm_start=build.warm_start, seed=seed, margin_ms=margin,
    ), objective=build.objective)
    t0 = time.perf_counter()
    _, ep = run_episode(env, ctrl, seed=seed, max_decisions=max_decisions, on_step=on_step)
    ret, t = ep.ret, ep.decisions
    st = ctrl.stats()
    ctrl.close()
    return {
        "seed": int(seed), "return": ret, "decisions": t,
        "latency_ms": [round(x, 3) for x in ctrl.latencies_ms],
        "model_evals_per_decision": st.model_evals_per_step, "iterations_mean": st.iterations_mean,
        "deadline_misses": st.deadline_misses, "planner_failures": st.planner_failures,
        "fallbacks": st.fallbacks, "wall_s": time.perf_counter() - t0,
    }


@dataclass
class CompareResult:
    """The cells (one per planner, budget and seed) and the table built from them.

    Attributes:
        cells: one dict per episode (see `run_cell`) plus `planner` (label), `name`,
            `budget` (label), `budget_evals`, `budget_ms`, `expected_evals`, `description`.
        rows: one dict per (planner, budget): `planner`, `budget`, `episodes`, `returns`,
            `return_mean`, `return_ci_low`/`return_ci_high` (95 % bootstrap CI of the mean,
            `None` with one episode), `ms_p50`/`ms_p99`/`ms_mean` (per decision, over all its
            decisions), `model_evals_per_decision`, `expected_evals`, `evals_match` (measured
            within 1 % of expected, `None` when not applicable), `deadline_misses`,
            `planner_failures` (plan calls that raised or returned an unusable plan), `fallbacks`
            (decisions answered by the controller's fallback instead of a plan), `decisions`,
            `nonfinite_returns` (episodes whose return is NaN or inf: the row then has no
            interval and its mean is NaN or inf), `description`.
        meta: the run's settings (checkpoint, env, horizon, seeds, ...).
    """

    cells: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_cells(cls, cells: list[dict[str, Any]], order: Iterable[tuple[str, str]] | None = None,
                   meta: dict | None = None) -> "CompareResult":
        """Aggregate `cells` into rows, in `order` of (planner label, budget label) if given."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for c in cells:
            groups.setdefault((c["planner"], c["budget"]), []).append(c)
        keys = [k for k in (order or groups) if k in groups]
        rows = []
        for key in keys:
            cs = sorted(groups[key], key=lambda c: c["seed"])
            rets = [float("nan") if c["return"] is None else float(c["return"]) for c in cs]
            nonfinite = sum(not np.isfinite(r) for r in rets)
            ci = None if nonfinite else bootstrap_ci(rets)  # a NaN/inf return has no interval
            lat = [x for c in cs for x in c["latency_ms"]]
            decisions = sum(c["decisions"] for c in cs)
            evals = sum(c["model_evals_per_decision"] * c["decisions"] for c in cs) / max(decisions, 1)
            expected = cs[0].get("expected_evals")
            rows.append({
                "planner": key[0], "budget": key[1], "episodes": len(cs), "seeds": [c["seed"] for c in cs],
                "returns": rets, "return_mean": float(np.mean(rets)), "nonfinite_returns": nonfinite,
                "return_ci_low": None if ci is None else ci[0], "return_ci_high": None if ci is None else ci[1],
                "ms_p50": float(np.percentile(lat, 50)) if lat else float("nan"),
                "ms_p99": float(np.percentile(lat, 99)) if lat else float("nan"),
                "ms_mean": float(np.mean(lat)) if lat else float("nan"),
                "model_evals_per_decision": evals, "expected_evals": expected,
                "evals_match": None if not expected else abs(evals - expected) <= 0.01 * expected,
                "deadline_misses": sum(c["deadline_misses"] for c in cs),
                "planner_failures": sum(c["planner_failures"] for c in cs),
                "fallbacks": sum(c["fallbacks"] for c in cs), "decisions": decisions,
                "description": cs[0].get("description", ""),
            })
        return cls(cells, rows, dict(meta or {}))

    def notes(self) -> list[str]:
        """What the table's numbers alone do not show, one line per row concerned: a measured
        evaluation count more than 1 % off the expected one; decisions answered by the
        controller's fallback because the planner raised or returned an unusable plan (the
        return is then partly the fallback's, not the planner's); NaN/inf episode returns (no
        interval)."""
        out = []
        for r in self.rows:
            at = f"{r['planner']} @ {r['budget']}"
            if r["evals_match"] is False:
                out.append(f"note: {at} measured {r['model_evals_per_decision']:.0f} model evaluations per decision, "
                           f"expected {r['expected_evals']}")
            if r.get("fallbacks") or r.get("planner_failures"):
                out.append(f"note: {at}: {r.get('fallbacks', 0)} of {r.get('decisions', '?')} decisions were answered by "
                           f"the controller's fallback, not a plan ({r.get('planner_failures', 0)} planner failures: "
                           f"the planner raised or returned an unusable plan): its return is partly the fallback's")
            if r.get("nonfinite_returns"):
                out.append(f"note: {at}: {r['nonfinite_returns']} of {r['episodes']} episode returns are NaN or inf "
                           f"(no interval)")
        return out

    def paired(self, a: str, b: str, budget: str | None = None, *, confidence: float = 0.95) -> PairedDifference:
        """Planner `b`'s return minus planner `a`'s, paired by seed (`statistics.paired_difference`).

        Every planner ran episode `i` from the same seed, so the difference per seed removes what
        the start state decides for both; its interval can exclude 0 while the rows' intervals overlap.

        Args:
            a, b: planner labels (as in the rows).
            budget: a budget label (`"6000 evals"`); default the only budget of the result.
            confidence: the intervals' level.

        Raises:
            ValueError: no such planner or budget, no seed that both ran, a NaN/inf return, or
                `budget=None` with several budgets.
        """
        budgets = list(dict.fromkeys(c["budget"] for c in self.cells))
        if budget is None and len(budgets) != 1:
            raise ValueError(f"CompareResult.paired: pass budget=, one of {budgets}")
        budget = budgets[0] if budget is None else budget
        by = []
        for label in (a, b):
            rets = {c["seed"]: c["return"] for c in self.cells if c["planner"] == label and c["budget"] == budget}
            if not rets:
                raise ValueError(f"CompareResult.paired: no episodes of {label!r} at {budget!r}; planners "
                                 f"{list(dict.fromkeys(c['planner'] for c in self.cells))}, budgets {budgets}")
            by.append(rets)
        seeds = sorted(set(by[0]) & set(by[1]))
        if not seeds:
            raise ValueError(f"CompareResult.paired: {a!r} and {b!r} ran no seed in common at {budget!r}")
        nan = float("nan")
        return paired_difference([nan if by[0][s] is None else by[0][s] for s in seeds],
                                 [nan if by[1][s] is None else by[1][s] for s in seeds], confidence=confidence)

    def table(self) -> str:
        """The rows as a Markdown table. A row whose decisions were partly answered by the
        controller's fallback shows their count beside its return (`-1.9 (12 fallbacks)`);
        `notes()` says more (the CLI prints them under the table)."""
        head = "| planner | budget | episodes | return | 95 % CI | ms/decision p50 | p99 | model evals/decision |"
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            ci = "-" if r["return_ci_low"] is None else f"[{r['return_ci_low']:.1f}, {r['return_ci_high']:.1f}]"
            ev = f"{r['model_evals_per_decision']:.0f}"
            if r["evals_match"] is False:
                ev += f" (expected {r['expected_evals']})"
            ret = f"{r['return_mean']:.1f}" + (f" ({r['fallbacks']} fallbacks)" if r.get("fallbacks") else "")
            lines.append(f"| {r['planner']} | {r['budget']} | {r['episodes']} | {ret} | {ci} | "
                         f"{r['ms_p50']:.1f} | {r['ms_p99']:.1f} | {ev} |")
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write `{"meta", "rows", "cells"}` to `path` as standard JSON: a NaN or inf number (a
        non-finite return, a latency of a row without decisions) is written as `null`."""
        data = finite_json({"meta": self.meta, "rows": self.rows, "cells": self.cells})
        return atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the rows (without the per-episode lists) to `path` as CSV."""
        cols = ["planner", "budget", "episodes", "return_mean", "return_ci_low", "return_ci_high", "ms_p50", "ms_p99",
                "ms_mean", "model_evals_per_decision", "expected_evals", "deadline_misses", "planner_failures",
                "fallbacks", "description"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow(r)
        return atomic_write_text(path, buf.getvalue())

    def plot(self, path: str | os.PathLike, *, title: str = "") -> Path:
        """Plot mean return (95 % CI error bars) against median ms per decision (log x) to a PNG
        (`latentplan.plots.plot_return_vs_ms`)."""
        from .plots import plot_return_vs_ms

        return plot_return_vs_ms(self.rows, path, title=title or str(self.meta.get("env", "")))

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write `results.json`, `results.csv` and `return_vs_ms.png` into `out_dir`."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        return {"json": self.to_json(d / "results.json"), "csv": self.to_csv(d / "results.csv"),
                "png": self.plot(d / "return_vs_ms.png")}


def _cell_key(meta: Mapping[str, Any], planner: str, budget: str, seed: int) -> str:
    """A cell's identity: the checkpoint's path and content (its episode count and content digest, so a
    model retrained at the same path never reuses the old model's cells), or for a model object the
    digest of its class and weights, env, horizon, cut, planner, budget and seed."""
    key = [meta.get("checkpoint"), meta.get("checkpoint_episode"), meta.get("checkpoint_sha256"),
           meta.get("env"), meta.get("horizon"), meta.get("max_decisions"), planner, budget, int(seed)]
    if meta.get("model_sha256") is not None:  # a model object: its weights (appended, so older keys still match)
        key.append(meta["model_sha256"])
    return json.dumps(key)


def _load_cells(path: Path) -> dict[str, dict]:
    """The finished cells of `cells.jsonl` by key (a line cut short by an interruption is skipped)."""
    return {c["key"]: c for c in (read_jsonl(path) if path.exists() else []) if "key" in c}


def compare(
    model: Any,
    planners: Sequence[str | PlannerSpec],
    *,
    episodes: int = 5,
    seed: int = 0,
    budgets: Sequence[Budget] = (Budget(evals=6000),),
    horizon: int = 12,
    env: str | Callable[[int], Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
    max_decisions: int | None = None,
    progress: bool = True,
) -> CompareResult:
    """Compare planners on one model: the same seeds and budget for each, N episodes per cell.

    Every (planner, budget) runs episodes with env and planner seeds `seed, seed + 1, ...,
    seed + episodes - 1`. Cells are run seed by seed (every planner's first episode, then
    every planner's second, ...), so an interrupted run already compares all planners.

    Args:
        model: a `WorldModel`, or the path of a checkpoint (`load_checkpoint`), whose run
            config then gives the env.
        planners: registry names with optional overrides (`"icem:noise_beta=3"`) or `PlannerSpec`s.
        episodes: N, evaluation episodes per planner and budget.
        seed: the first seed (an int >= 0: gymnasium seeds are non-negative).
        budgets: the budgets per decision to run every planner at.
        horizon: the planning horizon H given to every factory.
        env: an env name for `latentplan.envs.make` (with the checkpoint's observation mode
            and action repeat when a checkpoint is given), or `seed -> gymnasium.Env`. Needed
            when `model` is not a checkpoint path.
        out_dir: where to keep `cells.jsonl` (one line per finished cell) and to write
            `results.json`, `results.csv` and `return_vs_ms.png`. `None`: nothing is written.
        resume: reuse the finished cells in `out_dir/cells.jsonl` whose settings match (the
            same checkpoint path and content: its episode count and the SHA-256 of its config
            and weights, so a checkpoint retrained in place is evaluated afresh; for a model
            object, the SHA-256 of its class and `state_dict()`; env, horizon, `max_decisions`,
            planner label, budget and seed) and whose planner was built with the same
            configuration (the cell's `description`); `False` starts the file afresh. A model
            object without weights (an `AnalyticModel` of your own functions) and an env given
            as a callable are known by their class and `__name__` only: after changing their
            code, pass `resume=False`.
        max_decisions: cut every episode after this many decisions (smoke tests).
        progress: show progress bars (tqdm).

    Returns:
        A `CompareResult` with the rows in the order of `planners` x `budgets`.

    Raises:
        ValueError: unknown planner, bad override, a budget a planner cannot be scaled to,
            `episodes` not an int >= 1, `seed` not an int >= 0, `max_decisions` not an int >= 1
            or None, no planners, no budgets, two budgets with the same label, two planner
            specs that name the same planner and overrides (`"cem"` and `"cem:"`), no env.
        PlannerNotAvailable: a planner registered as `"module:function"` cannot be imported.
        KeyboardInterrupt: passed on after the finished cells are saved (rerun to resume).
    """
    specs, budgets = _checked(planners, budgets, episodes=episodes, seed=seed, max_decisions=max_decisions)
    model, make_env, checkpoint, env_name, content = _resolve(model, env)
    meta = {"checkpoint": checkpoint, **content, "env": env_name, "horizon": int(horizon), "episodes": int(episodes),
            "seeds": [seed + i for i in range(episodes)], "max_decisions": max_decisions,
            "budgets": [b.label for b in budgets], "planners": [s.label for s in specs],
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    builds = {(s.label, b.label): make_planner(s, model, b, horizon=horizon) for b in budgets for s in specs}
    path = None if out_dir is None else Path(out_dir) / "cells.jsonl"
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not resume:
            path.unlink(missing_ok=True)
    todo, cells = _split_done(meta, specs, budgets, builds, path, progress=progress)
    _run_cells(todo, cells, builds, model, make_env, path, max_decisions=max_decisions, progress=progress)
    result = CompareResult.from_cells(cells, [(s.label, b.label) for s in specs for b in budgets], meta)
    if out_dir is not None:
        result.save(out_dir)
    return result


def _checked(planners: Sequence[str | PlannerSpec], budgets: Sequence[Budget], *, episodes: Any, seed: Any,
             max_decisions: Any) -> tuple[list[PlannerSpec], list[Budget]]:
    """`compare`'s arguments checked: `(specs, budgets)`, or a `ValueError` naming what is wrong (see `compare`)."""
    for name, value, least in (("episodes", episodes, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"compare: {name} must be an int >= {least}; got {value!r}")
    check_max_decisions(max_decisions, "compare")
    budgets = list(budgets)
    if not budgets:
        raise ValueError("compare: give at least one budget")
    labels = [b.label for b in budgets]
    if len(set(labels)) != len(labels):
        raise ValueError(f"compare: budgets must differ (each is run once per planner); got {labels}")
    specs = [PlannerSpec.parse(p) if isinstance(p, str) else p for p in planners]
    if not specs:
        raise ValueError("compare: give at least one planner")
    if len({s.label for s in specs}) != len(specs):
        raise ValueError(f"compare: planner labels must be unique; got {[s.label for s in specs]}")
    texts = [s for p, s in zip(planners, specs) if isinstance(p, str)]  # explicit PlannerSpec labels may copy
    same = [(a.label, b.label) for i, a in enumerate(texts) for b in texts[i + 1:]
            if (a.name, a.overrides) == (b.name, b.overrides)]
    if same:
        raise ValueError(f"compare: planners {same[0][0]!r} and {same[0][1]!r} are the same planner (name and "
                         f"overrides); give each once (from Python, copies under distinct labels: PlannerSpec(name, overrides, label))")
    return specs, budgets


def _same_config(stored: Any, built: Any) -> bool:
    """Whether a stored cell's planner description is the built planner's, ignoring object addresses
    (`<Foo object at 0x7f...>`: a default `repr` differs from process to process)."""
    strip = lambda d: re.sub(r" at 0x[0-9a-fA-F]+", "", str(d))  # noqa: E731
    return strip(stored) == strip(built)


def _split_done(meta: Mapping[str, Any], specs: list[PlannerSpec], budgets: list[Budget],
                builds: Mapping[tuple[str, str], PlannerBuild], path: Path | None, *, progress: bool
                ) -> tuple[list[tuple], list[dict]]:
    """`(todo, cells)`: the cells to run `(key, spec, budget, seed)`, seed by seed (an interrupted run
    already compares every planner), and the finished cells of `path` to reuse: those with the same key
    whose planner was built with the same configuration (a factory re-registered, or a library default
    changed, under the same label runs again)."""
    done = _load_cells(path) if path is not None else {}
    todo, cells, stale = [], [], 0
    for sd in meta["seeds"]:
        for b in budgets:
            for s in specs:
                key = _cell_key(meta, s.label, b.label, sd)
                old = done.get(key)
                if old is not None and _same_config(old.get("description"), builds[(s.label, b.label)].description):
                    cells.append(old)
                else:
                    stale += old is not None
                    todo.append((key, s, b, sd))
    if stale and progress:
        print(f"compare: {stale} finished episode(s) in {path} were run with another planner configuration "
              "under the same label; running them again")
    return todo, cells


def _resolve(model: Any, env: str | Callable[[int], Any] | None
             ) -> tuple[Any, Callable[[int], Any], str | None, str, dict[str, Any]]:
    """`(model, seed -> env, checkpoint path or None, env name, content)`: a checkpoint path is loaded,
    and its run config gives the env (name, observation mode, action repeat) unless `env` is given;
    `content` is `{"checkpoint_episode", "checkpoint_sha256"}` for a checkpoint, `{"model_sha256"}` (its class and
    weights, `io.content_digest`) for an `nn.Module` model, `{}` otherwise."""
    from latentplan import envs as _envs
    from latentplan.training import load_checkpoint

    checkpoint = None
    content: dict[str, Any] = {}
    env_kwargs: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        checkpoint = str(model)
        model, cfg, envelope = load_checkpoint(checkpoint)
        content = {"checkpoint_episode": int(envelope.state.get("episode", -1)),
                   "checkpoint_sha256": envelope.sha256}  # the content digest io.load verified
        env = env or cfg.env
        env_kwargs = {"obs": cfg.obs, "action_repeat": cfg.action_repeat}
    elif isinstance(model, torch.nn.Module):
        from .io import content_digest

        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        content = {"model_sha256": content_digest(kind, {}, model.state_dict())}
    if env is None:
        raise ValueError("compare: pass env= (an env name or seed -> env) when model is not a checkpoint path")
    if isinstance(env, str):
        return model, (lambda s: _envs.make(env, seed=s, **env_kwargs)), checkpoint, env, content
    return model, env, checkpoint, getattr(env, "__name__", "custom"), content


def _run_cells(todo: list[tuple], cells: list[dict], builds: Mapping[tuple[str, str], PlannerBuild], model: Any,
               make_env: Callable[[int], Any], path: Path | None, *, max_decisions: int | None, progress: bool) -> None:
    """Run the unfinished cells `(key, spec, budget, seed)` in order, appending each to `cells` and, at once,
    to `path` (so an interruption loses at most the episode in flight); progress bars per cell and decision."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="compare", unit="episode", dynamic_ncols=True, disable=not progress)
    if cells and progress:
        bar.write(f"resuming: {len(cells)} finished episodes reused from {path}")
    try:
        for key, s, b, sd in todo:
            build = builds[(s.label, b.label)]
            bar.set_postfix_str(f"{s.label} @ {b.label}, seed {sd}")
            env_ = make_env(sd)
            total = getattr(env_, "max_episode_steps", None)
            total = min(total, max_decisions) if (total and max_decisions) else (total or max_decisions)
            with tqdm(total=total, desc=f"  {s.label}, seed {sd}", unit="decision", leave=False, dynamic_ncols=True,
                      disable=not progress) as inner:
                cell = run_cell(model, build, env_, sd, max_decisions=max_decisions, on_step=lambda t: inner.update(1))
            cell.update({"key": key, "planner": s.label, "name": s.name, "budget": b.label, "budget_evals": b.evals,
                         "budget_ms": b.ms, "expected_evals": build.expected_evals, "description": build.description})
            cells.append(cell)
            if path is not None:
                append_jsonl(path, [cell])
            bar.update(1)
    finally:
        bar.close()


@dataclass(frozen=True)
class CompareConfig:
    """`latentplan compare`: several planners on one checkpoint, the same seeds and budgets.

    Attributes:
        checkpoint: the trained model (`checkpoint.pt` or its run folder); its run config gives
            the env, observation mode and action repeat.
        planners: registry names, each optionally with overrides: `icem:noise_beta=3,keep_elites=0.2`.
        episodes: evaluation episodes per planner and budget (env and planner seeds
            `seed ... seed + episodes - 1`, the same for every planner).
        seed: the first seed (an int >= 0: gymnasium seeds are non-negative).
        budget_evals: model evaluations per decision, one or more budgets (each planner is
            scaled to it). Default 6000 when no budget is given.
        budget_ms: wall milliseconds per decision, one or more budgets (the planner's deadline).
        horizon: the planning horizon H.
        out: output folder: `cells.jsonl` (resume), `results.json`, `results.csv`, `return_vs_ms.png`.
        resume: reuse finished (planner, budget, seed) cells found in `out`.
        max_decisions: cut episodes after this many decisions (smoke tests).
        threads: torch threads (1 for timings that compare).
        progress: progress bars.
    """

    checkpoint: str
    planners: tuple[str, ...] = ("cem", "icem", "mppi", "gradient", "cem_gd")
    episodes: int = 5
    seed: int = 0
    budget_evals: tuple[int, ...] = ()
    budget_ms: tuple[float, ...] = ()
    horizon: int = 12
    out: str = "runs/compare"
    resume: bool = True
    max_decisions: int | None = None
    threads: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        check_int(self, "episodes", "horizon", "threads", minimum=1)
        check_int(self, "seed", minimum=0)
        check_int(self, "max_decisions", minimum=1, optional=True)
        for spec in self.planners:
            PlannerSpec.parse(spec)  # a malformed spec fails here, an unknown name when it is built
        self.budgets()  # each budget is checked by `Budget`

    def budgets(self) -> list[Budget]:
        """The budgets to run: every `budget_evals`, then every `budget_ms` (default 6000 evals)."""
        out = [Budget(evals=int(e)) for e in self.budget_evals] + [Budget(ms=float(m)) for m in self.budget_ms]
        return out or [Budget(evals=6000)]
