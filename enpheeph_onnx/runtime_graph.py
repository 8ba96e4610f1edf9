"""The graph onnxruntime runs at ``ORT_ENABLE_ALL``, and where the model's tensors live in it.

A default onnxruntime session does not run the model's graph as written: on x86 CPUs it
moves convolutions into the blocked NCHWc layout of its ``com.microsoft.nchwc`` kernels
(a tensor ``[N, C, H, W]`` is then stored as ``[N, C/B, H, W, B]``, B = 8 or 16 channels),
fuses activations into the convolution or ``Gemm`` before them and folds constants. The
**runtime graph** is that graph, as onnxruntime writes it with
``optimized_model_filepath`` (:func:`optimize_offline`); sessions load it with no further
optimization (:func:`runtime_options`) and compute, bit for bit, what the deployed session
computes.

For activation and input faults, :func:`place_values` finds where each site of the source
model lives in the runtime graph: the earliest tensor whose values equal the site's (up to
the summation order of a different kernel: compared with a tolerance on a few samples),
read either as stored or as NCHWc blocks. A site the optimizer fused away (a convolution's
output before its ReLU) is brought back by *unfusing* that one node: the fused kernel's
``activation`` attribute removed and a standalone ``Relu`` after it, which computes the
same bits (ReLU is exact). A site found nowhere is not placed (its faults are served on the
source graph's segments instead). Faults on a placed site are then applied to the runtime
tensor at the element the source index names (:meth:`Placement.coordinates`), which is
what ``inject`` (a fault node after the site, then onnxruntime's own optimization) gives.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from .runtime import (
    Optimization,
    Provider,
    batch_of,
    join_batches,
    make_session,
    run_session,
    sample_count,
)
from .runtime import session_options as base_options
from .sites import FaultSite, SiteKind, infer_shapes
from .suffix import exposed

log = logging.getLogger(__name__)

NCHWC_DOMAIN = "com.microsoft.nchwc"

UNFUSABLE = {"Relu"}
"""Fused activations that can be split off bit-exactly (the activation is exact)."""

_COPIES = {"ReorderOutput", "ReorderInput", "Identity"}
"""Ops whose output holds the same values as their input (in another layout)."""

BLOCKS = (4, 8, 16, 32)
"""NCHWc block sizes to try (MLAS uses 8 with AVX2, 16 with AVX-512)."""


def optimize_offline(model: onnx.ModelProto, provider: Provider, threads: int | None
                     ) -> onnx.ModelProto:
    """``model`` as onnxruntime runs it at ``ORT_ENABLE_ALL`` on ``provider``: the graph
    it writes to ``optimized_model_filepath`` (fusions, NCHWc layouts, folded constants).

    Raises:
        EnpheephError: onnxruntime cannot load or optimize the model.
    """
    so = base_options(threads, Optimization.ALL)
    with tempfile.TemporaryDirectory(prefix="enpheeph-runtime-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        so.optimized_model_filepath = str(path)
        make_session(model, provider, so)
        return onnx.load(path)


def runtime_options(threads: int | None) -> ort.SessionOptions:
    """Options of the sessions on the runtime graph: already optimized, so no further
    graph optimization; pre-packing of its constant weights on, as deployed."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return so


@dataclass(frozen=True)
class Placement:
    """Where a site of the source model lives in the runtime graph.

    Attributes:
        tensor: the runtime graph's tensor (its logical shape is the site's).
        block: NCHWc block size when the tensor is stored as ``[N, C/B, H, W, B]``
            (``None``: stored as the site's shape).
    """

    tensor: str
    block: int | None = None

    def view(self, arr: np.ndarray) -> np.ndarray:
        """``arr`` (the runtime tensor, logical shape ``[N, C, H, W]``) as its stored
        elements: ``[N, C/B, H, W, B]`` for a blocked tensor (a view, no copy)."""
        if self.block is None:
            return arr
        n, c, h, w = arr.shape
        return arr.reshape(n, c // self.block, h, w, self.block)

    def coordinates(self, index: np.ndarray) -> np.ndarray:
        """Source coordinates ``[K, 4]`` (``-1`` = every sample on axis 0 only) as
        coordinates of :meth:`view` (``[K, 5]`` for a blocked tensor)."""
        if self.block is None:
            return index
        n, c, h, w = (index[:, i] for i in range(4))
        return np.stack([n, c // self.block, h, w, c % self.block], axis=1)


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((a for a in node.attribute if a.name == name), None)


def _fused_activation(node: onnx.NodeProto) -> str | None:
    a = _attr(node, "activation")
    if a is None or node.domain not in (NCHWC_DOMAIN, "com.microsoft"):
        return None
    return a.s.decode() if isinstance(a.s, bytes) else str(a.s)


def unfuse(model: onnx.ModelProto, which: set[int] | None = None
           ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``model`` with fused ReLUs split off their kernel (nodes ``which``; ``None``: all that
    can be): a ``com.microsoft.nchwc`` ``Conv`` or ``com.microsoft`` ``FusedConv`` /
    ``FusedGemm`` without its ``activation`` attribute, then a ``Relu``. Returns the model
    and, for every split node, its new pre-activation tensor -> the node's position."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes: list[onnx.NodeProto] = []
    pre: dict[str, int] = {}
    for i, n in enumerate(model.graph.node):
        act = _fused_activation(n)
        if act not in UNFUSABLE or (which is not None and i not in which):
            nodes.append(m.graph.node[i])
            continue
        k = onnx.NodeProto()
        k.CopyFrom(n)
        del k.attribute[:]
        k.attribute.extend(a for a in n.attribute
                           if a.name not in ("activation", "activation_params"))
        if n.domain == "com.microsoft" and n.op_type in ("FusedGemm", "FusedConv"):
            k.op_type = n.op_type[len("Fused"):]
            k.domain = ""
        out = n.output[0]
        mid = f"enpheeph/unfused/{out}"
        k.output[0] = mid
        k.name = f"{n.name or out}/unfused"
        nodes.append(k)
        nodes.append(helper.make_node(act, [mid], [out], name=f"enpheeph/unfused/{out}/{act}"))
        pre[mid] = i
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m, pre


def _all_tensors(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    inits = {t.name for t in g.initializer}
    names = [i.name for i in g.input if i.name not in inits]
    names += [o for n in g.node for o in n.output if o]
    return list(dict.fromkeys(names))


def _blocked(model: onnx.ModelProto) -> set[str]:
    """Tensors stored in NCHWc blocks: produced by NCHWc kernels (``ReorderOutput``
    aside), or by an activation split off one of them (:func:`unfuse`)."""
    out: set[str] = set()
    for n in model.graph.node:
        if (n.domain == NCHWC_DOMAIN and n.op_type != "ReorderOutput") or (
                n.name.startswith("enpheeph/unfused/") and n.op_type in UNFUSABLE
                and n.input[0] in out):
            out.update(n.output)
    return out


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind != "f":
        return a.tobytes() == b.tobytes()
    with np.errstate(invalid="ignore"):
        return bool(np.allclose(a, b, rtol=1e-3, atol=1e-5, equal_nan=True))


def place_values(source: onnx.ModelProto, runtime: onnx.ModelProto,
                 sites: Sequence[FaultSite], sample: Mapping[str, np.ndarray],
                 provider: Provider, threads: int | None
                 ) -> tuple[onnx.ModelProto, dict[str, Placement]]:
    """The runtime graph to run activation/input faults on and where each site lives.

    Args:
        source: the source model.
        runtime: its :func:`optimize_offline` graph.
        sites: activation and input sites of ``source``.
        sample: a few inputs (a batch of the campaign's data) to compare values on.

    Returns:
        The runtime graph (ReLUs split off where a site needs it; every tensor typed in
        ``value_info``, so that segments can be extracted) and the placement of every site
        found (sites missing from it are not in the graph onnxruntime runs).

    Raises:
        EnpheephError: onnxruntime cannot run either graph on ``sample``.
    """
    asked = [s.name for s in sites if s.kind in (SiteKind.ACTIVATION, SiteKind.INPUT)]
    # every tensor of the source is matched, not only the sites asked for: two source
    # tensors on one runtime tensor are told apart by nothing, so neither is placed
    inits = {t.name for t in source.graph.initializer}
    wanted = list(dict.fromkeys([*asked, *(o for n in source.graph.node
                                           if n.op_type != "Constant" for o in n.output if o)]))
    ref_model = exposed(infer_shapes(source), [n for n in wanted
                                               if n not in {i.name for i in source.graph.input}
                                               and n not in inits])
    sess = make_session(ref_model, provider, base_options(threads, Optimization.EXTENDED))
    feeds = {i.name: sample[i.name] for i in sess.get_inputs()}
    ref = dict(zip([o.name for o in sess.get_outputs()],
                   run_session(sess, None, feeds), strict=True))
    ref.update({k: v for k, v in feeds.items()})
    del sess

    split, pre = unfuse(runtime)
    names = _all_tensors(split)
    probe = exposed(split, [n for n in names if n not in {i.name for i in split.graph.input}])
    sess = make_session(probe, provider, runtime_options(threads))
    got = dict(zip([o.name for o in sess.get_outputs()],
                   run_session(sess, None, {k: v for k, v in feeds.items()
                                            if k in {i.name for i in sess.get_inputs()}}),
                   strict=True))
    got.update({k: v for k, v in feeds.items() if k in names})
    del sess
    blocked = _blocked(split)
    copy_of = {n.output[0]: n.input[0] for n in split.graph.node
               if n.op_type in _COPIES and n.input and n.output}
    placed: dict[str, Placement] = {}
    for name in wanted:
        want = ref.get(name)
        if want is None or len(np.unique(want)) < 2:
            continue  # (a constant tensor would match any other of its shape)
        found: list[Placement] = []
        for t in names:
            arr = got.get(t)
            if arr is None or arr.shape != want.shape:
                continue
            if t in blocked and arr.ndim == 4:
                for b in BLOCKS:
                    if arr.shape[1] % b == 0:
                        p = Placement(t, b)
                        logical = p.view(arr).transpose(0, 1, 4, 2, 3).reshape(arr.shape)
                        if _close(logical, want):
                            found.append(p)
                            break
            elif t not in blocked and _close(arr, want):
                found.append(Placement(t))
        # copies of a match (layout changes) match too: keep the original, which every
        # copy is made from; two unrelated matches are ambiguous, and placed nowhere
        tensors = {p.tensor for p in found}
        roots = [p for p in found if copy_of.get(p.tensor) not in tensors]
        if len(roots) == 1:
            placed[name] = roots[0]
        elif roots:
            log.info("site %r matches %d tensors of the runtime graph: not placed", name,
                     len(roots))
    # two sites on one tensor: values that coincide on the sample (a convolution's output
    # and its folded BatchNormalization's, a pre-activation that is positive on the sample)
    # say nothing about which is which: neither is placed
    claims: dict[str, list[str]] = {}
    for name, p in placed.items():
        claims.setdefault(p.tensor, []).append(name)
    for tensor, names_ in claims.items():
        if len(names_) > 1:
            log.info("sites %s match the same runtime tensor %r: not placed", names_, tensor)
            for n in names_:
                del placed[n]
    placed = {n: p for n, p in placed.items() if n in set(asked)}
    used = {pre[p.tensor] for p in placed.values() if p.tensor in pre}
    final, _ = unfuse(runtime, used)
    types = {t: helper.np_dtype_to_tensor_dtype(a.dtype) for t, a in got.items()}
    g = final.graph
    typed = {v.name for v in [*g.input, *g.output, *g.value_info]}
    g.value_info.extend(helper.make_tensor_value_info(t, types[t], None)
                        for t in _all_tensors(final) if t not in typed and t in types)
    missing = [n for n in asked if n not in placed]
    if missing:
        log.info("%d site(s) not in the graph onnxruntime runs (e.g. %r): their faults run "
                 "on the source graph's segments", len(missing), missing[0])
    return final, placed


def deviation(outputs: Mapping[str, np.ndarray], source: onnx.ModelProto,
              data: Mapping[str, np.ndarray], batch_size: int | None, provider: Provider,
              threads: int | None, optimization: Optimization = Optimization.ALL) -> float:
    """The largest absolute difference, over every element of ``outputs`` (a campaign's
    golden outputs for ``data``), from a plain onnxruntime session of the unmodified
    ``source`` at ``optimization`` (``ALL``: a default session, with pre-packing), run in
    the same batches (0.0: bit-identical up to signed zeros; ``nan`` where only one of them
    is NaN)."""
    sess = make_session(source, provider, base_options(threads, optimization))
    inputs = {i.name for i in sess.get_inputs()}
    n = sample_count(data)
    step = batch_size or n
    worst = 0.0
    for name, a in outputs.items():
        chunks = [run_session(sess, [name], {k: v for k, v in batch_of(data, s, step).items()
                                             if k in inputs})[0] for s in range(0, n, step)]
        sizes = [min(step, n - s) for s in range(0, n, step)]
        b = np.asarray(join_batches(name, chunks, sizes))
        a = np.asarray(a)
        if a.dtype.kind != "f":
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max(initial=0)))
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            both_nan = np.isnan(a) & np.isnan(b)
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            diff[both_nan | (a == b)] = 0.0
        if np.isnan(diff).any():
            return float("nan")
        worst = max(worst, float(diff.max(initial=0)))
    return worst


__all__ = ["BLOCKS", "NCHWC_DOMAIN", "Placement", "deviation", "optimize_offline",
           "place_values", "runtime_options", "unfuse"]
