"""Activation/input faults applied on the host between segment sessions
(:mod:`enpheeph_onnx.chain`): bit for bit what ``inject`` + ``run`` gives."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

from enpheeph_onnx import discover_sites, inject, load_model
from enpheeph_onnx.bits import BY_NAME
from enpheeph_onnx.chain import ChainUnavailable, ValueChain
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.faults import Fault, FaultModel, parse_fault
from enpheeph_onnx.faultset import FaultSet
from enpheeph_onnx.runtime import make_session, session_options
from enpheeph_onnx.sites import SiteKind

from .conftest import MODEL


def _random_faults(sites: list, n: int, rng: np.random.Generator, samples: int) -> list[Fault]:
    """``n`` faults on random sites: per-sample and ``*`` indices, every fault model,
    several on one element (they compose in order)."""
    out = []
    models = [FaultModel.BIT_FLIP, FaultModel.STUCK_AT_0, FaultModel.STUCK_AT_1]
    for k in range(n):
        s = sites[int(rng.integers(len(sites)))]
        width = BY_NAME[s.dtype].bits
        lead = None if k % 3 == 0 else int(rng.integers(samples))
        idx = (lead, *(int(rng.integers(d)) for d in s.shape[1:]))
        bits = tuple(sorted({int(b) for b in rng.integers(0, width, 1 + k % 2)}))
        out.append(Fault(s.name, idx, models[k % 3], bits))
        if k % 5 == 0:  # the same element again, another model
            out.append(Fault(s.name, idx, FaultModel.BIT_FLIP, (bits[0],)))
    return out


@pytest.mark.parametrize("batch_size", [None, 50])
def test_chain_equals_inject_on_multi_site_trials(digits: dict[str, np.ndarray],
                                                  batch_size: int | None) -> None:
    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is not SiteKind.WEIGHT]
    x = {"input": digits["input"][:120]}
    e = FaultEngine(m, sites)
    rng = np.random.default_rng(7)
    for n in (1, 2, 5, 40):
        faults = _random_faults(sites, n, rng, 120)
        for _ in range(2):  # fine segments first, a span when the pair comes back
            got = e.run(x, faults, batch_size)["logits"]
            want = make_session(inject(m, faults).model).run(None, x)[0]
            assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), faults
    assert e._chain is not None and not e._chain._unroutable
    assert set(e._variants) == {(0, frozenset())}  # no instrumented session was needed
    plain = make_session(m).run(None, x)[0]
    assert e.reference(x, faults, batch_size)["logits"].tobytes() == plain.tobytes()


def test_chain_without_cache_runs_from_the_inputs(digits: dict[str, np.ndarray]) -> None:
    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    x = {"input": digits["input"][:64]}
    cached = FaultEngine(m, sites)
    tiny = FaultEngine(m, sites, cache_mb=0.01)
    faults = [parse_fault("/relu2/Relu_output_0[*,3,1,1]:bitflip:30"),
              parse_fault("/fc1/Gemm_output_0[5,7]:stuck-at-1:29")]
    a = cached.run(x, faults, 16)["logits"]
    b = tiny.run(x, faults, 16)["logits"]
    assert a.tobytes() == b.tobytes()
    assert tiny._chain is not None and tiny._chain._golden.live is None
    assert tiny.cache_bytes == 0 < cached.cache_bytes


def test_chain_input_faults_leave_the_data_alone(digits: dict[str, np.ndarray]) -> None:
    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.INPUT]
    x = {"input": digits["input"][:30].copy()}
    before = x["input"].tobytes()
    e = FaultEngine(m, sites)
    f = [parse_fault("input[3,0,2,2]:bitflip:30"), parse_fault("input[*,0,5,5]:value=nan")]
    got = e.run(x, f)["logits"]
    want = make_session(inject(m, f).model).run(None, x)[0]
    assert got.tobytes() == want.tobytes() and x["input"].tobytes() == before
    assert np.isnan(got).all(axis=1).all()  # a NaN pixel reaches every logit
    assert e._chain is not None and 0 in e._chain.bounds


def test_chain_refuses_subgraphs_and_falls_back() -> None:
    f = TensorProto.FLOAT
    x = h.make_tensor_value_info("x", f, ["N", 2])
    y = h.make_tensor_value_info("y", f, ["N", 2])
    branch = h.make_graph([h.make_node("Neg", ["a"], ["b"])], "then", [],
                          [h.make_tensor_value_info("b", f, None)])
    other = h.make_graph([h.make_node("Identity", ["a"], ["c"])], "else", [],
                         [h.make_tensor_value_info("c", f, None)])
    g = h.make_graph([h.make_node("Relu", ["x"], ["a"]),
                      h.make_node("ReduceSum", ["a"], ["s"], keepdims=0),
                      h.make_node("Greater", ["s", "zero"], ["p"]),
                      h.make_node("If", ["p"], ["y"], then_branch=branch, else_branch=other)],
                     "g", [x], [y], [onnx.numpy_helper.from_array(np.float32(0), "zero")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 26)], ir_version=10)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    with pytest.raises(ChainUnavailable, match="subgraphs"):
        ValueChain(m, sites, "cpu", session_options())
    e = FaultEngine(m, sites)
    xs = {"x": np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)}
    fs = FaultSet.from_faults([parse_fault("a[*,0]:bitflip:31")])
    out = e.run(xs, fs)["y"]
    assert e.chain() is None  # the instrumented sessions served
    want = FaultEngine(m, sites, suffix=False).run(xs, fs)["y"]
    assert out.tobytes() == want.tobytes()


def test_chain_refuses_a_bit_beyond_the_element(digits: dict[str, np.ndarray]) -> None:
    from enpheeph_onnx.errors import EnpheephError

    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    e = FaultEngine(m, sites)
    fs = FaultSet.from_faults([parse_fault("/relu2/Relu_output_0[0,1,1,1]:bitflip:3")])
    fs = FaultSet(fs.sites, fs.site, fs.index, fs.model, np.array([1 << 40], np.uint64),
                  fs.value)
    with pytest.raises(EnpheephError, match=r"bit .* beyond the 32-bit"):
        e.run({"input": digits["input"][:8]}, fs)


def test_optimization_all_trials_equal_inject_run_all(digits: dict[str, np.ndarray]) -> None:
    """Activation faults on sessions optimized as deployed (NCHWc layouts, pre-packed
    weights): the chain still equals ``inject`` + a session with the same options."""
    from enpheeph_onnx.runtime import Optimization

    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is not SiteKind.WEIGHT]
    x = {"input": digits["input"][:100]}
    e = FaultEngine(m, sites, optimization=Optimization.ALL)
    so = session_options(optimization=Optimization.ALL)
    rng = np.random.default_rng(11)
    for n in (1, 6):
        faults = _random_faults(sites, n, rng, 100)
        got = e.run(x, faults)["logits"]
        want = make_session(inject(m, faults).model, "cpu", so).run(None, x)[0]
        assert got.view(np.uint32).tolist() == want.view(np.uint32).tolist(), faults
    assert e.reference(x, faults)["logits"].tobytes() == make_session(
        m, "cpu", so).run(None, x)[0].tobytes()
    with pytest.raises(Exception, match="cannot mix weights"):
        FaultEngine(m, discover_sites(m), optimization=Optimization.ALL)


def test_chain_sessions_stay_within_the_cache_bound(digits: dict[str, np.ndarray]) -> None:
    """Suffix and span sessions count against ``cache_mb`` with the golden tensors; those
    that do not fit are dropped for good and the fine segments serve, with the same bits."""
    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    x = {"input": digits["input"][:64]}
    roomy = FaultEngine(m, sites)
    roomy.run(x, [parse_fault("logits[0,1]:bitflip:3")])
    chain = roomy._chain
    assert chain is not None and chain.session_bytes > 0
    budget = (chain.cache_bytes + chain.session_bytes / 3) / 2**20
    tight = FaultEngine(m, sites, cache_mb=budget)
    for spec in ("/relu1/Relu_output_0[*,2,3,3]:bitflip:30",
                 "/pool1/MaxPool_output_0[4,1,1,1]:stuck-at-1:27",
                 "/fc1/Gemm_output_0[*,9]:bitflip:31"):
        f = [parse_fault(spec)]
        assert tight.run(x, f)["logits"].tobytes() == roomy.run(x, f)["logits"].tobytes()
    t = tight._chain
    assert t is not None and t._golden.live is not None  # the golden tensors still fit
    assert 0 < t.session_bytes + t.cache_bytes <= budget * 2**20
    assert len(t._spans) < len(chain._spans) and t._bad_spans


def test_chain_puts_the_golden_tensors_back(digits: dict[str, np.ndarray]) -> None:
    """Faults at a trial's first boundary are applied to the cached golden tensors in place
    (no copy of the tensor) and undone after the run: every path of the bit update (per
    element XOR, the same elements of every sample sparse and dense, folded stuck-at),
    also when the faulted tensor is a graph output."""
    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    x = {"input": digits["input"][:40]}
    e = FaultEngine(m, sites)
    e.run(x, [parse_fault("logits[0,0]:bitflip:1")])
    before = [{k: v.tobytes() for k, v in b.items()} for b in e._chain._golden.live]
    dense = [parse_fault(f"/relu2/Relu_output_0[*,{c},{i},{j}]:bitflip:30")
             for c in range(32) for i in range(2) for j in range(2)]
    trials = [[parse_fault("/pool1/MaxPool_output_0[3,1,1,1]:bitflip:30")],
              [parse_fault("/pool1/MaxPool_output_0[*,1,1,1]:bitflip:29")],
              dense,
              [parse_fault("/conv2/Conv_output_0[*,1,1,1]:stuck-at-1:30"),
               parse_fault("/conv2/Conv_output_0[2,1,1,1]:bitflip:31")],
              [parse_fault("logits[*,3]:bitflip:30")]]
    for faults in trials:
        got = e.run(x, faults)["logits"]
        want = make_session(inject(m, faults).model).run(None, x)[0]
        assert got.tobytes() == want.tobytes(), faults[0]
    after = [{k: v.tobytes() for k, v in b.items()} for b in e._chain._golden.live]
    assert before == after


def test_optimization_all_refuses_no_suffix(tmp_path) -> None:
    """Fault nodes change onnxruntime's layout choices at ORT_ENABLE_ALL (review: per-sample
    trials then differed from inject + run by one sample), so --optimization all runs only
    on the segment chain."""
    from click.testing import CliRunner

    from enpheeph_onnx.cli import main

    from .conftest import MODELS

    db = tmp_path / "r.sqlite"
    r = CliRunner().invoke(main, ["campaign", str(MODEL), "--data",
                                  str(MODELS / "digits_test.npz"), "--kinds", "activation",
                                  "--trials", "2", "--optimization", "all", "--no-suffix",
                                  "--db", str(db)])
    assert r.exit_code == 2 and "drop --no-suffix" in r.output and not db.exists()
