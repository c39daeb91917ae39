"""Linear-quadratic regulator problem as a Gymnasium env: planners' analytic test bed."""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from .wrappers import validate_action

# Double integrator discretised with dt = 0.1: A = [[1, dt], [0, 1]], B = [[dt²/2], [dt]].
_DOUBLE_INTEGRATOR_A = np.array([[1.0, 0.1], [0.0, 1.0]])
_DOUBLE_INTEGRATOR_B = np.array([[0.005], [0.1]])


def _matrix(name: str, value: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    try:
        m = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric 2-D array") from err
    if m.ndim != 2 or (shape is not None and m.shape != shape):
        want = f"shape {shape}" if shape is not None else "a 2-D array"
        raise ValueError(f"{name} must have {want}, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains NaN or inf")
    m.setflags(write=False)
    return m


class LinearQuadratic(gymnasium.Env):
    """Discrete-time linear system with quadratic cost, with its exact LQR solution.

    Dynamics ``x' = A x + B u``; reward ``r = -(xᵀ Q x + uᵀ R u)`` for the state
    ``x`` before the step and the applied action ``u``. Actions outside the
    bound are clipped (the reward uses the clipped action). The episode is
    truncated after ``horizon`` steps and never terminates.

    Defaults: a 1-D double integrator (position, velocity) with ``dt = 0.1``,
    ``A = [[1, 0.1], [0, 1]]``, ``B = [[0.005], [0.1]]``, ``Q = I``, ``R = 0.1 I``,
    and ``action_bound = 10``: for this system the LQR gain is
    ``K ≈ [2.59, 3.44]``, so the optimal unconstrained action ``-K x_t`` along
    the closed-loop trajectory from any ``x0`` in ``[-1, 1]^2`` has
    ``|u| <= |K|_1 ≈ 6.03`` (the maximum is at ``t = 0``), well inside 10.

    Args:
        A: ``[n, n]`` dynamics matrix. Give ``A`` and ``B`` together or neither.
        B: ``[n, m]`` input matrix.
        Q: ``[n, n]`` symmetric positive semi-definite state cost (default ``I``).
        R: ``[m, m]`` symmetric positive definite action cost (default ``0.1 I``).
        x0_scale: initial states are drawn uniformly in ``[-x0_scale, x0_scale]^n``.
        action_bound: action space is ``Box(-action_bound, action_bound, (m,))``, > 0.
        horizon: steps per episode (int >= 1).
        seed: seed of the first ``reset()`` (same semantics as ``make``: the first
            unseeded reset acts as ``reset(seed=seed)``; ``reset(seed=k)`` reseeds).

    Attributes:
        A, B, Q, R: float64 read-only arrays. ``obs_slices = {"x": slice(0, n)}``;
        ``env_name``, ``action_repeat = 1``, ``max_episode_steps = horizon`` as for
        ``make``. Observations are the state as float32 ``[n]``; :attr:`state` is
        the exact float64 state. ``reset(options={"x0": x0})`` starts from ``x0``.

    Raises:
        ValueError: wrong matrix shapes, non-symmetric or indefinite ``Q``/``R``,
            non-finite entries, bad ``x0_scale``/``action_bound``/``horizon``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        A: Any = None,
        B: Any = None,
        Q: Any = None,
        R: Any = None,
        *,
        x0_scale: float = 1.0,
        action_bound: float = 10.0,
        horizon: int = 50,
        seed: int | None = 0,
    ):
        if (A is None) != (B is None):
            raise ValueError("give both A and B, or neither (for the default double integrator)")
        A = _matrix("A", _DOUBLE_INTEGRATOR_A if A is None else A)
        n = A.shape[0]
        if A.shape != (n, n):
            raise ValueError(f"A must be square [n, n], got shape {A.shape}")
        B = _matrix("B", _DOUBLE_INTEGRATOR_B if B is None else B)
        if B.shape[0] != n:
            raise ValueError(f"B must have shape [n={n}, m], got shape {B.shape}")
        m = B.shape[1]
        Q = _matrix("Q", np.eye(n) if Q is None else Q, (n, n))
        R = _matrix("R", 0.1 * np.eye(m) if R is None else R, (m, m))
        for label, M, floor, kind in (("Q", Q, -1e-12, "semi-definite"), ("R", R, 0.0, "definite")):
            if not np.allclose(M, M.T):
                raise ValueError(f"{label} must be symmetric")
            low = np.linalg.eigvalsh(M).min()
            if low <= floor:
                raise ValueError(f"{label} must be positive {kind}, smallest eigenvalue {low:.3g}")
        if not (np.isfinite(x0_scale) and x0_scale >= 0):
            raise ValueError(f"x0_scale must be finite and >= 0, got {x0_scale!r}")
        if not action_bound > 0:
            raise ValueError(f"action_bound must be > 0, got {action_bound!r}")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")

        self.A, self.B, self.Q, self.R = A, B, Q, R
        self.x0_scale = float(x0_scale)
        self.action_bound = float(action_bound)
        self.horizon = int(horizon)
        self.env_name = "LinearQuadratic"
        self.action_repeat = 1
        self.max_episode_steps = self.horizon
        self.obs_slices = {"x": slice(0, n)}
        self.observation_space = spaces.Box(-np.inf, np.inf, (n,), dtype=np.float32)
        self.action_space = spaces.Box(-self.action_bound, self.action_bound, (m,), dtype=np.float32)
        self._pending_seed = seed
        self._x: np.ndarray | None = None
        self._t = 0
        self._P: np.ndarray | None = None

    @property
    def state(self) -> np.ndarray:
        """Copy of the exact current state, float64 ``[n]``.

        Raises:
            RuntimeError: before the first ``reset``.
        """
        if self._x is None:
            raise RuntimeError("LinearQuadratic: call reset() first")
        return self._x.copy()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; returns ``(obs float32 [n], info)``.

        ``options={"x0": x0}`` sets the initial state (``[n]``) instead of drawing it.

        Raises:
            ValueError: if ``options["x0"]`` has the wrong shape or is non-finite.
        """
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        n = self.A.shape[0]
        if options and options.get("x0") is not None:
            x0 = np.array(options["x0"], dtype=np.float64)
            if x0.shape != (n,) or not np.all(np.isfinite(x0)):
                raise ValueError(f"options['x0'] must be a finite array of shape ({n},), got {x0!r}")
        else:
            x0 = self.np_random.uniform(-self.x0_scale, self.x0_scale, n)
        self._x, self._t = x0, 0
        return self._x.astype(np.float32), {"state": self._x.astype(np.float32)}

    def step(self, action: Any):
        """Apply ``u = clip(action)``; returns ``(obs, reward, False, truncated, info)``.

        Raises:
            ValueError: action of the wrong shape (expected ``(m,)``) or non-finite.
            RuntimeError: before ``reset``, after truncation, or if the state diverges
                to inf/NaN.
        """
        if self._x is None or self._t >= self.horizon:
            raise RuntimeError("LinearQuadratic: call reset() before step() (episode not started or over)")
        u = np.clip(validate_action(action, self.action_space.shape), -self.action_bound, self.action_bound)
        x = self._x
        reward = -float(x @ self.Q @ x + u @ self.R @ u)
        self._x = self.A @ x + self.B @ u
        self._t += 1
        if not np.all(np.isfinite(self._x)):
            raise RuntimeError(f"LinearQuadratic: state diverged to {self._x.tolist()}")
        obs = self._x.astype(np.float32)
        return obs, reward, False, self._t >= self.horizon, {"state": obs.copy(), "env_steps": 1}

    def riccati(self) -> np.ndarray:
        """Stabilizing solution ``P`` ``[n, n]`` of the discrete algebraic Riccati equation.

        ``P = Aᵀ P A - Aᵀ P B (R + Bᵀ P B)⁻¹ Bᵀ P A + Q`` (``scipy.linalg.solve_discrete_are``).

        Raises:
            numpy.linalg.LinAlgError: if no stabilizing solution exists (e.g. ``(A, B)``
                not stabilizable).
        """
        if self._P is None:
            from scipy.linalg import solve_discrete_are

            self._P = solve_discrete_are(self.A, self.B, self.Q, self.R)
        return self._P.copy()

    def lqr_gain(self) -> np.ndarray:
        """Optimal feedback gain ``K = (R + BᵀPB)⁻¹ BᵀPA``, ``[m, n]``; ``u = -K x`` is optimal."""
        P = self.riccati()
        return np.linalg.solve(self.R + self.B.T @ P @ self.B, self.B.T @ P @ self.A)

    def optimal_cost(self, x0: Any) -> float | np.ndarray:
        """Optimal infinite-horizon cost ``x0ᵀ P x0`` (sum of ``xᵀQx + uᵀRu``; the return is its negative).

        Equals the finite-horizon optimum when a terminal cost ``xᵀPx`` is added.

        Args:
            x0: initial state(s), ``[n]`` or ``[..., n]``.

        Returns:
            float for ``[n]`` input, else array ``[...]``.

        Raises:
            ValueError: if the last dimension of ``x0`` is not ``n``.
        """
        x0 = np.asarray(x0, dtype=np.float64)
        n = self.A.shape[0]
        if x0.ndim == 0 or x0.shape[-1] != n:
            raise ValueError(f"x0 must have shape [..., {n}], got {x0.shape}")
        cost = np.einsum("...i,ij,...j->...", x0, self.riccati(), x0)
        return float(cost) if x0.ndim == 1 else cost
