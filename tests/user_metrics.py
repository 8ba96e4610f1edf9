"""User outcome metrics for the tests (``--metric tests.user_metrics:NAME``): each is called
per batch as ``f(golden, faulty, labels)`` with dicts of output arrays."""

from __future__ import annotations

import numpy as np

CALLS: list[int] = []  # batch sizes seen by `closeness` (the per-batch contract)


def rel_error(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray]) -> np.ndarray:
    """Per input: the largest relative error over every output element, float64 [N]."""
    errs = []
    for name, g in golden.items():
        g64 = g.reshape(len(g), -1).astype(np.float64)
        f64 = faulty[name].reshape(len(g), -1).astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            errs.append((np.abs(f64 - g64) / (np.abs(g64) + 1e-3)).max(1))
    return np.max(errs, axis=0)


def closeness(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
              labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Critical beyond 10 % relative error; score 1 / (1 + error) in (0, 1]."""
    CALLS.append(len(next(iter(golden.values()))))
    err = rel_error(golden, faulty)
    with np.errstate(invalid="ignore"):
        return err > 0.1, 1.0 / (1.0 + err)


def flags_only(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
               labels: np.ndarray | None) -> np.ndarray:
    """Critical beyond 10 % relative error, no score."""
    return rel_error(golden, faulty) > 0.1


def wrong_shape(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
                labels: np.ndarray | None) -> np.ndarray:
    return np.zeros((len(next(iter(golden.values()))), 2), bool)


def int_flags(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
              labels: np.ndarray | None) -> np.ndarray:
    return np.zeros(len(next(iter(golden.values()))), np.int64)


def three(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
          labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = len(next(iter(golden.values())))
    return np.zeros(n, bool), np.zeros(n), np.zeros(n)


def raises(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
           labels: np.ndarray | None) -> np.ndarray:
    raise KeyError("no output 'boxes'")


def nan_score(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray],
              labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    n = len(next(iter(golden.values())))
    return np.zeros(n, bool), np.full(n, np.nan)


NOT_CALLABLE = 3
