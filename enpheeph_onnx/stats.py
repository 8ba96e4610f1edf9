"""Campaign statistics: sample size and confidence intervals.

* Statistical fault injection sample size — Leveugle, Calvez, Maistri, Vanhauwaert,
  "Statistical fault injection: quantified error and confidence", DATE 2009, eq. (4):
  ``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))`` with N the fault population
  (elements x bits), e the margin of error, p the estimated proportion (0.5 when
  unknown: the worst case) and t the two-sided standard normal quantile of the
  confidence level, ``t = Phi^-1(1 - (1 - C) / 2)`` (1.96 for 95 %, 2.5758 for 99 %).
* Binomial proportions get Wilson score intervals
  (``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
