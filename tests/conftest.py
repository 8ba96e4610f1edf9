"""Shared fixtures and paths: the shipped models (dense, pruned, int8, spiking) and their
held-out test splits."""

from __future__ import annotations

from pathlib import Path

from enpheeph_onnx.isa import pin_cpu_isa

pin_cpu_isa()  # before any test imports torch: the same kernels on AVX2 and AVX-512 CPUs

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
MODEL = MODELS / "digits_cnn.onnx"
DATA = MODELS / "digits_test.npz"
PRUNED_MODEL = MODELS / "digits_cnn_pruned.onnx"
INT8_MODEL = MODELS / "digits_cnn_int8.onnx"
SNN_MODEL = MODELS / "digits_snn.onnx"
SNN_DATA = MODELS / "digits_snn_test.npz"


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


@pytest.fixture(scope="module")
def snn_model() -> onnx.ModelProto:
    """The shipped spiking model (``models/digits_snn.onnx``)."""
    return onnx.load(SNN_MODEL)


@pytest.fixture(scope="module")
def snn_data() -> dict[str, np.ndarray]:
    """The spiking model's test split: spike trains of the digits test images."""
    with np.load(SNN_DATA) as z:
        return {k: z[k] for k in z.files}
