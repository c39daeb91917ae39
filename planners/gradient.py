"""Gradient-based planning: gradient ascent on action sequences through a differentiable world model.

Planning by backpropagating the imagined return into the actions goes back to shooting methods in
optimal control; with learned latent models it is the "gradient-based planner" baseline of
Hafner et al. 2019 (PlaNet, Sec. 5) and of Bharadhwaj, Xie & Shkurti 2020, "Model-Predictive
Control via Cross-Entropy and Gradient-Based Optimization" (L4DC), whose CEM+GD hybrid shares the
inner loop (`planners.ascent.ascend`; see `CEMConfig.gradient`). Stochastic latents are
differentiated with the reparameterisation trick (Kingma & Welling 2014): the model's noise comes
from the planner's `generator`, so the gradient is that of one sampled rollout per sequence (fresh
noise at every step of a first-order optimizer; one fixed draw for the whole L-BFGS search, common
random numbers). The default optimiser is batched L-BFGS (`planners.lbfgs`; Liu & Nocedal 1989).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .validate import check_choice, check_int, check_plan_inputs, check_positive, check_range, require_finite_bounds
from .ascent import (VJP_EVALS, Ascent, AscentConfig, ascend, ascent_evals, optimizer_class, project,
                     require_autograd, require_differentiable)
from .lbfgs import lbfgs_ascend
from .base import Plan, Policy
from .capture import CaptureCache, resolve_compile, run_captured
from .objective import Objective
from .policy import policy_rollout

__all__ = ["GradientConfig", "GradientPlanner", "require_differentiable"]

_VANISHING = 1e-8
_EXPLODING = 1e6


@dataclass(frozen=True)
class GradientConfig:
    """Settings of `GradientPlanner`.

    Attributes:
        horizon: H, planning steps per sequence (PlaNet's planners use 12).
        iterations: the most optimizer iterations per plan call (a cap: the budget `max_evals`,
            the convergence stop `tol` and the deadline may end the search earlier). A first-order
            step is one forward and one backward pass through the model over `B * restarts`
            sequences; an L-BFGS iteration is one such pass per line-search trial (usually one).
        restarts: R, sequences optimised side by side per environment (in one batch of
            `B * R` rows); the best one is returned. Restart 0 starts from `init`, the others
            from random sequences (see `init`).
        lr: the step size. `None` (default): 1.0 for `"lbfgs"` (the first trial step of the first
            iteration, scaled by `min(1, 1 / |g|_1)`; later iterations try the quasi-Newton step
            of length 1), 0.1 for the first-order optimizers, whose learning rate it is, in units
            of the optimised variable (action units for `squash="clip"`, pre-tanh units for
            `squash="tanh"`).
        optimizer: `"lbfgs"` (default): batched limited-memory BFGS with a backtracking line
            search (`planners.lbfgs`; Liu & Nocedal 1989), which learns the return's curvature
            and converges on ill-conditioned problems where first-order steps crawl; it needs
            `squash="tanh"` and runs eagerly (no capture). Otherwise the name of a `torch.optim`
            class, case-insensitive (`"adam"`, `"sgd"`, `"rmsprop"`, `"adamw"`, ...; not
            torch's LBFGS or SparseAdam), built with `lr` only.
        squash: how actions stay in bounds. `"tanh"`: optimise an unbounded u and use
            `action = low + (high - low) * (tanh(u) + 1) / 2`; `"clip"`: optimise the actions
            and project them onto `[low, high]` after every step (first-order optimizers only).
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
            environments in a batch never influence each other. `None`: no clipping. First-order
            optimizers only.
        use_mean: roll out with the prior means of the model's stochastic latents instead of
            reparameterised samples (`imagine_step(..., sample=False)`). Models without a
            stochastic part are unaffected. (L-BFGS otherwise fixes one sample path per plan
            call: common random numbers.)
        max_evals: the budget, in model evaluations per decision and environment with a
            backward pass counted as `VJP_EVALS` = 2 forward transitions (default 120,000,
            PlaNet's CEM budget); no step or evaluation starts that would pass it (the first
            always runs). `None`: no budget.
        tol: L-BFGS's convergence stop: a sequence stops when an iteration changes its return
            by at most `tol * max(1, |return|)` (or its line search fails twice running); the
            search ends when every sequence has stopped. 0: off. Ignored by the first-order
            optimizers.
        history: m, the curvature pairs L-BFGS keeps per sequence.
        compile: how a plan call runs (`planners.capture`): `"eager"`, the plain loop (anytime:
            the deadline is checked after every step); `"cuda_graph"`, all planned steps
            (forward, backward, optimiser) captured once in a CUDA graph and replayed, the
            optimiser built with `capturable=True`; `"torch_compile"`; `"static"`, the
            capture-ready loop without capture (for tests); `"auto"` (default): `"cuda_graph"`
            on a CUDA device for the first-order optimizers, else `"eager"`. L-BFGS (its line
            search decides how many passes run) is eager only.

    Raises:
        ValueError: on a non-positive count or rate, an unknown `squash`/`init`, an optimizer
            name that is neither `"lbfgs"` nor a usable `torch.optim` class, or `"lbfgs"` with
            `squash="clip"`, `grad_clip` or a captured `compile` mode.

    Source: the defaults (L-BFGS, 8 restarts, 120,000 evaluations) were chosen on the LQ family
    of `latentplan.families` (docs/planners.md, "The gradient planner's optimiser").
    """

    horizon: int = 12
    iterations: int = 1000
    restarts: int = 8
    lr: float | None = None
    optimizer: str = "lbfgs"
    squash: Literal["tanh", "clip"] = "tanh"
    init: Literal["zeros", "warm_start", "random", "policy"] = "warm_start"
    grad_clip: float | None = None
    use_mean: bool = False
    max_evals: int | None = 120_000
    tol: float = 1e-9
    history: int = 20
    compile: Literal["auto", "eager", "static", "cuda_graph", "torch_compile"] = "auto"

    def __post_init__(self) -> None:
        check_int(self, "horizon", "iterations", "restarts", "history", minimum=1)
        check_int(self, "max_evals", minimum=1, optional=True)
        check_positive(self, "lr", optional=True)
        check_positive(self, "grad_clip", optional=True)
        check_range(self, "tol", 0.0, math.inf)
        check_choice(self, "squash", ("tanh", "clip"))
        check_choice(self, "init", ("zeros", "warm_start", "random", "policy"))
        check_choice(self, "compile", ("auto", "eager", "static", "cuda_graph", "torch_compile"))
        if self.lbfgs:
            wrong = [f"{k}={v!r}" for k, v, ok in (
                ("squash", self.squash, self.squash == "tanh"), ("grad_clip", self.grad_clip, self.grad_clip is None),
                ("compile", self.compile, self.compile in ("auto", "eager"))) if not ok]
            if wrong:
                raise ValueError(
                    f"GradientConfig: optimizer='lbfgs' needs squash='tanh', no grad_clip and compile 'auto' or "
                    f"'eager' (its line search decides how many passes run); got {', '.join(wrong)}. "
                    "Use a first-order optimizer (e.g. optimizer='adam') for these"
                )
        else:
            optimizer_class(self.optimizer, "GradientConfig.optimizer")

    @property
    def lbfgs(self) -> bool:
        """Whether the optimiser is the batched L-BFGS (`planners.lbfgs`)."""
        return self.optimizer.lower() == "lbfgs"

    @property
    def step_size(self) -> float:
        """`lr`, or its default for the optimiser (1.0 for L-BFGS, 0.1 otherwise)."""
        return self.lr if self.lr is not None else (1.0 if self.lbfgs else 0.1)

    @property
    def planned_iterations(self) -> int:
        """First-order optimizers: the steps a plan call runs without a deadline, `iterations`
        cut to the budget (`(max_evals // (H R) - 1) // (1 + VJP_EVALS)`, at least 1). L-BFGS:
        `iterations` (a cap; its stops decide)."""
        if self.lbfgs or self.max_evals is None:
            return self.iterations
        fit = (self.max_evals // (self.horizon * self.restarts) - 1) // (1 + VJP_EVALS)
        return max(1, min(self.iterations, fit))

    @property
    def ascent(self) -> AscentConfig:
        """The settings of this planner's first-order gradient ascent (`planners.ascent.ascend`),
        `planned_iterations` steps. Raises ValueError for `optimizer="lbfgs"`."""
        if self.lbfgs:
            raise ValueError("GradientConfig.ascent: optimizer='lbfgs' does not run planners.ascent.ascend")
        return AscentConfig(self.planned_iterations, self.step_size, self.optimizer, self.squash, self.grad_clip)

    @property
    def model_evals(self) -> int | None:
        """Model evaluations per decision and environment, backward passes included. First-order
        optimizers: exactly `H * R * (planned_iterations * (1 + VJP_EVALS) + 1)`
        (`planners.ascent.ascent_evals`; a backward pass counts as `VJP_EVALS` = 2 forward
        transitions). L-BFGS: at most `max_evals` for each environment's own search, or one
        evaluation `3 * H * R` when that alone is more (it stops when converged; `None` without a
        budget)."""
        if self.lbfgs:
            return None if self.max_evals is None else max(self.max_evals, (1 + VJP_EVALS) * self.horizon * self.restarts)
        return ascent_evals(self.restarts, self.horizon, self.planned_iterations)


class GradientPlanner:
    """Gradient ascent on action sequences through the differentiable world model, with restarts.

    For every environment, R sequences `[H, A]` are optimised side by side (`B * R` rows in one
    batch) to maximise `Objective.returns` by backpropagation through the imagined rollout;
    stochastic latents are reparameterised samples drawn with `generator` (or prior means, see
    `GradientConfig.use_mean`). The best sequence seen for each environment (over restarts and
    steps; a first-order optimizer adds a final evaluation) is returned. With a stochastic model a
    first-order optimizer draws fresh noise at every evaluation, so this maximum is an optimistic
    estimate; L-BFGS (the default) evaluates every sequence of one call on the same draw (common
    random numbers), so its maximum is that of one sample path. Actions never leave the model's
    bounds (`squash`). Anytime: `deadline` is checked after every step (L-BFGS: also between its
    line search's trials), and at least one step runs. Gradients are taken w.r.t. the actions only (`torch.autograd.grad`): the
    model's parameters never get a `.grad`, and `plan` works inside `torch.no_grad()`.

    Args:
        config: `GradientConfig`; keyword `overrides` replace its fields.
        proposal: a `Policy` (e.g. a distilled `GaussianPolicy`) whose rollout starts restart 0;
            needed by, and only used with, `init="policy"`.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]`, `value [B]` (the objective's estimate of that sequence's return,
    `-inf` if no finite return was seen) and `info` keys:

    - `iterations`: optimizer steps (L-BFGS: iterations) run; `model_evals`: imagined transitions
      computed, with the backward passes weighted as `VJP_EVALS` = 2 forward transitions each:
      first-order, `B * R * H * (iterations * (1 + VJP_EVALS) + 1)`; L-BFGS, `B * R * H *
      (1 + VJP_EVALS)` per evaluation (one per line-search trial, plus the start); plus
      `B * (H - 1)` for the proposal's rollout with `init="policy"`. Each environment's L-BFGS
      search keeps to `max_evals` by itself (its restarts are one budget group), so its search
      does not depend on the other environments in the batch (its random restarts are drawn
      from `generator` in environment order);
    - `stopped`: why the search ended: `"budget"` (`max_evals`), `"deadline"`, `"converged"`
      (L-BFGS: every sequence stopped by itself, see `GradientConfig.tol`) or `"iterations"`;
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
            `differentiable = False` (the message names it), or if `warm_start.actions` is not
            `[B, H, A]`.

    Source: gradient-based planning through a learned model as compared in Hafner et al. 2019
    (PlaNet) and Bharadhwaj et al. 2020; reparameterised gradients: Kingma & Welling 2014.
    """

    def __init__(self, config: GradientConfig | None = None, *, proposal: Policy | None = None, **overrides) -> None:
        config = dataclasses.replace(config or GradientConfig(), **overrides)
        if (config.init == "policy") != (proposal is not None):
            raise ValueError(
                "GradientPlanner: init='policy' needs a proposal policy, and a proposal is only used with "
                f"init='policy' (got init={config.init!r}, proposal={type(proposal).__name__ if proposal is not None else None})"
            )
        self.config = config
        self.proposal = proposal
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
        """Plan for every belief in `state` (`[B]` rows) by gradient ascent; see the class docstring.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H, A]`; `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                a term marked `differentiable = False`; infinite action bounds with
                `squash='tanh'` (L-BFGS). RuntimeError: called inside `torch.inference_mode()`.
        """
        t0 = time.perf_counter()
        c = self.config
        check_plan_inputs("GradientPlanner.plan", objective, state, warm_start=warm_start, generator=generator,
                          deadline=deadline)
        require_differentiable(objective, "GradientPlanner")
        require_autograd("GradientPlanner")
        b, h, r, a = state.batch, c.horizon, c.restarts, objective.action_dim
        dev = state.device
        model = objective.model
        low = model.action_low.to(dev)
        high = model.action_high.to(dev)
        if c.squash == "tanh":  # L-BFGS too (it needs tanh); squash="clip" plans in an unbounded space
            require_finite_bounds("GradientPlanner.plan", low, high,
                                  "squash='tanh' maps onto the action box; use optimizer='adam', squash='clip' "
                                  "for unbounded actions")
        if warm_start is not None and warm_start.actions.shape != (b, h, a):
            raise ValueError(
                f"GradientPlanner.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; "
                f"got {tuple(warm_start.actions.shape)}"
            )
        not_capturable = "optimizer='lbfgs' (its line search decides the passes)" if c.lbfgs else self._cache.failed
        mode = resolve_compile(c.compile, dev, planner="GradientPlanner", not_capturable=not_capturable)
        original = objective
        if c.use_mean:
            objective = objective.with_prior_means(state)
        # a plain copy cut from any graph (and usable outside inference mode)
        state = LatentState(state.deter.detach().clone(), state.stoch.detach().clone())

        mid, half = (low + high) / 2, (high - low) / 2
        u = torch.rand(b, r, h, a, generator=generator, device=dev).to(low.dtype)  # the model's dtype (float64 plans in float64)
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
        init = project(init, low, high)

        if mode != "eager":
            try:
                out = self._captured(mode, original, objective, state, init.reshape(b * r, h, a), generator)
            except Exception as e:
                mode = self._cache.fall_back("GradientPlanner", c.compile, e)  # re-raises unless "auto"
        if mode == "eager" and c.lbfgs:
            out = lbfgs_ascend(objective, state.expand(r), init.reshape(b * r, h, a), iterations=c.iterations,
                               lr=c.step_size, history=c.history, tol=c.tol,
                               max_evals=c.max_evals, group=r, low=low, high=high,
                               generator=generator, deadline=deadline)
        elif mode == "eager":
            out = ascend(objective, state.expand(r), init.reshape(b * r, h, a), **vars(c.ascent), low=low, high=high,
                         generator=generator, deadline=deadline)

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
            "stopped": out.stopped or ("deadline" if out.steps < c.planned_iterations else
                                       "budget" if c.planned_iterations < c.iterations else "iterations"),
            "plan_ms": (time.perf_counter() - t0) * 1e3,
            "compile": mode,
        }
        return Plan(actions, value, info)

    def _captured(
        self, mode: str, objective: Objective, eager_objective: Objective, state: LatentState, init: Tensor,
        generator: torch.Generator | None,
    ) -> Ascent:
        """`ascend` (all steps, no deadline) as a captured search over static buffers; `objective`
        is the caller's (its context is loaded into the capture), `eager_objective` the one the eager
        loop would use (with `use_mean`, its prior-mean view), for the first-replay check."""
        c = self.config
        settings = vars(c.ascent)
        inputs = {"deter": state.deter, "stoch": state.stoch, "init": init}

        def build_search(obj: Objective, counts: dict[str, int]):
            if c.use_mean:
                obj = obj.with_prior_means(state)
            low = obj.model.action_low.to(state.device).clone()
            high = obj.model.action_high.to(state.device).clone()

            def search(x: dict[str, Tensor]) -> dict[str, Tensor]:
                starts = LatentState(x["deter"], x["stoch"]).expand(c.restarts)
                out = ascend(obj, starts, x["init"], **settings, low=low, high=high, generator=generator,
                             capturable=mode == "cuda_graph")
                return {
                    "actions": out.actions, "returns": out.returns, "nonfinite": out.nonfinite,
                    "nonfinite_grads": out.nonfinite_grads, "grad_first": out.grad_first,
                    "grad_last": out.grad_last, "grad_end": out.grad_end,
                }

            return search

        def eager() -> dict[str, Tensor]:
            e = ascend(eager_objective, state.expand(c.restarts), init, **settings, generator=generator)
            return {"actions": e.actions, "returns": e.returns}

        o, _ = run_captured(self._cache, mode, objective, inputs, build_search, eager, generator=generator,
                            planner="GradientPlanner", atol=1e-3)
        n, h = init.shape[:2]
        return Ascent(
            o["actions"], o["returns"], c.planned_iterations, ascent_evals(n, h, c.planned_iterations), o["nonfinite"],
            o["nonfinite_grads"], o["grad_first"], o["grad_last"], o["grad_end"],
        )
