"""enpheeph_onnx.sites: what ``discover_sites`` reports on quantized models (the int8 QDQ
sites of the shipped int8 model with their scales and zero points, the Constant weights of
a torch.ao quantized model) and how neuron-state addresses (``LAYER.ROLE@STEPS``) expand to
the annotated tensors of the shipped spiking model."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from enpheeph_onnx import (
    Fault,
    FaultModel,
    SiteKind,
    apply_faults,
    discover_sites,
    inject,
    parse_fault,
)
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.model import default_opset, ensure_opset
from enpheeph_onnx.runtime import make_session

from .conftest import SNN_MODEL
from .helpers import (
    CONV1_W,
    CONV2_W,
    INT8,
    RELU2_Q,
    assert_same_bits,
    int8_model,
    int8_sites,
    replace_weight,
    weight_value,
)

# -- the shipped int8 model ----------------------------------------------------------------

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


# -- torch.ao (legacy eager-mode) quantized model ------------------------------------------

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
    assert_same_bits(weight_value(res.model, site.name), want)
    assert res.weights[0].elements_changed == 1
    assert any(n.op_type == "Constant" and n.output[0] == site.name
               for n in res.model.graph.node)  # still a Constant node
    got = make_session(res.model).run(None, {"input": x})[0]
    assert_same_bits(got, make_session(replace_weight(model, site.name, want)).run(
        None, {"input": x})[0])
    assert not np.array_equal(got, out)


# -- neuron-state addresses on the spiking model -------------------------------------------

def test_state_address_expands_to_the_annotated_tensors() -> None:
    res = inject(SNN_MODEL, [parse_fault("lif1.membrane@3-5[*,7]:bitflip:30")])
    assert [f.site for f in res.plan] == ["lif1.membrane.t3", "lif1.membrane.t4",
                                          "lif1.membrane.t5"]
    res = inject(SNN_MODEL, [parse_fault("lif2.spike@all[*,1]:stuck-at-0:0-31")])
    assert len(res.plan) == 16 and {f.index for f in res.plan} == {(None, 1)}
    with pytest.raises(EnpheephError, match="time step 16 does not exist"):
        inject(SNN_MODEL, [parse_fault("lif1.membrane@16[*,7]:bitflip:30")])
    with pytest.raises(EnpheephError, match="unknown neuron state"):
        inject(SNN_MODEL, [parse_fault("lif9.membrane@1[*,7]:bitflip:30")])
