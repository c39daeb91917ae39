"""CEM's fused search, the fast path on the CPU: one pure function per CEM iteration, optionally
compiled by `torch.compile` (inductor's C++/OpenMP backend on the CPU, which needs no GPU).

On a CPU, a CEM decision at PlaNet's settings spends most of its time outside the matrix products:
per imagined step a dozen elementwise kernels (ELU, the GRU's gates, softplus, the sample), each
one a pass over memory, plus Python between them (`benchmarks/plan_speed.py` prints the products'
own time, the floor, beside every row). The fused search computes one CEM iteration as a single
pure function of tensors (`cem_iteration`): candidates from pre-drawn noise, H prior steps of the
`FusedRSSM` weights (`prior_returns`), the reward head over all visited beliefs, top-K and the refit.
Eagerly this already saves the `nn.Module` calls and one of the GRU's two products per step; through
`torch.compile` the elementwise work of each step fuses into a few C++ loops.

Randomness stays outside the compiled region: before each iteration the caller's generator fills
two preallocated buffers, the candidates' noise `[B, J, H, A]` and the latent samples' `[H, B*J, S]`,
in the order the eager search draws them (`normal_` on a buffer draws what `torch.randn` of its shape
draws), so the fused plan equals the eager plan of the same seed up to float rounding (tested).
The mean and std are refitted in place in buffers of their own.

It serves the settings it covers (`why_not_fused`): PlaNet's CEM (top-K refit, white noise,
optionally `momentum` and `min_std`) over the default objective (the learned reward head, any
discount, no value, no terminal term, no continuation) of an `RSSMWorldModel` (or its `FusedRSSM` view,
fp32 or bf16: `Objective(FusedRSSM(model, precision="bf16"))` runs the search's matrix products in
bfloat16, which on a CPU with AMX is about 2.4 times faster at PlaNet's size, and not exact: see
docs/benchmarks.md, "bf16 products on the CPU").
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from latentplan.worldmodels.fused import FusedRSSM, prior_returns
from latentplan.worldmodels.rssm import RSSMWorldModel
from latentplan.worldmodels.state import LatentState

from .objective import Objective
from .rewards import BoundReward, LearnedReward

__all__ = ["cem_iteration", "why_not_fused", "FusedCEMSearch", "compile_cache_dir"]


def cem_iteration(
    mean: Tensor, std: Tensor, noise: Tensor, eps: Tensor, deter: Tensor, stoch: Tensor, low: Tensor, high: Tensor,
    w: dict[str, Tensor], *, elites: int, momentum: float, min_std: float, stoch_min_std: float, discount: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One CEM iteration of PlaNet's planner as a pure function (what `FusedCEMSearch` compiles).

    Args:
        mean, std: `[B, H, A]` the sampling distribution.
        noise: `[B, J, H, A]` standard normal noise of the candidates.
        eps: `[H, B * J, S]` standard normal noise of the latent samples (step-major).
        deter, stoch: `[B, D]`, `[B, S]` the beliefs planned from.
        low, high: `[A]` action bounds.
        w: the fused weights of a `FusedRSSM` (`_w`; fp32, or bf16 products with `precision="bf16"`).
        elites: K; momentum: α of the refit (0: PlaNet's); min_std: floor of the refitted std;
        stoch_min_std: the model's `config.min_std`; discount: γ of the return.

    Returns:
        `(mean [B, H, A], std [B, H, A], value [B], nonfinite)`: the refitted distribution, the mean
        return of the elites and the number of non-finite returns (0-dim long; they rank as -inf).

    Source: Hafner et al. 2019 (PlaNet), Sec. 3; Rubinstein 1997 (CEM).
    """
    b, j, h, a = noise.shape
    cand = torch.maximum(torch.minimum(mean[:, None] + std[:, None] * noise, high), low)  # [B, J, H, A]
    ret = prior_returns(w, deter.repeat_interleave(j, dim=0), stoch.repeat_interleave(j, dim=0),
                        cand.reshape(b * j, h, a), eps, min_std=stoch_min_std, discount=discount).reshape(b, j)
    finite = torch.isfinite(ret)
    ret = torch.where(finite, ret, torch.full_like(ret, float("-inf")))
    elite_returns, idx = ret.topk(elites, dim=1)
    chosen = cand.gather(1, idx[:, :, None, None].expand(b, elites, h, a))
    new_mean, new_std = chosen.mean(dim=1), chosen.std(dim=1, unbiased=False)
    if momentum:
        new_mean = momentum * mean + (1.0 - momentum) * new_mean
        new_std = momentum * std + (1.0 - momentum) * new_std
    return new_mean, new_std.clamp_min(min_std), elite_returns.mean(dim=1), (~finite).sum()


def why_not_fused(config: Any, objective: Objective, proposal: Any) -> str | None:
    """Why a CEM search cannot take the fused path, or None if it can.

    Args:
        config: the `CEMConfig`; objective: the plan call's `Objective`; proposal: the CEM's policy.
    """
    c = config
    off = [name for name, on in (
        ("refit='mppi'", c.refit != "topk"), ("noise_beta", c.noise_beta != 0.0), ("keep_elites", c.kept_elites > 0),
        ("include_mean", c.include_mean), ("population_decay", c.population_decay != 1.0),
        ("return_best", c.return_best), ("gradient", c.gradient is not None), ("a proposal policy", proposal is not None),
    ) if on]
    if off:
        return "the fused search covers PlaNet's CEM (with momentum, min_std) only; set: " + ", ".join(off)
    model = objective.model
    if isinstance(model, FusedRSSM):
        if model.precision not in ("fp32", "bf16"):
            return f"the fused search runs fp32 or bf16 products; the FusedRSSM has precision {model.precision!r}"
        model = model.model
    if not isinstance(model, RSSMWorldModel) or any(
            getattr(type(model), fn) is not getattr(RSSMWorldModel, fn) for fn in ("imagine_step", "reward", "rollout")):
        return f"the fused search needs an RSSMWorldModel's own prior step and reward head; got {type(model).__name__}"
    if model.pre_gru.weight.dtype != torch.float32:
        return f"the fused search runs float32 models; this one is {model.pre_gru.weight.dtype}"
    terms = objective.rewards
    plain = len(terms) == 1 and isinstance(terms[0], BoundReward) and type(terms[0].term) is LearnedReward
    if not plain or objective.bootstraps or getattr(objective, "terminates", False):
        return ("the fused search computes the default objective only (the learned reward, no value, no terminal "
                "term, no continuation)")
    return None


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled kernels across processes: `$TORCHINDUCTOR_CACHE_DIR` if set,
    else `~/.cache/latentplan/inductor` (set as `TORCHINDUCTOR_CACHE_DIR` for this process when
    the fused search first compiles), so that a second process loads the kernels instead of
    compiling them again."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path.home() / ".cache" / "latentplan" / "inductor")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


AUTO_COMPILE_AFTER_EVALS = 4_000_000
"""Imagined transitions (summed over environments) that one planner spends in eager decisions
before `compile="auto"` compiles its fused search on the CPU: a ski-rental rule. On the 2-core
development machine an eager transition costs about 8 us at both PlaNet's and the demo's size
(934 ms per 120,000; 48 ms per 6,000; two threads) and a compile with an empty kernel cache about
35 s at either (4-7 s with a filled one), so the compile starts once eager planning has spent
about what it costs: a run then pays at most about twice what the better choice in hindsight
would have. The count, not a clock, decides, so a seeded run switches at the same decision every
time and reproduces. PlaNet's CEM (120,000 per decision) compiles at its 35th decision and the
demo's (6,000) would at its 668th; a three-episode `compare` cell at the demo's 6,000 (375
decisions) never compiles (docs/gpu.md). When the length of the run is known in advance (a
`Trainer` sets `CEM.expected_transitions` from its config) and it will spend at least twice the
threshold, the planner compiles from its first decision instead: the demo (35 planned episodes of
125 decisions, 26 million transitions) and PlaNet's training do."""

_COMPILED: Callable | None = None


def _compiled_iteration() -> Callable:
    """`cem_iteration` through `torch.compile` (one compiled function per process; it recompiles
    for new shapes or settings, as guarded by dynamo)."""
    global _COMPILED
    if _COMPILED is None:
        compile_cache_dir()
        _COMPILED = torch.compile(cem_iteration, dynamic=False)
    return _COMPILED


class FusedCEMSearch:
    """The fused search of one `CEM` (its buffers, and the compiled iteration once compiled).

    `run(...)` has the contract of `CEM._search` for the settings `why_not_fused` accepts.
    `compile_s` is the wall time the first compiled call of each shape took (warm-up included).
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._fused: dict[int, FusedRSSM] = {}
        self.compile_s: dict[tuple, float] = {}
        self.evals_seen = 0
        self.expected_evals = 0
        self.failed: str | None = None

    def auto_mode(self, deadline: float | None) -> str | None:
        """The mode `compile="auto"` takes on the CPU for a decision of covered settings:
        `"fused_compile"` once this planner's eager decisions have spent `AUTO_COMPILE_AFTER_EVALS`
        imagined transitions (`count`), or from the first decision when the caller expects the
        whole run to spend at least twice that (`expected_evals`, set from a training config: a
        known horizon, so the compile is sure to pay); None (the eager loop) before that, after a
        failed compile, with `LATENTPLAN_COMPILE=0` in the environment, or for a decision with a
        `deadline` (a real-time caller never gets a compile's stall; it chooses
        `compile="fused_compile"` and warms up before its loop)."""
        if self.failed is not None or os.environ.get("LATENTPLAN_COMPILE", "1") == "0" or deadline is not None:
            return None
        known_long = self.expected_evals >= 2 * AUTO_COMPILE_AFTER_EVALS
        return "fused_compile" if known_long or self.evals_seen >= AUTO_COMPILE_AFTER_EVALS else None

    def count(self, model_evals: int) -> None:
        """Add an eager decision's imagined transitions (over all environments) to the running
        total that `auto_mode` compares with `AUTO_COMPILE_AFTER_EVALS`."""
        self.evals_seen += int(model_evals)

    def fail(self, error: Exception) -> None:
        """Remember that compiling failed (later `auto` calls run uncompiled) and warn once."""
        self.failed = f"{type(error).__name__}: {error}"
        warnings.warn(f"CEM: compiling the fused search failed ({self.failed}); planning with the uncompiled "
                      "fused search from now on", RuntimeWarning, stacklevel=4)

    def _weights(self, model) -> tuple[FusedRSSM, dict[str, Tensor]]:
        if isinstance(model, FusedRSSM):
            fused = model
        else:
            fused = self._fused.get(id(model))
            if fused is None or fused.model is not model:
                if len(self._fused) >= 4:
                    self._fused.clear()
                fused = self._fused[id(model)] = FusedRSSM(model)
        fused.refresh()  # cheap: compares the parameters' version counters
        return fused, fused._w

    def run(
        self, config: Any, objective: Objective, state: LatentState, mean: Tensor, std: Tensor,
        generator: torch.Generator | None, deadline: float | None, *, compiled: bool,
    ) -> tuple[Tensor, Tensor, Tensor, int, int, str]:
        """The CEM iterations, fused (and `compiled`): `(actions [B, H, A], value [B], nonfinite,
        iterations, model_evals, stopped)`, as `CEM._search`: at most `planned_iterations` (the
        budget `max_evals`), ending early at the deadline or when converged (`tol`), as there."""
        from .cem import converged
        c = config
        fused, w = self._weights(objective.model)
        b, h, a = mean.shape
        j, s, dev = c.candidates, fused.model.config.stoch, state.device
        key = (b, j, h, a, s, dev)
        if key not in self._buffers:
            self._buffers[key] = (torch.empty(b, j, h, a, device=dev), torch.empty(h, b * j, s, device=dev))
        noise, eps = self._buffers[key]
        low, high = fused.action_low.to(dev), fused.action_high.to(dev)
        step = _compiled_iteration() if compiled else cem_iteration
        settings = dict(elites=c.elites, momentum=c.momentum, min_std=c.min_std,
                        stoch_min_std=fused.model.config.min_std, discount=objective.discount)
        mean = mean.clone(memory_format=torch.contiguous_format)  # refitted in place below
        std = std.clone(memory_format=torch.contiguous_format)
        # the compiled iteration is specialised to its inputs' exact strides: a belief with others
        # (a slice, a transpose, or a [1, D] row with an odd stride in its size-1 dimension) would
        # recompile it, seconds of stall in a control loop; fresh row-major copies (B x (D + S))
        deter = state.deter.clone(memory_format=torch.contiguous_format)
        stoch = state.stoch.clone(memory_format=torch.contiguous_format)
        nonfinite = torch.zeros((), dtype=torch.long, device=dev)
        value = torch.zeros(b, device=dev)
        iterations = 0
        planned = c.planned_iterations
        stopped = "budget" if planned < c.iterations else "iterations"
        for _ in range(planned):
            noise.normal_(generator=generator)  # what colored_noise(beta=0), i.e. torch.randn, draws
            for t in range(h):
                eps[t].normal_(generator=generator)  # what the model's rollout draws at step t
            t0 = time.perf_counter()
            new_mean, new_std, value, nf = step(mean, std, noise, eps, deter, stoch, low, high, w, **settings)
            if compiled and key not in self.compile_s:
                self.compile_s[key] = time.perf_counter() - t0
            mean.copy_(new_mean)
            std.copy_(new_std)
            nonfinite += nf
            iterations += 1
            if c.tol > 0 and bool(converged(std, low, high, c.tol)):
                stopped = "converged"
                break
            if deadline is not None and time.perf_counter() >= deadline:
                stopped = "deadline" if iterations < planned else stopped
                break
        return mean, value, nonfinite, iterations, iterations * b * j * h, stopped

