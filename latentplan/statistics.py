"""Confidence intervals of a mean return over episodes: Student's t and the BCa bootstrap (scipy);
the paired difference of two planners run on the same seeds; and `finite_json`, which makes results
with NaN/inf numbers writable as standard JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairedDifference", "bootstrap_ci", "finite_json", "paired_difference", "t_interval"]


def t_interval(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float] | None:
    """Student's t confidence interval of the mean of `values` (`[N]`, one number per episode).

    The interval for a handful of episodes (the demo's final evaluation): `mean ± t_{N-1} · s / √N`,
    with `scipy.stats.t`. It assumes roughly normal returns; with 20 or more episodes prefer
    `bootstrap_ci`, which does not.

    Returns:
        `(low, high)`, or `None` with fewer than 2 values; equal values give `(v, v)`.

    Raises:
        ValueError: if `confidence` is not in (0, 1) or a value is not finite.
    """
    import scipy.stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"t_interval: confidence must be in (0, 1); got {confidence}")
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"t_interval: values must be finite; got {v.tolist()}")
    if v.size < 2:
        return None
    mean = float(v.mean())
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean - half, mean + half


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 9999,
                 seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap confidence interval of the mean of `values`, with `scipy.stats.bootstrap` (BCa).

    Args:
        values: one number per episode (`[N]`).
        confidence: the confidence level.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling (`numpy.random.default_rng`), so the interval is reproducible.

    Returns:
        `(low, high)`, or `None` with fewer than 2 values. Equal values give `(v, v)`; if BCa
        is undefined for the data the percentile interval is returned.

    Raises:
        ValueError: if `confidence` is not in (0, 1), `n_resamples` is not an int >= 2, or a
            value is not finite (NaN/inf has no interval; the caller decides what to report).

    Source: Efron 1987, "Better Bootstrap Confidence Intervals" (BCa); `scipy.stats.bootstrap`.
    """
    import scipy.stats

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1); got {confidence}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 2:
        raise ValueError(f"bootstrap_ci: n_resamples must be an int >= 2; got {n_resamples!r}")
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"bootstrap_ci: values must be finite; got {v.tolist()}")
    if v.size < 2:
        return None
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    for method in ("BCa", "percentile"):
        res = scipy.stats.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                    method=method, rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    return None


@dataclass(frozen=True)
class PairedDifference:
    """The difference `b - a` of two planners' returns over episodes run from the same seeds.

    Attributes:
        n: the number of pairs (seeds both ran).
        mean: the mean of the differences `d_i = b_i - a_i` (return units).
        ci: the BCa bootstrap interval of that mean (`bootstrap_ci(d)`), `None` with one pair.
        t_ci: Student's t interval of that mean (`t_interval(d)`), `None` with one pair.
        p_value: two-sided paired t-test of mean 0 (`scipy.stats.ttest_rel(b, a)`); `None` with
            one pair or when every difference is the same (no spread to test against).
        wins, ties, losses: pairs with `b > a`, `b == a`, `b < a`.
    """

    n: int
    mean: float
    ci: tuple[float, float] | None
    t_ci: tuple[float, float] | None
    p_value: float | None
    wins: int
    ties: int
    losses: int


def paired_difference(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95,
                      n_resamples: int = 9999, seed: int = 0) -> PairedDifference:
    """How much `b` beats `a` when both ran from the same seeds: statistics of `d = b - a`.

    Pairing removes what the seed decides for both (the start state, the env's noise), which
    often dominates the spread of each planner's returns: two intervals that overlap do not
    mean no difference, while the interval of the paired differences can exclude 0.

    Args:
        a, b: `[N]` returns, `a[i]` and `b[i]` from the same seed.
        confidence, n_resamples, seed: as in `bootstrap_ci` (and `t_interval`'s `confidence`).

    Returns:
        A `PairedDifference`.

    Raises:
        ValueError: `a` and `b` differ in length or are empty, a value is not finite, or a bad
            `confidence` / `n_resamples`.

    Source: the paired t-test (Student 1908; `scipy.stats.ttest_rel`) and Efron 1987's BCa
    bootstrap of the mean difference.
    """
    import scipy.stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_difference: a and b must be non-empty [N] of one length; got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"paired_difference: returns must be finite; got {x.tolist()} and {y.tolist()}")
    d = y - x
    ci = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    t_ci = t_interval(d, confidence=confidence)
    p = None if d.size < 2 or np.all(d == d[0]) else float(scipy.stats.ttest_rel(y, x).pvalue)
    return PairedDifference(int(d.size), float(d.mean()), ci, t_ci, p, int((d > 0).sum()), int((d == 0).sum()),
                            int((d < 0).sum()))


def finite_json(value: Any) -> Any:
    """A copy of `value` (nested dicts, lists and tuples of plain values) with every NaN or +-inf
    float replaced by `None`, so `json.dumps(..., allow_nan=False)` writes standard JSON (which has
    no NaN or Infinity; Python's default writes the tokens `NaN`/`Infinity`, which other readers
    refuse). Tuples become lists; everything else is returned as it is.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
