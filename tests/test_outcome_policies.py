"""Outcome policies (issue 11): top-1, top-k and per-output tolerances decide whether a
differing output is a critical or a tolerable SDC; campaigns store and apply them, with or
without labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

from enpheeph_onnx import inject
from enpheeph_onnx.campaign.outcomes import (
    Outcome,
    OutcomePolicy,
    PolicyKind,
    Tolerance,
    classify,
)
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.store import ResultStore

from .conftest import DATA, MODEL
from .helpers import assert_user_error, invoke

M, T, C, D = Outcome.MASKED, Outcome.TOLERABLE_SDC, Outcome.CRITICAL_SDC, Outcome.DUE


def test_the_policies_on_known_outputs() -> None:
    g = {"p": np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]],
                       np.float32)}
    f = {"p": np.array([[0.1, 0.7, 0.2],      # identical
                        [0.3, 0.5, 0.2],      # top-1 0 -> 1, golden 0 still 2nd
                        [0.2, 0.31, 0.49],    # top-1 unchanged, small change
                        [0.1, np.nan, 0.7]],  # NaN
                       np.float32)}
    assert classify(g, f, "p").tolist() == [M, C, T, D]
    assert classify(g, f, "p", OutcomePolicy(PolicyKind.TOPK, 2)).tolist() == [M, T, T, D]
    assert classify(g, f, "p", OutcomePolicy(PolicyKind.TOPK, 1)).tolist() == [M, C, T, D]
    # top-k sets: {0, 1} -> {1, 0} is the same set (tolerable); top-2 {2, 1} unchanged
    assert classify(g, f, "p", OutcomePolicy(PolicyKind.TOPK_SET, 2)).tolist() == [M, T, T, D]
    assert classify(g, f, "p", OutcomePolicy(PolicyKind.TOPK_SET, 1)).tolist() == [M, C, T, D]
    swap = {"p": np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7]],
                          np.float32)}  # input 1: 2nd and 3rd swap, top-1 kept
    assert classify(g, swap, "p", OutcomePolicy(PolicyKind.TOPK_SET, 2)).tolist() == [M, C, M, M]
    assert classify(g, swap, "p", OutcomePolicy(PolicyKind.TOPK, 2)).tolist() == [M, T, M, M]
    loose = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("p", atol=0.015),))
    assert classify(g, f, "p", loose).tolist() == [M, C, T, D]
    tight = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("*", rtol=0.01),))
    assert classify(g, f, "p", tight).tolist() == [M, C, C, D]


def test_tolerances_per_output_and_outputs_without_one() -> None:
    g = {"boxes": np.array([[10.0, 20.0, 30.0, 40.0]] * 3, np.float32),
         "scores": np.array([[0.9, 0.1]] * 3, np.float32)}
    f = {"boxes": np.array([[10.0, 20.0, 30.0, 40.0], [10.5, 20.0, 30.0, 40.0],
                            [10.0, 20.0, 33.0, 40.0]], np.float32),
         "scores": np.array([[0.9, 0.2], [0.9, 0.1], [0.9, 0.1]], np.float32)}
    boxes_only = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("boxes", 1.0),))
    # scores have no tolerance: their differences are tolerable
    assert classify(g, f, "scores", boxes_only).tolist() == [T, T, C]
    both = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("boxes", 1.0),
                                                           Tolerance("scores", 0.05)))
    assert classify(g, f, "scores", both).tolist() == [C, T, C]


@pytest.mark.parametrize(("text", "words"), [
    ("y", "NAME:atol=A,rtol=R"), ("y:tol=1", "'tol=1' is not atol"),
    ("y:atol=x", "'x' is not a number"), ("y:atol=-1", "finite number >= 0"),
    ("y:atol=1,atol=2", "at most once"), (":atol=1", "NAME:atol")])
def test_bad_tolerances_are_refused(text: str, words: str) -> None:
    with pytest.raises(EnpheephError, match=words):
        Tolerance.parse(text)


def test_policy_json_round_trip() -> None:
    p = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("a", 1e-3, 0.5),
                                                        Tolerance("*", 0.0, 1e-2)))
    assert OutcomePolicy.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert OutcomePolicy.from_json(None) == OutcomePolicy()
    with pytest.raises(EnpheephError, match="needs --sdc-tolerance"):
        OutcomePolicy(PolicyKind.TOLERANCE)


def _detector(path: Path) -> None:
    """``x [N, 6]`` -> ``boxes [N, 4]`` (a linear head) and ``scores [N, 3]`` (softmax)."""
    rng = np.random.default_rng(3)
    w1 = onnx.numpy_helper.from_array(rng.standard_normal((6, 8)).astype(np.float32), "w1")
    wb = onnx.numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "wb")
    ws = onnx.numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "ws")
    g = h.make_graph([h.make_node("MatMul", ["x", "w1"], ["h"]),
                      h.make_node("Relu", ["h"], ["r"]),
                      h.make_node("MatMul", ["r", "wb"], ["boxes"]),
                      h.make_node("MatMul", ["r", "ws"], ["logits"]),
                      h.make_node("Softmax", ["logits"], ["scores"], axis=-1)], "det",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                     [h.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
                      h.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])],
                     [w1, wb, ws])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, path)


def test_a_tolerance_campaign_without_labels(tmp_path: Path) -> None:
    """A detector-like model with no labels: each stored trial's outcomes are those of
    inject + run judged with the same tolerances."""
    model, data, db = tmp_path / "det.onnx", tmp_path / "x.npz", tmp_path / "r.sqlite"
    _detector(model)
    x = np.random.default_rng(4).standard_normal((20, 6)).astype(np.float32)
    np.savez(data, x=x)
    code, out, err = invoke("campaign", model, "--data", data, "--sdc-tolerance",
                            "boxes:atol=0.05", "--sdc-tolerance", "scores:atol=0.01",
                            "--bits", "15-30", "--trials", "12", "--seed", "2", "--db", db,
                            "--json", "--no-progress")
    assert code == 0, err
    res = json.loads(out)
    assert res["config"]["outcome"]["kind"] == "tolerance"
    # without labels the score is the fraction of acceptable inputs (1 for the golden run)
    assert res["score"] == "acceptable" and res["golden_accuracy"] == 1.0
    assert [t["accuracy"] for t in res["trials"]] == [
        (t["masked"] + t["tolerable_sdc"]) / 20 for t in res["trials"]]
    policy = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("boxes", 0.05),
                                                             Tolerance("scores", 0.01)))
    golden = dict(zip(["boxes", "scores"], make_session(onnx.load(model)).run(None, {"x": x}),
                      strict=True))
    seen = set()
    with ResultStore.open(db) as store:
        faults = dict(store.fault_sets())
        for trial, codes, correct in store.outcome_sets():
            assert correct is None
            faulty = dict(zip(["boxes", "scores"], make_session(
                inject(model, faults[trial]).model).run(None, {"x": x}), strict=True))
            want = classify(golden, faulty, "boxes", policy)
            assert codes.tolist() == want.tolist(), trial
            seen |= set(codes.tolist())
    assert {T, C} <= seen  # both sides of the tolerance occur


def test_cli_policy_options(tmp_path: Path) -> None:
    code, out, err = invoke("campaign", MODEL, "--data", DATA, "--outcome", "topk", "--topk",
                            "3", "--bits", "30", "--trials", "6", "--json", "--no-progress")
    assert code == 0, err
    assert json.loads(out)["config"]["outcome"] == {"kind": "topk", "k": 3, "tolerances": [],
                                                         "metric": None}
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--outcome", "top1",
                              "--topk", "3"), "--topk applies to --outcome topk or topk-set")
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--sdc-tolerance",
                              "nope:atol=1"), "has no output 'nope'")
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--outcome", "tolerance"),
                      "needs --sdc-tolerance")


def _regressor(path: Path) -> None:
    """``x [N, 5]`` -> ``y [N, 2]``: Gemm-Tanh-Gemm, a regression head (no classes)."""
    rng = np.random.default_rng(8)
    init = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
            for n, s in (("w1", (5, 7)), ("b1", (7,)), ("w2", (7, 2)), ("b2", (2,)))]
    g = h.make_graph([h.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
                      h.make_node("Tanh", ["h"], ["t"]),
                      h.make_node("Gemm", ["t", "w2", "b2"], ["y"])], "reg",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], init)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 9
    onnx.save(m, path)


@pytest.mark.parametrize(("model_fn", "args", "policy", "output"), [
    (_regressor, ["--sdc-tolerance", "*:rtol=0.01,atol=1e-4"],
     OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance("*", 1e-4, 0.01),)), "y"),
    (_detector, ["--outcome", "topk", "--topk", "2", "--logits", "scores"],
     OutcomePolicy(PolicyKind.TOPK, 2), "scores"),
    (_detector, ["--logits", "scores"], OutcomePolicy(), "scores"),
    (_detector, ["--outcome", "topk-set", "--topk", "2", "--logits", "scores"],
     OutcomePolicy(PolicyKind.TOPK_SET, 2), "scores"),
    (_detector, ["--metric", "tests.user_metrics:closeness"],
     OutcomePolicy(PolicyKind.METRIC, metric="tests.user_metrics:closeness"), "boxes"),
    (_regressor, ["--metric", "tests.user_metrics:flags_only"],
     OutcomePolicy(PolicyKind.METRIC, metric="tests.user_metrics:flags_only"), "y"),
], ids=["regressor-tolerance", "detector-top2", "detector-top1", "detector-top2-set",
        "detector-metric", "regressor-metric"])
def test_every_policy_in_a_campaign(model_fn, args: list[str], policy: OutcomePolicy,  # type: ignore[no-untyped-def]
                                    output: str, tmp_path: Path) -> None:
    """Activation faults; each stored trial's outcomes are those of inject + run judged by
    the same policy against the unmodified model's golden run."""
    model, data, db = tmp_path / "m.onnx", tmp_path / "d.npz", tmp_path / "r.sqlite"
    model_fn(model)
    m = onnx.load(model)
    x = np.random.default_rng(6).standard_normal((16, m.graph.input[0].type.tensor_type
                                                  .shape.dim[1].dim_value)).astype(np.float32)
    names = [o.name for o in m.graph.output]
    golden = dict(zip(names, make_session(m).run(None, {"x": x}), strict=True))
    extra = {} if policy.kind in (PolicyKind.TOLERANCE, PolicyKind.METRIC) else {
        "labels": golden[output].argmax(1)}
    np.savez(data, x=x, **extra)
    code, _, err = invoke("campaign", model, "--data", data, *args, "--kinds", "activation",
                          "--bits", "18-30", "--faults-per-trial", "2", "--trials", "15",
                          "--seed", "5", "--db", db, "--no-progress")
    assert code == 0, err
    seen = set()
    with ResultStore.open(db) as store:
        faults = dict(store.fault_sets())
        for trial, codes, _ in store.outcome_sets():
            faulty = dict(zip(names, make_session(inject(model, faults[trial]).model).run(
                None, {"x": x}), strict=True))
            assert codes.tolist() == classify(golden, faulty, output, policy).tolist(), trial
            seen |= set(codes.tolist())
    assert len(seen) >= 2


def test_relative_l2_and_max_abs_tolerances() -> None:
    g = {"y": np.array([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]], np.float32)}
    f = {"y": np.array([[3.0, 4.4], [3.0, 4.0], [0.0, 4.0]], np.float32)}  # L2 error 0.4, 0, 3
    def codes(text: str) -> list[int]:
        p = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(Tolerance.parse(text),))
        return classify(g, f, "y", p).tolist()
    assert codes("y:l2=0.1") == [T, M, C]        # 0.4 / 5 = 0.08 <= 0.1 < 3 / 5
    assert codes("y:l2=0.05") == [C, M, C]
    assert codes("y:l2=0.7") == [T, M, T]
    assert codes("y:atol=0.5") == [T, M, C]      # max-abs
    assert codes("y:atol=0.5,l2=0.05") == [C, M, C]  # both must hold
    t = Tolerance.parse("y:l2=0.1")
    assert (t.atol, t.rtol, t.l2, str(t)) == (None, None, 0.1, "y:l2=0.1")
    p = OutcomePolicy(PolicyKind.TOLERANCE, tolerances=(t, Tolerance.parse("*:atol=1")))
    assert OutcomePolicy.from_json(json.loads(json.dumps(p.to_json()))) == p
    old = {"kind": "tolerance", "k": 5, "tolerances": [["y", 0.1, 0.0]]}  # stored before l2
    assert OutcomePolicy.from_json(old).tolerances == (Tolerance("y", 0.1, 0.0),)
    with pytest.raises(EnpheephError, match="l2=NUMBER"):
        Tolerance.parse("y:l3=0.1")
