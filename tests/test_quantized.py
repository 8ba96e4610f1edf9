"""int8 quantized models: quantization, fault sites, exact int8 faults, engine, campaigns.

The shipped ``models/digits_cnn_int8.onnx`` is ``scripts/make_digits_int8.py``'s static QDQ
quantization of the digits CNN (int8 weights and activations). Faults on its int8 tensors
must change exactly the stored bits :func:`enpheeph_onnx.apply_faults` says, whether they
go through :func:`enpheeph_onnx.inject` or the run-time :class:`FaultEngine`.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from enpheeph_onnx import (
    EnpheephError,
    Fault,
    FaultModel,
    FaultSite,
    SiteKind,
    apply_faults,
    discover_sites,
    inject,
    load_model,
)
from enpheeph_onnx.bits import BY_NAME
from enpheeph_onnx.campaign import (
    CampaignConfig,
    CountMode,
    Dataset,
    SiteSelection,
    run_campaign,
)
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.export.quantize import METADATA_KEY, quantize_int8
from enpheeph_onnx.model import default_opset, ensure_opset
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.sites import site_map
from enpheeph_onnx.store import ResultStore

from .conftest import MODEL, ROOT

INT8_MODEL = ROOT / "models" / "digits_cnn_int8.onnx"
INT8 = BY_NAME["int8"]
DENSE_ACCURACY = 359 / 360
CONV1_W = "conv1.weight_quantized"
CONV2_W = "conv2.weight_quantized"
RELU2_Q = "/relu2/Relu_output_0_QuantizeLinear_Output"


# -- helpers --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def int8_model() -> onnx.ModelProto:
    return load_model(INT8_MODEL)


@functools.lru_cache(maxsize=1)
def int8_sites() -> dict[str, FaultSite]:
    return site_map(discover_sites(int8_model()))


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return make_session(model).run(None, {"input": x})


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the int8 tensors ``names``."""
    m = copy(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.INT8, None)
                          for n in names)
    return m


def replace_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with the initializer or ``Constant`` tensor ``name`` set to
    ``value``."""
    m = copy(model)
    for t in m.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
            return m
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(value, a.t.name))
                    return m
    raise KeyError(name)


def weight_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(next(a.t for a in n.attribute if a.name == "value"))
    raise KeyError(name)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
    u = np.dtype(f"uint{got.dtype.itemsize * 8}")
    bad = np.argwhere(got.view(u) != want.view(u))
    assert bad.size == 0, f"{what}: {len(bad)} element(s) differ, first at {bad[0].tolist()}"


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    """Training-split images (the script's seeded calibration subset, 64 of them)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_digits_int8
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return make_digits_int8.calibration_images(load_model(MODEL), seed=0, samples=64)


# -- the shipped int8 model -----------------------------------------------------------------

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
    dense = accuracy(run(load_model(MODEL), digits["input"])[0], digits["labels"])
    int8 = accuracy(run(m, digits["input"])[0], digits["labels"])
    assert dense == pytest.approx(DENSE_ACCURACY)
    assert abs(int8 - dense) <= 0.03, (int8, dense)


def test_shipped_int8_model_computes_the_onnx_semantics(digits: dict[str, np.ndarray]) -> None:
    """onnxruntime's fused int8 kernels (what a session runs) equal the unfused
    DequantizeLinear -> float op -> QuantizeLinear graph bit for bit (7-bit weights keep
    x86 u8 x s8 kernels from saturating, see quantize_int8)."""
    m = int8_model()
    fused = run(m, digits["input"])[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert_bits_equal(fused, plain.run(None, {"input": digits["input"]})[0], "logits")


def test_sites_of_the_int8_model() -> None:
    m = int8_model()
    sites = int8_sites()
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for name in (CONV1_W, CONV2_W, "fc1.weight_quantized", "fc2.weight_quantized"):
        s = sites[name]
        assert s.kind is SiteKind.WEIGHT and s.source == "initializer"
        assert s.dtype == "int8" and s.bits == 8 and inits[name].dtype == np.int8
        assert s.op_type == "DequantizeLinear"
        assert s.scale == pytest.approx(float(inits[name.replace("_quantized", "_scale")]))
        assert s.scale > 0 and s.zero_point == 0  # symmetric weights
        assert np.abs(inits[name].astype(int)).max() <= 64  # reduce_range: 7-bit weights
    for name in ("conv1.bias_quantized", "fc2.bias_quantized"):
        assert sites[name].dtype == "int32" and sites[name].scale is not None
    q_nodes = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_nodes) >= 5
    for n in q_nodes:
        s = sites[n.output[0]]
        assert s.kind is SiteKind.ACTIVATION and s.op_type == "QuantizeLinear"
        assert s.dtype == "int8" and s.shape[0] == "batch"
        assert s.scale == pytest.approx(float(inits[n.input[1]]))
        assert s.zero_point == int(inits[n.input[2]])
    assert sites[RELU2_Q].zero_point == -128  # ReLU range [0, max]: asymmetric


# -- int8 weight faults ---------------------------------------------------------------------

def _negative_index(name: str) -> tuple[int, ...]:
    w = weight_value(int8_model(), name)
    return tuple(int(i) for i in np.argwhere(w < 0)[0])


@pytest.mark.parametrize("fault", [
    Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,)),
    Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (0,)),
    Fault(CONV1_W, (2, 0, 0, 1), FaultModel.BIT_FLIP, (7,)),
    Fault(CONV1_W, (15, 0, 2, 2), FaultModel.BIT_FLIP, (0, 3, 6)),
    Fault(CONV2_W, (0, 0, 0, 0), FaultModel.STUCK_AT_1, (7,)),
    Fault(CONV2_W, (31, 15, 2, 2), FaultModel.STUCK_AT_1, (0, 1, 2, 3, 4, 5)),
    Fault("fc1.weight_quantized", (7, 100), FaultModel.VALUE, value=-128),
], ids=str)
def test_int8_weight_fault_is_exact(fault: Fault, digits: dict[str, np.ndarray]) -> None:
    m = int8_model()
    res = inject(m, [fault])
    before = weight_value(m, fault.site)
    after = weight_value(res.model, fault.site)
    want = apply_faults(before, [fault], INT8)
    assert_bits_equal(after, want, str(fault))
    assert res.weights[0].elements_changed == int(np.count_nonzero(before != want))
    assert res.nodes == ()  # weight faults add no node
    x = digits["input"]
    got = run(res.model, x)[0]
    assert_bits_equal(got, run(replace_weight(m, fault.site, want), x)[0], str(fault))


def test_int8_stuck_at_0_on_the_sign_bit(digits: dict[str, np.ndarray]) -> None:
    idx = _negative_index(CONV2_W)
    f = Fault(CONV2_W, idx, FaultModel.STUCK_AT_0, (7,))
    m = int8_model()
    res = inject(m, [f])
    before, after = weight_value(m, CONV2_W), weight_value(res.model, CONV2_W)
    assert int(after[idx]) == int(before[idx]) + 128  # two's complement: sign bit cleared
    assert res.weights[0].elements_changed == 1
    want = apply_faults(before, [f], INT8)
    assert_bits_equal(after, want)
    x = digits["input"][:64]
    assert_bits_equal(run(res.model, x)[0], run(replace_weight(m, CONV2_W, want), x)[0])


# -- int8 activation faults (between QuantizeLinear and DequantizeLinear) -------------------

def check_activation_faults(faults: list[Fault], x: np.ndarray) -> np.ndarray:
    """Inject, fetch the site's int8 tensor before and after the fault node, compare with
    ``apply_faults``; returns the faulty logits."""
    site = faults[0].site
    res = inject(int8_model(), faults)
    assert len(res.nodes) >= 1
    pre = f"enpheeph/{site}/in"  # the fault node's input: the QuantizeLinear output
    logits, golden, faulty = run(with_outputs(res.model, [pre, site]), x)
    assert golden.dtype == np.int8 and faulty.dtype == np.int8
    # the untouched QuantizeLinear output equals the original model's
    orig = run(with_outputs(int8_model(), [site]), x)[1]
    assert_bits_equal(golden, orig, "golden int8 activation")
    assert_bits_equal(faulty, apply_faults(golden, faults, INT8), str(faults))
    # fetching tensors does not change the faulty model's outputs
    assert_bits_equal(logits, run(res.model, x)[0], "logits")
    return logits


@pytest.mark.parametrize("fault", [
    Fault(RELU2_Q, (None, 3, 2, 1), FaultModel.BIT_FLIP, (7,)),
    Fault(RELU2_Q, (5, 3, 2, 1), FaultModel.BIT_FLIP, (0,)),
    Fault("input_QuantizeLinear_Output", (None, 0, 4, 4), FaultModel.STUCK_AT_1, (6, 7)),
    Fault("/relu3/Relu_output_0_QuantizeLinear_Output", (None, 10), FaultModel.STUCK_AT_0,
          (0, 1, 2, 3, 4, 5, 6, 7)),
], ids=str)
def test_int8_activation_fault_is_exact(fault: Fault, digits: dict[str, np.ndarray]) -> None:
    logits = check_activation_faults([fault], digits["input"][:16])
    golden = run(int8_model(), digits["input"][:16])[0]
    if fault.model is FaultModel.BIT_FLIP and fault.bits == (7,):
        assert not np.array_equal(logits, golden)  # a sign flip of a ReLU output shows


def _int8_activation_sites() -> list[str]:
    return [n.output[0] for n in int8_model().graph.node if n.op_type == "QuantizeLinear"]


@st.composite
def int8_activation_faults(draw: st.DrawFn) -> list[Fault]:
    site = int8_sites()[draw(st.sampled_from(_int8_activation_sites()))]
    out = []
    for _ in range(draw(st.integers(1, 3))):
        index = tuple(
            draw(st.one_of(st.none(), st.integers(0, 5))) if not isinstance(n, int)
            else draw(st.integers(0, n - 1)) for n in site.shape)
        model = draw(st.sampled_from([FaultModel.BIT_FLIP, FaultModel.STUCK_AT_0,
                                      FaultModel.STUCK_AT_1]))
        bits = draw(st.sets(st.integers(0, 7), min_size=1, max_size=3))
        out.append(Fault(site.name, index, model, tuple(sorted(bits))))
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=int8_activation_faults())
def test_int8_activation_faults_hypothesis(faults: list[Fault]) -> None:
    with np.load(ROOT / "models" / "digits_test.npz") as z:
        x = z["input"][:6]
    check_activation_faults(faults, x)


# -- run-time engine ------------------------------------------------------------------------

@pytest.mark.parametrize("faults", [
    [Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,))],
    [Fault(CONV1_W, (4, 0, 1, 1), FaultModel.STUCK_AT_1, (6,)),
     Fault(CONV1_W, (4, 0, 1, 1), FaultModel.BIT_FLIP, (0,))],
    [Fault(RELU2_Q, (None, 3, 2, 1), FaultModel.BIT_FLIP, (7,))],
    [Fault(RELU2_Q, (7, 5, 1, 1), FaultModel.BIT_FLIP, (6,))],
    [Fault(CONV2_W, (1, 2, 0, 0), FaultModel.BIT_FLIP, (6,)),
     Fault(RELU2_Q, (None, 31, 3, 3), FaultModel.BIT_FLIP, (7,))],
], ids=lambda fs: " ".join(str(f) for f in fs))
def test_engine_equals_inject_on_int8(faults: list[Fault], digits: dict[str, np.ndarray]
                                      ) -> None:
    m = int8_model()
    sites = int8_sites()
    engine = FaultEngine(m, [sites[CONV1_W], sites[CONV2_W], sites[RELU2_Q]])
    data = {"input": digits["input"][:100]}
    golden = run(m, data["input"])[0]
    assert_bits_equal(engine.run(data)["logits"], golden, "engine golden")
    assert_bits_equal(engine.reference(data, faults)["logits"], golden, "engine reference")
    want = run(inject(m, faults).model, data["input"])[0]
    assert_bits_equal(engine.run(data, faults, batch_size=32)["logits"], want,
                      " ".join(map(str, faults)))
    assert not np.array_equal(want, golden)


def test_engine_equals_inject_with_every_int8_weight_site(digits: dict[str, np.ndarray]
                                                          ) -> None:
    m = int8_model()
    engine = FaultEngine(m, [s for s in int8_sites().values() if s.kind is SiteKind.WEIGHT])
    data = {"input": digits["input"][:100]}
    faults = [Fault(CONV1_W, (0, 0, 0, 1), FaultModel.BIT_FLIP, (6,))]
    want = run(inject(m, faults).model, data["input"])[0]
    assert_bits_equal(engine.run(data, faults)["logits"], want)


def test_engine_int8_weight_feed_is_the_numpy_reference() -> None:
    sites = int8_sites()
    engine = FaultEngine(int8_model(), [sites[CONV2_W]])
    faults = [Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,)),
              Fault(CONV2_W, (None, 0, 0, 0), FaultModel.STUCK_AT_0, (7,))]
    feed = engine.weight_feeds(faults)[CONV2_W]
    assert_bits_equal(feed, apply_faults(weight_value(int8_model(), CONV2_W), faults, INT8))


# -- QOperator model ------------------------------------------------------------------------

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
    assert abs(accuracy(run(m, x)[0], digits["labels"]) - DENSE_ACCURACY) <= 0.03
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
    assert_bits_equal(weight_value(res.model, CONV2_W), want)
    got = run(res.model, x)[0]
    assert_bits_equal(got, run(replace_weight(m, CONV2_W, want), x)[0])
    assert not np.array_equal(got, run(m, x)[0])


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
    assert abs(accuracy(run(m, digits["input"])[0], digits["labels"]) - DENSE_ACCURACY) <= 0.03


# -- torch.ao (legacy eager-mode) quantized model ---------------------------------------------

def _torch_ao_model() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A tiny conv net quantized with torch.ao eager-mode post-training static
    quantization, exported with the TorchScript exporter at opset 18 and converted to 26.
    Returns the model, an input and torch's output for it."""
    torch = pytest.importorskip("torch")
    from torch import nn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization as tq

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.quant = tq.QuantStub()
                self.conv = nn.Conv2d(1, 4, 3, padding=1)
                self.relu = nn.ReLU()
                self.dequant = tq.DeQuantStub()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.dequant(self.relu(self.conv(self.quant(x))))

        torch.manual_seed(0)
        net = Net().eval()
        engines = torch.backends.quantized.supported_engines
        engine = "fbgemm" if "fbgemm" in engines else "qnnpack"
        if engine not in engines:
            pytest.skip(f"no torch quantized engine (have {engines})")
        torch.backends.quantized.engine = engine
        net.qconfig = tq.get_default_qconfig(engine)
        tq.prepare(net, inplace=True)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _ in range(4):
                net(torch.rand(8, 1, 8, 8, generator=gen))
        tq.convert(net, inplace=True)
        x = torch.rand(4, 1, 8, 8, generator=gen)
        with torch.no_grad():
            ref = net(x).numpy()
        buf = io.BytesIO()
        try:
            torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=18,
                              input_names=["input"], output_names=["out"])
        except Exception as e:  # report how this torch version fails, then skip
            pytest.skip(f"torch {torch.__version__} cannot export torch.ao quantized modules "
                        f"with dynamo=False: {type(e).__name__}: {str(e).splitlines()[0]}")
    model = ensure_opset(onnx.load_from_string(buf.getvalue()))
    return model, x.numpy(), ref


def test_torch_ao_quantized_constant_weights() -> None:
    model, x, ref = _torch_ao_model()
    onnx.checker.check_model(model, full_check=True)
    assert default_opset(model) == 26 and model.ir_version <= 13
    out = make_session(model).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert not any(t.data_type == TensorProto.INT8 for t in model.graph.initializer)
    sites = discover_sites(model)
    w = [s for s in sites if s.kind is SiteKind.WEIGHT and s.dtype == "int8"
         and len(s.shape) == 4]
    assert len(w) == 1, [s.name for s in sites]
    site = w[0]
    assert site.source == "constant" and site.shape == (4, 1, 3, 3)
    assert site.op_type == "DequantizeLinear"
    assert isinstance(site.scale, list) and len(site.scale) == 4  # per-channel qconfig
    assert site.zero_point == [0] * 4
    f = Fault(site.name, (1, 0, 1, 1), FaultModel.BIT_FLIP, (7,))
    res = inject(model, [f])
    want = apply_faults(weight_value(model, site.name), [f], INT8)
    assert_bits_equal(weight_value(res.model, site.name), want)
    assert res.weights[0].elements_changed == 1
    assert any(n.op_type == "Constant" and n.output[0] == site.name
               for n in res.model.graph.node)  # still a Constant node
    got = make_session(res.model).run(None, {"input": x})[0]
    assert_bits_equal(got, make_session(replace_weight(model, site.name, want)).run(
        None, {"input": x})[0])
    assert not np.array_equal(got, out)


# -- campaigns ------------------------------------------------------------------------------

def _stored_faults(db: Path) -> dict[int, tuple[Fault, ...]]:
    """Trial -> its faults, read back from the results store."""
    with ResultStore.open(db) as store:
        ranks = {s.name: s.rank for s in store.sites()}
        return {t: fs.to_faults(ranks) for t, fs in store.fault_sets()}


def test_campaign_on_int8_weights(digits: dict[str, np.ndarray], tmp_path: Path) -> None:
    data = Dataset({"input": digits["input"]}, digits["labels"])
    cfg = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-3,), bits=tuple(range(8)),
                         trials=3, batch_size=360)
    db = tmp_path / "w.sqlite"
    res = run_campaign(INT8_MODEL, data, cfg, db, progress=False)
    assert res.golden_accuracy == pytest.approx(DENSE_ACCURACY)
    assert len(res.trials) == 3
    assert res.trials.counts.sum(1).tolist() == [360] * 3
    sites = int8_sites()
    faults = _stored_faults(db)
    assert sorted(faults) == [0, 1, 2]
    assert [len(faults[t]) for t in range(3)] == res.trials.n_faults.tolist()
    assert all(sites[f.site].kind is SiteKind.WEIGHT for fs in faults.values() for f in fs)
    hit = {sites[f.site].dtype for fs in faults.values() for f in fs}
    assert "int8" in hit


def test_campaign_on_int8_activations(digits: dict[str, np.ndarray], tmp_path: Path) -> None:
    data = Dataset({"input": digits["input"]}, digits["labels"])
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,)),
                         count=CountMode.FAULT_RATE, rates=(1e-3,), bits=tuple(range(8)),
                         trials=3, seed=3, batch_size=360)
    db = tmp_path / "a.sqlite"
    res = run_campaign(INT8_MODEL, data, cfg, db, progress=False)
    t = res.trials
    assert len(t) == 3 and t.counts.sum(1).tolist() == [360] * 3
    sites = int8_sites()
    faults = _stored_faults(db)
    assert [len(faults[i]) for i in range(3)] == t.n_faults.tolist()
    assert t.n_faults.sum() > 0
    for i, fs in faults.items():
        assert all(sites[f.site].kind is SiteKind.ACTIVATION for f in fs)
        if fs:  # each trial replays to the same accuracy through inject
            logits = run(inject(INT8_MODEL, list(fs)).model, digits["input"])[0]
            assert accuracy(logits, digits["labels"]) == t.accuracy[t.trial == i][0]


# -- quantize_int8 ---------------------------------------------------------------------------

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

