"""enpheeph_onnx.faults: the numpy reference ``apply_faults`` and ``Fault.transform`` (exact
bit patterns, index semantics, order, each fault model per bit), fault text parsing and
formatting, FaultPlan JSON round trips and malformed input (pure numpy)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enpheeph_onnx import Fault, FaultModel, FaultPlan, apply_faults, parse_fault
from enpheeph_onnx.bits import BY_NAME, BitTransform, apply_transform
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import format_bits, parse_bits

from .helpers import FAST, as_bits


def one(expr: str, value: float, dtype: str = "float32") -> np.ndarray:
    """``value`` (a 1-element ``dtype`` array) after the fault ``expr`` on ``w[0]``."""
    d = BY_NAME[dtype]
    return apply_faults(np.array([value], dtype=d.numpy), [parse_fault(f"w[0]:{expr}")], d)


# -- the reference: apply_faults, Fault.transform ------------------------------------------

@pytest.mark.parametrize(
    ("value", "expr", "expected", "dtype"),
    [
        (1.0, "bitflip:31", -1.0, "float32"),
        (1.0, "bitflip:30", math.inf, "float32"),
        (1.0, "bitflip:0", 1.0000001192092896, "float32"),
        (-2.5, "stuck-at-1:22", -3.5, "float32"),
        (-2.5, "stuck-at-0:31", 2.5, "float32"),
        (3.0, "bitflip:23,24", 24.0, "float32"),
        (1.0, "bitflip:23-24", 0.125, "float32"),
        (0.5, "bitflip:30", 1.7014118346046923e38, "float32"),
        (1.0, "bitflip:15", -1.0, "float16"),
        (100, "bitflip:7", -28, "int8"),
        # beyond the brief: other widths and models
        (1.0, "bitflip:63", -1.0, "float64"),
        (1.0, "bitflip:15", -1.0, "bfloat16"),
        (1.0, "bitflip:14", math.inf, "bfloat16"),
        (1.0, "stuck-at-1:14", math.inf, "float16"),
        (-1, "stuck-at-0:7", 127, "int8"),
        (200, "bitflip:7", 72, "uint8"),
        (0, "stuck-at-1:31", -(2**31), "int32"),
        (1.0, "value=0.1", 0.1, "float32"),
        (7, "value=-128", -128, "int8"),
    ],
)
def test_reference_values(value: float, expr: str, expected: float, dtype: str) -> None:
    d = BY_NAME[dtype]
    out = one(expr, value, dtype)
    assert out.dtype == d.numpy
    want = np.array([expected], dtype=d.numpy)
    assert as_bits(out)[0] == as_bits(want)[0], (out, want)


def test_reference_exact_bit_patterns() -> None:
    assert as_bits(one("bitflip:0", 1.0))[0] == 0x3F800001
    assert as_bits(one("bitflip:30", 0.5))[0] == 0x7F000000
    assert as_bits(one("value=0.1", 0.0))[0] == 0x3DCCCCCD
    # a value rounds to nearest even in the target type: 1 + 2**-8 is a tie in bfloat16
    assert as_bits(one("value=1.00390625", 0.0, "bfloat16"))[0] == 0x3F80
    assert as_bits(one("value=1.01171875", 0.0, "bfloat16"))[0] == 0x3F82
    assert as_bits(one("value=nan", 0.0))[0] & 0x7F800000 == 0x7F800000
    assert as_bits(one("value=-0.0", 1.0))[0] == 0x80000000
    # -0.0 flip sign -> +0.0; inf flip bit 22 -> quiet NaN
    assert as_bits(one("bitflip:31", -0.0))[0] == 0
    assert as_bits(one("bitflip:22", math.inf))[0] == 0x7FC00000


def test_nan_payload_is_kept() -> None:
    d = BY_NAME["float32"]
    x = np.array([0x7F800001, 0xFFC00005], dtype=np.uint32).view(np.float32)
    out = apply_faults(x, [parse_fault("w[*]:bitflip:1")], d)
    assert as_bits(out).tolist() == [0x7F800003, 0xFFC00007]


def test_apply_faults_index_semantics() -> None:
    d = BY_NAME["int8"]
    x = np.zeros((2, 3), dtype=np.int8)
    out = apply_faults(x, [parse_fault("w[1,*]:stuck-at-1:0")], d)
    assert out.tolist() == [[0, 0, 0], [1, 1, 1]]
    out = apply_faults(x, [parse_fault("w[*,2]:bitflip:1")], d)
    assert out.tolist() == [[0, 0, 2], [0, 0, 2]]
    out = apply_faults(x, [parse_fault("w[0,1]:value=-5")], d)
    assert out.tolist() == [[0, -5, 0], [0, 0, 0]]
    # a coordinate beyond the array: no such element, the fault does not occur
    out = apply_faults(x, [parse_fault("w[5,0]:bitflip:0")], d)
    assert out.tolist() == x.tolist()
    assert not x.any(), "apply_faults must not modify its input"
    with pytest.raises(EnpheephError):
        apply_faults(x, [parse_fault("w[0]:bitflip:0")], d)  # wrong rank


def test_apply_faults_order_matters() -> None:
    d = BY_NAME["float32"]
    x = np.array([1.0], dtype=np.float32)
    a = parse_fault("w[0]:stuck-at-1:0-3")
    b = parse_fault("w[0]:value=2")
    c = parse_fault("w[0]:bitflip:0,31")
    assert as_bits(apply_faults(x, [a, b, c], d))[0] == 0x40000000 ^ 0x80000001
    assert as_bits(apply_faults(x, [c, a, b], d))[0] == 0x40000000
    assert as_bits(apply_faults(x, [b, c, a], d))[0] == (0x40000000 ^ 0x80000001) | 0xF


def test_fault_transform_masks() -> None:
    d = BY_NAME["float16"]
    assert parse_fault("w[0]:bitflip:0,15").transform(d) == BitTransform(0xFFFF, 0, 0x8001, 16)
    assert parse_fault("w[0]:stuck-at-0:0-3").transform(d) == BitTransform(0xFFF0, 0, 0, 16)
    assert parse_fault("w[0]:stuck-at-1:14").transform(d) == BitTransform(0xFFFF, 0x4000, 0, 16)
    assert parse_fault("w[0]:value=1").transform(d) == BitTransform(0, 0x3C00, 0, 16)
    with pytest.raises(EnpheephError, match="beyond"):
        parse_fault("w[0]:bitflip:16").transform(d)
    with pytest.raises(EnpheephError, match="beyond"):
        parse_fault("w[0]:bitflip:8").transform(BY_NAME["int8"])
    with pytest.raises(EnpheephError, match="beyond"):
        parse_fault("w[0]:stuck-at-1:32").transform(BY_NAME["float32"])
    parse_fault("w[0]:bitflip:63").transform(BY_NAME["float64"])  # within width


@FAST
@given(st.sampled_from(["float32", "float16", "bfloat16", "float64", "int8", "uint8",
                        "int16", "uint16", "int32", "uint32"]), st.data())
def test_fault_models_per_bit(dtype: str, data: st.DataObject) -> None:
    """Each model does exactly its job on the selected bits and leaves the others alone."""
    d = BY_NAME[dtype]
    bits = data.draw(st.sets(st.integers(0, d.bits - 1), min_size=1, max_size=d.bits))
    u = np.array(data.draw(st.lists(st.integers(0, d.all_ones), min_size=4, max_size=4)),
                 dtype=np.uint64).astype(d.container)
    x = u.view(d.numpy)
    m = sum(1 << b for b in bits)
    spec = format_bits(sorted(bits))
    got = {
        name: as_bits(apply_faults(x, [parse_fault(f"w[*]:{name}:{spec}")], d)).astype(np.uint64)
        for name in ("bitflip", "stuck-at-0", "stuck-at-1")
    }
    u64 = u.astype(np.uint64)
    assert got["bitflip"].tolist() == (u64 ^ np.uint64(m)).tolist()
    assert got["stuck-at-0"].tolist() == (u64 & np.uint64(d.all_ones & ~m)).tolist()
    assert got["stuck-at-1"].tolist() == (u64 | np.uint64(m)).tolist()
    # flip twice restores, stuck-at is idempotent
    for name in ("bitflip", "stuck-at-0", "stuck-at-1"):
        f = parse_fault(f"w[*]:{name}:{spec}")
        twice = as_bits(apply_faults(x, [f, f], d))
        want = u if name == "bitflip" else got[name].astype(d.container)
        assert twice.tolist() == want.tolist()
    # a transform applied through apply_transform equals the Fault path
    f = parse_fault(f"w[*]:bitflip:{spec}")
    assert as_bits(apply_transform(x, (None,), f.transform(d))).tolist() == got[
        "bitflip"].astype(d.container).tolist()


# -- parsing, formatting, plan round trips -------------------------------------------------

SITE_CHARS = "abcXYZ019_-/.:"
sites = st.text(SITE_CHARS, min_size=1, max_size=24)
indices = st.lists(st.one_of(st.none(), st.integers(0, 10_000)), max_size=5).map(tuple)
bitsets = st.sets(st.integers(0, 63), min_size=1, max_size=10).map(tuple)


@st.composite
def faults(draw: st.DrawFn) -> Fault:
    site, index = draw(sites), draw(indices)
    model = draw(st.sampled_from(list(FaultModel)))
    if model is FaultModel.VALUE:
        value = draw(st.one_of(st.floats(allow_nan=False), st.integers(-1000, 1000).map(float)))
        return Fault(site, index, model, (), value)
    return Fault(site, index, model, draw(bitsets))


@FAST
@given(faults())
def test_fault_text_round_trip(f: Fault) -> None:
    text = str(f)
    back = parse_fault(text)
    assert back == f
    assert str(back) == text
    assert parse_fault(f"  {text}  ") == f
    assert Fault.from_json(json.loads(json.dumps(f.to_json()))) == f


@FAST
@given(st.lists(faults(), max_size=6))
def test_plan_json_round_trip(fs: list[Fault]) -> None:
    plan = FaultPlan(tuple(fs))
    text = plan.dumps()
    assert json.loads(text) == plan.to_json()
    back = FaultPlan.from_json(json.loads(text))
    assert back == plan
    assert back.dumps() == text  # deterministic
    assert list(back) == fs and len(back) == len(fs)


def test_plan_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = FaultPlan((parse_fault("a/b.c:0[*,1]:bitflip:0-2,7"),
                      parse_fault("fc.bias[3]:value=-inf"),
                      parse_fault("x[]:value=nan")))
    p = tmp_path / "plan.json"
    p.write_text(plan.dumps())
    back = FaultPlan.load(p)
    assert back.faults[:1] == plan.faults[:1]
    assert back.faults[1].value == -math.inf
    assert math.isnan(back.faults[2].value)  # type: ignore[arg-type]
    assert back.faults[2].index == ()
    assert json.loads(plan.dumps())["faults"][2]["value"] == "nan"
    p.write_text("{not json")
    with pytest.raises(EnpheephError, match="not valid JSON"):
        FaultPlan.load(p)
    with pytest.raises(EnpheephError, match="cannot read"):
        FaultPlan.load(tmp_path / "missing.json")


def test_parse_fault_fields() -> None:
    f = parse_fault("/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30")
    assert f.site == "/relu1/Relu_output_0"
    assert f.index == (None, 3, 2, 2)
    assert f.model is FaultModel.STUCK_AT_1
    assert f.bits == tuple(range(23, 31))
    g = parse_fault("ns:conv.w[ 0 , * ]:Bit-Flip:5,1,3-4")
    assert (g.site, g.index, g.model, g.bits) == ("ns:conv.w", (0, None), FaultModel.BIT_FLIP,
                                                  (1, 3, 4, 5))
    h = parse_fault("fc2.bias[3]:value=1e-3")
    assert (h.model, h.value, h.bits) == (FaultModel.VALUE, 0.001, ())
    assert parse_fault("w[0]:stuck_at_0:2").model is FaultModel.STUCK_AT_0
    assert str(parse_fault("w[1,*]:bit-flip:3,0-1")) == "w[1,*]:bitflip:0-1,3"


@FAST
@given(st.sets(st.integers(0, 63), min_size=1))
def test_bits_text_round_trip(bits: set[int]) -> None:
    text = format_bits(sorted(bits))
    assert parse_bits(text) == tuple(sorted(bits))
    assert " " not in text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "conv1.weight",
        "conv1.weight[0,0]",
        "conv1.weight:bitflip:3",
        "[0]:bitflip:1",
        "w[0]:bitflip",
        "w[0]:bitflip:",
        "w[0]:bitflip:x",
        "w[0]:bitflip:3-1",
        "w[0]:bitflip:1,,2",
        "w[0]:bitflip:-1",
        "w[0]:foo:1",
        "w[0]:value",
        "w[0]:value:3",
        "w[0]:value=",
        "w[0]:value=abc",
        "w[0]:value=1:3",
        "w[-1]:bitflip:1",
        "w[a]:bitflip:1",
        "w[0,]:bitflip:1",
        "w[1.5]:bitflip:1",
        "w[0]]:bitflip:1",
        "w[0]:bitflip:1[2]",
    ],
)
def test_malformed_expressions(text: str) -> None:
    with pytest.raises(EnpheephError):
        parse_fault(text)


@pytest.mark.parametrize(
    "obj",
    [
        [],
        {"faults": {}},
        {"faults": [], "extra": 1},
        {"faults": [1]},
        {"faults": [{"site": "w", "index": [0]}]},
        {"faults": [{"site": "", "index": [0], "model": "bitflip", "bits": [1]}]},
        {"faults": [{"site": "w", "index": [0], "model": "bitflip", "bits": []}]},
        {"faults": [{"site": "w", "index": [0], "model": "bitflip", "bits": [True]}]},
        {"faults": [{"site": "w", "index": [0], "model": "bitflip", "bits": [-1]}]},
        {"faults": [{"site": "w", "index": ["0"], "model": "bitflip", "bits": [1]}]},
        {"faults": [{"site": "w", "index": [-2], "model": "bitflip", "bits": [1]}]},
        {"faults": [{"site": "w", "index": [0], "model": "nope", "bits": [1]}]},
        {"faults": [{"site": "w", "index": [0], "model": "value", "bits": []}]},
        {"faults": [{"site": "w", "index": [0], "model": "value", "value": "x"}]},
        {"faults": [{"site": "w", "index": [0], "model": "value", "value": 1, "bits": [2]}]},
        {"faults": [{"site": "w", "index": [0], "model": "bitflip", "bits": [1], "value": 2}]},
        {"faults": [{"site": "w", "index": [0], "model": "bitflip", "bits": [1], "x": 0}]},
    ],
)
def test_malformed_plans(obj: object) -> None:
    with pytest.raises(EnpheephError):
        FaultPlan.from_json(obj)
