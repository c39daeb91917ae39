"""CMA-ES over open-loop action sequences: the covariance matrix adaptation evolution strategy
(Hansen & Ostermeier 2001; the defaults and update equations of Hansen 2016, "The CMA Evolution
Strategy: A Tutorial", arXiv:1604.00772, Sec. 3 and Table 1), batched over environments.

CEM refits a diagonal Gaussian to its elites, so on a problem whose action variables are coupled
(the actions of different steps act on the same state) it shrinks along the narrow directions and
stalls before the optimum. CMA-ES learns the full covariance of the search distribution over all
H x A variables and controls its step size separately, so it keeps moving along such valleys; on the
linear-quadratic family (`latentplan.families.lq_family`) its median excess cost at 120,000 model
evaluations is orders of magnitude below CEM's (docs/planners.md)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .base import Plan
from .objective import Objective, rank_returns
from .validate import check_int, check_plan_inputs, check_positive, require_finite_bounds

__all__ = ["CMAES", "CMAESConfig", "cma_constants"]


@dataclass(frozen=True)
class CMAESConfig:
    """Settings of `CMAES`.

    Attributes:
        horizon: H, planning steps per sequence.
        population: λ, sequences sampled per iteration and environment; `None` (default) is
            Hansen's default 4 + floor(3 ln d), d = H·A the number of action variables (16 for
            PlaNet's H = 12, A = 6). On the LQ family a larger population spent the same budget
            in fewer iterations and ended further from the optimum (docs/planners.md).
        init_std: σ0, the first step size, in units of half the action range (the search runs in
            coordinates where every action bound is [-1, 1]).
        warm_start_std: σ0 when a warm start gives the first mean.
        max_evals: the budget, in imagined transitions per decision and environment: an
            iteration is not started if it would exceed it (the first always runs). Default
            120,000, PlaNet's budget per decision (H·I·J = 12·10·1000).
        iterations: a cap on the iterations (`None`: only the budget, the tolerance and the
            deadline stop the search).
        tol: convergence: an environment has converged when σ·sqrt(largest eigenvalue of C), the
            largest standard deviation of the search distribution, falls below `tol` (in units
            of half the action range); the search stops when every environment has converged.
        return_best: return the best sequence evaluated in any iteration instead of the final
            mean (with a stochastic model, the maximum of noisy estimates is optimistic).

    Raises:
        ValueError: a count below its minimum, or a non-positive std, budget or tolerance
            (naming the field).
    """

    horizon: int = 12
    population: int | None = None
    init_std: float = 0.5
    warm_start_std: float = 0.25
    max_evals: int = 120_000
    iterations: int | None = None
    tol: float = 1e-4
    return_best: bool = False

    def __post_init__(self) -> None:
        check_int(self, "horizon", minimum=1)
        check_int(self, "population", minimum=4, optional=True)
        check_int(self, "max_evals", minimum=1)
        check_int(self, "iterations", minimum=1, optional=True)
        check_positive(self, "init_std", "warm_start_std", "tol")

    def lam(self, action_dim: int) -> int:
        """λ for this horizon and action dimension A (see `population`)."""
        if self.population is not None:
            return self.population
        return 4 + int(3 * math.log(self.horizon * action_dim))


def cma_constants(d: int, lam: int) -> dict[str, float | Tensor]:
    """The strategy parameters of CMA-ES for dimension `d` and population `lam` (Hansen 2016, Table 1,
    positive recombination weights only): `weights [μ]` (sum 1), `mu`, `mu_eff`, `c_sigma`, `d_sigma`,
    `c_c`, `c_1`, `c_mu`, `chi` (E||N(0, I_d)||).

    Raises:
        ValueError: `d` < 1 or `lam` < 2.
    """
    if d < 1 or lam < 2:
        raise ValueError(f"cma_constants: need d >= 1 and lam >= 2; got d={d}, lam={lam}")
    mu = lam // 2
    w = torch.log(torch.tensor((lam + 1) / 2, dtype=torch.float64)) - torch.log(torch.arange(1, mu + 1, dtype=torch.float64))
    w = w / w.sum()
    mu_eff = float(1.0 / (w**2).sum())
    c_sigma = (mu_eff + 2) / (d + mu_eff + 5)
    d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (d + 1)) - 1) + c_sigma
    c_c = (4 + mu_eff / d) / (d + 4 + 2 * mu_eff / d)
    c_1 = 2 / ((d + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((d + 2) ** 2 + mu_eff))
    chi = math.sqrt(d) * (1 - 1 / (4 * d) + 1 / (21 * d * d))
    return dict(weights=w, mu=mu, mu_eff=mu_eff, c_sigma=c_sigma, d_sigma=d_sigma, c_c=c_c, c_1=c_1, c_mu=c_mu, chi=chi)


class CMAES:
    """CMA-ES planner: sample λ sequences from N(m, σ² C) over all H·A action variables, rank them by
    imagined return, move the mean to the weighted best half, adapt C (rank-one and rank-μ updates)
    and σ (cumulative step-size adaptation), until the budget is spent or the distribution has
    converged.

    One search per environment, batched: B environments give one model call of `B · (λ + 1)` rows
    per step. The search runs in normalised coordinates x ∈ [-1, 1]^(H·A) (action = centre +
    half-range · x). Bounds: a candidate is evaluated at its projection into the box (clip) and the
    mean is projected after each update; the candidate's unprojected step drives the adaptation, so
    the box never biases C. Each iteration also evaluates the current mean (one more row), which
    counts for `return_best`; the returned mean is evaluated once more for the plan's value. Non-finite returns rank last (`rank_returns`) and are counted.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan`:
    `actions [B, H, A]` the final mean (or, with `return_best`, the best sequence evaluated),
    `value [B]` its imagined return (the last evaluation of it), and `info` keys `iterations`,
    `model_evals` (imagined transitions, B·(λ+1)·H per iteration), `nonfinite`, `stopped`
    (`"budget"`, `"converged"`, `"iterations"` or `"deadline"`), `sigma` (the final largest
    standard deviation per environment, normalised units) and `plan_ms`. The dtype follows the
    belief (a float64 model plans in float64).

    Raises:
        ValueError: (from `plan`) `warm_start.actions` is not `[B, H, A]`.

    Source: Hansen & Ostermeier 2001, "Completely Derandomized Self-Adaptation in Evolution
    Strategies" (Evolutionary Computation 9(2)); Hansen 2016, "The CMA Evolution Strategy: A
    Tutorial" (arXiv:1604.00772), whose defaults are used here apart from the population.
    """

    def __init__(self, config: CMAESConfig | None = None, **overrides) -> None:
        self.config = dataclasses.replace(config or CMAESConfig(), **overrides)

    def __repr__(self) -> str:
        return f"CMAES({self.config})"

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
        """Plan for every belief in `state` (`[B]` rows) with CMA-ES; see the class docstring.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H, A]`; `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                infinite action bounds (the search runs in [-1, 1] coordinates of the box).
        """
        t0 = time.perf_counter()
        c = self.config
        check_plan_inputs("CMAES.plan", objective, state, warm_start=warm_start, generator=generator, deadline=deadline)
        model = objective.model
        require_finite_bounds("CMAES.plan", model.action_low, model.action_high,
                              "CMA-ES searches in [-1, 1] coordinates of the action box")
        b, h, a = state.batch, c.horizon, objective.action_dim
        dev, dt = state.device, state.deter.dtype
        d = h * a
        lam = c.lam(a)
        k = cma_constants(d, lam)
        w = k["weights"].to(dev, dt)
        mu, mu_eff, cs, ds, cc, c1, cmu, chi = (k[n] for n in ("mu", "mu_eff", "c_sigma", "d_sigma", "c_c", "c_1", "c_mu", "chi"))
        low, high = model.action_low.to(dev, dt), model.action_high.to(dev, dt)
        centre, half = ((high + low) / 2).repeat(h), ((high - low) / 2).repeat(h)  # [d]
        if warm_start is not None:
            if warm_start.actions.shape != (b, h, a):
                raise ValueError(f"CMAES.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; "
                                 f"got {tuple(warm_start.actions.shape)}")
            mean = ((warm_start.actions.to(dev, dt).reshape(b, d) - centre) / half).clamp(-1.0, 1.0)
            sigma = torch.full((b,), c.warm_start_std, device=dev, dtype=dt)
        else:
            mean = torch.zeros(b, d, device=dev, dtype=dt)
            sigma = torch.full((b,), c.init_std, device=dev, dtype=dt)
        cov = torch.eye(d, device=dev, dtype=dt).expand(b, d, d).clone()
        basis = cov.clone()  # B D: C = (B D)(B D)^T
        inv_sqrt = cov.clone()  # C^{-1/2}
        p_sigma = torch.zeros(b, d, device=dev, dtype=dt)
        p_c = torch.zeros(b, d, device=dev, dtype=dt)
        rows = lam + 1
        starts = state.expand(rows)
        per_iteration = rows * h
        nonfinite = torch.zeros((), dtype=torch.long, device=dev)
        best_ret = torch.full((b,), float("-inf"), device=dev, dtype=dt)
        best_x = mean.clone()
        iterations, stopped = 0, "budget"
        while True:
            z = torch.randn((b, lam, d), generator=generator, device=dev, dtype=torch.float32).to(dt)
            y = z @ basis.transpose(1, 2)  # [B, λ, d] ~ N(0, C)
            x = mean[:, None] + sigma[:, None, None] * y
            cand = torch.cat([x.clamp(-1.0, 1.0), mean[:, None]], dim=1)  # the mean is the last row
            actions = (centre + half * cand).reshape(b * rows, h, a)
            ret, nf = rank_returns(objective.returns(starts, actions, generator=generator).reshape(b, rows).to(dt))
            nonfinite = nonfinite + nf
            iterations += 1
            top_ret, top = ret.max(dim=1)
            better = top_ret > best_ret
            best_ret = torch.where(better, top_ret, best_ret)
            best_x = torch.where(better[:, None], cand.gather(1, top[:, None, None].expand(b, 1, d))[:, 0], best_x)
            # selection and recombination over the λ samples (the mean row is not a sample)
            _, order = ret[:, :lam].topk(mu, dim=1)
            y_sel = y.gather(1, order[:, :, None].expand(b, mu, d))  # [B, μ, d]
            y_w = (w[None, :, None] * y_sel).sum(dim=1)  # [B, d]
            moved = (mean + sigma[:, None] * y_w).clamp(-1.0, 1.0)
            y_w = (moved - mean) / sigma[:, None]  # the step the mean took, after the projection
            mean = moved
            # step-size control (cumulative path length)
            p_sigma = (1 - cs) * p_sigma + math.sqrt(cs * (2 - cs) * mu_eff) * (inv_sqrt @ y_w[:, :, None])[:, :, 0]
            norm = p_sigma.norm(dim=1)
            sigma = sigma * torch.exp(((cs / ds) * (norm / chi - 1)).clamp(max=1.0))
            # covariance: rank-one (evolution path) and rank-μ updates
            h_sigma = (norm / math.sqrt(1 - (1 - cs) ** (2 * iterations)) < (1.4 + 2 / (d + 1)) * chi).to(dt)
            p_c = (1 - cc) * p_c + h_sigma[:, None] * math.sqrt(cc * (2 - cc) * mu_eff) * y_w
            rank_mu = torch.einsum("m,bmi,bmj->bij", w, y_sel, y_sel)
            rank_one = p_c[:, :, None] * p_c[:, None, :]
            delta = ((1 - h_sigma) * cc * (2 - cc))[:, None, None]
            cov = (1 - c1 - cmu) * cov + c1 * (rank_one + delta * cov) + cmu * rank_mu
            cov = (cov + cov.transpose(1, 2)) / 2
            eig, vec = torch.linalg.eigh(cov)
            eig = eig.clamp_min(1e-20)
            basis = vec * eig.sqrt()[:, None, :]
            inv_sqrt = (vec * eig.rsqrt()[:, None, :]) @ vec.transpose(1, 2)
            spread = sigma * eig[:, -1].sqrt()
            if bool((spread < c.tol).all()):
                stopped = "converged"
                break
            if c.iterations is not None and iterations >= c.iterations:
                stopped = "iterations"
                break
            if (iterations + 1) * per_iteration + (0 if c.return_best else h) > c.max_evals:
                stopped = "budget"
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "deadline"
                break
        if c.return_best:
            out, value = best_x, best_ret
        else:
            out = mean
            # the final mean has not been evaluated yet: one more row of H transitions gives its value
            value, nf = rank_returns(objective.returns(state, (centre + half * mean).reshape(b, h, a),
                                                       generator=generator).to(dt))
            nonfinite = nonfinite + nf
        evals = b * iterations * per_iteration + (0 if c.return_best else b * h)
        info = {
            "iterations": iterations,
            "model_evals": evals,
            "nonfinite": int(nonfinite),
            "stopped": stopped,
            "sigma": spread.tolist(),
            "plan_ms": (time.perf_counter() - t0) * 1e3,
        }
        return Plan((centre + half * out).reshape(b, h, a), value, info)
