"""The cross-entropy method (CEM) over action sequences, as PlaNet plans (Hafner et al. 2019, Sec. 3;
the CEM itself: Rubinstein 1997)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .base import Plan
from .objective import Objective, rank_returns

__all__ = ["CEMConfig", "CEM"]


@dataclass(frozen=True)
class CEMConfig:
    """Settings of `CEM`. Defaults are PlaNet's (Hafner et al. 2019, Appendix).

    Attributes:
        horizon: H, planning steps per sequence (PlaNet: 12).
        iterations: I, refits of the sampling distribution (PlaNet: 10).
        candidates: J, sequences sampled per iteration and environment (PlaNet: 1000).
        elites: K, best sequences the distribution is refitted to (PlaNet: 100).
        init_std: standard deviation of the first sampling distribution, per action
            dimension, in action units (PlaNet: 1 with mean 0).
        min_std: floor of the refitted standard deviation (0 lets it collapse, as PlaNet does).
        warm_start_std: initial standard deviation when a warm start gives the mean.
    """

    horizon: int = 12
    iterations: int = 10
    candidates: int = 1000
    elites: int = 100
    init_std: float = 1.0
    min_std: float = 0.0
    warm_start_std: float = 1.0

    def __post_init__(self) -> None:
        for name in ("horizon", "iterations", "candidates", "elites"):
            if getattr(self, name) < 1:
                raise ValueError(f"CEMConfig.{name} must be >= 1; got {getattr(self, name)}")
        if self.elites > self.candidates:
            raise ValueError(
                f"CEMConfig.elites ({self.elites}) cannot exceed candidates ({self.candidates})"
            )
        if self.init_std <= 0 or self.min_std < 0 or self.warm_start_std <= 0:
            raise ValueError("CEMConfig: init_std and warm_start_std must be > 0 and min_std >= 0")

    @property
    def model_evals(self) -> int:
        """Imagined transitions per decision and environment: H * I * J."""
        return self.horizon * self.iterations * self.candidates


class CEM:
    """Cross-entropy method planner: sample J action sequences from a diagonal Gaussian, keep the
    top K by imagined return, refit the Gaussian to them, repeat I times; return the mean.

    Batched over B environments in one call: the model sees `B * J` rows per step.
    Candidates are clipped to the model's action bounds. Non-finite returns rank as `-inf`.

    Args:
        config: `CEMConfig` (PlaNet's settings by default).

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]` (the final mean), `value [B]` (the mean imagined return of the final
    elites) and `info` keys `iterations`, `model_evals`, `nonfinite`, `plan_ms`.

    Raises (from `plan`):
        ValueError: if `warm_start.actions` is not `[B, H, A]`.

    Source: Hafner et al. 2019 (PlaNet), "Learning Latent Dynamics for Planning from Pixels".
    """

    def __init__(self, config: CEMConfig | None = None, **overrides) -> None:
        if config is None:
            config = CEMConfig(**overrides)
        elif overrides:
            config = CEMConfig(**{**config.__dict__, **overrides})
        self.config = config

    def __repr__(self) -> str:
        return f"CEM({self.config})"

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
        """Plan for every belief in `state` (`[B]` rows); see the class docstring."""
        t0 = time.perf_counter()
        c = self.config
        model = objective.model
        b, h, j, k, a = state.batch, c.horizon, c.candidates, c.elites, objective.action_dim
        dev = state.device
        low = model.action_low.to(dev)
        high = model.action_high.to(dev)
        if warm_start is not None:
            if warm_start.actions.shape != (b, h, a):
                raise ValueError(
                    f"CEM.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; "
                    f"got {tuple(warm_start.actions.shape)}"
                )
            mean = warm_start.actions.to(dev).clone()
            std = torch.full((b, h, a), c.warm_start_std, device=dev)
        else:
            mean = torch.zeros(b, h, a, device=dev)
            std = torch.full((b, h, a), c.init_std, device=dev)
        starts = state.expand(j)
        nonfinite = torch.zeros((), dtype=torch.long, device=dev)
        elite_returns = torch.zeros(b, k, device=dev)
        iterations = 0
        for _ in range(c.iterations):
            noise = torch.randn(b, j, h, a, generator=generator, device=dev)
            cand = torch.maximum(torch.minimum(mean[:, None] + std[:, None] * noise, high), low)
            ret = objective.returns(starts, cand.reshape(b * j, h, a), generator=generator)
            ret, nf = rank_returns(ret.reshape(b, j))
            nonfinite = nonfinite + nf
            elite_returns, idx = ret.topk(k, dim=1)
            elites = cand.gather(1, idx[:, :, None, None].expand(b, k, h, a))
            mean = elites.mean(dim=1)
            std = elites.std(dim=1, unbiased=False).clamp_min(c.min_std)
            iterations += 1
            if deadline is not None and time.perf_counter() >= deadline:
                break
        info = {
            "iterations": iterations,
            "model_evals": iterations * b * j * h,
            "nonfinite": int(nonfinite),
            "plan_ms": (time.perf_counter() - t0) * 1e3,
        }
        return Plan(mean, elite_returns.mean(dim=1), info)
