"""The planner protocol and its typed output, `Plan`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

if TYPE_CHECKING:
    from .objective import Objective

__all__ = ["Plan", "Planner", "Policy", "callable_name"]


@dataclass(frozen=True)
class Plan:
    """The output of every planner: an action sequence per environment and its estimated value.

    Attributes:
        actions: `[B, H, A]` action sequence, within the model's action bounds (B environments,
            horizon H, action dimension A). `actions[:, 0]` is the action to execute now.
        value: `[B]` the objective's estimate of the chosen sequence's return (-inf when no
            candidate had a finite return; NaN when the planner did not evaluate the sequence,
            which it says with `info["evaluated"] = False`).
        info: diagnostics: `iterations` run, `model_evals` (imagined transitions),
            `nonfinite` (candidate returns that were NaN/inf), `plan_ms`, `evaluated` (False
            for a plan whose value was not estimated; absent means True), ...

    Raises:
        ValueError: if `actions` is not 3-D or `value` is not `[B]`.
    """

    actions: Tensor
    value: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.actions.dim() != 3:
            raise ValueError(f"Plan.actions must be [B, H, A]; got {tuple(self.actions.shape)}")
        if self.value.shape != self.actions.shape[:1]:
            raise ValueError(
                f"Plan.value must be [B={self.actions.shape[0]}]; got {tuple(self.value.shape)}"
            )

    @property
    def first_action(self) -> Tensor:
        """`[B, A]` the action to execute now (`actions[:, 0]`; never raises: `Plan` checked the
        shapes when it was made)."""
        return self.actions[:, 0]

    def shift(self, fill: Tensor | float | None = None) -> "Plan":
        """Receding-horizon warm start: drop the executed first action, append one at the end.

        Args:
            fill: the appended action (a scalar, `[A]`, `[B, A]`, `[1, A]` or `[B, 1, A]`, broadcast
                over the plans); default repeats the last
                action of the sequence.

        Returns:
            A `Plan` with the same `[B, H, A]` shape, for the next `plan(..., warm_start=)`.

        Raises:
            ValueError: `fill` has another shape (naming `fill` and B, A).
            TypeError: `fill` cannot be made a tensor (e.g. a string).
        """
        last = self.actions[:, -1:]
        if fill is not None:
            b, _, a = self.actions.shape
            try:
                f = torch.as_tensor(fill, dtype=last.dtype, device=last.device)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"Plan.shift: fill must be a number or a tensor [A={a}] / [B={b}, A={a}]; "
                                f"got {type(fill).__name__}") from err
            if f.dim() == 2 and f.shape[0] in (1, b) and f.shape[1] == a:  # [B, A] or [1, A]
                f = f[:, None]
            elif not (f.dim() == 0 or (f.dim() == 1 and f.shape[0] == a)
                      or (f.dim() == 3 and f.shape[0] in (1, b) and f.shape[1] == 1 and f.shape[2] == a)):
                raise ValueError(f"Plan.shift: fill must be a scalar, [A={a}], [B={b} or 1, A={a}] or "
                                 f"[B={b} or 1, 1, A={a}]; got shape {tuple(f.shape)}")
            last = f.expand_as(last)
        return Plan(torch.cat([self.actions[:, 1:], last], dim=1), self.value, dict(self.info))


@runtime_checkable
class Planner(Protocol):
    """Anything that turns an objective and a batch of beliefs into a `Plan`.

    `plan(objective, state [B], *, warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]` (inside the model's action bounds) and `value [B]`.

    A planner keeps no state between calls: `warm_start` goes in, the `Plan` comes out.
    Randomness comes only from `generator`. `deadline` is an absolute `time.perf_counter()`
    time after which an anytime planner stops and returns its best plan so far.

    Every built-in planner checks its inputs once per call (`validate.check_plan_inputs`) and
    raises the errors listed in `plan`'s docstring. A warm start of another floating dtype than
    the belief is cast to the belief's dtype (the model's), not rejected.
    """

    def plan(
        self,
        objective: "Objective",
        state: LatentState,
        *,
        warm_start: Plan | None = None,
        generator: torch.Generator | None = None,
        deadline: float | None = None,
    ) -> Plan:
        """Plan for every belief in `state`.

        Args:
            objective: the `Objective` (model, rewards, discount, bootstrap); if it was built with
                `batch=`, that B must be the belief's.
            state: `[B]` beliefs, a `LatentState` (`deter [B, D]`, `stoch [B, S]`), floating and
                finite, B >= 1.
            warm_start: `None` or a `Plan` with `actions [B, H, A]` (e.g. the previous plan's
                `.shift()`), finite; cast to the belief's dtype and device.
            generator: `None` or a `torch.Generator`, the only source of randomness.
            deadline: `None` or an absolute `time.perf_counter()` time (a number, not NaN).

        Returns:
            A `Plan`: `actions [B, H, A]` within the model's bounds, `value [B]`, `info`.

        Raises:
            TypeError: `state` is not a `LatentState` or not floating; `warm_start` is not a
                `Plan`; `generator` is not a `torch.Generator`.
            ValueError: an empty (B = 0) or non-finite belief; an objective built for another
                `batch`; a warm start of the wrong shape or with NaN/inf; a NaN or non-number
                `deadline`; planner-specific conditions (see each planner).
        """
        ...


@runtime_checkable
class Policy(Protocol):
    """An action proposal on beliefs: a distilled policy network, or any callable object like it.

    MCTS samples a node's children from it, CEM draws a fraction of its candidates by rolling it
    through the model (as TD-MPC2 does), and the gradient planner can start from its rollout.

    `act(state [N], *, generator=None, deterministic=False) -> [N, A]`: one action per belief,
    within the model's action bounds; with `deterministic=True` the mode (e.g. tanh of the mean),
    otherwise a sample drawn with `generator`. It must not change `state`.
    """

    def act(
        self,
        state: LatentState,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> Tensor: ...


def callable_name(fn: object) -> str:
    """The name a reward term, planner or function is reported by in messages: its `name` attribute
    (reward terms), else its `__qualname__` / `__name__`, else its type's name."""
    return (
        getattr(fn, "name", None)
        or getattr(fn, "__qualname__", None)
        or getattr(fn, "__name__", None)
        or type(fn).__name__
    )
