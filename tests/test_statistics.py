"""latentplan.statistics: the intervals of a mean return, against scipy's own computations."""

import numpy as np
import pytest
import scipy.stats

from latentplan.statistics import bootstrap_ci, t_interval


def test_bootstrap_ci_is_scipys_bca_interval():
    v = [700.0, 812.5, 760.0, 655.0, 801.0]
    ref = scipy.stats.bootstrap((np.array(v),), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                                rng=np.random.default_rng(0)).confidence_interval
    assert bootstrap_ci(v) == (float(ref.low), float(ref.high))
    assert bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    assert bootstrap_ci([5.0]) is None


def test_t_interval_is_the_students_t_interval():
    v = np.array([700.0, 812.5, 760.0, 655.0, 801.0])
    lo, hi = scipy.stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=scipy.stats.sem(v))
    assert t_interval(v) == pytest.approx((lo, hi), rel=1e-12)
    lo90, hi90 = t_interval(v, confidence=0.9)
    assert lo < lo90 < v.mean() < hi90 < hi


def test_t_interval_edge_cases():
    assert t_interval([3.0]) is None
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="finite"):
        t_interval([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=95)
