"""enpheeph_onnx.engine (``FaultEngine``, the run-time path): golden runs equal the
unmodified model, faulty runs equal ``inject`` and the numpy reference bit for bit (chain
models, the digits CNN, the shipped int8 model), fault sets and Fault lists alike, and the
per-site-set session variants it caches."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enpheeph_onnx import (
    Fault,
    FaultModel,
    SiteKind,
    apply_faults,
    discover_sites,
    inject,
    load_model,
    parse_fault,
)
from enpheeph_onnx.bits import BY_NAME
from enpheeph_onnx.engine import FaultEngine
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faultset import FaultSet
from enpheeph_onnx.runtime import make_session

from .conftest import MODEL
from .helpers import (
    CONV1_W,
    CONV2_W,
    INT8,
    RELU2_Q,
    W_SHAPE,
    X_TAIL,
    assert_bits_equal,
    assert_same_bits,
    chain_faults,
    chain_model,
    chain_reference,
    feed_array,
    int8_model,
    int8_sites,
    raw_bits,
    run,
    run_input,
    scalar_model,
    weight_value,
)


@pytest.fixture(scope="module")
def engine(model_path: Path) -> FaultEngine:
    m = load_model(model_path)
    return FaultEngine(m, discover_sites(m))


# -- the digits CNN ------------------------------------------------------------------------

def test_golden_run_equals_unmodified_model(engine: FaultEngine, model_path: Path,
                                            digits: dict[str, np.ndarray]) -> None:
    x = {"input": digits["input"]}
    ref = make_session(load_model(model_path)).run(None, x)[0]
    for bs in (360, 100, 7):
        assert engine.run(x, (), bs)["logits"].tobytes() == ref.tobytes()
    acc = np.mean(np.argmax(ref, 1) == digits["labels"])
    assert acc == pytest.approx(359 / 360)


@pytest.mark.parametrize("faults", [
    ["conv1.weight[0,0,1,1]:bitflip:30"],
    ["fc1.bias[3]:stuck-at-0:0-31", "fc1.bias[3]:stuck-at-1:30"],
    ["/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30", "/relu1/Relu_output_0[1,3,2,2]:bitflip:31"],
    ["input[202,0,1,1]:bitflip:30", "logits[*,3]:value=100"],
    ["/conv2/Conv_output_0[*,5,1,1]:bitflip:30", "/conv2/Conv_output_0[*,5,1,1]:bitflip:30"],
    ["/fc1/Gemm_output_0[*,7]:bitflip:22", "/fc1/Gemm_output_0[17,7]:stuck-at-0:22",
     "/fc1/Gemm_output_0[*,7]:value=nan"],
])
def test_engine_equals_inject_bit_for_bit(engine: FaultEngine, model_path: Path,
                                          digits: dict[str, np.ndarray],
                                          faults: list[str]) -> None:
    fs = [parse_fault(f) for f in faults]
    x = {"input": digits["input"]}
    fed = engine.run(x, fs, batch_size=100)["logits"]
    standalone = make_session(inject(model_path, fs).model).run(None, x)[0]
    assert fed.view(np.uint32).tolist() == standalone.view(np.uint32).tolist()
    golden = engine.run(x)["logits"]
    if faults[0].startswith("/conv2") :  # the same flip twice cancels out
        assert fed.tobytes() == golden.tobytes()
    else:
        assert fed.tobytes() != golden.tobytes()


def test_session_variants_agree_with_full_instrumentation(model_path: Path,
                                                          digits: dict[str, np.ndarray]) -> None:
    m = load_model(model_path)
    acts = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    x = {"input": digits["input"]}
    cached = FaultEngine(m, acts, max_variants=16, suffix=False)
    full_only = FaultEngine(m, acts, max_variants=0, suffix=False)
    suffixed = FaultEngine(m, acts, max_variants=16, suffix_worth=float("inf"))
    plans = [[parse_fault("/relu1/Relu_output_0[*,3,2,2]:bitflip:30")],
             [parse_fault("/conv2/Conv_output_0[*,1,1,1]:bitflip:29"),
              parse_fault("/fc1/Gemm_output_0[*,5]:stuck-at-1:30")],
             [parse_fault("logits[*,2]:bitflip:31")]]
    golden = cached.run(x)["logits"]
    for faults in [*plans, *plans]:  # a set of hit sites gets its session when it recurs
        a = cached.run(x, faults, 100)["logits"]
        b = full_only.run(x, faults, 100)["logits"]
        c = suffixed.run(x, faults, 100)["logits"]
        assert a.tobytes() == b.tobytes() == c.tobytes()
        assert suffixed.reference(x, faults, 100)["logits"].tobytes() == golden.tobytes()
        assert cached.reference(x, faults, 100)["logits"].tobytes() == golden.tobytes()
        assert full_only.reference(x, faults, 100)["logits"].tobytes() == golden.tobytes()
    # one session per distinct set of hit sites, plus the base (weights only)
    assert len(cached._variants) == 2 + len(plans)  # + the full one for first sightings
    assert set(full_only._variants) == {(0, frozenset()), (0, frozenset(s.name for s in acts))}
    # the suffix engine served every trial from its segment chain (host-side faults, no
    # instrumented session), from the golden tensors at the trial's first hit boundary
    chain = suffixed._chain
    assert chain is not None and set(suffixed._variants) == {(0, frozenset())}
    assert suffixed.cache_bytes == chain.cache_bytes > 0
    assert {k[0] for k in chain._spans} >= {chain.cut["/relu1/Relu_output_0"],
                                            chain.cut["logits"]} - {chain.end}


def test_run_and_reference_use_the_same_session(model_path: Path,
                                                digits: dict[str, np.ndarray]) -> None:
    m = load_model(model_path)
    acts = [s for s in discover_sites(m) if s.kind is SiteKind.ACTIVATION]
    e = FaultEngine(m, acts, suffix=False)  # instrumented sessions (no segment chain)
    x = {"input": digits["input"]}
    faults = [parse_fault("/relu1/Relu_output_0[*,1,1,1]:stuck-at-0:31")]
    e.run(x, faults)
    e.reference(x, faults)
    # first sighting: both on the whole model instrumented everywhere, no cut yet
    everywhere = frozenset(s.name for s in acts)
    assert set(e._variants) == {(0, frozenset()), (0, everywhere)}
    # second: the hit set came back: a session instrumented at relu1 only, used by both
    e.run(x, faults)
    e.reference(x, faults)
    one = frozenset({"/relu1/Relu_output_0"})
    assert set(e._variants) == {(0, frozenset()), (0, everywhere), (0, one)}


def test_engine_takes_fault_sets_and_fault_objects_alike(digits: dict[str, np.ndarray]) -> None:
    proto = load_model(MODEL)
    sites = [s for s in discover_sites(proto) if s.name in ("conv2.weight", "/relu1/Relu_output_0")]
    engine = FaultEngine(proto, sites)
    faults = [parse_fault("conv2.weight[3,1,0,2]:bitflip:30"),
              parse_fault("/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:30"),
              parse_fault("conv2.weight[3,1,0,2]:bitflip:30,2")]
    x = {"input": digits["input"][:64]}
    a = engine.run(x, faults)["logits"]
    b = engine.run(x, FaultSet.from_faults(faults))["logits"]
    assert a.tobytes() == b.tobytes()
    standalone = make_session(inject(proto, faults).model).run(None, x)[0]
    assert standalone.tobytes() == a.tobytes()
    with pytest.raises(EnpheephError, match="not one of the sites"):
        engine.run(x, [parse_fault("fc1.weight[0,0]:bitflip:1")])


# -- chain models: against inject and the reference ----------------------------------------

@functools.cache
def engine_for(dtype: str, constant: bool) -> tuple[FaultEngine, np.ndarray]:
    d = BY_NAME[dtype]
    rng = np.random.default_rng(11)
    w_bits = rng.integers(0, d.all_ones, size=W_SHAPE, dtype=np.uint64,
                          endpoint=True).astype(d.container)
    model = chain_model(dtype, w_bits, constant)
    return FaultEngine(model, discover_sites(model)), w_bits


@pytest.mark.parametrize(("dtype", "constant"), [("float32", False), ("int8", True),
                                                 ("uint8", False), ("bfloat16", False)])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_engine_matches_inject(dtype: str, constant: bool, data: st.DataObject) -> None:
    engine, w_bits = engine_for(dtype, constant)
    d = BY_NAME[dtype]
    n = data.draw(st.integers(1, 3), label="batch")
    x_bits = data.draw(raw_bits(d, (n, *X_TAIL)), label="x_bits")
    faults = data.draw(chain_faults(dtype), label="faults")
    feed = {"X": feed_array(dtype, x_bits)}
    want = chain_reference(dtype, x_bits, w_bits, faults)
    got = engine.run(feed, faults)
    for name in ("Y", "WY"):
        assert_bits_equal(got[name], want[name], f"engine {name}")
    batch_size = data.draw(st.sampled_from([1, 2]), label="batch_size")
    got_b = engine.run(feed, faults, batch_size=batch_size)
    assert_bits_equal(got_b["Y"], want["Y"], f"engine Y, batch_size={batch_size}")
    if dtype in ("float32", "int8"):
        model = chain_model(dtype, w_bits, constant)
        out = run(inject(model, faults).model, feed)
        for name in ("Y", "WY"):
            assert_bits_equal(out[name], got[name], f"inject vs engine {name}")


def test_engine_bfloat16_weight_fault() -> None:
    """Regression: perturbed bfloat16 weights must reach onnxruntime (its Python API takes
    bfloat16 only as an OrtValue, not as an ml_dtypes array)."""
    engine, w_bits = engine_for("bfloat16", False)
    x = np.zeros((1, *X_TAIL), np.uint16)
    fault = parse_fault("W[0,1]:bitflip:15")
    got = engine.run({"X": x}, [fault])["WY"]
    want = w_bits.copy()
    want[0, 1] ^= 0x8000
    assert_bits_equal(got, want)


def test_engine_golden_and_double_flip() -> None:
    engine, w_bits = engine_for("float32", False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, *X_TAIL)).astype(np.float32)
    golden = engine.run({"X": x})
    assert_bits_equal(golden["Y"], x)
    assert_bits_equal(golden["WY"], w_bits)
    flip_a = parse_fault("act[2,*,1]:bitflip:5,30")
    flip_w = parse_fault("W[*,3]:bitflip:0,31")
    other = parse_fault("act[0,0,0]:stuck-at-1:0")
    out = engine.run({"X": x}, [flip_a, flip_w, other, flip_w, flip_a])
    want = x.copy()
    want.view(np.uint32)[0, 0, 0] |= 1
    assert_bits_equal(out["Y"], want)
    assert_bits_equal(out["WY"], w_bits)
    assert_bits_equal(engine.run({"X": x}, [])["Y"], x)  # nothing left over between runs


def test_rank0_activation_engine() -> None:
    """Regression: rank-0 sites must not break the campaign model (GatherND needs rank 1)."""
    model = scalar_model()
    engine = FaultEngine(model, discover_sites(model))
    x = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert engine.run({"X": x}, [parse_fault("s[]:bitflip:31")])["Y"].tolist() == -6.0


# -- the shipped int8 model ----------------------------------------------------------------

@pytest.mark.parametrize("faults", [
    [Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,))],
    [Fault(CONV1_W, (4, 0, 1, 1), FaultModel.STUCK_AT_1, (6,)),
     Fault(CONV1_W, (4, 0, 1, 1), FaultModel.BIT_FLIP, (0,))],
    [Fault(RELU2_Q, (None, 3, 2, 1), FaultModel.BIT_FLIP, (7,))],
    [Fault(RELU2_Q, (7, 5, 1, 1), FaultModel.BIT_FLIP, (6,))],
    [Fault(CONV2_W, (1, 2, 0, 0), FaultModel.BIT_FLIP, (6,)),
     Fault(RELU2_Q, (None, 31, 3, 3), FaultModel.BIT_FLIP, (7,))],
], ids=lambda fs: " ".join(str(f) for f in fs))
def test_engine_equals_inject_on_int8(faults: list[Fault], digits: dict[str, np.ndarray]
                                      ) -> None:
    m = int8_model()
    sites = int8_sites()
    engine = FaultEngine(m, [sites[CONV1_W], sites[CONV2_W], sites[RELU2_Q]])
    data = {"input": digits["input"][:100]}
    golden = run_input(m, data["input"])[0]
    assert_same_bits(engine.run(data)["logits"], golden, "engine golden")
    assert_same_bits(engine.reference(data, faults)["logits"], golden, "engine reference")
    want = run_input(inject(m, faults).model, data["input"])[0]
    assert_same_bits(engine.run(data, faults, batch_size=32)["logits"], want,
                      " ".join(map(str, faults)))
    assert not np.array_equal(want, golden)


def test_engine_equals_inject_with_every_int8_weight_site(digits: dict[str, np.ndarray]
                                                          ) -> None:
    m = int8_model()
    engine = FaultEngine(m, [s for s in int8_sites().values() if s.kind is SiteKind.WEIGHT])
    data = {"input": digits["input"][:100]}
    faults = [Fault(CONV1_W, (0, 0, 0, 1), FaultModel.BIT_FLIP, (6,))]
    want = run_input(inject(m, faults).model, data["input"])[0]
    assert_same_bits(engine.run(data, faults)["logits"], want)


def test_engine_int8_weight_feed_is_the_numpy_reference() -> None:
    sites = int8_sites()
    engine = FaultEngine(int8_model(), [sites[CONV2_W]])
    faults = [Fault(CONV2_W, (3, 5, 1, 1), FaultModel.BIT_FLIP, (7,)),
              Fault(CONV2_W, (None, 0, 0, 0), FaultModel.STUCK_AT_0, (7,))]
    feed = engine.weight_feeds(faults)[CONV2_W]
    assert_same_bits(feed, apply_faults(weight_value(int8_model(), CONV2_W), faults, INT8))


# -- suffix re-execution ------------------------------------------------------------------

def _one_fault_per_site(sites: list, rng: np.random.Generator, bit: int) -> list[Fault]:
    out = []
    for s in sites:
        d = BY_NAME[s.dtype]
        idx = tuple(None if not isinstance(n, int) else int(rng.integers(0, n))
                    for n in s.shape)
        out.append(Fault(s.name, idx, FaultModel.BIT_FLIP, (min(bit, d.bits - 1),)))
    return out


@pytest.mark.parametrize("path", ["digits_cnn.onnx", "digits_cnn_int8.onnx",
                                  "digits_cnn_pruned.onnx"])
def test_suffix_runs_equal_full_runs_at_every_site(path: str, digits: dict[str, np.ndarray]
                                                   ) -> None:
    """A fault at any site (every weight and activation of the shipped CNNs), run on the
    suffix from that site on, gives the full run's bits, and the standalone injected
    model's."""
    from .conftest import MODELS

    m = load_model(MODELS / path)
    sites = [s for s in discover_sites(m) if s.static_elements > 0]
    with_suffix = FaultEngine(m, sites, suffix_worth=float("inf"))  # keep every cut
    without = FaultEngine(m, sites, suffix=False)
    x = {"input": digits["input"][:120]}
    rng = np.random.default_rng(0)
    for f in _one_fault_per_site(sites, rng, 30):
        b = without.run(x, [f], 50)["logits"]
        for _ in range(2):  # a cut is built when it comes back
            a = with_suffix.run(x, [f], 50)["logits"]
            assert a.tobytes() == b.tobytes(), str(f)
            ref_a = with_suffix.reference(x, [f], 50)["logits"]
            assert ref_a.tobytes() == without.reference(x, [f], 50)["logits"].tobytes()
    # weight trials ran on verified weight cuts, activation trials on the segment chain
    assert with_suffix.suffix and len(with_suffix._verified) >= 3
    assert not with_suffix._bad_cuts
    chain = with_suffix._chain
    assert chain is not None and not chain._unroutable
    assert len({k[0] for k in chain._spans}) >= 5  # a suffix from every activation boundary
    f = _one_fault_per_site([s for s in sites if s.kind is SiteKind.WEIGHT][-1:], rng, 30)
    want = make_session(inject(m, f).model).run(None, x)[0]
    assert with_suffix.run(x, f, 50)["logits"].tobytes() == want.tobytes()


def test_suffix_on_the_spiking_model_at_every_time_step(snn_model: onnx.ModelProto) -> None:
    from .conftest import SNN_DATA

    with np.load(SNN_DATA) as z:
        x = {"input": z["input"][:64]}
    sites = [s for s in discover_sites(snn_model) if s.time_step is not None
             and s.role == "membrane"]
    assert len({s.time_step for s in sites}) == 16
    with_suffix = FaultEngine(snn_model, sites, suffix_worth=float("inf"))
    without = FaultEngine(snn_model, sites, suffix=False)
    for f in _one_fault_per_site(sites, np.random.default_rng(1), 30):
        b = without.run(x, [f])["spike_counts"]
        for _ in range(2):  # a cut is built when it comes back
            a = with_suffix.run(x, [f])["spike_counts"]
            assert a.tobytes() == b.tobytes(), str(f)
    chain = with_suffix._chain
    assert chain is not None and not chain._unroutable
    assert len({k[0] for k in chain._spans}) >= 15  # the suffix from every time step


def test_no_suffix_and_the_cache_bound(digits: dict[str, np.ndarray]) -> None:
    m = load_model(MODEL)
    sites = [s for s in discover_sites(m) if s.name in ("fc2.weight", "fc1.weight")]
    x = {"input": digits["input"]}
    f = [parse_fault("fc2.weight[3,4]:bitflip:30")]
    tiny = FaultEngine(m, sites, cache_mb=0.001)  # the cache does not fit: full runs
    full = FaultEngine(m, sites, suffix=False)
    for _ in range(2):
        assert tiny.run(x, f)["logits"].tobytes() == full.run(x, f)["logits"].tobytes()
    assert not tiny.suffix and tiny.cache_bytes == 0
    on = FaultEngine(m, sites, suffix_worth=float("inf"))
    for _ in range(2):
        assert on.run(x, f)["logits"].tobytes() == full.run(x, f)["logits"].tobytes()
    assert on.cache_bytes == 360 * (128 + 64) * 4  # fc1 reads the flatten output, fc2 relu3


def _residual_models() -> dict[str, onnx.ModelProto]:
    """Small graphs that stress cuts: a residual, a weight shared by two layers, a rank-0
    weight, Reshapes with shape inputs, a Constant read late, an input read late (A); a
    graph input passed through as a graph output (D)."""
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    w2 = rng.standard_normal((4, 4)).astype(np.float32)
    f = TensorProto.FLOAT

    def model(nodes: list, inputs: list, outputs: list, inits: list) -> onnx.ModelProto:
        m = h.make_model(h.make_graph(nodes, "g", inputs, outputs, inits),
                         opset_imports=[h.make_opsetid("", 26)], ir_version=10)
        onnx.checker.check_model(m, full_check=True)
        return m

    x = h.make_tensor_value_info("x", f, ["N", 4])
    y = h.make_tensor_value_info("y", f, ["N", 4])
    from onnx import numpy_helper as nh

    a = model([
        h.make_node("Constant", [], ["C"], value=nh.from_array(w2, "C")),
        h.make_node("MatMul", ["x", "W"], ["h0"]), h.make_node("Relu", ["h0"], ["r0"]),
        h.make_node("MatMul", ["r0", "W"], ["h1"]), h.make_node("Mul", ["h1", "alpha"], ["h2"]),
        h.make_node("Reshape", ["h2", "shp"], ["h3"]),
        h.make_node("Reshape", ["h3", "shp2"], ["h4"]), h.make_node("Add", ["h4", "r0"], ["h5"]),
        h.make_node("MatMul", ["h5", "C"], ["h6"]), h.make_node("Add", ["h6", "x"], ["y"]),
    ], [x], [y], [nh.from_array(w, "W"), nh.from_array(np.float32(0.7), "alpha"),
                  nh.from_array(np.array([-1, 2, 2], np.int64), "shp"),
                  nh.from_array(np.array([-1, 4], np.int64), "shp2")])
    z = h.make_tensor_value_info("z", f, ["N", 4])
    d = model([
        h.make_node("MatMul", ["x", "W"], ["h0"]), h.make_node("Sigmoid", ["h0"], ["h1"]),
        h.make_node("Mul", ["h1", "z"], ["h3"]), h.make_node("MatMul", ["h3", "W"], ["y"]),
    ], [x, z], [y, h.make_tensor_value_info("z", f, ["N", 4])], [nh.from_array(w, "W")])
    return {"A": a, "D": d}


def test_suffix_never_changes_a_campaign_on_residual_graphs(tmp_path: Path) -> None:
    """Review cases: chain trials equal ``inject`` + ``run`` bit for bit on a graph where a
    boundary splits a fusion (MatMul * alpha) and the golden reference is the unmodified
    model's; weight cuts give the outcomes of full runs; no crash where a graph input is
    also a graph output (no cut there)."""
    from enpheeph_onnx.campaign import CampaignConfig, Dataset, SiteSelection, run_campaign

    models = _residual_models()
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((23, 4)).astype(np.float32)
    x = {"x": xs}
    sites = [s for s in discover_sites(models["A"]) if s.name in ("h4", "h1")]
    e = FaultEngine(models["A"], sites)
    plain = make_session(models["A"]).run(None, x)[0]
    for spec in (["h4[*,1]:bitflip:1"], ["h1[*,2]:bitflip:0"], ["h1[*,0]:bitflip:30"],
                 ["h1[*,3]:stuck-at-1:22", "h4[*,0]:bitflip:2"]):
        fs = [parse_fault(f) for f in spec]
        for _ in range(2):  # a pair of boundaries gets its own session when it comes back
            got = e.run(x, fs, 23)["y"]
            want = make_session(inject(models["A"], fs).model).run(None, x)[0]
            assert got.tobytes() == want.tobytes(), spec
            assert e.reference(x, fs, 23)["y"].tobytes() == plain.tobytes()
    assert e._chain is not None and set(e._variants) == {(0, frozenset())}
    data = Dataset(x, np.zeros(23, np.int64))
    for seed in (3, 4):
        cfg = CampaignConfig(selection=SiteSelection((SiteKind.WEIGHT,), ("W", "C")),
                             bits=(0, 1, 2), trials=20, seed=seed, batch_size=1)
        runs = [run_campaign(models["A"], data, replace_(cfg, suffix=on)).trials
                for on in (True, False)]
        assert (runs[0].counts == runs[1].counts).all() and (
            runs[0].accuracy == runs[1].accuracy).all()
    d = Dataset({"x": xs, "z": rng.standard_normal((23, 4)).astype(np.float32)},
                np.zeros(23, np.int64))
    cfg = CampaignConfig(selection=SiteSelection((SiteKind.ACTIVATION,), ("y",)), trials=5)
    a = run_campaign(models["D"], d, cfg).trials
    b = run_campaign(models["D"], d, replace_(cfg, suffix=False)).trials
    assert (a.counts == b.counts).all()


def replace_(cfg: object, **kw: object) -> object:
    import dataclasses

    return dataclasses.replace(cfg, **kw)  # type: ignore[type-var]
