"""Shared helpers for the tests: tiny ONNX models, raw-bit value strategies, references."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from enpheeph_onnx import Fault, FaultModel, apply_faults
from enpheeph_onnx.bits import BY_NAME, DType

OPSET = 26
IR_VERSION = 10
W_SHAPE = (3, 4)
X_TAIL = (3, 4)
"""Activation tensors have shape ``["N", 3, 4]``; the weight ``W`` has shape ``[3, 4]``."""


def special_bits(d: DType) -> list[int]:
    """Bit patterns that must show up among generated inputs: +-0, subnormals, extremes,
    +-inf and NaNs with payloads (floats); 0, +-1, min and max (integers)."""
    w = d.bits
    ones = d.all_ones
    sign = 1 << (w - 1)
    if not d.is_float:
        return [0, 1, ones, sign, sign - 1, sign + 1, 0x55 & ones, ones >> 1]
    mant = {16: 7 if d.name == "bfloat16" else 10, 32: 23, 64: 52}[w]
    exp_all = ((1 << (w - 1 - mant)) - 1) << mant
    quiet = 1 << (mant - 1)
    out = [
        0, sign,  # +-0
        1, sign | 1, (1 << mant) - 1,  # smallest and largest subnormal
        exp_all, sign | exp_all,  # +-inf
        exp_all | 1, sign | exp_all | 1,  # signalling NaNs, payload 1
        exp_all | quiet, exp_all | quiet | 0x5,  # quiet NaNs, with a payload
        sign | exp_all | ((1 << mant) - 1),  # -NaN, all payload bits
        exp_all - 1, sign | (exp_all - 1),  # +-max finite
    ]
    return [b & ones for b in out]


def raw_bits(d: DType, shape: Sequence[int]) -> st.SearchStrategy[np.ndarray]:
    """Arrays of ``shape`` in the container dtype of ``d`` (raw stored bits), mixing uniform
    bit patterns with :func:`special_bits`."""
    n = int(np.prod(shape, dtype=np.int64))
    elem = st.one_of(st.integers(0, d.all_ones), st.sampled_from(special_bits(d)))
    return st.lists(elem, min_size=n, max_size=n).map(
        lambda xs: np.array(xs, dtype=np.uint64).astype(d.container).reshape(shape)
    )


def bit_sets(width: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.sets(st.integers(0, width - 1), min_size=1, max_size=min(width, 6)).map(
        lambda s: tuple(sorted(s))
    )


def fault_values(d: DType) -> st.SearchStrategy[float]:
    """Replacement values that fit ``d``: finite floats (plus +-inf, nan), integers in range."""
    if d.is_float:
        return st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            st.sampled_from([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), float("nan")]),
        )
    info = np.iinfo(d.numpy)
    return st.integers(int(info.min), int(info.max)).map(float)


@st.composite
def faults_for(draw: st.DrawFn, site: str, shape: Sequence[object], d: DType,
               model: FaultModel | None = None, dense: bool = False) -> Fault:
    """One fault on ``site`` (shape with ints for static dims, a str for a dynamic dim; an
    int coordinate on a dynamic dim may exceed the batch: that fault then does nothing).

    ``model`` fixes the fault model; ``dense`` draws coordinates from ``*, 0, 1`` only, so
    that faults of one plan often hit the same elements."""
    index = tuple(
        draw(st.one_of(st.none(), st.integers(
            0, 1 if dense else (n if isinstance(n, int) else 4) - 1)))
        for n in shape
    )
    if model is None:
        model = draw(st.sampled_from(list(FaultModel)))
    if model is FaultModel.VALUE:
        return Fault(site, index, model, (), draw(fault_values(d)))
    return Fault(site, index, model, draw(bit_sets(d.bits)))


def as_bits(a: np.ndarray) -> np.ndarray:
    """The stored bits of ``a`` as a same-width unsigned integer array."""
    return a.view(np.dtype(f"uint{a.dtype.itemsize * 8}"))


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------
#
# ``chain_model(dtype)``: two independent bit-preserving chains.
#
#   activations:  X[N,3,4] -> Identity -> act -> Identity -> Y
#       (bfloat16: X uint16 -> BitCast(BFLOAT16) -> xb -> Identity -> act -> BitCast(UINT16)
#        -> Y, as onnxruntime's Python API cannot feed or fetch bfloat16)
#   weights:      W[3,4] (initializer or Constant node) -> Identity -> WY
#       (floats: W -> BitCast(container) -> WY, so WY carries W's stored bits)
#
# Every op copies bits, so each output equals the reference ``apply_faults`` applied site by
# site along its chain (:func:`chain_reference`).


def chain_sites(dtype: str) -> dict[str, list[tuple[str, str]]]:
    """Per output: the (site, dtype name) chain it passes through, in data-flow order
    (``WY`` of a float64 model is uint64, which is not a fault site)."""
    d = BY_NAME[dtype]
    if dtype == "bfloat16":
        act = [("X", "uint16"), ("xb", "bfloat16"), ("act", "bfloat16"), ("Y", "uint16")]
    else:
        act = [("X", dtype), ("act", dtype), ("Y", dtype)]
    wy = d.container.name if d.is_float else dtype
    return {"Y": act, "WY": [("W", dtype), ("WY", wy)]}


def chain_model(dtype: str, w_bits: np.ndarray | None = None, constant: bool = False,
                x_dims: Sequence[int | str] = ("N", *X_TAIL)) -> onnx.ModelProto:
    """The two-chain model above; ``W`` holds ``w_bits`` (container dtype, shape [3, 4]);
    ``X``, ``act`` and ``Y`` have shape ``x_dims`` (strings are dynamic dims)."""
    d = BY_NAME[dtype]
    if w_bits is None:
        w_bits = np.arange(np.prod(W_SHAPE), dtype=d.container).reshape(W_SHAPE)
    w = numpy_helper.from_array(np.ascontiguousarray(w_bits).view(d.numpy), "W")
    io_type = d.container_onnx if dtype == "bfloat16" else d.onnx
    nodes = []
    if dtype == "bfloat16":
        nodes += [helper.make_node("BitCast", ["X"], ["xb"], name="to_bf16",
                                   to=TensorProto.BFLOAT16),
                  helper.make_node("Identity", ["xb"], ["act"], name="id_act"),
                  helper.make_node("BitCast", ["act"], ["Y"], name="to_bits",
                                   to=TensorProto.UINT16)]
    else:
        nodes += [helper.make_node("Identity", ["X"], ["act"], name="id_act"),
                  helper.make_node("Identity", ["act"], ["Y"], name="id_y")]
    if constant:
        nodes.insert(0, helper.make_node("Constant", [], ["W"], name="const_w", value=w))
    if d.is_float:
        nodes.append(helper.make_node("BitCast", ["W"], ["WY"], name="w_bits",
                                      to=d.container_onnx))
        wy_type = d.container_onnx
    else:
        nodes.append(helper.make_node("Identity", ["W"], ["WY"], name="w_id"))
        wy_type = d.onnx
    graph = helper.make_graph(
        nodes, f"chain_{dtype}",
        [helper.make_tensor_value_info("X", io_type, list(x_dims))],
        [helper.make_tensor_value_info("Y", io_type, list(x_dims)),
         helper.make_tensor_value_info("WY", wy_type, list(W_SHAPE))],
        initializer=[] if constant else [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="enpheeph-tests")
    onnx.checker.check_model(model, full_check=True)
    return model


def feed_array(dtype: str, x_bits: np.ndarray) -> np.ndarray:
    """The value to feed as ``X`` for raw bits ``x_bits`` (bfloat16 models take the bits)."""
    return x_bits if dtype == "bfloat16" else x_bits.view(BY_NAME[dtype].numpy)


def chain_reference(dtype: str, x_bits: np.ndarray, w_bits: np.ndarray,
                    faults: Iterable[Fault]) -> dict[str, np.ndarray]:
    """Expected output bits of :func:`chain_model` under ``faults`` (numpy reference)."""
    faults = list(faults)
    out = {}
    for output, chain in chain_sites(dtype).items():
        u = (x_bits if output == "Y" else w_bits).copy()
        for site, dt in chain:
            if dt not in BY_NAME:  # e.g. uint64: not a fault site
                continue
            sd = BY_NAME[dt]
            v = apply_faults(u.view(sd.numpy), [f for f in faults if f.site == site], sd)
            u = v.view(sd.container)
        out[output] = u
    return out
