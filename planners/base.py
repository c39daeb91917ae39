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
        """`[B, A]` the action to execute now."""
        return self.actions[:, 0]

    def shift(self, fill: Tensor | float | None = None) -> "Plan":
        """Receding-horizon warm start: drop the executed first action, append one at the end.

        Args:
            fill: the appended action (`[A]`, `[B, A]` or a scalar); default repeats the last
                action of the sequence.

        Returns:
            A `Plan` with the same `[B, H, A]` shape, for the next `plan(..., warm_start=)`.
        """
        last = self.actions[:, -1:]
        if fill is not None:
            last = torch.as_tensor(fill, dtype=last.dtype, device=last.device).expand_as(last)
        return Plan(torch.cat([self.actions[:, 1:], last], dim=1), self.value, dict(self.info))


@runtime_checkable
class Planner(Protocol):
    """Anything that turns an objective and a batch of beliefs into a `Plan`.

    A planner keeps no state between calls: `warm_start` goes in, the `Plan` comes out.
    Randomness comes only from `generator`. `deadline` is an absolute `time.perf_counter()`
    time after which an anytime planner stops and returns its best plan so far.
    """

    def plan(
        self,
        objective: "Objective",
        state: LatentState,
        *,
        warm_start: Plan | None = None,
        generator: torch.Generator | None = None,
        deadline: float | None = None,
    ) -> Plan: ...


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
