"""enpheeph_onnx.rewrite (``inject``): faulty models run in onnxruntime equal the numpy
reference bit for bit.

Most test models are chains of bit-preserving ops (Identity, BitCast: ``chain_model`` in
tests/helpers.py), so the output of a faulty model must carry exactly the bits
:func:`enpheeph_onnx.apply_faults` computes. Also: identities, model hygiene, provenance,
determinism, invalid faults, fault sets, the shipped digits CNN, exact int8 weight and
activation faults on the shipped int8 model, and a time-step state fault on the shipped
spiking model.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import enpheeph_onnx
from enpheeph_onnx import (
    Fault,
    FaultModel,
    FaultPlan,
    apply_faults,
    discover_sites,
    inject,
    load_model,
    parse_fault,
)
from enpheeph_onnx.bits import BY_NAME
from enpheeph_onnx.campaign import CampaignConfig, Sampler, SiteSelection, select_sites
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.sites import SiteKind

from .conftest import MODEL, ROOT, SNN_DATA, SNN_MODEL
from .helpers import (
    CONV1_W,
    CONV2_W,
    INT8,
    RELU2_Q,
    W_SHAPE,
    X_TAIL,
    as_bits,
    assert_bits_equal,
    assert_same_bits,
    chain_faults,
    chain_model,
    chain_reference,
    copy_model,
    faults_for,
    feed_array,
    int8_model,
    int8_sites,
    raw_bits,
    replace_weight,
    run,
    run_input,
    scalar_model,
    site_shape,
    weight_value,
)

ACT_DTYPES = ["float32", "float16", "bfloat16", "int8", "uint8"]
WEIGHT_DTYPES = ["float32", "float16", "bfloat16", "float64", "int8", "uint8", "int32"]


@st.composite
def chain_case(draw: st.DrawFn, dtype: str, sites: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    d = BY_NAME[dtype]
    n = draw(st.integers(1, 3))
    return (draw(raw_bits(d, (n, *X_TAIL))), draw(raw_bits(d, W_SHAPE)),
            draw(chain_faults(dtype, sites)))


def check_inject(dtype: str, x_bits: np.ndarray, w_bits: np.ndarray, faults: list[Fault],
                 constant: bool = False) -> dict[str, np.ndarray]:
    model = chain_model(dtype, w_bits, constant)
    res = inject(model, faults)
    out = run(res.model, {"X": feed_array(dtype, x_bits)})
    want = chain_reference(dtype, x_bits, w_bits, faults)
    for name in ("Y", "WY"):
        assert_bits_equal(out[name], want[name], f"{dtype} {name} {[str(f) for f in faults]}")
    return out


# -- bit-exact against the reference, property based ---------------------------------------

@pytest.mark.parametrize("dtype", ACT_DTYPES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_activation_and_input_faults_bit_exact(dtype: str, data: st.DataObject) -> None:
    sites = ("X", "xb", "act", "Y")
    x_bits, w_bits, faults = data.draw(chain_case(dtype, sites))
    check_inject(dtype, x_bits, w_bits, faults)


@pytest.mark.parametrize("dtype", WEIGHT_DTYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_weight_faults_bit_exact(dtype: str, data: st.DataObject) -> None:
    x_bits, w_bits, faults = data.draw(chain_case(dtype, ("W",)))
    constant = data.draw(st.booleans(), label="constant")
    check_inject(dtype, x_bits, w_bits, faults, constant)


@pytest.mark.parametrize("dtype", ["float32", "int8", "bfloat16"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_runs_of_one_model_bit_exact(dtype: str, data: st.DataObject) -> None:
    """Runs of same-model faults on overlapping elements (folded into shared mask nodes)."""
    d = BY_NAME[dtype]
    run_ = st.tuples(st.sampled_from(list(FaultModel)), st.integers(2, 3)).flatmap(
        lambda mk: st.lists(faults_for("act", site_shape("act"), d, mk[0], dense=True),
                            min_size=mk[1], max_size=mk[1]))
    runs = data.draw(st.lists(run_, min_size=1, max_size=3), label="runs")
    n = data.draw(st.integers(1, 2), label="batch")
    x_bits = data.draw(raw_bits(d, (n, *X_TAIL)), label="x_bits")
    w_bits = np.zeros(W_SHAPE, d.container)
    check_inject(dtype, x_bits, w_bits, [f for r in runs for f in r])


TWO_DYN = ("N", "M", 4)


@functools.cache
def two_dyn_engine(dtype: str) -> FaultEngine:
    model = chain_model(dtype, x_dims=TWO_DYN)
    return FaultEngine(model, discover_sites(model))


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_two_dynamic_dims_bit_exact(dtype: str, data: st.DataObject) -> None:
    """Ints on two dynamic dims, one not leading: nested Slice/Concat on the right axes."""
    d = BY_NAME[dtype]
    pick = st.sampled_from(["X", "act", "Y"]).flatmap(lambda s: faults_for(s, TWO_DYN, d))
    faults = data.draw(st.lists(pick, min_size=1, max_size=5), label="faults")
    n, m = data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 3), label="M")
    x_bits = data.draw(raw_bits(d, (n, m, 4)), label="x_bits")
    w_bits = np.arange(12, dtype=d.container).reshape(W_SHAPE)
    model = chain_model(dtype, w_bits, x_dims=TWO_DYN)
    feed = {"X": feed_array(dtype, x_bits)}
    want = chain_reference(dtype, x_bits, w_bits, faults)["Y"]
    assert_bits_equal(run(inject(model, faults).model, feed)["Y"], want, "inject")
    assert_bits_equal(two_dyn_engine(dtype).run(feed, faults)["Y"], want, "engine")


@pytest.mark.parametrize("dtype", ["float64", "int32"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_mixed_plans_other_dtypes(dtype: str, data: st.DataObject) -> None:
    """Activations of the wider dtypes too, mixed with weight faults in one plan."""
    x_bits, w_bits, faults = data.draw(chain_case(dtype))
    check_inject(dtype, x_bits, w_bits, faults)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8", "uint8"])
def test_order_of_faults_on_one_site(dtype: str) -> None:
    """stuck-at-1, then value, then bitflip on overlapping elements: order matters."""
    d = BY_NAME[dtype]
    rng = np.random.default_rng(7)
    x_bits = rng.integers(0, d.all_ones, size=(3, *X_TAIL), dtype=np.uint64,
                          endpoint=True).astype(d.container)
    w_bits = rng.integers(0, d.all_ones, size=W_SHAPE, dtype=np.uint64,
                          endpoint=True).astype(d.container)
    top = d.bits - 1
    plan = [
        parse_fault(f"act[1,*,2]:stuck-at-1:0-2,{top}"),
        parse_fault("act[1,1,*]:value=3"),
        parse_fault(f"act[*,1,2]:bitflip:1,{top}"),
        parse_fault(f"W[1,*]:stuck-at-1:0-2,{top}"),
        parse_fault("W[*,2]:value=3"),
        parse_fault("W[1,2]:bitflip:1"),
        parse_fault("act[1,1,2]:stuck-at-0:0"),
        parse_fault(f"act[*,*,*]:bitflip:{top - 1}"),
    ]
    forward = check_inject(dtype, x_bits, w_bits, plan)
    backward = check_inject(dtype, x_bits, w_bits, plan[::-1])
    assert not np.array_equal(as_bits(forward["Y"]), as_bits(backward["Y"]))
    assert not np.array_equal(as_bits(forward["WY"]), as_bits(backward["WY"]))
    # the element hit by all of them: ((u | m) -> 3) ^ flip, then stuck-at-0 bit 0, flip
    three = np.array([3], dtype=d.numpy).view(d.container)[0]
    flip = (1 << 1) | (1 << top)
    want = ((int(three) ^ flip) & ~1) ^ (1 << (top - 1))
    assert int(as_bits(forward["Y"])[1, 1, 2]) == want


def test_dynamic_dim_int_index() -> None:
    """An int on the batch dim hits that image only; beyond the batch it does nothing."""
    x = np.arange(2 * 12, dtype=np.float32).reshape(2, *X_TAIL)
    model = chain_model("float32")
    out = run(inject(model, [parse_fault("act[1,*,*]:bitflip:31")]).model, {"X": x})["Y"]
    assert np.array_equal(out[0], x[0]) and np.array_equal(out[1], -x[1])
    out = run(inject(model, [parse_fault("act[5,0,0]:value=9")]).model, {"X": x})["Y"]
    assert_bits_equal(out, x)
    out = run(inject(model, [parse_fault("X[0,2,3]:value=-1")]).model, {"X": x})["Y"]
    want = x.copy()
    want[0, 2, 3] = -1
    assert_bits_equal(out, want)


# -- identities, model hygiene, provenance, determinism ------------------------------------

def test_double_flip_and_empty_plan_restore_golden() -> None:
    rng = np.random.default_rng(5)
    w_bits = rng.integers(0, 2**32, size=W_SHAPE, dtype=np.uint64).astype(np.uint32)
    x = rng.standard_normal((2, *X_TAIL)).astype(np.float32)
    model = chain_model("float32", w_bits)
    golden = run(model, {"X": x})
    empty = inject(model, [])
    assert empty.nodes == () and empty.weights == ()
    for name, out in run(empty.model, {"X": x}).items():
        assert_bits_equal(out, golden[name], name)
    flip_a = parse_fault("act[1,*,1]:bitflip:3,31")
    flip_w = parse_fault("W[2,*]:bitflip:0-31")
    other = parse_fault("act[0,0,0]:stuck-at-0:31")  # splits the two flips into two nodes
    res = inject(model, [flip_a, flip_w, other, flip_w, flip_a])
    assert len(res.nodes) == 3
    out = run(res.model, {"X": x})
    want = x.copy()
    want.view(np.uint32)[0, 0, 0] &= 0x7FFFFFFF
    assert_bits_equal(out["Y"], want)
    assert_bits_equal(out["WY"], golden["WY"])
    assert res.weights[0].elements_changed == 0


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def test_output_model_is_valid_and_deterministic() -> None:
    model = chain_model("float16")
    before = model.SerializeToString()
    plan = FaultPlan((parse_fault("act[0,*,1]:bitflip:14"), parse_fault("X[*,2,*]:value=1"),
                      parse_fault("W[2,3]:stuck-at-1:15"), parse_fault("Y[1,1,1]:stuck-at-0:0")))
    res = inject(model, plan)
    assert model.SerializeToString() == before, "inject must not modify its input"
    m = res.model
    onnx.checker.check_model(m, full_check=True)
    assert 10 <= m.ir_version <= 13
    opsets = {o.domain: o.version for o in m.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) <= 26
    meta = _meta(m)
    assert meta["enpheeph.faults"] == plan.dumps()
    assert FaultPlan.from_json(json.loads(meta["enpheeph.faults"])) == plan
    assert meta["enpheeph.source_sha256"] == hashlib.sha256(
        model.SerializeToString(deterministic=True)).hexdigest() == res.source_sha256
    assert meta["enpheeph.version"] == enpheeph_onnx.__version__
    assert res.plan == plan
    assert all(n.startswith("enpheeph/") for n in res.nodes) and len(res.nodes) == 3
    graph_names = {n.name for n in m.graph.node}
    assert set(res.nodes) <= graph_names
    assert {f.domain for f in m.functions} == {"enpheeph"}
    # graph interface unchanged
    assert [i.name for i in m.graph.input] == ["X"]
    assert [o.name for o in m.graph.output] == ["Y", "WY"]
    again = inject(model, plan).model
    assert again.SerializeToString() == m.SerializeToString()
    assert inject(model, plan).model.SerializeToString(deterministic=True) == \
        m.SerializeToString(deterministic=True)


def test_inject_from_path_records_file_hash(tmp_path: Path) -> None:
    model = chain_model("int8")
    p = tmp_path / "m.onnx"
    onnx.save_model(model, str(p))
    res = inject(p, [parse_fault("act[*,0,0]:bitflip:7")])
    assert _meta(res.model)["enpheeph.source_sha256"] == hashlib.sha256(
        p.read_bytes()).hexdigest()
    x = np.arange(24, dtype=np.int8).reshape(2, *X_TAIL)
    out = run(res.model, {"X": x})["Y"]
    want = x.copy()
    want[:, 0, 0] ^= np.int8(-128)
    assert out.tolist() == want.tolist()
    saved = tmp_path / "faulty.onnx"
    res.save(saved)
    assert onnx.load(str(saved)).SerializeToString() == res.model.SerializeToString()


def test_constant_node_weight() -> None:
    w = np.arange(12, dtype=np.float32).reshape(W_SHAPE) / 8
    model = chain_model("float32", w.view(np.uint32), constant=True)
    kinds = {s.name: s.source for s in discover_sites(model)}
    assert kinds["W"] == "constant"
    res = inject(model, [parse_fault("W[1,2]:bitflip:30")])
    assert res.nodes == ()
    assert [n.op_type for n in res.model.graph.node] == [n.op_type for n in model.graph.node]
    assert len(res.model.graph.initializer) == 0
    const = next(n for n in res.model.graph.node if n.op_type == "Constant")
    stored = numpy_helper.to_array(const.attribute[0].t)
    out = run(res.model, {"X": np.zeros((1, *X_TAIL), np.float32)})["WY"].view(np.float32)
    assert_bits_equal(stored, out)
    diff = np.argwhere(as_bits(out) != as_bits(w))
    assert diff.tolist() == [[1, 2]]
    assert as_bits(out)[1, 2] == as_bits(w)[1, 2] ^ (1 << 30)
    assert res.weights[0].site == "W" and res.weights[0].elements_changed == 1


def test_low_opset_model_is_converted() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["r"], name="relu"),
         helper.make_node("Identity", ["r"], ["Y"], name="id")],
        "relu17",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    x = np.array([[-1.0, 2.0, -3.0, 4.0], [5.0, -6.0, 7.0, -8.0]], dtype=np.float32)
    res = inject(model, [parse_fault("r[*,1]:value=-7"), parse_fault("r[1,2]:bitflip:31")])
    assert res.converted_from_opset == 17
    opsets = {o.domain: o.version for o in res.model.opset_import}
    assert opsets[""] == 26 and 10 <= res.model.ir_version <= 13
    out = run(res.model, {"X": x})["Y"]
    assert out.tolist() == [[0.0, -7.0, 0.0, 4.0], [5.0, -7.0, -7.0, 0.0]]
    # a weight-only plan needs no conversion
    assert inject(model, []).converted_from_opset is None


def test_opset_above_26_is_refused() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 27)], ir_version=10)
    with pytest.raises(EnpheephError, match="opset"):
        inject(model, [parse_fault("Y[0]:bitflip:1")])


@pytest.mark.parametrize(
    ("expr", "match"),
    [
        ("nope[0,0,0]:bitflip:1", "unknown fault site"),
        ("ac[0,0,0]:bitflip:1", "did you mean 'act'"),
        ("act[0,0]:bitflip:1", "rank"),
        ("act[0,0,0,0]:bitflip:1", "rank"),
        ("act[0,3,0]:bitflip:1", "out of range"),
        ("act[*,0,4]:bitflip:1", "out of range"),
        ("W[3,0]:bitflip:1", "out of range"),
        ("W[0,0]:bitflip:8", "beyond"),
        ("act[0,0,0]:stuck-at-1:0-8", "beyond"),
        ("W[0,0]:value=300", "does not fit"),
        ("act[0,0,0]:value=-129", "does not fit"),
        ("X[0,0,0]:value=0.5", "does not fit"),
    ],
)
def test_invalid_faults_int8(expr: str, match: str) -> None:
    with pytest.raises(EnpheephError, match=match):
        inject(chain_model("int8"), [parse_fault(expr)])


@pytest.mark.parametrize("expr", ["W[0,0]:bitflip:32", "act[0,0,0]:stuck-at-0:31-32",
                                  "W[0]:bitflip:1", "act[*,*,*,*]:bitflip:1"])
def test_invalid_faults_float32(expr: str) -> None:
    with pytest.raises(EnpheephError):
        inject(chain_model("float32"), [parse_fault("act[0,0,0]:bitflip:0"), parse_fault(expr)])


def test_rank0_activation_inject() -> None:
    """Regression: a 0-d mask must stay 0-d (np.ascontiguousarray made it shape (1,))."""
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    sites = {s.name: s.shape for s in discover_sites(scalar_model())}
    assert sites["s"] == ()
    res = inject(scalar_model(), [parse_fault("s[]:bitflip:31"), parse_fault("Y[]:value=2.5")])
    assert run(res.model, {"X": x})["Y"].tolist() == 2.5
    res = inject(scalar_model(), [parse_fault("s[]:bitflip:31")])
    out = run(res.model, {"X": x})["Y"]
    assert out.shape == () and out.tolist() == -6.0


def test_reinject_same_site() -> None:
    """Regression: re-injecting a faulty model on the same site must not clash names."""
    model = chain_model("float32")
    first = parse_fault("act[*,0,0]:bitflip:31")
    second = parse_fault("act[*,0,1]:bitflip:31")
    x = np.ones((1, *X_TAIL), dtype=np.float32)
    try:
        res = inject(inject(model, [first]).model, [second])
    except EnpheephError:
        return  # refusing is fine too
    want = apply_faults(x, [first, second], BY_NAME["float32"])
    assert_bits_equal(run(res.model, {"X": x})["Y"], want)


def test_reinject_other_site() -> None:
    model = chain_model("float32")
    x = np.ones((1, *X_TAIL), dtype=np.float32)
    faults = [parse_fault("act[*,0,0]:bitflip:31"), parse_fault("Y[*,0,1]:bitflip:31"),
              parse_fault("W[0,0]:bitflip:31")]
    res = inject(inject(model, faults[:1]).model, faults[1:])
    out = run(res.model, {"X": x})
    want = chain_reference("float32", x.view(np.uint32),
                           np.arange(12, dtype=np.uint32).reshape(W_SHAPE), faults)
    assert_bits_equal(out["Y"], want["Y"])
    assert_bits_equal(out["WY"], want["WY"])


def test_inject_rejects_bad_model() -> None:
    with pytest.raises(EnpheephError, match="not found"):
        inject("/nonexistent/model.onnx", [])


# -- fault sets ----------------------------------------------------------------------------

def test_inject_a_fault_set_equals_inject_of_the_same_faults() -> None:
    proto = load_model(MODEL)
    cfg = CampaignConfig(faults_per_trial=20_000, bits=tuple(range(31)), trials=4)
    sites = select_sites(discover_sites(proto), cfg)
    fs = Sampler(sites, cfg, 1).sample(3)
    ranks = {s.name: len(s.shape) for s in sites}
    a = inject(proto, fs)
    b = inject(proto, FaultPlan(fs.to_faults(ranks)))
    ta = {t.name: t.raw_data for t in a.model.graph.initializer}
    tb = {t.name: t.raw_data for t in b.model.graph.initializer}
    assert ta == tb and ta != {t.name: t.raw_data for t in proto.graph.initializer}
    meta = {p.key: p.value for p in a.model.metadata_props}
    assert json.loads(meta["enpheeph.faults"]) == {"count": 20_000}
    assert len(meta["enpheeph.faults_sha256"]) == 64
    assert sum(w.faults for w in a.weights) == 20_000


def test_many_alternating_per_sample_runs_bit_exact() -> None:
    """Regression: 400 runs of faults on alternating images (one fault node each, a chain of
    2,000 nodes) overflowed the Python stack in graphsurgeon's recursive toposort; the chain
    now goes right after the site's producer, and stays bit-exact."""
    plan = [Fault("act", (i % 2, (i // 2) % 3, (i // 6) % 4), FaultModel.BIT_FLIP, (i % 32,))
            for i in range(400)]
    x_bits = np.random.default_rng(0).integers(0, 2**32, size=(2, *X_TAIL),
                                               dtype=np.uint64).astype(np.uint32)
    w_bits = np.arange(12, dtype=np.uint32).reshape(W_SHAPE)
    res = inject(chain_model("float32", w_bits), plan)
    assert len(res.nodes) == 400
    want = chain_reference("float32", x_bits, w_bits, plan)
    out = run(res.model, {"X": x_bits.view(np.float32)})
    for name in ("Y", "WY"):
        assert_bits_equal(out[name], want[name], name)


@pytest.mark.parametrize("model", [FaultModel.BIT_FLIP, FaultModel.STUCK_AT_0,
                                   FaultModel.STUCK_AT_1, FaultModel.VALUE])
def test_large_activation_fault_set_equals_the_engine(model: FaultModel) -> None:
    """100,000 activation and input faults on every site of the digits CNN, with many
    elements hit several times (folded into dense masks, vectorized): bit for bit what the
    campaign engine computes for the same fault set."""
    from enpheeph_onnx.campaign import ValueDistribution

    proto = load_model(MODEL)
    cfg = CampaignConfig(selection=SiteSelection(kinds=(SiteKind.ACTIVATION, SiteKind.INPUT)),
                         fault_model=model, faults_per_trial=100_000, trials=1,
                         value=ValueDistribution.parse("normal:0,4")
                         if model is FaultModel.VALUE else None, bits=tuple(range(32)))
    sites = select_sites(discover_sites(proto), cfg)
    fs = Sampler(sites, cfg, 1).sample(0)
    res = inject(proto, fs)
    assert len(res.nodes) == len(fs.hit_sites())  # one run per site: one dense node each
    with np.load(ROOT / "models" / "digits_test.npz") as z:
        x = z["input"][:64]
    want = FaultEngine(proto, sites).run({"input": x}, fs)["logits"]
    assert_bits_equal(run(res.model, {"input": x})["logits"], want, str(model))


# -- the shipped digits CNN ----------------------------------------------------------------

def test_digits_weight_fault_changes_exactly_one_element(
        model_path: Path, digits: dict[str, np.ndarray]) -> None:
    model = load_model(model_path)
    fault = parse_fault("conv1.weight[0,0,1,1]:bitflip:30")
    res = inject(model_path, [fault])
    old = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert old.keys() == new.keys()
    for name in old:
        if name != "conv1.weight":
            assert_bits_equal(new[name], old[name], name)
    diff = np.argwhere(as_bits(new["conv1.weight"]) != as_bits(old["conv1.weight"]))
    assert diff.tolist() == [[0, 0, 1, 1]]
    want = apply_faults(old["conv1.weight"], [fault], BY_NAME["float32"])
    assert_bits_equal(new["conv1.weight"], want)
    assert as_bits(new["conv1.weight"])[0, 0, 1, 1] == as_bits(old["conv1.weight"])[
        0, 0, 1, 1] ^ (1 << 30)
    assert res.weights[0].elements_changed == 1 and res.nodes == ()
    assert len(res.model.graph.node) == len(model.graph.node)

    # the faulty model runs; the run-time engine gives the same logits bit for bit
    x = digits["input"][:64]
    golden = run(model, {"input": x})["logits"]
    faulty = run(res.model, {"input": x})["logits"]
    assert not np.array_equal(as_bits(golden), as_bits(faulty))
    sites = [s for s in discover_sites(model)
             if s.name in ("conv1.weight", "/relu1/Relu_output_0")]
    engine = FaultEngine(model, sites)
    assert_bits_equal(engine.run({"input": x})["logits"], golden, "engine golden")
    assert_bits_equal(engine.run({"input": x}, [fault])["logits"], faulty, "engine weight")
    act = parse_fault("/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30")
    act_model = inject(model, [act]).model
    assert_bits_equal(engine.run({"input": x}, [act], batch_size=16)["logits"],
                      run(act_model, {"input": x})["logits"], "engine activation")


# -- int8 weight faults on the shipped int8 model ------------------------------------------

def _negative_index(name: str) -> tuple[int, ...]:
    w = weight_value(int8_model(), name)
    return tuple(int(i) for i in np.argwhere(w < 0)[0])


@pytest.mark.parametrize("fault", [
    Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,)),
    Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (0,)),
    Fault(CONV1_W, (2, 0, 0, 1), FaultModel.BIT_FLIP, (7,)),
    Fault(CONV1_W, (15, 0, 2, 2), FaultModel.BIT_FLIP, (0, 3, 6)),
    Fault(CONV2_W, (0, 0, 0, 0), FaultModel.STUCK_AT_1, (7,)),
    Fault(CONV2_W, (31, 15, 2, 2), FaultModel.STUCK_AT_1, (0, 1, 2, 3, 4, 5)),
    Fault("fc1.weight_quantized", (7, 100), FaultModel.VALUE, value=-128),
], ids=str)
def test_int8_weight_fault_is_exact(fault: Fault, digits: dict[str, np.ndarray]) -> None:
    m = int8_model()
    res = inject(m, [fault])
    before = weight_value(m, fault.site)
    after = weight_value(res.model, fault.site)
    want = apply_faults(before, [fault], INT8)
    assert_same_bits(after, want, str(fault))
    assert res.weights[0].elements_changed == int(np.count_nonzero(before != want))
    assert res.nodes == ()  # weight faults add no node
    x = digits["input"]
    got = run_input(res.model, x)[0]
    assert_same_bits(got, run_input(replace_weight(m, fault.site, want), x)[0], str(fault))


def test_int8_stuck_at_0_on_the_sign_bit(digits: dict[str, np.ndarray]) -> None:
    idx = _negative_index(CONV2_W)
    f = Fault(CONV2_W, idx, FaultModel.STUCK_AT_0, (7,))
    m = int8_model()
    res = inject(m, [f])
    before, after = weight_value(m, CONV2_W), weight_value(res.model, CONV2_W)
    assert int(after[idx]) == int(before[idx]) + 128  # two's complement: sign bit cleared
    assert res.weights[0].elements_changed == 1
    want = apply_faults(before, [f], INT8)
    assert_same_bits(after, want)
    x = digits["input"][:64]
    assert_same_bits(run_input(res.model, x)[0], run_input(replace_weight(m, CONV2_W, want), x)[0])


# -- int8 activation faults (between QuantizeLinear and DequantizeLinear) ------------------

def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the int8 tensors ``names``."""
    m = copy_model(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.INT8, None)
                          for n in names)
    return m


def check_activation_faults(faults: list[Fault], x: np.ndarray) -> np.ndarray:
    """Inject, fetch the site's int8 tensor before and after the fault node, compare with
    ``apply_faults``; returns the faulty logits."""
    site = faults[0].site
    res = inject(int8_model(), faults)
    assert len(res.nodes) >= 1
    pre = f"enpheeph/{site}/in"  # the fault node's input: the QuantizeLinear output
    logits, golden, faulty = run_input(with_outputs(res.model, [pre, site]), x)
    assert golden.dtype == np.int8 and faulty.dtype == np.int8
    # the untouched QuantizeLinear output equals the original model's
    orig = run_input(with_outputs(int8_model(), [site]), x)[1]
    assert_same_bits(golden, orig, "golden int8 activation")
    assert_same_bits(faulty, apply_faults(golden, faults, INT8), str(faults))
    # fetching tensors does not change the faulty model's outputs
    assert_same_bits(logits, run_input(res.model, x)[0], "logits")
    return logits


@pytest.mark.parametrize("fault", [
    Fault(RELU2_Q, (None, 3, 2, 1), FaultModel.BIT_FLIP, (7,)),
    Fault(RELU2_Q, (5, 3, 2, 1), FaultModel.BIT_FLIP, (0,)),
    Fault("input_QuantizeLinear_Output", (None, 0, 4, 4), FaultModel.STUCK_AT_1, (6, 7)),
    Fault("/relu3/Relu_output_0_QuantizeLinear_Output", (None, 10), FaultModel.STUCK_AT_0,
          (0, 1, 2, 3, 4, 5, 6, 7)),
], ids=str)
def test_int8_activation_fault_is_exact(fault: Fault, digits: dict[str, np.ndarray]) -> None:
    logits = check_activation_faults([fault], digits["input"][:16])
    golden = run_input(int8_model(), digits["input"][:16])[0]
    if fault.model is FaultModel.BIT_FLIP and fault.bits == (7,):
        assert not np.array_equal(logits, golden)  # a sign flip of a ReLU output shows


def _int8_activation_sites() -> list[str]:
    return [n.output[0] for n in int8_model().graph.node if n.op_type == "QuantizeLinear"]


@st.composite
def int8_activation_faults(draw: st.DrawFn) -> list[Fault]:
    site = int8_sites()[draw(st.sampled_from(_int8_activation_sites()))]
    out = []
    for _ in range(draw(st.integers(1, 3))):
        index = tuple(
            draw(st.one_of(st.none(), st.integers(0, 5))) if not isinstance(n, int)
            else draw(st.integers(0, n - 1)) for n in site.shape)
        model = draw(st.sampled_from([FaultModel.BIT_FLIP, FaultModel.STUCK_AT_0,
                                      FaultModel.STUCK_AT_1]))
        bits = draw(st.sets(st.integers(0, 7), min_size=1, max_size=3))
        out.append(Fault(site.name, index, model, tuple(sorted(bits))))
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faults=int8_activation_faults())
def test_int8_activation_faults_hypothesis(faults: list[Fault]) -> None:
    with np.load(ROOT / "models" / "digits_test.npz") as z:
        x = z["input"][:6]
    check_activation_faults(faults, x)


# -- the shipped spiking model: time-step states -------------------------------------------

def test_time_step_state_fault_changes_only_later_outputs() -> None:
    data = np.load(SNN_DATA)
    from enpheeph_onnx.runtime import make_session

    x = data["input"][:40]
    golden = make_session(load_model(SNN_MODEL)).run(None, {"input": x})[0]
    late = inject(SNN_MODEL, [parse_fault("lif2.membrane@15[*,0]:stuck-at-1:30")]).model
    out = make_session(late).run(None, {"input": x})[0]
    # a stuck membrane at the last step changes at most that step's spike of class 0
    # (bit 30 set: a huge positive membrane spikes, a huge negative one cannot)
    assert set(np.unique(out[:, 0] - golden[:, 0])) <= {-1.0, 0.0, 1.0}
    assert (out[:, 1:] == golden[:, 1:]).all() and (out != golden).any()
