"""Shared fixtures: the shipped digits model and its held-out test split."""

from __future__ import annotations

from pathlib import Path

from enpheeph_onnx.isa import pin_cpu_isa

pin_cpu_isa()  # before any test imports torch: the same kernels on AVX2 and AVX-512 CPUs

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
DATA = ROOT / "models" / "digits_test.npz"


def cuda_available() -> bool:
    """True only where onnxruntime really creates a CUDA session."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    from enpheeph_onnx.model import load_model
    from enpheeph_onnx.runtime import make_session

    try:
        make_session(load_model(MODEL), "cuda")
    except Exception:
        return False
    return True


@pytest.fixture(scope="session")
def model_path() -> Path:
    return MODEL


@pytest.fixture(scope="session")
def data_path() -> Path:
    return DATA


@pytest.fixture(scope="session")
def digits() -> dict[str, np.ndarray]:
    with np.load(DATA) as z:
        return {k: z[k] for k in z.files}
