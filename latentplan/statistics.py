"""Confidence intervals of a mean return over episodes: Student's t and the BCa bootstrap (scipy),
and `finite_json`, which makes results with NaN/inf numbers writable as standard JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bootstrap_ci", "finite_json", "t_interval"]


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
