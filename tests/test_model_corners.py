"""Model shapes that used to crash: rank-0 inputs (issue 9, "Crashes")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto
from onnx import helper as h

from enpheeph_onnx import discover_sites, inject
from enpheeph_onnx.cli import main
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.faults import Fault, FaultModel
from enpheeph_onnx.model import load_model
from enpheeph_onnx.runtime import make_session

F = TensorProto.FLOAT


def _scalar_input_model() -> onnx.ModelProto:
    """``y = Relu(x @ W) * gain`` with ``gain`` a rank-0 input (a sample rate, a
    temperature...), the same for every sample."""
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(3).standard_normal((4, 3)).astype(np.float32), "W")
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["mm"]), h.make_node("Relu", ["mm"], ["r"]),
         h.make_node("Mul", ["r", "gain"], ["y"])], "scalar",
        [h.make_tensor_value_info("x", F, ["N", 4]), h.make_tensor_value_info("gain", F, [])],
        [h.make_tensor_value_info("y", F, ["N", 3])], [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    return m


X = np.random.default_rng(4).standard_normal((10, 4)).astype(np.float32)
GAIN = np.array(2.5, np.float32)


def test_rank0_inputs_go_with_every_batch(tmp_path: Path) -> None:
    m = _scalar_input_model()
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    np.savez(tmp_path / "in.npz", x=X, gain=GAIN)
    want = make_session(m).run(None, {"x": X, "gain": GAIN})[0]
    r = CliRunner().invoke(main, ["run", str(path), "--inputs", str(tmp_path / "in.npz"),
                                  "--batch-size", "3", "-o", str(tmp_path / "out.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "out.npz") as z:
        assert z["y"].tobytes() == want.tobytes()
    assert "run: 10 sample(s)" in r.output
    data = {"x": X, "gain": GAIN}
    sites = [s for s in discover_sites(m) if s.name in ("W", "r", "gain", "x")]
    e = FaultEngine(m, sites)
    for f in ([Fault("r", (None, 1), FaultModel.BIT_FLIP, (30,))],
              [Fault("W", (2, 1), FaultModel.STUCK_AT_1, (29,))],
              [Fault("gain", (), FaultModel.BIT_FLIP, (31,))],
              [Fault("x", (7, 0), FaultModel.BIT_FLIP, (28,))]):
        got = e.run(data, f, batch_size=3)["y"]
        ref = make_session(inject(m, f).model).run(None, data)[0]
        assert got.tobytes() == ref.tobytes(), f
    np.savez(tmp_path / "d.npz", x=X, gain=GAIN, labels=np.argmax(want, 1))
    r = CliRunner().invoke(main, ["campaign", str(path), "--data", str(tmp_path / "d.npz"),
                                  "--kinds", "weight,activation", "--trials", "4",
                                  "--batch-size", "3", "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["golden_accuracy"] == 1.0


def _relu_neg(imports: list[tuple[str, int]], node_domain: str = "") -> onnx.ModelProto:
    g = h.make_graph([h.make_node("Relu", ["x"], ["r"], domain=node_domain),
                      h.make_node("Neg", ["r"], ["y"])], "g",
                     [h.make_tensor_value_info("x", F, ["N", 4])],
                     [h.make_tensor_value_info("y", F, ["N", 4])])
    m = h.make_model(g, opset_imports=[h.make_opsetid(d, v) for d, v in imports])
    m.ir_version = 9
    return m


def test_the_default_domain_imported_twice(tmp_path: Path) -> None:
    """skl2onnx imports the default domain twice (as "" and "ai.onnx"): merged, and the
    model is faulted exactly; two different versions are a one-line error."""
    for imports, dom in (([("", 17), ("", 17)], ""), ([("ai.onnx", 17), ("", 17)], "ai.onnx"),
                         ([("ai.onnx", 17)], "ai.onnx")):
        path = tmp_path / "dup.onnx"
        onnx.save(_relu_neg(imports, dom), path)
        out = tmp_path / "f.onnx"
        r = CliRunner().invoke(main, ["inject", str(path), "-o", str(out), "--fault",
                                      "r[0,1]:bitflip:31"])
        assert r.exit_code == 0, (imports, r.output)
        y = make_session(onnx.load(out)).run(None, {"x": X})[0]
        want = -np.maximum(X, 0)
        want[0, 1] = -want[0, 1]
        assert y.tobytes() == want.tobytes()
    onnx.save(_relu_neg([("", 17), ("", 15)]), path)
    out.unlink()
    r = CliRunner().invoke(main, ["inject", str(path), "-o", str(out), "--fault",
                                  "r[0,1]:bitflip:31"])
    assert r.exit_code == 2 and "twice, at versions 17 and 15" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_a_wrong_declared_shape_is_ignored(tmp_path: Path) -> None:
    """onnxruntime runs a model whose value_info declares a wrong shape; shape inference
    after the opset conversion used to fail (a traceback from inject)."""
    m = _relu_neg([("", 17)])
    m.graph.value_info.append(h.make_tensor_value_info("r", F, ["N", 5]))
    path = tmp_path / "vi.onnx"
    onnx.save(m, path)
    out = tmp_path / "f.onnx"
    r = CliRunner().invoke(main, ["inject", str(path), "-o", str(out), "--fault",
                                  "r[1,3]:stuck-at-1:31"])
    assert r.exit_code == 0, r.output
    y = make_session(onnx.load(out)).run(None, {"x": X})[0]
    r_faulty = np.maximum(X, 0)
    r_faulty.view(np.uint32)[1, 3] |= np.uint32(1 << 31)
    assert y.tobytes() == (-r_faulty).tobytes()
    sites = {s.name: s.shape for s in discover_sites(load_model(path))}
    assert sites["r"] == ("N", 4)



def test_a_fixed_batch_of_one_is_run_sample_by_sample(tmp_path: Path) -> None:
    """A model exported with batch 1 and data with 10 samples: run and campaigns batch by
    the model's own batch size (issue 9); a count it does not divide is a clear error."""
    m = _relu_neg([("", 17)])
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].Clear()
        v.type.tensor_type.shape.dim[0].dim_value = 1
    path = tmp_path / "b1.onnx"
    onnx.save(m, path)
    np.savez(tmp_path / "in.npz", x=X)
    r = CliRunner().invoke(main, ["run", str(path), "--inputs", str(tmp_path / "in.npz"),
                                  "-o", str(tmp_path / "o.npz")])
    assert r.exit_code == 0, r.output
    with np.load(tmp_path / "o.npz") as z:
        assert z["y"].tobytes() == (-np.maximum(X, 0)).tobytes()
    np.savez(tmp_path / "d.npz", x=X, labels=np.argmax(-np.maximum(X, 0), 1))
    r = CliRunner().invoke(main, ["campaign", str(path), "--data", str(tmp_path / "d.npz"),
                                  "--kinds", "activation", "--trials", "3", "--json",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["golden_accuracy"] == 1.0
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = 4
    onnx.save(m, path)
    r = CliRunner().invoke(main, ["run", str(path), "--inputs", str(tmp_path / "in.npz")])
    assert r.exit_code == 2 and "batches of exactly 4: give a multiple of 4" in r.output


def test_a_faulty_run_that_onnxruntime_aborts_is_a_due(tmp_path: Path) -> None:
    """``y = Gather(table, Cast(i))``: a bit-30 flip of the index makes it out of range and
    onnxruntime raises; the trial's inputs count as DUE and the campaign goes on."""
    table = onnx.numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(6, 2), "T")
    g = h.make_graph(
        [h.make_node("Relu", ["i"], ["r"]), h.make_node("Cast", ["r"], ["k"], to=TensorProto.INT64),
         h.make_node("Gather", ["T", "k"], ["g"], axis=0),
         h.make_node("Flatten", ["g"], ["y"], axis=1)], "gather",
        [h.make_tensor_value_info("i", F, ["N", 1])],
        [h.make_tensor_value_info("y", F, ["N", 2])], [table])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path / "g.onnx"
    onnx.save(m, path)
    i = np.array([[1.0], [3.0], [2.0], [5.0]], np.float32)
    np.savez(tmp_path / "d.npz", i=i, labels=np.array([1, 1, 1, 1]))
    plan = tmp_path / "plan.json"
    r = CliRunner().invoke(main, ["plan", str(path), "--data", str(tmp_path / "d.npz"),
                                  "--kinds", "activation", "--trials", "2", "--bits", "30",
                                  "-o", str(plan)])
    assert r.exit_code == 0, r.output
    doc = json.loads(plan.read_text())
    for t in doc["trials"]:  # every trial: the index tensor of sample 0, bit 30
        t["faults"] = [{"site": "r", "index": [0, 0], "model": "bitflip", "bits": [30]}]
    plan.write_text(json.dumps(doc))
    r = CliRunner().invoke(main, ["campaign", str(path), "--data", str(tmp_path / "d.npz"),
                                  "--plan", str(plan), "--json", "--no-progress"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [t["due"] for t in res["trials"]] == [4, 4]
    assert res["mean_accuracy"] == 0.0 and res["golden_accuracy"] == 1.0


def _gelu_model() -> onnx.ModelProto:
    """``y = Relu(com.microsoft.Gelu(x @ W))``: ONNX shape inference knows nothing after the
    contrib op, so ``g`` has no inferred type or shape."""
    w = onnx.numpy_helper.from_array(
        np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32), "W")
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["mm"]),
         h.make_node("Gelu", ["mm"], ["g"], domain="com.microsoft"),
         h.make_node("Relu", ["g"], ["y"])], "gelu",
        [h.make_tensor_value_info("x", F, ["N", 4])],
        [h.make_tensor_value_info("y", F, ["N", 6])], [w])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17),
                                       h.make_opsetid("com.microsoft", 1)])
    m.ir_version = 9
    return m


def test_tensors_of_unknown_shape_are_measured_on_the_data(tmp_path: Path) -> None:
    m = _gelu_model()
    path = tmp_path / "gelu.onnx"
    onnx.save(m, path)
    np.savez(tmp_path / "x.npz", x=X)
    r = CliRunner().invoke(main, ["sites", str(path), "--json"])
    listed = {d["name"]: d for d in json.loads(r.stdout)}
    assert listed["g"]["shape"] == "?" and listed["g"]["unresolved"]
    r = CliRunner().invoke(main, ["sites", str(path), "--json", "--data",
                                  str(tmp_path / "x.npz")])
    listed = {d["name"]: d for d in json.loads(r.stdout)}
    assert listed["g"]["shape"] == ["batch", 6] and listed["g"]["dtype"] == "float32"
    # a campaign measures them too, and faults on them are exact
    labels = np.argmax(make_session(m).run(None, {"x": X})[0], 1)
    np.savez(tmp_path / "d.npz", x=X, labels=labels)
    r = CliRunner().invoke(main, ["campaign", str(path), "--data", str(tmp_path / "d.npz"),
                                  "--kinds", "activation", "--sites", "g", "--trials", "3",
                                  "--json", "--no-progress", "--seed", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert all(t["n_faults"] == 1 for t in res["trials"])
    from enpheeph_onnx.sites import with_measured_shapes

    mm = with_measured_shapes(m, {"x": X[:5]})
    e = FaultEngine(mm, [s for s in discover_sites(mm) if s.name == "g"])
    f = [Fault("g", (7, 2), FaultModel.BIT_FLIP, (30,))]
    gelu = make_session(exposed_model(m, "g")).run(["g"], {"x": X})[0]
    gelu.view(np.uint32)[7, 2] ^= np.uint32(1 << 30)
    assert e.run({"x": X}, f, batch_size=4)["y"].tobytes() == np.maximum(gelu, 0).tobytes()


def test_data_without_the_model_input_is_a_user_error_when_measuring(tmp_path: Path) -> None:
    """Review: measuring shapes on data that lacks a model input crashed in onnxruntime."""
    from .helpers import assert_user_error, invoke

    path = tmp_path / "gelu.onnx"
    onnx.save(_gelu_model(), path)
    np.savez(tmp_path / "wrong.npz", input=X)
    assert_user_error(*invoke("sites", path, "--data", tmp_path / "wrong.npz"),
                      "lacks the model input(s) ['x']")
    assert_user_error(*invoke("inject", path, "-o", tmp_path / "o.onnx", "--data",
                              tmp_path / "wrong.npz", "--fault", "g[0,1]:bitflip:30"),
                      "lacks the model input(s) ['x']")
    assert not (tmp_path / "o.onnx").exists()


def exposed_model(m: onnx.ModelProto, name: str) -> onnx.ModelProto:
    from enpheeph_onnx.suffix import exposed

    return exposed(m, [name])


def test_measured_shapes_do_not_change_what_onnxruntime_computes(tmp_path: Path) -> None:
    """Review: declared equal symbolic shapes on an ai.onnx.ml Normalizer's input and output
    made onnxruntime compute other numbers, so the campaign's golden accuracy was 0.56
    where the model scores 1.0; measured shapes are kept out of the graph."""
    rng = np.random.default_rng(0)
    w1 = onnx.numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "W1")
    w2 = onnx.numpy_helper.from_array(rng.normal(size=(3, 5)).astype(np.float32), "W2")
    sc = onnx.numpy_helper.from_array(np.array(3.0, np.float32), "sc")
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "W1"], ["h1"]),
         h.make_node("FusedMatMul", ["h1", "W2"], ["h2"], domain="com.microsoft", transB=1),
         h.make_node("Normalizer", ["h2"], ["n1"], domain="ai.onnx.ml", norm="L2"),
         h.make_node("Mul", ["n1", "sc"], ["y"])], "fn",
        [h.make_tensor_value_info("x", F, ["N", 4])],
        [h.make_tensor_value_info("y", F, ["N", 3])], [w1, w2, sc])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17),
                                       h.make_opsetid("com.microsoft", 1),
                                       h.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    path = tmp_path / "fn.onnx"
    onnx.save(m, path)
    x = rng.normal(size=(25, 4)).astype(np.float32)
    y = make_session(m).run(None, {"x": x})[0]
    np.savez(tmp_path / "d.npz", x=x, labels=y.argmax(1))
    r = CliRunner().invoke(main, ["campaign", str(path), "--data", str(tmp_path / "d.npz"),
                                  "--kinds", "activation", "--trials", "2", "--json",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["golden_accuracy"] == 1.0 and res["golden_deviation"] == 0.0
    # and the measured tensors can be faulted by inject given the data
    out = tmp_path / "f.onnx"
    r = CliRunner().invoke(main, ["inject", str(path), "-o", str(out), "--data",
                                  str(tmp_path / "d.npz"), "--fault", "n1[0,1]:bitflip:31"])
    assert r.exit_code == 0, r.output
    got = make_session(onnx.load(out)).run(None, {"x": x})[0]
    assert got[0, 1] == -y[0, 1] and np.array_equal(got[1:], y[1:])
