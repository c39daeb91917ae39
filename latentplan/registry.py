"""The planner registry: compute budgets, planner specs and presets, `make_planner`, and the loading of
the trained parts a planner may use (a critic for MCTS's leaves, a distilled policy).

Every command and harness that builds a planner by name (`latentplan compare`, `control`,
`distill`, the training loop's teacher) resolves it here, so a name means the same planner
everywhere. A spec is a registry name with config overrides, `"mcts:simulations=50,horizon=8"`.
A budget is model evaluations per decision (each factory scales its planner's size to it) or
milliseconds per decision (the planner's deadline).

Built-in names: `cem` (PlaNet's CEM, sized to the budget, stopping at the budget or on convergence),
`planet` (PlaNet's CEM exactly: a fixed count of iterations), `icem` (Pinneri et al. 2020), `mppi` (`MPPI`, Williams et al.
2017, as published), `cem_softmax` (CEM's loop with a softmax-weighted refit of mean and std, as in
TD-MPC; `CEMConfig(refit="mppi")`), `cem_gd` (Bharadhwaj et al. 2020), `gradient`, `ilqr` (iLQR /
box-DDP, Li & Todorov 2004; Tassa et al. 2014), `cmaes` (CMA-ES, Hansen 2016), `mcts` (Sampled
MuZero-style search) and `policy` (a distilled policy acting alone).

Why this module is over 500 lines: each built-in planner's factory holds its rule for turning a
budget into a size (and the errors when it cannot), and these rules are kept together, beside the
spec parsing and `Budget`, so that a user reads in one file what an equal budget means for every
planner `latentplan compare` runs.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from latentplan.planners.ascent import VJP_EVALS, AscentConfig
from latentplan.planners.base import Planner
from latentplan.planners.cem import CEM, CEMConfig, search_share
from latentplan.planners.cmaes import CMAES, CMAESConfig
from latentplan.planners.gradient import GradientConfig, GradientPlanner
from latentplan.planners.ilqr import ILQR, ILQRConfig
from latentplan.planners.mppi import MPPI, MPPIConfig
from latentplan.planners.objective import Objective
from latentplan.planners.validate import check_int, check_positive

__all__ = [
    "Budget", "PlannerBuild", "PlannerNotAvailable", "PlannerSpec", "PRESETS", "available_planners", "load_critic",
    "cmaes_factory", "load_policy", "make_planner", "mppi_factory", "register_planner",
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
        check_int(self, "evals", minimum=1, optional=True)
        check_positive(self, "ms", optional=True)

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
    """A planner registered as `"module:function"` whose module or function cannot be imported."""


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
        same_case = [n for n in available_planners() if n.lower() == name.lower()]  # "CEM": names are lower case
        close = same_case or difflib.get_close_matches(name.lower(), available_planners(), n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(f"unknown planner {name!r}; {hint}registered: {', '.join(available_planners())}")
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
            ValueError: on an empty name, an override without `=`, or a field given twice
                (`"cem:iterations=3,iterations=5"`); the message names the spec.
        """
        name, _, rest = text.strip().partition(":")
        if not name:
            raise ValueError(f"planner spec {text!r} has no name")
        pairs = []
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"planner spec {text!r}: override {item!r} must be field=value")
            if any(k == key.strip() for k, _ in pairs):
                raise ValueError(f"planner spec {text!r}: {key.strip()!r} is given twice; give each field once")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                parsed = value.strip()
            pairs.append((key.strip(), parsed))
        return cls(name, tuple(pairs), text.strip())


def make_planner(spec: PlannerSpec | str, model: Any, budget: Budget | None = None, *, horizon: int = 12) -> PlannerBuild:
    """Build the planner `spec` names for `budget` (default: the factory's default size).

    Args:
        spec: a `PlannerSpec` or its text, `"name"` or `"name:field=value,..."`.
        model: the `WorldModel` the planner plans over (its `action_dim` A, bounds, `feature_size`).
        budget: per-decision evaluations (`evals`, per environment) and/or milliseconds (`ms`).
        horizon: H, the planning horizon (an int >= 1); a `horizon=` override in the spec wins.

    Returns:
        A `PlannerBuild`; its planner's `plan(objective, state [B], ...)` returns a `Plan` with
        `actions [B, H, A]` and `value [B]`.

    Raises:
        ValueError: unknown name (lists the registered ones, with a did-you-mean hint, e.g.
            `'CEM'` -> `'cem'`), a field given twice, a bad override (a config's own
            `ValueError`/`TypeError`, prefixed with `planner '<spec>':`), `horizon` not an int
            >= 1, or a budget the planner cannot be scaled to (e.g. `elites` above the candidates
            the budget fits).
        PlannerNotAvailable: a planner registered as `"module:function"` cannot be imported.
    """
    spec = PlannerSpec.parse(spec) if isinstance(spec, str) else spec
    budget = budget or Budget()
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise ValueError(f"make_planner: horizon must be an int >= 1; got {horizon!r}")
    try:
        return _factory(spec.name)(model, budget, int(horizon), dict(spec.overrides))
    except TypeError as err:
        raise ValueError(f"planner {spec.label!r}: {err}") from err
    except ValueError as err:
        if type(err) is not ValueError or str(err).startswith(("unknown planner", f"planner {spec.label!r}")):
            raise  # a subclass (CheckpointError) keeps its type; the unknown-name message names it already
        raise ValueError(f"planner {spec.label!r}: {err}") from err


# ----------------------------------------------------------------------------- built-in factories
_CEM_DEFAULT = dict(iterations=5, candidates=100, elites=10)
_ANYTIME_ITERATIONS = 100_000  # a time budget: the deadline, not the iteration count, stops it
_BUDGET_ITERATIONS = 100_000  # an evaluation budget: max_evals (or the convergence stop), not this cap, stops it


def _elites_for(j: int, default: int = 10) -> int:
    """K for J candidates: 10 (PlaNet's 10 %) down to J // 5 for small J, at least 2."""
    return max(1, min(j, default, max(2, j // 5)))


def _fit_candidates(base: dict, evals: int, fixed_elites: bool) -> CEMConfig:
    """The largest J (and its K) whose `CEMConfig.model_evals` fits in `evals`.

    Raises:
        ValueError: the budget is too small for one candidate, or (`fixed_elites`, an `elites`
            override) the fitted J is below the requested K (naming both and the budget).
    """

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
    if fixed_elites and base["elites"] >= lo:
        _too_many_elites(base["elites"], lo, evals)
    return config(lo)


def _too_many_elites(k: int, j: int, evals: int) -> None:
    raise ValueError(
        f"elites={k} is not below the J={j} candidates per iteration a budget of {evals} model evaluations "
        f"gives; override elites < {j}, or give a larger budget (K = J would refit to every candidate, no selection)"
    )


def cem_family(preset: Mapping[str, Any], *, warm_start: bool, max_candidates: int | None = None) -> PlannerFactory:
    """A registry factory over `CEM` with `preset` fields (e.g. iCEM's options).

    Evaluation budget E: J (candidates per iteration) is the largest whose `CEMConfig.model_evals`
    over I = 5 iterations fits in E (with a `polish`, in the iterations' share
    `search_share(E, polish)`: `cem_gd` 0.75 E), but at most `max_candidates` (None: no cap); K = 10, or
    K = J // 5 for small J, unless overridden. Then the search runs until the budget is spent
    (`max_evals` = E, `iterations` a cap of 100,000) or the distribution has converged (`tol`).
    With a cap, large budgets iterate further instead of drawing more candidates per iteration
    (`cem`: J <= 300, so 120,000 with H = 12 gives J = 300, I = 33; `cem_gd`: J <= 150; `icem`:
    J <= 1000), which measured closer to the optimum on the LQ family (docs/planners.md,
    "Stopping"); budgets up to 6,000 at H = 12 give exactly the former sizes (the cartpole tables
    of docs/benchmarks.md). Overriding `iterations` (or a preset that sets it, `planet`) fixes I
    (J is fitted to it, as before); `max_evals=None` turns the budget stop off. Time budget: J = 100 (unless overridden) and I = 100,000
    iterations, stopped by the deadline (no `max_evals`, unless an evaluation budget is given
    too). Overriding `candidates` together with an evaluation budget is an error.

    `PlannerBuild.expected_evals` is `CEMConfig.model_evals`, what the search spends when the
    convergence stop does not end it earlier (a plan's `info["stopped"]` says which); `None` with
    a polish, which stops when converged (the budget bounds it). `max_evals=None` together with a
    polish under an evaluation budget is an error (it would leave the polish unbounded).
    """

    def factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
        base = {**_CEM_DEFAULT, **preset, "horizon": horizon, **overrides}
        for key in [k for k in base if k.startswith("gradient.")]:  # "gradient.lr=0.05": a field of CEM+GD's ascent
            name = key.split(".", 1)[1]
            base["gradient"] = dataclasses.replace(base.get("gradient") or AscentConfig(), **{name: base.pop(key)})
        if budget.evals is not None:
            if "candidates" in overrides:
                raise ValueError("candidates is set by the evaluation budget; override iterations or elites instead")
            evals = int(budget.evals)
            base.setdefault("max_evals", evals)
            polish = float(base.get("polish", 0.0))
            if polish > 0 and base["max_evals"] is None:
                raise ValueError("max_evals=None with a polish under an evaluation budget would leave the polish "
                                 "unbounded; set polish=0.0 too, or keep max_evals")
            # the iterations' share of the budget (CEMConfig.search_evals): all of it unless a polish keeps some
            cfg = _fit_candidates({**base, "max_evals": None}, search_share(evals, polish), fixed_elites="elites" in overrides)
            if base["max_evals"] is None:  # a fixed count (the `planet` preset, or max_evals=None given)
                pass
            elif "iterations" not in overrides and "iterations" not in preset:
                j = cfg.candidates if max_candidates is None else min(cfg.candidates, max_candidates)
                if "elites" in overrides and base["elites"] >= j:
                    _too_many_elites(base["elites"], j, evals)
                k = base["elites"] if "elites" in overrides else _elites_for(j, base["elites"])
                cfg = CEMConfig(**{**base, "candidates": j, "elites": k, "iterations": _BUDGET_ITERATIONS})
            else:
                cfg = dataclasses.replace(cfg, max_evals=base["max_evals"])
        else:
            if budget.ms is not None and "iterations" not in overrides:
                base["iterations"] = _ANYTIME_ITERATIONS
                base.setdefault("max_evals", None)  # the deadline decides
            cfg = CEMConfig(**base)
        # a polish stops at convergence, so what it spends is not known before (`max_evals` bounds it)
        expected = cfg.model_evals if budget.ms is None and cfg.polish == 0 else None
        return PlannerBuild(CEM(cfg), warm_start, budget.ms, expected, repr(cfg))

    return factory


def gradient_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `GradientPlanner` (R = 10 restarts, warm start; L-BFGS with tanh squashing
    unless `optimizer` is overridden).

    Evaluation budget: L-BFGS gets `max_evals` = the budget (it stops earlier when converged, so the
    budget is an upper bound and `expected_evals` is None); a first-order optimizer gets
    iterations = (evals // (H R) - 1) // (1 + VJP_EVALS), spent exactly (H R (iterations
    (1 + VJP_EVALS) + 1), a backward pass counted as VJP_EVALS = 2 forward passes). Time budget:
    100,000 iterations and no evaluation budget, stopped by the deadline (or, L-BFGS, by
    convergence). Neither: `GradientConfig`'s defaults for L-BFGS, 50 steps for a first-order
    optimizer.

    Raises:
        ValueError: `iterations` or `max_evals` overridden together with an evaluation budget, or a
            budget too small for one step of the R restarts.
    """
    base = {"horizon": horizon, "restarts": 10, **overrides}
    lbfgs = str(base.get("optimizer", "lbfgs")).lower() == "lbfgs"
    if not lbfgs:
        base.setdefault("iterations", 50)
    GradientConfig(**base)  # validates the overrides (restarts >= 1, ...) before the budget divides by them
    if budget.evals is not None:
        if "iterations" in overrides or "max_evals" in overrides:
            raise ValueError("iterations and max_evals are set by the evaluation budget; override restarts instead")
        per = base["horizon"] * base["restarts"]
        iters = (int(budget.evals) // per - 1) // (1 + VJP_EVALS)
        least = (1 + VJP_EVALS) * per if lbfgs else (2 + VJP_EVALS) * per
        if int(budget.evals) < least:
            raise ValueError(f"a budget of {budget.evals} model evaluations is too small for the gradient "
                             f"planner with H={base['horizon']}, R={base['restarts']} (needs at least {least})")
        if lbfgs:
            base["iterations"], base["max_evals"] = _ANYTIME_ITERATIONS, int(budget.evals)
        else:
            base["iterations"], base["max_evals"] = iters, None
    elif budget.ms is not None:
        if "iterations" not in overrides:
            base["iterations"] = _ANYTIME_ITERATIONS
        base.setdefault("max_evals", None)  # the deadline decides
    cfg = GradientConfig(**base)
    expected = cfg.model_evals if budget.ms is None and not cfg.lbfgs else None
    return PlannerBuild(GradientPlanner(cfg), True, budget.ms, expected, repr(cfg))


def ilqr_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `ILQR` (L = 8 line-search steps, warm start from the shifted plan).

    Evaluation budget: iterations = (evals / H - 1) // (1 + VJP_EVALS F + L), F the model's
    `feature_size` (`ILQRConfig.model_evals`), with `tolerance = 0` so that every iteration runs
    and the spent evaluations equal the expected ones. Time budget: 100,000 iterations, stopped by
    the deadline. Default: 10 iterations.
    """
    base = {"horizon": horizon, **overrides}
    if budget.evals is not None:
        if "iterations" in overrides:
            raise ValueError("iterations is set by the evaluation budget; override line_search instead")
        probe = ILQRConfig(**{**base, "iterations": 1})
        per = probe.model_evals(model.feature_size) - probe.horizon
        iters = (int(budget.evals) - probe.horizon) // per
        if iters < 1:
            raise ValueError(f"a budget of {budget.evals} model evaluations is too small for iLQR with "
                             f"H={probe.horizon}, F={model.feature_size}, L={probe.line_search} "
                             f"(needs at least {probe.model_evals(model.feature_size)})")
        base.update(iterations=iters, tolerance=0.0)
    elif budget.ms is not None and "iterations" not in overrides:
        base["iterations"] = _ANYTIME_ITERATIONS
    cfg = ILQRConfig(**base)
    expected = cfg.model_evals(model.feature_size) if budget.evals is not None and budget.ms is None else None
    return PlannerBuild(ILQR(cfg), True, budget.ms, expected, repr(cfg))


def mppi_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `MPPI` (Williams et al. 2017, Algorithm 2) at `MPPIConfig`'s defaults
    (one iteration per decision, noise std 1, λ = 0.05 · std of the returns, control cost on),
    warm-started from the shifted previous plan (the paper's shifted nominal sequence).

    Evaluation budget: samples K = (E // H - 1) // iterations, minus 1 with `include_nominal`, the
    largest with `MPPIConfig.model_evals` = H · (iterations · rows + 1) <= E (the last H steps are
    the rollout of the returned sequence for its value; 6000 with H = 12: K = 499), `max_evals` = E.
    One update of a budget-sized K, rather than iterating K = 1000 to the budget, because it
    measured closer to the optimum for one decision on the LQ family (median excess 52 % against
    172 %: with a fixed Σ every further update adds the noise of a weighted mean and the control
    cost's pull; docs/planners.md, "Stopping"). Time budget: 100,000 iterations of K samples
    (default 1000), stopped by the deadline (no `max_evals`).

    Raises:
        ValueError: `samples` overridden together with an evaluation budget, or a budget too small
            for one sample.
    """
    base = {"horizon": horizon, **overrides}
    if budget.evals is not None:
        if "samples" in overrides:
            raise ValueError("samples is set by the evaluation budget; override iterations or horizon instead")
        probe = MPPIConfig(**base)  # validates the other fields first
        samples = (int(budget.evals) // probe.horizon - 1) // probe.iterations - int(probe.include_nominal)
        if samples < 1:
            raise ValueError(f"a budget of {budget.evals} model evaluations is too small for MPPI with H={probe.horizon}, "
                             f"iterations={probe.iterations} (one sample needs {dataclasses.replace(probe, samples=1).model_evals})")
        base["samples"] = samples
        base.setdefault("max_evals", int(budget.evals))
    elif budget.ms is not None and "iterations" not in overrides:
        base["iterations"] = _ANYTIME_ITERATIONS
        base.setdefault("max_evals", None)  # the deadline decides
    cfg = MPPIConfig(**base)
    return PlannerBuild(MPPI(cfg), True, budget.ms, cfg.model_evals if budget.ms is None else None, repr(cfg))


def cmaes_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `CMAES` (Hansen 2016) at `CMAESConfig`'s defaults, warm-started from the shifted
    previous plan (with the smaller `warm_start_std`).

    Evaluation budget: `max_evals` = the budget (the search stops before an iteration that would pass it, or
    earlier when converged, so the budget is an upper bound and `expected_evals` is None). Time budget:
    `max_evals` of 10^12, stopped by the deadline (or by convergence).

    Raises:
        ValueError: `max_evals` overridden together with an evaluation budget.
    """
    base = {"horizon": horizon, **overrides}
    if budget.evals is not None:
        if "max_evals" in overrides:
            raise ValueError("max_evals is set by the evaluation budget; override population or tol instead")
        base["max_evals"] = int(budget.evals)
    elif budget.ms is not None and "max_evals" not in overrides:
        base["max_evals"] = 10**12
    cfg = CMAESConfig(**base)
    return PlannerBuild(CMAES(cfg), True, budget.ms, None, repr(cfg))


def mcts_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of `latentplan.planners.mcts.MCTS` (Sampled MuZero-style tree search).

    The tree's depth, `MCTSConfig.horizon` (the plan's horizon), is `horizon` unless overridden. Evaluation budget:
    `MCTSConfig.evals` = the budget (the search stops before it would pass it, the plan's completion included) and
    simulations = evals // children, an upper bound. Time budget: 100,000 simulations,
    stopped by the deadline. The objective is the learned reward; the override
    `value=<path>` bootstraps the leaves with a trained critic (`load_critic`: a training
    checkpoint made with `value_every > 0`, or a file of `benchmarks/mcts_cartpole.py`), with the
    critic's discount, and then values the tree's leaves (`leaf="value"`, MuZero) unless `leaf` is overridden.
    """
    from latentplan.planners.mcts import MCTS, MCTSConfig

    base = {"horizon": horizon, **overrides}
    objective = None
    value_path = base.pop("value", None)
    if value_path is not None:
        critic, discount = load_critic(str(value_path), model)
        objective = lambda m: Objective(m, value=critic, discount=discount)  # noqa: E731
        base.setdefault("leaf", "value")  # MuZero: the critic values the leaves
    if budget.evals is not None:
        if "simulations" in overrides:
            raise ValueError("simulations is set by the evaluation budget; override children or horizon instead")
        children = MCTSConfig(**base).children  # validates the overrides (children >= 1, ...) first
        base["simulations"] = max(1, int(budget.evals) // children)
        base["evals"] = int(budget.evals)
    elif budget.ms is not None and "simulations" not in overrides:
        base["simulations"] = _ANYTIME_ITERATIONS
    cfg = MCTSConfig(**base)
    desc = repr(cfg) + (f" + value {value_path}" if value_path is not None else "")
    return PlannerBuild(MCTS(cfg), True, budget.ms, cfg.model_evals if budget.ms is None else None, desc, objective)


def load_critic(path: str, model: Any) -> tuple[Any, float]:
    """A trained critic for `model` from `path`, and its discount (`latentplan.io.load_critic`).

    `path` is a critic file (`latentplan.io.save_critic`) or a training checkpoint written with
    `TrainConfig.value_every > 0`. Loaded with `weights_only=True`.

    Raises:
        FileNotFoundError: no file at `path`.
        latentplan.io.CheckpointError (a ValueError): the file holds no critic, or its feature size is
            not the model's D + S.
    """
    from latentplan.io import load_critic as _load

    learner = _load(path, feature_dim=model.feature_size, device=model.action_low.device)
    return learner.value, learner.config.discount


def load_policy(path: str, model: Any) -> Any:
    """A distilled `GaussianPolicy` from `path` (written by `latentplan distill` or the training loop's
    `--distill`), in eval mode on the model's device (`latentplan.io.load_policy`).

    Raises:
        FileNotFoundError: no file at `path`.
        latentplan.io.CheckpointError (a ValueError): the file is not a latentplan policy.
    """
    from latentplan.io import load_policy as _load

    return _load(path, device=model.action_low.device)


def policy_factory(model: Any, budget: Budget, horizon: int, overrides: dict) -> PlannerBuild:
    """Registry factory of a distilled policy acting alone (`latentplan.planners.policy.PolicyPlanner`).

    Needs the override `checkpoint=<policy.pt>` (written by `latentplan distill`); other
    overrides go to `PolicyPlanner` (`horizon`, `deterministic`, `evaluate`). Its cost is one
    forward pass per decision whatever the budget (0 model evaluations with `horizon=1`).
    """
    from latentplan.planners.policy import PolicyPlanner

    opts = dict(overrides)
    path = opts.pop("checkpoint", None)
    if path is None:
        raise ValueError("planner 'policy' needs the distilled policy file: policy:checkpoint=path/to/policy.pt")
    planner = PolicyPlanner(load_policy(str(path), model), **opts)
    expected = 0 if planner.horizon == 1 and not planner.evaluate else None
    return PlannerBuild(planner, False, budget.ms, expected, f"{planner!r} from {path}")


#: the CEM family's presets: name -> (CEMConfig fields, warm start)
PRESETS: dict[str, tuple[dict[str, Any], bool]] = {
    # PlaNet's planner exactly (Hafner et al. 2019): 10 iterations of J = 1000, K = 100 without a budget
    # or a convergence stop; with an evaluation budget J is fitted to it as for every preset
    "planet": (dict(iterations=10, candidates=1000, elites=100, max_evals=None, tol=0.0), False),
    "cem": ({}, False),  # PlaNet (Hafner et al. 2019)
    # Pinneri et al. 2020, with half of the fresh candidates white: beta = 2 alone (theirs) stalled where the optimum
    # alternates from step to step; the mixed population had a lower worst case than white noise on both LQ families
    # (docs/planners.md, "iCEM's noise colour"); icem:white_fraction=0 restores the paper's single colour
    "icem": (dict(noise_beta=2.0, white_fraction=0.5, keep_elites=0.3, population_decay=1.25, include_mean=True), True),
    # CEM's loop with a softmax-weighted refit of mean and std (TD-MPC's "MPPI"); not MPPI as published
    "cem_softmax": (dict(refit="mppi", temperature=1.0), False),
    # CEM, then gradient ascent through the model: an L-BFGS polish of CEM's result with a quarter of the budget
    # (docs/planners.md, "Planners over problem families": near-exact on the LQ family, where CEM alone is not; better
    # than Bharadhwaj et al. 2020's Adam steps on the elites in every iteration on cartpole, which remain
    # `cem_gd:gradient.iterations=3,polish=0.0`, the former preset)
    "cem_gd": (dict(polish=0.25), False),
}
#: the largest J of a preset under an evaluation budget (beyond it the budget buys iterations; measured on the
#: LQ family at 120,000 evaluations: docs/planners.md, "Stopping"); absent: J grows with the budget
MAX_CANDIDATES: dict[str, int] = {"cem": 300, "cem_gd": 150, "icem": 1000}
for _name, (_preset, _warm) in PRESETS.items():
    register_planner(_name, cem_family(_preset, warm_start=_warm, max_candidates=MAX_CANDIDATES.get(_name)))
register_planner("mppi", mppi_factory)  # Williams et al. 2017
register_planner("cmaes", cmaes_factory)  # Hansen & Ostermeier 2001
register_planner("gradient", gradient_factory)
register_planner("ilqr", ilqr_factory)
register_planner("mcts", mcts_factory)
register_planner("policy", policy_factory)
