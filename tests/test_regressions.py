"""Regressions found in review: reference sessions, NaN values, shape errors, strict JSON,
--plan misuse, resume on other data, Parquet schemas, per-batch faults in `run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx import FaultModel, discover_sites, load_model, parse_fault
from enpheeph_onnx.campaign import CampaignConfig, Dataset, Outcome, run_campaign
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.faultset import CODE_OF, FaultSet
from enpheeph_onnx.sites import SiteKind
from enpheeph_onnx.store import ResultStore

from .conftest import ROOT
from .test_cli import assert_user_error, invoke

INT8 = ROOT / "models" / "digits_cnn_int8.onnx"


def _strict(text: str) -> dict:
    def bad(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=bad)


def test_run_and_reference_use_the_same_session(model_path: Path,
                                                digits: dict[str, np.ndarray]) -> None:
    m = load_model(model_path)
    acts = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    e = FaultEngine(m, acts)
    x = {"input": digits["input"]}
    faults = [parse_fault("/relu1/Relu_output_0[*,1,1,1]:stuck-at-0:31")]
    e.run(x, faults)
    e.reference(x, faults)
    # first sighting: both on the session instrumented everywhere, no per-set session yet
    assert set(e._variants) == {frozenset(), frozenset(s.name for s in acts)}
    e.run(x, faults)
    e.reference(x, faults)
    assert frozenset({"/relu1/Relu_output_0"}) in e._variants


def _stored(db: Path) -> tuple[dict[int, FaultSet], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The faults and the (outcomes, correct) of every stored trial."""
    with ResultStore.open(db) as store:
        faults = dict(store.fault_sets())
        outcomes = {t: (codes, ok) for t, codes, ok in store.outcome_sets()}
    return faults, outcomes


def test_nan_value_faults_store_report_and_export(tmp_path: Path, model_path: Path,
                                                  data_path: Path) -> None:
    db = tmp_path / "nan.sqlite"
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--fault-model",
                            "value", "--value", "nan", "--trials", "3", "--db", db, "--json")
    assert code == 0, err
    s = _strict(out)
    assert [t["n_faults"] for t in s["trials"]] == [1, 1, 1]
    assert all(f.endswith(":value=nan") for t in s["trials"] for f in t["first_faults"])
    assert s["outcomes"]["due"] + s["outcomes"]["masked"] + s["outcomes"]["tolerable_sdc"] \
        + s["outcomes"]["critical_sdc"] == 3 * 360
    faults, outcomes = _stored(db)
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
    assert invoke("export", db, "--table", "faults", "-o", tmp_path / "f.csv")[0] == 0
    pq = pytest.importorskip("pyarrow.parquet")
    assert invoke("export", db, "--format", "parquet", "--table", "faults", "-o",
                  tmp_path / "f.parquet")[0] == 0
    values = pq.read_table(tmp_path / "f.parquet").column("value").to_pylist()
    assert len(values) == 3 and all(np.isnan(v) for v in values)


def test_value_faults_on_int8_sites_saturate(tmp_path: Path, data_path: Path) -> None:
    dtypes = {s.name: s.dtype for s in discover_sites(load_model(INT8))}
    # integers saturate to their range (NaN -> 0); float sites keep the value
    want = {"nan": {"int8": 0.0, "int32": 0.0, "float32": math.nan},
            "inf": {"int8": 127.0, "int32": 2147483647.0, "float32": math.inf},
            "-1e9": {"int8": -128.0, "int32": -1e9, "float32": -1e9}}
    for value, expect in want.items():
        db = tmp_path / f"{value}.sqlite"
        code, _, err = invoke("campaign", INT8, "--data", data_path, "--fault-model", "value",
                              "--value", value, "--trials", "2", "--faults-per-trial", "40",
                              "--sites", "*bias_quantized", "--sites", "*_scale", "--sites",
                              "conv1.weight_quantized", "--db", db)
        assert code == 0, err
        got: dict[str, set[str]] = {}
        for fs in _stored(db)[0].values():
            for name, v in zip(fs.site_names(), fs.value.tolist(), strict=True):
                got.setdefault(dtypes[name], set()).add(repr(v))
        assert got == {dt: {repr(v)} for dt, v in expect.items()}, value
    assert_user_error(*invoke("campaign", INT8, "--data", data_path, "--fault-model", "value",
                              "--value", "uniform:0,inf"), "finite")


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
    cmp = _strict(out)["compare"]["outputs"]["logits"]
    assert cmp["nan_mismatch"] == 10 and cmp["max_abs_diff"] is None  # NaN -> null


def test_campaign_json_is_strict(model_path: Path, data_path: Path,
                                digits: dict[str, np.ndarray]) -> None:
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--faults-per-trial",
                            "1", "--trials", "4", "--json")
    assert code == 0, err
    s = _strict(out)
    # exclusive attribution: a single-fault trial counts for exactly one layer and one bit,
    # and only layers / bits with trials get a row (no empty row with a NaN rate)
    assert s["attribution"] == "exclusive"
    assert sum(r["trials"] for r in s["per_layer"]) == 4
    assert sum(r["trials"] for r in s["per_bit"]) == 4
    assert sum(map(sum, s["bit_layer"]["trials"])) == 4
    assert all(r["trials"] >= 1 and isinstance(r["critical_sdc"]["rate"], float)
               for r in [*s["per_layer"], *s["per_bit"]])
    # without labels the accuracies are None, not NaN: the summary is strict JSON as is
    res = run_campaign(model_path, Dataset({"input": digits["input"]}),
                       CampaignConfig(faults_per_trial=5, trials=2), progress=False,
                       gates=(("accuracy_drop", 0.1),))
    s = _strict(json.dumps(res.to_json(), allow_nan=False))
    assert s["golden_accuracy"] is None and s["mean_accuracy"] is None
    assert s["accuracy_drop"] is None
    assert [r["accuracy"] for r in s["trials"]] == [None, None]
    assert s["per_rate"][0]["accuracy"] is None and s["per_rate"][0]["accuracy_drop"] is None
    assert s["per_rate"][0]["masked"]["n"] == 2 * 360
    assert s["gates"] == [{"metric": "accuracy_drop", "threshold": 0.1, "rate": None,
                           "value": None, "bound": None, "passed": False}]


def test_plan_with_sampling_options_is_refused(tmp_path: Path, model_path: Path,
                                               data_path: Path) -> None:
    plan = tmp_path / "p.json"
    assert invoke("plan", model_path, "--data", data_path, "--trials", "2", "-o", plan)[0] == 0
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--plan", plan,
                              "--fault-rate", "1e-2"), "--fault-rate", "no effect")
    assert_user_error(*invoke("campaign", model_path, "--data", data_path, "--plan", plan,
                              "--seed", "9"), "--seed")


def test_resume_refuses_other_data(tmp_path: Path, model_path: Path,
                                   digits: dict[str, np.ndarray]) -> None:
    a = tmp_path / "a.npz"
    np.savez(a, input=digits["input"], labels=digits["labels"])
    b = tmp_path / "b.npz"
    order = np.random.default_rng(0).permutation(len(digits["labels"]))
    np.savez(b, input=digits["input"][order], labels=digits["labels"][order])
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", a, "--trials", "2", "--db", db)[0] == 0
    assert_user_error(*invoke("campaign", model_path, "--data", b, "--trials", "2", "--db", db,
                              "--resume"), "other data")


def test_parquet_schema_is_fixed_for_an_empty_campaign(tmp_path: Path, model_path: Path,
                                                       data_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    db = tmp_path / "r.sqlite"
    assert invoke("campaign", model_path, "--data", data_path, "--fault-rate", "1e-9",
                  "--trials", "2", "--db", db)[0] == 0
    out = tmp_path / "f.parquet"
    assert invoke("export", db, "--format", "parquet", "--table", "faults", "-o", out)[0] == 0
    t = pq.read_table(out)
    assert t.num_rows == 0
    types = {"int": pa.int64(), "real": pa.float64(), "text": pa.string()}
    faults = [("trial", "int"), ("ordinal", "int"), ("site", "text"), ("kind", "text"),
              ("layer", "text"), ("index", "text"), ("model", "text"), ("bits", "text"),
              ("value", "real")]
    assert [(f.name, f.type) for f in t.schema] == [(n, types[k]) for n, k in faults]
    out = tmp_path / "o.parquet"
    assert invoke("export", db, "--format", "parquet", "--table", "outcomes", "-o", out)[0] == 0
    t = pq.read_table(out)
    assert t.num_rows == 2 * 360  # the trials ran, without faults
    assert t.schema.field("sample").type == pa.int64()
    assert t.schema.field("correct").type == pa.int64()


def test_sample_size_needs_a_finite_population() -> None:
    assert_user_error(*invoke("sample-size", "--population", "inf", "--margin", "0.01"),
                      "finite")


def test_config_accepts_negated_flags(tmp_path: Path, model_path: Path,
                                      data_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("no-progress = true\ntrials = 2\n")
    code, out, err = invoke("campaign", model_path, "--data", data_path, "--config", cfg,
                            "--json")
    assert code == 0, err
    assert len(_strict(out)["trials"]) == 2
