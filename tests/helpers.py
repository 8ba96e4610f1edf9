"""Helpers shared by several test files: tiny ONNX models, raw-bit value strategies and
references, bit-exact comparisons, the int8 model's accessors, the command line through
click's CliRunner and read-backs of results stores."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from hypothesis import settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from enpheeph_onnx import Fault, FaultModel, FaultSite, apply_faults, discover_sites, load_model
from enpheeph_onnx.bits import BY_NAME, DType
from enpheeph_onnx.campaign import CampaignConfig, select_sites
from enpheeph_onnx.cli import main
from enpheeph_onnx.faultset import FaultSet
from enpheeph_onnx.runtime import make_session
from enpheeph_onnx.sites import site_map
from enpheeph_onnx.store import ResultStore

from .conftest import INT8_MODEL

FAST = settings(max_examples=60, deadline=None)
"""Hypothesis settings of the quick property tests."""

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


def site_shape(site: str) -> tuple[object, ...]:
    """The shape of a site of :func:`chain_model` (``"N"``: the dynamic batch dim)."""
    return W_SHAPE if site in ("W", "WY") else ("N", *X_TAIL)


@st.composite
def chain_faults(draw: st.DrawFn, dtype: str, sites: tuple[str, ...] | None = None
                 ) -> list[Fault]:
    """1-6 faults on the sites of ``chain_model(dtype)`` (several per site likely)."""
    chain = [s for c in chain_sites(dtype).values() for s in c if s[1] in BY_NAME]
    if sites is not None:
        chain = [(s, dt) for s, dt in chain if s in sites]
    pick = st.sampled_from(chain).flatmap(
        lambda sd: faults_for(sd[0], site_shape(sd[0]), BY_NAME[sd[1]]))
    return draw(st.lists(pick, min_size=1, max_size=6))


def scalar_model() -> onnx.ModelProto:
    """X[3] -> ReduceSum(keepdims=0) -> s (a rank-0 activation) -> Identity -> Y."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["X"], ["s"], name="sum", keepdims=0),
         helper.make_node("Identity", ["s"], ["Y"], name="id")], "scalar",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)],
                             ir_version=10)


# --------------------------------------------------------------------------------------
# Running models and comparing bits
# --------------------------------------------------------------------------------------


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of ``model`` on ``feeds``, by name."""
    sess = make_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """The stored bits of ``got`` and ``want`` are equal (same shape, same width)."""
    g, w = as_bits(np.asarray(got)), as_bits(np.asarray(want))
    assert g.shape == w.shape, (what, g.shape, w.shape)
    bad = np.argwhere(g != w)
    assert bad.size == 0, (
        f"{what}: {len(bad)} element(s) differ, first at {bad[0].tolist()}: "
        f"got {int(g[tuple(bad[0])]):#x}, want {int(w[tuple(bad[0])]):#x}"
    )


def run_input(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """The outputs of ``model`` (in graph order) for ``x`` fed as ``input``."""
    return make_session(model).run(None, {"input": x})


def assert_same_bits(got: np.ndarray, want: np.ndarray, what: str = "") -> None:
    """``got`` and ``want`` have the same dtype, shape and stored bits."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype)
    u = np.dtype(f"uint{got.dtype.itemsize * 8}")
    bad = np.argwhere(got.view(u) != want.view(u))
    assert bad.size == 0, f"{what}: {len(bad)} element(s) differ, first at {bad[0].tolist()}"


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


# --------------------------------------------------------------------------------------
# Model tensors, the shipped int8 model
# --------------------------------------------------------------------------------------

INT8 = BY_NAME["int8"]
DENSE_ACCURACY = 359 / 360
"""Top-1 accuracy of the shipped dense CNN on its test split."""
CONV1_W = "conv1.weight_quantized"
CONV2_W = "conv2.weight_quantized"
RELU2_Q = "/relu2/Relu_output_0_QuantizeLinear_Output"
VARIANTS = [("digits_cnn.onnx", "digits_test.npz"), ("digits_cnn_pruned.onnx", "digits_test.npz"),
            ("digits_cnn_int8.onnx", "digits_test.npz"), ("digits_snn.onnx", "digits_snn_test.npz")]
"""The four shipped models (file in ``models/``) and their test splits."""


@functools.lru_cache(maxsize=1)
def int8_model() -> onnx.ModelProto:
    return load_model(INT8_MODEL)


@functools.lru_cache(maxsize=1)
def int8_sites() -> dict[str, FaultSite]:
    return site_map(discover_sites(int8_model()))


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def replace_weight(model: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    """A copy of ``model`` with the initializer or ``Constant`` tensor ``name`` set to
    ``value``."""
    m = copy_model(model)
    for t in m.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(value, name))
            return m
    for n in m.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    a.t.CopyFrom(numpy_helper.from_array(value, a.t.name))
                    return m
    raise KeyError(name)


def weight_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(next(a.t for a in n.attribute if a.name == "value"))
    raise KeyError(name)


def initializers(path: Path) -> dict[str, np.ndarray]:
    """The initializers of the model file ``path``, by name."""
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def selected_sites(model_path: Path, cfg: CampaignConfig) -> list:
    """The fault sites of the model file ``model_path`` that ``cfg`` selects."""
    return select_sites(discover_sites(load_model(model_path)), cfg)


# --------------------------------------------------------------------------------------
# The command line, results stores
# --------------------------------------------------------------------------------------


def invoke(*args: str) -> tuple[int, str, str]:
    """Run the CLI in-process: (exit code, stdout, stderr); a crash raises."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def assert_user_error(code: int, out: str, err: str, *words: str) -> None:
    """Exit code 2 and a one-line ``Error:`` message containing ``words``, no traceback."""
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in err + out
    for w in words:
        assert w in lines[0], (w, lines[0])


def strict_json(text: str) -> dict:
    """``text`` parsed as standard JSON (NaN / Infinity fail)."""
    def bad(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=bad)


def stored_trials(db: Path) -> tuple[dict[int, FaultSet],
                                     dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The faults and the (outcomes, correct) of every stored trial."""
    with ResultStore.open(db) as store:
        faults = dict(store.fault_sets())
        outcomes = {t: (codes, ok) for t, codes, ok in store.outcome_sets()}
    return faults, outcomes
