"""A corpus of small, deterministic ONNX models built in code, for the test matrix.

Each builder takes no argument and returns a :class:`CorpusModel`: the model, the feeds it runs
on (a batch of 4 samples along axis 0 for every batched input, drawn from
``numpy.random.default_rng`` with a fixed seed) and a few flags and tags that tell a test what is
special about it. :data:`CORPUS` maps each model's name to its builder.

The corpus covers the corners a fault injector on ONNX graphs meets in the wild:

* several IR versions (3 to 13) and opsets (7 to 26), including IR 3 with the initializers
  listed among the graph inputs and a default domain imported twice (as skl2onnx writes it);
* subgraphs (If, Loop, Scan) that read outer-scope tensors and hold their own initializers;
* contrib (``com.microsoft``) and ``ai.onnx.ml`` operators;
* int8 models from onnxruntime's dynamic (MatMulInteger, ConvInteger) and static QDQ
  quantization, and an int8 weight held in a Constant node;
* float16 and mixed float16/float32 graphs;
* recurrent operators (LSTM, GRU, RNN), an attention block, models exported from torch;
* a model saved with external data, a rank-0 input, a fixed batch dimension of 1 and a
  ``value_info`` that declares a wrong shape.

Every float weight is normal, scaled so that activations stay O(1), with no exact zero; biases
are non-zero. Every model passes ``onnx.checker.check_model``, runs on onnxruntime's CPU
provider and gives outputs that depend on its weights. torch and onnxruntime.quantization are
imported inside the builders that need them, so importing this module stays quick. The corpus
does not import the package under test.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BATCH = 4
"""Samples in every batched feed."""

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16


@dataclass(frozen=True)
class CorpusModel:
    """One model of the corpus and what a test needs to know to run it."""

    name: str
    """Unique snake_case name, the builder's key in :data:`CORPUS`."""
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    """The model's inputs: ``BATCH`` samples along axis 0 for every input with a batch axis;
    rank-0 inputs go whole with every batch."""
    batch_axis: bool = True
    """False when the inputs have no batch axis (or a fixed batch that must not be split)."""
    external_data: bool = False
    """The test must save it with external data (``save_as_external_data=True``,
    ``all_tensors_to_one_file=True``, ``size_threshold=0``)."""
    tags: frozenset[str] = frozenset()
    """What is special about it. ``batch_coupled``: samples of one batch affect each other's
    outputs (dynamic quantization computes one activation scale per batch), so a batch run
    and per-sample runs agree only approximately."""


# ---------------------------------------------------------------------------------------------
# Helpers


class _Weights:
    """Deterministic weights: normal, scaled by ``1/sqrt(fan_in)``, with no exact zero."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def normal(
        self, shape: Sequence[int], scale: float | None = None, dtype: Any = np.float32
    ) -> np.ndarray:
        if scale is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
            scale = 1.0 / np.sqrt(max(fan_in, 1))
        a = self.rng.normal(0.0, scale, size=tuple(shape))
        a = np.where(np.abs(a) < 1e-3 * scale, 1e-3 * scale, a)  # no exact (or near) zero
        return a.astype(dtype)

    def bias(self, n: int, dtype: Any = np.float32) -> np.ndarray:
        """A non-zero bias, magnitudes in [0.05, 0.3] with random signs."""
        mag = self.rng.uniform(0.05, 0.3, size=n)
        sign = np.where(self.rng.random(n) < 0.5, -1.0, 1.0)
        return (mag * sign).astype(dtype)

    def positive(self, n: int, low: float = 0.5, high: float = 1.5) -> np.ndarray:
        return self.rng.uniform(low, high, size=n).astype(np.float32)


def _feed(seed: int, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=tuple(shape)).astype(dtype)


def _init(name: str, a: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(a), name)


def _vi(name: str, elem: int, shape: Sequence[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _model(
    nodes: Sequence[onnx.NodeProto],
    name: str,
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[TensorProto],
    *,
    ir: int,
    opset: int,
    extra_opsets: Sequence[tuple[str, int]] = (),
    value_info: Sequence[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), name, list(inputs), list(outputs), list(initializers),
        value_info=list(value_info),
    )
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(
        graph, ir_version=ir, opset_imports=opsets, producer_name="enpheeph-onnx-corpus"
    )
    return model


def _mlp_parts(
    w: _Weights, sizes: Sequence[int], prefix: str = ""
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Gemm (transB) - Relu - ... - Gemm from ``x`` to ``y`` through ``sizes``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    cur = "x"
    last = len(sizes) - 2
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        wn, bn = f"{prefix}W{i + 1}", f"{prefix}B{i + 1}"
        inits += [_init(wn, w.normal((b, a))), _init(bn, w.bias(b))]
        out = "y" if i == last else f"h{i + 1}"
        nodes.append(helper.make_node("Gemm", [cur, wn, bn], [out], transB=1))
        cur = out
        if i != last:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i + 1}"]))
            cur = f"r{i + 1}"
    return nodes, inits


def _mlp(
    name: str, seed: int, *, ir: int, opset: int, sizes: Sequence[int] = (6, 8, 3),
    x_shape: Sequence[int | str] | None = None,
) -> onnx.ModelProto:
    w = _Weights(seed)
    nodes, inits = _mlp_parts(w, sizes)
    return _model(
        nodes, name,
        [_vi("x", FLOAT, x_shape or ["N", sizes[0]])], [_vi("y", FLOAT, ["N", sizes[-1]])],
        inits, ir=ir, opset=opset,
    )


# ---------------------------------------------------------------------------------------------
# Plain float models


def mlp_opset13() -> CorpusModel:
    """Gemm-Relu-Gemm, IR 7, opset 13, dynamic batch ``N``."""
    model = _mlp("mlp_opset13", 101, ir=7, opset=13)
    return CorpusModel("mlp_opset13", model, {"x": _feed(1, (BATCH, 6))})


def _conv_bn(
    w: _Weights, cin: int, cout: int, pad: int, x: str = "x"
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Conv(3x3) + BatchNormalization (non-trivial statistics) + Relu, output ``relu``."""
    inits = [
        _init("conv_W", w.normal((cout, cin, 3, 3))),
        _init("conv_B", w.bias(cout)),
        _init("bn_scale", w.positive(cout, 0.7, 1.3)),
        _init("bn_bias", w.bias(cout)),
        _init("bn_mean", w.bias(cout)),
        _init("bn_var", w.positive(cout, 0.5, 1.5)),
    ]
    nodes = [
        helper.make_node(
            "Conv", [x, "conv_W", "conv_B"], ["conv"], kernel_shape=[3, 3], pads=[pad] * 4
        ),
        helper.make_node(
            "BatchNormalization", ["conv", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"],
            epsilon=1e-5,
        ),
        helper.make_node("Relu", ["bn"], ["relu"]),
    ]
    return nodes, inits


def cnn_bn_opset17() -> CorpusModel:
    """Conv(3x3, pad 1) + BatchNormalization + Relu + MaxPool + Flatten + Gemm, IR 8, opset 17."""
    w = _Weights(102)
    nodes, inits = _conv_bn(w, 1, 4, 1)
    nodes += [
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["y"], transB=1),
    ]
    inits += [_init("fc_W", w.normal((5, 64))), _init("fc_B", w.bias(5))]
    model = _model(
        nodes, "cnn_bn_opset17", [_vi("x", FLOAT, ["N", 1, 8, 8])], [_vi("y", FLOAT, ["N", 5])],
        inits, ir=8, opset=17,
    )
    return CorpusModel("cnn_bn_opset17", model, {"x": _feed(2, (BATCH, 1, 8, 8))})


def cnn_bn_relu_global() -> CorpusModel:
    """Conv + BN + Relu + GlobalAveragePool + Flatten + MatMul + Add, IR 8, opset 15."""
    w = _Weights(103)
    nodes, inits = _conv_bn(w, 2, 6, 0)
    nodes += [
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_W"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_B"], ["y"]),
    ]
    inits += [_init("fc_W", w.normal((6, 4), scale=1.0)), _init("fc_B", w.bias(4))]
    model = _model(
        nodes, "cnn_bn_relu_global", [_vi("x", FLOAT, ["N", 2, 6, 6])],
        [_vi("y", FLOAT, ["N", 4])], inits, ir=8, opset=15,
    )
    return CorpusModel("cnn_bn_relu_global", model, {"x": _feed(3, (BATCH, 2, 6, 6))})


def prelu_leaky() -> CorpusModel:
    """Conv + PRelu (per-channel slope weight) + LeakyRelu + Flatten + Gemm, IR 7, opset 13."""
    w = _Weights(104)
    inits = [
        _init("conv_W", w.normal((3, 1, 3, 3))),
        _init("conv_B", w.bias(3)),
        _init("slope", w.positive(3, 0.1, 0.4).reshape(3, 1, 1)),
        _init("fc_W", w.normal((4, 3 * 4 * 4))),
        _init("fc_B", w.bias(4)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_W", "conv_B"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("PRelu", ["conv", "slope"], ["prelu"]),
        helper.make_node("LeakyRelu", ["prelu"], ["leaky"], alpha=0.2),
        helper.make_node("Flatten", ["leaky"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "prelu_leaky", [_vi("x", FLOAT, ["N", 1, 6, 6])], [_vi("y", FLOAT, ["N", 4])],
        inits, ir=7, opset=13,
    )
    return CorpusModel("prelu_leaky", model, {"x": _feed(4, (BATCH, 1, 6, 6))})


def attention_block() -> CorpusModel:
    """Single-head self-attention: Q/K/V MatMul+Add, Transpose, MatMul, Div(sqrt d), Softmax,
    MatMul, output projection; input ``[N, 4, 8]``, IR 8, opset 18."""
    d = 8
    w = _Weights(105)
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    for p in ("q", "k", "v"):
        inits += [_init(f"W{p}", w.normal((d, d))), _init(f"b{p}", w.bias(d))]
        nodes += [
            helper.make_node("MatMul", ["x", f"W{p}"], [f"{p}_mm"]),
            helper.make_node("Add", [f"{p}_mm", f"b{p}"], [p]),
        ]
    inits += [
        _init("sqrt_d", np.array(np.sqrt(d), dtype=np.float32)),
        _init("Wo", w.normal((d, d))),
        _init("bo", w.bias(d)),
    ]
    nodes += [
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Div", ["scores", "sqrt_d"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "Wo"], ["o_mm"]),
        helper.make_node("Add", ["o_mm", "bo"], ["y"]),
    ]
    model = _model(
        nodes, "attention_block", [_vi("x", FLOAT, ["N", 4, d])], [_vi("y", FLOAT, ["N", 4, d])],
        inits, ir=8, opset=18,
    )
    return CorpusModel("attention_block", model, {"x": _feed(5, (BATCH, 4, d))})


def multi_io() -> CorpusModel:
    """Two batched inputs, two outputs: ``y1 = Relu(a W1 + b W2 + B)``, ``y2 = y1 W3``;
    IR 9, opset 19."""
    w = _Weights(106)
    inits = [
        _init("W1", w.normal((5, 6))), _init("W2", w.normal((3, 6))), _init("B", w.bias(6)),
        _init("W3", w.normal((6, 2))),
    ]
    nodes = [
        helper.make_node("MatMul", ["a", "W1"], ["am"]),
        helper.make_node("MatMul", ["b", "W2"], ["bm"]),
        helper.make_node("Sum", ["am", "bm", "B"], ["s"]),
        helper.make_node("Relu", ["s"], ["y1"]),
        helper.make_node("MatMul", ["y1", "W3"], ["y2"]),
    ]
    model = _model(
        nodes, "multi_io", [_vi("a", FLOAT, ["N", 5]), _vi("b", FLOAT, ["N", 3])],
        [_vi("y1", FLOAT, ["N", 6]), _vi("y2", FLOAT, ["N", 2])], inits, ir=9, opset=19,
    )
    feeds = {"a": _feed(6, (BATCH, 5)), "b": _feed(7, (BATCH, 3))}
    return CorpusModel("multi_io", model, feeds, tags=frozenset({"multi_io"}))


def shared_weight() -> CorpusModel:
    """One initializer read by two MatMuls (a weight-tied layer applied twice); IR 8, opset 17."""
    w = _Weights(107)
    inits = [_init("W", w.normal((6, 6))), _init("B", w.bias(6)), _init("Wout", w.normal((6, 3)))]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m1"]),
        helper.make_node("Add", ["m1", "B"], ["a1"]),
        helper.make_node("Tanh", ["a1"], ["t1"]),
        helper.make_node("MatMul", ["t1", "W"], ["m2"]),
        helper.make_node("Tanh", ["m2"], ["t2"]),
        helper.make_node("MatMul", ["t2", "Wout"], ["y"]),
    ]
    model = _model(
        nodes, "shared_weight", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 3])], inits,
        ir=8, opset=17,
    )
    return CorpusModel("shared_weight", model, {"x": _feed(8, (BATCH, 6))},
                       tags=frozenset({"shared_weight"}))


# ---------------------------------------------------------------------------------------------
# Subgraphs


def _if_model(name: str) -> onnx.ModelProto:
    """If on a computed scalar condition ``ReduceSum(x) > 0.1``; both branches read the outer
    tensor ``h = MatMul(x, W1)`` and hold their own weight initializers; IR 8, opset 16."""
    w = _Weights(108)
    then_g = helper.make_graph(
        [
            helper.make_node("MatMul", ["h", "Wt"], ["t_mm"]),
            helper.make_node("Add", ["t_mm", "bt"], ["t_out"]),
        ],
        "then_branch", [], [_vi("t_out", FLOAT, ["N", 3])],
        [_init("Wt", w.normal((6, 3))), _init("bt", w.bias(3))],
    )
    else_g = helper.make_graph(
        [
            helper.make_node("Relu", ["h"], ["e_relu"]),
            helper.make_node("MatMul", ["e_relu", "We"], ["e_mm"]),
            helper.make_node("Add", ["e_mm", "be"], ["e_out"]),
        ],
        "else_branch", [], [_vi("e_out", FLOAT, ["N", 3])],
        [_init("We", w.normal((6, 3))), _init("be", w.bias(3))],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "threshold"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Tanh", ["branch"], ["y"]),
    ]
    inits = [_init("W1", w.normal((4, 6))), _init("threshold", np.array(0.1, dtype=np.float32))]
    return _model(
        nodes, name, [_vi("x", FLOAT, ["N", 4])], [_vi("y", FLOAT, ["N", 3])], inits,
        ir=8, opset=16,
    )


def _if_feeds(sign: float) -> dict[str, np.ndarray]:
    """4 samples whose sums all have the given sign, beyond the threshold: the same branch is
    taken whether the batch runs whole or one sample at a time."""
    x = np.abs(_feed(9, (BATCH, 4))) * np.float32(0.5) + np.float32(0.2)
    return {"x": (x * np.float32(sign)).astype(np.float32)}


def if_outer_scope() -> CorpusModel:
    """The If model on feeds that take the then branch (the else branch's weights are dead)."""
    model = _if_model("if_outer_scope")
    return CorpusModel("if_outer_scope", model, _if_feeds(1.0), tags=frozenset({"subgraph"}))


def if_else_branch() -> CorpusModel:
    """The same If model on negated feeds that take the else branch (the then branch is dead)."""
    model = _if_model("if_else_branch")
    return CorpusModel("if_else_branch", model, _if_feeds(-1.0), tags=frozenset({"subgraph"}))


def loop_body_weights() -> CorpusModel:
    """Loop with a fixed trip count (initializer ``M = 3``, cond true); the body holds a weight
    initializer, reads the outer tensor ``h0`` and carries ``h``; IR 8, opset 16."""
    w = _Weights(109)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "Wb"], ["b_mm"]),
            helper.make_node("Add", ["b_mm", "h0"], ["b_add"]),
            helper.make_node("Tanh", ["b_add"], ["h_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "loop_body",
        [
            _vi("iter", TensorProto.INT64, []),
            _vi("cond_in", TensorProto.BOOL, []),
            _vi("h_in", FLOAT, ["N", 4]),
        ],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("h_out", FLOAT, ["N", 4])],
        [_init("Wb", w.normal((4, 4)))],
    )
    inits = [
        _init("W0", w.normal((4, 4))), _init("b0", w.bias(4)),
        _init("M", np.array(3, dtype=np.int64)), _init("cond", np.array(True)),
        _init("W2", w.normal((3, 4))), _init("b2", w.bias(3)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["h0_mm"]),
        helper.make_node("Add", ["h0_mm", "b0"], ["h0"]),
        helper.make_node("Loop", ["M", "cond", "h0"], ["h_final"], body=body),
        helper.make_node("Gemm", ["h_final", "W2", "b2"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "loop_body_weights", [_vi("x", FLOAT, ["N", 4])], [_vi("y", FLOAT, ["N", 3])],
        inits, ir=8, opset=16,
    )
    return CorpusModel("loop_body_weights", model, {"x": _feed(10, (BATCH, 4))},
                       tags=frozenset({"subgraph"}))


def scan_body_weights() -> CorpusModel:
    """Scan over axis 1 of ``x [N, T=5, F=3]`` (batch axis 0 kept in the state ``[N, 4]``); the
    body holds its weights (an Elman cell); the scan outputs are stacked on axis 1; the final
    state goes through a Gemm; IR 8, opset 16."""
    w = _Weights(110)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "Wx"], ["s_x"]),
            helper.make_node("MatMul", ["h_in", "Wh"], ["s_h"]),
            helper.make_node("Sum", ["s_x", "s_h", "bs"], ["s_sum"]),
            helper.make_node("Tanh", ["s_sum"], ["h_out"]),
            helper.make_node("Identity", ["h_out"], ["y_t"]),
        ],
        "scan_body",
        [_vi("h_in", FLOAT, ["N", 4]), _vi("x_t", FLOAT, ["N", 3])],
        [_vi("h_out", FLOAT, ["N", 4]), _vi("y_t", FLOAT, ["N", 4])],
        [_init("Wx", w.normal((3, 4))), _init("Wh", w.normal((4, 4))), _init("bs", w.bias(4))],
    )
    inits = [
        _init("Wi", w.normal((3, 4))), _init("W2", w.normal((2, 4))), _init("b2", w.bias(2)),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["x_mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["x_mean", "Wi"], ["h0"]),
        helper.make_node(
            "Scan", ["h0", "x"], ["h_final", "ys"], body=body, num_scan_inputs=1,
            scan_input_axes=[1], scan_output_axes=[1],
        ),
        helper.make_node("Gemm", ["h_final", "W2", "b2"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "scan_body_weights", [_vi("x", FLOAT, ["N", 5, 3])],
        [_vi("y", FLOAT, ["N", 2]), _vi("ys", FLOAT, ["N", 5, 4])], inits, ir=8, opset=16,
    )
    return CorpusModel("scan_body_weights", model, {"x": _feed(11, (BATCH, 5, 3))},
                       tags=frozenset({"subgraph"}))


# ---------------------------------------------------------------------------------------------
# Non-default domains


def ms_gelu_fusedmatmul() -> CorpusModel:
    """MatMul + Add, com.microsoft Gelu and FusedMatMul (transB, alpha), Add; IR 8, opset 17,
    ``com.microsoft`` 1."""
    w = _Weights(111)
    ms = "com.microsoft"
    inits = [
        _init("W1", w.normal((6, 8))), _init("b1", w.bias(8)),
        _init("W2", w.normal((5, 8))), _init("b2", w.bias(5)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["mm"]),
        helper.make_node("Add", ["mm", "b1"], ["pre"]),
        helper.make_node("Gelu", ["pre"], ["gelu"], domain=ms),
        helper.make_node("FusedMatMul", ["gelu", "W2"], ["fmm"], domain=ms, transB=1, alpha=0.5),
        helper.make_node("Add", ["fmm", "b2"], ["y"]),
    ]
    model = _model(
        nodes, "ms_gelu_fusedmatmul", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 5])],
        inits, ir=8, opset=17, extra_opsets=[(ms, 1)],
    )
    return CorpusModel("ms_gelu_fusedmatmul", model, {"x": _feed(12, (BATCH, 6))},
                       tags=frozenset({"ms"}))


def ml_scaler() -> CorpusModel:
    """ai.onnx.ml Scaler (offset/scale attributes), MatMul + Add, Softmax; IR 8, opset 17,
    ``ai.onnx.ml`` 3."""
    w = _Weights(112)
    inits = [_init("W", w.normal((4, 5), scale=1.0)), _init("b", w.bias(5))]
    nodes = [
        helper.make_node(
            "Scaler", ["x"], ["scaled"], domain="ai.onnx.ml",
            offset=[0.1, -0.2, 0.3, -0.1], scale=[1.5, 0.8, 1.2, 0.6],
        ),
        helper.make_node("MatMul", ["scaled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    model = _model(
        nodes, "ml_scaler", [_vi("x", FLOAT, ["N", 4])], [_vi("y", FLOAT, ["N", 5])], inits,
        ir=8, opset=17, extra_opsets=[("ai.onnx.ml", 3)],
    )
    return CorpusModel("ml_scaler", model, {"x": _feed(13, (BATCH, 4))}, tags=frozenset({"ml"}))


# ---------------------------------------------------------------------------------------------
# Quantized models


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the quantizers' advice ("consider pre-processing", via logging and warnings)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _quantize_dynamic(float_model: onnx.ModelProto, **kwargs: Any) -> onnx.ModelProto:
    from onnxruntime.quantization import quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(float_model, str(src))
        with _quiet():
            quantize_dynamic(str(src), str(dst), **kwargs)
        return onnx.load_model(str(dst))


def _op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def dyn_int8_matmul() -> CorpusModel:
    """Float MatMul+Add-Relu-MatMul+Add through ``quantize_dynamic`` (QInt8 weights):
    DynamicQuantizeLinear + MatMulInteger; IR 8, opset 17 before quantization."""
    from onnxruntime.quantization import QuantType

    w = _Weights(113)
    inits = [
        _init("W1", w.normal((6, 8))), _init("b1", w.bias(8)),
        _init("W2", w.normal((8, 3))), _init("b2", w.bias(3)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["mm1"]),
        helper.make_node("Add", ["mm1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["mm2"]),
        helper.make_node("Add", ["mm2", "b2"], ["y"]),
    ]
    fm = _model(
        nodes, "dyn_int8_matmul", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 3])], inits,
        ir=8, opset=17,
    )
    model = _quantize_dynamic(fm, weight_type=QuantType.QInt8)
    ops = _op_types(model)
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops, ops
    return CorpusModel("dyn_int8_matmul", model, {"x": _feed(14, (BATCH, 6))},
                       tags=frozenset({"int8", "quant", "batch_coupled"}))


def dyn_int8_conv() -> CorpusModel:
    """Conv-Relu-Flatten-MatMul+Add through ``quantize_dynamic`` on Conv only (QUInt8 weights,
    which onnxruntime's CPU ConvInteger kernel takes): DynamicQuantizeLinear + ConvInteger;
    IR 8, opset 17 before quantization."""
    from onnxruntime.quantization import QuantType

    w = _Weights(114)
    inits = [
        _init("conv_W", w.normal((4, 2, 3, 3))), _init("conv_B", w.bias(4)),
        _init("fc_W", w.normal((4 * 4 * 4, 3))), _init("fc_B", w.bias(3)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_W", "conv_B"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_W"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_B"], ["y"]),
    ]
    fm = _model(
        nodes, "dyn_int8_conv", [_vi("x", FLOAT, ["N", 2, 6, 6])], [_vi("y", FLOAT, ["N", 3])],
        inits, ir=8, opset=17,
    )
    model = _quantize_dynamic(fm, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    ops = _op_types(model)
    assert {"ConvInteger", "DynamicQuantizeLinear"} <= ops, ops
    return CorpusModel("dyn_int8_conv", model, {"x": _feed(15, (BATCH, 2, 6, 6))},
                       tags=frozenset({"int8", "quant", "batch_coupled"}))


def qdq_static_int8() -> CorpusModel:
    """Conv-Relu-Flatten-Gemm through ``quantize_static`` (QDQ format, int8 activations and
    weights, calibrated on 8 deterministic samples): QuantizeLinear / DequantizeLinear pairs;
    IR 8, opset 17 before quantization."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    w = _Weights(115)
    inits = [
        _init("conv_W", w.normal((4, 1, 3, 3))), _init("conv_B", w.bias(4)),
        _init("fc_W", w.normal((3, 4 * 4 * 4))), _init("fc_B", w.bias(3)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_W", "conv_B"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["y"], transB=1),
    ]
    fm = _model(
        nodes, "qdq_static_int8", [_vi("x", FLOAT, ["N", 1, 6, 6])], [_vi("y", FLOAT, ["N", 3])],
        inits, ir=8, opset=17,
    )

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            data = _feed(116, (8, 1, 1, 6, 6))
            self._it = iter([{"x": d} for d in data])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "qdq.onnx"
        onnx.save_model(fm, str(src))
        with _quiet():
            quantize_static(
                str(src), str(dst), _Reader(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            )
        model = onnx.load_model(str(dst))
    ops = _op_types(model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
    return CorpusModel("qdq_static_int8", model, {"x": _feed(16, (BATCH, 1, 6, 6))},
                       tags=frozenset({"int8", "quant", "qdq"}))


def int8_constant_weight() -> CorpusModel:
    """QDQ-like: an int8 weight held in a Constant node's ``value`` (not an initializer),
    DequantizeLinear(Constant, scale, zero point) -> MatMul + Add -> Relu -> MatMul; IR 8,
    opset 17."""
    w = _Weights(117)
    rng = np.random.default_rng(118)
    q = rng.integers(-100, 101, size=(6, 8)).astype(np.int8)
    q[q == 0] = 7
    const = helper.make_node(
        "Constant", [], ["Wq"], value=numpy_helper.from_array(q, "Wq_value")
    )
    inits = [
        _init("w_scale", np.array(0.004, dtype=np.float32)),
        _init("w_zp", np.array(3, dtype=np.int8)),
        _init("b1", w.bias(8)),
        _init("W2", w.normal((8, 3))),
    ]
    nodes = [
        const,
        helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zp"], ["W1"]),
        helper.make_node("MatMul", ["x", "W1"], ["mm"]),
        helper.make_node("Add", ["mm", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["y"]),
    ]
    model = _model(
        nodes, "int8_constant_weight", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 3])],
        inits, ir=8, opset=17,
    )
    return CorpusModel("int8_constant_weight", model, {"x": _feed(17, (BATCH, 6))},
                       tags=frozenset({"int8", "constant_weight"}))


# ---------------------------------------------------------------------------------------------
# Reduced precision


def float16_mlp() -> CorpusModel:
    """float16 weights, input and output: MatMul, Add, Relu, MatMul, Add; IR 8, opset 17."""
    w = _Weights(119)
    f16 = np.float16
    inits = [
        _init("W1", w.normal((6, 8), dtype=f16)), _init("b1", w.bias(8, dtype=f16)),
        _init("W2", w.normal((8, 3), dtype=f16)), _init("b2", w.bias(3, dtype=f16)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["mm1"]),
        helper.make_node("Add", ["mm1", "b1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["mm2"]),
        helper.make_node("Add", ["mm2", "b2"], ["y"]),
    ]
    model = _model(
        nodes, "float16_mlp", [_vi("x", FLOAT16, ["N", 6])], [_vi("y", FLOAT16, ["N", 3])],
        inits, ir=8, opset=17,
    )
    return CorpusModel("float16_mlp", model, {"x": _feed(18, (BATCH, 6), np.float16)},
                       tags=frozenset({"float16"}))


def mixed_precision() -> CorpusModel:
    """float32 input, Cast to float16, float16 MatMul with a float16 weight, Cast back,
    float32 Gemm; IR 8, opset 17."""
    w = _Weights(120)
    inits = [
        _init("W16", w.normal((6, 8), dtype=np.float16)),
        _init("W2", w.normal((3, 8))), _init("b2", w.bias(3)),
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=FLOAT16),
        helper.make_node("MatMul", ["x16", "W16"], ["mm16"]),
        helper.make_node("Cast", ["mm16"], ["mm32"], to=FLOAT),
        helper.make_node("Gemm", ["mm32", "W2", "b2"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "mixed_precision", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 3])], inits,
        ir=8, opset=17,
    )
    return CorpusModel("mixed_precision", model, {"x": _feed(19, (BATCH, 6))},
                       tags=frozenset({"float16", "mixed"}))


# ---------------------------------------------------------------------------------------------
# Recurrent operators


def _recurrent(op: str, name: str, gates: int, seed: int, feed_seed: int) -> CorpusModel:
    """``x [N, T=5, F=3]`` (batch axis 0) -> Transpose to ``[T, N, F]`` -> ``op`` with layout 0
    (onnxruntime's CPU kernels refuse layout 1) -> last hidden state ``[1, N, 6]`` -> Squeeze ->
    Gemm; IR 8, opset 17."""
    hidden, feat = 6, 3
    w = _Weights(seed)
    inits = [
        _init("W", w.normal((1, gates * hidden, feat))),
        _init("R", w.normal((1, gates * hidden, hidden))),
        _init("B", w.bias(2 * gates * hidden).reshape(1, -1)),
        _init("axes0", np.array([0], dtype=np.int64)),
        _init("fc_W", w.normal((3, hidden))),
        _init("fc_B", w.bias(3)),
    ]
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tnf"], perm=[1, 0, 2]),
        helper.make_node(op, ["x_tnf", "W", "R", "B"], outs, hidden_size=hidden),
        helper.make_node("Squeeze", ["Y_h", "axes0"], ["h_last"]),
        helper.make_node("Gemm", ["h_last", "fc_W", "fc_B"], ["y"], transB=1),
    ]
    model = _model(
        nodes, name, [_vi("x", FLOAT, ["N", 5, feat])], [_vi("y", FLOAT, ["N", 3])], inits,
        ir=8, opset=17,
    )
    return CorpusModel(name, model, {"x": _feed(feed_seed, (BATCH, 5, feat))},
                       tags=frozenset({"rnn"}))


def lstm() -> CorpusModel:
    """LSTM (hidden 6) behind a Transpose, last hidden state into a Gemm."""
    return _recurrent("LSTM", "lstm", 4, 121, 21)


def gru() -> CorpusModel:
    """GRU (hidden 6) behind a Transpose, last hidden state into a Gemm."""
    return _recurrent("GRU", "gru", 3, 122, 22)


def rnn_tanh() -> CorpusModel:
    """RNN (tanh, hidden 6) behind a Transpose, last hidden state into a Gemm."""
    return _recurrent("RNN", "rnn_tanh", 1, 123, 23)


# ---------------------------------------------------------------------------------------------
# Storage and interface corners


def external_data_mlp() -> CorpusModel:
    """Gemm-Relu-Gemm-Relu-Gemm for saving with external data; IR 8, opset 17."""
    model = _mlp("external_data_mlp", 124, ir=8, opset=17, sizes=(8, 16, 8, 4))
    return CorpusModel("external_data_mlp", model, {"x": _feed(24, (BATCH, 8))},
                       external_data=True, tags=frozenset({"external_data"}))


def scalar_input() -> CorpusModel:
    """A rank-0 input ``gain`` besides the batched ``x``: ``y = Gemm(x * gain)``; IR 8,
    opset 17. ``feeds["gain"]`` is a 0-d array that goes whole with every batch."""
    w = _Weights(125)
    inits = [
        _init("W1", w.normal((8, 5))), _init("b1", w.bias(8)),
        _init("W2", w.normal((3, 8))), _init("b2", w.bias(3)),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["xg"]),
        helper.make_node("Gemm", ["xg", "W1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "scalar_input", [_vi("x", FLOAT, ["N", 5]), _vi("gain", FLOAT, [])],
        [_vi("y", FLOAT, ["N", 3])], inits, ir=8, opset=17,
    )
    feeds = {"x": _feed(25, (BATCH, 5)), "gain": np.array(1.5, dtype=np.float32)}
    return CorpusModel("scalar_input", model, feeds, tags=frozenset({"rank0"}))


def fixed_batch1() -> CorpusModel:
    """Gemm-Relu-Gemm with the input's batch dimension fixed at 1 (``[1, 4]``); the feeds hold
    4 samples anyway, which must be run one at a time."""
    model = _mlp("fixed_batch1", 126, ir=8, opset=17, sizes=(4, 8, 3), x_shape=[1, 4])
    model.graph.output[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    return CorpusModel("fixed_batch1", model, {"x": _feed(26, (BATCH, 4))},
                       tags=frozenset({"fixed_batch"}))


def duplicate_opset() -> CorpusModel:
    """Gemm-Relu-Gemm whose default domain is imported twice with the same version (13), as
    skl2onnx writes it; IR 7."""
    model = _mlp("duplicate_opset", 127, ir=7, opset=13)
    model.opset_import.append(helper.make_opsetid("", 13))
    return CorpusModel("duplicate_opset", model, {"x": _feed(27, (BATCH, 6))},
                       tags=frozenset({"duplicate_opset"}))


def wrong_value_info() -> CorpusModel:
    """Gemm-Relu-Gemm whose ``graph.value_info`` declares ``[N, 99]`` for the hidden tensor
    ``h1`` (really ``[N, 5]``); onnxruntime ignores the wrong declaration (with a warning).
    Only the plain (not the full, strict) checker passes. IR 8, opset 17."""
    w = _Weights(128)
    nodes, inits = _mlp_parts(w, (6, 5, 3))
    model = _model(
        nodes, "wrong_value_info", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 3])],
        inits, ir=8, opset=17, value_info=[_vi("h1", FLOAT, ["N", 99])],
    )
    return CorpusModel("wrong_value_info", model, {"x": _feed(28, (BATCH, 6))},
                       tags=frozenset({"wrong_value_info"}))


# ---------------------------------------------------------------------------------------------
# Old and new IR versions and opsets


def opset7_ir3() -> CorpusModel:
    """Gemm-Relu-Gemm at IR 3, opset 7; the initializers are also graph inputs (as IR 3
    requires)."""
    w = _Weights(129)
    nodes, inits = _mlp_parts(w, (6, 8, 3))
    inputs = [_vi("x", FLOAT, ["N", 6])]
    inputs += [_vi(t.name, t.data_type, list(t.dims)) for t in inits]
    model = _model(
        nodes, "opset7_ir3", inputs, [_vi("y", FLOAT, ["N", 3])], inits, ir=3, opset=7,
    )
    return CorpusModel("opset7_ir3", model, {"x": _feed(29, (BATCH, 6))},
                       tags=frozenset({"legacy", "init_as_input"}))


def opset9_ir4() -> CorpusModel:
    """Conv + Relu + MaxPool + Flatten + Gemm at IR 4, opset 9."""
    w = _Weights(130)
    inits = [
        _init("conv_W", w.normal((3, 1, 3, 3))), _init("conv_B", w.bias(3)),
        _init("fc_W", w.normal((4, 3 * 3 * 3))), _init("fc_B", w.bias(4)),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "conv_W", "conv_B"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "opset9_ir4", [_vi("x", FLOAT, ["N", 1, 6, 6])], [_vi("y", FLOAT, ["N", 4])],
        inits, ir=4, opset=9,
    )
    return CorpusModel("opset9_ir4", model, {"x": _feed(30, (BATCH, 1, 6, 6))},
                       tags=frozenset({"legacy"}))


def opset11_ir6() -> CorpusModel:
    """Gemm - Clip (min and max as inputs, opset 11 style) - Gemm - Softmax at IR 6, opset 11."""
    w = _Weights(131)
    inits = [
        _init("W1", w.normal((8, 6))), _init("b1", w.bias(8)),
        _init("clip_min", np.array(-0.5, dtype=np.float32)),
        _init("clip_max", np.array(1.5, dtype=np.float32)),
        _init("W2", w.normal((4, 8), scale=1.0)), _init("b2", w.bias(4)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1),
        helper.make_node("Clip", ["h", "clip_min", "clip_max"], ["c"]),
        helper.make_node("Gemm", ["c", "W2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    model = _model(
        nodes, "opset11_ir6", [_vi("x", FLOAT, ["N", 6])], [_vi("y", FLOAT, ["N", 4])], inits,
        ir=6, opset=11,
    )
    return CorpusModel("opset11_ir6", model, {"x": _feed(31, (BATCH, 6))},
                       tags=frozenset({"legacy"}))


def opset26_ir13() -> CorpusModel:
    """Conv + Relu + Flatten + Gemm at IR 13, opset 26 (the newest onnxruntime 1.31 takes)."""
    w = _Weights(132)
    inits = [
        _init("conv_W", w.normal((3, 2, 3, 3))), _init("conv_B", w.bias(3)),
        _init("fc_W", w.normal((4, 3 * 4 * 4))), _init("fc_B", w.bias(4)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_W", "conv_B"], ["conv"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_W", "fc_B"], ["y"], transB=1),
    ]
    model = _model(
        nodes, "opset26_ir13", [_vi("x", FLOAT, ["N", 2, 6, 6])], [_vi("y", FLOAT, ["N", 4])],
        inits, ir=13, opset=26,
    )
    return CorpusModel("opset26_ir13", model, {"x": _feed(32, (BATCH, 2, 6, 6))})


# ---------------------------------------------------------------------------------------------
# Exported from torch


def _torch_export(module: Any, example: Any) -> onnx.ModelProto:
    """TorchScript export (``dynamo=False``), opset 17, dynamic batch, to memory."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buf, dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.EVAL, input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        )
    return onnx.load_model_from_string(buf.getvalue())


def _randomize_norm(norm: Any, gen: Any) -> None:
    """Non-trivial affine parameters (and running statistics) for a torch norm layer."""
    import torch

    with torch.no_grad():
        n = norm.weight.shape
        norm.weight.copy_(0.7 + 0.6 * torch.rand(n, generator=gen))
        norm.bias.copy_(0.1 + 0.2 * torch.rand(n, generator=gen))
        if getattr(norm, "running_mean", None) is not None:
            norm.running_mean.copy_(0.2 * torch.randn(n, generator=gen) + 0.05)
            norm.running_var.copy_(0.5 + torch.rand(n, generator=gen))


def torch_cnn() -> CorpusModel:
    """torch Conv2d + BatchNorm2d (eval) + ReLU + MaxPool2d + Linear, exported by the TorchScript
    exporter at opset 17 (the exporter folds the BN into the Conv)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 5),
    )
    _randomize_norm(net[1], torch.Generator().manual_seed(1))
    net.eval()
    x = _feed(33, (BATCH, 1, 8, 8))
    model = _torch_export(net, torch.from_numpy(x))
    return CorpusModel("torch_cnn", model, {"x": x}, tags=frozenset({"torch"}))


def torch_mlp_gelu() -> CorpusModel:
    """torch Linear + LayerNorm + GELU + Linear, exported by the TorchScript exporter at
    opset 17 (LayerNormalization; GELU as Erf arithmetic)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3))
    _randomize_norm(net[1], torch.Generator().manual_seed(2))
    net.eval()
    x = _feed(34, (BATCH, 6))
    model = _torch_export(net, torch.from_numpy(x))
    return CorpusModel("torch_mlp_gelu", model, {"x": x}, tags=frozenset({"torch"}))


# ---------------------------------------------------------------------------------------------

CORPUS: dict[str, Callable[[], CorpusModel]] = {
    f.__name__: f
    for f in (
        mlp_opset13,
        cnn_bn_opset17,
        cnn_bn_relu_global,
        prelu_leaky,
        attention_block,
        multi_io,
        shared_weight,
        if_outer_scope,
        if_else_branch,
        loop_body_weights,
        scan_body_weights,
        ms_gelu_fusedmatmul,
        ml_scaler,
        dyn_int8_matmul,
        dyn_int8_conv,
        qdq_static_int8,
        int8_constant_weight,
        float16_mlp,
        mixed_precision,
        lstm,
        gru,
        rnn_tanh,
        external_data_mlp,
        scalar_input,
        fixed_batch1,
        duplicate_opset,
        wrong_value_info,
        opset7_ir3,
        opset9_ir4,
        opset11_ir6,
        opset26_ir13,
        torch_cnn,
        torch_mlp_gelu,
    )
}
"""Every builder of the corpus, by model name."""
