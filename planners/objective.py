"""What every planner maximises: the discounted return of an imagined rollout plus a bootstrap value."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState, WorldModel

__all__ = ["Objective", "RewardTerm", "rank_returns"]

RewardTerm = Callable[[LatentState, Tensor], Tensor]
"""A reward term: `(next_state [N], action [N, A]) -> reward [N]` (the reward of taking `action`
and arriving in `next_state`)."""


def rank_returns(returns: Tensor) -> tuple[Tensor, Tensor]:
    """Make returns safe to rank: NaN and +-inf become `-inf` (never 0).

    Args:
        returns: `[N]` (or any shape) returns.

    Returns:
        `(ranked, nonfinite)`: the returns with non-finite entries set to `-inf`, and the number
        of such entries as a 0-dim integer tensor (no host synchronisation).
    """
    finite = torch.isfinite(returns)
    ranked = torch.where(finite, returns, torch.full_like(returns, float("-inf")))
    return ranked, (~finite).sum()


class Objective:
    """The planning objective over one world model: sum_t gamma^t r_t + gamma^H V(s_H).

    Built once per plan call. Rewards are the learned reward head by default, or a list of
    reward terms `(next_state, action) -> [N]` summed together.

    Args:
        model: any `WorldModel`.
        rewards: reward terms; `None` means the model's learned reward head.
        discount: gamma per planning step (PlaNet: 1.0, an undiscounted sum).
        value: optional terminal value `V(state) -> [N]`, added at the horizon as gamma^H V(s_H).

    Raises:
        ValueError: if `discount` is not in (0, 1] (here) or a reward term returns a tensor
            that is not `[N]` (in `step`/`returns`; the message names the term).

    Source: the return of PlaNet's planner (Hafner et al. 2019, Sec. 3); the bootstrap as in
    MuZero / TD-MPC.
    """

    def __init__(
        self,
        model: WorldModel,
        *,
        rewards: Sequence[RewardTerm] | None = None,
        discount: float = 1.0,
        value: Callable[[LatentState], Tensor] | None = None,
    ) -> None:
        if not 0.0 < discount <= 1.0:
            raise ValueError(f"Objective: discount must be in (0, 1]; got {discount}")
        self.model = model
        self.rewards: list[RewardTerm] = list(rewards) if rewards is not None else [_learned(model)]
        self.discount = float(discount)
        self.value = value

    @property
    def action_dim(self) -> int:
        """A, the model's action dimension."""
        return self.model.action_dim

    def _reward(self, next_state: LatentState, action: Tensor) -> Tensor:
        total = None
        n = action.shape[0]
        for term in self.rewards:
            r = term(next_state, action)
            if not isinstance(r, Tensor) or r.shape != (n,):
                shape = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
                raise ValueError(
                    f"Objective: reward term {_name(term)} must return a [N={n}] tensor; got {shape}"
                )
            total = r if total is None else total + r
        assert total is not None
        return total

    def step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None
    ) -> tuple[LatentState, Tensor]:
        """One imagined transition: `state [N]`, `action [N, A]` -> (next state, reward `[N]`)."""
        nxt = self.model.imagine_step(state, action, generator=generator)
        return nxt, self._reward(nxt, action)

    def bootstrap(self, state: LatentState) -> Tensor:
        """`[N]` the terminal value V(state), or zeros without a value function."""
        if self.value is None:
            return torch.zeros(state.batch, device=state.device)
        v = self.value(state)
        if v.shape != (state.batch,):
            raise ValueError(f"Objective: value must return [N={state.batch}]; got {tuple(v.shape)}")
        return v

    def returns(
        self, state: LatentState, actions: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Discounted return of imagined rollouts.

        Args:
            state: `[N]` start beliefs (one per sequence).
            actions: `[N, H, A]` action sequences.
            generator: randomness of the model's stochastic transitions.

        Returns:
            `[N]` sum_{t<H} gamma^t r_t + gamma^H V(s_H). Non-finite entries are left as they are;
            planners rank them with `rank_returns`.

        Raises:
            ValueError: if `actions` is not `[N, H, A]` for this state and model.
        """
        n = state.batch
        if actions.dim() != 3 or actions.shape[0] != n or actions.shape[2] != self.action_dim:
            raise ValueError(
                f"Objective.returns: actions must be [N={n}, H, A={self.action_dim}]; got {tuple(actions.shape)}"
            )
        total = torch.zeros(n, device=actions.device)
        scale = 1.0
        for t in range(actions.shape[1]):
            state, r = self.step(state, actions[:, t], generator=generator)
            total = total + scale * r
            scale *= self.discount
        if self.value is not None:
            total = total + scale * self.bootstrap(state)
        return total


def _learned(model: WorldModel) -> RewardTerm:
    def learned_reward(next_state: LatentState, action: Tensor) -> Tensor:
        return model.reward(next_state)

    return learned_reward


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
