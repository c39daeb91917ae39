"""Families of planning problems with exact answers: random linear-quadratic problems and deceptive
"trap" chains, for checking planners over many instances rather than one.

- `lq_family`: random discrete-time LQ problems x' = A x + B u, cost
  sum_{t=1}^{H} x_t' Q x_t + sum_{t<H} u_t' R u_t + x_H' (Q_f - Q) x_H, with A unstable (spectral
  radius up to 1.1) and oscillating (rotations up to 90 degrees per step), Q, R, Q_f random
  positive definite with condition numbers up to 100, n <= 6, m <= 3, H <= 20. The exact optimum
  comes from the backward Riccati recursion in float64; the start state is scaled so that the
  optimal actions stay within |u| <= 0.6 of the bound 1.
- `trap_family`: a 1-D grid, p' = p + round(u) with u in [-1, 1]; a small reward every step on the
  left (a lure next to the start) and, to the right, k cells of cost before a large reward. Going
  right first is optimal, and its return trails the lure's for the first k steps. The exact
  optimum by dynamic programming over the cells.

Both build an `AnalyticModel` and an `Objective` for any planner (`Problem.build()`), and measure a
plan against the optimum (`LQProblem.excess`, `TrapProblem.first_action_ok`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from latentplan.planners import Objective, Planner
from latentplan.worldmodels import AnalyticModel

__all__ = ["LQProblem", "TrapProblem", "distill_gain", "gain_error", "least_squares_gain", "lq_family", "lq_gains",
           "smoothness", "trap_family"]


def _spd(rng: np.random.Generator, n: int, cond: float, scale: float = 1.0) -> np.ndarray:
    """A random symmetric positive definite `[n, n]` matrix with eigenvalues from scale/cond to scale."""
    v, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = scale * np.logspace(-math.log10(cond), 0.0, n) if n > 1 else np.array([scale])
    return (v * rng.permutation(eig)) @ v.T


def _dynamics(rng: np.random.Generator, n: int, radius: tuple[float, float], angle: float) -> np.ndarray:
    """`[n, n]` A = T blockdiag(r_i R(theta_i)) T^{-1}: 2 x 2 rotation blocks (and a real root when n is
    odd) with radii in `radius`, angles up to `angle` radians, T random with condition number <= 10."""
    blocks = np.zeros((n, n))
    i = 0
    while i < n:
        r = rng.uniform(*radius)
        if i + 1 < n:
            th = rng.uniform(0.2 * angle, angle)
            blocks[i:i + 2, i:i + 2] = r * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            i += 2
        else:
            blocks[i, i] = r * rng.choice([-1.0, 1.0])
            i += 1
    u, _ = np.linalg.qr(rng.normal(size=(n, n)))
    w, _ = np.linalg.qr(rng.normal(size=(n, n)))
    t = (u * np.logspace(0.0, -1.0, n)) @ w.T
    return t @ blocks @ np.linalg.inv(t)


@dataclass(frozen=True)
class LQProblem:
    """One linear-quadratic problem with its exact finite-horizon optimum (float64).

    Attributes:
        A `[n, n]`, B `[n, m]`, Q `[n, n]`, R `[m, m]`, Qf `[n, n]` (Qf - Q is positive definite);
        x0 `[n]` the start; horizon H; u_star `[H, m]` the optimal actions; cost_star J* > 0.
    The cost of actions u `[H, m]` is J(u) = sum_{t=1}^{H} x_t'Q x_t + sum_{t<H} u_t'R u_t + x_H'(Qf - Q)x_H.
    """

    A: np.ndarray
    B: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    Qf: np.ndarray
    x0: np.ndarray
    horizon: int
    u_star: np.ndarray
    cost_star: float

    def cost(self, actions) -> float:
        """J(u) of `actions [H, m]` (any array-like), float64."""
        u = np.asarray(actions, dtype=np.float64).reshape(self.horizon, -1)
        x, total = self.x0.copy(), 0.0
        for t in range(self.horizon):
            x = self.A @ x + self.B @ u[t]
            total += x @ self.Q @ x + u[t] @ self.R @ u[t]
        return float(total + x @ (self.Qf - self.Q) @ x)

    def excess(self, actions) -> float:
        """The relative excess cost J(u) / J* - 1 of `actions [H, m]` (0 at the optimum)."""
        return self.cost(actions) / self.cost_star - 1.0

    def gains(self) -> np.ndarray:
        """`[H, m, n]` the finite-horizon Riccati gains K_t(H) of this problem (`lq_gains`): the optimal
        plan from any x is u_t = -K_t x_t while it stays inside the bounds, so a converged planner's
        first action is -K_0(H) x."""
        return lq_gains(self.A, self.B, self.Q, self.R, self.Qf, self.horizon)

    def dare_gain(self) -> np.ndarray:
        """`[m, n]` the infinite-horizon LQR gain K = (R + B'PB)^{-1} B'PA, P from scipy's discrete
        algebraic Riccati equation for (A, B, Q, R) (the limit of K_0(H) as H grows; Qf plays no part)."""
        from scipy.linalg import solve_discrete_are

        p = solve_discrete_are(self.A, self.B, self.Q, self.R)
        return np.linalg.solve(self.R + self.B.T @ p @ self.B, self.B.T @ p @ self.A)

    def label_states(self, count: int, seed: int = 0, *, u_max: float = 0.6) -> np.ndarray:
        """`[count, n]` start states for labelling a policy: random directions, each scaled so that
        the optimal plan from it has max_t |u*_t| = u_max * s, s uniform in [0.2, 1] (every optimal
        plan inside the bounds |u| <= 1, so the optimal first action is exactly -K_0 x).

        Raises:
            ValueError: `count` < 1 or `u_max` not in (0, 1].
        """
        if count < 1 or not 0.0 < u_max <= 1.0:
            raise ValueError(f"LQProblem.label_states: need count >= 1 and 0 < u_max <= 1; got {count}, {u_max}")
        rng = np.random.default_rng(seed)
        d = rng.normal(size=(count, self.A.shape[0]))
        x, peak = d, np.zeros(count)
        for k in self.gains():
            u = -x @ k.T
            peak = np.maximum(peak, np.abs(u).max(1))
            x = x @ self.A.T + u @ self.B.T
        return d * (u_max * rng.uniform(0.2, 1.0, count) / peak)[:, None]

    def build(self, dtype: torch.dtype = torch.float32) -> tuple[AnalyticModel, Objective, object]:
        """`(model, objective, start belief [1])`: rewards -x'Qx (arrival) and -u'Ru, and the value
        -x'(Qf - Q)x at the horizon, so that the objective's return is exactly -J(u); bounds |u| <= 1."""
        model = AnalyticModel.linear(torch.as_tensor(self.A, dtype=dtype), torch.as_tensor(self.B, dtype=dtype),
                                     torch.as_tensor(self.Q, dtype=dtype), action_bound=1.0, dtype=dtype)
        m = torch.as_tensor(self.Qf - self.Q, dtype=dtype)
        r = torch.as_tensor(self.R, dtype=dtype)
        objective = Objective(model, rewards=[lambda s, a: model.reward(s), lambda s, a: -((a @ r) * a).sum(-1)],
                              value=lambda s: -((s.deter @ m) * s.deter).sum(-1))
        return model, objective, model.from_observation(torch.as_tensor(self.x0[None], dtype=dtype))


def smoothness(actions) -> float:
    """The lag-1 autocorrelation of a plan `[H, m]` (e.g. `LQProblem.u_star`) along time,
    sum_t u_t . u_{t+1} / sum_t u_t . u_t, in [-1, 1]: near 1 for smooth sequences, negative for
    ones that alternate in sign from step to step (where coloured noise with β > 0 has little power)."""
    u = np.asarray(actions, dtype=np.float64).reshape(len(actions), -1)
    return float((u[1:] * u[:-1]).sum() / max((u * u).sum(), 1e-300))


def lq_gains(A, B, Q, R, Qf, horizon) -> np.ndarray:
    """`[H, m, n]` the finite-horizon Riccati gains K_t (u_t = -K_t x_t optimal) for the cost of
    `LQProblem`, by the backward recursion in float64; K_0 is the first action's gain."""
    gains, p = [], Qf
    for t in reversed(range(horizon)):
        s = p if t == horizon - 1 else p + Q
        k = np.linalg.solve(R + B.T @ s @ B, B.T @ s @ A)
        gains.append(k)
        p = A.T @ s @ (A - B @ k)
        p = 0.5 * (p + p.T)
    return np.array(gains[::-1])


def lq_optimum(A, B, Q, R, Qf, x0, horizon) -> tuple[np.ndarray, float]:
    """`(u* [H, m], J*)` by the backward Riccati recursion for the cost of `LQProblem`, float64."""
    x, us, cost = np.asarray(x0, np.float64), [], 0.0
    for k in lq_gains(A, B, Q, R, Qf, horizon):
        us.append(-k @ x)
        x = A @ x + B @ us[-1]
        cost += x @ Q @ x + us[-1] @ R @ us[-1]
    return np.array(us), float(cost + x @ (Qf - Q) @ x)


def gain_error(gain, reference) -> float:
    """The relative Frobenius error ||gain - reference||_F / ||reference||_F of two `[m, n]` gains."""
    gain, reference = np.asarray(gain, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(gain - reference) / np.linalg.norm(reference))


def least_squares_gain(states, actions) -> np.ndarray:
    """`[m, n]` the K of the least-squares fit u = -K x of `actions [N, m]` on `states [N, n]`."""
    x, u = np.asarray(states, np.float64), np.asarray(actions, np.float64)
    return -np.linalg.lstsq(x, u, rcond=None)[0].T


def distill_gain(problem: LQProblem, teacher: Planner, *, states: int = 128, steps: int = 300, seed: int = 0,
                 lr: float = 0.01, bound: float = 10.0) -> dict:
    """Distil `teacher` into a linear policy on `problem` and measure the gains against the exact ones.

    The teacher plans for `states` beliefs at once (`LQProblem.label_states(states, seed)`), and its
    first actions are the labels (`Distiller.add_plan`, target `"action"`); a linear student (`PolicyConfig(layers=0)`,
    loss `"mse"`, Adam at `lr`, `steps` steps of 256 labels) is fitted to them. The student's box
    is [-bound, bound], wider than the model's [-1, 1], so that its tanh is linear to 0.12 % over
    the labels (|u| <= 0.6); its gain is the least-squares fit u = -K x of its deterministic
    actions on fresh states (`label_states(states, seed + 1)`). A converged teacher labels
    u = -K_0(H) x exactly (`LQProblem.gains`), so the reference is K_0(H), not the DARE gain.

    Returns:
        `student`, `teacher` (the least-squares gain of the labels), `finite` (K_0(H)), `dare`, all
        `[m, n]`; `student_error`, `teacher_error` (each against K_0(H)), `student_vs_dare`,
        `finite_vs_dare` (relative Frobenius errors, `gain_error`); `model_evals` (the teacher's per
        label) and `teacher_ms` (per label).

    Source: distillation as in `planners.distill` (DAgger's relabelling, Ross et al. 2011); the
    exact gains by the Riccati recursion (e.g. Anderson & Moore, "Optimal Control", 1990).
    """
    from latentplan.planners.distill import DistillConfig, Distiller
    from latentplan.planners.policy import PolicyConfig

    model, objective, _ = problem.build()
    n, m = problem.B.shape
    x = problem.label_states(states, seed)
    config = DistillConfig(policy=PolicyConfig(layers=0), loss="mse", lr=lr, batch_size=256, label_batch=states,
                           init_seed=seed)
    student = Distiller(config, n, m, [-bound] * m, [bound] * m)
    g = torch.Generator().manual_seed(seed)
    beliefs = model.from_observation(torch.as_tensor(x, dtype=torch.float32))
    start = time.perf_counter()
    plan = teacher.plan(objective, beliefs, generator=g)
    teacher_ms = 1000.0 * (time.perf_counter() - start) / states
    student.add_plan(objective, beliefs, plan)
    labels = plan.actions[:, 0].detach().numpy()
    student.train(steps, generator=g)
    fresh = problem.label_states(states, seed + 1)
    acted = student.policy.act(model.from_observation(torch.as_tensor(fresh, dtype=torch.float32)), deterministic=True)
    out = {"student": least_squares_gain(fresh, acted.numpy()), "teacher": least_squares_gain(x, labels),
           "finite": problem.gains()[0], "dare": problem.dare_gain()}
    out.update(student_error=gain_error(out["student"], out["finite"]), teacher_error=gain_error(out["teacher"], out["finite"]),
               student_vs_dare=gain_error(out["student"], out["dare"]), finite_vs_dare=gain_error(out["finite"], out["dare"]),
               model_evals=int(plan.info.get("model_evals", 0)) / states, teacher_ms=teacher_ms)
    return out


def lq_family(count: int = 20, seed: int = 0, *, max_dim: int = 6, max_actions: int = 3, max_horizon: int = 20,
              max_cond: float = 100.0, u_max: float = 0.6, max_angle: float = 90.0) -> list[LQProblem]:
    """`count` random LQ problems (see the module docstring), reproducible from `seed`.

    n is drawn from 2..max_dim, m from 1..min(max_actions, n), H from 8..max_horizon; the spectral
    radius of A from [0.9, 1.1], the rotation from 0.2 to 1 times `max_angle` degrees per step; the
    condition numbers of Q, R and Qf - Q from [1, max_cond]. x0 is a random direction scaled so
    that max |u*| = u_max. The default 90 degrees gives optimal actions that often change sign
    from one step to the next; a small `max_angle` (e.g. 10) gives smooth ones (`smoothness`),
    from the same random draws otherwise.

    Raises:
        ValueError: `count` < 1, `max_dim` < 2, `max_actions` < 1, `max_horizon` < 8 or `max_angle`
            not in (0, 180].
    """
    if count < 1 or max_dim < 2 or max_actions < 1 or max_horizon < 8 or not 0.0 < max_angle <= 180.0:
        raise ValueError(f"lq_family: need count >= 1, max_dim >= 2, max_actions >= 1, max_horizon >= 8, "
                         f"0 < max_angle <= 180; got {count}, {max_dim}, {max_actions}, {max_horizon}, {max_angle}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(2, max_dim + 1))
        m = int(rng.integers(1, min(max_actions, n) + 1))
        h = int(rng.integers(8, max_horizon + 1))
        A = _dynamics(rng, n, (0.9, 1.1), math.radians(max_angle))
        B = rng.normal(size=(n, m)) / math.sqrt(n)
        Q = _spd(rng, n, rng.uniform(1.0, max_cond))
        R = _spd(rng, m, rng.uniform(1.0, max_cond), scale=rng.uniform(0.1, 1.0))
        Qf = Q + _spd(rng, n, rng.uniform(1.0, max_cond), scale=rng.uniform(0.5, 2.0))
        x0 = rng.normal(size=n)
        u, _ = lq_optimum(A, B, Q, R, Qf, x0, h)
        x0 = x0 * (u_max / np.abs(u).max())
        u, j = lq_optimum(A, B, Q, R, Qf, x0, h)
        out.append(LQProblem(A, B, Q, R, Qf, x0, h, u, j))
    return out


@dataclass(frozen=True)
class TrapProblem:
    """One deceptive chain: cells p in [-H, H], start 0, p' = p + round(clip(u, -1, 1)), the reward of
    arriving in p is `lure` for p <= -1, `-cost` for 1 <= p <= k, `prize` for p > k, 0 at 0.

    Attributes:
        k: the trap's length (the right path's return trails the lure's for k steps); lure, cost,
        prize; horizon H; discount gamma; value_star the optimal return; margin the optimal return
        minus the best return of a sequence that does not start to the right (> 0).
    """

    k: int
    lure: float
    cost: float
    prize: float
    horizon: int
    discount: float
    value_star: float
    margin: float

    def rewards(self) -> np.ndarray:
        """`[2H + 1]` the reward of arriving in cell p, at index p + H."""
        p = np.arange(-self.horizon, self.horizon + 1)
        return np.where(p <= -1, self.lure, np.where(p == 0, 0.0, np.where(p <= self.k, -self.cost, self.prize)))

    def first_action_ok(self, first_action: float) -> bool:
        """Whether a first action moves right (round(clip(u)) = +1), the optimal first move."""
        return float(np.round(np.clip(first_action, -1.0, 1.0))) == 1.0

    def build(self) -> tuple[AnalyticModel, Objective, object]:
        """`(model, objective, start belief [1])` with the objective's discount gamma; bounds |u| <= 1."""
        table = torch.as_tensor(self.rewards(), dtype=torch.float32)
        h = self.horizon

        def reward(x):
            return table[(x[:, 0].round().long() + h).clamp(0, 2 * h)]

        model = AnalyticModel(lambda x, u: x + torch.round(u.clamp(-1.0, 1.0)), reward, 1, [-1.0], [1.0])
        return model, Objective(model, discount=self.discount), model.initial(1)


def trap_values(rewards: np.ndarray, horizon: int, discount: float) -> np.ndarray:
    """`[3]` the optimal return from cell 0 after each first move -1, 0, +1 (dynamic programming)."""
    v = np.zeros(rewards.shape[0])
    for _ in range(horizon - 1):
        best = np.full_like(v, -np.inf)
        for d in (-1, 0, 1):
            nxt = np.clip(np.arange(v.shape[0]) + d, 0, v.shape[0] - 1)
            best = np.maximum(best, rewards[nxt] + discount * v[nxt])
        v = best
    c = horizon
    return np.array([rewards[c + d] + discount * v[c + d] for d in (-1, 0, 1)])


def trap_family(count: int = 20, seed: int = 0, *, min_trap: int = 2, max_trap: int = 5,
                max_horizon: int = 12) -> list[TrapProblem]:
    """`count` random trap chains (see `TrapProblem`), reproducible from `seed`.

    k from min_trap..max_trap, H from k + 3..max(k + 3, max_horizon), the lure from [0.2, 1], the
    trap's cost from [0.5, 2], gamma from {1, 0.97}; the prize makes the right path's return 1.2 to
    2 times the lure's (H * lure), so moving right first is the unique optimum.

    Raises:
        ValueError: `count` < 1 or `min_trap` < 1 or `max_trap` < `min_trap`.
    """
    if count < 1 or min_trap < 1 or max_trap < min_trap:
        raise ValueError(f"trap_family: need count >= 1 and 1 <= min_trap <= max_trap; got {count}, {min_trap}, {max_trap}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        k = int(rng.integers(min_trap, max_trap + 1))
        h = int(rng.integers(k + 3, max(k + 3, max_horizon) + 1))
        lure, cost = rng.uniform(0.2, 1.0), rng.uniform(0.5, 2.0)
        gamma = float(rng.choice([1.0, 0.97]))
        w = gamma ** np.arange(h)
        lure_return = lure * w.sum()
        prize = (rng.uniform(1.2, 2.0) * lure_return + cost * w[:k].sum()) / w[k:].sum()
        draft = TrapProblem(k, lure, cost, prize, h, gamma, 0.0, 0.0)
        q = trap_values(draft.rewards(), h, gamma)
        if q[2] > max(q[0], q[1]):
            out.append(TrapProblem(k, lure, cost, prize, h, gamma, float(q[2]), float(q[2] - max(q[0], q[1]))))
    return out
