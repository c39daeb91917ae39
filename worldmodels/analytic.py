"""Known, differentiable dynamics behind the `WorldModel` protocol: the test double with exact answers,
and the way a user with known dynamics reaches every planner."""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .state import LatentState, WorldModelBase, check_count, check_step

__all__ = ["AnalyticModel"]


def _as_tensor(x, dtype: torch.dtype = torch.float32) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.tensor(np.array(x), dtype=dtype)  # a copy: read-only numpy arrays are fine


class AnalyticModel(nn.Module, WorldModelBase):
    """A deterministic `WorldModel` over a known state x: `deter` holds x `[B, n]`, `stoch` is empty.

    Args:
        dynamics: `(x [B, n], u [B, A]) -> x' [B, n]`, differentiable for gradient planners.
        reward: `(x [B, n]) -> [B]`, the reward of arriving in x.
        state_dim: n.
        action_low: `[A]` lower action bounds; a floating tensor sets the model's dtype
            (float64 bounds: a float64 model), anything else gives float32.
        action_high: `[A]` upper action bounds.
        names: named slices of x for `decode()`, e.g. `{"position": slice(0, 1)}`.

    `observe` sets the belief to the observation itself (full observability).

    Dtype: the model's dtype is its action bounds' (`action_low.dtype`): float32 as built, float64
    after `.double()` (or from `linear(..., dtype=torch.float64)` / float64 torch matrices).
    `initial` and `from_observation` make beliefs in that dtype, so planners that follow the
    state's dtype plan in float64 end to end.

    Raises:
        ValueError: `state_dim` not an int >= 0; bounds of different lengths, with NaN, or with
            low > high; or (from `observe`) an observation that is not `[B, n]` or contains NaN/inf.
    """

    def __init__(
        self,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        reward: Callable[[Tensor], Tensor],
        state_dim: int,
        action_low: Sequence[float] | Tensor,
        action_high: Sequence[float] | Tensor,
        names: dict[str, slice] | None = None,
    ) -> None:
        super().__init__()
        # a floating tensor bound keeps its dtype (float64 bounds make a float64 model); others are float32
        dtype = action_low.dtype if isinstance(action_low, Tensor) and action_low.is_floating_point() else torch.float32
        low, high = _as_tensor(action_low, dtype).reshape(-1), _as_tensor(action_high, dtype).reshape(-1)
        if isinstance(state_dim, bool) or not isinstance(state_dim, numbers.Integral) or state_dim < 0:
            raise ValueError(f"AnalyticModel: state_dim must be an int >= 0; got {state_dim!r}")
        if low.shape != high.shape or bool((low > high).any()):
            raise ValueError(f"AnalyticModel: action bounds must match and low <= high; got {low}, {high}")
        if bool(low.isnan().any() | high.isnan().any()):
            raise ValueError(f"AnalyticModel: action_low / action_high must not hold NaN; got {low}, {high}")
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_high", high, persistent=False)
        self.action_dim = int(low.numel())
        self.state_dim = int(state_dim)
        self._dynamics = dynamics
        self._reward = reward
        self.names = dict(names or {})

    @classmethod
    def linear(
        cls, A, B, Q, *, action_bound: float | Sequence[float] = 1.0, dtype: torch.dtype | None = None,
    ) -> "AnalyticModel":
        """The linear system x' = A x + B u with reward -x^T Q x of the arrival state.

        Args:
            A: `[n, n]`; B: `[n, m]`; Q: `[n, n]` (numpy or torch, float64 fine).
            action_bound: symmetric bound on every action dimension.
            dtype: the model's dtype. `None`: float64 if any of A, B, Q is a float64 torch
                tensor, else float32 (NumPy arrays, float64 by default, give float32 as before).

        An action cost -u^T R u is a separate reward term (see `quadratic_action_cost`), since
        the protocol's `reward(state)` sees only the state.

        Raises:
            ValueError: on inconsistent matrix shapes (B must be 2-D `[n, m]`).
        """
        if dtype is None:
            dtype = torch.float64 if any(isinstance(m, Tensor) and m.dtype == torch.float64 for m in (A, B, Q)) \
                else torch.float32
        A, B, Q = _as_tensor(A, dtype), _as_tensor(B, dtype), _as_tensor(Q, dtype)
        if B.dim() != 2:
            raise ValueError(f"AnalyticModel.linear: B must be [n, m] (2-D, one column per action); got "
                             f"{tuple(B.shape)}")
        n, m = B.shape
        if A.shape != (n, n) or Q.shape != (n, n):
            raise ValueError(f"AnalyticModel.linear: A {tuple(A.shape)}, B {tuple(B.shape)}, Q {tuple(Q.shape)} disagree")
        bound = _as_tensor(action_bound, dtype).expand(m)
        model = cls(
            lambda x, u: x @ model.A.T + u @ model.B.T,
            lambda x: -((x @ model.Q) * x).sum(-1),
            n, -bound, bound, names={"x": slice(0, n)},
        )
        model.register_buffer("A", A)
        model.register_buffer("B", B)
        model.register_buffer("Q", Q)
        return model

    @classmethod
    def pendulum(cls, *, max_torque: float = 2.0, dt: float = 0.05, gravity: float = 10.0, mass: float = 1.0,
                 length: float = 1.0, dtype: torch.dtype = torch.float32) -> "AnalyticModel":
        """The torque-limited pendulum of the swing-up benchmarks, state x = (cos th, sin th, th_dot).

        Semi-implicit Euler on `th_ddot = 3 g / (2 l) sin th + 3 u / (m l^2)` (th = 0 upright),
        as in OpenAI Gym's Pendulum-v0 and the pendulum of mpc.pytorch (Amos et al. 2018):
        `th_dot' = th_dot + dt th_ddot`, `th' = th + dt th_dot'`, with `th = atan2(sin, cos)`.

        Args:
            max_torque: the action bound, `u in [-max_torque, max_torque]` (N m).
            dt: the step in s; gravity (m/s^2), mass (kg), length (m): the physical constants.
            dtype: the model's dtype.

        Returns:
            An `AnalyticModel` with n = 3, A = 1, reward `-(1 - cos th) - 0.1 th_dot^2` of the
            arrival state, and names `cos`, `sin`, `velocity`.
        """

        def step(x: Tensor, u: Tensor) -> Tensor:
            th = torch.atan2(x[:, 1], x[:, 0])
            vel = x[:, 2] + dt * (1.5 * gravity / length * x[:, 1] + 3.0 * u[:, 0] / (mass * length**2))
            th = th + dt * vel
            return torch.stack([th.cos(), th.sin(), vel], 1)

        bound = torch.full((1,), float(max_torque), dtype=dtype)
        return cls(step, lambda x: -(1.0 - x[:, 0]) - 0.1 * x[:, 2] ** 2, 3, -bound, bound,
                   names={"cos": slice(0, 1), "sin": slice(1, 2), "velocity": slice(2, 3)})

    @classmethod
    def cartpole(cls, *, max_force: float = 10.0, dt: float = 0.05, gravity: float = 9.8, cart_mass: float = 1.0,
                 pole_mass: float = 0.1, half_length: float = 0.5, dtype: torch.dtype = torch.float32) -> "AnalyticModel":
        """The cart-pole of Barto, Sutton & Anderson 1983 (the equations of Florian 2007, as in
        OpenAI Gym's CartPole and mpc.pytorch), state x = (cart x, cart x_dot, cos th, sin th, th_dot),
        th = 0 upright, explicit Euler with step `dt`.

        `th_ddot = (g sin th - cos th c) / (l (4/3 - m_p cos^2 th / M))` and
        `x_ddot = c - m_p l th_ddot cos th / M`, with `c = (u + m_p l th_dot^2 sin th) / M`,
        `M = m_c + m_p`, l the half-length of the pole.

        Args:
            max_force: the action bound, `u in [-max_force, max_force]` (N).
            dt: the step in s; the other arguments are the physical constants (m/s^2, kg, m).
            dtype: the model's dtype.

        Returns:
            An `AnalyticModel` with n = 5, A = 1, reward `cos th - 0.1 x^2` of the arrival state
            (balance near the centre), and names `cart_x`, `cart_v`, `pole_cos`, `pole_sin`,
            `pole_w`.
        """
        total = cart_mass + pole_mass
        ml = pole_mass * half_length

        def step(s: Tensor, u: Tensor) -> Tensor:
            x, v, cos, sin, w = s.unbind(1)
            th = torch.atan2(sin, cos)
            c = (u[:, 0] + ml * w**2 * sin) / total
            th_acc = (gravity * sin - cos * c) / (half_length * (4.0 / 3.0 - pole_mass * cos**2 / total))
            x_acc = c - ml * th_acc * cos / total
            th = th + dt * w
            return torch.stack([x + dt * v, v + dt * x_acc, th.cos(), th.sin(), w + dt * th_acc], 1)

        bound = torch.full((1,), float(max_force), dtype=dtype)
        names = {k: slice(i, i + 1) for i, k in enumerate(("cart_x", "cart_v", "pole_cos", "pole_sin", "pole_w"))}
        return cls(step, lambda s: s[:, 2] - 0.1 * s[:, 0] ** 2, 5, -bound, bound, names=names)

    @staticmethod
    def quadratic_action_cost(R) -> Callable[[LatentState, Tensor], Tensor]:
        """A reward term `(next_state, u [N, A]) -> -u^T R u [N]` for `Objective(rewards=[...])`.

        Args:
            R: `[A, A]` cost matrix (numpy, list or tensor). It is kept in float64 and cast to the
                action's device and dtype at each call, so a float64 model plans in float64 end to
                end and a float32 one in float32.

        Raises:
            ValueError: `R` is not a square 2-D matrix or holds NaN/inf; (from the term) an action
                whose width is not A.
        """
        R = _as_tensor(R, torch.float64)
        if R.dim() != 2 or R.shape[0] != R.shape[1]:
            raise ValueError(f"AnalyticModel.quadratic_action_cost: R must be a square [A, A] matrix; got {tuple(R.shape)}")
        if not bool(torch.isfinite(R).all()):
            raise ValueError("AnalyticModel.quadratic_action_cost: R contains NaN or inf")
        by_dtype = {torch.float32: R.float(), torch.float64: R}  # made once: no cast per call for these

        def action_cost(next_state: LatentState, action: Tensor) -> Tensor:
            if action.shape[-1] != R.shape[0]:
                raise ValueError(f"AnalyticModel.quadratic_action_cost: actions [N, A={action.shape[-1]}] do not "
                                 f"fit R {tuple(R.shape)}")
            r = by_dtype.get(action.dtype, R).to(action.device, action.dtype)
            return -((action @ r) * action).sum(-1)

        return action_cost

    @property
    def feature_size(self) -> int:
        """F = n: the belief is the state itself (`stoch` is empty)."""
        return self.state_dim

    @property
    def obs_shape(self) -> tuple[int]:
        """`(n,)`: the shape of one observation (the state itself)."""
        return (self.state_dim,)

    @property
    def device(self) -> torch.device:
        """Device of the model's buffers."""
        return self.action_low.device

    def initial(self, batch: int) -> LatentState:
        """Zeros in the model's dtype: `[batch, n]` state, `[batch, 0]` stochastic part.

        Raises:
            TypeError: `batch` is not an int (NumPy ints are fine; bools and floats are not).
            ValueError: `batch < 0`.
        """
        batch = check_count("AnalyticModel.initial", "batch", batch)
        kw = dict(device=self.device, dtype=self.action_low.dtype)
        return LatentState(torch.zeros(batch, self.state_dim, **kw), torch.zeros(batch, 0, **kw))

    def from_observation(self, obs: Tensor) -> LatentState:
        """The belief that is exactly `obs [B, n]`, in the model's dtype and on its device.

        Raises:
            TypeError: `obs` is not a tensor.
            ValueError: `obs` is not `[B, n]` with B >= 1, or contains NaN/inf.
        """
        if not isinstance(obs, Tensor):
            raise TypeError(f"AnalyticModel.from_observation: obs must be a torch.Tensor [B, n]; got {type(obs).__name__}")
        if obs.dim() != 2 or obs.shape[0] < 1 or obs.shape[1] != self.state_dim:
            raise ValueError(f"AnalyticModel.from_observation: obs must be [B, n={self.state_dim}] with B >= 1; "
                             f"got {tuple(obs.shape)}")
        if not torch.isfinite(obs).all():
            raise ValueError("AnalyticModel.from_observation: obs contains NaN or inf")
        obs = obs.to(self.device, self.action_low.dtype)
        return LatentState(obs, obs.new_zeros(obs.shape[0], 0))

    def observe(
        self, state: LatentState, action: Tensor, obs: Tensor, is_first: Tensor,
        *, generator: torch.Generator | None = None, sample: bool = True,
    ) -> LatentState:
        """Full observability: the new belief is `obs [B, n]` (`generator` and `sample` are unused).

        Raises:
            TypeError: `obs` is not a tensor.
            ValueError: `obs` is not `[B, n]` or contains NaN/inf.
        """
        if not isinstance(obs, Tensor):
            raise TypeError(f"AnalyticModel.observe: obs must be a torch.Tensor [B, n]; got {type(obs).__name__}")
        if obs.dim() != 2 or obs.shape != (state.batch, self.state_dim):
            raise ValueError(f"AnalyticModel.observe: obs must be [B={state.batch}, n={self.state_dim}]; got {tuple(obs.shape)}")
        if not torch.isfinite(obs).all():
            raise ValueError("AnalyticModel.observe: observation contains NaN or inf")
        return self.from_observation(obs)

    def imagine_step(
        self, state: LatentState, action: Tensor, *, generator: torch.Generator | None = None, sample: bool = True
    ) -> LatentState:
        """Deterministic step x' = dynamics(x, u) for `state [B]`, `action [B, A]`; `generator` and
        `sample` are unused (the mean is the sample).

        Raises:
            TypeError / ValueError: a state or action of another size, dtype or device than the
                model's (`check_step`).
        """
        check_step("AnalyticModel.imagine_step", state, action, deter=self.state_dim, stoch=0,
                   action_dim=self.action_dim, dtype=self.action_low.dtype, device=self.device)
        return LatentState(self._dynamics(state.deter, action), state.stoch)

    def reward(self, state: LatentState) -> Tensor:
        """`[B]` reward of arriving in `state`."""
        return self._reward(state.deter)

    def decode(self, state: LatentState) -> dict[str, Tensor]:
        """`{"obs": x [B, n]}` plus the named slices."""
        out = {"obs": state.deter}
        out.update({k: state.deter[:, s] for k, s in self.names.items()})
        return out
