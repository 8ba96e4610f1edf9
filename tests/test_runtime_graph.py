"""Activation faults on the graph onnxruntime runs at ORT_ENABLE_ALL
(:mod:`enpheeph_onnx.runtime_graph`): sites placed on its tensors (NCHWc blocks, ReLUs split
off their kernels), trials bit for bit what ``inject`` + a default-options session gives."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as h

from enpheeph_onnx import discover_sites, inject
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.faults import Fault, FaultModel
from enpheeph_onnx.runtime import Optimization, make_session, session_options
from enpheeph_onnx.runtime_graph import optimize_offline, place_values
from enpheeph_onnx.sites import SiteKind

from .conftest import DATA, MODEL
from .test_chain import _random_faults
from .test_held import _cnn, _data

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _values(m: onnx.ModelProto) -> list:
    return [s for s in discover_sites(m) if s.kind is not SiteKind.WEIGHT]


def test_sites_are_placed_on_the_runtime_tensors() -> None:
    m = _cnn()
    sites = _values(m)
    x = _data(8)
    model, placed = place_values(m, optimize_offline(m, "cpu", None), sites, x, "cpu", None)
    assert placed["x"].tensor == "x" and placed["logits"].tensor == "logits"
    # MatMul + Add became one Gemm: the MatMul's output is not in the running graph
    assert "mm" not in placed
    if X86:  # NCHWc kernels: convolution outputs in blocks, their ReLUs split off
        assert placed["r1"].block in (8, 16) and placed["p1"].block == placed["r1"].block
        assert placed["c1"].tensor.startswith("enpheeph/unfused/")
        assert any(n.op_type == "Relu" and n.name.startswith("enpheeph/unfused/")
                   for n in model.graph.node)
    for p in placed.values():  # every placed tensor is typed, so segments can be cut
        assert p.tensor in {v.name for v in [*model.graph.input, *model.graph.value_info,
                                              *model.graph.output]}


def test_runtime_chain_trials_equal_inject_run_all() -> None:
    m = _cnn()
    sites = _values(m)
    x = _data(24)
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    so = session_options(optimization=Optimization.ALL)
    rng = np.random.default_rng(4)
    placed = [s for s in sites if s.name != "mm"]
    served = 0
    for n in (1, 1, 1, 2, 6, 30):
        pool = placed if n < 30 else sites  # the last trials also hit 'mm': source chain
        faults = _random_faults(pool, n, rng, 24)
        got = e.run(x, faults, batch_size=10)["logits"]
        want = make_session(inject(m, faults).model, "cpu", so).run(None, x)[0]
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), faults
        served += e._last is not None and e._last[1] is e._runtime_chain
        ref = e.reference(x, faults, batch_size=10)["logits"]
        assert ref.tobytes() == make_session(m, "cpu", so).run(None, x)[0].tobytes()
    assert e._runtime_chain is not None and served >= 5
    assert e.golden_deviation(x, 10) == 0.0


def test_ambiguous_and_constant_tensors_are_not_placed() -> None:
    """``Relu(Abs(x))`` equals ``Abs(x)``: either site could be the other's tensor, so
    neither is placed, and their faults run on the source graph's segments, still exact."""
    g = h.make_graph(
        [h.make_node("Abs", ["x"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
         h.make_node("Mul", ["r", "zero"], ["z"]), h.make_node("Add", ["r", "z"], ["y"])],
        "g", [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        [onnx.numpy_helper.from_array(np.zeros(6, np.float32), "zero")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    sites = _values(m)
    x = {"x": np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)}
    _, placed = place_values(m, optimize_offline(m, "cpu", None), sites, x, "cpu", None)
    assert "a" not in placed and "r" not in placed and "z" not in placed
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    so = session_options(optimization=Optimization.ALL)
    for f in ([Fault("a", (1, 2), FaultModel.BIT_FLIP, (31,))],
              [Fault("z", (None, 0), FaultModel.STUCK_AT_1, (30,))]):
        got = e.run(x, f)["y"]
        want = make_session(inject(m, f).model, "cpu", so).run(None, x)[0]
        assert got.tobytes() == want.tobytes()


def test_cli_activation_campaign_at_all_reports_the_runtime_graph(tmp_path) -> None:
    from click.testing import CliRunner

    from enpheeph_onnx.cli import main

    db = tmp_path / "r.sqlite"
    r = CliRunner().invoke(main, ["campaign", str(MODEL), "--data", str(DATA), "--kinds",
                                  "activation", "--trials", "4", "--faults-per-trial", "3",
                                  "--optimization", "all", "--seed", "2", "--no-progress",
                                  "--json", "--db", str(db)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["golden_deviation"] == 0.0
    assert res["suffix"]["runtime_graph_sites"] > 0 and res["suffix"]["boundaries"] > 0


def test_coinciding_tensors_are_placed_nowhere() -> None:
    """Review: after a freshly initialised BatchNormalization (identity) the convolution's
    output and the BN's have the same values, and onnxruntime keeps one tensor; a
    LeakyReLU of positive pre-activations equals its input. Neither site is placed (the
    source graph's segments serve them), so no fault lands on the other's tensor."""
    rng = np.random.default_rng(6)
    w = onnx.numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")
    one, zero = np.ones(16, np.float32), np.zeros(16, np.float32)
    bn = [onnx.numpy_helper.from_array(a, n) for a, n in ((one, "s"), (zero, "b"),
                                                          (zero, "mu"), (one, "var"))]
    g = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         h.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["bn"],
                     epsilon=0.0),
         h.make_node("Relu", ["bn"], ["y"])], "bn",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 8, 8])], [w, *bn])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    x = {"x": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
    sites = _values(m)
    _, placed = place_values(m, optimize_offline(m, "cpu", None), sites, x, "cpu", None)
    assert "c" not in placed and "bn" not in placed
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    f = [Fault("c", (1, 2, 3, 4), FaultModel.BIT_FLIP, (31,))]
    want = make_session(inject(m, f).model, "cpu",
                        session_options(optimization=Optimization.ALL)).run(None, x)[0]
    assert e.run(x, f)["y"].tobytes() == want.tobytes()
