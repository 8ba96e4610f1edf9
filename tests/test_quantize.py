"""enpheeph_onnx.export.quantize (``quantize_int8``): the shipped int8 model
(``scripts/make_digits_int8.py``'s static QDQ quantization of the digits CNN, int8 weights
and activations) and its onnxruntime semantics, QOperator and per-channel models,
determinism, opset conversion, errors, and the script reproducing the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from enpheeph_onnx import (
    EnpheephError,
    Fault,
    FaultModel,
    SiteKind,
    apply_faults,
    discover_sites,
    inject,
    load_model,
)
from enpheeph_onnx.export.quantize import METADATA_KEY, quantize_int8
from enpheeph_onnx.model import default_opset
from enpheeph_onnx.sites import site_map

from .conftest import INT8_MODEL, MODEL, ROOT
from .helpers import (
    CONV1_W,
    CONV2_W,
    DENSE_ACCURACY,
    INT8,
    accuracy,
    assert_same_bits,
    int8_model,
    replace_weight,
    run_input,
    weight_value,
)


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    """Training-split images (the script's seeded calibration subset, 64 of them)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_digits_int8
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return make_digits_int8.calibration_images(load_model(MODEL), seed=0, samples=64)


# -- the shipped int8 model ----------------------------------------------------------------

def test_shipped_int8_model(digits: dict[str, np.ndarray]) -> None:
    m = onnx.load(INT8_MODEL)
    onnx.checker.check_model(m, full_check=True)
    assert default_opset(m) == 26 and m.ir_version <= 13
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta[METADATA_KEY]) == {
        "format": "qdq", "weights": "int8", "activations": "int8", "per_channel": False,
        "reduce_range": True}
    assert json.loads(meta["enpheeph.calibration"])["split"] == "train"
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops
    dense = accuracy(run_input(load_model(MODEL), digits["input"])[0], digits["labels"])
    int8 = accuracy(run_input(m, digits["input"])[0], digits["labels"])
    assert dense == pytest.approx(DENSE_ACCURACY)
    assert abs(int8 - dense) <= 0.03, (int8, dense)


def test_shipped_int8_model_computes_the_onnx_semantics(digits: dict[str, np.ndarray]) -> None:
    """onnxruntime's fused int8 kernels (what a session runs) equal the unfused
    DequantizeLinear -> float op -> QuantizeLinear graph bit for bit (7-bit weights keep
    x86 u8 x s8 kernels from saturating, see quantize_int8)."""
    m = int8_model()
    fused = run_input(m, digits["input"])[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert_same_bits(fused, plain.run(None, {"input": digits["input"]})[0], "logits")


# -- QOperator and per-channel models ------------------------------------------------------

def test_qoperator_model(calibration: np.ndarray, digits: dict[str, np.ndarray],
                         tmp_path: Path) -> None:
    out = tmp_path / "qop.onnx"
    m = quantize_int8(MODEL, {"input": calibration}, out, quant_format="qoperator")
    assert out.is_file() and onnx.load(out) == m
    assert default_opset(m) == 26 and m.ir_version <= 13
    assert json.loads({p.key: p.value for p in m.metadata_props}[METADATA_KEY])["format"] == (
        "qoperator")
    ops = {n.op_type for n in m.graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops
    x = digits["input"]
    assert abs(accuracy(run_input(m, x)[0], digits["labels"]) - DENSE_ACCURACY) <= 0.03
    sites = site_map(discover_sites(m))
    for name in (CONV1_W, CONV2_W):
        s = sites[name]
        assert s.kind is SiteKind.WEIGHT and s.dtype == "int8" and s.op_type == "QLinearConv"
        assert isinstance(s.scale, float) and s.scale > 0 and s.zero_point == 0
    conv_out = next(n.output[0] for n in m.graph.node if n.op_type == "QLinearConv")
    assert sites[conv_out].dtype == "int8" and sites[conv_out].scale is not None
    f = Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,))
    res = inject(m, [f])
    want = apply_faults(weight_value(m, CONV2_W), [f], INT8)
    assert_same_bits(weight_value(res.model, CONV2_W), want)
    got = run_input(res.model, x)[0]
    assert_same_bits(got, run_input(replace_weight(m, CONV2_W, want), x)[0])
    assert not np.array_equal(got, run_input(m, x)[0])


def test_qoperator_per_channel_sites(calibration: np.ndarray) -> None:
    m = quantize_int8(MODEL, {"input": calibration}, quant_format="qoperator",
                      per_channel=True)
    s = site_map(discover_sites(m))[CONV2_W]
    assert isinstance(s.scale, list) and len(s.scale) == 32


def test_qdq_per_channel(calibration: np.ndarray, digits: dict[str, np.ndarray]) -> None:
    m = quantize_int8(MODEL, {"input": calibration}, per_channel=True)
    assert json.loads({p.key: p.value for p in m.metadata_props}[METADATA_KEY])[
        "per_channel"] is True
    s = site_map(discover_sites(m))[CONV2_W]
    assert isinstance(s.scale, list) and len(s.scale) == 32 and s.zero_point == [0] * 32
    assert abs(accuracy(run_input(m, digits["input"])[0], digits["labels"])
               - DENSE_ACCURACY) <= 0.03


# -- quantize_int8 -------------------------------------------------------------------------

def test_quantize_int8_is_deterministic_and_cleans_up(calibration: np.ndarray,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    a = quantize_int8(MODEL, {"input": calibration})
    b = quantize_int8(load_model(MODEL), {"input": calibration}, batch_size=7)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    with pytest.raises(EnpheephError):
        quantize_int8(MODEL, {"input": calibration.reshape(len(calibration), -1)})
    assert os.listdir(scratch) == []


def test_quantize_int8_converts_a_lower_opset() -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])], [w])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    q = quantize_int8(m, {"x": rng.random((16, 2, 5, 5), dtype=np.float32)})
    assert default_opset(q) == 26 and 10 <= q.ir_version <= 13
    onnx.checker.check_model(q, full_check=True)
    assert site_map(discover_sites(q))["w_quantized"].dtype == "int8"


@pytest.mark.parametrize("calib, match", [
    ({}, "calibration data is empty"),
    ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "calibration data is empty"),
    ({"image": np.zeros((4, 1, 8, 8), np.float32)}, "lacks the model input"),
    ({"input": np.zeros((4, 1, 8, 8), np.float32),
      "extra": np.zeros((4, 1), np.float32)}, "not model inputs"),
    ({"input": np.zeros((4, 64), np.float32)}, "quantize_static rejects"),
])
def test_quantize_int8_errors(calib: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(EnpheephError, match=match) as e:
        quantize_int8(MODEL, calib)
    assert "\n" not in str(e.value)


def test_quantize_int8_rejects_bad_options_and_unquantizable_models() -> None:
    x = {"input": np.zeros((4, 1, 8, 8), np.float32)}
    with pytest.raises(EnpheephError, match="quant_format"):
        quantize_int8(MODEL, x, quant_format="int4")
    with pytest.raises(EnpheephError, match="batch_size"):
        quantize_int8(MODEL, x, batch_size=0)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["y"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    ident = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)],
                              ir_version=10)
    with pytest.raises(EnpheephError, match="quantized no operator"):
        quantize_int8(ident, {"input": np.ones((2, 2), np.float32)})


# -- the script ----------------------------------------------------------------------------

def test_script_reproduces_the_shipped_int8_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_digits_int8.py"),
                           "--out-dir", str(tmp_path)],
                          check=True, capture_output=True, text=True, timeout=300)
    assert "int8 accuracy:" in proc.stdout and "dense accuracy: 0.9972" in proc.stdout
    new = (tmp_path / "digits_cnn_int8.onnx").read_bytes()
    shipped = {p.key: p.value for p in onnx.load(INT8_MODEL).metadata_props}
    if shipped.get("enpheeph.quantizer") != f"onnxruntime {ort.__version__}":
        pytest.skip(f"the shipped model was made with {shipped.get('enpheeph.quantizer')}")
    assert new == INT8_MODEL.read_bytes()
