"""iLQR / box-DDP: Newton-like trajectory optimisation over any differentiable `WorldModel`.

Iterative LQR (Li & Todorov 2004, "Iterative linear quadratic regulator design for nonlinear
biological movement systems") linearises the dynamics and quadratises the reward along the current
action sequence, solves the resulting time-varying linear-quadratic problem by a backward Riccati
recursion, and rolls the new feedback policy out through the true model with a line search. Action
bounds are handled as in Tassa, Mansard & Todorov 2014, "Control-limited differential dynamic
programming" (ICRA): every step of the backward pass solves a box-constrained QP by projected
Newton, and the feedback gain acts only on the free (unclamped) action dimensions; this box-DDP
backward pass is also the one of Amos et al. 2018, "Differentiable MPC for end-to-end planning and
control" (NeurIPS). Regularisation is Levenberg–Marquardt on the action Hessian with the schedule
of Tassa, Erez & Todorov 2012.

The belief is treated as the vector `x = state.features()` (`[N, F]`, F = D + S). On a stochastic
model (the RSSM) the planner optimises over the deterministic path with the stochastic part at its
prior mean, i.e. `imagine_step(..., sample=False)`; `Plan.value` is the objective's return along
that path.

Why this module is over 500 lines: the forward solver (`ILQR`), its box QP (`box_qp`) and the
implicit backward pass (`lqr_solve`, `_ImplicitStep`) share one set of derivative conventions
(`f_x, f_u, l_z, l_zz` on `z = (x_{t+1}, u_t)`); split, each would restate them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.func import grad, jacrev

from latentplan.worldmodels.state import LatentState

from .ascent import VJP_EVALS, require_differentiable
from .base import Plan, callable_name
from .objective import Objective
from .validate import check_choice, check_int, check_min, check_plan_inputs, check_positive, check_range

__all__ = ["ILQR", "ILQRConfig", "box_qp", "lqr_solve"]


@dataclass(frozen=True)
class ILQRConfig:
    """Settings of `ILQR`.

    Attributes:
        horizon: H, planning steps per sequence.
        iterations: the most linearise / backward / forward iterations per plan call.
        tolerance: stop when, for every environment, the accepted step improved the return by
            less than `tolerance * max(1, |return|)` (relative), or no step was accepted at
            the largest regularisation. `0.0` always runs all `iterations` (so the number of
            model evaluations is known in advance, as the registry's budgets need).
        line_search: L, the step sizes `1, 1/2, ..., 2^-(L-1)` of the forward pass, all rolled
            out in one batch of `B * L` rows; the best improving one is taken.
        reg_init: initial Levenberg–Marquardt damping mu added to the action Hessian (`Q_uu +
            mu I`). `0.0`: a pure Newton step, exact in one iteration on an LQ problem as long
            as no feedforward step meets a bound in that iteration (box-DDP clamps it and drops the
            clamped rows of the feedback gain, so from a far start, e.g. zero actions, a bound can
            bind on the way although the optimum is inside; then it takes 2–3 iterations).
        reg_min: the smallest non-zero mu; a decrease below it sets mu to 0 (Tassa et al. 2012).
        reg_max: the largest mu; an environment whose backward pass still fails there stops.
        reg_factor: mu is multiplied by it after a failed step (not positive definite, or no
            improving step size) and divided by it after an accepted one.
        qp_iterations: projected-Newton iterations of each per-step box QP (Tassa et al. 2014).
        state: what the planner optimises over; only `"mean"`: on the RSSM, the deterministic path
            with the stochastic part at its prior mean (`imagine_step(..., sample=False)`);
            models without a stochastic part are unaffected.
        differentiable: `None` (default): the plan is a constant for autograd. `"implicit"`:
            `Plan.actions` (and `Plan.value`) carry a `grad_fn`, and `loss(plan.actions).backward()`
            gives the gradients w.r.t. every tensor with `requires_grad` that the objective reads
            (reward weights, context values such as a goal, the value function's and the model's
            parameters) and w.r.t. the belief `state`, by implicit differentiation of the
            converged box-constrained solution (Amos et al. 2018, Sec. 4): see `ILQR`. The
            forward result is unchanged; it applies only when grad mode is on. `"unroll"`:
            the same gradients by ordinary autograd through every iteration (linearisation,
            box QPs, line search), with the graph of all iterations kept: a reference for the
            implicit gradients, and the one to use on a plan stopped before convergence.

    Raises:
        ValueError: naming the field, on a count below 1, a negative tolerance or damping,
            `reg_factor <= 1`, `reg_min > reg_max`, or an unknown `state` or `differentiable`.
    """

    horizon: int = 12
    iterations: int = 10
    tolerance: float = 1e-6
    line_search: int = 8
    reg_init: float = 0.0
    reg_min: float = 1e-6
    reg_max: float = 1e10
    reg_factor: float = 10.0
    qp_iterations: int = 30
    state: Literal["mean"] = "mean"
    differentiable: Literal["implicit", "unroll"] | None = None

    def __post_init__(self) -> None:
        check_int(self, "horizon", "iterations", "line_search", "qp_iterations", minimum=1)
        check_min(self, 0.0, "tolerance", "reg_init")
        check_positive(self, "reg_min", "reg_max")
        check_range(self, "reg_factor", 1.0, math.inf, low_open=True, high_open=True)
        if self.reg_min > self.reg_max:
            raise ValueError(f"ILQRConfig.reg_min must be <= reg_max={self.reg_max}; got {self.reg_min}")
        check_choice(self, "state", ("mean",))
        check_choice(self, "differentiable", (None, "implicit", "unroll"))

    def model_evals(self, feature_size: int) -> int:
        """Model evaluations per decision and environment when all `iterations` run:
        `H * (1 + iterations * (1 + VJP_EVALS * F + L))` for beliefs of F features (see `ILQR`)."""
        return self.horizon * (1 + self.iterations * (1 + VJP_EVALS * int(feature_size) + self.line_search))


def box_qp(hessian: Tensor, gradient: Tensor, low: Tensor, high: Tensor, *, iterations: int = 30,
           start: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Minimise `1/2 x^T H x + g^T x` subject to `low <= x <= high`, batched, by projected Newton.

    The method of Tassa, Mansard & Todorov 2014 (Alg. 1, after Bertsekas 1982): at each
    iteration the dimensions at a bound whose gradient pushes outwards are clamped, a Newton step
    is taken on the free ones, and the step is shortened along the projected path (Armijo) until
    the objective decreases enough. Without `start`, when the unconstrained minimiser `-H^{-1} g`
    lies inside the box for every row it is returned at once (all dimensions free).

    Args:
        hessian: `[N, A, A]` symmetric positive definite H.
        gradient: `[N, A]` g.
        low, high: `[N, A]` bounds with `low <= high`.
        iterations: the most Newton iterations.
        start: `[N, A]` initial guess (projected into the box); default zeros.

    Returns:
        `(x, free, chol)`: the solution `[N, A]`; `[N, A]` bool, the dimensions not clamped at
        the solution; `[N, A, A]` the Cholesky factor of H restricted to the free dimensions
        (identity on the clamped ones), for the feedback gain.

    Raises:
        torch.linalg.LinAlgError: if H is not positive definite (callers check first).
    """
    if start is None:  # fast path: the unconstrained minimiser, when it lies in the box for every row
        chol, info = torch.linalg.cholesky_ex(hessian)
        if not bool(info.any()):
            x = -torch.cholesky_solve(gradient.unsqueeze(-1), chol).squeeze(-1)
            if bool(((x >= low) & (x <= high)).all()):
                return x, torch.ones_like(x, dtype=torch.bool), chol
    x = torch.zeros_like(gradient) if start is None else start
    x = torch.minimum(torch.maximum(x, low), high)
    steps = 0.5 ** torch.arange(12, dtype=x.dtype, device=x.device)  # [S] projected line search

    def q(v: Tensor) -> Tensor:  # [N, S, A] -> [N, S]
        hv = (hessian.unsqueeze(1) @ v.unsqueeze(-1)).squeeze(-1)
        return (0.5 * hv + gradient.unsqueeze(1)).mul(v).sum(-1)

    def free_of(v: Tensor) -> tuple[Tensor, Tensor]:
        g = gradient + (hessian @ v.unsqueeze(-1)).squeeze(-1)
        clamped = ((v <= low) & (g > 0)) | ((v >= high) & (g < 0))
        return ~clamped, g

    for _ in range(iterations):
        free, g = free_of(x)
        f = free.to(x.dtype)
        hf = hessian * f.unsqueeze(-1) * f.unsqueeze(-2) + torch.diag_embed(1.0 - f)
        dx = torch.cholesky_solve((-g * f).unsqueeze(-1), torch.linalg.cholesky(hf)).squeeze(-1)  # 0 where clamped
        if not bool((dx.abs() > 1e-13 * (1.0 + x.abs())).any()):
            break
        cand = torch.minimum(torch.maximum(x.unsqueeze(1) + steps[:, None] * dx.unsqueeze(1), low.unsqueeze(1)),
                             high.unsqueeze(1))  # [N, S, A]
        armijo = q(x.unsqueeze(1)) + 0.1 * ((cand - x.unsqueeze(1)) * g.unsqueeze(1)).sum(-1)  # [N, S]
        ok = q(cand) <= armijo
        first = ok.to(torch.int8).argmax(1)  # the longest accepted step
        take = cand[torch.arange(x.shape[0], device=x.device), first]
        x = torch.where(ok.any(1, keepdim=True), take, x)
    free, _ = free_of(x)
    f = free.to(x.dtype)
    chol = torch.linalg.cholesky(hessian * f.unsqueeze(-1) * f.unsqueeze(-2) + torch.diag_embed(1.0 - f))
    return x, free, chol


class _ImplicitStep(torch.autograd.Function):
    """Zero in the forward pass; in the backward pass the implicit-function-theorem map.

    `forward(g [B, H, A], solve) -> zeros [B, H, A]` where `g = dJ/dU` is the cost gradient at the
    converged actions U*, built with a graph to the parameters (U held fixed). At U* the free
    entries satisfy `g_f = 0` (stationarity) and the clamped ones stay at their bound, so
    `dU*_f/dθ = -H_ff^{-1} dg_f/dθ` and `dU*_c/dθ = 0`; `backward(v) = -solve(v)` with
    `solve(v) = H_ff^{-1} v_f` (zero on clamped entries), one LQR solve (Amos et al. 2018, Sec. 4).
    Autograd then carries `-solve(v)` through `g`'s graph into θ.
    """

    @staticmethod
    def forward(ctx, g: Tensor, solve) -> Tensor:
        ctx.solve = solve
        return torch.zeros_like(g)

    @staticmethod
    def backward(ctx, incoming: Tensor):
        return -ctx.solve(incoming), None


def lqr_solve(derivs: tuple[Tensor, ...], vxx: Tensor, free: Tensor, linear: Tensor) -> Tensor:
    """Minimise the LQR model of the cost in the action deviations, with clamped entries fixed at 0.

    Solves `min_dU 1/2 dU^T H dU - linear^T dU` subject to `dU_c = 0`, i.e. returns
    `H_ff^{-1} linear_f` (zeros on clamped entries), where H is the Gauss–Newton Hessian of the
    cost w.r.t. the action sequence: the LQR with dynamics `dx_{t+1} = f_x dx_t + f_u du_t`,
    `dx_0 = 0`, stage cost `1/2 dz_t^T l_zz dz_t` (z = (x_{t+1}, u_t)) and terminal
    `1/2 dx_H^T v_xx dx_H`. This is the backward pass of differentiable MPC (Amos, Rodriguez,
    Sacks, Boots & Kolter 2018, "Differentiable MPC for end-to-end planning and control", Sec. 4:
    the incoming gradient as the linear term, the free/clamped split of the box-DDP solution).

    Args:
        derivs: `(f_x [B, H, F, F], f_u [B, H, F, A], l_z [B, H, F+A], l_zz [B, H, F+A, F+A])`
            as in `ILQR._backward` (l_z is unused).
        vxx: `[B, F, F]` the terminal cost's Hessian.
        free: `[B, H, A]` bool, the entries not clamped at a bound.
        linear: `[B, H, A]` the linear term (the incoming gradient).

    Returns:
        `[B, H, A]` the solution dU.

    Raises:
        torch.linalg.LinAlgError: if some `Q_uu` restricted to the free entries is not positive
            definite (the solution is not a strict local optimum).
    """
    fx, fu, _, lzz = derivs
    b, h, f_dim, a = fu.shape
    linear = linear.to(fu.dtype)
    vx = torch.zeros(b, f_dim, dtype=fu.dtype, device=fu.device)
    ks, gains = [None] * h, [None] * h
    for t in reversed(range(h)):
        A_, B_ = fx[:, t], fu[:, t]
        syy = lzz[:, t, :f_dim, :f_dim] + vxx
        luy = lzz[:, t, f_dim:, :f_dim]
        qx = (A_.transpose(1, 2) @ vx.unsqueeze(-1)).squeeze(-1)
        qu = (B_.transpose(1, 2) @ vx.unsqueeze(-1)).squeeze(-1) - linear[:, t]
        cross = luy @ B_
        quu = B_.transpose(1, 2) @ syy @ B_ + lzz[:, t, f_dim:, f_dim:] + cross + cross.transpose(1, 2)
        quu = 0.5 * (quu + quu.transpose(1, 2))
        qux = B_.transpose(1, 2) @ syy @ A_ + luy @ A_
        f = free[:, t].to(fu.dtype)
        chol = torch.linalg.cholesky(quu * f.unsqueeze(-1) * f.unsqueeze(-2) + torch.diag_embed(1.0 - f))
        k = -torch.cholesky_solve((qu * f).unsqueeze(-1), chol).squeeze(-1)
        gain = -torch.cholesky_solve(qux * f.unsqueeze(-1), chol)  # [B, A, F], zero rows where clamped
        vx = qx + (gain.transpose(1, 2) @ (quu @ k.unsqueeze(-1) + qu.unsqueeze(-1))).squeeze(-1) \
            + (qux.transpose(1, 2) @ k.unsqueeze(-1)).squeeze(-1)
        vxx = A_.transpose(1, 2) @ syy @ A_ + gain.transpose(1, 2) @ quu @ gain \
            + gain.transpose(1, 2) @ qux + qux.transpose(1, 2) @ gain
        vxx = 0.5 * (vxx + vxx.transpose(1, 2))
        ks[t], gains[t] = k, gain
    dx, dus = torch.zeros_like(vx), []
    for t in range(h):
        du = ks[t] + (gains[t] @ dx.unsqueeze(-1)).squeeze(-1)
        dus.append(du)
        dx = (fx[:, t] @ dx.unsqueeze(-1)).squeeze(-1) + (fu[:, t] @ du.unsqueeze(-1)).squeeze(-1)
    return torch.stack(dus, 1)


class ILQR:
    """iLQR / box-DDP over any differentiable `WorldModel` (Li & Todorov 2004; Tassa et al. 2014).

    Each iteration, for all B environments at once:

    1. *Linearise*: the Jacobians `f_x [B*H, F, F]`, `f_u [B*H, F, A]` of the transition
       `x_{t+1} = f(x_t, u_t)` along the current trajectory, and the gradient and Hessian of the
       discounted reward `gamma^t r(x_{t+1}, u_t)` w.r.t. `(x_{t+1}, u_t)`, all B*H rows in one
       `torch.func` call (no loop over environments or steps): rows are independent, so the
       Jacobian of the row-sum gives every row's Jacobian. The terminal value `gamma^H V(x_H)`
       (when the objective has one) is quadratised the same way. Second derivatives of the
       dynamics are dropped (iLQR, a Gauss–Newton approximation); those of the reward are kept.
    2. *Backward pass*: the Riccati recursion on the cost `-reward`; at every step the box QP over
       the action step (`box_qp`) gives the open-loop step `k_t` and the free dimensions, and the
       feedback gain `K_t = -Q_uu,ff^{-1} Q_ux` acts on the free dimensions only (box-DDP).
       `Q_uu + mu I` must be positive definite; where it is not, mu grows (Levenberg–Marquardt)
       and the pass is repeated.
    3. *Forward pass*: `u_t = clip(ubar_t + alpha k_t + K_t (x_t - xbar_t))` through the true
       model for the L step sizes alpha in one batch; the best improving one is accepted per
       environment (mu shrinks), else the trajectory stays and mu grows.

    Actions always lie in `[action_low, action_high]`. On a linear model with a quadratic
    reward and inactive bounds the first iteration (with `reg_init = 0`) is exactly the LQR
    optimum. Works in float32 and float64 (a model converted with `.double()` and a float64
    state); the dtype and device follow `state`.

    Model evaluations (`Plan.info["model_evals"]`, all environments): the first rollout, B*H
    transitions; per iteration, the linearisation counts `(1 + VJP_EVALS * F)` transitions per row
    and step (one forward pass plus one vector-Jacobian product per output feature, each counted
    as `VJP_EVALS` = 2 forward passes, as every gradient planner counts a backward pass),
    and the line search B*L*H transitions. Derivatives of the reward terms and of the value are
    not transitions and are not counted. `ILQRConfig.model_evals(F)` is the total per
    environment when every iteration runs.

    `plan(objective, state [B], *, warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]`, `value [B]` (the objective's return of these actions along the
    prior-mean path; `-inf` where it is NaN/inf) and `info` = `iterations`, `model_evals`, `nonfinite`, `reg` (`[B]` final
    mu), `improvement` (`[B]` return gain of the last iteration), `plan_ms`. The start is
    `warm_start.actions` (e.g. `previous.shift()`) clipped into the bounds, else zeros clipped
    into the bounds. `generator` is unused (the planner is deterministic). `deadline` is
    checked after every iteration; at least one runs. The planner keeps no state between calls.

    Gradients of the plan (`ILQRConfig.differentiable="implicit"`, grad mode on): implicit
    differentiation of the converged solution U* (Amos, Rodriguez, Sacks, Boots & Kolter 2018,
    "Differentiable MPC for end-to-end planning and control", Sec. 4). At U* the free action
    entries satisfy stationarity of the cost J(U, θ) = -return and the clamped ones sit at their
    bound, so `dU*_f/dθ = -H_ff^{-1} d(dJ/dU_f)/dθ` and clamped entries have zero gradient. The
    forward pass adds one rollout that builds `dJ/dU` with a graph to θ; the backward pass
    re-linearises at U* (the same cost as one iteration's linearisation) and runs one LQR solve
    (`lqr_solve`) with the incoming gradient as the linear term. θ is every tensor with
    `requires_grad` the objective reads (reward weights, context values, value and model
    parameters) and the belief `state`. H is the iLQR (Gauss–Newton) Hessian: exact on
    linear dynamics, an approximation where the dynamics are curved, as in the paper. `Plan.value`
    carries `dR/dθ` at U* (the envelope theorem). The result is only meaningful at a converged
    plan (e.g. `tolerance` small and enough `iterations`). `differentiable="unroll"` instead
    keeps the autograd graph of all iterations (memory grows with them) and backpropagates
    through them; on a converged plan the two agree (tests/test_ilqr.py).

    Args:
        config: `ILQRConfig`; keyword `overrides` replace its fields.

    Raises:
        ValueError: (in `plan`) a warm start of the wrong shape, naming `warm_start.actions`;
            an objective with a term marked non-differentiable (`require_differentiable`);
            an objective with stage="transition" reward terms; an objective with a
            `continuation` (episode ends make the return a product-weighted sum, not the sum
            of stage rewards that the backward pass needs: iLQR plans smooth objectives
            without termination).
        torch.linalg.LinAlgError: (in the backward pass of a differentiable plan) the Hessian on
            the free entries is not positive definite (U* is not a strict local optimum).
    """

    def __init__(self, config: ILQRConfig | None = None, **overrides) -> None:
        import dataclasses

        self.config = dataclasses.replace(config or ILQRConfig(), **overrides)

    def __repr__(self) -> str:
        return f"ILQR({self.config!r})"

    def plan(
        self,
        objective: Objective,
        state: LatentState,
        *,
        warm_start: Plan | None = None,
        generator: torch.Generator | None = None,
        deadline: float | None = None,
    ) -> Plan:
        """Plan for every belief in `state` (`[B]` rows) with iLQR; see the class docstring.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H, A]`; `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                a term marked `differentiable = False`, a continuation, or a
                `stage='transition'` reward term.
        """
        t0 = time.perf_counter()
        c = self.config
        check_plan_inputs("ILQR.plan", objective, state, warm_start=warm_start, generator=generator, deadline=deadline)
        differentiate = c.differentiable is not None and torch.is_grad_enabled()
        require_differentiable(objective, "ILQR")
        if getattr(objective, "terminates", False):
            raise ValueError(
                f"ILQR: the objective has a continuation ({callable_name(objective.continuation)!r}): the return "
                "sum_t gamma^t (prod_k<t c_k) r_t is not a sum of stage rewards, which iLQR's backward pass "
                "needs; iLQR plans a smooth objective without episode ends. Use CEM / MPPI / MCTS / "
                "GradientPlanner (all honour it), or fold the termination into the reward"
            )
        if objective.needs_prev:
            names = [callable_name(t) for t in objective.rewards if getattr(t, "needs_prev", False)]
            raise ValueError(
                f"ILQR: reward terms {names} are stage='transition' (they read the state before the action); "
                "ILQR quadratises costs of (x_t+1, u_t) only: write them on the arrival state or use "
                "CEM / MPPI / GradientPlanner / MCTS"
            )
        b, h, a = state.batch, c.horizon, objective.action_dim
        if warm_start is not None and tuple(warm_start.actions.shape) != (b, h, a):
            raise ValueError(f"ILQR.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; "
                             f"got {tuple(warm_start.actions.shape)}")
        dtype, dev = state.deter.dtype, state.device
        d = state.deter.shape[1]
        model = objective.model
        objective = objective.with_prior_means(state)
        model = objective.model
        low = model.action_low.to(dev, dtype).expand(b, h, a)
        high = model.action_high.to(dev, dtype).expand(b, h, a)
        unroll = differentiate and c.differentiable == "unroll"
        keep = (lambda t: t) if unroll else (lambda t: t.detach())  # unrolled: the graph stays
        x0 = keep(state.features())

        def split(x: Tensor) -> LatentState:
            return LatentState(x[:, :d], x[:, d:])

        def dyn(x: Tensor, u: Tensor) -> Tensor:  # [M, F], [M, A] -> [M, F]
            return model.imagine_step(split(x), u, sample=False).features()

        weights = objective.discount ** torch.arange(h, device=dev, dtype=dtype)  # [H]

        def reward(z: Tensor, w: Tensor) -> Tensor:  # z = [x_{t+1}, u_t] rows [M, F + A] -> [M]
            f = z.shape[1] - a
            return objective.stage_reward(split(z[:, :f]), z[:, f:]) * w

        def terminal(x: Tensor) -> Tensor:  # [B, F] -> [B]
            return objective.bootstrap(split(x)) * objective.discount**h

        def rollout(u_bar: Tensor, x_bar: Tensor | None, k: Tensor | None, gain: Tensor | None, alphas: Tensor):
            """Closed-loop rollouts for each step size: -> (x [B, L, H+1, F], u [B, L, H, A], ret [B, L])."""
            n_l = alphas.shape[0]
            x = x0.repeat_interleave(n_l, 0)  # row b * L + l
            xs, us = [x], []
            for t in range(h):
                u = u_bar[:, t].repeat_interleave(n_l, 0)
                if k is not None:
                    u = u + alphas.repeat(b)[:, None] * k[:, t].repeat_interleave(n_l, 0)
                    dx = (x - x_bar[:, t].repeat_interleave(n_l, 0)).unsqueeze(-1)
                    u = u + (gain[:, t].repeat_interleave(n_l, 0) @ dx).squeeze(-1)
                u = torch.minimum(torch.maximum(u, low[:, t].repeat_interleave(n_l, 0)),
                                  high[:, t].repeat_interleave(n_l, 0))
                x = dyn(x, u)
                xs.append(x)
                us.append(u)
            xs_t, us_t = torch.stack(xs, 1), torch.stack(us, 1)  # [B*L, H+1, F], [B*L, H, A]
            z = torch.cat([xs_t[:, 1:], us_t], -1).flatten(0, 1)  # row (b * L + l) * H + t
            r = reward(z, weights.repeat(b * n_l)).reshape(b * n_l, h).sum(1)
            if objective.bootstraps:
                r = r + terminal(xs_t[:, -1])
            return xs_t.reshape(b, n_l, h + 1, -1), us_t.reshape(b, n_l, h, a), r.reshape(b, n_l)

        def linearise(x_bar: Tensor, u_bar: Tensor):
            """Dynamics Jacobians and the cost's gradient and Hessian along (x_bar [B, H+1, F],
            u_bar [B, H, A]): -> ((f_x, f_u, l_z, l_zz), v_x [B, F], v_xx [B, F, F]), all detached."""
            f_dim = x_bar.shape[-1]
            xm, um = x_bar[:, :h].flatten(0, 1), u_bar.flatten(0, 1)
            fx, fu = jacrev(lambda x, u: dyn(x, u).sum(0), argnums=(0, 1))(xm, um)  # [F, M, F], [F, M, A]
            fx, fu = keep(fx.transpose(0, 1)), keep(fu.transpose(0, 1))
            z = torch.cat([x_bar[:, 1:].flatten(0, 1), um], -1)
            w = weights.repeat(b)
            gz = grad(lambda z: reward(z, w).sum())
            lz = -keep(gz(z))  # cost gradient [M, F + A]
            lzz = -keep(jacrev(lambda z: gz(z).sum(0))(z).transpose(0, 1))  # [M, F + A, F + A]
            if objective.bootstraps:
                gv = grad(lambda x: terminal(x).sum())
                vx = -keep(gv(x_bar[:, h]))
                vxx = -keep(jacrev(lambda x: gv(x).sum(0))(x_bar[:, h]).transpose(0, 1))
            else:
                vx = torch.zeros(b, f_dim, device=dev, dtype=dtype)
                vxx = torch.zeros(b, f_dim, f_dim, device=dev, dtype=dtype)
            shape = (b, h)
            derivs = (fx.reshape(*shape, f_dim, f_dim), fu.reshape(*shape, f_dim, a),
                      lz.reshape(*shape, -1), lzz.reshape(*shape, f_dim + a, f_dim + a))
            return derivs, vx, vxx

        start = torch.zeros(b, h, a, device=dev, dtype=dtype) if warm_start is None else \
            warm_start.actions.detach().to(dev, dtype)
        one = torch.ones(1, device=dev, dtype=dtype)
        alphas = 0.5 ** torch.arange(c.line_search, device=dev, dtype=dtype)
        with torch.enable_grad():
            xs, us, ret = rollout(start, None, None, None, one)
            x_bar, u_bar, ret = keep(xs[:, 0]), keep(us[:, 0]), keep(ret[:, 0])
            f_dim = x_bar.shape[-1]
            evals = b * h
            nonfinite = int((~torch.isfinite(ret)).sum())
            mu = torch.full((b,), float(c.reg_init), device=dev, dtype=dtype)
            active = torch.isfinite(ret)
            improvement = torch.zeros(b, device=dev, dtype=dtype)
            iterations = 0
            for _ in range(c.iterations):
                iterations += 1
                # 1. linearise the dynamics and quadratise the reward, all B * H rows at once
                derivs, vx, vxx = linearise(x_bar, u_bar)
                evals += b * h * (1 + VJP_EVALS * f_dim)
                # 2. backward pass, repeated with more damping where Q_uu + mu I is not positive definite
                while True:
                    k, gain, ok = self._backward(derivs, vx, vxx, mu, u_bar, low, high)
                    bad = active & ~ok
                    if not bool(bad.any()):
                        break
                    mu = torch.where(bad, torch.clamp(mu * c.reg_factor, min=c.reg_min), mu)
                    over = bad & (mu > c.reg_max)
                    active = active & ~over
                    mu = torch.where(over, torch.full_like(mu, c.reg_max), mu)
                k = torch.where(active[:, None, None], k, torch.zeros_like(k))
                gain = torch.where(active[:, None, None, None], gain, torch.zeros_like(gain))
                # 3. forward pass: every step size in one batch, the best improving one per environment
                xs, us, rets = rollout(u_bar, x_bar, k, gain, alphas)
                evals += b * c.line_search * h
                nonfinite += int((~torch.isfinite(rets)).sum())
                rets = keep(torch.where(torch.isfinite(rets), rets, torch.full_like(rets, -math.inf)))
                best, idx = rets.max(1)
                accept = active & (best > ret)
                rows = torch.arange(b, device=dev)
                improvement = torch.where(accept, best - ret, torch.zeros_like(ret))
                x_bar = torch.where(accept[:, None, None], keep(xs[rows, idx]), x_bar)
                u_bar = torch.where(accept[:, None, None], keep(us[rows, idx]), u_bar)
                ret = torch.where(accept, best, ret)
                down = mu / c.reg_factor
                mu = torch.where(accept, torch.where(down < c.reg_min, torch.zeros_like(mu), down),
                                 torch.clamp(mu * c.reg_factor, min=c.reg_min))
                active = active & (mu <= c.reg_max)
                converged = improvement <= c.tolerance * torch.clamp(ret.abs(), min=1.0)
                if c.tolerance > 0 and bool((converged | ~active).all()):
                    break
                if not bool(active.any()):
                    break
                if deadline is not None and time.perf_counter() >= deadline:
                    break
        actions, value = u_bar, ret
        if differentiate and not unroll:  # implicit gradients at the converged solution (Amos et al. 2018)
            with torch.enable_grad():
                u = u_bar.clone().requires_grad_(True)
                x, xs = state.features(), []  # not detached: gradients reach the belief too
                for t in range(h):
                    x = dyn(x, u[:, t])
                    xs.append(x)
                z = torch.cat([torch.stack(xs, 1), u], -1).flatten(0, 1)
                ret_graph = reward(z, weights.repeat(b)).reshape(b, h).sum(1)
                if objective.bootstraps:
                    ret_graph = ret_graph + terminal(x)
                # the cost gradient at the solution, as a function of the parameters (U held fixed)
                g = torch.autograd.grad(-ret_graph.sum(), u, create_graph=True)[0]  # [B, H, A]
            clamped = (u_bar <= low) | (u_bar >= high)
            cache: list = []

            def solve(incoming: Tensor) -> Tensor:
                """`H_ff^{-1} incoming_f` (0 on clamped entries) by one LQR solve at the solution."""
                if not cache:  # linearised lazily: only a backward pass pays for it
                    with torch.enable_grad():
                        cache.append(linearise(x_bar, u_bar))
                derivs, _, vxx = cache[0]
                return lqr_solve(derivs, vxx, ~clamped, incoming)

            actions = u_bar + _ImplicitStep.apply(g, solve)
            value = ret + (ret_graph - ret_graph.detach())  # envelope theorem: dV/dθ = ∂R/∂θ at U*
        info = {
            "iterations": iterations, "model_evals": evals, "nonfinite": nonfinite, "reg": mu,
            "improvement": improvement.detach(), "plan_ms": (time.perf_counter() - t0) * 1e3,
        }
        # a NaN/inf return (e.g. a NaN value function) is -inf, as every other planner reports it (Plan.value)
        value = torch.where(torch.isfinite(value), value, torch.full_like(value, float("-inf")))
        return Plan(actions, value, info)

    def _backward(self, derivs: tuple[Tensor, ...], vx: Tensor, vxx: Tensor, mu: Tensor, u_bar: Tensor,
                  low: Tensor, high: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The box-DDP Riccati recursion on the cost (Tassa et al. 2014, Sec. III).

        Args:
            derivs: `(f_x [B, H, F, F], f_u [B, H, F, A], l_z [B, H, F+A], l_zz [B, H, F+A, F+A])`,
                the cost `-gamma^t r` differentiated w.r.t. `z = (x_{t+1}, u_t)`.
            vx, vxx: `[B, F]`, `[B, F, F]` the terminal cost's gradient and Hessian.
            mu: `[B]` damping; u_bar, low, high: `[B, H, A]`.

        Returns:
            `(k [B, H, A], K [B, H, A, F], ok [B])`, ok False where some `Q_uu + mu I` was not
            positive definite (that row's k and K are then meaningless).
        """
        fx, fu, lz, lzz = derivs
        b, h, f_dim, a = fu.shape[0], fu.shape[1], fu.shape[2], fu.shape[3]
        eye = torch.eye(a, dtype=vx.dtype, device=vx.device)
        ok = torch.ones(b, dtype=torch.bool, device=vx.device)
        ks, gains = [None] * h, [None] * h
        for t in reversed(range(h)):
            A_, B_ = fx[:, t], fu[:, t]
            sy = lz[:, t, :f_dim] + vx                      # cost-to-go gradient at x_{t+1}
            syy = lzz[:, t, :f_dim, :f_dim] + vxx
            luy = lzz[:, t, f_dim:, :f_dim]                  # [B, A, F]
            qx = (A_.transpose(1, 2) @ sy.unsqueeze(-1)).squeeze(-1)
            qu = (B_.transpose(1, 2) @ sy.unsqueeze(-1)).squeeze(-1) + lz[:, t, f_dim:]
            qxx = A_.transpose(1, 2) @ syy @ A_
            cross = luy @ B_
            quu = B_.transpose(1, 2) @ syy @ B_ + lzz[:, t, f_dim:, f_dim:] + cross + cross.transpose(1, 2)
            qux = B_.transpose(1, 2) @ syy @ A_ + luy @ A_
            quu = 0.5 * (quu + quu.transpose(1, 2))
            reg = quu + mu[:, None, None] * eye
            _, info = torch.linalg.cholesky_ex(reg)
            good = info == 0
            ok = ok & good
            reg = torch.where(good[:, None, None], reg, eye.expand_as(reg))  # keep the QP solvable
            k, free, chol = box_qp(reg, qu, low[:, t] - u_bar[:, t], high[:, t] - u_bar[:, t],
                                   iterations=self.config.qp_iterations)
            fr = free.to(vx.dtype).unsqueeze(-1)
            gain = -torch.cholesky_solve(qux * fr, chol) * fr   # [B, A, F], zero rows where clamped
            vx = qx + (gain.transpose(1, 2) @ (quu @ k.unsqueeze(-1) + qu.unsqueeze(-1))).squeeze(-1) \
                + (qux.transpose(1, 2) @ k.unsqueeze(-1)).squeeze(-1)
            vxx = qxx + gain.transpose(1, 2) @ quu @ gain + gain.transpose(1, 2) @ qux + qux.transpose(1, 2) @ gain
            vxx = 0.5 * (vxx + vxx.transpose(1, 2))
            ks[t], gains[t] = k, gain
        return torch.stack(ks, 1), torch.stack(gains, 1), ok
