"""enpheeph_onnx.export.snn: the unrolled, annotated export of snntorch networks, and the
shipped digits SNN it produces (scripts/train_digits_snn.py): its brief, bit-exact agreement
with torch, its annotated state sites, and a fault on a state changing only later steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from enpheeph_onnx import discover_sites
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import parse_fault
from enpheeph_onnx.model import default_opset
from enpheeph_onnx.rewrite import inject
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.sites import SiteKind, annotations

from .conftest import DATA, ROOT, SNN_DATA, SNN_MODEL

torch = pytest.importorskip("torch")
snn = pytest.importorskip("snntorch")

from enpheeph_onnx.export.snn import export_snn, trace_states, unroll  # noqa: E402

STEPS = 16
LAYERS = {"lif1": ("membrane", "spike", "synaptic_current"), "lif2": ("membrane", "spike")}
PARAMS = {"lif1.alpha": "alpha", "lif1.beta": "beta", "lif1.threshold": "threshold",
          "lif2.beta": "beta", "lif2.threshold": "threshold"}


# -- helpers -------------------------------------------------------------------------------

def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "_train_digits_snn", ROOT / "scripts" / "train_digits_snn.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_net_from(model: onnx.ModelProto) -> Any:
    """The script's DigitsSNN with the weights of the ONNX model."""
    net = script().build_net(0)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    with torch.no_grad():
        for name, p in [*net.named_parameters(), *net.named_buffers()]:
            if name in inits:
                p.copy_(torch.from_numpy(inits[name].copy()).reshape(p.shape))
    return net


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the float32 tensors ``names``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                            for n in names)
    return out


def run_all(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    sess = make_session(with_outputs(model, names))
    outs = sess.run([model.graph.output[0].name, *names], {"input": x})
    return dict(zip([model.graph.output[0].name, *names], outs, strict=True))


class Tiny(torch.nn.Module):
    """fc1 -> Synaptic -> fc2 -> Leaky, 8 inputs, 3 classes, equal thresholds (so that the
    TorchScript exporter deduplicates them)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = torch.nn.Linear(8, 6)
        self.lif1 = snn.Synaptic(alpha=0.7, beta=0.8, learn_alpha=True, learn_beta=True,
                                 learn_threshold=True)
        self.fc2 = torch.nn.Linear(6, 3)
        self.lif2 = snn.Leaky(beta=0.9, learn_beta=True, learn_threshold=True)
        with torch.no_grad():  # larger weights: plenty of spikes
            self.fc1.weight.mul_(3.0)
            self.fc2.weight.mul_(3.0)

    def forward(self, x_t: Any) -> Any:
        spk1, _syn, _mem = self.lif1(self.fc1(x_t))
        spk2, _mem2 = self.lif2(self.fc2(spk1))
        return spk2


def spikes(batch: int, steps: int, features: int, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    p = rng.random((batch, 1, features), dtype=np.float32)
    return torch.from_numpy((rng.random((batch, steps, features), dtype=np.float32) < p)
                            .astype(np.float32))


# -- the shipped model ---------------------------------------------------------------------

def test_shipped_snn_meets_the_brief(snn_model: onnx.ModelProto,
                                     snn_data: dict[str, np.ndarray]) -> None:
    onnx.checker.check_model(snn_model, full_check=True)
    assert default_opset(snn_model) == 26 and snn_model.ir_version <= 13
    assert SNN_MODEL.stat().st_size < 2_000_000 and SNN_DATA.stat().st_size < 500_000
    x, labels = snn_data["input"], snn_data["labels"]
    assert x.dtype == np.float32 and x.shape == (360, STEPS, 64)
    assert set(np.unique(x)) <= {0.0, 1.0}
    with np.load(DATA) as z:
        images, dense_labels = z["input"].reshape(360, 64), z["labels"]
    # the same 360 test images in the same order: Bernoulli(pixel) spike trains
    assert labels.dtype == np.int64 and np.array_equal(labels, dense_labels)
    zero, one = (np.broadcast_to((images == v)[:, None], x.shape) for v in (0, 1))
    assert not x[zero].any() and x[one].all()
    assert abs(float(np.mean(x.mean(1) - images))) < 0.01
    counts = make_session(snn_model).run(None, {"input": x})[0]
    assert counts.shape == (360, 10)
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0 and counts.max() <= 16
    assert np.mean(np.argmax(counts, 1) == labels) >= 0.85


def test_shipped_snn_equals_torch_bit_for_bit(snn_model: onnx.ModelProto,
                                              snn_data: dict[str, np.ndarray]) -> None:
    """Every neuron state of every step and the spike counts, on the whole test split."""
    net = torch_net_from(snn_model)
    x = snn_data["input"]
    states = trace_states(net, STEPS, x)
    with torch.no_grad():
        ref = unroll(net, STEPS)(torch.from_numpy(x)).numpy()
    got = run_all(snn_model, sorted(states), x)
    assert np.array_equal(got["spike_counts"], ref)
    assert len(states) == STEPS * 5
    for name, value in states.items():
        assert got[name].view(np.uint32).tolist() == value.view(np.uint32).tolist(), name


def test_shipped_snn_sites_are_annotated(snn_model: onnx.ModelProto) -> None:
    sites = {s.name: s for s in discover_sites(snn_model)}
    stateful = [s for s in sites.values() if s.time_step is not None]
    assert len(stateful) == STEPS * sum(len(r) for r in LAYERS.values())
    for layer, roles in LAYERS.items():
        width = 128 if layer == "lif1" else 10
        for role in roles:
            for t in range(STEPS):
                s = sites[f"{layer}.{role}.t{t}"]
                assert (s.kind, s.layer, s.role, s.time_step) == (
                    SiteKind.ACTIVATION, layer, role, t)
                assert s.shape == ("batch", width) and s.dtype == "float32"
    assert "lif2.synaptic_current.t0" not in sites
    for name, role in PARAMS.items():
        s = sites[name]
        assert (s.kind, s.source, s.layer, s.role, s.time_step, s.shape) == (
            SiteKind.WEIGHT, "initializer", name.split(".")[0], role, None, ())
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        assert sites[name].kind is SiteKind.WEIGHT and sites[name].layer == name[:3]
    assert sites["/fc1/Gemm_t3_output_0"].layer == "fc1"
    # every annotation names a tensor of the graph
    assert set(annotations(snn_model)) <= set(sites)


@pytest.mark.parametrize(("layer", "t"), [("lif1", 5), ("lif2", 9)])
def test_membrane_fault_changes_nothing_before_its_step(
        snn_model: onnx.ModelProto, snn_data: dict[str, np.ndarray], layer: str, t: int) -> None:
    x = snn_data["input"][:64]
    step = {n: int(a["time_step"]) for n, a in annotations(snn_model).items()
            if "time_step" in a}
    names = sorted(step)
    golden = run_all(snn_model, names, x)
    # the neuron with the most membrane potentials in [0, 1): flipping bit 30 (the top
    # exponent bit) multiplies them by 2**128
    mem = golden[f"{layer}.membrane.t{t}"]
    j = int(np.argmax(((mem >= 0) & (mem < 1)).sum(0)))
    fault = parse_fault(f"{layer}.membrane.t{t}[*,{j}]:bitflip:30")
    faulty = run_all(inject(snn_model, [fault]).model, names, x)
    before = [n for n in names if step[n] < t]
    after = [n for n in names if step[n] >= t]
    assert before and after
    for n in before:
        assert golden[n].view(np.uint32).tolist() == faulty[n].view(np.uint32).tolist(), n
    assert any(not np.array_equal(golden[n].view(np.uint32), faulty[n].view(np.uint32))
               for n in after)
    assert any(not np.array_equal(golden[n].view(np.uint32), faulty[n].view(np.uint32))
               for n in after if step[n] > t)
    # the tensor now holds the faulty value, and the spike of step t follows from it
    bad = faulty[f"{layer}.membrane.t{t}"]
    assert np.array_equal(bad[:, j].view(np.uint32), mem[:, j].view(np.uint32) ^ (1 << 30))
    assert np.array_equal(np.delete(bad, j, 1), np.delete(mem, j, 1))
    thr = numpy_helper.to_array(next(i for i in snn_model.graph.initializer
                                     if i.name == f"{layer}.threshold"))
    with np.errstate(invalid="ignore"):  # NaN where U was in [1, 2)
        assert np.array_equal(faulty[f"{layer}.spike.t{t}"],
                              (bad - thr > 0).astype(np.float32))
    assert faulty[f"{layer}.spike.t{t}"][:, j].sum() > golden[f"{layer}.spike.t{t}"][:, j].sum()


# -- the exporter --------------------------------------------------------------------------

def snap(net: Any, bits: int = 10) -> Any:
    """Linear weights and biases rounded to multiples of 2**-bits (as the script does)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.round(m.weight * 2**bits) / 2**bits)
                m.bias.copy_(torch.round(m.bias * 2**bits) / 2**bits)
    return net


@pytest.mark.parametrize("dyadic", [False, True])
def test_export_of_a_random_snn_is_exact(tmp_path: Path, dyadic: bool) -> None:
    """Spike counts equal torch's exactly; with dyadic weights every state is bit-identical
    too (float weights: the Gemm sums may differ by an ulp, in another order)."""
    net = snap(Tiny()) if dyadic else Tiny()
    out = tmp_path / "tiny.onnx"
    model = export_snn(net, 5, spikes(4, 5, 8, 1), out, check_inputs=[spikes(64, 5, 8, 2)])
    assert out.is_file() and onnx.load(out) == model
    x = spikes(256, 5, 8, 3)
    states = trace_states(net, 5, x)
    with torch.no_grad():
        ref = unroll(net, 5)(x).numpy()
    got = run_all(model, sorted(states), x.numpy())
    assert np.array_equal(got["spike_counts"], ref) and ref.max() > 0
    for name, value in states.items():
        if dyadic:
            assert got[name].view(np.uint32).tolist() == value.view(np.uint32).tolist(), name
        else:
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5, err_msg=name)
    # names and annotations
    notes = annotations(model)
    expected = {f"{layer}.{role}.t{t}" for layer, roles in LAYERS.items() for role in roles
                for t in range(5)}
    assert {n for n, a in notes.items() if "time_step" in a} == expected == set(states)
    assert notes["lif1.membrane.t4"] == {"layer": "lif1", "role": "membrane", "time_step": 4}
    assert notes["lif2.beta"] == {"layer": "lif2", "role": "beta"}
    # the exporter's initializer deduplication is undone: one initializer per parameter
    inits = {t.name for t in model.graph.initializer}
    assert {"lif1.threshold", "lif2.threshold", "lif1.alpha", "lif1.beta", "lif2.beta"} <= inits
    assert not [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    assert not [n for n in model.graph.node if "enpheeph_mark" in n.name]
    assert [o.name for o in model.graph.output] == ["spike_counts"]
    assert [i.name for i in model.graph.input] == ["input"]


def test_threshold_tie_is_reported() -> None:
    """A threshold between torch's and onnxruntime's value of one membrane potential (they
    differ by an ulp: other summation order) makes the spike counts differ: the error
    says the membrane potential sat on the threshold."""

    class OneLayer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.fc1 = torch.nn.Linear(8, 6)
            self.lif1 = snn.Leaky(beta=0.5, threshold=100.0, learn_threshold=True)
            with torch.no_grad():
                self.fc1.weight.mul_(3.0)

        def forward(self, x_t: Any) -> Any:
            return self.lif1(self.fc1(x_t))[0]

    net = OneLayer()
    x = spikes(256, 1, 8, 3)
    model = export_snn(net, 1, x)  # no spike at all: equal
    ours = run_all(model, ["lif1.membrane.t0"], x.numpy())["lif1.membrane.t0"]
    theirs = trace_states(net, 1, x)["lif1.membrane.t0"]
    # positive threshold: no reset at step 0 (U[-1] = 0 is below it), so U[0] = I_in[0]
    differ = np.flatnonzero((ours.reshape(-1) != theirs.reshape(-1)) & (theirs.reshape(-1) > 0))
    assert differ.size, "no rounding difference to build a tie from"
    k = differ[0]
    with torch.no_grad():
        net.lif1.threshold.fill_(float(min(ours.reshape(-1)[k], theirs.reshape(-1)[k])))
    with pytest.raises(EnpheephError, match=r"spike counts differ.*from its threshold \(lif1, "
                                            r"step 0\)"):
        export_snn(net, 1, x)


def test_threshold_fault_hits_one_layer_only() -> None:
    net = Tiny()
    model = export_snn(net, 4, spikes(8, 4, 8, 1))
    x = spikes(32, 4, 8, 4).numpy()
    names = [f"lif1.{role}.t{t}" for role in LAYERS["lif1"] for t in range(4)]
    golden = run_all(model, names, x)
    faulty = run_all(inject(model, [parse_fault("lif2.threshold[]:value=0.25")]).model,
                     names, x)
    for n in names:
        assert np.array_equal(golden[n], faulty[n]), n
    assert not np.array_equal(golden["spike_counts"], faulty["spike_counts"])


def test_export_names_nested_layers_and_one_step() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.lif = snn.Leaky(beta=0.5)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.block = Block()

        def forward(self, x_t: Any) -> Any:
            spk, _mem = self.block.lif(self.block.fc(x_t))
            return spk

    model = export_snn(Net(), 1, spikes(2, 1, 4, 0))
    sites = {s.name: s for s in discover_sites(model)}
    assert (sites["block.lif.membrane.t0"].layer, sites["block.lif.membrane.t0"].role) == (
        "block.lif", "membrane")
    assert sites["block.lif.beta"].role == "beta"
    assert sites["block.fc.weight"].kind is SiteKind.WEIGHT


def _net_with(neuron: Any, call_with_state: bool = False) -> Any:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.lif = neuron

        def forward(self, x_t: Any) -> Any:
            cur = self.fc(x_t)
            out = self.lif(cur, torch.zeros_like(cur)) if call_with_state else self.lif(cur)
            return out[0]

    return Net()


@pytest.mark.parametrize("steps", [0, -1, True, 2.0])
def test_export_rejects_bad_num_steps(steps: Any) -> None:
    with pytest.raises(EnpheephError, match="num_steps"):
        export_snn(_net_with(snn.Leaky(beta=0.5)), steps, spikes(2, 2, 4, 0))


def test_export_rejects_what_it_cannot_export() -> None:
    x = spikes(2, 3, 4, 0)
    with pytest.raises(EnpheephError, match=r"\[batch >= 1, 4"):
        export_snn(_net_with(snn.Leaky(beta=0.5)), 4, x)
    with pytest.raises(EnpheephError, match="float32"):
        export_snn(_net_with(snn.Leaky(beta=0.5)), 3, x.double())
    with pytest.raises(EnpheephError, match="init_hidden"):
        export_snn(_net_with(snn.Leaky(beta=0.5, init_hidden=True)), 3, x)
    with pytest.raises(EnpheephError, match="supports"):
        export_snn(_net_with(snn.Lapicque(beta=0.5)), 3, x)
    with pytest.raises(EnpheephError, match="input current only"):
        export_snn(_net_with(snn.Leaky(beta=0.5), call_with_state=True), 3, x)
    with pytest.raises(EnpheephError, match="no snntorch"):
        export_snn(torch.nn.Linear(4, 3), 3, x)
    with pytest.raises(EnpheephError, match="Module"):
        export_snn(lambda t: t, 3, x)


def test_a_tensor_marked_twice_keeps_distinct_names() -> None:
    """The postprocessing names a marked tensor in place, or (a graph input, a tensor
    already named) through an Identity at the marker's place: topological order holds and
    the outputs do not change."""
    from enpheeph_onnx.export.snn import _remove_markers

    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["m0"], name="/enpheeph_mark_0/Mul"),
        helper.make_node("Neg", ["m0"], ["a"], name="/neg/Neg"),
        helper.make_node("Mul", ["a", "one"], ["m1"], name="/enpheeph_mark_1/Mul"),
        helper.make_node("Mul", ["a", "one"], ["m2"], name="/enpheeph_mark_2/Mul"),
        helper.make_node("Add", ["m1", "m2"], ["y"], name="/add/Add"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)])
    model.ir_version = 10
    table = [("l", "membrane", 0), ("l", "spike", 0), ("l", "membrane", 1)]
    notes = _remove_markers(model.graph, table, [0, 1, 2])
    assert set(notes) == {"l.membrane.t0", "l.spike.t0", "l.membrane.t1"}
    onnx.checker.check_model(model, full_check=True)
    ops = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    assert ops == [("Identity", ["x"], ["l.membrane.t0"]),
                   ("Neg", ["l.membrane.t0"], ["l.spike.t0"]),
                   ("Identity", ["l.spike.t0"], ["l.membrane.t1"]),
                   ("Add", ["l.spike.t0", "l.membrane.t1"], ["y"])]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(make_session(model).run(None, {"x": x})[0], -2 * x)
