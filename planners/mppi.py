"""Model predictive path integral control (MPPI) over action sequences, as published: Williams, Aldrich
& Theodorou 2017, "Model Predictive Path Integral Control: From Theory to Applications" (J. Guidance,
Control, and Dynamics 40(2)), Algorithm 2, in its information-theoretic form (Williams et al. 2017,
"Information Theoretic MPC for Model-Based Reinforcement Learning", ICRA; Williams et al. 2018,
"Information-Theoretic Model Predictive Control: Theory and Applications to Autonomous Driving",
IEEE T-RO 34(6)).

Not to be confused with `CEMConfig(refit="mppi")`, CEM's loop with a softmax-weighted refit of mean
and std (as TD-MPC plans), which the registry calls `cem_softmax`."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .base import Plan
from .objective import Objective, rank_returns
from .validate import check_int, check_plan_inputs, check_positive

__all__ = ["MPPIConfig", "MPPI", "mppi_weights"]


@dataclass(frozen=True)
class MPPIConfig:
    """Settings of `MPPI` (Williams, Aldrich & Theodorou 2017, Algorithm 2).

    Attributes:
        horizon: H, planning steps per sequence (the paper's N).
        samples: K, perturbed sequences sampled per iteration and environment.
        iterations: the most weighted updates of the nominal sequence per plan call (a cap). The
            paper makes one per control step (default 1) and carries the nominal over with the
            shifted warm start; more run the same update again from the updated nominal, until
            the update is below `tol` or the next would pass `max_evals`.
        noise_std: Σ^{1/2}, the fixed diagonal standard deviation of the perturbations, in
            action units: one number for every action dimension, or a sequence of A numbers
            (one per dimension). Σ = diag(noise_std²) is never refitted.
        temperature: λ > 0 in return units (the paper's), or `"auto"` (default): λ = τ ·
            std_k(S_k), with τ = `relative_temperature` and std_k the population standard
            deviation of the K sampled costs S_k of the environment's iteration (finite ones
            only). Then the weights do not change when every reward is multiplied by a constant
            c > 0: S and λ both scale by c (and the control cost below is λ times a number that
            does not depend on the rewards). The normalisation is a choice made here; it is the
            same idea as PI²'s exp(-h (S - min S) / (max S - min S)) (Theodorou, Buchli &
            Schaal 2010, JMLR 11, eq. of the probability P), with the standard deviation in
            place of the range, which one outlier can stretch.
        relative_temperature: τ > 0 of `temperature="auto"`.
        control_cost: add the paper's control cost λ Σ_t u_tᵀ Σ⁻¹ ε_t to each sample's cost
            (Algorithm 2's `u_iᵀ R δu` with R = λ Σ⁻¹; the importance weight from the nominal
            u to the zero-mean base distribution in the information-theoretic derivation). On by
            default, as published. It makes MPPI minimise S + (λ/2) Σ_t u_tᵀ Σ⁻¹ u_t, so the
            plan is pulled towards zero by a penalty that grows with λ; off, the update's fixed
            point is the optimum of S itself.
        include_nominal: add the nominal sequence u itself (ε = 0) as one more sample in every
            iteration (not in the paper; like pytorch_mppi's `sample_null_action`, but for the
            nominal). Default off.
        max_evals: the budget in imagined transitions per decision and environment: an iteration
            that would take H · (n · rows + 1) past it is not started (the first always runs).
            Default 120,000 (PlaNet's CEM budget); `None`: only `iterations` counts.
        tol: the convergence stop: the search ends after an iteration whose update of the
            nominal, max_{b,t,a} |Δu| / half the action range (1 where it is infinite), is below
            `tol`. 0 turns it off. Default 1e-3. With one iteration it has nothing to stop.

    `info["stopped"]` says why the search ended: `"iterations"`, `"budget"`, `"converged"` or
    `"deadline"`. One update per call (the default) is the paper's MPPI; `MPPIConfig(iterations=
    1000)` iterates a single decision until the update is below `tol` or the budget is spent. On
    the LQ family that was worse than one update of a budget-sized K at the published settings
    (median excess 172 % against 52 % at 120,000 evaluations: with a fixed Σ each update adds the
    noise of a weighted mean and the control cost's pull), so one update stays the default
    (docs/planners.md, "MPPIConfig").

    Bounds: a sample is u + ε clipped elementwise to `[action_low, action_high]`, and the
    perturbation used afterwards (in the control cost and the update) is the clipped one,
    ε = clip(u + ε) - u, as pytorch_mppi does; the update u + Σ_k w_k ε_k = Σ_k w_k clip(u + ε_k)
    is then a convex combination of in-bound sequences, so the plan stays in the bounds.

    Raises:
        ValueError: `horizon`, `samples` or `iterations` not an int >= 1; `max_evals` not None or an
            int >= 1; `tol` negative or not finite; `noise_std` not
            positive and finite (or a sequence of such); `temperature` neither `"auto"` nor a
            positive finite number; `relative_temperature` not positive (the message names the
            field).
    """

    horizon: int = 12
    samples: int = 1000
    iterations: int = 1
    noise_std: float | Sequence[float] = 1.0
    temperature: float | str = "auto"
    relative_temperature: float = 0.05
    control_cost: bool = True
    include_nominal: bool = False
    max_evals: int | None = 120_000
    tol: float = 1e-3

    def __post_init__(self) -> None:
        check_int(self, "horizon", "samples", "iterations", minimum=1)
        check_int(self, "max_evals", minimum=1, optional=True)
        if not (isinstance(self.tol, (int, float)) and not isinstance(self.tol, bool) and 0.0 <= self.tol < math.inf):
            raise ValueError(f"MPPIConfig.tol must be a finite number >= 0 (0: no convergence stop); got {self.tol!r}")
        std = self.noise_std
        if isinstance(std, (list, tuple)):
            object.__setattr__(self, "noise_std", tuple(float(s) for s in std))
            ok = len(std) > 0 and all(s > 0 and math.isfinite(s) for s in self.noise_std)
        else:
            ok = isinstance(std, (int, float)) and not isinstance(std, bool) and std > 0 and math.isfinite(std)
        if not ok:
            raise ValueError(f"MPPIConfig.noise_std must be a positive number or a sequence of them; got {std!r}")
        if self.temperature != "auto":
            t = self.temperature
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
                raise ValueError(f"MPPIConfig.temperature must be 'auto' or a positive number; got {t!r}")
        check_positive(self, "relative_temperature")

    @property
    def rows(self) -> int:
        """Sequences evaluated per iteration and environment: K, plus 1 with `include_nominal`."""
        return self.samples + int(self.include_nominal)

    @property
    def planned_iterations(self) -> int:
        """The iterations a call runs unless it converges (`tol`) or meets its deadline: the most
        n <= `iterations` with H · (n · rows + 1) <= `max_evals`, at least 1."""
        if self.max_evals is None:
            return self.iterations
        return max(1, min(self.iterations, (self.max_evals // self.horizon - 1) // self.rows))

    @property
    def model_evals(self) -> int:
        """Imagined transitions per decision and environment when all `planned_iterations` run:
        H · (n · rows + 1), the last H for the return of the returned sequence."""
        return self.horizon * (self.planned_iterations * self.rows + 1)


def mppi_weights(
    returns: Tensor, noise: Tensor, nominal: Tensor, noise_std: Tensor, temperature: float | str,
    relative_temperature: float = 0.05, control_cost: bool = True,
) -> tuple[Tensor, Tensor]:
    """The MPPI weights of one iteration (Williams, Aldrich & Theodorou 2017, Algorithm 2).

    w_k = exp(-(S_k - min_j S_j) / λ - c_k) / η with S_k = -return_k the cost of sample k,
    c_k = Σ_t u_tᵀ Σ⁻¹ ε_{k,t} the control cost divided by λ (0 without `control_cost`), and η the
    normaliser. A non-finite return gets weight 0 (as `rank_returns` ranks it `-inf`).

    Args:
        returns: `[B, K]` returns (any, non-finite allowed).
        noise: `[B, K, H, A]` the perturbations ε (after clipping to the bounds).
        nominal: `[B, H, A]` the nominal sequence u.
        noise_std: `[A]` Σ^{1/2}.
        temperature: λ in return units, or `"auto"` (λ = `relative_temperature` · std of the finite
            returns of each environment; 1 where that std is 0, when λ does not matter).
        relative_temperature: τ of `"auto"`.
        control_cost: include c_k.

    Returns:
        `(weights [B, K], temperature [B])`: weights summing to 1 per environment, all 0 for an
        environment without a finite return; λ as used.
    """
    ranked, _ = rank_returns(returns)
    finite = torch.isfinite(ranked)
    n = finite.sum(dim=1).clamp_min(1)
    safe = torch.where(finite, ranked, torch.zeros_like(ranked))
    best = torch.where(finite, ranked, torch.full_like(ranked, -math.inf)).max(dim=1, keepdim=True).values
    if temperature == "auto":
        mean = safe.sum(dim=1, keepdim=True) / n[:, None]
        var = (torch.where(finite, safe - mean, torch.zeros_like(safe)) ** 2).sum(dim=1) / n
        std = var.sqrt()
        lam = torch.where(std > 0, relative_temperature * std, torch.ones_like(std))
    else:
        lam = torch.full((returns.shape[0],), float(temperature), device=returns.device, dtype=safe.dtype)
    z = (safe - torch.where(torch.isfinite(best), best, torch.zeros_like(best))) / lam[:, None]  # -(S - min S)/λ
    if control_cost:
        z = z - (nominal[:, None] * noise / noise_std**2).sum(dim=(2, 3))
    z = torch.where(finite, z, torch.full_like(z, -math.inf))
    z = z - torch.where(finite, z, torch.full_like(z, -math.inf)).max(dim=1, keepdim=True).values.nan_to_num(
        neginf=0.0)
    w = torch.where(finite, z.exp(), torch.zeros_like(z))
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return w, lam


class MPPI:
    """Model predictive path integral control: perturb a nominal sequence with fixed Gaussian
    noise, weight the K rollouts by exp(-cost / λ), move the nominal by the weighted perturbation.

    One iteration, for each of the B environments at once (all under `torch.no_grad()`):

    1. ε `[B, K, H, A]` = `noise_std · randn(generator=)`; samples v = clip(u + ε) to the model's
       bounds, ε ← v - u (see `MPPIConfig`); with `include_nominal` the nominal u is one more.
    2. Returns of all `B · K` samples in one `objective.returns` call; costs S = -returns.
    3. Weights `mppi_weights`: exp(-(S - min S)/λ - Σ_t u_tᵀ Σ⁻¹ ε_t), normalised; a NaN or inf
       return gets weight 0 and is counted in `info["nonfinite"]`.
    4. u ← u + Σ_k w_k ε_k. An environment whose returns are all non-finite keeps its u.

    The nominal u is `warm_start.actions` (clipped into the bounds), else zeros (the paper starts
    from a given sequence; pytorch_mppi's `U_init` defaults to zeros). In a control loop pass the
    previous plan shifted, `warm_start=plan.shift()` (the last action repeated) or
    `plan.shift(fill=0.0)` (a zero appended, as pytorch_mppi's `u_init`): that is the paper's
    "shift the nominal and initialise its last step" between control steps, with the planner
    keeping no state itself.

    Args:
        config: `MPPIConfig` (defaults: H = 12, K = 1000, one iteration, noise std 1, λ = 0.05 ·
            std of the returns, control cost on); keyword `overrides` replace fields.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]` (the final nominal), `value [B]` (the objective's return of exactly that
    sequence, one more rollout of B · H steps; `-inf` if it is not finite) and `info` keys
    `iterations`, `model_evals` (imagined transitions: B · rows · H per iteration run, plus B · H
    for the value), `nonfinite` (NaN/inf returns among the samples and the value), `temperature`
    (`[B]` list, the last iteration's λ), `stopped` (see `MPPIConfig`) and `plan_ms`. Anytime: `deadline` (a
    `time.perf_counter()` time) is checked after every iteration; at least one runs.

    Raises:
        ValueError: (from `plan`) if `warm_start.actions` is not `[B, H, A]`, or a per-dimension
            `noise_std` does not have A entries.

    Source: Williams, Aldrich & Theodorou 2017, Algorithm 2; Williams et al. 2017 (ICRA) and 2018
    (T-RO) for the information-theoretic form with the control cost λ uᵀ Σ⁻¹ ε.
    """

    def __init__(self, config: MPPIConfig | None = None, **overrides) -> None:
        self.config = dataclasses.replace(config or MPPIConfig(), **overrides)

    def __repr__(self) -> str:
        return f"MPPI({self.config})"

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
        """Plan for every belief in `state` (`[B]` rows) with MPPI; see the class docstring.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H, A]`; `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                a per-dimension `noise_std` without A entries.
        """
        t0 = time.perf_counter()
        c = self.config
        check_plan_inputs("MPPI.plan", objective, state, warm_start=warm_start, generator=generator, deadline=deadline)
        model = objective.model
        b, h, a = state.batch, c.horizon, objective.action_dim
        dev = state.device
        low, high = model.action_low.to(dev), model.action_high.to(dev)
        std = torch.as_tensor(c.noise_std, dtype=torch.float32, device=dev)
        if std.dim() == 0:
            std = std.expand(a)
        elif std.shape != (a,):
            raise ValueError(f"MPPI.plan: noise_std must have A={a} entries; got {tuple(std.shape)}")
        if warm_start is not None:
            if warm_start.actions.shape != (b, h, a):
                raise ValueError(
                    f"MPPI.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; got {tuple(warm_start.actions.shape)}"
                )
            u = torch.maximum(torch.minimum(warm_start.actions.to(dev, state.deter.dtype), high), low)
        else:
            u = torch.zeros(b, h, a, device=dev)
        rows = c.rows
        starts = state.expand(rows)
        nonfinite = torch.zeros((), dtype=torch.long, device=dev)
        lam = torch.zeros(b, device=dev)
        iterations = model_evals = 0
        planned = c.planned_iterations
        stopped = "budget" if planned < c.iterations else "iterations"
        half = (high - low) / 2.0
        half = torch.where(torch.isfinite(half) & (half > 0), half, torch.ones_like(half))
        for _ in range(planned):
            # Sample perturbations around the nominal, clipped into the bounds
            eps = std * torch.randn((b, c.samples, h, a), generator=generator, device=dev)
            v = torch.maximum(torch.minimum(u[:, None] + eps, high), low)
            if c.include_nominal:
                v = torch.cat([v, u[:, None]], dim=1)
            eps = v - u[:, None]
            # Roll out all samples, then weight them by exp(-cost / λ)
            ret = objective.returns(starts, v.reshape(b * rows, h, a), generator=generator).reshape(b, rows)
            model_evals += b * rows * h
            nonfinite = nonfinite + rank_returns(ret)[1]
            w, lam = mppi_weights(ret, eps, u, std, c.temperature, c.relative_temperature, c.control_cost)
            # Move the nominal by the weighted perturbation
            new_u = torch.maximum(torch.minimum(u + (w[:, :, None, None] * eps).sum(dim=1), high), low)
            step = ((new_u - u).abs() / half).amax() if c.tol > 0 and planned > 1 else None
            u = new_u
            iterations += 1
            if step is not None and bool(step < c.tol):
                stopped = "converged"
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "deadline" if iterations < planned else stopped
                break
        value, nf = rank_returns(objective.returns(state, u, generator=generator))
        model_evals += b * h
        info = {
            "iterations": iterations,
            "model_evals": model_evals,
            "stopped": stopped,
            "nonfinite": int(nonfinite + nf),
            "temperature": lam.tolist(),
            "plan_ms": (time.perf_counter() - t0) * 1e3,
        }
        return Plan(u, value, info)
