"""Faults on tensors that If/Loop/Scan bodies read from the outer scope reach the bodies
(issue 9: they used to be lost silently: only main-graph consumers were rewired)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

from enpheeph_onnx import discover_sites, inject
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.faults import Fault, FaultModel
from enpheeph_onnx.runtime import make_session

F = TensorProto.FLOAT


def _if_model(cond: bool) -> onnx.ModelProto:
    """``a = Relu(x)``; ``y = If(cond, then: a * x + a, else: -a)`` with both branches
    reading ``a`` and ``x`` (then) from the outer scope; ``cond`` a constant."""
    then = h.make_graph([h.make_node("Mul", ["a", "x"], ["ax"]),
                         h.make_node("Add", ["ax", "a"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", F, None)])
    other = h.make_graph([h.make_node("Neg", ["a"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", F, None)])
    g = h.make_graph(
        [h.make_node("Relu", ["x"], ["a"]),
         h.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "if", [h.make_tensor_value_info("x", F, ["N", 4])],
        [h.make_tensor_value_info("y", F, ["N", 4])],
        [onnx.numpy_helper.from_array(np.array(cond), "cond")])
    return _model(g)


def _loop_model() -> onnx.ModelProto:
    """``a = Relu(x)``; a Loop of 3 iterations accumulating ``v += a`` (``a`` read from
    the outer scope by the body)."""
    body = h.make_graph(
        [h.make_node("Add", ["v_in", "a"], ["v_out"]),
         h.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [h.make_tensor_value_info("i", TensorProto.INT64, []),
         h.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_in", F, None)],
        [h.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_out", F, None)])
    g = h.make_graph(
        [h.make_node("Relu", ["x"], ["a"]),
         h.make_node("Mul", ["x", "zero"], ["v0"]),
         h.make_node("Loop", ["trips", "true", "v0"], ["y"], body=body)],
        "loop", [h.make_tensor_value_info("x", F, ["N", 4])],
        [h.make_tensor_value_info("y", F, ["N", 4])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "trips"),
         onnx.numpy_helper.from_array(np.array(True), "true"),
         onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    return _model(g)


def _model(g: onnx.GraphProto) -> onnx.ModelProto:
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def _flip(a: np.ndarray, idx: tuple[int, ...], bit: int) -> np.ndarray:
    """The numpy reference: ``a`` with bit ``bit`` of element ``idx`` flipped."""
    out = a.copy()
    out.view(np.uint32)[idx] ^= np.uint32(1 << bit)
    return out


X = np.array([[1.5, -2.0, 0.25, 3.0], [-1.0, 2.0, 0.5, -0.75]], np.float32)


@pytest.mark.parametrize("cond", [True, False])
@pytest.mark.parametrize("site", ["a", "x"])
def test_if_branches_see_faults_on_outer_tensors(site: str, cond: bool) -> None:
    m = _if_model(cond)
    f = [Fault(site, (1, 2), FaultModel.BIT_FLIP, (30,))]
    x = _flip(X, (1, 2), 30) if site == "x" else X
    a = np.maximum(x, 0)
    if site == "a":
        a = _flip(a, (1, 2), 30)
    with np.errstate(over="ignore"):
        want = a * x + a if cond else -a
    feeds = {"x": X}
    got = make_session(inject(m, f).model).run(None, feeds)[0]
    assert got.tobytes() == want.astype(np.float32).tobytes()
    golden = make_session(m).run(None, feeds)[0]
    assert got.tobytes() != golden.tobytes()  # the fault does reach the branch
    sites = [s for s in discover_sites(m) if s.name in ("a", "x")]
    e = FaultEngine(m, sites)
    assert e.run(feeds, f)["y"].tobytes() == want.astype(np.float32).tobytes()


def test_loop_body_sees_faults_on_outer_tensors() -> None:
    m = _loop_model()
    f = [Fault("a", (0, 3), FaultModel.STUCK_AT_1, (29,))]
    a = np.maximum(X, 0)
    a = a.copy()
    a.view(np.uint32)[0, 3] |= np.uint32(1 << 29)
    want = (X * np.float32(0)) + a + a + a
    got = make_session(inject(m, f).model).run(None, {"x": X})[0]
    assert got.tobytes() == want.astype(np.float32).tobytes()
    e = FaultEngine(m, [s for s in discover_sites(m) if s.name == "a"])
    assert e.run({"x": X}, f)["y"].tobytes() == want.astype(np.float32).tobytes()


def test_ir3_initializers_stay_constants_after_the_upgrade() -> None:
    """IR 3 lists every initializer as a graph input, as constants; raised to IR >= 4 they
    would become overridable inputs, and onnxruntime would stop folding the Mul into the
    Conv: the empty plan would no longer reproduce the model bit for bit (issue 9 (b))."""
    rng = np.random.default_rng(1)
    w = onnx.numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
    c = onnx.numpy_helper.from_array((rng.random((1, 8, 1, 1)) + 0.5).astype(np.float32), "c")
    g = h.make_graph(
        [h.make_node("Conv", ["x", "W"], ["conv"], pads=[1, 1, 1, 1]),
         h.make_node("Mul", ["conv", "c"], ["y"])], "ir3",
        [h.make_tensor_value_info("x", F, [2, 3, 8, 8]),
         h.make_tensor_value_info("W", F, [8, 3, 3, 3]),
         h.make_tensor_value_info("c", F, [1, 8, 1, 1])],
        [h.make_tensor_value_info("y", F, [2, 8, 8, 8])], [w, c])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 8)])
    m.ir_version = 3
    x = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    want = make_session(m).run(None, x)[0]
    empty = inject(m, []).model
    assert empty.ir_version >= 4 and not {i.name for i in empty.graph.input} & {"W", "c"}
    assert make_session(empty).run(None, x)[0].tobytes() == want.tobytes()
    for kind in ("y", "x"):
        e = FaultEngine(m, [s for s in discover_sites(m) if s.name == kind])
        assert e.run(x, [])["y"].tobytes() == want.tobytes()
        f = [Fault(kind, (0, 0, 0, 0), FaultModel.BIT_FLIP, (3,))]
        assert e.run(x, f)["y"].tobytes() == make_session(inject(m, f).model).run(
            None, x)[0].tobytes()


def _if_with_body_weights() -> onnx.ModelProto:
    """``y = If(c, then: x @ W1 (a body initializer), else: x * k (a body Constant))``."""
    rng = np.random.default_rng(2)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W1")
    k = onnx.numpy_helper.from_array(np.full((1, 4), 1.5, np.float32), "k")
    then = h.make_graph([h.make_node("MatMul", ["x", "W1"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", F, None)], [w1])
    other = h.make_graph([h.make_node("Constant", [], ["k"], value=k),
                          h.make_node("Mul", ["x", "k"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", F, None)])
    g = h.make_graph([h.make_node("If", ["cond"], ["y"], name="gate", then_branch=then,
                                  else_branch=other)], "body_weights",
                     [h.make_tensor_value_info("x", F, ["N", 4]),
                      h.make_tensor_value_info("cond", TensorProto.BOOL, [1])],
                     [h.make_tensor_value_info("y", F, ["N", 4])])
    return _model(g)


def test_weights_inside_bodies_are_sites_and_can_be_faulted() -> None:
    """Issue 9: weights of If/Loop/Scan bodies were no sites. They are listed under path
    names and faulted by inject and by campaigns, exactly (numpy reference)."""
    from enpheeph_onnx.model import load_model

    m = load_model(_if_with_body_weights())
    sites = {s.name: s for s in discover_sites(m)}
    assert {"gate/then_branch/W1", "gate/else_branch/k"} <= set(sites)
    then = next(a.g for a in _if_with_body_weights().graph.node[0].attribute
                if a.name == "then_branch")
    w1 = onnx.numpy_helper.to_array(then.initializer[0])
    f = [Fault("gate/then_branch/W1", (2, 3), FaultModel.BIT_FLIP, (30,))]
    bad = w1.copy()
    bad.view(np.uint32)[2, 3] ^= np.uint32(1 << 30)
    feeds = {"x": X, "cond": np.array([True])}
    want = (X @ bad).astype(np.float32)
    got = make_session(inject(m, f).model).run(None, feeds)[0]
    # the faulty weight (bit 30 flipped: its exponent moves by 128) reaches the product
    assert np.allclose(got, want, rtol=1e-5) and not np.allclose(got, X @ w1, rtol=1e-3)
    e = FaultEngine(m, [sites["gate/then_branch/W1"], sites["gate/else_branch/k"]])
    assert e.run(feeds, f)["y"].tobytes() == got.tobytes()
    fk = [Fault("gate/else_branch/k", (0, 1), FaultModel.STUCK_AT_1, (31,))]
    feeds["cond"] = np.array([False])
    want = X * np.array([[1.5, -1.5, 1.5, 1.5]], np.float32)
    assert make_session(inject(m, fk).model).run(None, feeds)[0].tobytes() == want.tobytes()
    assert e.run(feeds, fk)["y"].tobytes() == want.tobytes()
    # an empty plan computes what the source model computes
    src = make_session(_if_with_body_weights())
    for c in (True, False):
        feeds["cond"] = np.array([c])
        assert make_session(inject(m, []).model).run(None, feeds)[0].tobytes() == src.run(
            None, feeds)[0].tobytes()


def test_a_body_weight_named_like_an_outer_tensor_is_a_site_of_its_own() -> None:
    """Review: a body initializer named like an outer tensor shadows it in the body (a body
    Constant may not: onnxruntime refuses the graph as not SSA), and onnxruntime computes
    with the body's (measured at every optimization level);
    it was left out of the sites. It moves out under its path name like any other; the
    empty plan computes what the model computes, and a fault on either W reaches exactly
    the nodes that read that W."""
    from enpheeph_onnx.model import load_model

    outer = onnx.numpy_helper.from_array(np.array([0.5, 0.25, 2.0, 1.0], np.float32), "W")
    inner = onnx.numpy_helper.from_array(np.array([1.0, 2.0, 3.0, 4.0], np.float32), "W")
    then = h.make_graph([h.make_node("Mul", ["a", "W"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", F, None)], [inner])
    other = h.make_graph([h.make_node("Identity", ["a"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", F, None)])
    g = h.make_graph([h.make_node("Mul", ["x", "W"], ["a"]),
                      h.make_node("If", ["cond"], ["y"], name="if0", then_branch=then,
                                  else_branch=other)], "clash",
                     [h.make_tensor_value_info("x", F, ["N", 4]),
                      h.make_tensor_value_info("cond", TensorProto.BOOL, [1])],
                     [h.make_tensor_value_info("y", F, ["N", 4])], [outer])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    feeds = {"x": X, "cond": np.array([True])}
    w_out, w_in = np.array([0.5, 0.25, 2.0, 1.0], np.float32), np.array([1, 2, 3, 4], np.float32)
    want = make_session(m).run(None, feeds)[0]
    assert want.tobytes() == (X * w_out * w_in).tobytes()  # onnxruntime reads the body's W
    loaded = load_model(m)
    assert {"W", "if0/then_branch/W"} <= {s.name for s in discover_sites(loaded)}
    assert make_session(inject(loaded, []).model).run(None, feeds)[0].tobytes() == \
        want.tobytes()
    f_in = [Fault("if0/then_branch/W", (2,), FaultModel.BIT_FLIP, (31,))]
    got = make_session(inject(loaded, f_in).model).run(None, feeds)[0]
    assert got.tobytes() == (X * w_out * (w_in * np.array([1, 1, -1, 1], np.float32))).tobytes()
    f_out = [Fault("W", (2,), FaultModel.BIT_FLIP, (31,))]
    got = make_session(inject(loaded, f_out).model).run(None, feeds)[0]
    assert got.tobytes() == (X * (w_out * np.array([1, 1, -1, 1], np.float32)) * w_in).tobytes()


def _loop_with_body_shapes() -> onnx.ModelProto:
    """``a = Relu(x)``; 3 iterations of ``s = v + a; v = s * 0.5`` in a Loop body whose
    state has a declared shape, so that ONNX infers the body tensors' shapes."""
    body = h.make_graph(
        [h.make_node("Add", ["v_in", "a"], ["s"], name="acc"),
         h.make_node("Mul", ["s", "half"], ["v_out"], name="halve"),
         h.make_node("Identity", ["c_in"], ["c_out"])], "body",
        [h.make_tensor_value_info("i", TensorProto.INT64, []),
         h.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_in", F, ["N", 4])],
        [h.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         h.make_tensor_value_info("v_out", F, ["N", 4])],
        [onnx.numpy_helper.from_array(np.array([0.5], np.float32), "half")])
    g = h.make_graph(
        [h.make_node("Relu", ["x"], ["a"]),
         h.make_node("Mul", ["x", "zero"], ["v0"]),
         h.make_node("Loop", ["trips", "true", "v0"], ["y"], name="steps", body=body)],
        "loop", [h.make_tensor_value_info("x", F, ["N", 4])],
        [h.make_tensor_value_info("y", F, ["N", 4])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "trips"),
         onnx.numpy_helper.from_array(np.array(True), "true"),
         onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    return _model(g)


@pytest.mark.parametrize("cond", [True, False])
def test_activations_inside_if_bodies_are_sites_and_can_be_faulted(cond: bool) -> None:
    """Issue 9: activations of If/Loop/Scan bodies were no sites. They are listed under
    path names; inject and campaigns fault them exactly (numpy reference); a fault in the
    branch not taken is masked."""
    from enpheeph_onnx.model import load_model

    m = load_model(_if_model(cond))
    sites = {s.name: s for s in discover_sites(m)}
    body = {n: s for n, s in sites.items() if s.source == "body_output"}
    assert set(body) == {"If_1/then_branch/ax", "If_1/then_branch/t", "If_1/else_branch/e"}
    assert all(s.shape == ("N", 4) and s.dtype == "float32" for s in body.values())
    f = [Fault("If_1/then_branch/ax", (1, 2), FaultModel.BIT_FLIP, (30,))]
    a = np.maximum(X, 0)
    want = _flip(a * X, (1, 2), 30) + a if cond else -a
    got = make_session(inject(m, f).model).run(None, {"x": X})[0]
    assert got.tobytes() == want.tobytes()
    e = FaultEngine(m, list(sites.values()))
    assert e.run({"x": X}, f)["y"].tobytes() == want.tobytes()
    # a whole-batch fault (*) on the else branch's output
    fe = [Fault("If_1/else_branch/e", (None, 0), FaultModel.STUCK_AT_0, (31,))]
    want = a * X + a if cond else np.where(np.arange(4) == 0, a, -a).astype(np.float32)
    assert cond or want[0, 0] == 1.5  # the sign bit cleared: -1.5 became 1.5
    got = make_session(inject(m, fe).model).run(None, {"x": X})[0]
    assert got.tobytes() == want.tobytes()
    assert e.run({"x": X}, fe)["y"].tobytes() == want.tobytes()


def test_activations_inside_loop_bodies_are_faulted_at_every_iteration() -> None:
    """A fault on a Loop body's tensor hits it in every iteration (the numpy reference
    runs the loop)."""
    from enpheeph_onnx.model import load_model

    m = load_model(_loop_with_body_shapes())
    sites = {s.name: s for s in discover_sites(m)}
    assert {"steps/body/s", "steps/body/v_out"} <= set(sites)
    assert sites["steps/body/s"].shape == ("N", 4) and sites["steps/body/s"].op_type == "Add"
    f = [Fault("steps/body/s", (0, 3), FaultModel.BIT_FLIP, (23,))]
    a, v = np.maximum(X, 0), np.zeros_like(X)
    for _ in range(3):
        v = _flip(v + a, (0, 3), 23) * np.float32(0.5)
    got = make_session(inject(m, f).model).run(None, {"x": X})[0]
    assert got.tobytes() == v.tobytes()
    e = FaultEngine(m, [sites["steps/body/s"], sites["a"]])
    assert e.run({"x": X}, f)["y"].tobytes() == v.tobytes()
    assert e.run({"x": X})["y"].tobytes() == make_session(m).run(None, {"x": X})[0].tobytes()


def test_body_tensor_names_are_stable_and_unique() -> None:
    """Body tensors are renamed to path names once (loading twice changes nothing), and a
    body tensor named like an outer one gets a name of its own."""
    from enpheeph_onnx.model import load_model, name_body_tensors

    m = load_model(_loop_with_body_shapes())
    assert name_body_tensors(m).SerializeToString() == m.SerializeToString()
    assert load_model(m).SerializeToString() == m.SerializeToString()
    then = h.make_graph([h.make_node("Neg", ["x"], ["a"])], "then", [],
                        [h.make_tensor_value_info("a", F, None)])
    other = h.make_graph([h.make_node("Abs", ["x"], ["a"])], "else", [],
                         [h.make_tensor_value_info("a", F, None)])
    g = h.make_graph([h.make_node("Relu", ["x"], ["g/then_branch/a"]),
                      h.make_node("If", ["c"], ["y"], name="g", then_branch=then,
                                  else_branch=other),
                      h.make_node("Add", ["y", "g/then_branch/a"], ["z"])], "clash",
                     [h.make_tensor_value_info("x", F, ["N", 4]),
                      h.make_tensor_value_info("c", TensorProto.BOOL, [1])],
                     [h.make_tensor_value_info("z", F, ["N", 4])])
    src = _model(g)
    m = load_model(src)
    names = {s.name for s in discover_sites(m)}
    assert {"g/then_branch/a", "g/then_branch/a_1", "g/else_branch/a"} <= names
    for c in (True, False):
        feeds = {"x": X, "c": np.array([c])}
        assert make_session(m).run(None, feeds)[0].tobytes() == make_session(src).run(
            None, feeds)[0].tobytes()


def test_body_tensors_of_unknown_shape_are_listed_not_dropped(tmp_path) -> None:
    """A Loop state declared without a shape leaves its body tensors untyped: `sites`
    lists them with shape '?' (no site: a body's tensor cannot be measured)."""
    from enpheeph_onnx.sites import unresolved_body_tensors

    from .helpers import invoke

    m = _loop_model()
    assert unresolved_body_tensors(m) == ["Loop_2/body/v_out"]
    assert unresolved_body_tensors(_loop_with_body_shapes()) == []
    onnx.save(m, tmp_path / "loop.onnx")
    code, out, err = invoke("sites", str(tmp_path / "loop.onnx"))
    assert code == 0, err
    row = next(ln for ln in out.splitlines() if ln.startswith("Loop_2/body/v_out"))
    assert "no site" in row and "1 body tensor(s) of unknown shape" in err
