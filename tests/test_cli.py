"""enpheeph_onnx.cli: the command line, through click's CliRunner as a user runs it: the
sites, inject, run, campaign and sample-size commands, their results and files, TOML
configs, gates, and every input error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from enpheeph_onnx import inject, parse_fault
from enpheeph_onnx.campaign import Outcome
from enpheeph_onnx.cli import main
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import FaultModel
from enpheeph_onnx.faultset import CODE_OF, FaultSet
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.stats import sample_size
from enpheeph_onnx.store import ResultStore

from .conftest import DATA, MODEL, MODELS, SNN_DATA, SNN_MODEL, cuda_available
from .helpers import VARIANTS, assert_user_error, invoke, stored_trials, strict_json

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


def test_inject_cli_takes_a_binary_plan(tmp_path: Path) -> None:
    fs = FaultSet.from_faults([parse_fault("conv1.weight[0,0,1,1]:bitflip:30")])
    fs.save_npz(tmp_path / "p.npz")
    out = tmp_path / "f.onnx"
    r = subprocess.run([sys.executable, "-m", "enpheeph_onnx", "inject", str(MODEL), "-o",
                        str(out), "--plan", str(tmp_path / "p.npz"),
                        "--fault", "fc2.bias[3]:value=0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = inject(MODEL, [parse_fault("conv1.weight[0,0,1,1]:bitflip:30"),
                         parse_fault("fc2.bias[3]:value=0")]).model
    got = onnx.load(out)
    assert ({t.name: t.raw_data for t in got.graph.initializer}
            == {t.name: t.raw_data for t in ref.graph.initializer})


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


def test_wrong_input_shape_is_a_user_error(tmp_path: Path, model_path: Path,
                                           digits: dict[str, np.ndarray]) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((5, 1, 8, 9), np.float32), labels=np.zeros(5, np.int64))
    assert_user_error(*invoke("run", model_path, "--inputs", bad), "shape", "8, 9")
    db = tmp_path / "r.sqlite"
    assert_user_error(*invoke("campaign", model_path, "--data", bad, "--db", db), "shape")
    empty = tmp_path / "empty.npz"
    np.savez(empty, input=np.zeros((0, 1, 8, 8), np.float32))
    assert_user_error(*invoke("run", model_path, "--inputs", empty), "no samples")
    scalar = tmp_path / "scalar.npz"
    np.savez(scalar, input=np.float32(1.0), labels=np.int64(1))
    assert_user_error(*invoke("campaign", model_path, "--data", scalar, "--db", db), "scalar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "empty.npz", "scalar.npz"]


def test_run_refuses_per_batch_faults_with_small_batches(tmp_path: Path, model_path: Path,
                                                         data_path: Path) -> None:
    faulty = tmp_path / "f.onnx"
    assert invoke("inject", model_path, "-o", faulty, "--fault", "input[2,0,3,3]:value=nan")[0] == 0
    assert_user_error(*invoke("run", faulty, "--inputs", data_path, "--batch-size", "7"),
                      "--batch-size 360")
    code, out, err = invoke("run", faulty, "--inputs", data_path, "--compare", model_path,
                            "--json")
    assert code == 0, err
    cmp = strict_json(out)["compare"]["outputs"]["logits"]
    assert cmp["nan_mismatch"] == 10 and cmp["max_abs_diff"] is None  # NaN -> null


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU path")
def test_run_cuda_without_gpu_is_refused(model_path: Path, data_path: Path) -> None:
    assert_user_error(*invoke("run", model_path, "--inputs", data_path, "--provider", "cuda"),
                      "cuda requested", "--provider cpu")


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU path")
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_allow_cpu_fallback_runs_on_the_cpu_with_a_warning(
        model_path: Path, data_path: Path, provider: str,
        caplog: pytest.LogCaptureFixture) -> None:
    code, out, err = invoke("run", model_path, "--inputs", data_path, "--provider", provider,
                            "--allow-cpu-fallback", "--json")
    assert code == 0, err
    assert json.loads(out)["providers"] == ["CPUExecutionProvider"]
    assert f"--provider {provider} runs on the CPU" in caplog.text
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--provider",
                            provider, "--allow-cpu-fallback", "--trials", "2", "--json",
                            "--no-progress")
    assert code == 0, err
    res = json.loads(out)
    assert res["providers"] == ["CPUExecutionProvider"]
    assert res["config"]["allow_cpu_fallback"] is True


def test_tensorrt_without_a_gpu_is_refused(model_path: Path, data_path: Path,
                                              tmp_path: Path) -> None:
    if cuda_available():
        pytest.skip("a GPU is here: TensorRT may run")
    assert_user_error(*invoke("run", model_path, "--inputs", data_path, "--provider",
                              "tensorrt"), "tensorrt requested", "--provider cpu")
    db = tmp_path / "t.sqlite"
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--provider",
                              "tensorrt", "--trials", "2", "--db", db), "tensorrt requested")
    assert not db.exists()


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


@pytest.mark.parametrize(("model", "data"), VARIANTS)
def test_campaign_cli_runs_on_every_variant(tmp_path: Path, model: str, data: str) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = invoke("campaign", MODELS / model, "--data", MODELS / data,
                            "--fault-rate", "1e-4,1e-2", "--trials", "3", "--bits", "0-31",
                            "--db", db, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["golden_accuracy"] >= (0.85 if "snn" in model else 0.96)
    assert len(s["trials"]) == 6 and [r["rate"] for r in s["per_rate"]] == [1e-4, 1e-2]
    assert s["per_rate"][1]["mean_faults"] > s["per_rate"][0]["mean_faults"]
    code, _, err = invoke("report", db, "-o", tmp_path / "report")
    assert code == 0, err


def test_nan_value_faults_store_report_and_export(tmp_path: Path, model_path: Path,
                                                  data_path: Path) -> None:
    db = tmp_path / "nan.sqlite"
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--fault-model",
                            "value", "--value", "nan", "--trials", "3", "--db", db, "--json")
    assert code == 0, err
    s = strict_json(out)
    assert [t["n_faults"] for t in s["trials"]] == [1, 1, 1]
    assert all(f.endswith(":value=nan") for t in s["trials"] for f in t["first_faults"])
    assert s["outcomes"]["due"] + s["outcomes"]["masked"] + s["outcomes"]["tolerable_sdc"] \
        + s["outcomes"]["critical_sdc"] == 3 * 360
    faults, outcomes = stored_trials(db)
    assert sorted(faults) == sorted(outcomes) == [0, 1, 2]
    for fs in faults.values():
        assert len(fs) == 1 and (fs.model == CODE_OF[FaultModel.VALUE]).all()
        assert np.isnan(fs.value).all() and not fs.bits.any()
    for t, (codes, ok) in outcomes.items():
        row = s["trials"][t]
        assert ok is not None and len(codes) == 360
        assert not (ok & (codes == Outcome.DUE)).any()  # a DUE is never a correct answer
        assert row["due"] == int((codes == Outcome.DUE).sum())
        assert row["accuracy"] == float(ok.mean()) <= 1 - row["due"] / 360
    assert s["outcomes"]["due"] > 0
    assert invoke("report", db, "-o", tmp_path / "r")[0] == 0
    assert invoke("export-results", db, "--table", "faults", "-o", tmp_path / "f.csv")[0] == 0
    pq = pytest.importorskip("pyarrow.parquet")
    assert invoke("export-results", db, "--format", "parquet", "--table", "faults", "-o",
                  tmp_path / "f.parquet")[0] == 0
    values = pq.read_table(tmp_path / "f.parquet").column("value").to_pylist()
    assert len(values) == 3 and all(np.isnan(v) for v in values)


def test_time_steps_cli(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    code, out, err = invoke("campaign", SNN_MODEL, "--data", SNN_DATA, "--kinds", "activation",
                            "--time-steps", "2", "--faults-per-trial", "2", "--trials", "3",
                            "--bits", "30", "--db", db, "--json")
    assert code == 0, err
    s = json.loads(out)
    assert [t["n_faults"] for t in s["trials"]] == [2, 2, 2]
    texts = [f for t in s["trials"] for f in t["first_faults"]]
    assert len(texts) == 6 and all(parse_fault(f).site.endswith(".t2") for f in texts)
    with ResultStore.open(db) as store:
        sets = dict(store.fault_sets())
    assert sorted(sets) == [0, 1, 2]
    names = [n for fs in sets.values() for n in fs.site_names()]
    assert len(names) == 6 and all(n.endswith(".t2") for n in names)
    assert all((fs.single_bits() == 30).all() for fs in sets.values())
    assert_user_error(*invoke("campaign", SNN_MODEL, "--data", SNN_DATA, "--kinds", "activation",
                              "--time-steps", "99"), "time step 99 does not exist")
    assert_user_error(*invoke("campaign", MODELS / "digits_cnn.onnx", "--data",
                              MODELS / "digits_test.npz", "--kinds", "activation",
                              "--time-steps", "2"), "no time-step annotations")


def test_margin_sets_the_trial_count(model_path: Path, data_path: Path) -> None:
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--bits", "30",
                            "--sites", "fc2.bias", "--margin", "0.2", "--confidence", "0.9",
                            "--json")
    assert code == 0, err
    # N = 10 elements x 1 bit; n = 10 / (1 + 0.04 * 9 / (1.6449^2 * 0.25)) = 6.53 -> 7
    assert len(json.loads(out)["trials"]) == sample_size(10, 0.2, 0.9) == 7


def test_gate_fails_with_exit_1_and_passes_otherwise(model_path: Path, data_path: Path) -> None:
    base = ["campaign", model_path, "--data", data_path, "--bits", "30", "--trials", "10"]
    code, _, err = invoke(*base, "--fail-above", "critical_sdc_rate=0.01")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("FAILED campaign:")
    assert "critical_sdc_rate" in err
    code, out, err = invoke(*base, "--fail-above", "critical_sdc_rate=0.99",
                            "--fail-above", "accuracy_drop=0.99", "--json")
    assert code == 0, err
    assert err.strip().splitlines()[-1].startswith("PASSED campaign:")
    gates = json.loads(out)["gates"]
    assert [g["metric"] for g in gates] == ["critical_sdc_rate", "accuracy_drop"]
    assert all(g["passed"] for g in gates)
    assert_user_error(*invoke(*base, "--fail-above", "speed=3"), "METRIC=THRESHOLD")


def test_toml_config_with_flag_override(tmp_path: Path, model_path: Path,
                                        data_path: Path) -> None:
    cfg = tmp_path / "campaign.toml"
    cfg.write_text('fault-rate = [1e-3, 1e-2]\ntrials = 3\nseed = 5\nbits = "28-31"\n'
                   'kinds = "weight"\n')
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--config", cfg,
                            "--trials", "2", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["config"]["rates"] == [1e-3, 1e-2] and s["config"]["trials"] == 2
    assert s["config"]["seed"] == 5 and s["config"]["bits"] == "28-31"
    assert len(s["trials"]) == 4
    cfg.write_text("trials = 3\nspeed = 11\n")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--config", cfg),
                      "unknown key 'speed'")


def test_config_accepts_negated_flags(tmp_path: Path, model_path: Path,
                                      data_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("no-progress = true\ntrials = 2\n")
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--config", cfg,
                            "--json")
    assert code == 0, err
    assert len(strict_json(out)["trials"]) == 2


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


@pytest.mark.parametrize(("args", "words"), [
    (["--fault-rate", "-1e-3"], ["out of range"]),
    (["--fault-rate", "2"], ["out of range"]),
    (["--bit-error-rate", "1e-1:1e-7:2"], ["yields no rate"]),
    (["--sites", "nothing*"], ["site selection is empty"]),
    (["--kinds", "weight,activation", "--per-sample"], ["per-sample"]),
    (["--fault-rate", "1e-3", "--faults-per-trial", "2"], ["not both"]),
    (["--fault-model", "value"], ["needs --value"]),
    (["--resume"], ["--resume needs -o/--output"]),
])
def test_campaign_bad_sampling_input(tmp_path: Path, model_path: Path, data_path: Path,
                                     args: list[str], words: list[str]) -> None:
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, *args), *words)
    assert list(tmp_path.iterdir()) == []


def test_plan_with_sampling_options_is_refused(tmp_path: Path, model_path: Path,
                                               data_path: Path) -> None:
    plan = tmp_path / "p.json"
    assert invoke("plan", model_path, "--data", data_path, "--trials", "2", "-o", plan)[0] == 0
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--plan", plan,
                              "--fault-rate", "1e-2"), "--fault-rate", "no effect")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--plan", plan,
                              "--seed", "9"), "--seed")


# -- sample-size ---------------------------------------------------------------------------

def test_sample_size_command() -> None:
    code, out, _ = invoke("sample-size", "--population", "1e9", "--margin", "0.01",
                          "--confidence", "0.99")
    assert code == 0 and int(out) == 16587 == sample_size(1e9, 0.01, 0.99)
    code, out, _ = invoke("sample-size", "--population", "1000", "--margin", "0.05", "--json")
    assert json.loads(out)["trials"] == 278
    assert_user_error(*invoke("sample-size", "--population", "1e6", "--margin", "2"), "margin")


def test_sample_size_needs_a_finite_population() -> None:
    assert_user_error(*invoke("sample-size", "--population", "inf", "--margin", "0.01"),
                      "finite")


# -- the program ---------------------------------------------------------------------------

def test_cli_runner_has_no_global_state() -> None:
    # the same invocation twice gives byte-identical JSON apart from timings
    r = CliRunner()
    assert r.invoke(main, ["--version"]).output.startswith("enpheeph-onnx")


# -- review findings: inputs are never destroyed, damaged files are one-line errors ------------

def test_an_output_that_is_an_input_is_refused(tmp_path: Path) -> None:
    import shutil

    model, data = tmp_path / "m.onnx", tmp_path / "d.npz"
    shutil.copy(MODEL, model)
    shutil.copy(DATA, data)
    before = (model.read_bytes(), data.read_bytes())
    db = tmp_path / "r.sqlite"
    code, _, err = invoke("campaign", model, "--data", data, "--trials", "2", "--db", db,
                          "--no-progress")
    assert code == 0, err
    db_bytes = db.read_bytes()
    for args in (["inject", model, "-o", model, "--fault", "conv1.weight[0,0,1,1]:bitflip:30"],
                 ["inject", model, "-o", str(tmp_path / "." / "m.onnx"), "--fault",
                  "conv1.weight[0,0,1,1]:bitflip:30"],
                 ["run", model, "--inputs", data, "-o", data],
                 ["plan", model, "--data", data, "-o", model],
                 ["export-results", db, "-o", db],
                 ["campaign", model, "--data", data, "--db", data]):
        assert_user_error(*invoke(*args), "is also an input")
    assert (model.read_bytes(), data.read_bytes()) == before and db.read_bytes() == db_bytes


def test_damaged_plans_are_one_line_errors(tmp_path: Path) -> None:
    from enpheeph_onnx.faultset import FaultSet

    fs = FaultSet.from_faults([parse_fault("conv1.weight[0,0,1,1]:bitflip:30")] * 200)
    fs.save_npz(tmp_path / "p.npz")
    raw = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    import zipfile

    with zipfile.ZipFile(tmp_path / "p.npz") as z:  # a byte inside the compressed index
        info = z.getinfo("index.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    flipped = bytearray(raw)
    flipped[start + info.compress_size // 2] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    out = tmp_path / "f.onnx"
    for bad in ("trunc.npz", "flip.npz"):
        assert_user_error(*invoke("inject", MODEL, "-o", out, "--plan", tmp_path / bad))
        assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--plan", tmp_path / bad))
    assert_user_error(*invoke("inject", MODEL, "-o", out, "--plan", MODEL), "neither a JSON")
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--plan", tmp_path / "p.npz"),
                      "fault set", "inject --plan")
    code, _, err = invoke("plan", MODEL, "--data", DATA, "--trials", "2", "-o",
                          tmp_path / "c.npz")
    assert code == 0, err
    assert_user_error(*invoke("inject", MODEL, "-o", out, "--plan", tmp_path / "c.npz"),
                      "campaign plan", "campaign --plan")
    assert not out.exists()


def test_store_faults_none_is_kept_and_refused_where_faults_are_needed(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    args = ["campaign", MODEL, "--data", DATA, "--trials", "3", "--db", db, "--no-progress"]
    code, _, err = invoke(*args, "--store-faults", "none")
    assert code == 0, err
    assert_user_error(*invoke("export-results", db, "--table", "faults", "-o", tmp_path / "f.csv"),
                      "stored no faults", "plan")
    assert not (tmp_path / "f.csv").exists()
    assert_user_error(*invoke(*args, "--resume", "--trials", "6"), "--store-faults")
    code, _, err = invoke("export-results", db, "--table", "trials", "-o", tmp_path / "t.csv")
    assert code == 0 and len((tmp_path / "t.csv").read_text().splitlines()) == 4


def test_gates_are_checked_before_the_campaign_runs(tmp_path: Path) -> None:
    from enpheeph_onnx.campaign import CampaignConfig, load_dataset, run_campaign

    for spec in ("critical_sdc_rate=1.5", "critical_sdc_rate=-1", "critical_sdc_rate=nan",
                 "accuracy_drop=2"):
        assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--trials", "2",
                                  "--fail-above", spec, "--db", tmp_path / "g.sqlite"),
                          "threshold")
    assert not (tmp_path / "g.sqlite").exists()
    data = load_dataset(DATA, ["input"])
    with pytest.raises(EnpheephError, match="unknown gate metric 'bogus'"):
        run_campaign(MODEL, data, CampaignConfig(trials=1), gates=(("bogus", 0.1),))
    # two identical trials demonstrate nothing: the accuracy-drop gate fails
    code, _, err = invoke("campaign", MODEL, "--data", DATA, "--fault-rate", "1e-7",
                          "--trials", "2", "--fail-above", "accuracy_drop=0.001")
    assert code == 1 and "upper bound" in err


def test_suffix_switch_gives_the_same_campaign(tmp_path: Path) -> None:
    args = ["campaign", MODEL, "--data", DATA, "--faults-per-trial", "2", "--bits", "30",
            "--trials", "12", "--seed", "3", "--json", "--kinds", "weight,activation"]
    code, on, err = invoke(*args)
    assert code == 0, err
    code, off, err = invoke(*args, "--no-suffix")
    assert code == 0, err
    a, b = strict_json(on), strict_json(off)
    # which cuts pay off is measured (timing-dependent); the results never depend on it
    assert a["suffix"]["enabled"] and set(a["suffix"]) == {
        "enabled", "cuts", "boundaries", "sessions", "session_bytes", "runtime_graph_sites",
        "cache_bytes"}
    assert b["suffix"] == {"enabled": False, "cuts": [], "boundaries": 0, "sessions": 0,
                           "session_bytes": 0, "runtime_graph_sites": 0, "cache_bytes": 0}
    assert a["golden_deviation"] == b["golden_deviation"] == 0.0
    assert a["trials"] == [dict(t, seconds=u["seconds"]) for t, u in
                           zip(b["trials"], a["trials"], strict=True)]
    assert a["per_rate"] == b["per_rate"]
    assert_user_error(*invoke(*args, "--cache-mb", "-1"), "--cache-mb")
