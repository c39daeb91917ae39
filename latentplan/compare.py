"""Fair planner comparisons on one trained model: the same seeds and the same compute budget for
every planner, a table with bootstrap confidence intervals, JSON, CSV and a plot, resumable runs.

A budget is either a number of model evaluations per decision (imagined transitions, what the
planners' `info["model_evals"]` counts) or a wall-clock budget in milliseconds per decision. For
an evaluation budget, each planner's factory scales its own size to it (CEM: the candidates per
iteration; the gradient planner: its steps; MCTS: its simulations) and the harness reports the
measured count next to it. For a time budget, each planner gets a large configuration and the
deadline, and anytime planners stop there.

Planners are looked up by name in a registry (`register_planner`); the built-in names are
`cem`, `icem`, `mppi`, `gradient`, `cem_gd`, `mcts` and `policy` (the last two are imported only
when used).
"""

from __future__ import annotations

import ast
import csv
import importlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from latentplan.planners.base import Planner
from latentplan.planners.cem import CEM, CEMConfig
from latentplan.planners.gradient import GradientConfig, GradientPlanner
from latentplan.planners.objective import Objective

from .statistics import bootstrap_ci
from .control import ControllerConfig, MPCController
from .evaluation import run_episode

__all__ = [
    "Budget", "CompareConfig", "CompareResult", "PlannerBuild", "PlannerNotAvailable", "PlannerSpec",
    "available_planners", "bootstrap_ci", "cli_main", "compare", "make_planner", "register_planner", "run_cell",
]


# -------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """The compute a planner may spend per decision.

    Attributes:
        evals: model evaluations (imagined transitions) per decision and environment; the
            planner's size is scaled to it. `None`: the factory's default size.
        ms: wall-clock milliseconds per decision, given to the planner as its deadline (anytime
            planners stop there). With `evals=None` the planner gets a large configuration, so
            the deadline is what stops it. `None`: no deadline.

    Both may be set (a sized planner that must also meet a deadline); both `None` is the
    factory's default configuration.

    Raises:
        ValueError: if `evals` is below 1 or `ms` is not a positive finite number.
    """

    evals: int | None = None
    ms: float | None = None

    def __post_init__(self) -> None:
        if self.evals is not None and (isinstance(self.evals, bool) or int(self.evals) != self.evals or self.evals < 1):
            raise ValueError(f"Budget.evals must be an int >= 1 or None; got {self.evals!r}")
        if self.ms is not None and not (math.isfinite(self.ms) and self.ms > 0):
            raise ValueError(f"Budget.ms must be a positive number or None; got {self.ms!r}")

    @property
    def label(self) -> str:
        """A short name: `"6000 evals"`, `"50 ms"`, `"3000 evals + 40 ms"` or `"default"`."""
        parts = []
        if self.evals is not None:
            parts.append(f"{int(self.evals)} evals")
        if self.ms is not None:
            parts.append(f"{self.ms:g} ms")
        return " + ".join(parts) or "default"


@dataclass(frozen=True)
class PlannerBuild:
    """A planner made by a registry factory for one budget.

    Attributes:
        planner: the `Planner`.
        warm_start: whether the controller should pass the shifted previous plan.
        deadline_ms: the per-decision deadline in ms (`Budget.ms`), or `None`.
        expected_evals: model evaluations per decision the configuration spends when it runs
            to completion (checked against the measured `info["model_evals"]`), or `None`
            when a deadline decides it or the factory cannot say.
        description: the configuration, for the results (e.g. `repr` of the config).
        objective: builds the objective from the model (default `Objective(model)`).
    """

    planner: Planner
    warm_start: bool
    deadline_ms: float | None
    expected_evals: int | None
    description: str
    objective: Callable[[Any], Objective] | None = None


class PlannerNotAvailable(ImportError):
    """A registered planner whose module cannot be imported (not installed in this version)."""


# A factory: (model, budget, horizon, overrides) -> PlannerBuild
PlannerFactory = Callable[[Any, Budget, int, dict], PlannerBuild]

_REGISTRY: dict[str, PlannerFactory | str] = {}


def register_planner(name: str, factory: PlannerFactory | str, *, replace: bool = False) -> None:
    """Make a planner available by `name` to `compare`, `latentplan compare` and `latentplan control`.

    Args:
        name: the name used on the command line (letters, digits, `_` and `-`).
        factory: `factory(model, budget, horizon, overrides) -> PlannerBuild`, where `budget`
            is a `Budget`, `horizon` the planning horizon H, and `overrides` a dict of config
            fields given by the user (`"cem:iterations=10"` gives `{"iterations": 10}`). With
            `budget.evals` set it must scale the planner to that many model evaluations per
            decision; with only `budget.ms`, give a large configuration (the deadline stops
            it). A string `"module:function"` is imported the first time the name is used.
        replace: allow replacing an existing name.

    Raises:
        ValueError: for a bad name, or an existing name without `replace=True`.
        TypeError: if `factory` is neither callable nor a `"module:function"` string.
    """
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"register_planner: bad planner name {name!r} (letters, digits, '_' and '-')")
    if name in _REGISTRY and not replace:
        raise ValueError(f"register_planner: {name!r} is already registered (pass replace=True)")
    if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
        raise TypeError(f"register_planner: factory must be callable or 'module:function'; got {factory!r}")
    _REGISTRY[name] = factory


def available_planners() -> list[str]:
    """The registered planner names (some may need a module that is not installed)."""
    return sorted(_REGISTRY)


def _factory(name: str) -> PlannerFactory:
    if name not in _REGISTRY:
        raise ValueError(f"unknown planner {name!r}; registered: {', '.join(available_planners())}")
    f = _REGISTRY[name]
    if isinstance(f, str):
        module, _, attr = f.partition(":")
        try:
            f = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise PlannerNotAvailable(
                f"planner {name!r} needs {module}.{attr}, which this installation lacks ({type(err).__name__}: {err})"
            ) from err
        _REGISTRY[name] = f
    return f


@dataclass(frozen=True)
class PlannerSpec:
    """A planner by registry name with config overrides, e.g. parsed from `"icem:noise_beta=3"`.

    Attributes:
        name: the registry name.
        overrides: `(field, value)` pairs given to the factory.
        label: the name in tables and plots (default: the spec as written).
    """

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            text = self.name + (":" + ",".join(f"{k}={v}" for k, v in self.overrides) if self.overrides else "")
            object.__setattr__(self, "label", text)

    @classmethod
    def parse(cls, text: str) -> "PlannerSpec":
        """Parse `"name"` or `"name:field=value,field=value"` (values as Python literals, else strings).

        Raises:
            ValueError: on an empty name or an override without `=`.
        """
        name, _, rest = text.strip().partition(":")
        if not name:
            raise ValueError(f"planner spec {text!r} has no name")
        pairs = []
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"planner spec {text!r}: override {item!r} must be field=value")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                parsed = value.strip()
            pairs.append((key.strip(), parsed))
        return cls(name, tuple(pairs), text.strip())


def make_planner(spec: PlannerSpec | str, model: Any, budget: Budget | None = None, *, horizon: int = 12) -> PlannerBuild:
    """Build the planner `spec` names for `budget` (default: the factory's default size).

    Raises:
        ValueError: unknown name (lists the registered ones), a bad override, or a budget the
            planner cannot be scaled to.
        PlannerNotAvailable: the planner's module is not installed.
    """
    spec = PlannerSpec.parse(spec) if isinstance(spec, str) else spec
    budget = budget or Budget()
    if horizon < 1:
        raise ValueError(f"make_planner: horizon must be >= 1; got {horizon}")
    try:
        return _factory(spec.name)(model, budget, int(horizon), dict(spec.overrides))
    except TypeError as err:
        raise ValueError(f"planner {spec.label!r}: {err}") from err


# ----------------------------------------------------------------------------- built-in factories
_CEM_DEFAULT = dict(iterations=5, candidates=100, elites=10)
_ANYTIME_ITERATIONS = 100_000  # a time budget: the deadline, not the iteration count, stops it


def _elites_for(j: int, default: int = 10) -> int:
    """K for J candidates: 10 (PlaNet's 10 %) down to J // 5 for small J, at least 2."""
    return max(1, min(j, default, max(2, j // 5)))


def _fit_candidates(base: dict, evals: int, fixed_elites: bool) -> CEMConfig:
    """The largest J (and its K) whose `CEMConfig.model_evals` fits in `evals`."""

    def config(j: int) -> CEMConfig:
        k = min(base["elites"], j) if fixed_elites else _elites_for(j, base["elites"])
        return CEMConfig(**{**base, "candidates": j, "elites": k})

    if config(1).model_evals > evals:
        raise ValueError(
            f"a budget of {evals} model evaluations is too small for {base}: one candidate needs "
            f"{config(1).model_evals}"
        )
    lo, hi = 1, max(1, evals)
    while lo < hi:  # model_evals grows with J
        mid = (lo + hi + 1) // 2
        if config(mid).model_evals <= evals:
            lo = mid
        else:
            hi = mid - 1
    return config(lo)


def cem_family(preset: Mapping[str, Any], *, warm_start: bool) -> PlannerFactory:
    """A registry factory over `CEM` with `preset` fields (e.g. iCEM's options).

    Evaluation budget: J (candidates per iteration) is the largest whose
    `CEMConfig.model_evals` fits (I = 5 and K = 10, or K = J // 5 for small J, unless
    overridden). Time budget: J = 100 (unless overridden) and I = 100,000 iterations, stopped
    by the deadline. Overriding `candidates` together with an evaluation budget is an error.
    """

    def factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
        base = {**_CEM_DEFAULT, **preset, "horizon": horizon, **overrides}
        if budget.evals is not None:
            if "candidates" in overrides:
                raise ValueError("candidates is set by the evaluation budget; override iterations or elites instead")
            cfg = _fit_candidates(base, int(budget.evals), fixed_elites="elites" in overrides)
        else:
            if budget.ms is not None and "iterations" not in overrides:
                base["iterations"] = _ANYTIME_ITERATIONS
            cfg = CEMConfig(**base)
        expected = cfg.model_evals if budget.ms is None else None
        return PlannerBuild(CEM(cfg), warm_start, budget.ms, expected, repr(cfg))

    return factory


def gradient_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `GradientPlanner` (R = 10 restarts, Adam, tanh squashing, warm start).

    Evaluation budget: iterations = evals // (H R) - 1 (the planner spends H R (iterations + 1)).
    Time budget: 100,000 iterations, stopped by the deadline.
    """
    base = {"horizon": horizon, "iterations": 50, "restarts": 10, **overrides}
    if budget.evals is not None:
        if "iterations" in overrides:
            raise ValueError("iterations is set by the evaluation budget; override restarts instead")
        per = base["horizon"] * base["restarts"]
        iters = int(budget.evals) // per - 1
        if iters < 1:
            raise ValueError(f"a budget of {budget.evals} model evaluations is too small for the gradient "
                             f"planner with H={base['horizon']}, R={base['restarts']} (needs at least {2 * per})")
        base["iterations"] = iters
    elif budget.ms is not None and "iterations" not in overrides:
        base["iterations"] = _ANYTIME_ITERATIONS
    cfg = GradientConfig(**base)
    return PlannerBuild(GradientPlanner(cfg), True, budget.ms, cfg.model_evals if budget.ms is None else None, repr(cfg))


def mcts_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `latentplan.planners.mcts.MCTS` (Sampled MuZero-style tree search).

    The tree's depth (the plan's horizon) is `horizon` unless overridden. Evaluation budget: simulations =
    evals // children (each simulation expands K children). Time budget: 100,000 simulations,
    stopped by the deadline. The objective is the learned reward; the override
    `value=<path>` bootstraps the leaves with a trained critic (`load_value`: a training
    checkpoint made with `value_every > 0`, or a file of `benchmarks/mcts_cartpole.py`), with the
    critic's discount.
    """
    try:
        from latentplan.planners.mcts import MCTS, MCTSConfig
    except ImportError as err:
        raise PlannerNotAvailable(f"planner 'mcts' needs latentplan.planners.mcts ({err})") from err
    base = {"depth": horizon, **overrides}
    objective = None
    value_path = base.pop("value", None)
    if value_path is not None:
        critic, discount = load_value(str(value_path), model)
        objective = lambda m: Objective(m, value=critic, discount=discount)  # noqa: E731
    if budget.evals is not None:
        if "simulations" in overrides:
            raise ValueError("simulations is set by the evaluation budget; override children or depth instead")
        children = int(base.get("children", MCTSConfig().children))
        base["simulations"] = max(1, int(budget.evals) // children)
    elif budget.ms is not None and "simulations" not in overrides:
        base["simulations"] = _ANYTIME_ITERATIONS
    cfg = MCTSConfig(**base)
    desc = repr(cfg) + (f" + value {value_path}" if value_path is not None else "")
    return PlannerBuild(MCTS(cfg), True, budget.ms, cfg.model_evals if budget.ms is None else None, desc, objective)


def load_value(path: str, model: Any) -> tuple[Any, float]:
    """A trained critic for `model` from `path`, and its discount.

    `path` is a training checkpoint written with `TrainConfig.value_every > 0` (key
    `value_learner`) or a file with `learner`, `config` and `feature_dim` (as
    `benchmarks/mcts_cartpole.py` writes). Loaded with `weights_only=True`.

    Raises:
        ValueError: the file holds no critic, or its feature size is not the model's D + S.
    """
    from latentplan.planners.value import ValueConfig, ValueLearner

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "learner" in ckpt:
        state, cfg, features = ckpt["learner"], dict(ckpt["config"]), int(ckpt["feature_dim"])
    elif "value_learner" in ckpt:
        state = ckpt["value_learner"]
        cfg, features = dict(state["config"]), None  # a training checkpoint: the model's own features
    else:
        raise ValueError(f"{path} holds no critic (neither 'learner' nor 'value_learner')")
    want = int(model.config.deter + model.config.stoch) if hasattr(model, "config") else None
    features = features or want
    if want is not None and features != want:
        raise ValueError(f"{path}: the critic takes {features} features; this model's beliefs have {want}")
    cfg["hidden"] = tuple(cfg["hidden"])
    learner = ValueLearner(ValueConfig(**cfg), features, device=model.action_low.device)
    learner.load_state_dict(state)
    learner.value.eval()
    return learner.value, learner.config.discount


def policy_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of a distilled policy acting alone (`latentplan.planners.distill.PolicyPlanner`).

    Needs the override `checkpoint=<policy.pt>` (written by `latentplan distill`); other
    overrides go to `PolicyPlanner` (`horizon`, `deterministic`, `evaluate`). Its cost is one
    forward pass per decision whatever the budget (0 model evaluations with `horizon=1`).
    """
    try:
        from latentplan.planners.distill import GaussianPolicy, PolicyPlanner
    except ImportError as err:
        raise PlannerNotAvailable(f"planner 'policy' needs latentplan.planners.distill ({err})") from err
    opts = dict(overrides)
    path = opts.pop("checkpoint", None)
    if path is None:
        raise ValueError("planner 'policy' needs the distilled policy file: policy:checkpoint=path/to/policy.pt")
    device = model.action_low.device
    policy = GaussianPolicy.load(str(path), device=device)
    planner = PolicyPlanner(policy, **opts)
    expected = 0 if planner.horizon == 1 and not planner.evaluate else None
    return PlannerBuild(planner, False, budget.ms, expected, f"{planner!r} from {path}")


_ICEM = dict(noise_beta=2.0, keep_elites=0.3, population_decay=1.25, include_mean=True)
register_planner("cem", cem_family({}, warm_start=False))
register_planner("icem", cem_family(_ICEM, warm_start=True))
register_planner("mppi", cem_family(dict(refit="mppi", temperature=1.0), warm_start=False))
register_planner("cem_gd", cem_family(dict(gradient_steps=3), warm_start=False))
register_planner("gradient", gradient_factory)
register_planner("mcts", "latentplan.compare:mcts_factory")
register_planner("policy", "latentplan.compare:policy_factory")


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
            `planner_failures`, `fallbacks`, `description`.
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
            rets = [c["return"] for c in cs]
            ci = bootstrap_ci(rets)
            lat = [x for c in cs for x in c["latency_ms"]]
            decisions = sum(c["decisions"] for c in cs)
            evals = sum(c["model_evals_per_decision"] * c["decisions"] for c in cs) / max(decisions, 1)
            expected = cs[0].get("expected_evals")
            rows.append({
                "planner": key[0], "budget": key[1], "episodes": len(cs), "seeds": [c["seed"] for c in cs],
                "returns": rets, "return_mean": float(np.mean(rets)),
                "return_ci_low": None if ci is None else ci[0], "return_ci_high": None if ci is None else ci[1],
                "ms_p50": float(np.percentile(lat, 50)) if lat else float("nan"),
                "ms_p99": float(np.percentile(lat, 99)) if lat else float("nan"),
                "ms_mean": float(np.mean(lat)) if lat else float("nan"),
                "model_evals_per_decision": evals, "expected_evals": expected,
                "evals_match": None if not expected else abs(evals - expected) <= 0.01 * expected,
                "deadline_misses": sum(c["deadline_misses"] for c in cs),
                "planner_failures": sum(c["planner_failures"] for c in cs),
                "fallbacks": sum(c["fallbacks"] for c in cs),
                "description": cs[0].get("description", ""),
            })
        return cls(cells, rows, dict(meta or {}))

    def table(self) -> str:
        """The rows as a Markdown table."""
        head = "| planner | budget | episodes | return | 95 % CI | ms/decision p50 | p99 | model evals/decision |"
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            ci = "-" if r["return_ci_low"] is None else f"[{r['return_ci_low']:.1f}, {r['return_ci_high']:.1f}]"
            ev = f"{r['model_evals_per_decision']:.0f}"
            if r["evals_match"] is False:
                ev += f" (expected {r['expected_evals']})"
            lines.append(f"| {r['planner']} | {r['budget']} | {r['episodes']} | {r['return_mean']:.1f} | {ci} | "
                         f"{r['ms_p50']:.1f} | {r['ms_p99']:.1f} | {ev} |")
        return "\n".join(lines)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write `{"meta", "rows", "cells"}` to `path`."""
        p = Path(path)
        p.write_text(json.dumps({"meta": self.meta, "rows": self.rows, "cells": self.cells}, indent=1) + "\n")
        return p

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
        p = Path(path)
        p.write_text(buf.getvalue())
        return p

    def plot(self, path: str | os.PathLike, *, title: str = "") -> Path:
        """Plot mean return (95 % CI error bars) against median ms per decision (log x) to a PNG.

        Each planner is one colour; its budgets are joined by a line, in order of time.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        planners = list(dict.fromkeys(r["planner"] for r in self.rows))
        for i, name in enumerate(planners):
            rs = sorted((r for r in self.rows if r["planner"] == name), key=lambda r: r["ms_p50"])
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
        ax.set_title(title or str(self.meta.get("env", "")))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = Path(path)
        fig.savefig(p)
        plt.close(fig)
        return p

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write `results.json`, `results.csv` and `return_vs_ms.png` into `out_dir`."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        return {"json": self.to_json(d / "results.json"), "csv": self.to_csv(d / "results.csv"),
                "png": self.plot(d / "return_vs_ms.png")}


def _cell_key(meta: Mapping[str, Any], planner: str, budget: str, seed: int) -> str:
    return json.dumps([meta.get("checkpoint"), meta.get("env"), meta.get("horizon"), meta.get("max_decisions"),
                       planner, budget, int(seed)])


def _load_cells(path: Path) -> dict[str, dict]:
    cells: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                c = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interruption
                continue
            if isinstance(c, dict) and "key" in c:
                cells[c["key"]] = c
    return cells


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
        seed: the first seed.
        budgets: the budgets per decision to run every planner at.
        horizon: the planning horizon H given to every factory.
        env: an env name for `latentplan.envs.make` (with the checkpoint's observation mode
            and action repeat when a checkpoint is given), or `seed -> gymnasium.Env`. Needed
            when `model` is not a checkpoint path.
        out_dir: where to keep `cells.jsonl` (one line per finished cell) and to write
            `results.json`, `results.csv` and `return_vs_ms.png`. `None`: nothing is written.
        resume: reuse the finished cells in `out_dir/cells.jsonl` whose settings match (the
            same checkpoint path, env, horizon, `max_decisions`, planner label, budget and
            seed); `False` starts the file afresh.
        max_decisions: cut every episode after this many decisions (smoke tests).
        progress: show progress bars (tqdm).

    Returns:
        A `CompareResult` with the rows in the order of `planners` x `budgets`.

    Raises:
        ValueError: unknown planner, bad override, a budget a planner cannot be scaled to,
            `episodes < 1`, no env.
        PlannerNotAvailable: a planner's module is missing.
        KeyboardInterrupt: passed on after the finished cells are saved (rerun to resume).
    """
    from latentplan import envs as _envs
    from latentplan.training import load_checkpoint

    if episodes < 1:
        raise ValueError(f"compare: episodes must be >= 1; got {episodes}")
    if not budgets:
        raise ValueError("compare: give at least one budget")
    checkpoint = None
    env_kwargs: dict[str, Any] = {}
    if isinstance(model, (str, os.PathLike)):
        checkpoint = str(model)
        model, cfg, _ = load_checkpoint(checkpoint)
        env = env or cfg.env
        env_kwargs = {"obs": cfg.obs, "action_repeat": cfg.action_repeat}
    if env is None:
        raise ValueError("compare: pass env= (an env name or seed -> env) when model is not a checkpoint path")
    env_name = env if isinstance(env, str) else getattr(env, "__name__", "custom")
    make_env = (lambda s: _envs.make(env, seed=s, **env_kwargs)) if isinstance(env, str) else env
    specs = [PlannerSpec.parse(p) if isinstance(p, str) else p for p in planners]
    if len({s.label for s in specs}) != len(specs):
        raise ValueError(f"compare: planner labels must be unique; got {[s.label for s in specs]}")
    meta = {"checkpoint": checkpoint, "env": env_name, "horizon": int(horizon), "episodes": int(episodes),
            "seeds": [seed + i for i in range(episodes)], "max_decisions": max_decisions,
            "budgets": [b.label for b in budgets], "planners": [s.label for s in specs],
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    builds = {(s.label, b.label): (s, b, make_planner(s, model, b, horizon=horizon)) for b in budgets for s in specs}

    path = None
    done: dict[str, dict] = {}
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / "cells.jsonl"
        if resume:
            done = _load_cells(path)
        elif path.exists():
            path.unlink()
    todo, cells = [], []
    for i in range(episodes):
        for b in budgets:
            for s in specs:
                key = _cell_key(meta, s.label, b.label, seed + i)
                (cells.append(done[key]) if key in done else todo.append((key, s, b, seed + i)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="compare", unit="episode", dynamic_ncols=True)
        if cells:
            bar.write(f"resuming: {len(cells)} finished episodes reused from {path}")
    try:
        for key, s, b, sd in todo:
            spec, budget, build = builds[(s.label, b.label)]
            if bar is not None:
                bar.set_postfix_str(f"{s.label} @ {b.label}, seed {sd}")
            env_ = make_env(sd)
            inner = None
            if bar is not None:
                total = getattr(env_, "max_episode_steps", None)
                total = min(total, max_decisions) if (total and max_decisions) else (total or max_decisions)
                inner = tqdm(total=total, desc=f"  {s.label}, seed {sd}", unit="decision", leave=False,
                             dynamic_ncols=True)
            try:
                cell = run_cell(model, build, env_, sd, max_decisions=max_decisions,
                                on_step=None if inner is None else (lambda t: inner.update(1)))
            finally:
                if inner is not None:
                    inner.close()
            cell.update({"key": key, "planner": s.label, "name": s.name, "budget": b.label, "budget_evals": b.evals,
                         "budget_ms": b.ms, "expected_evals": build.expected_evals, "description": build.description})
            cells.append(cell)
            if path is not None:
                with path.open("a") as f:
                    f.write(json.dumps(cell) + "\n")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    order = [(s.label, b.label) for s in specs for b in budgets]
    result = CompareResult.from_cells(cells, order, meta)
    if out_dir is not None:
        result.save(out_dir)
    return result


# ------------------------------------------------------------------------------------------ CLI
@dataclass(frozen=True)
class CompareConfig:
    """`latentplan compare`: several planners on one checkpoint, the same seeds and budgets.

    Attributes:
        checkpoint: the trained model (`checkpoint.pt` or its run folder); its run config gives
            the env, observation mode and action repeat.
        planners: registry names, each optionally with overrides: `icem:noise_beta=3,keep_elites=0.2`.
        episodes: evaluation episodes per planner and budget (env and planner seeds
            `seed ... seed + episodes - 1`, the same for every planner).
        seed: the first seed.
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

    def budgets(self) -> list[Budget]:
        """The budgets to run: every `budget_evals`, then every `budget_ms` (default 6000 evals)."""
        out = [Budget(evals=int(e)) for e in self.budget_evals] + [Budget(ms=float(m)) for m in self.budget_ms]
        return out or [Budget(evals=6000)]


def cli_main(args: list[str]) -> int:
    """`latentplan compare --checkpoint … --planners cem icem … --episodes N --budget-evals 6000 | --budget-ms 50`.

    Prints the table and writes the results into `--out`. Returns the exit code (130 after an
    interruption; rerun the same command to resume).
    """
    import tyro

    cfg = tyro.cli(CompareConfig, args=args, prog="latentplan compare")
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
        print(f"latentplan compare: {err}", file=sys.stderr)
        return 2
    print()
    print(result.table())
    for r in result.rows:
        if r["evals_match"] is False:
            print(f"note: {r['planner']} @ {r['budget']} measured {r['model_evals_per_decision']:.0f} model evaluations "
                  f"per decision, expected {r['expected_evals']}")
    print(f"\n  {cfg.out}/results.json  {cfg.out}/results.csv  {cfg.out}/return_vs_ms.png")
    return 0
