"""Batched L-BFGS ascent on action sequences through a differentiable world model: the gradient
planner's default optimiser (`GradientConfig(optimizer="lbfgs")`).

A first-order optimiser (Adam, SGD) needs thousands of steps on an ill-conditioned return: on the
hard instances of the LQ family (Hessians with condition numbers 5,500-67,000 over 30-54 coupled
action variables, docs/planners.md) Adam at its best learning rate is still up to 3.7 % above the
optimum after 1,500 steps. A quasi-Newton method learns the curvature from the gradients it has
seen and gets within 0.003 % with about 9,000 model evaluations (roughly 150-200 forward and backward
passes of one sequence at H = 15-20; `benchmarks/gradient_restarts.py --optimizer lbfgs`). This module runs limited-memory BFGS
(Liu & Nocedal 1989; the two-loop recursion and the scaling of the initial Hessian as in Nocedal
& Wright, Numerical Optimization, 2nd ed., Algorithms 7.4 and 7.5) on N independent rows at once:
every row has its own curvature pairs, step length and stop, and all rows share each batched
forward and backward pass through the model.

Details:
- The actions are optimised in tanh coordinates (`action = low + (high - low) (tanh(u) + 1) / 2`),
  so the search is unconstrained and smooth; L-BFGS is not combined with clipping.
- Line search: backtracking from the step length 1 (the first iteration of a row, with no
  curvature pairs yet, from `lr * min(1, 1 / |g|_1)`) until the Armijo sufficient-increase
  condition holds (c1 = 1e-4), halving at most `_MAX_TRIALS` times. A curvature pair is stored only
  when `s'y > 0` (so the implicit inverse Hessian stays positive definite and every direction is an
  ascent direction); a row whose line search fails drops its pairs and tries once more along the
  gradient, then stops.
- A stochastic model gets common random numbers: every evaluation of one plan call restores the
  same generator state, so the return being maximised is one fixed sample path (a sample-average
  approximation with one sample), as a line search needs.

Shapes: N rows (sequences optimised side by side), H the horizon, A action dimensions; the
optimised variable is flattened to `[N, D]`, D = H * A.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .ascent import VJP_EVALS, Ascent, _to_unbounded, project, returns_and_gradients
from .objective import Objective, rank_returns
from .validate import require_finite_bounds

__all__ = ["lbfgs_ascend", "lbfgs_evaluation_cost"]

_C1 = 1e-4  # Armijo constant (Nocedal & Wright's customary value)
_MAX_TRIALS = 12  # halvings of the step length before a row's line search fails
_CURVATURE_EPS = 1e-10  # s'y must exceed this times |s| |y| for a pair to be stored


def lbfgs_evaluation_cost(rows: int, horizon: int) -> int:
    """Model evaluations of one L-BFGS evaluation (a forward and a backward pass) of `rows`
    sequences of `horizon` steps: `rows * horizon * (1 + VJP_EVALS)`."""
    return rows * horizon * (1 + VJP_EVALS)


def _common_noise(generator: torch.Generator | None, device: torch.device):
    """A function that returns a generator in the same state at every call (common random numbers
    for all evaluations of one search), seeded from `generator` or, without one, from torch's
    global generator."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device if generator is not None else "cpu"))
    fixed = torch.Generator(device=device)

    def fresh() -> torch.Generator:
        fixed.manual_seed(seed)
        return fixed

    return fresh


def lbfgs_ascend(
    objective: Objective,
    state: LatentState,
    actions: Tensor,
    *,
    iterations: int,
    lr: float = 1.0,
    history: int = 20,
    tol: float = 1e-9,
    max_evals: int | None = None,
    group: int | None = None,
    low: Tensor | None = None,
    high: Tensor | None = None,
    generator: torch.Generator | None = None,
    deadline: float | None = None,
    margin: float = 0.0,
    keep_start: bool = False,
) -> Ascent:
    """Maximise `objective.returns` over `actions [N, H, A]` from `state [N]` by batched L-BFGS.

    Rows are independent: each has its own curvature pairs, step lengths and stop, and a row's
    results are read only from the evaluations of its own line search (a row that is not searching
    is evaluated at its own point, and nothing of that evaluation is kept). Each evaluation is one
    batched forward and backward pass over all N rows. The best sequence seen per row is returned
    (every accepted point is one that was evaluated, so no final pass is needed).

    Args:
        objective: what is maximised (its model must be differentiable in the actions).
        state: `[N]` start beliefs, one per sequence.
        actions: `[N, H, A]` start sequences (projected into the bounds first).
        iterations: the most L-BFGS iterations (each one or more evaluations, with the line
            search's trials).
        lr: the first trial step length of a row's first iteration, scaled by `min(1, 1/|g|_1)`
            (later iterations try 1, the quasi-Newton step).
        history: m, curvature pairs kept per row (a row's last m iterations; an iteration that
            stores no pair leaves an empty slot).
        tol: a row stops when an iteration changes its return by at most
            `tol * max(1, |return|)`; 0 turns this stop off. A row also stops when its gradient
            is exactly zero or not finite, or when a line search along the plain gradient fails
            (one along the quasi-Newton direction that fails is retried along the gradient, with
            the row's curvature pairs dropped).
        max_evals: the budget of each group of `group` rows (an environment's restarts), in model
            evaluations with a backward pass counted as `VJP_EVALS` forward transitions: a group
            takes part in no evaluation that would bring its own count, `lbfgs_evaluation_cost(group,
            H)` for each evaluation in which one of its rows searched, past `max_evals` (the first
            evaluation always runs). Groups never share a budget, so a group's plan does not depend
            on the others. `None`: no budget.
        group: rows per budget group (the planner passes its restarts R; rows `k * group ...
            (k + 1) * group - 1` are group k). `None`: all N rows are one group.
        low, high: `[A]` action bounds on the actions' device (default: the model's).
        generator: the randomness of the model's reparameterised samples; every evaluation uses
            the same draw (common random numbers), seeded from it.
        deadline: absolute `time.perf_counter()` time after which no further iteration, and no
            further trial of a line search after its first, starts.
        margin: the search starts from the start sequences with every action clamped into the
            central `1 - margin` of its range (`[low + margin/2 (high - low), high - margin/2 (high
            - low)]`): in tanh coordinates an action at a bound has a vanishing gradient and would
            barely move. 0 (default): the bounds pulled in by 1e-4 only. In [0, 1).
        keep_start: also evaluate the start sequences themselves once (forward only, on the same
            noise draw: N * H more transitions, counted in `model_evals` but not against
            `max_evals`), as the first best seen: the returned sequence's return is then never
            below the start's.

    Returns:
        An `Ascent` whose `steps` counts iterations, `model_evals` the evaluations computed
        (`lbfgs_evaluation_cost(N, H)` each: with several groups, a group that has stopped is still
        computed while others search, so this can exceed the groups' own counts),
        `grad_first`/`grad_last` are taken at the start sequences and `grad_end` at the final
        ones (gradients w.r.t. the actions), and `stopped` is `"budget"` (a group's budget ended
        its search), else `"deadline"`, else `"converged"` (every row stopped by itself: see
        `tol`), else `"iterations"`.

    Raises:
        ValueError: if `group` does not divide N, or `low`/`high` are not finite (tanh coordinates
            need a finite box); from `objective.returns` on actions that are not `[N, H, A]`.

    Source: Liu & Nocedal 1989, "On the limited memory BFGS method for large scale
    optimization"; Nocedal & Wright 2006, Algorithms 7.4-7.5 and the Armijo backtracking of
    Sec. 3.1; common random numbers for optimising a stochastic simulation: sample-average
    approximation (Shapiro, Dentcheva & Ruszczynski 2009).
    """
    n, h, a = actions.shape
    dev, dtype = actions.device, actions.dtype
    group = n if group is None else group
    if group < 1 or n % group:
        raise ValueError(f"lbfgs_ascend: group={group} must divide the {n} rows")
    low = objective.model.action_low.to(dev) if low is None else low
    high = objective.model.action_high.to(dev) if high is None else high
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"lbfgs_ascend: margin must be in [0, 1); got {margin}")
    require_finite_bounds("lbfgs_ascend", low, high, "it optimises in tanh coordinates of the action box")
    noise = _common_noise(generator, dev)
    d = h * a
    tiny = torch.finfo(dtype).tiny
    owner = torch.arange(n, device=dev) // group  # [N] each row's group
    counts = torch.zeros(n // group, dtype=torch.long, device=dev)  # [G] evaluations each group took part in
    group_cost = lbfgs_evaluation_cost(group, h)
    evals = 0
    nonfinite = torch.zeros((), dtype=torch.long, device=dev)
    bad_grads = torch.zeros((), dtype=torch.long, device=dev)
    best_act = project(actions.detach(), low, high).clone()
    best_ret = torch.full((n,), float("-inf"), device=dev, dtype=dtype)

    def evaluate(u: Tensor, rows: Tensor):
        """Evaluate all rows at u `[N, D]`; keep the results of `rows` `[N]` bool only. Returns the
        returns `[N]` (non-finite as -inf), whether return and gradient are finite `[N]`, and the
        gradients w.r.t. u `[N, D]` and w.r.t. the actions `[N, H, A]` (zero where not finite)."""
        nonlocal best_act, best_ret, evals, nonfinite, bad_grads, counts
        evals += 1
        counts = counts + rows.reshape(-1, group).any(dim=1).long()  # the groups of rows are contiguous
        with torch.enable_grad():
            var = u.detach().reshape(n, h, a).requires_grad_(True)
            act, ret, finite, g_u, g_a = returns_and_gradients(objective, state, var, low, high, tanh=True,
                                                               generator=noise())
        ok = finite & torch.isfinite(g_u).flatten(1).all(dim=1) & torch.isfinite(g_a).flatten(1).all(dim=1)
        ranked, _ = rank_returns(ret.detach())
        nonfinite = nonfinite + (rows & ~finite).sum()
        bad_grads = bad_grads + (rows & finite & ~ok).sum()
        better = rows & (ranked > best_ret)  # a finite return counts even where its gradient does not
        best_ret = torch.where(better, ranked, best_ret)
        best_act = torch.where(better[:, None, None], act.detach(), best_act)
        grad = torch.where(ok[:, None], g_u.reshape(n, d), torch.zeros(n, d, device=dev, dtype=dtype))
        return ranked, ok, grad, torch.where(ok[:, None, None], g_a, torch.zeros_like(g_a))

    def room() -> Tensor:
        """`[N]` whether each row's group may take part in one more evaluation."""
        if max_evals is None:
            return torch.ones(n, dtype=torch.bool, device=dev)
        return ((counts + 1) * group_cost <= max_evals)[owner]

    extra = 0
    first = best_act.clone()  # the start sequences, projected into the bounds
    if keep_start:  # the start itself, forward only, on the search's noise draw
        ranked, _ = rank_returns(objective.returns(state, first, generator=noise()).detach())
        nonfinite = nonfinite + (~torch.isfinite(ranked)).sum()
        best_ret, extra = ranked.to(dtype), n * h
    if margin > 0:
        span = high - low
        first = torch.maximum(torch.minimum(first, high - margin / 2 * span), low + margin / 2 * span)
    # minimise F = -return; g = dF/du
    u = _to_unbounded(first, low, high).reshape(n, d).to(dtype)
    ret, ok, grad, g_act = evaluate(u, torch.ones(n, dtype=torch.bool, device=dev))
    grad_first = g_act[:, 0].norm(dim=-1).mean()
    grad_last = g_act[:, -1].norm(dim=-1).mean()
    f, g = -ret, -grad
    s_mem = torch.zeros(history, n, d, device=dev, dtype=dtype)
    y_mem = torch.zeros(history, n, d, device=dev, dtype=dtype)
    rho = torch.zeros(history, n, device=dev, dtype=dtype)  # 0: no pair in this slot for this row
    gamma = torch.ones(n, device=dev, dtype=dtype)
    has_pairs = torch.zeros(n, dtype=torch.bool, device=dev)
    active = ok & (g.abs().amax(dim=1) > 0)
    budget_hit = torch.zeros(n, dtype=torch.bool, device=dev)
    newest = -1
    done = 0
    late = False
    while done < iterations:
        out_of_budget = active & ~room()
        budget_hit |= out_of_budget
        active = active & ~out_of_budget
        if not bool(active.any()):
            break
        # two-loop recursion: direction = -H g, H the L-BFGS inverse Hessian (per row)
        q = g.clone()
        alphas = []
        order = [(newest - k) % history for k in range(history)]
        for i in order:
            al = rho[i] * (s_mem[i] * q).sum(1)
            q = q - al[:, None] * y_mem[i]
            alphas.append(al)
        r = gamma[:, None] * q
        for i, al in zip(reversed(order), reversed(alphas)):
            be = rho[i] * (y_mem[i] * r).sum(1)
            r = r + s_mem[i] * (al - be)[:, None]
        direction = torch.where(has_pairs[:, None], -r, -g)
        slope = (g * direction).sum(1)
        bad = ~(slope < 0) | ~torch.isfinite(direction).all(dim=1)  # not a descent direction: use the gradient
        direction = torch.where(bad[:, None], -g, direction)
        slope = torch.where(bad, -(g * g).sum(1), slope)
        quasi_newton = has_pairs & ~bad
        first_step = lr * torch.clamp(1.0 / g.abs().sum(1).clamp_min(tiny), max=1.0)
        step = torch.where(quasi_newton, torch.ones_like(f), first_step)
        pending = active.clone()
        accepted = torch.zeros_like(active)
        new_u, new_f, new_g, new_act_g = u.clone(), f.clone(), g.clone(), g_act.clone()
        for trial_index in range(_MAX_TRIALS):
            limited = pending & ~room()
            budget_hit |= limited
            pending = pending & ~limited
            if not bool(pending.any()):
                break
            if trial_index and deadline is not None and time.perf_counter() >= deadline:
                late = True
                break  # the rows still searching keep their point
            trial = u + (step * pending)[:, None] * direction  # rows not searching stay where they are
            t_ret, t_ok, t_grad, t_act_g = evaluate(trial, pending)
            t_f = -t_ret
            accept = pending & t_ok & (t_f <= f + _C1 * step * slope)
            new_u = torch.where(accept[:, None], trial, new_u)
            new_f = torch.where(accept, t_f, new_f)
            new_g = torch.where(accept[:, None], -t_grad, new_g)
            new_act_g = torch.where(accept[:, None, None], t_act_g, new_act_g)
            accepted = accepted | accept
            pending = pending & ~accept
            step = torch.where(pending, step / 2, step)
        moved = accepted
        failed = active & ~moved & ~budget_hit & (not late)  # a search the deadline cut short did not fail
        # curvature pair (stored for the rows that moved with s'y > 0 and a finite 1/s'y; an empty slot elsewhere)
        s = new_u - u
        y = new_g - g
        sy = (s * y).sum(1)
        yy = (y * y).sum(1)
        keep = moved & (sy > _CURVATURE_EPS * s.norm(dim=1) * y.norm(dim=1)) & (sy > tiny) & (yy > tiny)
        newest = (newest + 1) % history
        s_mem[newest] = torch.where(keep[:, None], s, torch.zeros_like(s))
        y_mem[newest] = torch.where(keep[:, None], y, torch.zeros_like(y))
        rho[newest] = torch.where(keep, 1.0 / torch.where(keep, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        gamma = torch.where(keep, sy / torch.where(keep, yy, torch.ones_like(yy)), gamma)
        has_pairs = has_pairs | keep
        # a failed quasi-Newton search is retried along the gradient without the pairs; a failed
        # gradient search ends the row (a retry would repeat the same trials)
        retry = failed & quasi_newton
        rho[:, retry] = 0.0
        has_pairs = has_pairs & ~retry
        gamma = torch.where(retry, torch.ones_like(gamma), gamma)
        stuck = failed & ~quasi_newton
        converged = moved & ((f - new_f).abs() <= tol * torch.clamp(new_f.abs(), min=1.0))
        u, f, g, g_act = new_u, new_f, new_g, new_act_g
        active = active & ~converged & ~stuck & ~budget_hit & (g.abs().amax(dim=1) > 0)
        done += 1
        if late or (deadline is not None and time.perf_counter() >= deadline):
            late = True
            break
    if bool(budget_hit.any()):
        stopped = "budget"
    elif late:
        stopped = "deadline"
    elif not bool(active.any()):
        stopped = "converged"
    else:
        stopped = "iterations"
    grad_end = g_act.flatten(1).norm(dim=1).mean()
    return Ascent(
        best_act, best_ret, done, evals * lbfgs_evaluation_cost(n, h) + extra, nonfinite, bad_grads, grad_first, grad_last,
        grad_end, stopped,
    )
