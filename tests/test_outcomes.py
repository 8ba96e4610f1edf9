"""enpheeph_onnx.campaign.outcomes: how each (trial, input) pair is classified against the
golden run (masked, tolerable SDC, critical SDC, DUE)."""

from __future__ import annotations

import numpy as np

from enpheeph_onnx.campaign import classify


def test_classify_outcomes() -> None:
    g = {"y": np.array([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0], [5.0, 4.0]], np.float32)}
    f = {"y": np.array([[1.0, 2.0], [3.5, 1.0], [2.0, 1.0], [np.nan, 4.0]], np.float32)}
    assert classify(g, f, "y").tolist() == [0, 1, 2, 3]
    assert classify(g, g, "y").tolist() == [0, 0, 0, 0]
