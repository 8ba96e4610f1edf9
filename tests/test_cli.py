"""The command line, through click's CliRunner: results, files and every input error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from enpheeph_onnx import parse_fault
from enpheeph_onnx.cli import main
from enpheeph_onnx.faults import FaultModel
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.store import ResultStore

from .conftest import cuda_available


def invoke(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def assert_user_error(code: int, out: str, err: str, *words: str) -> None:
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in err + out
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- sites ---------------------------------------------------------------------------------

def test_sites_json_lists_weights_activations_inputs(model_path: Path) -> None:
    code, out, _ = invoke("sites", model_path, "--json")
    assert code == 0
    sites = {s["name"]: s for s in json.loads(out)}
    w = sites["conv1.weight"]
    assert (w["kind"], w["dtype"], w["shape"], w["elements"], w["bits"]) == (
        "weight", "float32", [16, 1, 3, 3], 144, 32)
    assert w["zero_fraction"] == 0.0
    assert sites["fc1.weight"]["elements"] == 64 * 128
    a = sites["/relu1/Relu_output_0"]
    assert (a["kind"], a["op_type"], a["shape"], a["elements"]) == (
        "activation", "Relu", ["batch", 16, 8, 8], None)
    assert sites["input"]["kind"] == "input"
    assert sites["logits"]["shape"] == ["batch", 10]
    kinds = [s["kind"] for s in json.loads(out)]
    assert kinds.count("weight") == 8 and kinds.count("activation") == 10


def test_sites_table_and_kind_filter(model_path: Path) -> None:
    code, out, err = invoke("sites", model_path, "--kind", "weight")
    assert code == 0
    assert "conv1.weight" in out and "/relu1/Relu_output_0" not in out
    assert "13706 parameters" in err


# -- inject --------------------------------------------------------------------------------

def test_inject_weight_and_activation(tmp_path: Path, model_path: Path,
                                      digits: dict[str, np.ndarray]) -> None:
    out_model = tmp_path / "faulty.onnx"
    code, out, err = invoke("inject", model_path, "-o", out_model,
                            "--fault", "conv1.weight[0,0,1,1]:bitflip:30",
                            "--fault", "/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30")
    assert code == 0, err
    assert "conv1.weight: 1 element(s) changed" in out
    assert err.strip().startswith("PASSED")
    faulty = onnx.load(out_model)
    onnx.checker.check_model(faulty, full_check=True)
    src = onnx.load(model_path)
    w0 = onnx.numpy_helper.to_array(next(t for t in src.graph.initializer
                                         if t.name == "conv1.weight"))
    w1 = onnx.numpy_helper.to_array(next(t for t in faulty.graph.initializer
                                         if t.name == "conv1.weight"))
    diff = np.argwhere(w0.view(np.uint32) != w1.view(np.uint32))
    assert diff.tolist() == [[0, 0, 1, 1]]
    assert w1.view(np.uint32)[0, 0, 1, 1] == w0.view(np.uint32)[0, 0, 1, 1] ^ (1 << 30)
    meta = {p.key: p.value for p in faulty.metadata_props}
    assert json.loads(meta["enpheeph.faults"])["faults"][1]["index"] == ["*", 3, 2, 2]
    assert len(meta["enpheeph.source_sha256"]) == 64
    x = digits["input"]
    golden = make_session(src).run(None, {"input": x})[0]
    bad = make_session(faulty).run(None, {"input": x})[0]
    assert not np.array_equal(golden, bad)


def test_inject_plan_file_and_empty_plan(tmp_path: Path, model_path: Path,
                                         digits: dict[str, np.ndarray]) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": []}))
    out_model = tmp_path / "same.onnx"
    code, _, err = invoke("inject", model_path, "-o", out_model, "--plan", plan)
    assert code == 0, err
    x = {"input": digits["input"]}
    a = make_session(onnx.load(model_path)).run(None, x)[0]
    b = make_session(onnx.load(out_model)).run(None, x)[0]
    assert a.tobytes() == b.tobytes()
    plan.write_text(json.dumps({"faults": [
        {"site": "fc2.bias", "index": [3], "model": "value", "bits": [], "value": 50.0}]}))
    code, _, err = invoke("inject", model_path, "-o", out_model, "--plan", plan, "--json")
    assert code == 0, err
    b = make_session(onnx.load(out_model)).run(None, x)[0]
    assert (np.argmax(b, 1) == 3).all()


@pytest.mark.parametrize(("fault", "words"), [
    ("nosuch.weight[0]:bitflip:1", ["unknown fault site", "nosuch.weight"]),
    ("conv1.weight[0,0,1]:bitflip:30", ["3 coordinates", "rank 4"]),
    ("conv1.weight[16,0,1,1]:bitflip:30", ["out of range", "size 16"]),
    ("conv1.weight[0,0,1,1]:bitflip:32", ["bit 32", "0-31"]),
    ("conv1.weight[0,0,1,1]:bitflip", ["names no bits"]),
    ("conv1.weight[0,0,1,1]bitflip:3", ["malformed fault"]),
    ("conv1.weight[0,0,1,1]:flap:3", ["unknown fault model", "flap"]),
    ("conv1.weight[0,x,1,1]:bitflip:3", ["malformed index"]),
    ("conv1.weight[0,0,1,1]:bitflip:7-3", ["reversed"]),
    ("/relu1/Relu_output_0[0,16,0,0]:bitflip:1", ["out of range", "dimension 1"]),
])
def test_inject_bad_fault(tmp_path: Path, model_path: Path, fault: str,
                          words: list[str]) -> None:
    out_model = tmp_path / "faulty.onnx"
    assert_user_error(*invoke("inject", model_path, "-o", out_model, "--fault", fault), *words)
    assert list(tmp_path.iterdir()) == []


def _int64_model(path: Path) -> None:
    g = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Identity", ["x"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("s", onnx.TensorProto.INT64, [2]),
         helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 26)], ir_version=10),
              path)


@pytest.mark.parametrize(("plan", "words"), [
    ("{not json", ["not valid JSON"]),
    ('{"faults": [{"site": "fc2.bias", "index": [3], "model": "bitflip", "bits": [1],'
     ' "oops": 1}]}', ["unknown fault key", "oops"]),
    ('{"faults": [{"index": [3], "model": "bitflip", "bits": [1]}]}', ["lacks the key 'site'"]),
    ('{"faults": [{"site": "fc2.bias", "index": [3.5], "model": "bitflip", "bits": [1]}]}',
     ["index must be"]),
    ('[1, 2]', ["a fault plan is an object"]),
])
def test_inject_bad_plan(tmp_path: Path, model_path: Path, plan: str, words: list[str]) -> None:
    p = tmp_path / "plan.json"
    p.write_text(plan)
    out_model = tmp_path / "faulty.onnx"
    assert_user_error(*invoke("inject", model_path, "-o", out_model, "--plan", p), *words)
    assert not out_model.exists()


def test_inject_bad_models(tmp_path: Path, model_path: Path) -> None:
    out_model = tmp_path / "o.onnx"
    assert_user_error(*invoke("inject", tmp_path / "missing.onnx", "-o", out_model, "--fault",
                              "a[0]:bitflip:1"), "model file not found")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model_path.read_bytes()[:5000])
    assert_user_error(*invoke("inject", truncated, "-o", out_model, "--fault",
                              "conv1.weight[0,0,0,0]:bitflip:1"), "truncated.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("hello, I am not a model\n")
    assert_user_error(*invoke("inject", text, "-o", out_model, "--fault",
                              "conv1.weight[0,0,0,0]:bitflip:1"), "notes.onnx")
    int64 = tmp_path / "int64.onnx"
    _int64_model(int64)
    assert_user_error(*invoke("inject", int64, "-o", out_model, "--fault", "s[0]:bitflip:1"),
                      "unsupported dtype", "INT64")
    assert_user_error(*invoke("inject", model_path, "-o", out_model), "no faults given")
    assert_user_error(*invoke("inject", model_path, "-o", tmp_path / "nodir" / "x.onnx",
                              "--fault", "conv1.weight[0,0,0,0]:bitflip:1"), "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "int64.onnx", "notes.onnx", "truncated.onnx"]


# -- run -----------------------------------------------------------------------------------

def test_run_writes_outputs_and_compares(tmp_path: Path, model_path: Path, data_path: Path,
                                         digits: dict[str, np.ndarray]) -> None:
    out = tmp_path / "out.npz"
    code, _, err = invoke("run", model_path, "--inputs", data_path, "-o", out)
    assert code == 0, err
    with np.load(out) as z:
        logits = z["logits"]
    assert logits.shape == (360, 10)
    acc = float(np.mean(np.argmax(logits, 1) == digits["labels"]))
    assert acc >= 0.95
    code, stdout, err = invoke("run", model_path, "--inputs", data_path, "--compare",
                               model_path, "--json")
    assert code == 0, err
    cmp = json.loads(stdout)["compare"]["outputs"]["logits"]
    assert cmp == {"max_abs_diff": 0.0, "nan_mismatch": 0, "bit_identical": True,
                   "top1_agreement": 1.0}
    faulty = tmp_path / "f.onnx"
    assert invoke("inject", model_path, "-o", faulty, "--fault", "fc2.bias[7]:value=1000")[0] == 0
    code, stdout, _ = invoke("run", faulty, "--inputs", data_path, "--compare", model_path)
    assert code == 0
    row = next(ln for ln in stdout.splitlines() if ln.startswith("logits"))
    expected = float(np.mean(np.argmax(logits, 1) == 7))
    assert f"{expected:.4f}" in row and "no" in row.split()


def test_run_bad_inputs(tmp_path: Path, model_path: Path, digits: dict[str, np.ndarray]) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, image=digits["input"])
    out = tmp_path / "out.npz"
    assert_user_error(*invoke("run", model_path, "--inputs", wrong, "-o", out),
                      "lacks the model input 'input'")
    f64 = tmp_path / "f64.npz"
    np.savez(f64, input=digits["input"].astype(np.float64))
    assert_user_error(*invoke("run", model_path, "--inputs", f64, "-o", out), "float64")
    assert_user_error(*invoke("run", model_path, "--inputs", tmp_path / "none.npz"),
                      "not found")
    assert not out.exists()


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU path")
def test_run_cuda_without_gpu_is_refused(model_path: Path, data_path: Path) -> None:
    assert_user_error(*invoke("run", model_path, "--inputs", data_path, "--provider", "cuda"),
                      "CUDA")


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_run_cuda_really_runs_on_cuda(model_path: Path, data_path: Path) -> None:
    code, out, err = invoke("run", model_path, "--inputs", data_path, "--provider", "cuda",
                            "--json")
    assert code == 0, err
    assert json.loads(out)["providers"][0] == "CUDAExecutionProvider"


# -- campaign ------------------------------------------------------------------------------

def _campaign(tmp_path: Path, model_path: Path, data_path: Path, *extra: str
              ) -> tuple[int, dict, str]:
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--json", *extra)
    return code, (json.loads(out) if code == 0 else {}), err


def test_campaign_bit30_costs_accuracy_bit0_does_not(tmp_path: Path, model_path: Path,
                                                     data_path: Path) -> None:
    db = tmp_path / "b30.sqlite"
    code, hi, err = _campaign(tmp_path, model_path, data_path, "--target", "weights",
                              "--bits", "30", "--faults-per-trial", "1", "--trials", "20",
                              "--seed", "3", "--db", db)
    assert code == 0, err
    assert hi["golden_accuracy"] == pytest.approx(359 / 360)
    assert hi["accuracy_drop"] == pytest.approx(hi["golden_accuracy"] - hi["mean_accuracy"])
    assert hi["accuracy_drop"] > 0.2
    assert len(hi["trials"]) == 20
    assert all(t["n_faults"] == 1 and len(t["first_faults"]) == 1
               and t["first_faults"][0].endswith(":bitflip:30") for t in hi["trials"])
    code, lo, err = _campaign(tmp_path, model_path, data_path, "--bits", "0",
                              "--trials", "20", "--seed", "3")
    assert code == 0, err
    assert lo["accuracy_drop"] == pytest.approx(0.0, abs=1e-9)
    assert lo["outcomes"]["critical_sdc"] == 0
    with ResultStore.open(db) as store:
        table = store.trial_table()
        ranks = {s.name: s.rank for s in store.sites()}
        stored = list(store.fault_sets())
    assert table.trial.tolist() == list(range(20))
    assert [t for t, _ in stored] == list(range(20))
    faults = [fs.to_faults(ranks) for _, fs in stored]
    assert all(len(f) == 1 and f[0].bits == (30,) and f[0].model is FaultModel.BIT_FLIP
               for f in faults)
    assert [[str(f[0])] for f in faults] == [t["first_faults"] for t in hi["trials"]]
    assert {f[0].site for f in faults} <= {"conv1.weight", "conv1.bias", "conv2.weight",
                                           "conv2.bias", "fc1.weight", "fc1.bias",
                                           "fc2.weight", "fc2.bias"}
    assert table.accuracy.tolist() == [t["accuracy"] for t in hi["trials"]]


def test_campaign_same_seed_same_trials(tmp_path: Path, model_path: Path,
                                        data_path: Path) -> None:
    args = ("--target", "activations", "--bits", "20-31", "--faults-per-trial", "3",
            "--trials", "6", "--seed", "11", "--fault-model", "stuck-at-1")
    db = tmp_path / "a.sqlite"
    a = _campaign(tmp_path, model_path, data_path, *args, "--db", db)[1]
    b = _campaign(tmp_path, model_path, data_path, *args)[1]
    c = _campaign(tmp_path, model_path, data_path, *args[:-3], "12", *args[-2:])[1]
    strip = [{k: v for k, v in t.items() if k != "seconds"} for t in a["trials"]]
    assert strip == [{k: v for k, v in t.items() if k != "seconds"} for t in b["trials"]]
    assert a["per_rate"] == b["per_rate"] and a["outcomes"] == b["outcomes"]
    assert [t["first_faults"] for t in a["trials"]] != [t["first_faults"] for t in c["trials"]]
    assert len(a["trials"]) == 6
    with ResultStore.open(db) as store:
        ranks = {s.name: s.rank for s in store.sites()}
        stored = [fs.to_faults(ranks) for _, fs in store.fault_sets()]
    assert len(stored) == 6
    for t, faults in zip(a["trials"], stored, strict=True):
        assert t["n_faults"] == len(faults) == 3
        assert t["first_faults"] == [str(f) for f in faults[:2]]
        assert [parse_fault(x) for x in t["first_faults"]] == list(faults[:2])
        for f in faults:
            assert f.index[0] is None and f.model is FaultModel.STUCK_AT_1
            assert len(f.bits) == 1 and 20 <= f.bits[0] <= 31


def test_campaign_bad_input(tmp_path: Path, model_path: Path, data_path: Path,
                            digits: dict[str, np.ndarray]) -> None:
    db = tmp_path / "r.sqlite"
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, input=digits["input"])
    assert_user_error(*invoke("campaign", model_path, "--data", nolabels, "--db", db),
                      "labels")
    noinput = tmp_path / "noinput.npz"
    np.savez(noinput, labels=digits["labels"])
    assert_user_error(*invoke("campaign", model_path, "--data", noinput, "--db", db),
                      "lacks the model input")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--bits", "40-50",
                              "--db", db), "no weight site", "40-50")
    assert not db.exists()
    db.write_text("keep me")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--db", db),
                      "already exists")
    assert db.read_text() == "keep me"
