"""Campaign statistics: sample size and confidence intervals.

* Statistical fault injection sample size — Leveugle, Calvez, Maistri, Vanhauwaert,
  "Statistical fault injection: quantified error and confidence", DATE 2009, eq. (4):
  ``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))`` with N the fault population
  (elements x bits), e the margin of error, p the estimated proportion (0.5 when
  unknown: the worst case) and t the two-sided standard normal quantile of the
  confidence level, ``t = Phi^-1(1 - (1 - C) / 2)`` (1.96 for 95 %, 2.5758 for 99 %).
* Binomial proportions get Wilson score intervals
  (``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``): used over *trials*
  (e.g. the probability that a trial has any critical SDC), whose outcomes are independent.
* The trial is the sampling unit of a campaign: the inputs of one trial share its faults,
  so (trial, input) outcomes are clustered and a binomial interval over pairs is 10-20x too
  narrow. A per-trial quantity bounded in [0, 1] (a trial's accuracy, the fraction of its
  inputs with an outcome) gets a Wilson interval with the *trials* as the sample
  (:func:`bounded_mean_interval`, :func:`clustered_proportion`): among variables in
  [0, 1] with a given mean the Bernoulli one has the largest variance, so this is
  conservative whatever the within-trial correlation (and exact when every trial is all or
  nothing). It never has zero width (two identical trials do not demonstrate anything), and
  its upper bound grows with the observed rate. A Student t interval over trials
  (:func:`mean_interval`) is kept for unbounded per-trial quantities; it collapses to zero
  width when all trials agree, so summaries do not use it for gates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import EnpheephError


def normal_quantile(confidence: float) -> float:
    """Two-sided standard normal quantile t for a confidence level in (0, 1)."""
    from scipy.stats import norm

    if not 0 < confidence < 1:
        raise EnpheephError(f"confidence must be in (0, 1), e.g. 0.95 or 0.99; got {confidence}")
    return float(norm.ppf(1 - (1 - confidence) / 2))


def sample_size(population: float, margin: float, confidence: float, p: float = 0.5) -> int:
    """Number of fault-injection trials for a margin of error at a confidence level.

    Args:
        population: N, the fault population (elements x bits), >= 1.
        margin: e, the margin of error as a fraction (0.01 = 1 %), in (0, 1).
        confidence: the confidence level, e.g. 0.99.
        p: estimated proportion of the outcome of interest, in (0, 1); 0.5 is the worst case.

    Returns:
        ``ceil(n)`` from Leveugle et al. (DATE 2009), at most N.

    Raises:
        EnpheephError: a parameter is out of range.

    >>> sample_size(1e9, 0.01, 0.99)
    16587
    """
    if not (population >= 1 and math.isfinite(population)):
        raise EnpheephError(f"population must be a finite number >= 1, got {population}")
    if not 0 < margin < 1:
        raise EnpheephError(f"margin must be in (0, 1), e.g. 0.01 for 1 %; got {margin}")
    if not 0 < p < 1:
        raise EnpheephError(f"p must be in (0, 1); got {p}")
    t = normal_quantile(confidence)
    n = population / (1 + margin**2 * (population - 1) / (t**2 * p * (1 - p)))
    return int(min(math.ceil(n - 1e-9), population))


@dataclass(frozen=True)
class Proportion:
    """``k`` successes out of ``n`` with a Wilson score interval."""

    k: int
    n: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    def to_json(self) -> dict[str, float | int]:
        return {"k": self.k, "n": self.n, "rate": self.rate, "ci_low": self.low,
                "ci_high": self.high}


def proportion(k: int, n: int, confidence: float = 0.95) -> Proportion:
    """Wilson score interval of k / n (scipy.stats.binomtest); NaN bounds when n = 0."""
    if n == 0:
        return Proportion(0, 0, float("nan"), float("nan"), confidence)
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Proportion(int(k), int(n), float(ci.low), float(ci.high), confidence)


@dataclass(frozen=True)
class MeanInterval:
    """The mean of per-trial values with a Student t interval over trials."""

    mean: float
    low: float
    high: float
    trials: int
    confidence: float = 0.95

    def to_json(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high,
                "trials": self.trials}


def mean_interval(values: np.ndarray, confidence: float = 0.95,
                  bounds: tuple[float, float] = (-math.inf, math.inf)) -> MeanInterval:
    """Mean of ``values`` (one per trial) with the t interval
    ``mean +- t_{m-1} s / sqrt(m)`` (``scipy.stats.t``), clipped to ``bounds``.

    With fewer than two trials the bounds are ``bounds`` themselves (nothing is known
    about the spread); NaN values are ignored.
    """
    from scipy.stats import t as student_t

    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    m = len(v)
    if m == 0:
        return MeanInterval(float("nan"), float("nan"), float("nan"), 0, confidence)
    mean = float(v.mean())
    if m < 2:
        return MeanInterval(mean, float(bounds[0]), float(bounds[1]), m, confidence)
    half = float(student_t.ppf(1 - (1 - confidence) / 2, m - 1) * v.std(ddof=1) / math.sqrt(m))
    return MeanInterval(mean, max(mean - half, bounds[0]), min(mean + half, bounds[1]), m,
                        confidence)


@dataclass(frozen=True)
class ClusteredProportion(Proportion):
    """A pooled rate ``k / n`` over ``trials`` trials (clusters of inputs) with a Wilson
    interval over the trials."""

    trials: int = 0


def wilson(p: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` (possibly effective,
    non-integer) trials: ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``
    (Wilson, JASA 22, 1927)."""
    if n <= 0:
        return float("nan"), float("nan")
    z = normal_quantile(confidence)
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    low = 0.0 if p <= 0 else max((centre - half) / denom, 0.0)
    high = 1.0 if p >= 1 else min((centre + half) / denom, 1.0)
    return low, high


def clustered_proportion(k: np.ndarray, n: np.ndarray, confidence: float = 0.95
                         ) -> ClusteredProportion:
    """Pooled proportion ``sum(k) / sum(n)`` of outcomes over trials with a Wilson interval
    whose sample is the trials (see the module docstring).

    Args:
        k: ``[m]`` outcomes of interest per trial.
        n: ``[m]`` inputs per trial.
    """
    k = np.asarray(k, np.float64)
    n = np.asarray(n, np.float64)
    m, total, hits = len(k), float(n.sum()), float(k.sum())
    if m == 0 or total == 0:
        return ClusteredProportion(0, 0, float("nan"), float("nan"), confidence, m)
    p = hits / total
    low, high = wilson(p, float(m), confidence)
    return ClusteredProportion(int(hits), int(total), low, high, confidence, m)


def bounded_mean_interval(values: np.ndarray, confidence: float = 0.95) -> MeanInterval:
    """Mean of per-trial values in [0, 1] (e.g. accuracies) with a Wilson interval over the
    trials (see the module docstring); NaN values are ignored.

    Raises:
        EnpheephError: a value outside [0, 1].
    """
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if len(v) and (v.min() < 0 or v.max() > 1):
        raise EnpheephError("bounded_mean_interval needs values in [0, 1]")
    if not len(v):
        return MeanInterval(float("nan"), float("nan"), float("nan"), 0, confidence)
    mean = float(v.mean())
    low, high = wilson(mean, float(len(v)), confidence)
    return MeanInterval(mean, min(low, mean), max(high, mean), len(v), confidence)
