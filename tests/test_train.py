"""The shipped model and data are what scripts/train_digits.py produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from enpheeph_onnx.model import default_opset
from enpheeph_onnx.runtime import make_session

from .conftest import DATA, MODEL, ROOT

torch = pytest.importorskip("torch")


def test_shipped_model_meets_the_brief(digits: dict[str, np.ndarray]) -> None:
    m = onnx.load(MODEL)
    onnx.checker.check_model(m, full_check=True)
    assert default_opset(m) == 26 and m.ir_version <= 13
    assert len(digits["labels"]) >= 300 and digits["labels"].dtype == np.int64
    logits = make_session(m).run(None, {"input": digits["input"]})[0]
    assert np.mean(np.argmax(logits, 1) == digits["labels"]) >= 0.95


def test_training_script_reproduces_shipped_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "train_digits.py"), "--out-dir",
                    str(tmp_path)], check=True, capture_output=True, timeout=600)
    assert (tmp_path / "digits_test.npz").read_bytes() == DATA.read_bytes()
    assert (tmp_path / "digits_cnn.onnx").read_bytes() == MODEL.read_bytes()
