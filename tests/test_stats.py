"""enpheeph_onnx.stats: the t interval over trials, and clustered outcome-rate intervals
(Wilson at the effective sample size) as wide as the trials say."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.stats import (
    bounded_mean_interval,
    clustered_proportion,
    mean_interval,
    proportion,
    wilson,
)


def test_mean_interval_is_the_t_interval() -> None:
    v = np.array([0.9, 0.8, 1.0, 0.7])
    m = mean_interval(v)
    from scipy.stats import t

    half = t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert m.mean == pytest.approx(0.85) and m.trials == 4
    assert (m.low, m.high) == pytest.approx((0.85 - half, 0.85 + half))
    one = mean_interval(np.array([0.5]), bounds=(0.0, 1.0))
    assert (one.low, one.high) == (0.0, 1.0)  # one trial says nothing about the spread


def test_clustered_rate_is_as_wide_as_the_trials_say() -> None:
    # 30 trials of 360 inputs; one trial collapses (every input critical)
    k = np.array([0] * 29 + [360])
    n = np.full(30, 360)
    c = clustered_proportion(k, n)
    pooled = proportion(int(k.sum()), int(n.sum()))
    assert c.rate == pytest.approx(1 / 30)
    assert c.trials == 30
    # the pooled-pairs Wilson interval is ~10x narrower than the trial-level one
    assert (c.high - c.low) > 8 * (pooled.high - pooled.low)
    assert (c.low, c.high) == pytest.approx(wilson(1 / 30, 30.0))
    # nothing observed: the bound comes from the number of trials, not of pairs
    z = clustered_proportion(np.zeros(30), np.full(30, 360))
    assert z.rate == 0 and z.low == 0 and z.high == pytest.approx(0.113513, abs=1e-6)


def test_bounds_grow_with_every_failure() -> None:
    """Adding a failure never narrows the upper bound (a gate never passes more easily)."""
    highs = []
    for extra in range(0, 400, 7):
        k = np.zeros(30)
        k[0] = extra
        highs.append(clustered_proportion(k, np.full(30, 360)).high)
    assert all(b >= a for a, b in itertools.pairwise(highs))
    assert highs[0] > 0.11


def test_bounded_mean_interval_never_collapses() -> None:
    two = bounded_mean_interval(np.array([0.9972, 0.9972]))
    assert two.mean == pytest.approx(0.9972) and two.trials == 2
    assert (two.low, two.high) == pytest.approx(wilson(0.9972, 2.0))
    assert two.high - two.low > 0.5
    many = bounded_mean_interval(np.full(2000, 0.9972))
    assert many.high - many.low < 0.01
    with pytest.raises(EnpheephError, match=r"values in \[0, 1\]"):
        bounded_mean_interval(np.array([1.5]))
