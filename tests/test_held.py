"""Weight faults on the weights onnxruntime holds (:mod:`enpheeph_onnx.held`,
``--optimization all``): bit for bit what ``inject`` followed by onnxruntime's own offline
optimization gives, with the faulted copies restored after every trial."""

from __future__ import annotations

import json
import platform

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from enpheeph_onnx import discover_sites, inject, load_model
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import Fault, FaultModel
from enpheeph_onnx.faultset import FaultSet
from enpheeph_onnx.held import HeldWeights
from enpheeph_onnx.runtime import Optimization, make_session, session_options
from enpheeph_onnx.runtime_graph import optimize_offline
from enpheeph_onnx.sites import SiteKind

from .conftest import DATA, MODEL


def _cnn(bn: bool = False, hidden_in: int = 16 * 4 * 4) -> onnx.ModelProto:
    """conv 3->16 3x3, ReLU, max-pool 2, conv 16->16 3x3, ReLU, max-pool 2, FC -> 10 on
    16x16 inputs (NCHWc-sized channels); ``bn``: a BatchNormalization after conv1."""
    rng = np.random.default_rng(5)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [w("c1.w", 16, 3, 3, 3), w("c1.b", 16), w("c2.w", 16, 16, 3, 3), w("c2.b", 16),
             w("fc.w", hidden_in, 10), w("fc.b", 10),
             numpy_helper.from_array(np.array([-1, hidden_in], np.int64), "flat_shape")]
    nodes = [h.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], pads=[1, 1, 1, 1])]
    first = "c1"
    if bn:
        inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, 16).astype(np.float32), n)
                  for n in ("bn.s", "bn.v")]
        inits += [w("bn.b", 16), w("bn.m", 16)]
        nodes.append(h.make_node("BatchNormalization", ["c1", "bn.s", "bn.b", "bn.m", "bn.v"],
                                 ["bn"]))
        first = "bn"
    nodes += [
        h.make_node("Relu", [first], ["r1"]),
        h.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "c2.w", "c2.b"], ["c2"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c2"], ["r2"]),
        h.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Reshape", ["p2", "flat_shape"], ["flat"]),
        h.make_node("MatMul", ["flat", "fc.w"], ["mm"]),
        h.make_node("Add", ["mm", "fc.b"], ["logits"]),
    ]
    g = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             ["N", 3, 16, 16])],
                     [h.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def _data(n: int = 24) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(2).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def _faults(sites: list, n: int, rng: np.random.Generator) -> list[Fault]:
    """``n`` random weight faults: every fault model, multi-bit masks, repeated elements."""
    models = [FaultModel.BIT_FLIP, FaultModel.STUCK_AT_0, FaultModel.STUCK_AT_1]
    out = []
    for k in range(n):
        s = sites[int(rng.integers(len(sites)))]
        idx = tuple(int(rng.integers(d)) for d in s.shape)
        bits = tuple(sorted({int(b) for b in rng.integers(0, 32, 1 + k % 2)}))
        out.append(Fault(s.name, idx, models[k % 3] if n > 1 else FaultModel.BIT_FLIP, bits))
        if k % 4 == 0:
            out.append(Fault(s.name, idx, FaultModel.BIT_FLIP, (30,)))
    return out


def _held_values(model: onnx.ModelProto, names: set[str]) -> dict[str, np.ndarray]:
    """The held weights onnxruntime itself makes of ``model`` (optimized offline)."""
    opt = optimize_offline(model, "cpu", None)
    return {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer if t.name in names}


def test_held_trials_equal_inject_then_onnxruntime_optimization() -> None:
    m = _cnn()
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.WEIGHT]
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    held = e._held
    assert held is not None
    if platform.machine().lower() in ("x86_64", "amd64"):  # NCHWc kernels: filters re-ordered
        assert any(c.positions is not None for cs in held.copies.values() for c in cs)
    golden = {k: v.tobytes() for k, v in held.values.items()}
    x = _data()
    rng = np.random.default_rng(9)
    for n in (1, 1, 1, 3, 20, 200):
        faults = _faults(sites, n, rng)
        got = e.run(x, faults, batch_size=10)["logits"]
        want = held.session.run(None, {**x, **_held_values(inject(m, faults).model,
                                                           set(held.values))})[0]
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), faults
        assert {k: v.tobytes() for k, v in held.values.items()} == golden  # restored
    assert held.verified  # trials ran on suffixes of the runtime graph
    ref = e.reference(x, faults, batch_size=10)["logits"]
    assert ref.tobytes() == held.session.run(None, {**x, **held.values})[0].tobytes()


def test_held_suffix_runs_equal_whole_runs() -> None:
    """A fault at every weight, with and without suffix re-execution."""
    m = _cnn()
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.WEIGHT]
    x = _data(16)
    cut = HeldWeights(m, sites)
    whole = HeldWeights(m, sites, suffix=False)
    for s in sites:
        idx = tuple(d - 1 for d in s.shape)
        fs = FaultSet.from_faults([Fault(s.name, idx, FaultModel.BIT_FLIP, (29,))])
        a, b = cut.run(x, fs)["logits"], whole.run(x, fs)["logits"]
        assert a.tobytes() == b.tobytes(), s.name
        assert a.tobytes() != whole.reference(x)["logits"].tobytes(), s.name
    # every cut verified and used (a cut filled with faulted weights would fail its check:
    # the golden tensors are computed before a trial's faults are applied)
    assert cut.verified == set(cut._first.values()) - {0} and len(cut.verified) >= 2
    assert not whole.verified


def test_held_deviation_is_the_difference_from_the_deployed_session() -> None:
    m = _cnn(hidden_in=16 * 4 * 4)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.WEIGHT]
    x = _data()
    held = HeldWeights(m, sites)
    plain = make_session(m, "cpu", session_options(optimization=Optimization.ALL)).run(
        None, x)[0]
    ref = held.reference(x)["logits"]
    assert held.deviation(x) == pytest.approx(float(np.abs(ref - plain).max()), abs=0)


def test_weights_folded_by_onnxruntime_are_baked_at_all() -> None:
    """Conv + BatchNormalization: onnxruntime scales the filters, so the stored bits of
    ``c1.w`` do not exist in the running graph. HeldWeights refuses them by default; the
    engine leaves them constants and runs a trial hitting one on a session of the model
    with its faults written in, so that it equals inject + run at ``all``, bit for bit."""
    m = _cnn(bn=True)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.WEIGHT]
    with pytest.raises(EnpheephError, match=r"c1\.w.*--optimization extended"):
        HeldWeights(m, sites)
    keep = [s for s in sites if s.name.startswith(("c2", "fc"))]
    HeldWeights(m, keep)  # the weights it holds as stored are served
    held = HeldWeights(m, sites, folded="bake")
    assert {"c1.w", "c1.b", "bn.s", "bn.v"} <= held.folded
    assert not held.folded & {"c2.w", "fc.w"}
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    assert e.folded_weights == held.folded
    x = _data(6)
    opts = session_options(optimization=Optimization.ALL)
    plain = make_session(m, "cpu", opts).run(None, x)[0]
    for faults in ([Fault("c1.w", (2, 1, 0, 2), FaultModel.BIT_FLIP, (27,))],
                   [Fault("bn.v", (4,), FaultModel.STUCK_AT_1, (29,)),
                    Fault("fc.w", (3, 7), FaultModel.BIT_FLIP, (30,))],
                   [Fault("c2.w", (1, 2, 2, 0), FaultModel.BIT_FLIP, (28,))]):
        fs = FaultSet.from_faults(faults)
        want = make_session(inject(m, fs).model, "cpu", opts).run(None, x)[0]
        assert want.tobytes() != plain.tobytes()
        assert e.run(x, fs)["logits"].tobytes() == want.tobytes(), faults
    # a baked trial is judged against the model's own golden run
    fs = FaultSet.from_faults([Fault("c1.w", (0, 0, 0, 0), FaultModel.BIT_FLIP, (3,))])
    e.run(x, fs)
    assert e.reference(x, fs)["logits"].tobytes() == plain.tobytes()


def test_held_refuses_mixed_kinds_and_other_dtypes() -> None:
    m = load_model(MODEL)
    with pytest.raises(EnpheephError, match="cannot mix weights"):
        FaultEngine(m, discover_sites(m), optimization=Optimization.ALL)
    half = onnx.ModelProto()
    half.CopyFrom(_cnn())
    t = half.graph.initializer[0]
    arr = numpy_helper.to_array(t).astype(np.float16)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    half.graph.node.insert(0, h.make_node("Cast", [t.name], ["c1.w32"], to=TensorProto.FLOAT))
    half.graph.node[1].input[1] = "c1.w32"
    sites = [s for s in discover_sites(half) if s.name == "c1.w"]
    with pytest.raises(EnpheephError, match=r"float16.*float32/float64"):
        HeldWeights(half, sites)


def test_cli_weight_campaign_at_optimization_all(tmp_path) -> None:
    from click.testing import CliRunner

    from enpheeph_onnx.cli import main
    from enpheeph_onnx.store import ResultStore

    db = tmp_path / "r.sqlite"
    args = ["campaign", str(MODEL), "--data", str(DATA), "--trials", "6",
            "--fault-rate", "1e-3", "--seed", "1", "--no-progress", "--json"]
    r = CliRunner().invoke(main, [*args, "--optimization", "all", "--db", str(db)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["golden_deviation"] == 0.0 and res["suffix"]["cuts"]
    store = ResultStore.open(db)
    assert store.meta()["golden_deviation"] == 0.0
    store.close()
    mixed = tmp_path / "m.sqlite"
    r = CliRunner().invoke(main, [*args, "--kinds", "weight,activation", "--optimization",
                                  "all", "--db", str(mixed)])
    assert r.exit_code == 2 and "cannot mix weights" in r.output and not mixed.exists()


def test_held_refuses_a_fault_outside_the_weight() -> None:
    m = _cnn()
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.WEIGHT]
    held = HeldWeights(m, sites)
    fs = FaultSet.from_faults([Fault("c1.w", (16, 0, 0, 0), FaultModel.BIT_FLIP, (3,))])
    with pytest.raises(EnpheephError, match=r"outside its shape \[16, 3, 3, 3\]"):
        held.run(_data(4), fs)
    assert all(v.tobytes() == held._golden_values[k].tobytes() for k, v in held.values.items())


def _mlp_reading(w_op: str) -> onnx.ModelProto:
    """``y1 = x @ f(W)``, ``y2 = x @ W`` with ``f`` a constant-folded op on the weight."""
    rng = np.random.default_rng(8)
    w = numpy_helper.from_array(rng.uniform(0.1, 1.0, (4, 3)).astype(np.float32), "W")
    extra = [numpy_helper.from_array(np.float32(-0.5), "lo"),
             numpy_helper.from_array(np.float32(0.5), "hi")]
    ins = ["W", "lo", "hi"] if w_op == "Clip" else ["W"]
    g = h.make_graph([h.make_node(w_op, ins, ["fw"]), h.make_node("MatMul", ["x", "fw"], ["y1"]),
                      h.make_node("MatMul", ["x", "W"], ["y2"])], "fold",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 3]),
                      h.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 3])],
                     [w, *extra])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    return m


@pytest.mark.parametrize("op", ["Abs", "Relu", "Clip"])
def test_held_refuses_a_weight_folded_through_another_op(op: str) -> None:
    """Review: the folded ``Abs(W)`` of a positive weight equals its probe codes, and a
    saturating ``Clip(W)`` does not change between probes; the fault on ``W`` would miss
    (or wrongly hit) the folded constant. Refused."""
    m = _mlp_reading(op)
    sites = [s for s in discover_sites(m) if s.name == "W"]
    with pytest.raises(EnpheephError, match=rf"'W' is read by {op}.*constants only"):
        HeldWeights(m, sites)
    # the engine bakes it: the fault reaches both readers, as inject + run computes
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    assert e.folded_weights == {"W"}
    x = {"x": np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)}
    f = [Fault("W", (2, 1), FaultModel.BIT_FLIP, (31,))]
    sess = make_session(inject(m, f).model, "cpu",
                        session_options(optimization=Optimization.ALL))
    want = dict(zip(["y1", "y2"], sess.run(None, x), strict=True))
    got = e.run(x, f)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)


def test_held_runs_whole_where_no_cut_has_tensors() -> None:
    """Review: an output produced before the first weight reader leaves no tensor to
    cache; the trial runs whole (it crashed in the golden cache)."""
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    g = h.make_graph([h.make_node("Neg", ["x"], ["early"]),
                      h.make_node("MatMul", ["x", "W"], ["y"])], "two",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("early", TensorProto.FLOAT, ["N", 4]),
                      h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    x = {"x": rng.standard_normal((5, 4)).astype(np.float32)}
    held = HeldWeights(m, [s for s in discover_sites(m) if s.name == "W"])
    f = [Fault("W", (1, 2), FaultModel.BIT_FLIP, (30,))]
    got = held.run(x, FaultSet.from_faults(f))["y"]
    want = held.session.run(None, {**x, **_held_values(inject(m, f).model, set(held.values))})
    assert got.tobytes() == want[1].tobytes()


def test_folded_weights_stay_constants_at_extended() -> None:
    """Issue 9 (a): at EXTENDED a fed weight keeps onnxruntime from folding a
    BatchNormalization into the Conv, so the campaign's golden run differed from the
    model's and a trial from inject + run. The engine measures which weights are folded;
    those stay constants (a trial hitting one runs on a session with its faults written
    in), so the golden run is the model's and every trial equals inject + run."""
    x = _data(8)
    for bn in (False, True):
        m = _cnn(bn=bn)
        sites = [s for s in discover_sites(m) if s.kind is SiteKind.WEIGHT]
        e = FaultEngine(m, sites)
        plain = make_session(m).run(None, x)[0]
        assert e.run(x, [])["logits"].tobytes() == plain.tobytes()
        assert e.golden_deviation(x) == 0.0
        folded = {"c1.w", "c1.b", "bn.s", "bn.b", "bn.m", "bn.v"}
        assert folded <= e.folded_weights if bn else not e.folded_weights & folded
        for site, idx in (("c1.w", (3, 1, 2, 0)), ("c2.w", (5, 7, 1, 1)),
                          ("fc.w", (17, 4))):
            f = FaultSet.from_faults([Fault(site, idx, FaultModel.BIT_FLIP, (27,))])
            want = make_session(inject(m, f).model).run(None, x)[0]
            assert e.run(x, f)["logits"].tobytes() == want.tobytes(), site
            assert want.tobytes() != plain.tobytes()
            # judged against the golden run of the same fusions: the model's own
            assert e.reference(x, f)["logits"].tobytes() == plain.tobytes()
