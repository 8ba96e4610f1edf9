"""Outcome of each (trial, input) pair against the golden run, and top-1 correctness."""

from __future__ import annotations

import enum

import numpy as np


class Outcome(enum.IntEnum):
    """The outcome of one input of one trial (first match wins: DUE, masked, critical SDC,
    tolerable SDC). DUE here means a NaN or Inf in an output, or a faulty run that
    onnxruntime aborts (say, an index computed from a corrupted tensor out of range): a
    proxy for an error the hardware or runtime would detect. How many NaNs survive depends
    on the runtime's kernels (onnxruntime's CPU MaxPool drops a NaN depending on its
    position in the window, measured)."""

    MASKED = 0
    TOLERABLE_SDC = 1
    CRITICAL_SDC = 2
    DUE = 3

    @property
    def key(self) -> str:
        """The JSON / database name: ``masked``, ``tolerable_sdc``, ``critical_sdc``, ``due``."""
        return self.name.lower()


OUTCOMES: tuple[str, ...] = tuple(o.key for o in Outcome)


def classify(golden: dict[str, np.ndarray], faulty: dict[str, np.ndarray], output: str
             ) -> np.ndarray:
    """Per-sample :class:`Outcome` codes, ``uint8 [N]``.

    Args:
        golden, faulty: outputs keyed by name, batch along axis 0.
        output: the classifier output (top-1 over its flattened non-batch axes).
    """
    n = len(golden[output])
    differs = np.zeros(n, dtype=bool)
    due = np.zeros(n, dtype=bool)
    for name, g in golden.items():
        f = faulty[name]
        if g.dtype != f.dtype or g.shape != f.shape:
            differs |= True
        else:
            differs |= (g.reshape(n, -1).view(np.uint8) != f.reshape(n, -1).view(np.uint8)
                        ).any(1)
        if np.issubdtype(f.dtype, np.floating):
            due |= ~np.isfinite(f.reshape(n, -1)).all(1)
    g_top = np.argmax(golden[output].reshape(n, -1), axis=1)
    f_top = np.argmax(faulty[output].reshape(n, -1), axis=1)
    code = np.where(differs, np.where(g_top != f_top, Outcome.CRITICAL_SDC,
                                      Outcome.TOLERABLE_SDC), Outcome.MASKED)
    return np.where(due, Outcome.DUE, code).astype(np.uint8)


def correct(logits: np.ndarray, labels: np.ndarray, outcomes: np.ndarray | None = None
            ) -> np.ndarray:
    """``bool [N]``: top-1 of ``logits`` equals the label, and the output is no DUE (an
    ``argmax`` over a NaN row returns an arbitrary class; a detected error is never a
    correct answer)."""
    n = len(logits)
    flat = logits.reshape(n, -1)
    ok = np.argmax(flat, axis=1) == labels
    if np.issubdtype(flat.dtype, np.floating):
        ok &= np.isfinite(flat).all(1)
    if outcomes is not None:
        ok &= outcomes != Outcome.DUE
    return ok


__all__ = ["OUTCOMES", "Outcome", "classify", "correct"]
