"""Checks that the configs run in `__post_init__` (the planners' and the facade's alike): one message
shape for all of them, `ValueError("<Class>.<field> must be ...; got <value>")`; and the checks every
planner's `plan` runs once per call on its inputs (`check_plan_inputs`, `require_finite_bounds`)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import torch

__all__ = [
    "check_choice", "check_int", "check_min", "check_plan_inputs", "check_positive", "check_range",
    "require_finite_bounds",
]


def _fail(config: Any, name: str, rule: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name} must be {rule}; got {getattr(config, name)!r}")


def _given(config: Any, names: Iterable[str], optional: bool) -> Iterable[tuple[str, Any]]:
    """`(name, value)` of each field, skipping the `None` of an optional one."""
    for name in names:
        v = getattr(config, name)
        if not (optional and v is None):
            yield name, v


def check_min(config: Any, minimum: float, *names: str) -> None:
    """Each field `names` of `config` is a number `>= minimum`.

    Raises:
        ValueError: naming the class and the first field that is smaller (or NaN).
    """
    for name in names:
        if not getattr(config, name) >= minimum:
            _fail(config, name, f">= {minimum}")


def check_int(config: Any, *names: str, minimum: int | None = None, optional: bool = False) -> None:
    """Each field `names` of `config` is an integer (`int` or numpy's; not a bool, not a float such as 2.5), at least
    `minimum` when given (or, with `optional`, `None`).

    Raises:
        ValueError: naming the class and the first field that is not.
    """
    for name, v in _given(config, names, optional):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (minimum is not None and v < minimum):
            _fail(config, name, ("an int" if minimum is None else f"an int >= {minimum}") + (" or None" if optional else ""))


def check_positive(config: Any, *names: str, optional: bool = False) -> None:
    """Each field `names` of `config` is a finite number `> 0` (or, with `optional`, `None`).

    Raises:
        ValueError: naming the class and the first field that is not.
    """
    for name, v in _given(config, names, optional):
        if not (v > 0 and math.isfinite(v)):
            _fail(config, name, "a positive number" + (" or None" if optional else ""))


def check_range(config: Any, name: str, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> None:
    """The field `name` of `config` lies in the interval from `low` to `high` (each end closed
    unless `low_open`/`high_open`).

    Raises:
        ValueError: naming the class, the field and the interval, e.g. `in [0, 1)`.
    """
    v = getattr(config, name)
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (above and below):
        _fail(config, name, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def check_choice(config: Any, name: str, choices: Iterable[Any]) -> None:
    """The field `name` of `config` is one of `choices`.

    Raises:
        ValueError: naming the class, the field and the choices.
    """
    choices = tuple(choices)
    if getattr(config, name) not in choices:
        _fail(config, name, "one of " + ", ".join(map(repr, choices)))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_plan_inputs(
    where: str,
    objective: Any,
    state: Any,
    *,
    warm_start: Any = None,
    generator: Any = None,
    deadline: Any = None,
) -> None:
    """The checks every planner's `plan` runs on its inputs, once per call, before any search.

    It reads the belief (and the warm start's actions) once: one host synchronisation per plan
    call (on the sum of all entries, finite exactly when every entry is, unless it overflows,
    which is then checked entry by entry), none inside a search.

    Args:
        where: the caller, e.g. `"CEM.plan"` (the messages start with it).
        objective: the `Objective`; its `context.batch` (the B it was built for, when given)
            must equal the belief's B.
        state: the beliefs `[B]`: a `LatentState` with floating `deter [B, D]` and `stoch [B, S]`,
            B >= 1, every entry finite.
        warm_start: `None` or a `Plan` whose `actions` are floating and finite (their shape is
            checked by each planner, which knows its H). A warm start of another floating dtype
            than the belief is cast by the planner to the belief's dtype (and device).
        generator: `None` or a `torch.Generator` (an int seed is not one: use
            `torch.Generator().manual_seed(seed)`).
        deadline: `None` or a real number (an absolute `time.perf_counter()` time), not NaN.

    Raises:
        TypeError: `state` is not a `LatentState` (e.g. a tensor or `None`) or its tensors are
            not floating; `warm_start` is not a `Plan` or its actions are not floating;
            `generator` is not a `torch.Generator`. The message names the argument.
        ValueError: the belief is empty (B = 0) or holds NaN/inf (naming `state.deter` /
            `state.stoch`); the objective was built with `batch=` another B (naming both);
            `warm_start.actions` holds NaN/inf; `deadline` is not a number or is NaN.
    """
    from latentplan.worldmodels.state import LatentState  # here: the worldmodels import the planners' package

    from .base import Plan

    if not isinstance(state, LatentState):
        raise TypeError(
            f"{where}: state must be a LatentState of beliefs [B] (e.g. model.initial(B) or model.observe(...)); "
            f"got {type(state).__name__}"
        )
    for name, t in (("state.deter", state.deter), ("state.stoch", state.stoch)):
        if not t.is_floating_point():
            raise TypeError(f"{where}: {name} must be a floating tensor (the model's dtype); got {_dtype_name(t.dtype)}")
    b = state.batch
    if b < 1:
        raise ValueError(f"{where}: state has B={b} beliefs; plan needs at least one (state.deter is "
                         f"{tuple(state.deter.shape)})")
    wa = None
    if warm_start is not None:
        if not isinstance(warm_start, Plan):
            raise TypeError(f"{where}: warm_start must be a Plan (e.g. the previous plan's .shift()) or None; "
                            f"got {type(warm_start).__name__}")
        wa = warm_start.actions
        if not wa.is_floating_point():
            raise TypeError(f"{where}: warm_start.actions must be a floating tensor; got {_dtype_name(wa.dtype)}")
    # one host synchronisation: a finite sum means every entry is finite (NaN and inf propagate);
    # a non-finite sum (a NaN/inf entry, or an overflow) is then looked at tensor by tensor
    total = state.deter.sum() + state.stoch.sum() + (0.0 if wa is None else wa.sum().to(state.device))
    if not bool(torch.isfinite(total)):
        for name, t in (("state.deter", state.deter), ("state.stoch", state.stoch)):
            if t.numel() and not bool(torch.isfinite(t).all()):
                rows = torch.nonzero(~torch.isfinite(t).all(dim=1)).flatten().tolist()
                raise ValueError(f"{where}: {name} holds NaN or inf (the belief of environment(s) {rows[:8]}); "
                                 "a non-finite belief cannot be planned from")
        if wa is not None and wa.numel() and not bool(torch.isfinite(wa).all()):
            raise ValueError(f"{where}: warm_start.actions contains NaN or inf "
                             f"({int((~torch.isfinite(wa)).sum())} of {wa.numel()} entries)")
    ctx = getattr(objective, "context", None)
    want = getattr(ctx, "batch", None)
    if want is not None and want != b:
        raise ValueError(
            f"{where}: the objective was built for batch={want} environments but state has B={b} beliefs; "
            f"build the Objective with batch={b} (its [B, ...] context values are per environment)"
        )
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{where}: generator must be a torch.Generator or None; got {type(generator).__name__} {generator!r:.40} "
            "(for a seed, pass torch.Generator().manual_seed(seed))"
        )
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, numbers.Real):
            raise ValueError(f"{where}: deadline must be a number (an absolute time.perf_counter() time) or None; "
                             f"got {type(deadline).__name__} {deadline!r:.40}")
        if math.isnan(deadline):
            raise ValueError(f"{where}: deadline is NaN; give an absolute time.perf_counter() time, or None for "
                             "no deadline")


def require_finite_bounds(where: str, low: torch.Tensor, high: torch.Tensor, why: str) -> None:
    """The action bounds `low [A]`, `high [A]` are finite: for the searches that work in a finite box
    (CMA-ES's [-1, 1] coordinates, tanh squashing).

    Raises:
        ValueError: naming the bounds and `why` the search needs a finite box.
    """
    if not (bool(torch.isfinite(low).all()) and bool(torch.isfinite(high).all())):
        raise ValueError(
            f"{where}: the model's action bounds must be finite ({why}); got action_low={low.tolist()}, "
            f"action_high={high.tolist()}"
        )
