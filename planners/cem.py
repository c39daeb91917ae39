"""The cross-entropy method (CEM) over action sequences, as PlaNet plans (Hafner et al. 2019, Sec. 3;
the CEM itself: Rubinstein 1997), with the options of iCEM (Pinneri et al. 2020), a softmax-weighted
refit (`refit="mppi"`, as TD-MPC's planner; MPPI as published is `planners.mppi.MPPI`), the CEM+GD
hybrid (Bharadhwaj et al. 2020) and a final L-BFGS polish of the search's result (`polish`)."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor

from latentplan.worldmodels.state import LatentState

from .validate import (check_choice, check_int, check_min, check_plan_inputs, check_positive, check_range,
                       require_finite_bounds)
from .ascent import AscentConfig, ascend, ascent_evals, require_autograd, require_differentiable
from .base import Plan, Policy
from .capture import CaptureCache, resolve_compile, run_captured
from .fused_search import FusedCEMSearch, why_not_fused
from .lbfgs import lbfgs_ascend, lbfgs_evaluation_cost
from .objective import Objective, rank_returns
from .policy import policy_rollout

__all__ = ["CEMConfig", "CEM", "colored_noise", "converged", "search_share"]

_POLISH_ITERATIONS = 1000  # the polish's iteration cap (the gradient planner's L-BFGS default)
_POLISH_MARGIN = 0.1  # the polish starts with every action inside the central 90 % of its range


def colored_noise(
    size: Sequence[int],
    beta: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Gaussian noise with power spectrum proportional to 1/f^beta along the time axis.

    Args:
        size: the output shape `[..., H, A]`; time (the planning horizon H) is the second-last
            axis, A (action dimensions) the last. Every `[H]` series is independent.
        beta: the exponent β. 0 is white noise, 1 pink, 2 red/brown (smoother, more power at low
            frequencies); negative values give blue noise.
        generator: the source of randomness.
        device: where the noise is made.

    Returns:
        `[..., H, A]` float32 noise with zero mean and unit variance at every time step. For
        β = 0 it is exactly `torch.randn(size, generator=generator, device=device)`.

    Method: random Fourier coefficients with independent Gaussian real and imaginary parts scaled
    by f^(-β/2) (Timmer & König 1995, "On generating power law noise"), transformed back with
    `torch.fft.irfft` over 2H steps and divided by the exact standard deviation this gives; the
    first H steps are returned. As in the `colorednoise` package that the reference iCEM code
    uses, the zero frequency gets the power of the lowest non-zero frequency, and the zero and
    (even length) Nyquist coefficients are real with doubled variance. Unlike it, the series is
    made twice as long as needed and cropped: an inverse FFT of length H is periodic, which
    correlates the first and the last action (correlation 0.71 for β = 2, H = 12) although they
    are the furthest apart in time; on the linear-quadratic test system that made iCEM stall
    further above the optimum than the cropped series does. The periodic series
    is stationary, so every kept step still has exactly unit variance.

    Raises:
        ValueError: if `size` has fewer than 2 dimensions or `beta` is not finite.

    Source: Pinneri et al. 2020, "Sample-efficient Cross-Entropy Method for Real-time Planning"
    (CoRL), Sec. 3.1 (coloured noise for temporally correlated action sequences).
    """
    size = tuple(int(s) for s in size)
    if len(size) < 2:
        raise ValueError(f"colored_noise: size must be [..., H, A]; got {list(size)}")
    if not math.isfinite(beta):
        raise ValueError(f"colored_noise: beta must be finite; got {beta}")
    if beta == 0.0:
        return torch.randn(size, generator=generator, device=device)
    *lead, h, a = size
    n = 2 * h  # generate twice the horizon and keep the first half: no wrap-around correlation
    nf = n // 2 + 1
    # the zero frequency gets the lowest non-zero one's power (every other frequency is >= 1/n);
    # built without indexed assignment, which would copy a CPU scalar to the device (a host sync
    # on CUDA, and an error inside a graph capture)
    freqs = torch.fft.rfftfreq(n, device=device).clamp_min(1.0 / n)
    scale = freqs ** (-beta / 2.0)
    # weight of each coefficient in the time-domain variance: 2 for the real-valued zero and
    # Nyquist coefficients (real part of variance 2 s^2, counted once), 4 for the others
    # (variance s^2 in each of the real and imaginary parts, mirrored at -f)
    k = torch.arange(nf, device=device)
    real_only = (k == 0) | (k == nf - 1)  # n is even: the Nyquist coefficient is real too
    weight = torch.where(real_only, 2.0, 4.0)
    std = torch.sqrt((weight * scale**2).sum()) / n
    re = torch.randn((*lead, a, nf), generator=generator, device=device)
    im = torch.randn((*lead, a, nf), generator=generator, device=device)
    re = re * torch.where(real_only, math.sqrt(2.0), 1.0) * scale
    im = torch.where(real_only, 0.0, im) * scale
    series = torch.fft.irfft(torch.complex(re, im), n=n, dim=-1) / std  # [..., A, 2H]
    return series[..., :h].transpose(-1, -2)


@dataclass(frozen=True)
class CEMConfig:
    """Settings of `CEM`. Defaults are PlaNet's (Hafner et al. 2019, Appendix); every option added
    after PlaNet defaults to "off" except the two stops, `max_evals` (120,000, which PlaNet's 10
    iterations of 1000 candidates at H = 12 exactly fill) and `tol` (which ends the search only
    once the sampling std has collapsed); `CEMConfig(max_evals=None, tol=0.0)` with every option
    off is exactly PlaNet's CEM.

    Attributes:
        horizon: H, planning steps per sequence (PlaNet: 12).
        iterations: I, the most refits of the sampling distribution (PlaNet: 10; with PlaNet's J at
            H = 12 the default `max_evals` allows exactly these 10). A cap: the search stops
            earlier when `max_evals` would be passed or the distribution has converged (`tol`).
        candidates: J, sequences sampled per iteration and environment (PlaNet: 1000). With
            `population_decay > 1` this is the first iteration's count.
        elites: K, best sequences the distribution is refitted to (PlaNet: 100). With
            `refit="mppi"`, K still sets the population floor 2K, the elites kept by
            `keep_elites` and the sequences refined by `gradient`.
        init_std: standard deviation of the first sampling distribution, per action
            dimension, in action units (PlaNet: 1 with mean 0).
        min_std: floor of the refitted standard deviation (0 lets it collapse, as PlaNet does).
        warm_start_std: initial standard deviation when a warm start gives the mean.
        noise_beta: iCEM's coloured-noise exponent β: the sampling noise has a power spectrum
            ∝ 1/f^β along the horizon (see `colored_noise`), unit variance per step, so
            sequences are temporally correlated. 0 (default) is white noise, drawn with plain
            `torch.randn` exactly as PlaNet's CEM. Pinneri et al. use β = 2 to 3.5 on most tasks.
        white_fraction: with `noise_beta != 0`, the fraction of each iteration's fresh Gaussian
            candidates drawn with white noise (β = 0) instead, `round(white_fraction * n)` of
            them (the first rows), the rest coloured with `noise_beta`: a mixed population that
            keeps power at every frequency, for optima that alternate from step to step as well
            as smooth ones (docs/planners.md, "iCEM's noise colour"). In [0, 1]; 0 (default) is
            iCEM's single colour. Ignored when `noise_beta == 0`.
        keep_elites: iCEM's fraction ξ of the previous iteration's K elites (the best
            `round(ξ K)`) that are added, unchanged, to the next iteration's candidates and
            evaluated again. In [0, 1]; iCEM uses 0.3. The shifted elites of the previous
            *planning step* (iCEM's other use of ξ) are not carried: see `include_mean`.
        include_mean: add the current sampling mean (clipped into the bounds) as one more
            candidate in every iteration. In the first iteration this is the warm start, so
            `warm_start=previous_plan.shift()` is iCEM's "shift the last solution": with
            `return_best=True` a plan is then never worse, under a deterministic model, than the
            shifted previous one. In the last iteration it is iCEM's "add the mean to the last
            population". (`Plan.shift(fill=0.0)` appends the zero action as iCEM does; the
            default repeats the last action.)
        population_decay: iCEM's γ ≥ 1: iteration i samples J_i = max(min(2K, J), floor(J / γ^i))
            fresh candidates (iCEM: 1.25). Shapes stay static per iteration. 1 keeps J.
        momentum: iCEM's α in [0, 1): the refit is mean = α mean_old + (1 - α) mean_new (same
            for std). iCEM uses 0.1; 0 is PlaNet's plain refit.
        refit: `"topk"` (CEM: fit mean and std of the top K) or `"mppi"`: the softmax-weighted
            refit, as in TD-MPC (Hansen, Wang & Su 2022), registry name `cem_softmax`: weights
            softmax(returns / temperature) over all candidates of the iteration, weighted mean
            and weighted std. It borrows MPPI's exponential weights but refits the std (which
            collapses), has no control cost and a temperature in return units, so it is not
            MPPI as published (Williams et al. 2017): that is `latentplan.planners.MPPI`. The
            value keeps its old name so that saved configs and specs still load.
        temperature: λ > 0 of the softmax refit's weights, in return units. λ → 0 approaches
            top-1; large λ approaches the plain average of all candidates.
        return_best: return the best sequence evaluated in any iteration (iCEM) instead of the
            final mean; `value` is then that sequence's return. With a stochastic model this
            is the maximum of noisy estimates and so optimistic.
        gradient: CEM+GD: an `AscentConfig`; in each iteration the K best candidates get
            `gradient.iterations` optimizer steps on their returns (through the model; by
            default Adam with `lr=0.01` in action units, projected onto the bounds) before the
            refit, and each refined candidate keeps the best version seen. `None` (default) is
            plain CEM. A dict is read as `AscentConfig(**dict)` (configs from JSON).
        policy_fraction: with a `proposal` policy given to `CEM`, the fraction of each
            iteration's J fresh candidates that are rolled out by the policy through the model
            instead of drawn from the Gaussian, as TD-MPC2 does (Hansen et al. 2024: 24 of 512):
            `max(1, round(policy_fraction * J))` sequences (the first the policy's mode, the
            others samples), made once per plan call and evaluated again in every iteration.
            In [0, 1]; unused without a proposal.
        compile: how a plan call runs (`planners.capture`, `planners.fused_search`): `"eager"`,
            the plain loop (anytime: the deadline is checked after every iteration);
            `"cuda_graph"`, the whole search captured once in a CUDA graph and replayed (all
            `planned_iterations` run; no deadline or convergence stop inside); `"torch_compile"`, the search through
            `torch.compile`; `"static"`, the capture-ready search without capture (what a graph
            records; for tests); `"fused"`, the fused search (one pure function per iteration
            over the `FusedRSSM` weights, noise pre-drawn from the generator; PlaNet's CEM over
            the default objective only, else ValueError); `"fused_compile"`, that function
            compiled by `torch.compile` (inductor: C++/OpenMP on the CPU; kernels cached on disk,
            `fused_search.compile_cache_dir`). Both fused modes give the eager plan of the same
            seed up to float rounding and check the deadline and `tol` after every iteration;
            the captured modes (`"cuda_graph"`, `"torch_compile"`, `"static"`) run the static
            count `planned_iterations` (the budget `max_evals` is honoured, `tol` is not: a
            captured search cannot read the std on the host). `"auto"`
            (default): `"cuda_graph"` on a CUDA device when the settings allow it (not with
            `gradient`, whose optimiser is not captured); on the CPU `"fused_compile"` for covered
            settings once the planner's eager decisions have spent 4,000,000 imagined transitions
            (`fused_search.AUTO_COMPILE_AFTER_EVALS`: PlaNet's CEM from its 35th decision), or
            from the first decision when `expected_transitions` is at least twice that (a
            `Trainer` sets it: the demo's and PlaNet's training compile at once), never in a call
            with a `deadline` (`FusedCEMSearch.auto_mode`;
            a failed compile warns and runs the fused search uncompiled), else `"eager"`.

        max_evals: the budget, in imagined transitions per decision and environment (forward
            passes, counted as `model_evals`): an iteration that would take the total past it is
            not started (the first always runs). Default 120,000, PlaNet's H * I * J = 12 * 10 *
            1000. `None`: no cap (only `iterations` counts). The count is fixed by the settings
            (`planned_iterations`), so captured and fused searches run it too. A proposal
            policy's rollout ((H - 1) * `policy_candidates`) is not counted against it.
        tol: the convergence stop: after an iteration, the search ends when the largest sampling
            std of every environment, relative to half the action range ((high - low) / 2 per
            action dimension; 1 where the range is infinite), is below `tol`: the distribution
            has shrunk to a point and more iterations would only resample it. 0 turns it off
            (PlaNet's fixed count). Default 1e-3, measured on the LQ family (docs/planners.md,
            "Stopping"): at 1e-3 the worst case equalled the full budget's and the median was
            within 0.5 percentage points, with 14-46 % fewer evaluations; from 1e-2 plans got
            worse. It never triggers when `min_std` / half-range >= tol. Eager and fused searches
            only (it reads the std on the host, one sync per iteration on a GPU).

        polish: the share of `max_evals` kept for a final local search, in [0, 1): the CEM
            iterations get `search_evals` = `max_evals - ceil(polish * max_evals)` (and, with a
            deadline, the share `1 - polish` of the time to it); then the result (the final mean,
            or the best sequence with `return_best`) is evaluated once (H transitions) and refined
            by batched L-BFGS through the model (`planners.lbfgs.lbfgs_ascend`: tanh coordinates,
            started with every action inside the central 90 % of its range, where an action at a
            bound would have a vanishing gradient; 20 curvature pairs, stop at a relative change
            of 1e-9, at most 1,000 iterations) with whatever budget the iterations left, a
            backward pass counted as `VJP_EVALS` forward transitions. The plan is the best
            sequence of all these evaluations, the unpolished result included, so its return is
            never below the unpolished one's (under a stochastic model: on the polish's one noise
            draw, common random numbers), and `value` is that return (not the elites' mean).
            With B > 1 environments every L-BFGS evaluation computes all B rows, also those of
            environments whose own budget or convergence has ended their search (their results
            unused), so `model_evals` can exceed what the environments' own counts add up to,
            up to B times the largest (as the gradient planner, docs/planners.md). As
            `scipy.optimize.differential_evolution(polish=True)` refines its best member with
            L-BFGS-B. `max_evals=None`: the polish is bounded by its stops and iteration cap
            only. 0 (default): off. The registry's `cem_gd` uses 0.25: a diagonal Gaussian
            cannot learn the coupling of ill-conditioned problems, L-BFGS learns it
            (docs/planners.md, "Planners over problem families"). Needs a differentiable
            objective.

    `info["stopped"]` of a plan says why its search ended: `"iterations"` (all `iterations` ran),
    `"budget"` (the next would pass `search_evals`, which is `max_evals` unless a `polish` keeps
    some of it), `"converged"` (`tol`) or `"deadline"`; a polish's own stop is in
    `info["polish_stopped"]`.
    PlaNet's exact planner is `CEMConfig(max_evals=None, tol=0.0)` (registry preset `planet`).

    Raises:
        ValueError: on counts < 1, elites > candidates, non-positive stds, or an option out of
            its range (the message names the field).
    """

    horizon: int = 12
    iterations: int = 10
    candidates: int = 1000
    elites: int = 100
    init_std: float = 1.0
    min_std: float = 0.0
    warm_start_std: float = 1.0
    noise_beta: float = 0.0
    white_fraction: float = 0.0
    keep_elites: float = 0.0
    include_mean: bool = False
    population_decay: float = 1.0
    momentum: float = 0.0
    refit: Literal["topk", "mppi"] = "topk"
    temperature: float = 1.0
    return_best: bool = False
    gradient: AscentConfig | None = None
    policy_fraction: float = 0.0
    compile: Literal["auto", "eager", "static", "cuda_graph", "torch_compile", "fused", "fused_compile"] = "auto"
    max_evals: int | None = 120_000
    tol: float = 1e-3
    polish: float = 0.0

    def __post_init__(self) -> None:
        check_int(self, "horizon", "iterations", "candidates", "elites", minimum=1)
        if self.elites > self.candidates:
            raise ValueError(
                f"CEMConfig.elites ({self.elites}) cannot exceed candidates ({self.candidates})"
            )
        check_positive(self, "init_std", "warm_start_std")
        check_min(self, 0.0, "min_std")
        if not math.isfinite(self.noise_beta):
            raise ValueError(f"CEMConfig.noise_beta must be finite; got {self.noise_beta}")
        check_range(self, "keep_elites", 0.0, 1.0)
        check_range(self, "white_fraction", 0.0, 1.0)
        check_range(self, "population_decay", 1.0, math.inf, high_open=True)
        check_range(self, "momentum", 0.0, 1.0, high_open=True)
        check_choice(self, "refit", ("topk", "mppi"))
        check_positive(self, "temperature")
        if isinstance(self.gradient, dict):
            object.__setattr__(self, "gradient", AscentConfig(**self.gradient))
        if self.gradient is not None and not isinstance(self.gradient, AscentConfig):
            raise ValueError(f"CEMConfig.gradient must be an AscentConfig or None; got {self.gradient!r}")
        check_range(self, "policy_fraction", 0.0, 1.0)
        check_choice(self, "compile", ("auto", "eager", "static", "cuda_graph", "torch_compile", "fused", "fused_compile"))
        check_int(self, "max_evals", minimum=1, optional=True)
        if not (isinstance(self.tol, (int, float)) and not isinstance(self.tol, bool) and 0.0 <= self.tol < math.inf):
            raise ValueError(f"CEMConfig.tol must be a finite number >= 0 (0: no convergence stop); got {self.tol!r}")
        check_range(self, "polish", 0.0, 1.0, high_open=True)

    def population(self, i: int) -> int:
        """J_i, the fresh candidates sampled in iteration `i` (0-based), per environment."""
        floor = min(2 * self.elites, self.candidates)
        return max(floor, int(self.candidates / self.population_decay**i))

    @property
    def policy_candidates(self) -> int:
        """Sequences rolled out by a proposal policy per environment: max(1, round(fraction * J)),
        or 0 when `policy_fraction` is 0."""
        if self.policy_fraction == 0.0:
            return 0
        return max(1, int(round(self.policy_fraction * self.candidates)))

    @property
    def kept_elites(self) -> int:
        """How many of the previous iteration's elites join each later iteration: round(ξ K)."""
        return int(round(self.keep_elites * self.elites))

    def rows(self, i: int) -> int:
        """Candidates evaluated in iteration `i`, per environment: J_i + kept elites + mean."""
        return self.population(i) + (self.kept_elites if i > 0 else 0) + int(self.include_mean)

    def iteration_evals(self, i: int) -> int:
        """Imagined transitions iteration `i` (0-based) spends per environment: H * rows(i), plus
        `ascent_evals(K, H, gradient.iterations)` for CEM+GD (its backward passes counted as
        `VJP_EVALS` forward transitions each)."""
        total = self.horizon * self.rows(i)
        if self.gradient is not None:
            total += ascent_evals(self.elites, self.horizon, self.gradient.iterations)
        return total

    @property
    def search_evals(self) -> int | None:
        """The CEM iterations' share of the budget, per environment: `max_evals` less what
        `polish` keeps for the final L-BFGS search (`search_share`); `None` without a budget."""
        return search_share(self.max_evals, self.polish)

    @property
    def planned_iterations(self) -> int:
        """The iterations a search runs unless it converges (`tol`) or meets a deadline first:
        the most n <= `iterations` whose `iteration_evals` sum to at most `search_evals`
        (`max_evals` less the `polish` share; at least 1).
        Fixed by the settings, so captured searches run exactly this many."""
        return _planned_iterations(self)

    @property
    def model_evals(self) -> int:
        """Imagined transitions (forward) per decision and environment when all `planned_iterations`
        run: the sum of their `iteration_evals` (at most `search_evals`, unless one iteration alone
        is more). PlaNet's settings give H * I * J. With a proposal policy, rolling it out adds
        (H - 1) * `policy_candidates` (the policy's candidates replace Gaussian ones, so the
        rows stay the same). The iterations only: a `polish` spends at most the rest of
        `max_evals`, stopping earlier when converged (`info["polish_evals"]`)."""
        return sum(self.iteration_evals(i) for i in range(self.planned_iterations))


def search_share(max_evals: int | None, polish: float) -> int | None:
    """The evaluations a budget of `max_evals` leaves the CEM iterations when `polish` of it is kept
    for the polish: `max_evals - ceil(polish * max_evals)` (the product rounded to 9 decimals first,
    so that 0.9 * 120,000 keeps 12,000, not 12,001); `None` for `None`."""
    if max_evals is None:
        return None
    return max_evals - math.ceil(round(polish * max_evals, 9))


def _planned_iterations(c: CEMConfig) -> int:
    """`CEMConfig.planned_iterations` (the loop ends at the budget, so it is short when one is set)."""
    budget = c.search_evals
    if budget is None:
        return c.iterations
    n = total = 0
    for i in range(c.iterations):
        total += c.iteration_evals(i)
        if n >= 1 and total > budget:
            break
        n += 1
    return n


def converged(std: Tensor, low: Tensor, high: Tensor, tol: float) -> Tensor:
    """Whether a sampling distribution has converged: max std / half range < `tol` over everything.

    Args:
        std: `[B, H, A]` sampling standard deviations; low, high: `[A]` action bounds (a dimension
            with an infinite range is measured in action units, half range 1).
        tol: the tolerance (`CEMConfig.tol`, `MPPIConfig.tol`).

    Returns:
        a 0-dim bool tensor, True when every environment's largest relative std is below `tol`.
    """
    half = (high - low) / 2.0
    half = torch.where(torch.isfinite(half) & (half > 0), half, torch.ones_like(half))
    return (std / half).amax() < tol


class CEM:
    """Cross-entropy method planner: sample J action sequences from a diagonal Gaussian, keep the
    top K by imagined return, refit the Gaussian to them, repeat I times; return the mean.

    Batched over B environments in one call: the model sees `B * rows` rows per step.
    Candidates are clipped to the model's action bounds. Non-finite returns rank as `-inf` (and
    get zero softmax weight). Options (all off by default, see `CEMConfig`):

    - iCEM (Pinneri et al. 2020): coloured noise `noise_beta`, `keep_elites`,
      `population_decay`, `momentum`, `include_mean`, `return_best`; iCEM's "shift the last
      solution" is `plan(..., warm_start=previous_plan.shift())` (with `include_mean=True` to
      evaluate the shifted sequence itself).
    - Softmax-weighted refit (as TD-MPC; registry `cem_softmax`): `refit="mppi"`, `temperature`.
      MPPI as published (Williams et al. 2017) is the separate planner `MPPI`.
    - Policy proposal (TD-MPC2, Hansen et al. 2024): with `proposal` (any `Policy`, e.g. a
      distilled `GaussianPolicy`) and `policy_fraction > 0`, that fraction of the fresh
      candidates of every iteration are sequences made by rolling the policy through the model
      (`policy_rollout`; the first is its mode), so CEM starts next to what the policy would do.
    - CEM+GD (Bharadhwaj et al. 2020): `gradient=AscentConfig(iterations=..., lr=...)`. The paper refines the
      sampled sequences by gradient descent; here only the K best of each iteration are refined
      (as CEM-GD, Huang et al. 2021, does with its top sequences), which keeps the cost at
      `K` instead of `J` backward passes per step.
    - Polish (`polish=p`, the registry's `cem_gd` with p = 0.25): the iterations get `1 - p` of
      `max_evals`, then batched L-BFGS (`planners.lbfgs`) refines the result through the model with
      what they left; `info` gains `polish_steps`, `polish_evals` (also in `model_evals`) and
      `polish_stopped`, and `value` is the polished sequence's return.

    Args:
        config: `CEMConfig` (PlaNet's settings by default); keyword `overrides` replace fields.
        proposal: a `Policy` whose rollouts make `policy_fraction` of the candidates; `None`
            (default) is plain CEM.

    `plan(objective, state [B], warm_start=None, generator=None, deadline=None) -> Plan` with
    `actions [B, H, A]` (the final mean, or with `return_best` the best sequence seen),
    `value [B]` (top-K: the mean imagined return of the final elites; softmax refit: the weighted mean
    return of the final candidates; `return_best`: the best return) and `info` keys
    `iterations`, `model_evals` (imagined transitions in forward passes, summed over the
    iterations run: B * rows * H each, plus the gradient refinement's (its backward passes counted
    as `VJP_EVALS` forward transitions each) and the proposal's rollout,
    B * (H - 1) * `policy_candidates`), `nonfinite` (NaN/inf
    returns seen), `stopped` (why the search ended: `"iterations"`, `"budget"` (`search_evals`),
    `"converged"` (`tol`) or `"deadline"`), `compile` and `plan_ms`. Anytime: `deadline` is checked after every iteration (at least
    one always runs).

    Raises:
        ValueError: (here) if a `proposal` is given with `policy_fraction == 0`, or is not a
            `Policy`; (from `plan`) if `warm_start.actions` is not `[B, H, A]`, or (with a
            `gradient` config or `polish > 0`) if a reward term is marked `differentiable = False`
            (the message names it).

    Source: Hafner et al. 2019 (PlaNet), "Learning Latent Dynamics for Planning from Pixels";
    Pinneri et al. 2020, "Sample-efficient Cross-Entropy Method for Real-time Planning";
    Hansen, Wang & Su 2022, "Temporal Difference Learning for Model Predictive Control" (ICML; TD-MPC),
    for the softmax-weighted refit;
    Bharadhwaj, Xie & Shkurti 2020, "Model-Predictive Control via Cross-Entropy and
    Gradient-Based Optimization"; Hansen, Su & Wang 2024, "TD-MPC2: Scalable, Robust World
    Models for Continuous Control" (ICLR), for the policy proposal.
    """

    def __init__(self, config: CEMConfig | None = None, *, proposal: Policy | None = None, **overrides) -> None:
        config = dataclasses.replace(config or CEMConfig(), **overrides)
        if proposal is not None:
            if not callable(getattr(proposal, "act", None)):
                raise ValueError(f"CEM: proposal must be a Policy with act(state, generator=, deterministic=); got {type(proposal).__name__}")
            if config.policy_fraction == 0.0:
                raise ValueError("CEM: a proposal policy was given but CEMConfig.policy_fraction is 0 (set it in (0, 1])")
        self.config = config
        self.proposal = proposal
        self._cache = CaptureCache()
        self._fast = FusedCEMSearch()

    @property
    def auto_compile_progress(self) -> int:
        """Imagined transitions (summed over environments) this planner's eager CPU decisions have
        spent towards `compile="auto"`'s switch to the compiled fused search
        (`fused_search.AUTO_COMPILE_AFTER_EVALS`). Training checkpoints save it, so that a resumed
        run switches at the same decision as the uninterrupted one. Settable (an int >= 0)."""
        return self._fast.evals_seen

    @auto_compile_progress.setter
    def auto_compile_progress(self, value: int) -> None:
        if int(value) < 0:
            raise ValueError(f"CEM: auto_compile_progress must be >= 0, got {value}")
        self._fast.evals_seen = int(value)

    @property
    def expected_transitions(self) -> int:
        """Imagined transitions (summed over environments) the caller expects this planner to
        spend over its whole run; 0 (the default) when unknown. `Trainer` sets it from its config
        (episodes to collect x decisions per episode x transitions per decision). At least twice
        `fused_search.AUTO_COMPILE_AFTER_EVALS` (8,000,000) makes `compile="auto"` compile the
        fused search on the CPU from the first decision instead of after 4,000,000 eager ones: with
        the run's length known, the compile pays for itself. A config-derived number, so a resumed
        run decides as the uninterrupted one did (unless it is resumed with more `episodes`, which
        can cross the threshold). Settable (an int >= 0). The rule is the offline counterpart of the
        ski-rental rule `AUTO_COMPILE_AFTER_EVALS` implements (Karlin et al. 1988).

        Raises:
            ValueError: for a negative value.
        """
        return self._fast.expected_evals

    @expected_transitions.setter
    def expected_transitions(self, value: int) -> None:
        if int(value) < 0:
            raise ValueError(f"CEM: expected_transitions must be >= 0, got {value}")
        self._fast.expected_evals = int(value)

    def __repr__(self) -> str:
        return f"CEM({self.config})" if self.proposal is None else f"CEM({self.config}, proposal={type(self.proposal).__name__})"

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
        """Plan for every belief in `state` (`[B]` rows) with CEM; see the class docstring.

        Arguments, shapes and the input checks every planner shares are `Planner.plan`'s
        (`state [B]`, `warm_start.actions [B, H, A]`; `validate.check_plan_inputs`). Returns a `Plan`:
        `actions [B, H, A]` within the model's bounds and `value [B]`; the class docstring lists `info`.

        Raises:
            TypeError / ValueError: as `Planner.plan`, naming the argument. Also ValueError:
                with a `gradient` config or `polish > 0`, a reward term marked
                `differentiable = False`; with `polish > 0`, infinite action bounds.
                RuntimeError: with either, called inside `torch.inference_mode()`.
        """
        t0 = time.perf_counter()
        c = self.config
        check_plan_inputs("CEM.plan", objective, state, warm_start=warm_start, generator=generator, deadline=deadline)
        if c.gradient is not None:
            require_differentiable(objective, "CEM (gradient refinement)")
            require_autograd("CEM (gradient refinement)")
        if c.polish > 0:
            require_differentiable(objective, "CEM (L-BFGS polish)")
            require_autograd("CEM (L-BFGS polish)")
            require_finite_bounds("CEM.plan", objective.model.action_low, objective.model.action_high,
                                  "the L-BFGS polish optimises in tanh coordinates of the action box")
        model = objective.model
        b, h, a = state.batch, c.horizon, objective.action_dim
        dev = state.device
        if warm_start is not None:
            if warm_start.actions.shape != (b, h, a):
                raise ValueError(
                    f"CEM.plan: warm_start.actions must be [B={b}, H={h}, A={a}]; "
                    f"got {tuple(warm_start.actions.shape)}"
                )
            mean = warm_start.actions.to(dev, state.deter.dtype).clone()  # cast to the belief's dtype
            std = torch.full((b, h, a), c.warm_start_std, device=dev)
        else:
            mean = torch.zeros(b, h, a, device=dev)
            std = torch.full((b, h, a), c.init_std, device=dev)
        # with a polish, the iterations get the share 1 - polish of the time to the deadline as well
        search_deadline = deadline if deadline is None or c.polish == 0 else t0 + (1.0 - c.polish) * (deadline - t0)
        mode = self._fused_mode(objective, dev, deadline)
        if mode is not None:
            result, mode = self._fused_search(mode, objective, state, mean, std, generator, search_deadline)
        else:
            not_capturable = "gradient (CEM+GD's optimiser is not captured)" if c.gradient is not None else None
            mode = resolve_compile(c.compile, dev, planner="CEM", not_capturable=not_capturable or self._cache.failed)
        if mode not in ("eager", "fused", "fused_compile"):
            try:
                result = self._captured(mode, objective, state, mean, std, generator)
            except Exception as e:
                mode = self._cache.fall_back("CEM", c.compile, e)  # re-raises unless compile="auto"
        if mode == "eager":
            low, high = model.action_low.to(dev), model.action_high.to(dev)
            result = self._search(objective, state, mean, std, low, high, generator, search_deadline)
        mean, value, nonfinite, iterations, model_evals, stopped = result
        if mode == "eager" and c.compile == "auto" and dev.type == "cpu":
            self._fast.count(model_evals)  # towards compile="auto"'s switch (fused_search.AUTO_COMPILE_AFTER_EVALS)
        polished = None
        if c.polish > 0:
            mean, value, polished = self._polish(objective, state, mean, value, model_evals, generator, deadline)
            model_evals += polished["polish_evals"]
            nonfinite = nonfinite + polished.pop("nonfinite")
        info = {
            "iterations": iterations,
            "model_evals": model_evals,
            "stopped": stopped,
            "nonfinite": int(nonfinite),
            "plan_ms": (time.perf_counter() - t0) * 1e3,
            "compile": mode,
        }
        if polished is not None:
            info.update(polished)
        return Plan(mean, value, info)

    def _polish(
        self, objective: Objective, state: LatentState, mean: Tensor, value: Tensor, search_evals: int,
        generator: torch.Generator | None, deadline: float | None,
    ):
        """The `polish` stage: L-BFGS from the search's result `mean [B, H, A]` (pulled into the
        central 90 % of the action range where it touches a bound, `_POLISH_MARGIN`) with the budget
        the iterations (`search_evals` imagined transitions over all B environments) left each
        environment, less the H transitions of evaluating `mean` itself once, which is the first
        best seen. Returns `(actions [B, H, A], value [B], facts)`; `value` is the polished
        sequence's return (the search's `value` where no L-BFGS evaluation fitted in the budget or
        the deadline had passed: then the mean is returned as it was, with no steps or
        evaluations); `facts` holds `polish_steps`, `polish_evals`, `polish_stopped` and
        `nonfinite` (0-dim long)."""
        c = self.config
        b, h = mean.shape[0], mean.shape[1]
        dev = mean.device
        low, high = objective.model.action_low.to(dev), objective.model.action_high.to(dev)
        left = None if c.max_evals is None else c.max_evals - search_evals // b - h
        late = deadline is not None and time.perf_counter() >= deadline
        if late or (left is not None and left < lbfgs_evaluation_cost(1, h)):
            return mean, value, {"polish_steps": 0, "polish_evals": 0, "polish_stopped": "deadline" if late else "budget",
                                 "nonfinite": torch.zeros((), dtype=torch.long, device=dev)}
        out = lbfgs_ascend(objective, state, mean, iterations=_POLISH_ITERATIONS, max_evals=left, group=1,
                           low=low, high=high, generator=generator, deadline=deadline, margin=_POLISH_MARGIN,
                           keep_start=True)
        return out.actions, out.returns, {"polish_steps": out.steps, "polish_evals": out.model_evals,
                                          "polish_stopped": out.stopped, "nonfinite": out.nonfinite}

    def _fused_mode(self, objective: Objective, device: torch.device, deadline: float | None) -> str | None:
        """`"fused"` or `"fused_compile"` if this call takes the fused search (`planners.fused_search`),
        else None. Explicit modes raise ValueError when the settings are not covered."""
        c = self.config
        if c.compile in ("fused", "fused_compile"):
            why = why_not_fused(c, objective, self.proposal)
            if why is not None:
                raise ValueError(f"CEM: compile={c.compile!r} cannot be used with these settings: {why}")
            return c.compile
        if c.compile != "auto" or device.type != "cpu" or why_not_fused(c, objective, self.proposal) is not None:
            return None
        return self._fast.auto_mode(deadline)

    def _fused_search(
        self, mode: str, objective: Objective, state: LatentState, mean: Tensor, std: Tensor,
        generator: torch.Generator | None, deadline: float | None,
    ) -> tuple[tuple[Tensor, Tensor, Tensor, int, int, str], str]:
        """Run the fused search; a failed compile under `compile="auto"` warns and runs it uncompiled
        from the generator's state before the attempt (so the plan is the one the seed gives)."""
        rng = generator if generator is not None else torch.default_generator
        before = rng.get_state() if mode == "fused_compile" and state.device.type == "cpu" else None
        try:
            return self._fast.run(self.config, objective, state, mean, std, generator, deadline,
                                  compiled=mode == "fused_compile"), mode
        except Exception as e:
            if mode != "fused_compile" or self.config.compile != "auto":
                raise
            self._fast.fail(e)
            if before is not None:
                rng.set_state(before)
            return self._fast.run(self.config, objective, state, mean, std, generator, deadline, compiled=False), "fused"

    def _captured(
        self, mode: str, objective: Objective, state: LatentState, mean: Tensor, std: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, Tensor, int, int, str]:
        """Run `_search` (without a deadline or convergence stop) as a captured search over static
        buffers: `planned_iterations` iterations."""
        inputs = {"deter": state.deter, "stoch": state.stoch, "mean": mean, "std": std}

        def build_search(obj: Objective, counts: dict[str, int]):
            low = obj.model.action_low.to(state.device).clone()
            high = obj.model.action_high.to(state.device).clone()

            def search(x: dict[str, Tensor]) -> dict[str, Tensor]:
                m, v, nf, iters, evals, stopped = self._search(
                    obj, LatentState(x["deter"], x["stoch"]), x["mean"], x["std"], low, high, generator, None,
                    converge=False,
                )
                # fixed by the settings: all planned iterations run
                counts.update(iterations=iters, model_evals=evals, stopped=stopped)
                return {"mean": m, "value": v, "nonfinite": nf}

            return search

        def eager() -> dict[str, Tensor]:
            low, high = objective.model.action_low.to(state.device), objective.model.action_high.to(state.device)
            m, v, nf, _, _, _ = self._search(objective, state, mean, std, low, high, generator, None, converge=False)
            return {"mean": m, "value": v, "nonfinite": nf}

        # the proposal's id() is in the key: it must not be freed and its id reused
        out, runner = run_captured(self._cache, mode, objective, inputs, build_search, eager, generator=generator,
                                   planner="CEM", key_extra=(id(self.proposal),), keepalive=(self.proposal,))
        return (out["mean"], out["value"], out["nonfinite"], runner.counts["iterations"], runner.counts["model_evals"],
                runner.counts["stopped"])

    def _search(
        self,
        objective: Objective,
        state: LatentState,
        mean: Tensor,
        std: Tensor,
        low: Tensor,
        high: Tensor,
        generator: torch.Generator | None,
        deadline: float | None,
        *,
        converge: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, int, int, str]:
        """The CEM iterations from the sampling distribution `(mean, std)` `[B, H, A]`: at most
        `planned_iterations`, ending early at the `deadline` or (with `converge` and `tol > 0`) when
        the distribution has converged (`converged`).

        Capture-ready when `deadline` is None and `converge` is False: shapes are fixed by the
        settings, nothing reads a tensor's value on the host, and all randomness comes from
        `generator`.

        Returns:
            `(actions [B, H, A], value [B], nonfinite (0-dim long), iterations, model_evals, stopped)`,
            `stopped` one of `"iterations"`, `"budget"`, `"converged"`, `"deadline"`.
        """
        c = self.config
        b, h, k = state.batch, c.horizon, c.elites
        a = mean.shape[-1]
        dev = state.device
        starts: dict[int, LatentState] = {}
        elite_starts = state.expand(k) if c.gradient is not None else None
        n_keep = c.kept_elites
        kept: Tensor | None = None
        nonfinite = torch.zeros((), dtype=torch.long, device=dev)
        value = torch.zeros(b, device=dev)
        best_ret = torch.full((b,), float("-inf"), device=dev)
        best_act = mean
        iterations = 0
        model_evals = 0
        proposed = None
        if self.proposal is not None:
            proposed, evals = self._propose(objective, state, generator)
            model_evals += evals
        planned = c.planned_iterations
        stopped = "budget" if planned < c.iterations else "iterations"
        check = converge and c.tol > 0
        for i in range(planned):
            fresh = c.population(i)
            n_pi = 0 if proposed is None else min(proposed.shape[1], fresh)
            noise = self._noise(b, fresh - n_pi, h, a, generator, dev)
            cand = torch.maximum(torch.minimum(mean[:, None] + std[:, None] * noise, high), low)
            extra = [] if proposed is None else [proposed[:, :n_pi]]
            if kept is not None:
                extra.append(kept)
            if c.include_mean:
                extra.append(torch.maximum(torch.minimum(mean, high), low)[:, None])
            if extra:
                cand = torch.cat([cand, *extra], dim=1)
            rows = cand.shape[1]
            if rows not in starts:
                starts[rows] = state.expand(rows)
            ret = objective.returns(starts[rows], cand.reshape(b * rows, h, a), generator=generator)
            model_evals += b * rows * h
            ret, nf = rank_returns(ret.reshape(b, rows))
            nonfinite = nonfinite + nf
            if c.gradient is not None:
                cand, ret, evals, nf = self._refine(objective, elite_starts, cand, ret, low, high, generator)
                model_evals += evals
                nonfinite = nonfinite + nf
            if c.return_best:
                top_ret, top = ret.max(dim=1)
                top_act = cand.gather(1, top[:, None, None, None].expand(b, 1, h, a))[:, 0]
                better = top_ret > best_ret
                best_ret = torch.where(better, top_ret, best_ret)
                best_act = torch.where(better[:, None, None], top_act, best_act)
            if c.refit == "topk":
                elite_returns, idx = ret.topk(k, dim=1)
                elites = cand.gather(1, idx[:, :, None, None].expand(b, k, h, a))
                new_mean = elites.mean(dim=1)
                new_std = elites.std(dim=1, unbiased=False)
                value = elite_returns.mean(dim=1)
                if n_keep:
                    kept = elites[:, :n_keep]
            else:
                new_mean, new_std, value = _mppi_refit(cand, ret, c.temperature)
                if n_keep:
                    _, idx = ret.topk(n_keep, dim=1)
                    kept = cand.gather(1, idx[:, :, None, None].expand(b, n_keep, h, a))
            if c.momentum:
                new_mean = c.momentum * mean + (1.0 - c.momentum) * new_mean
                new_std = c.momentum * std + (1.0 - c.momentum) * new_std
            mean = new_mean
            std = new_std.clamp_min(c.min_std)
            iterations += 1
            if check and bool(converged(std, low, high, c.tol)):
                stopped = "converged"
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "deadline" if iterations < planned else stopped
                break
        if c.return_best:
            mean, value = best_act, best_ret
        return mean, value, nonfinite, iterations, model_evals, stopped

    def _noise(self, b: int, n: int, h: int, a: int, generator: torch.Generator | None, device) -> Tensor:
        """`[B, n, H, A]` the candidates' standard noise: coloured with `noise_beta`, the first
        `round(white_fraction * n)` rows of each environment white when `noise_beta != 0`."""
        c = self.config
        n_white = int(round(c.white_fraction * n)) if c.noise_beta != 0.0 else 0
        if n_white == 0:
            return colored_noise((b, n, h, a), c.noise_beta, generator=generator, device=device)
        white = torch.randn((b, n_white, h, a), generator=generator, device=device)
        if n_white == n:
            return white
        return torch.cat([white, colored_noise((b, n - n_white, h, a), c.noise_beta, generator=generator, device=device)],
                         dim=1)

    def _propose(self, objective: Objective, state: LatentState, generator: torch.Generator | None) -> tuple[Tensor, int]:
        """`[B, n, H, A]` sequences of the proposal policy rolled through the model (n =
        `policy_candidates`; sequence 0 is the policy's mode, the others samples), clipped into
        the bounds, and the imagined transitions this took."""
        c = self.config
        b, h, n = state.batch, c.horizon, c.policy_candidates
        mode, _, evals = policy_rollout(self.proposal, objective, state, h, generator=generator, deterministic=True)
        parts = [mode[:, None]]
        if n > 1:
            sampled, _, more = policy_rollout(
                self.proposal, objective, state.expand(n - 1), h, generator=generator, deterministic=False
            )
            parts.append(sampled.reshape(b, n - 1, h, -1))
            evals += more
        low = objective.model.action_low.to(state.device)
        high = objective.model.action_high.to(state.device)
        return torch.maximum(torch.minimum(torch.cat(parts, dim=1), high), low), evals

    def _refine(
        self,
        objective: Objective,
        elite_starts: LatentState,
        cand: Tensor,
        ret: Tensor,
        low: Tensor,
        high: Tensor,
        generator: torch.Generator | None,
    ) -> tuple[Tensor, Tensor, int, Tensor]:
        """CEM+GD: gradient ascent on the K best of `cand [B, rows, H, A]` (returns `ret [B, rows]`),
        written back in place of them with the best return seen for each."""
        c = self.config
        b, _, h, a = cand.shape
        k = c.elites
        _, idx = ret.topk(k, dim=1)
        gidx = idx[:, :, None, None].expand(b, k, h, a)
        out = ascend(
            objective, elite_starts, cand.gather(1, gidx).reshape(b * k, h, a), **vars(c.gradient),
            low=low, high=high, generator=generator,
        )
        cand = cand.scatter(1, gidx, out.actions.reshape(b, k, h, a))
        ret = ret.scatter(1, idx, out.returns.reshape(b, k))
        return cand, ret, out.model_evals, out.nonfinite


def _mppi_refit(cand: Tensor, ret: Tensor, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """The softmax-weighted refit over all candidates (`refit="mppi"`, as in TD-MPC).

    Args:
        cand: `[B, N, H, A]` candidates; ret: `[B, N]` ranked returns (non-finite already -inf).
        temperature: λ > 0.

    Returns:
        `(mean [B, H, A], std [B, H, A], value [B])` with weights w = softmax(ret / λ) per
        environment: the weighted mean, the weighted standard deviation and the weighted mean
        return. -inf returns get weight 0; if all returns of an environment are -inf, the weights
        are uniform and its value is -inf.
    """
    best = ret.max(dim=1, keepdim=True).values
    z = (ret - best) / temperature  # <= 0, the best is 0: no overflow for any λ
    z = torch.where(torch.isnan(z), torch.zeros_like(z), z)  # all -inf: -inf - -inf
    w = torch.softmax(z, dim=1)
    mean = (w[:, :, None, None] * cand).sum(dim=1)
    std = (w[:, :, None, None] * (cand - mean[:, None]) ** 2).sum(dim=1).sqrt()
    value = torch.where(w > 0, w * ret, torch.zeros_like(ret)).sum(dim=1)
    value = torch.where(torch.isneginf(best[:, 0]), best[:, 0], value)
    return mean, std, value
