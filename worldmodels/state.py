"""Core types shared by every world model and planner: the latent belief and the model protocol."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["LatentState", "WorldModel", "WorldModelBase", "check_actions", "check_count", "check_step"]


@dataclass(frozen=True)
class LatentState:
    """One latent belief per batch row, as in PlaNet's recurrent state-space model (RSSM).

    Attributes:
        deter: `[B, D]` deterministic recurrent state h_t (the GRU state).
        stoch: `[B, S]` stochastic state z_t (one sample of the prior or the posterior).
            Models without a stochastic part (e.g. `AnalyticModel`) use `S = 0`.

    The dataclass is frozen: every helper returns a new state, so a planner can never
    mutate a caller's belief.

    Raises:
        TypeError: if `deter` or `stoch` is not a torch.Tensor.
        ValueError: if the two parts disagree in batch size, are not 2-D, or live on
            different devices.
    """

    deter: Tensor
    stoch: Tensor

    def __post_init__(self) -> None:
        for name in ("deter", "stoch"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"LatentState: {name} must be a torch.Tensor; got {type(getattr(self, name)).__name__}")
        if self.deter.dim() != 2 or self.stoch.dim() != 2:
            raise ValueError(
                f"LatentState: deter and stoch must be [B, D] and [B, S]; "
                f"got {tuple(self.deter.shape)} and {tuple(self.stoch.shape)}"
            )
        if self.deter.shape[0] != self.stoch.shape[0]:
            raise ValueError(
                f"LatentState: batch sizes differ: deter {self.deter.shape[0]} vs stoch {self.stoch.shape[0]}"
            )
        if self.deter.device != self.stoch.device:
            raise ValueError(
                f"LatentState: deter on {self.deter.device} but stoch on {self.stoch.device}"
            )

    @property
    def batch(self) -> int:
        """Number of rows B."""
        return self.deter.shape[0]

    @property
    def device(self) -> torch.device:
        """Device of both tensors."""
        return self.deter.device

    def features(self) -> Tensor:
        """`[B, D + S]` concatenation of deterministic and stochastic parts (the heads' input)."""
        return torch.cat([self.deter, self.stoch], dim=-1)

    def expand(self, n: int) -> "LatentState":
        """Repeat every row `n` times: `[B, ...] -> [B * n, ...]`, rows of one source kept adjacent.

        Row `b * n + j` is a copy of row `b`; this is the layout planners use for
        `J` candidates per environment.

        Raises:
            TypeError: `n` is not an integer (a bool is not one).
            ValueError: `n < 0`.
        """
        n = check_count("LatentState.expand", "n", n)
        return LatentState(
            self.deter.repeat_interleave(n, dim=0), self.stoch.repeat_interleave(n, dim=0)
        )

    def index(self, idx: Tensor | slice | int) -> "LatentState":
        """Select rows along the batch dimension.

        Args:
            idx: an integer (a Python int, a NumPy integer or a 0-dim integer tensor), with
                Python's rules: `-1` is the last row; the result keeps the batch dimension,
                `[1]` rows. Anything else a tensor accepts along dim 0 (a slice, an index
                tensor `[K]`, a bool mask `[B]`) selects those rows, `[K]`.

        Returns:
            The selected rows as a new `LatentState` (`deter [K, D]`, `stoch [K, S]`).

        Raises:
            IndexError: an integer outside `[-B, B)` (or an index tensor out of range, from torch).
            TypeError: a Python bool (ambiguous: use a bool mask `[B]`).
        """
        if isinstance(idx, bool):
            raise TypeError("LatentState.index: a bool is not a row index; pass a bool mask tensor [B]")
        if isinstance(idx, Tensor):
            if idx.dim() == 0 and not idx.is_floating_point() and not idx.is_complex() and idx.dtype != torch.bool:
                idx = int(idx)
        elif not isinstance(idx, slice):
            try:
                idx = operator.index(idx)  # NumPy integers
            except TypeError:
                pass  # lists, arrays: torch decides
        if isinstance(idx, int):
            b = self.batch
            if not -b <= idx < b:
                raise IndexError(f"LatentState.index: row {idx} is out of range for a batch of {b} rows")
            idx %= b
            idx = slice(idx, idx + 1)
        return LatentState(self.deter[idx], self.stoch[idx])

    def detach(self) -> "LatentState":
        """A copy cut from the autograd graph."""
        return LatentState(self.deter.detach(), self.stoch.detach())

    def to(self, device: torch.device | str) -> "LatentState":
        """The same state on another device."""
        return LatentState(self.deter.to(device), self.stoch.to(device))

    @staticmethod
    def cat(states: list["LatentState"]) -> "LatentState":
        """Concatenate states along the batch dimension: `[B_1] + [B_2] + ... -> [sum B_i]`.

        Raises:
            ValueError: an empty list, or states whose D, S, dtype or device differ.
            TypeError: an entry that is not a `LatentState`.
        """
        states = list(states)
        if not states:
            raise ValueError("LatentState.cat: states is empty; need at least one LatentState")
        first = states[0]
        for i, s in enumerate(states):
            if not isinstance(s, LatentState):
                raise TypeError(f"LatentState.cat: states[{i}] must be a LatentState; got {type(s).__name__}")
            if (s.deter.shape[1], s.stoch.shape[1]) != (first.deter.shape[1], first.stoch.shape[1]) \
                    or s.deter.dtype != first.deter.dtype or s.stoch.dtype != first.stoch.dtype \
                    or s.device != first.device:
                raise ValueError(
                    f"LatentState.cat: states[{i}] has D={s.deter.shape[1]}, S={s.stoch.shape[1]}, "
                    f"{s.deter.dtype} on {s.device}; states[0] has D={first.deter.shape[1]}, "
                    f"S={first.stoch.shape[1]}, {first.deter.dtype} on {first.device}"
                )
        return LatentState(
            torch.cat([s.deter for s in states]), torch.cat([s.stoch for s in states])
        )


@runtime_checkable
class WorldModel(Protocol):
    """What a planner needs from a dynamics model (learned or analytic).

    Shapes: B is the batch of beliefs, A the action dimension, H the horizon, F = D + S the
    size of `LatentState.features()`.

    - `initial(batch)` -> the belief before any observation, `[B]` rows.
    - `observe(state, action, obs, is_first, *, generator=None, sample=True)` -> posterior
      (filtering) step: the belief after taking `action [B, A]` from `state` and then seeing
      `obs [B, ...]`; rows where `is_first [B]` is true are reset to `initial` first (the action
      is ignored there). The stochastic state is sampled with `generator`, or with
      `sample=False` is the posterior mean.
    - `imagine_step(state, action, *, generator=None, sample=True)` -> prior (open-loop) step,
      sampling the stochastic state with `generator` (reparameterised, so gradients reach the
      action), or the prior mean with `sample=False`.
    - `rollout(state, actions [B, H, A], *, generator=None, sample=True)` -> `(visited, final)`:
      `imagine_step` H times; `visited` has `B * H` rows (row `b * H + t` after step t),
      `final` is `[B]`.
    - `reward(state)` -> `[B]` predicted reward of arriving in `state`.
    - `decode(state)` -> named observation quantities, each `[B, ...]`.
    - `refresh()` -> bool: rebuild anything derived from the parameters (e.g. fused weights);
      captured planners call it before each replay.
    - `action_dim`, `action_low`, `action_high` (`[A]` tensors), `feature_size` (F).

    `WorldModelBase` gives `rollout`, `refresh` and `feature_size` defaults.
    """

    action_dim: int
    action_low: Tensor
    action_high: Tensor

    @property
    def feature_size(self) -> int:
        """F = D + S, the width of `LatentState.features()` of this model's beliefs."""
        ...

    def initial(self, batch: int) -> LatentState:
        """The belief before any observation, `[batch]` rows (`deter [batch, D]`, `stoch [batch, S]`).

        Raises:
            TypeError / ValueError: `batch` is not an int >= 0 (implementations should check).
        """
        ...

    def observe(
        self, state: LatentState, action: Tensor, obs: Tensor, is_first: Tensor,
        *, generator: torch.Generator | None = None, sample: bool = True,
    ) -> LatentState:
        """Posterior (filtering) step: the belief `[B]` after `action [B, A]` from `state [B]` and then
        seeing `obs [B, ...]`; rows where `is_first [B]` (bool) is true restart from `initial` and
        their action is ignored.

        Raises:
            TypeError / ValueError: inputs of the wrong type, shape, dtype or device, or NaN/inf
                where the model cannot use them (each model's docstring lists its checks).
        """
        ...

    def imagine_step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> LatentState:
        """Prior (open-loop) step: `state [B]`, `action [B, A]` -> the next belief `[B]`, the stochastic
        part sampled with `generator` (reparameterised) or its mean with `sample=False`.

        Raises:
            TypeError / ValueError: a state or action of another size, dtype or device (`check_step`).
        """
        ...

    def rollout(
        self, state: LatentState, actions: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> tuple[LatentState, LatentState]:
        """`imagine_step` H times over `actions [B, H, A]`: `(visited [B * H] (row b * H + t), final [B])`.

        Raises:
            TypeError / ValueError: `actions` not a 3-D tensor, H = 0, or a step's inputs wrong.
        """
        ...

    def reward(self, state: LatentState) -> Tensor: ...

    def decode(self, state: LatentState) -> Mapping[str, Tensor]: ...

    def refresh(self) -> bool: ...


class WorldModelBase:
    """Defaults for the `WorldModel` protocol; a model subclasses it (beside `nn.Module`) and
    implements `initial`, `observe`, `imagine_step`, `reward`, `decode` and the action bounds.

    - `feature_size`: F, read off `initial(1).features()` (subclasses that know it override it);
    - `rollout`: `imagine_step` H times with the visited beliefs stacked, so that a planner's
      rewards for all H steps are one batched call (models with a faster rollout override it;
      it must draw the same random numbers in the same order);
    - `refresh`: nothing to rebuild (returns False).
    """

    @property
    def feature_size(self) -> int:
        """F = D + S, the size of `LatentState.features()` of this model's beliefs."""
        return int(self.initial(1).features().shape[1])

    def rollout(
        self, state: LatentState, actions: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> tuple[LatentState, LatentState]:
        """Open-loop prior rollout of H steps: `imagine_step` applied H times, the same random
        numbers drawn in the same order from `generator`.

        Args:
            state: `[N]` start beliefs.
            actions: `[N, H, A]` action sequences.
            generator: randomness of the stochastic states.
            sample: False: prior means instead of samples (as `imagine_step`).

        Returns:
            `(visited, final)`: `visited` has `N * H` rows, row `n * H + t` the belief after
            step t of sequence n (rows of one sequence adjacent); `final` is `[N]`, the belief
            after the last step.

        Raises:
            TypeError: `actions` is not a tensor (or, from `imagine_step`, `state` not a `LatentState`).
            ValueError: `actions` is not 3-D, H = 0 (no step to take), or a step's state or action
                differs from the model's in size, dtype or device (from `imagine_step`).
        """
        check_actions(f"{type(self).__name__}.rollout", actions)
        deters, stochs = [], []
        for t in range(actions.shape[1]):
            state = self.imagine_step(state, actions[:, t], generator=generator, sample=sample)
            deters.append(state.deter)
            stochs.append(state.stoch)
        visited = LatentState(torch.stack(deters, 1).flatten(0, 1), torch.stack(stochs, 1).flatten(0, 1))
        return visited, state

    def refresh(self) -> bool:
        """Rebuild what is derived from the parameters; the base model has nothing to rebuild."""
        return False


def check_count(where: str, name: str, n: Any) -> int:
    """`n` as a Python int, if it is an integer >= 0 (NumPy ints are fine; bools and floats are not).

    Raises:
        TypeError: `n` is not an integer, naming `where` and `name`.
        ValueError: `n < 0`.
    """
    if isinstance(n, bool):
        raise TypeError(f"{where}: {name} must be an int >= 0; got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an int >= 0; got {type(n).__name__} {n!r}") from None
    if n < 0:
        raise ValueError(f"{where}: {name} must be an int >= 0; got {n}")
    return n


def check_actions(where: str, actions: Any) -> None:
    """Check that `actions` is a `[N, H, A]` tensor with H >= 1 (metadata only: no host sync).

    Raises:
        TypeError: `actions` is not a torch.Tensor.
        ValueError: `actions` is not 3-D, or H = 0.
    """
    if not isinstance(actions, Tensor):
        raise TypeError(f"{where}: actions must be a torch.Tensor [N, H, A]; got {type(actions).__name__}")
    if actions.dim() != 3:
        raise ValueError(f"{where}: actions must be [N, H, A] (3-D); got {list(actions.shape)}")
    if actions.shape[1] == 0:
        raise ValueError(f"{where}: the horizon H = actions.shape[1] must be >= 1; got actions {list(actions.shape)}")


def check_step(where: str, state: Any, action: Tensor, *, deter: int, stoch: int, action_dim: int,
               dtype: torch.dtype, device: torch.device, horizon: int | None = None) -> None:
    """Check the inputs of a model step at the boundary, naming the argument that is wrong.

    Args:
        where: the caller, e.g. `"RSSMWorldModel.imagine_step"`.
        state: must be a `LatentState` with `deter [B, deter]` and `stoch [B, stoch]` of `dtype` on `device`.
        action: must be a `[B, action_dim]` tensor of `dtype` on `device` (with `horizon`: the
            whole sequence, `actions [B, horizon, action_dim]`).
        deter, stoch, action_dim, dtype, device: what the model takes.
        horizon: H when `action` is a rollout's `[B, H, A]` sequence; None for one step.

    Raises:
        TypeError: `state` is not a `LatentState` or `action` not a tensor.
        ValueError: a size, dtype or device differs from the model's (the message says which, and
            that `.float()` / `.to(device)` converts).
    """
    if not isinstance(state, LatentState):
        raise TypeError(f"{where}: state must be a LatentState; got {type(state).__name__}")
    a_name = "action" if horizon is None else "actions"
    if not isinstance(action, Tensor):
        raise TypeError(f"{where}: {a_name} must be a torch.Tensor [B, A={action_dim}]; got {type(action).__name__}")
    b = state.batch
    a_want = (b, action_dim) if horizon is None else (b, horizon, action_dim)
    for name, t, want in (("state.deter", state.deter, (b, deter)), ("state.stoch", state.stoch, (b, stoch)),
                          (a_name, action, a_want)):
        if tuple(t.shape) != want or t.dtype != dtype or t.device != device:
            raise ValueError(
                f"{where}: {name} must be [{', '.join(map(str, want))}] {str(dtype).replace('torch.', '')} on "
                f"{device}, as the model's; got [{', '.join(map(str, t.shape))}] "
                f"{str(t.dtype).replace('torch.', '')} on {t.device} (convert with .to({str(dtype)}) / .to(device))"
            )
