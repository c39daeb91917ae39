"""Gradient-based planning: gradient ascent on action sequences through a differentiable world model.

Planning by backpropagating the imagined return into the actions goes back to shooting methods in
optimal control; with learned latent models it is the "gradient-based planner" baseline of
Hafner et al. 2019 (PlaNet, Sec. 5) and of Bharadhwaj, Xie & Shkurti 2020, "Model-Predictive
Control via Cross-Entropy and Gradient-Based Optimization" (L4DC), whose CEM+GD hybrid reuses the
inner loop of this module (see `CEMConfig.gradient_steps`). Stochastic latents are differentiated
with the reparameterisation trick (Kingma & Welling 2014): the model's noise comes from the
planner's `generator`, so the gradient is that of one sampled rollout per sequence and step.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .base import Plan, Policy
from .capture import CaptureCache, CapturedSearch, StaticObjective, capture_key, check_first_replay, resolve_compile
from .objective import Objective, rank_returns
from .policy import policy_rollout

__all__ = ["GradientConfig", "GradientPlanner", "require_differentiable"]

_EXCLUDED_OPTIMIZERS = frozenset({"lbfgs", "sparseadam"})
_VANISHING = 1e-8
_EXPLODING = 1e6
_TANH_EDGE = 1e-4


def _optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The `torch.optim` class called `name` (case-insensitive), excluding closure/sparse ones."""
    key = name.lower()
    if key not in _EXCLUDED_OPTIMIZERS:
        for attr in dir(torch.optim):
            cls = getattr(torch.optim, attr)
            if (
                isinstance(cls, type)
                and issubclass(cls, torch.optim.Optimizer)
                and cls is not torch.optim.Optimizer
                and attr.lower() == key
            ):
                return cls
    known = sorted(
        a for a in dir(torch.optim)
        if isinstance(getattr(torch.optim, a), type)
        and issubclass(getattr(torch.optim, a), torch.optim.Optimizer)
        and getattr(torch.optim, a) is not torch.optim.Optimizer
        and a.lower() not in _EXCLUDED_OPTIMIZERS
    )
    raise ValueError(
        f"GradientConfig.optimizer: {name!r} is not a usable torch.optim class; choose one of {known} "
        "(LBFGS and SparseAdam are not supported: they need a closure / sparse gradients)"
    )


def _term_name(term: object) -> str:
    return (
        getattr(term, "name", None)
        or getattr(term, "__name__", None)
        or getattr(term, "__qualname__", None)
        or type(term).__name__
    )


def require_differentiable(objective: Objective, planner: str) -> None:
    """Refuse an objective that has a term marked non-differentiable.

    A reward term (an entry of `objective.rewards`) or the terminal value function declares itself
    non-differentiable with an attribute `differentiable = False`; gradient ascent through it
    would silently follow a zero or meaningless gradient, so gradient planners refuse it.

    Args:
        objective: the `Objective` about to be maximised by gradient steps.
        planner: the caller's name, used in the message (e.g. `"GradientPlanner"`).

    Raises:
        ValueError: naming the first offending term (its `name`, else `__name__`) and, for a
            composite term that lists its parts with `leaves()`, the offending parts.
    """
    terms = list(getattr(objective, "rewards", None) or [])
    value = getattr(objective, "value", None)
    if value is not None:
        terms.append(value)
    for term in terms:
        if getattr(term, "differentiable", True) is False:
            # a composite term (e.g. `a + 0.5 * b`) may expose its parts through `leaves()`
            # (directly or on the `term` it wraps): name the parts that are to blame, too
            inner = getattr(term, "term", term)
            leaves = getattr(inner, "leaves", None)
            parts = []
            if callable(leaves):
                parts = [_term_name(leaf) for leaf in leaves() if getattr(leaf, "differentiable", True) is False]
            culprit = f" (non-differentiable part: {', '.join(map(repr, parts))})" if parts and parts != [_term_name(term)] else ""
            raise ValueError(
                f"{planner}: reward term {_term_name(term)!r} is marked differentiable=False{culprit}; "
                "gradient-based planning needs a differentiable objective (use CEM without "
                "gradient_steps, or drop the term)"
            )


def _to_unbounded(actions: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Inverse of `_squash`: actions in [low, high] -> unbounded u (edges pulled in by 1e-4)."""
    span = high - low
    y = torch.where(span > 0, 2 * (actions - low) / span.clamp_min(1e-12) - 1, torch.zeros_like(actions))
    return torch.atanh(y.clamp(-1 + _TANH_EDGE, 1 - _TANH_EDGE))


def _squash(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """u -> low + (high - low) * (tanh(u) + 1) / 2, clamped against rounding past the bounds."""
    a = low + (high - low) * (torch.tanh(u) + 1) / 2
    return torch.minimum(torch.maximum(a, low), high)


def _clip(actions: Tensor, low: Tensor, high: Tensor) -> Tensor:
    return torch.minimum(torch.maximum(actions, low), high)


@dataclass
class _Ascent:
    """What `_ascend` found: the best sequence seen per row and diagnostics (tensors, no host sync)."""

    actions: Tensor  # [N, H, A] best sequence seen per row
    returns: Tensor  # [N] its return (non-finite -> -inf)
    steps: int  # optimizer steps taken
    model_evals: int  # imagined transitions in forward passes: N * H * (steps + 1)
    nonfinite: Tensor  # non-finite returns seen, 0-dim long
    nonfinite_grads: Tensor  # (row, step) pairs whose gradient was non-finite and dropped, 0-dim long
    grad_first: Tensor  # mean over rows of |dJ/da_0| at the first step, 0-dim
    grad_last: Tensor  # mean over rows of |dJ/da_{H-1}| at the first step, 0-dim
    grad_end: Tensor  # mean over rows of |dJ/da_{0:H}| at the last step, 0-dim


def _ascend(
    objective: Objective,
    starts: LatentState,
    init: Tensor,
    *,
    steps: int,
    lr: float,
    optimizer_cls: type[torch.optim.Optimizer],
    squash: str,
    low: Tensor,
    high: Tensor,
    grad_clip: float | None,
    generator: torch.Generator | None,
    deadline: float | None,
    capturable: bool = False,
) -> _Ascent:
    """Gradient ascent on `init [N, H, A]` from `starts [N]`; rows are independent problems.

    Every step evaluates the current sequences (forward), keeps the best seen per row, and takes
    one optimizer step on -sum(returns) (rows with a non-finite return or gradient get a zero
    gradient that step). A last forward pass evaluates the final sequences. Gradients are taken
    with `torch.autograd.grad` w.r.t. the action variables only, so no `.grad` of the model's
    parameters is ever touched.
    """
    n, h, a = init.shape
    dev = init.device
    zero = torch.zeros((), device=dev)
    grad_first = grad_last = grad_end = zero
    nonfinite = torch.zeros((), dtype=torch.long, device=dev)
    bad_grads = torch.zeros((), dtype=torch.long, device=dev)
    start = _clip(init.detach(), low, high)
    best_act = start.clone()
    best_ret = torch.full((n,), float("-inf"), device=dev)
    tanh = squash == "tanh"
    done = 0
    with torch.enable_grad():
        var = (_to_unbounded(start, low, high) if tanh else start).clone().requires_grad_(True)
        extra = {"capturable": True} if capturable and "capturable" in inspect.signature(optimizer_cls).parameters else {}
        opt = optimizer_cls([var], lr=lr, **extra)
        for step in range(steps):
            actions = _squash(var, low, high) if tanh else var
            ret = objective.returns(starts, actions, generator=generator)
            ranked, nf = rank_returns(ret.detach())
            nonfinite = nonfinite + nf
            better = ranked > best_ret
            best_ret = torch.where(better, ranked, best_ret)
            best_act = torch.where(better[:, None, None], actions.detach(), best_act)
            finite = torch.isfinite(ret.detach())
            loss = -torch.where(finite, ret, torch.zeros_like(ret)).sum()
            if loss.requires_grad:
                wrt = [var, actions] if tanh else [var]
                grads = torch.autograd.grad(loss, wrt, allow_unused=True)
                g_var = grads[0] if grads[0] is not None else torch.zeros_like(var)
                g_act = grads[-1] if grads[-1] is not None else torch.zeros_like(var)
            else:  # the objective does not depend on the actions at all
                g_var = g_act = torch.zeros_like(var)
            if step == 0:
                grad_first = g_act[:, 0].norm(dim=-1).mean()
                grad_last = g_act[:, -1].norm(dim=-1).mean()
            grad_end = g_act.flatten(1).norm(dim=1).mean()
            ok = torch.isfinite(g_var).flatten(1).all(dim=1) & finite
            bad_grads = bad_grads + (~ok).sum()
            g_var = torch.where(ok[:, None, None], g_var, torch.zeros_like(g_var))
            if grad_clip is not None:
                norm = g_var.flatten(1).norm(dim=1)
                g_var = g_var * (grad_clip / norm.clamp_min(1e-12)).clamp(max=1.0)[:, None, None]
            var.grad = g_var
            opt.step()
            if not tanh:
                with torch.no_grad():
                    var.copy_(_clip(var, low, high))
            done += 1
            if deadline is not None and time.perf_counter() >= deadline:
                break
    with torch.no_grad():
        actions = _squash(var, low, high) if tanh else var.detach()
        ranked, nf = rank_returns(objective.returns(starts, actions, generator=generator))
        nonfinite = nonfinite + nf
        better = ranked > best_ret
        best_ret = torch.where(better, ranked, best_ret)
        best_act = torch.where(better[:, None, None], actions, best_act)
    return _Ascent(
        best_act, best_ret, done, n * h * (done + 1), nonfinite, bad_grads, grad_first, grad_last, grad_end
    )


class _PriorMeanModel:
    """A view of a world model whose `imagine_step` uses the prior mean (`sample=False`)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def imagine_step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None
    ) -> LatentState:
        return self._model.imagine_step(state, action, generator=generator, sample=False)

    def __getattr__(self, name: str) -> Any:
        if name == "rollout":  # a model's own rollout samples; the view steps with the means
            rollout = getattr(self._model, "rollout", None)
            if rollout is None or "sample" not in inspect.signature(rollout).parameters:
                raise AttributeError(name)
            return lambda state, actions, *, generator=None: rollout(state, actions, generator=generator, sample=False)
        return getattr(self._model, name)


def _mean_objective(objective: Objective, state: LatentState) -> Objective:
    """The objective rolled out with prior means, for `GradientConfig.use_mean`.

    Raises:
        ValueError: if the model has a stochastic state but `imagine_step` has no `sample` option.
    """
    model = objective.model
    if state.stoch.shape[1] == 0:  # no stochastic part: samples are the means already
        return objective
    if "sample" not in inspect.signature(model.imagine_step).parameters:
        raise ValueError(
            f"GradientPlanner: use_mean=True needs {type(model).__name__}.imagine_step(state, action, *, "
            "generator=None, sample=True) to return the prior mean when sample=False; this model has "
            "no such option (use use_mean=False: reparameterised samples)"
        )
    view = copy.copy(objective)
    view.model = _PriorMeanModel(model)
    return view


@dataclass(frozen=True)
class GradientConfig:
    """Settings of `GradientPlanner`.

    Attributes:
        horizon: H, planning steps per sequence (PlaNet's planners use 12).
        iterations: optimizer steps per plan call (each is one forward and one backward pass
            through the model over `B * restarts` sequences).
        restarts: R, sequences optimised side by side per environment (in one batch of
            `B * R` rows); the best one is returned. Restart 0 starts from `init`, the others
            from random sequences (see `init`).
        lr: learning rate of the optimizer, in units of the optimised variable (action units
            for `squash="clip"`, pre-tanh units for `squash="tanh"`).
        optimizer: name of a `torch.optim` class, case-insensitive (`"adam"`, `"sgd"`,
            `"rmsprop"`, `"adamw"`, ...; not LBFGS or SparseAdam). Built with `lr` only.
        squash: how actions stay in bounds. `"tanh"`: optimise an unbounded u and use
            `action = low + (high - low) * (tanh(u) + 1) / 2`; `"clip"`: optimise the actions
            and project them onto `[low, high]` after every step.
        init: start of restart 0. `"zeros"`: the zero action (clipped into the bounds; a
            passed warm start is ignored); `"warm_start"`: the `warm_start` plan's actions
            (e.g. `previous_plan.shift()`) when one is passed, else zeros; `"random"`: random
            like the other restarts; `"policy"`: the deterministic rollout of the planner's
            `proposal` policy through the model (a distilled policy as the warm start, as
            TD-MPC2 and Bharadhwaj et al. seed their optimisers), with a passed `warm_start`
            going to restart 1 when there are two or more. Random starts are uniform in the
            central 90 % of the action box (so tanh is not saturated), drawn from `generator`.
        grad_clip: if set, each sequence's gradient (w.r.t. the optimised variable, over all
            `H * A` entries) is rescaled to at most this norm before the step. Per sequence, so
            environments in a batch never influence each other. `None`: no clipping.
        use_mean: roll out with the prior means of the model's stochastic latents instead of
            reparameterised samples. Models without a stochastic part are unaffected; a
            stochastic model must offer `imagine_step(..., sample=False)`, else `plan` raises.
        compile: how a plan call runs (`planners.capture`): `"eager"`, the plain loop (anytime:
            the deadline is checked after every step); `"cuda_graph"`, all `iterations` steps
            (forward, backward, optimiser) captured once in a CUDA graph and replayed, the
            optimiser built with `capturable=True`; `"torch_compile"`; `"static"`, the
            capture-ready loop without capture (for tests); `"auto"` (default): `"cuda_graph"`
            on a CUDA device, else `"eager"`.

    Raises:
        ValueError: on a non-positive count or rate, an unknown `squash`/`init`, or an
            optimizer name that is not a usable `torch.optim` class.
    """

    horizon: int = 12
    iterations: int = 50
    restarts: int = 8
    lr: float = 0.1
    optimizer: str = "adam"
    squash: Literal["tanh", "clip"] = "tanh"
    init: Literal["zeros", "warm_start", "random", "policy"] = "warm_start"
    grad_clip: float | None = None
    use_mean: bool = False
    compile: Literal["auto", "eager", "static", "cuda_graph", "torch_compile"] = "auto"

    def __post_init__(self) -> None:
        for name in ("horizon", "iterations", "restarts"):
            if getattr(self, name) < 1:
                raise ValueError(f"GradientConfig.{name} must be >= 1; got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"GradientConfig.lr must be a positive number; got {self.lr}")
        if self.squash not in ("tanh", "clip"):
            raise ValueError(f"GradientConfig.squash must be 'tanh' or 'clip'; got {self.squash!r}")
        if self.init not in ("zeros", "warm_start", "random", "policy"):
            raise ValueError(
                f"GradientConfig.init must be 'zeros', 'warm_start', 'random' or 'policy'; got {self.init!r}"
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"GradientConfig.grad_clip must be > 0 or None; got {self.grad_clip}")
        _optimizer_class(self.optimizer)
        if self.compile not in ("auto", "eager", "static", "cuda_graph", "torch_compile"):
            raise ValueError(
                "GradientConfig.compile must be 'auto', 'eager', 'static', 'cuda_graph' or 'torch_compile'; "
                f"got {self.compile!r}"
            )

    @property
    def model_evals(self) -> int:
        """Imagined transitions (forward) per decision and environment: H * R * (iterations + 1)."""
        return self.horizon * self.restarts * (self.iterations + 1)


class GradientPlanner:
    """Gradient ascent on action sequences through the differentiable world model, with restarts.

    For every environment, R sequences `[H, A]` are optimised side by side (`B * R` rows in one
    batch) to maximise `Objective.returns` by backpropagation through the imagined rollout;
    stochastic latents are reparameterised samples drawn with `generator` (or prior means, see
    `GradientConfig.use_mean`). The best sequence seen for each environment (over restarts and
    steps, including a final evaluation) is returned; with a stochastic model each evaluation
    uses fresh noise, so this maximum is an optimistic estimate. Actions never leave the
    model's bounds (`squash`). Anytime: `deadline` is checked after every step, and at least
    one step runs. Gradients are taken w.r.t. the actions only (`torch.autograd.grad`): the
    model's parameters never get a `.grad`, and `plan` works inside `torch.no_grad()`.

    Args:
        config: `GradientConfig`; keyword `overrides` replace its fields.
        proposal: a `Policy` (e.g. a distilled `GaussianPolicy`) whose rollout starts restart 0;
            needed by, and only used with, `init="policy"`.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]`, `value [B]` (the objective's estimate of that sequence's return,
    `-inf` if no finite return was seen) and `info` keys:

    - `iterations`: optimizer steps run; `model_evals`: imagined transitions in forward passes,
      `B * R * H * (iterations + 1)` (each step also runs one backward pass), plus
      `B * (H - 1)` for the proposal's rollout with `init="policy"`;
    - `nonfinite`: NaN/inf returns seen (ranked as -inf, never chosen over a finite one);
      `nonfinite_grads`: (sequence, step) pairs whose gradient was NaN/inf and was dropped;
    - `grad_norm_first` / `grad_norm_last`: mean over the B * R sequences of the norm of the
      return's gradient w.r.t. the first action a_0 / the last action a_{H-1}, at the first
      step (their ratio shows how the gradient changes as it is backpropagated through time);
    - `grad_norm_end`: mean norm of the gradient w.r.t. the whole sequence at the last step;
    - `vanishing` / `exploding`: `grad_norm_first` below 1e-8 / above 1e6 or non-finite
      (reported, planning goes on); `plan_ms`.

    Raises:
        ValueError: (here) if `init="policy"` without a `proposal`, or a `proposal` with another
            `init`; (from `plan`) if a reward term (or the value) is marked
            `differentiable = False` (the message names it), if `warm_start.actions` is not
            `[B, H, A]`, or if `use_mean` is set for a stochastic model without
            `imagine_step(..., sample=False)`.

    Source: gradient-based planning through a learned model as compared in Hafner et al. 2019
    (PlaNet) and Bharadhwaj et al. 2020; reparameterised gradients: Kingma & Welling 2014.
    """

    def __init__(self, config: GradientConfig | None = None, *, proposal: Policy | None = None, **overrides) -> None:
        if config is None:
            config = GradientConfig(**overrides)
        elif overrides:
            config = GradientConfig(**{**config.__dict__, **overrides})
        if (config.init == "policy") != (proposal is not None):
            raise ValueError(
                "GradientPlanner: init='policy' needs a proposal policy, and a proposal is only used with "
                f"init='policy' (got init={config.init!r}, proposal={type(proposal).__name__ if proposal is not None else None})"
            )
        self.config = config
        self.proposal = proposal
        self._optimizer = _optimizer_class(config.optimizer)
        self._cache = CaptureCache()

    def __repr__(self) -> str:
        return f"GradientPlanner({self.config})"

    def plan(
        self,
        objective: Objective,
        state: LatentState,
        *,
        warm_start: Plan | None = None,
        generator: torch.Generator | None = None,
        deadline: float | None = None,
    ) -> Plan:
        """Plan for every belief in `state` (`[B]` rows); see the class docstring."""
        t0 = time.perf_counter()
        c = self.config
        require_differentiable(objective, "GradientPlanner")
        b, h, r, a = state.batch, c.horizon, c.restarts, objective.action_dim
        dev = state.device
        model = objective.model
        low = model.action_low.to(dev)
        high = model.action_high.to(dev)
        if warm_start is not None and warm_start.actions.shape != (b, h, a):
            raise ValueError(
                f"GradientPlanner.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; "
                f"got {tuple(warm_start.actions.shape)}"
            )
        mode = resolve_compile(c.compile, dev, planner="GradientPlanner", not_capturable=self._cache.failed)
        original = objective
        if c.use_mean:
            objective = _mean_objective(objective, state)
        # a plain copy cut from any graph (and usable outside inference mode)
        state = LatentState(state.deter.detach().clone(), state.stoch.detach().clone())

        mid, half = (low + high) / 2, (high - low) / 2
        u = torch.rand(b, r, h, a, generator=generator, device=dev)
        init = mid + 0.9 * half * (2 * u - 1)  # [B, R, H, A]
        proposal_evals = 0
        if c.init == "policy":
            with torch.no_grad():
                rollout, _, proposal_evals = policy_rollout(
                    self.proposal, objective, state, h, generator=generator, deterministic=True
                )
            init[:, 0] = rollout
            if warm_start is not None and r > 1:
                init[:, 1] = warm_start.actions.to(dev)
        elif c.init == "warm_start" and warm_start is not None:
            init[:, 0] = warm_start.actions.to(dev)
        elif c.init in ("zeros", "warm_start"):
            init[:, 0] = 0.0
        init = _clip(init, low, high)

        if mode != "eager":
            try:
                out = self._captured(mode, original, objective, state, init.reshape(b * r, h, a), generator)
            except Exception as e:
                mode = self._cache.fall_back("GradientPlanner", c.compile, e)  # re-raises unless "auto"
        if mode == "eager":
            out = self._ascend(objective, state.expand(r), init.reshape(b * r, h, a), low, high, generator, deadline)

        ret = out.returns.reshape(b, r)
        value, idx = ret.max(dim=1)
        actions = out.actions.reshape(b, r, h, a).gather(1, idx[:, None, None, None].expand(b, 1, h, a))[:, 0]
        g_first = float(out.grad_first)
        info = {
            "iterations": out.steps,
            "model_evals": out.model_evals + proposal_evals,
            "nonfinite": int(out.nonfinite),
            "nonfinite_grads": int(out.nonfinite_grads),
            "grad_norm_first": g_first,
            "grad_norm_last": float(out.grad_last),
            "grad_norm_end": float(out.grad_end),
            "vanishing": g_first < _VANISHING,
            "exploding": (not math.isfinite(g_first)) or g_first > _EXPLODING,
            "plan_ms": (time.perf_counter() - t0) * 1e3,
            "compile": mode,
        }
        return Plan(actions, value, info)

    def _ascend(
        self, objective: Objective, starts: LatentState, init: Tensor, low: Tensor, high: Tensor,
        generator: torch.Generator | None, deadline: float | None, *, capturable: bool = False,
    ) -> _Ascent:
        """`_ascend` with this planner's settings, from `init [B * R, H, A]`."""
        c = self.config
        return _ascend(
            objective, starts, init, steps=c.iterations, lr=c.lr, optimizer_cls=self._optimizer, squash=c.squash,
            low=low, high=high, grad_clip=c.grad_clip, generator=generator, deadline=deadline, capturable=capturable,
        )

    def _captured(
        self, mode: str, objective: Objective, eager_objective: Objective, state: LatentState, init: Tensor,
        generator: torch.Generator | None,
    ) -> _Ascent:
        """`_ascend` (all steps, no deadline) as a `CapturedSearch` over static buffers; `objective`
        is the caller's (its context is loaded into the capture), `eager_objective` the one the eager
        loop would use (with `use_mean`, its prior-mean view), for the first-replay check."""
        c = self.config
        inputs = {"deter": state.deter, "stoch": state.stoch, "init": init}
        key = capture_key(mode, objective, generator, inputs)

        def build() -> tuple[CapturedSearch, StaticObjective]:
            static_obj = StaticObjective(objective, state.device)
            obj = static_obj.objective
            if c.use_mean:
                obj = _mean_objective(obj, state)
            low = obj.model.action_low.to(state.device).clone()
            high = obj.model.action_high.to(state.device).clone()

            def search(x: dict[str, Tensor]) -> dict[str, Tensor]:
                starts = LatentState(x["deter"], x["stoch"]).expand(c.restarts)
                out = self._ascend(obj, starts, x["init"], low, high, generator, None, capturable=mode == "cuda_graph")
                return {
                    "actions": out.actions, "returns": out.returns, "nonfinite": out.nonfinite,
                    "nonfinite_grads": out.nonfinite_grads, "grad_first": out.grad_first,
                    "grad_last": out.grad_last, "grad_end": out.grad_end,
                }

            refresh = getattr(obj.model, "refresh", None)
            return CapturedSearch(search, inputs, mode, generator=generator, refresh=refresh), static_obj

        runner, static_obj = self._cache.get(key, build)
        static_obj.load(objective)
        if runner.verified or mode == "torch_compile":  # compiled code may round differently
            o = runner(inputs)
        else:
            low = eager_objective.model.action_low.to(state.device)
            high = eager_objective.model.action_high.to(state.device)

            def eager() -> dict[str, Tensor]:
                e = self._ascend(eager_objective, state.expand(c.restarts), init, low, high, generator, None)
                return {"actions": e.actions, "returns": e.returns}

            o = check_first_replay(runner, inputs, eager, generator, state.device, planner="GradientPlanner", atol=1e-3)
        n, h = init.shape[:2]
        return _Ascent(
            o["actions"], o["returns"], c.iterations, n * h * (c.iterations + 1), o["nonfinite"],
            o["nonfinite_grads"], o["grad_first"], o["grad_last"], o["grad_end"],
        )
