"""User outcome metrics (issue 11): ``--metric pkg.module:function`` decides which inputs
are critical SDCs and may score every input; the scores are stored per input, replace
accuracy in the summary (with a t interval over trials) and feed the gates."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh
from scipy import stats

from enpheeph_onnx import inject
from enpheeph_onnx.campaign import CampaignConfig, Dataset, load_summary, run_campaign
from enpheeph_onnx.campaign.backends import Backend, BackendKind
from enpheeph_onnx.campaign.outcomes import OutcomePolicy, PolicyKind, judge
from enpheeph_onnx.export_results import export_table
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.store import ResultStore

from . import user_metrics
from .conftest import DATA, MODEL
from .helpers import assert_user_error, invoke

ROOT = Path(__file__).resolve().parents[1]
CLOSENESS = "tests.user_metrics:closeness"


def _regressor(path: Path) -> None:
    """y [N, 2] = relu(x W1 + b1) W2 for x [N, 4]: a small regressor with no classes."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w1"),
             nh.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             nh.from_array(rng.standard_normal((8, 2)).astype(np.float32), "w2")]
    g = h.make_graph([h.make_node("MatMul", ["x", "w1"], ["m"]),
                      h.make_node("Add", ["m", "b1"], ["a"]),
                      h.make_node("Relu", ["a"], ["r"]),
                      h.make_node("MatMul", ["r", "w2"], ["y"])], "regressor",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, path)


@pytest.fixture()
def regressor(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    model, data = tmp_path / "reg.onnx", tmp_path / "x.npz"
    _regressor(model)
    x = np.random.default_rng(2).standard_normal((20, 4)).astype(np.float32)
    np.savez(data, x=x)
    return model, data, x


def _config(**kw: object) -> CampaignConfig:
    kw.setdefault("outcome", OutcomePolicy(PolicyKind.METRIC, metric=CLOSENESS))
    return CampaignConfig(bits=tuple(range(18, 31)), trials=12, seed=3, batch_size=8,
                          **kw)  # type: ignore[arg-type]


def test_metric_scores_are_stored_and_summarised(tmp_path: Path,
                                                 regressor: tuple[Path, Path, np.ndarray]
                                                 ) -> None:
    model, _, x = regressor
    db = tmp_path / "r.sqlite"
    user_metrics.CALLS.clear()
    res = run_campaign(model, Dataset({"x": x}), _config(), db, progress=False)
    assert 8 in user_metrics.CALLS and 4 in user_metrics.CALLS  # per batch: 8 + 8 + 4
    s = res.summary
    assert s.score == "closeness" and s.score_bounded is False
    assert res.golden_accuracy == 1.0  # 1 / (1 + 0) for every input of the golden run
    golden = {"y": make_session(onnx.load(model)).run(None, {"x": x})[0]}
    policy = _config().outcome
    with ResultStore.open(db) as store:
        faults = dict(store.fault_sets())
        scores = store.score_sets()
        outcomes = {t: c for t, c, _ in store.outcome_sets()}
        table = store.trial_table()
    assert sorted(scores) == sorted(faults) == list(range(12))
    for i, trial in enumerate(table.trial.tolist()):
        faulty = {"y": make_session(inject(model, faults[trial]).model).run(None, {"x": x})[0]}
        _, want = user_metrics.closeness(golden, faulty, None)
        want = np.where(np.isfinite(want), want, 0.0)  # a DUE input scores 0
        np.testing.assert_array_equal(scores[trial], want)
        assert outcomes[trial].tolist() == judge(golden, faulty, "y", policy).codes.tolist()
        assert table.accuracy[i] == pytest.approx(float(np.mean(want)), abs=1e-12)
    assert len({round(float(v), 6) for v in table.accuracy}) > 2  # the faults matter
    # the per-level interval is Student's t over the trials' mean scores
    v = table.accuracy
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    acc = s.per_rate[0].accuracy
    assert acc is not None
    assert (acc.mean, acc.low, acc.high) == pytest.approx((v.mean(), lo, hi))
    # export-results writes the scores per (trial, input)
    export_table(db, "outcomes", "csv", tmp_path / "o.csv")
    rows = list(csv.DictReader((tmp_path / "o.csv").read_text().splitlines()))
    assert len(rows) == 12 * 20 and rows[0]["correct"] == ""
    got = {(int(r["trial"]), int(r["sample"])): float(r["score"]) for r in rows}
    assert all(got[t, i] == scores[t][i] for t in scores for i in range(20))
    # a stored campaign summarises the same way
    again = load_summary(db)
    assert again.score == "closeness" and again.to_json()["per_rate"] == s.to_json()["per_rate"]


def test_the_cli_prints_the_score_and_gates_on_it(tmp_path: Path,
                                                  regressor: tuple[Path, Path, np.ndarray]
                                                  ) -> None:
    model, data, _ = regressor
    args = ["campaign", model, "--data", data, "--metric", CLOSENESS, "--bits", "18-30",
            "--trials", "12", "--seed", "3", "--batch-size", "8", "--no-progress"]
    code, out, err = invoke(*args)
    assert code == 0, err
    assert "golden closeness 1.0000" in out and "closeness [95% CI]" in out
    assert "PASSED campaign: golden closeness 1.0000" in err
    code, out, err = invoke(*args, "--json")
    drop = json.loads(out)["per_rate"][0]["accuracy_drop_high"]
    assert drop > 0.01
    code, _, err = invoke(*args, "--fail-above", f"score_drop={drop + 0.01}")
    assert code == 0, err
    code, _, err = invoke(*args, "--fail-above", f"score_drop={drop - 0.01}")
    assert code == 1 and err.splitlines()[-1].startswith("FAILED campaign:")
    assert "score_drop" in err.splitlines()[-1]


def test_a_metric_without_scores_keeps_accuracy_or_acceptable(
        regressor: tuple[Path, Path, np.ndarray]) -> None:
    model, _, x = regressor
    policy = OutcomePolicy(PolicyKind.METRIC, metric="tests.user_metrics:flags_only")
    res = run_campaign(model, Dataset({"x": x}), _config(outcome=policy), progress=False)
    assert res.summary.score == "acceptable" and res.golden_accuracy == 1.0
    d = np.load(DATA)
    res = run_campaign(MODEL, Dataset({"input": d["input"][:40]}, d["labels"][:40]),
                       CampaignConfig(trials=4, bits=(30,), outcome=policy), progress=False)
    assert res.summary.score == "accuracy" and res.summary.score_bounded


def test_metric_results_are_the_same_on_local_workers(
        tmp_path: Path, regressor: tuple[Path, Path, np.ndarray]) -> None:
    model, _, x = regressor
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    run_campaign(model, Dataset({"x": x}), _config(), a, progress=False)
    run_campaign(model, Dataset({"x": x}), _config(), b, progress=False,
                 backend=Backend(BackendKind.LOCAL, 2))
    with ResultStore.open(a) as sa, ResultStore.open(b) as sb:
        sca, scb = sa.score_sets(), sb.score_sets()
        assert sorted(sca) == sorted(scb)
        for t in sca:
            np.testing.assert_array_equal(sca[t], scb[t])


@pytest.mark.parametrize(("metric", "words"), [
    ("nosuch_module_xyz:f", ["cannot import 'nosuch_module_xyz' for --metric"]),
    ("tests.user_metrics:nothing", ["has no 'nothing'"]),
    ("tests.user_metrics:NOT_CALLABLE", ["is not callable"]),
    ("tests.user_metrics", ["package.module:name"]),
    ("tests.user_metrics:wrong_shape", ["critical flags of dtype bool and shape [8, 2]",
                                        "bool array of shape [8]"]),
    ("tests.user_metrics:int_flags", ["dtype int64"]),
    ("tests.user_metrics:three", ["tuple of 3"]),
    ("tests.user_metrics:raises", ["raised KeyError", "no output 'boxes'"]),
    ("tests.user_metrics:nan_score", ["scored input 0 nan", "finite score"]),
])
def test_bad_metrics_are_one_line_errors(tmp_path: Path, regressor: tuple[Path, Path, np.ndarray],
                                         metric: str, words: list[str]) -> None:
    model, data, _ = regressor
    db = tmp_path / "r.sqlite"
    assert_user_error(*invoke("campaign", model, "--data", data, "--metric", metric,
                              "--batch-size", "8", "--trials", "2", "-o", db), *words)
    assert not db.exists()


def test_metric_option_conflicts(regressor: tuple[Path, Path, np.ndarray]) -> None:
    model, data, _ = regressor
    assert_user_error(*invoke("campaign", model, "--data", data, "--outcome", "metric"),
                      "needs --metric")
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--outcome", "top1",
                              "--metric", CLOSENESS), "--metric applies to --outcome metric")


def _isolated(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter that does not put the current folder on sys.path
    (``-I``, as the installed ``enpheeph-onnx`` script runs)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-I", "-m", "enpheeph_onnx", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_current_folder_is_importable_for_metric(
        tmp_path: Path, regressor: tuple[Path, Path, np.ndarray]) -> None:
    model, data, _ = regressor
    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n"
        "def far(golden, faulty, labels):\n"
        "    return np.abs(faulty['y'] - golden['y']).max(1) > 1.0\n")
    r = _isolated("campaign", model, "--data", data, "--metric", "my_metric:far", "--trials",
                  "3", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "PASSED campaign: golden acceptable 1.0000" in r.stderr


def test_the_current_folder_is_importable_for_export_model(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "small.onnx"
    r = _isolated("export-model", "--model", "tests.exportable:small_cnn", "--input-shape",
                  "1,1,8,8", "-o", out, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert onnx.load(out).graph.output[0].name == "logits"


def test_outcome_policies_from_a_toml_config(tmp_path: Path,
                                             regressor: tuple[Path, Path, np.ndarray]) -> None:
    model, data, _ = regressor
    cfg = tmp_path / "c.toml"
    cfg.write_text('[campaign]\nmetric = "tests.user_metrics:closeness"\ntrials = 3\n'
                   'batch-size = 8\nbits = "18-30"\n')
    code, out, err = invoke("campaign", model, "--data", data, "--config", cfg, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["config"]["outcome"] == {"kind": "metric", "k": 5, "tolerances": [],
                                        "metric": CLOSENESS}
    assert res["score"] == "closeness" and len(res["trials"]) == 3
    cfg.write_text('outcome = "tolerance"\nsdc-tolerance = ["y:l2=0.05", "*:atol=1"]\n'
                   'trials = 2\n')
    code, out, err = invoke("campaign", model, "--data", data, "--config", cfg, "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["outcome"]["tolerances"] == [["y", None, None, 0.05],
                                                                  ["*", 1.0, 0.0, None]]
