"""A policy network on latent beliefs, and the planner that acts with any policy.

The network is the tanh-squashed Gaussian policy of SAC (Haarnoja et al. 2018) and TD-MPC2
(Hansen, Su & Wang 2024), which also use it as a proposal for their planners. Here:
`GaussianPolicy` (saved and loaded by `latentplan.io.save_policy` / `load_policy`), `policy_rollout` (rolling any `Policy`
through a model; `CEM` and `GradientPlanner` use it for their proposals) and `PolicyPlanner` (a
`Planner` that acts with a policy in one forward pass). Training a policy from a planner's
labels is `planners.distill`.

Shapes: N beliefs (rows of a `LatentState`), F = D + S latent features, A action dimensions,
H the horizon, K actions per belief.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentplan.worldmodels.state import LatentState

from .validate import check_int, check_plan_inputs
from .base import Plan, Policy
from .objective import Objective, discounted, rank_returns

__all__ = ["GaussianPolicy", "PolicyConfig", "PolicyPlanner", "gaussian_log_density", "policy_rollout"]

_EDGE = 1e-6  # actions at a bound are pulled in by this much (in [-1, 1] units) before atanh
_LOG2 = math.log(2.0)


# --------------------------------------------------------------------------- the policy network


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture of `GaussianPolicy`.

    Attributes:
        hidden: units of every hidden layer.
        layers: hidden layers of the MLP on the latent features. `0`: none, so the mean and the
            pre-squash log standard deviation are affine in the features (a linear policy: the
            class of the LQR's u = -K x, tests/test_distill.py; with bounds wide beside the
            actions, tanh is linear over them).
        layer_norm: apply LayerNorm after every hidden linear layer (as TD-MPC2 does). Off by
            default: LayerNorm discards the scale of its input, which hurts policies that must
            be linear in the state (the linear-quadratic regulator).
        min_log_std: lower bound of the log standard deviation of the pre-tanh Gaussian (u is
            in units of the action half-range near the centre of the box). TD-MPC2 bounds it
            to [-10, 2]; -5 keeps the density and its gradients bounded.
        max_log_std: upper bound of the pre-tanh log standard deviation.

    Raises:
        ValueError: on `hidden < 1`, `layers < 0`, a non-finite `min_log_std`/`max_log_std`
            (an infinite bound gave infinite standard deviations and NaN samples), or
            `min_log_std >= max_log_std`.
    """

    hidden: int = 256
    layers: int = 2
    layer_norm: bool = False
    min_log_std: float = -5.0
    max_log_std: float = 2.0

    def __post_init__(self) -> None:
        check_int(self, "hidden", minimum=1)
        check_int(self, "layers", minimum=0)
        if not (math.isfinite(self.min_log_std) and math.isfinite(self.max_log_std)):
            raise ValueError(
                f"PolicyConfig: min_log_std and max_log_std must be finite; got {self.min_log_std}, {self.max_log_std}"
            )
        if not self.min_log_std < self.max_log_std:
            raise ValueError(
                f"PolicyConfig: min_log_std ({self.min_log_std}) must be < max_log_std ({self.max_log_std})"
            )


class GaussianPolicy(nn.Module):
    """A tanh-squashed diagonal Gaussian over actions, on latent features; a `Policy`.

    An MLP maps the features `[N, F]` of a belief to a mean `mu [N, A]` and a log standard
    deviation `[N, A]` of a Gaussian over an unbounded u; the action is
    `low + (high - low) * (tanh(u) + 1) / 2`, so every action, sampled or not, lies in
    `[low, high]` (also for inputs with NaN-free extreme values: the result is clamped against
    rounding). The deterministic action (the mode used to act) is the squashed mean.

    Args:
        feature_dim: F, the size of `LatentState.features()` (D + S of the world model).
        action_dim: A.
        low: `[A]` lower action bounds (the model's `action_low`).
        high: `[A]` upper action bounds; every entry must exceed `low`.
        config: `PolicyConfig` (defaults if `None`).

    Raises:
        ValueError: if `feature_dim` or `action_dim` is not an int >= 1, the bounds are not `[A]`, not
            finite, or not `low < high` everywhere; from `act`/`log_prob`/`forward`, if the input
            does not have F features.

    Source: the squashed Gaussian of SAC (Haarnoja et al. 2018, Appendix C), as TD-MPC2's policy
    prior (Hansen, Su & Wang 2024).
    """

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        low: Sequence[float] | Tensor,
        high: Sequence[float] | Tensor,
        config: PolicyConfig | None = None,
    ) -> None:
        super().__init__()
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in (feature_dim, action_dim)):
            raise ValueError(f"GaussianPolicy: feature_dim and action_dim must be ints >= 1; got {feature_dim!r}, {action_dim!r}")
        low_t = torch.as_tensor(low, dtype=torch.float32).detach().clone().reshape(-1)
        high_t = torch.as_tensor(high, dtype=torch.float32).detach().clone().reshape(-1)
        if low_t.shape != (action_dim,) or high_t.shape != (action_dim,):
            raise ValueError(
                f"GaussianPolicy: low and high must be [A={action_dim}]; got {tuple(low_t.shape)}, {tuple(high_t.shape)}"
            )
        if not (torch.isfinite(low_t).all() and torch.isfinite(high_t).all()) or bool((high_t <= low_t).any()):
            raise ValueError(f"GaussianPolicy: bounds must be finite with low < high; got {low_t.tolist()}, {high_t.tolist()}")
        self.config = config = config or PolicyConfig()
        self.feature_dim = int(feature_dim)
        self.action_dim = int(action_dim)
        self.register_buffer("action_low", low_t, persistent=False)
        self.register_buffer("action_high", high_t, persistent=False)
        self.register_buffer("_half", (high_t - low_t) / 2, persistent=False)
        layers: list[nn.Module] = []
        width = feature_dim
        for _ in range(config.layers):
            layers.append(nn.Linear(width, config.hidden))
            if config.layer_norm:
                layers.append(nn.LayerNorm(config.hidden))
            layers.append(nn.ELU())
            width = config.hidden
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, 2 * action_dim)
        with torch.no_grad():  # start near "act in the middle of the box, std about 1"
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def extra_repr(self) -> str:
        return f"feature_dim={self.feature_dim}, action_dim={self.action_dim}"

    # ------------------------------------------------------------------ squashing
    def squash(self, u: Tensor) -> Tensor:
        """Unbounded `u [..., A]` -> actions `[..., A]` in `[low, high]`."""
        a = torch.addcmul(self.action_low, self._half, torch.tanh(u) + 1)
        return torch.clamp(a, self.action_low, self.action_high)

    def unsquash(self, actions: Tensor) -> Tensor:
        """Actions `[..., A]` -> u `[..., A]` (inverse of `squash`; actions at or past a bound are
        pulled into the open box by 1e-6 of the half-range first, so u stays finite, |u| <= 7.3)."""
        y = (actions - self.action_low) / self._half - 1
        return torch.atanh(y.clamp(-1 + _EDGE, 1 - _EDGE))

    # ------------------------------------------------------------------ the network
    def _features(self, x: LatentState | Tensor, fn: str) -> Tensor:
        f = x.features() if isinstance(x, LatentState) else x
        if f.dim() != 2 or f.shape[1] != self.feature_dim:
            raise ValueError(
                f"GaussianPolicy.{fn}: expected features [N, F={self.feature_dim}] (a LatentState with D + S = "
                f"{self.feature_dim}); got {tuple(f.shape)}"
            )
        return f

    def forward(self, features: LatentState | Tensor) -> tuple[Tensor, Tensor]:
        """`features [N, F]` (or a `LatentState [N]`) -> `(mean [N, A], log_std [N, A])` of the
        pre-tanh Gaussian; `log_std` is squashed softly into `[min_log_std, max_log_std]`."""
        f = self._features(features, "forward")
        out = self.head(self.trunk(f))
        mean, raw = out.chunk(2, dim=-1)
        lo, hi = self.config.min_log_std, self.config.max_log_std
        # raw = 0 gives log_std = 0 (std 1 in u units) when 0 is inside the bounds
        centre = min(max((0.0 - lo) / (hi - lo), 0.05), 0.95)
        log_std = lo + (hi - lo) * torch.sigmoid(raw + _logit(centre))
        return mean, log_std

    @torch.no_grad()
    def act(
        self,
        state: LatentState,
        *,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> Tensor:
        """One action per belief: `state [N]` -> `[N, A]` within `[low, high]` (the `Policy` protocol).

        Args:
            state: `[N]` beliefs (their `features()` must have F entries).
            generator: randomness of the sample (unused when `deterministic`).
            deterministic: return the mode, the squashed mean, instead of a sample.

        Raises:
            ValueError: if the features are not `[N, F]`.
        """
        if deterministic:  # the mode: the log std is not needed
            f = self._features(state, "act")
            return self.squash(self.head(self.trunk(f))[:, : self.action_dim])
        mean, log_std = self(state)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.squash(mean + log_std.exp() * eps)

    def log_prob(self, features: LatentState | Tensor, actions: Tensor) -> Tensor:
        """Log density of actions under the squashed Gaussian, in nats per unit action volume.

        Args:
            features: `[N, F]` features (or a `LatentState [N]`).
            actions: `[N, A]`, or `[N, K, A]` for K actions per belief; values at a bound are
                pulled in by 1e-6 of the half-range (see `unsquash`).

        Returns:
            `[N]` or `[N, K]`: log N(u; mu, sigma) - sum_a log |d action / d u| with
            u = `unsquash(actions)`.

        Raises:
            ValueError: on a features or actions shape that does not fit.
        """
        mean, log_std = self(features)
        n = mean.shape[0]
        if actions.dim() == 3:
            mean, log_std = mean[:, None], log_std[:, None]
        if actions.dim() not in (2, 3) or actions.shape[0] != n or actions.shape[-1] != self.action_dim:
            raise ValueError(
                f"GaussianPolicy.log_prob: actions must be [N={n}, A={self.action_dim}] or [N, K, A]; "
                f"got {tuple(actions.shape)}"
            )
        u = self.unsquash(actions)
        return (gaussian_log_density(u, mean, log_std) - self.log_det_jacobian(u)).sum(-1)

    def log_det_jacobian(self, u: Tensor) -> Tensor:
        """`[..., A]` log |d action / d u| of the squashing at `u [..., A]`, per dimension:
        log(half) + log(1 - tanh(u)^2), computed stably as log(half) + 2 (log 2 - u - softplus(-2u))."""
        return torch.log(self._half) + 2 * (_LOG2 - u - F.softplus(-2 * u))

    @property
    def half_range(self) -> Tensor:
        """`[A]` half the width of the action box, (high - low) / 2 (action units)."""
        return self._half


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def gaussian_log_density(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """Log density of a diagonal Gaussian per dimension: `u`, `mean`, `log_std` `[..., A]`
    (broadcastable) -> `[..., A]`, log N(u; mean, exp(log_std)^2) in nats."""
    return -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)


# --------------------------------------------------------------------------- rollouts and the planner


def policy_rollout(
    policy: Policy,
    objective: Objective,
    state: LatentState,
    horizon: int,
    *,
    generator: torch.Generator | None = None,
    deterministic: bool = True,
    with_returns: bool = False,
) -> tuple[Tensor, Tensor | None, int]:
    """Roll a policy through the model: a_t = policy(s_t), s_{t+1} = imagine_step(s_t, a_t).

    Args:
        policy: any `Policy` (`act(state, generator=, deterministic=) -> [N, A]`).
        objective: the objective whose model (and, with `with_returns`, rewards and value) is used.
        state: `[N]` start beliefs.
        horizon: H >= 1 actions per sequence.
        generator: randomness of the policy's samples and of the model's stochastic transitions.
        deterministic: act with the policy's mode (else sample).
        with_returns: also compute the discounted return of the rollout (H model steps plus the
            rewards and the terminal value); without it only the H - 1 steps needed to reach
            the state of the last action are taken.

    The policy's actions are clipped into the model's action bounds before the model steps with
    them (as MCTS clips its proposals), so the sequence is always a valid plan.

    Returns:
        `(actions [N, H, A], returns [N] or None, model_evals)`: the closed-loop sequence taken,
        its return `sum_t gamma^t (prod_{k<t} c_k) r_t + gamma^H (prod_{k<H} c_k) (V + T)(s_H)`
        (c_k the objective's continuation, 1 without one; same as `objective.returns` on the
        same model samples), and the imagined transitions spent (`N * H` or `N * (H - 1)`).

    Raises:
        ValueError: if `horizon < 1` or the policy returns actions that are not `[N, A]`.
    """
    if horizon < 1:
        raise ValueError(f"policy_rollout: horizon must be >= 1; got {horizon}")
    n, a_dim = state.batch, objective.action_dim
    low, high = objective.model.action_low.to(state.device), objective.model.action_high.to(state.device)
    acts = []
    total = torch.zeros(n, device=state.device) if with_returns else None
    scale, evals = 1.0, 0
    alive: Tensor | None = None  # prod_{k<t} c_k, with a continuation
    for t in range(horizon):
        a = policy.act(state, generator=generator, deterministic=deterministic)
        if a.shape != (n, a_dim):
            raise ValueError(f"policy_rollout: the policy's act must return [N={n}, A={a_dim}]; got {tuple(a.shape)}")
        a = torch.maximum(torch.minimum(a, high), low).to(a.dtype)  # a policy with wider bounds than the model's
        acts.append(a)
        if with_returns:
            if objective.terminates:
                state, r, c = objective.transition(state, a, generator=generator)
                total = total + discounted(r, scale if alive is None else scale * alive)
                alive = c if alive is None else alive * c
            else:
                state, r = objective.step(state, a, generator=generator)
                total = total + scale * r
            scale *= objective.discount
            evals += n
        elif t < horizon - 1:
            state = objective.model.imagine_step(state, a, generator=generator)
            evals += n
    if with_returns and objective.bootstraps:
        total = total + discounted(objective.bootstrap(state), scale if alive is None else scale * alive)
    return torch.stack(acts, dim=1), total, evals


class PolicyPlanner:
    """A `Planner` that acts with a policy: one forward pass per decision.

    With `horizon=1` (the default) and `evaluate=False`, `plan` is one call of
    `policy.act(state, deterministic=...)`: no model evaluation at all, which is what a robot
    runs when a planner is too slow for its control rate. With `horizon > 1`, or `evaluate=True`,
    the policy is rolled through the model (`policy_rollout`) to give a horizon-H plan and its
    imagined return.

    Args:
        policy: any `Policy` (a `GaussianPolicy`, or an object with the same `act`).
        horizon: H, actions per plan (>= 1).
        deterministic: act with the policy's mode (default) rather than a sample drawn with the
            plan's `generator`.
        evaluate: with `horizon=1`, still imagine the step and report its return as `value`.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]` (the policy's actions clipped into the model's action bounds) and
    `value [B]`: the imagined return of the rollout (`-inf` where it is NaN or +-inf, as for
    every planner: `objective.rank_returns`), or NaN where the plan was not evaluated
    (`horizon=1`, `evaluate=False`; NaN, not 0, since nothing was estimated, and
    `info["evaluated"]` is False). `info`: `iterations` (1), `model_evals` (`B * H` with a
    rollout, else 0), `nonfinite` (non-finite returns), `plan_ms`. `warm_start` and `deadline` are accepted and ignored (a
    single pass is never cut short).

    Raises:
        ValueError: if `horizon` is not an int >= 1 (here; 2.5 used to become 2) or the policy's
            actions are not `[B, A]` (in `plan`).
        TypeError: if `policy` has no `act` method (here).

    Source: the policy network of AlphaZero (Silver et al. 2018) acting without search; DAgger
    (Ross et al. 2011) for the student that acts.
    """

    def __init__(self, policy: Policy, *, horizon: int = 1, deterministic: bool = True, evaluate: bool = False) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
            raise ValueError(f"PolicyPlanner: horizon must be an int >= 1; got {horizon!r}")
        if not callable(getattr(policy, "act", None)):
            raise TypeError(f"PolicyPlanner: policy must have an act(state, generator=, deterministic=) method; got {type(policy).__name__}")
        self.policy = policy
        self.horizon = int(horizon)
        self.deterministic = bool(deterministic)
        self.evaluate = bool(evaluate)

    def __repr__(self) -> str:
        return (f"PolicyPlanner(horizon={self.horizon}, deterministic={self.deterministic}, "
                f"evaluate={self.evaluate})")

    @torch.no_grad()
    def plan(
        self,
        objective: Objective,
        state: LatentState,
        *,
        warm_start: Plan | None = None,
        generator: torch.Generator | None = None,
        deadline: float | None = None,
    ) -> Plan:
        """Act (and roll out) for every belief in `state` (`[B]` rows); see the class docstring.

        The policy's actions are clipped into the model's action bounds. `warm_start` and `deadline`
        are checked, then ignored.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H, A]`; `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                the policy's actions are not `[B, A]`.
        """
        t0 = time.perf_counter()
        check_plan_inputs("PolicyPlanner.plan", objective, state, warm_start=warm_start, generator=generator,
                          deadline=deadline)
        b = state.batch
        if self.horizon == 1 and not self.evaluate:
            a = self.policy.act(state, generator=generator, deterministic=self.deterministic)
            if a.shape != (b, objective.action_dim):
                raise ValueError(
                    f"PolicyPlanner.plan: the policy's act must return [B={b}, A={objective.action_dim}]; got {tuple(a.shape)}"
                )
            low, high = objective.model.action_low.to(a.device), objective.model.action_high.to(a.device)
            a = torch.maximum(torch.minimum(a, high), low).to(a.dtype)  # into the model's bounds
            value = torch.full((b,), float("nan"), device=a.device)
            info = {"iterations": 1, "model_evals": 0, "nonfinite": 0, "evaluated": False,
                    "plan_ms": (time.perf_counter() - t0) * 1e3}
            return Plan(a[:, None], value, info)
        actions, ret, evals = policy_rollout(
            self.policy, objective, state, self.horizon, generator=generator,
            deterministic=self.deterministic, with_returns=True,
        )
        value, nonfinite = rank_returns(ret)  # NaN/+-inf report -inf, as every other planner's value
        info = {"iterations": 1, "model_evals": evals, "nonfinite": int(nonfinite),
                "plan_ms": (time.perf_counter() - t0) * 1e3}
        return Plan(actions, value, info)

