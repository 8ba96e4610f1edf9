"""enpheeph_onnx.stats: the t interval over trials, and clustered outcome-rate intervals
(Wilson at the effective sample size) as wide as the trials say."""

from __future__ import annotations

import numpy as np
import pytest

from enpheeph_onnx.stats import clustered_proportion, mean_interval, proportion, wilson


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
    assert c.trials == 30 and c.n_eff == pytest.approx(30.0)
    # the pooled-pairs Wilson interval is ~10x narrower than the trial-level one
    assert (c.high - c.low) > 8 * (pooled.high - pooled.low)
    assert (c.low, c.high) == pytest.approx(wilson(1 / 30, 30.0))
    # independent pairs (binomial spread across trials) keep the full sample size
    rng = np.random.default_rng(0)
    kb = rng.binomial(360, 0.2, size=200)
    cb = clustered_proportion(kb, np.full(200, 360))
    assert 0.5 * 72000 < cb.n_eff <= 72000
    # nothing observed: the bound comes from the number of trials, not of pairs
    z = clustered_proportion(np.zeros(30), np.full(30, 360))
    assert z.rate == 0 and z.high == pytest.approx(wilson(0.0, 30.0)[1]) and z.high > 0.1
