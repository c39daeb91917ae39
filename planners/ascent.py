"""Gradient ascent on action sequences through a differentiable world model: the inner loop shared
by the gradient planner (`GradientPlanner`) and CEM's CEM+GD option (`CEMConfig.gradient`).

The imagined return is backpropagated into the actions (shooting through the model, as the
gradient-based planner of Hafner et al. 2019, PlaNet, Sec. 5, and the inner loop of the CEM+GD
hybrid of Bharadhwaj, Xie & Shkurti 2020). Stochastic latents are differentiated with the
reparameterisation trick (Kingma & Welling 2014): the model's noise comes from `generator`, so
each step follows the gradient of one sampled rollout per sequence.

Shapes: N sequences optimised side by side (independent rows), H the horizon, A action dimensions.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .validate import check_choice, check_int, check_positive
from .base import callable_name
from .objective import Objective, rank_returns

__all__ = ["Ascent", "AscentConfig", "ascend", "optimizer_class", "require_autograd", "require_differentiable"]

_EXCLUDED_OPTIMIZERS = frozenset({"lbfgs", "sparseadam"})
VJP_EVALS = 2
"""The weight of one vector-Jacobian product (a backward pass) through the model, in forward
transitions, in every planner's `model_evals`: a backward pass costs about two forward passes (the
customary estimate; measured by `benchmarks/backward_cost.py`, docs/planners.md)."""

_TANH_EDGE = 1e-4


def _usable_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """`torch.optim` classes by lower-case name, without the closure/sparse ones."""
    found = {}
    for attr in dir(torch.optim):
        cls = getattr(torch.optim, attr)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            if attr.lower() not in _EXCLUDED_OPTIMIZERS:
                found[attr.lower()] = cls
    return found


@functools.lru_cache(maxsize=None)
def optimizer_class(name: str, owner: str = "optimizer") -> type[torch.optim.Optimizer]:
    """The `torch.optim` class called `name` (case-insensitive), e.g. `"adam"` -> `torch.optim.Adam`.

    Args:
        name: the class name.
        owner: who asks, for the message (e.g. `"GradientConfig.optimizer"`).

    Raises:
        ValueError: `name` is not a `torch.optim` optimizer, or is LBFGS / SparseAdam (they need
            a closure / sparse gradients); the message lists the usable names.
    """
    usable = _usable_optimizers()
    if name.lower() in usable:
        return usable[name.lower()]
    known = sorted(cls.__name__ for cls in usable.values())
    raise ValueError(
        f"{owner}: {name!r} is not a usable torch.optim class; choose one of {known} "
        "(LBFGS and SparseAdam are not supported: they need a closure / sparse gradients)"
    )




def require_autograd(planner: str) -> None:
    """Refuse to run a gradient search inside `torch.inference_mode()`.

    `torch.enable_grad()` does not leave inference mode, so no gradient would reach the actions
    and the search would return its starting sequence as if it had converged. `torch.no_grad()`
    is fine: the searches turn gradients on where they need them.

    Raises:
        RuntimeError: naming `planner`, if inference mode is on.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(f"{planner} differentiates the return through the model, which torch.inference_mode() "
                           "forbids; plan outside it (torch.no_grad() is fine)")


def require_differentiable(objective: Objective, planner: str) -> None:
    """Refuse an objective that has a term marked non-differentiable.

    A reward term (an entry of `objective.rewards`), the terminal value function, the terminal
    term or the continuation declares itself non-differentiable with an attribute
    `differentiable = False`; gradient ascent through it would silently follow a zero or
    meaningless gradient, so gradient planners refuse it. (A hard, bool continuation is such a
    term: its gradient is zero almost everywhere, so the ascent would not see the episode end.)

    Args:
        objective: the `Objective` about to be maximised by gradient steps.
        planner: the caller's name, used in the message (e.g. `"GradientPlanner"`).

    Raises:
        ValueError: naming the first offending term (its `name`, else `__name__`) and, for a
            composite term that lists its parts with `leaves()`, the offending parts.
    """
    terms = list(objective.rewards)
    if objective.value is not None:
        terms.append(objective.value)
    if getattr(objective, "terminal", None) is not None:
        terms.append(objective.terminal)
    if getattr(objective, "continuation", None) is not None:
        terms.append(objective.continuation)
    for term in terms:
        if getattr(term, "differentiable", True) is False:
            # a composite term (e.g. `a + 0.5 * b`) may expose its parts through `leaves()`
            # (directly or on the `term` it wraps): name the parts that are to blame, too
            inner = getattr(term, "term", term)
            leaves = getattr(inner, "leaves", None)
            parts = []
            if callable(leaves):
                parts = [callable_name(leaf) for leaf in leaves() if getattr(leaf, "differentiable", True) is False]
            culprit = f" (non-differentiable part: {', '.join(map(repr, parts))})" if parts and parts != [callable_name(term)] else ""
            kind = "continuation" if term is getattr(objective, "continuation", None) else "reward term"
            raise ValueError(
                f"{planner}: {kind} {callable_name(term)!r} is marked differentiable=False{culprit}; "
                "gradient-based planning needs a differentiable objective (use CEM without "
                "gradient refinement, or drop the term)"
            )


@dataclass(frozen=True)
class AscentConfig:
    """Settings of one gradient ascent (`ascend`); CEM+GD's `CEMConfig.gradient`. The fields are
    named as `GradientConfig`'s, whose `ascent` property gives its own.

    Attributes:
        iterations: optimizer steps (each one forward and one backward pass over the sequences).
        lr: learning rate, in units of the optimised variable (action units for `squash="clip"`,
            pre-tanh units for `squash="tanh"`).
        optimizer: name of a `torch.optim` class, case-insensitive (`"adam"`, `"sgd"`,
            `"rmsprop"`, ...; not LBFGS or SparseAdam). Built with `lr` only.
        squash: how actions stay in bounds. `"clip"`: optimise the actions and project them onto
            `[low, high]` after every step; `"tanh"`: optimise an unbounded u and use
            `action = low + (high - low) * (tanh(u) + 1) / 2`.
        grad_clip: if set, each sequence's gradient (over all `H * A` entries) is rescaled to at
            most this norm before the step; `None`: no clipping.

    Raises:
        ValueError: on `iterations < 1`, a non-positive `lr` or `grad_clip`, an unknown `squash`,
            or an optimizer name that is not a usable `torch.optim` class (naming the field).
    """

    iterations: int = 10
    lr: float = 0.01
    optimizer: str = "adam"
    squash: Literal["tanh", "clip"] = "clip"
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_int(self, "iterations", minimum=1)
        check_positive(self, "lr")
        check_positive(self, "grad_clip", optional=True)
        check_choice(self, "squash", ("tanh", "clip"))
        optimizer_class(self.optimizer, "AscentConfig.optimizer")


@dataclass
class Ascent:
    """What `ascend` found: the best sequence seen per row and diagnostics (tensors: no host sync).

    Attributes:
        actions: `[N, H, A]` the best sequence seen per row.
        returns: `[N]` its return (non-finite returns rank as `-inf`).
        steps: optimizer steps taken.
        model_evals: imagined transitions, the backward passes included: `N * H * (steps * (1 +
            VJP_EVALS) + 1)` (every step a forward and a backward pass, then a last forward pass).
        nonfinite: non-finite returns seen, 0-dim long.
        nonfinite_grads: (row, step) pairs whose gradient was non-finite and dropped, 0-dim long.
        grad_first: mean over rows of |dJ/da_0| at the first step, 0-dim.
        grad_last: mean over rows of |dJ/da_{H-1}| at the first step, 0-dim.
        grad_end: mean over rows of |dJ/da_{0:H}| at the last step, 0-dim.
        stopped: why the search ended, when the optimiser decides it (`planners.lbfgs`:
            `"converged"`, `"budget"`, `"deadline"` or `"iterations"`); `None` from `ascend`, whose
            step count is fixed before it starts.
    """

    actions: Tensor
    returns: Tensor
    steps: int
    model_evals: int
    nonfinite: Tensor
    nonfinite_grads: Tensor
    grad_first: Tensor
    grad_last: Tensor
    grad_end: Tensor
    stopped: str | None = None


def ascent_evals(rows: int, horizon: int, steps: int) -> int:
    """Model evaluations of `steps` gradient steps on `rows` sequences of `horizon` steps, then one
    last evaluation: `rows * horizon * (steps * (1 + VJP_EVALS) + 1)` (a backward pass is counted
    as `VJP_EVALS` forward transitions)."""
    return rows * horizon * (steps * (1 + VJP_EVALS) + 1)


def project(actions: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Actions `[..., A]` projected onto the box `[low, high]` (`[A]` bounds)."""
    return torch.minimum(torch.maximum(actions, low), high)


def _to_unbounded(actions: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Inverse of `_squash`: actions in [low, high] -> unbounded u (edges pulled in by 1e-4)."""
    span = high - low
    y = torch.where(span > 0, 2 * (actions - low) / span.clamp_min(1e-12) - 1, torch.zeros_like(actions))
    return torch.atanh(y.clamp(-1 + _TANH_EDGE, 1 - _TANH_EDGE))


def _squash(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """u -> low + (high - low) * (tanh(u) + 1) / 2, clamped against rounding past the bounds."""
    a = low + (high - low) * (torch.tanh(u) + 1) / 2
    return torch.minimum(torch.maximum(a, low), high)


def returns_and_gradients(
    objective: Objective, state: LatentState, var: Tensor, low: Tensor, high: Tensor, *, tanh: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One evaluation of a gradient ascent: the returns of the sequences that `var [N, H, A]` (a leaf
    that requires grad; tanh coordinates when `tanh`, else the actions) stands for, and the returns'
    gradients. Call it with gradients enabled.

    Returns:
        `(actions [N, H, A], returns [N], finite [N] bool, grad_var [N, H, A], grad_actions [N, H, A])`:
        the gradients are those of the sum of the finite returns (rows with a non-finite return
        contribute nothing), zero where the objective does not depend on the actions; they may still
        be non-finite, which the caller checks.
    """
    act = _squash(var, low, high) if tanh else var
    ret = objective.returns(state, act, generator=generator)
    finite = torch.isfinite(ret.detach())
    total = torch.where(finite, ret, torch.zeros_like(ret)).sum()
    g_var = g_act = None
    if total.requires_grad:
        grads = torch.autograd.grad(total, [var, act] if tanh else [var], allow_unused=True)
        g_var, g_act = grads[0], grads[-1]
    g_var = torch.zeros_like(var) if g_var is None else g_var
    g_act = torch.zeros_like(var) if g_act is None else g_act
    return act, ret, finite, g_var, g_act


def ascend(
    objective: Objective,
    state: LatentState,
    actions: Tensor,
    *,
    iterations: int,
    lr: float,
    optimizer: str = "adam",
    squash: str = "clip",
    grad_clip: float | None = None,
    low: Tensor | None = None,
    high: Tensor | None = None,
    generator: torch.Generator | None = None,
    deadline: float | None = None,
    capturable: bool = False,
) -> Ascent:
    """Gradient ascent on `actions [N, H, A]` from the beliefs `state [N]`; rows are independent.

    Every step evaluates the current sequences (forward, `objective.returns`), keeps the best
    seen per row, and takes one optimizer step on -sum(returns) (rows with a non-finite return or
    gradient get a zero gradient that step). A last forward pass evaluates the final sequences.
    Gradients are taken with `torch.autograd.grad` w.r.t. the action variables only, so no
    `.grad` of the model's parameters is ever touched, and it works inside `torch.no_grad()`.

    Args:
        objective: what is maximised (its model must be differentiable in the actions; see
            `require_differentiable`).
        state: `[N]` start beliefs, one per sequence.
        actions: `[N, H, A]` start sequences (projected into the bounds first).
        iterations, lr, optimizer, squash, grad_clip: as the fields of `AscentConfig`
            (`ascend(..., **vars(config))`).
        low, high: `[A]` action bounds on the actions' device (default: the model's).
        generator: randomness of the model's reparameterised samples.
        deadline: absolute `time.perf_counter()` time after which no further step starts (at
            least one step runs). `None` (capture-ready): all `iterations` steps run.
        capturable: build the optimizer with `capturable=True` where it has that option, for
            a CUDA graph capture.

    Returns:
        An `Ascent`: the best sequence per row, its return and diagnostics.

    Raises:
        ValueError: an unknown `optimizer` name; from `objective.returns` on actions that are
            not `[N, H, A]`. (Capture-ready, so it reads no value on the host: `squash="tanh"` needs
            finite `low`/`high`, which `GradientPlanner.plan` checks before calling it.)

    Source: gradient-based planning through a learned model as in Hafner et al. 2019 (PlaNet)
    and Bharadhwaj, Xie & Shkurti 2020 (CEM+GD); reparameterised gradients: Kingma & Welling 2014.
    """
    n, h, _ = actions.shape
    dev = actions.device
    if low is None:
        low = objective.model.action_low.to(dev)
    if high is None:
        high = objective.model.action_high.to(dev)
    optimizer_cls = optimizer_class(optimizer)
    zero = torch.zeros((), device=dev)
    grad_first = grad_last = grad_end = zero
    nonfinite = torch.zeros((), dtype=torch.long, device=dev)
    bad_grads = torch.zeros((), dtype=torch.long, device=dev)
    start = project(actions.detach(), low, high)
    best_act = start.clone()
    best_ret = torch.full((n,), float("-inf"), device=dev)
    tanh = squash == "tanh"
    done = 0
    with torch.enable_grad():
        var = (_to_unbounded(start, low, high) if tanh else start).clone().requires_grad_(True)
        opt = optimizer_cls([var], lr=lr)
        if capturable and "capturable" in opt.defaults:  # the optimizers that keep their step on the device
            for group in opt.param_groups:
                group["capturable"] = True
        for step in range(iterations):
            current, ret, finite, g_var, g_act = returns_and_gradients(
                objective, state, var, low, high, tanh=tanh, generator=generator)
            ranked, nf = rank_returns(ret.detach())
            nonfinite = nonfinite + nf
            better = ranked > best_ret
            best_ret = torch.where(better, ranked, best_ret)
            best_act = torch.where(better[:, None, None], current.detach(), best_act)
            g_var = -g_var  # the optimizer minimises -sum(returns)
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
                    var.copy_(project(var, low, high))
            done += 1
            if deadline is not None and time.perf_counter() >= deadline:
                break
    with torch.no_grad():
        final = _squash(var, low, high) if tanh else var.detach()
        ranked, nf = rank_returns(objective.returns(state, final, generator=generator))
        nonfinite = nonfinite + nf
        better = ranked > best_ret
        best_ret = torch.where(better, ranked, best_ret)
        best_act = torch.where(better[:, None, None], final, best_act)
    return Ascent(
        best_act, best_ret, done, ascent_evals(n, h, done), nonfinite, bad_grads, grad_first, grad_last, grad_end
    )
