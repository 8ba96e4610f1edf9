"""enpheeph_onnx.bits: the dtype table, ``value_bits`` (a replacement value's stored bits)
and the composition of bit transforms (pure numpy)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enpheeph_onnx.bits import BY_NAME, BitTransform, compose, dtype_for_numpy, value_bits
from enpheeph_onnx.errors import EnpheephError

from .helpers import FAST

# -- value_bits, the dtype table -----------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "dtype"),
    [(300, "int8"), (-129, "int8"), (128, "int8"), (-1, "uint8"), (256, "uint8"),
     (2.5, "int32"), (2**31, "int32"), (float("nan"), "int8"), (float("inf"), "uint8")],
)
def test_value_bits_rejects_unfit_integers(value: float, dtype: str) -> None:
    with pytest.raises(EnpheephError):
        value_bits(value, BY_NAME[dtype])


def test_value_bits_in_range() -> None:
    assert value_bits(-128, BY_NAME["int8"]) == 0x80
    assert value_bits(255, BY_NAME["uint8"]) == 0xFF
    assert value_bits(-1, BY_NAME["int32"]) == 0xFFFFFFFF
    assert value_bits(1.0, BY_NAME["float64"]) == 0x3FF0000000000000
    with np.errstate(over="ignore"):
        assert value_bits(1e6, BY_NAME["float16"]) == 0x7C00  # overflows to +inf


def test_dtype_table() -> None:
    assert BY_NAME["bfloat16"].numpy == np.dtype(ml_dtypes.bfloat16)
    assert {n: d.bits for n, d in BY_NAME.items()} == {
        "float32": 32, "float16": 16, "bfloat16": 16, "float64": 64, "int8": 8, "uint8": 8,
        "int16": 16, "uint16": 16, "int32": 32, "uint32": 32,
    }
    for d in BY_NAME.values():
        assert d.container.kind == "u" and d.container.itemsize == d.numpy.itemsize
    with pytest.raises(EnpheephError):
        dtype_for_numpy(np.dtype(np.int64))


# -- BitTransform composition --------------------------------------------------------------

WIDTHS = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


@st.composite
def transforms(draw: st.DrawFn, width: int) -> BitTransform:
    top = (1 << width) - 1
    return BitTransform(draw(st.integers(0, top)), draw(st.integers(0, top)),
                        draw(st.integers(0, top)), width)


@st.composite
def width_transforms_words(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    width = draw(st.sampled_from(sorted(WIDTHS)))
    ts = draw(st.lists(transforms(width), min_size=2, max_size=4))
    top = (1 << width) - 1
    words = draw(st.lists(st.one_of(st.integers(0, top), st.sampled_from([0, top])),
                          min_size=1, max_size=16))
    return width, ts, np.array(words, dtype=np.uint64).astype(WIDTHS[width])


@FAST
@given(width_transforms_words())
def test_then_equals_sequential_application(case) -> None:  # type: ignore[no-untyped-def]
    width, ts, u = case
    a, b = ts[0], ts[1]
    ab = a.then(b)
    assert ab.width == width
    top = (1 << width) - 1
    assert 0 <= ab.and_mask <= top and 0 <= ab.or_mask <= top and 0 <= ab.xor_mask <= top
    assert np.array_equal(ab.apply(u), b.apply(a.apply(u)))
    seq = u
    for t in ts:
        seq = t.apply(seq)
    assert np.array_equal(compose(ts).apply(u), seq)
    assert ab.apply(u).dtype == u.dtype


@FAST
@given(st.sampled_from(sorted(WIDTHS)), st.data())
def test_flip_twice_is_identity(width: int, data: st.DataObject) -> None:
    mask = data.draw(st.integers(0, (1 << width) - 1))
    flip = BitTransform((1 << width) - 1, 0, mask, width)
    assert flip.then(flip) == BitTransform.identity(width)
    u = np.array(data.draw(st.lists(st.integers(0, (1 << width) - 1), min_size=1,
                                    max_size=8)), dtype=np.uint64).astype(WIDTHS[width])
    assert np.array_equal(flip.apply(flip.apply(u)), u)
    t = data.draw(transforms(width))
    assert BitTransform.identity(width).then(t).apply(u).tolist() == t.apply(u).tolist()
    assert t.then(BitTransform.identity(width)).apply(u).tolist() == t.apply(u).tolist()
