"""Run-time fault feeding: one onnxruntime session serves a whole campaign.

The campaign model is the source model with

* every candidate **weight** made an *overridable initializer* (also listed as a graph
  input; ``Constant``-node weights become initializers first): a trial feeds only the
  perturbed copies of the weights it hits, the others keep their stored values;
* every candidate **activation/input** followed by a ``FeedFaults_<dtype>`` node (a
  model-local function in the ``enpheeph`` domain) with four run-time inputs
  ``enpheeph/<site>/indices`` (int64 ``[K, rank]``) and ``.../and``, ``.../or``,
  ``.../xor`` (container dtype ``[K]``); its body is
  ``GatherND -> BitCast -> BitwiseAnd -> BitwiseOr -> BitwiseXor -> BitCast -> ScatterND``,
  so only the K faulted elements are touched, behind an ``If`` that skips it all (an
  ``Identity``) when ``K = 0``, which reproduces the golden outputs bit for bit.

Trials whose faults all lie on activations or inputs do not use that model: the segment
chain (:mod:`enpheeph_onnx.chain`) applies their faults on the host between sessions of the
unmodified graph's segments (with suffix re-execution on; see :meth:`FaultEngine.chain`).

Several faults on the same element within one trial are folded host-side into one affine
bit transform (:meth:`enpheeph_onnx.bits.BitTransform.then`), in plan order, because
``ScatterND`` leaves duplicate indices undefined (ONNX spec, ScatterND-18).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .bits import BY_NAME, DType
from .chain import ChainUnavailable, ValueChain, apply_in_place, batch_rows
from .errors import EnpheephError
from .faults import Fault
from .faultset import FaultSet, fold
from .held import HeldWeights, weight_constants
from .model import (
    TARGET_OPSET,
    clamp_ir_version,
    ensure_opset,
    has_subgraphs,
    name_body_tensors,
    node_bodies,
    rename_outer_reads,
)
from .rewrite import FAULT_DOMAIN, perturb_weights
from .runtime import (
    Optimization,
    Provider,
    batch_of,
    join_batches,
    make_session,
    run_batched,
    run_session,
    sample_count,
    session_options,
)
from .runtime_graph import deviation, optimize_offline, place_values, runtime_options
from .sites import FaultSite, SiteKind, infer_shapes
from .suffix import GoldenCache, crossing_tensors, exposed, feeds_of, site_positions, suffix_model

log = logging.getLogger(__name__)


def _bit_ops(dtype: DType, gathered: str) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing ``((u & and) | or) ^ xor`` on the stored bits of ``gathered``;
    returns them and the name of the updated values (in ``dtype``)."""
    nodes = []
    u = gathered
    if dtype.is_float:
        nodes.append(helper.make_node("BitCast", [gathered], ["gu"], to=dtype.container_onnx))
        u = "gu"
    nodes += [
        helper.make_node("BitwiseAnd", [u, "and"], ["t_and"]),
        helper.make_node("BitwiseOr", ["t_and", "or"], ["t_or"]),
        helper.make_node("BitwiseXor", ["t_or", "xor"], ["t_xor"]),
    ]
    if not dtype.is_float:
        return nodes, "t_xor"
    nodes.append(helper.make_node("BitCast", ["t_xor"], ["upd"], to=dtype.onnx))
    return nodes, "upd"


def _gated_function(name: str, index_input: str, apply: list[onnx.NodeProto], dtype: DType,
                    doc: str) -> onnx.FunctionProto:
    """``name(x, <index_input>, and, or, xor) -> y``: ``apply`` (ending in ``y_faulty``)
    inside an ``If`` that passes ``x`` through (``Identity``) when the index input is
    empty (K = 0): most sites of a trial carry no fault, and a scatter would copy the
    whole tensor. ``k`` (K as a 1-element int64 tensor) is visible to ``apply``."""
    then = helper.make_graph(apply, "apply_faults", [], [
        helper.make_tensor_value_info("y_faulty", dtype.onnx, None)])
    skip = helper.make_graph([helper.make_node("Identity", ["x"], ["y_same"])], "no_fault", [],
                             [helper.make_tensor_value_info("y_same", dtype.onnx, None)])
    gate = [
        helper.make_node("Shape", [index_input], ["k"], start=0, end=1),
        helper.make_node("Constant", [], ["zero"], value_ints=[0]),
        helper.make_node("Greater", ["k", "zero"], ["any1"]),
        helper.make_node("Squeeze", ["any1"], ["any"]),
        helper.make_node("If", ["any"], ["y"], then_branch=then, else_branch=skip),
    ]
    return helper.make_function(
        FAULT_DOMAIN, name, ["x", index_input, "and", "or", "xor"], ["y"], gate,
        opset_imports=[helper.make_opsetid("", TARGET_OPSET)], doc_string=doc)


def feed_function(dtype: DType) -> onnx.FunctionProto:
    """``FeedFaults_<dtype>(x, indices, and, or, xor) -> y``: the run-time fault node.

    ``y = ScatterND(x, indices, f(GatherND(x, indices)))`` with
    ``f(u) = ((u & and) | or) ^ xor`` on the stored bits, inside an ``If`` that passes
    ``x`` through when no fault is fed (K = 0). Source: ONNX operator spec, GatherND-13,
    ScatterND-18, BitCast-26, Bitwise*-18, If-21.
    """
    ops, upd = _bit_ops(dtype, "g")
    apply = [helper.make_node("GatherND", ["x", "indices"], ["g"]), *ops,
             helper.make_node("ScatterND", ["x", "indices", upd], ["y_faulty"])]
    return _gated_function(f"FeedFaults_{dtype.name}", "indices", apply, dtype,
                           "enpheeph-onnx run-time fault feed: faults given as inputs")


def _broadcastable(s: FaultSite) -> bool:
    """A dynamic batch dimension first and static dimensions after it."""
    return (len(s.shape) >= 2 and not isinstance(s.shape[0], int)
            and all(isinstance(d, int) for d in s.shape[1:]))


def broadcast_function(dtype: DType) -> onnx.FunctionProto:
    """``BroadcastFaults_<dtype>(x, positions, and, or, xor) -> y``: faults that hit the
    same element of every sample of the batch (``[*, c, h, w]``), fed once per trial.

    ``x`` is viewed as ``[batch, -1]``; ``positions`` (int64 ``[K]``) are flat per-sample
    element numbers, expanded over the batch inside the graph, so the host's work does
    not grow with the batch. Body: ``Reshape -> GatherElements -> BitCast -> Bitwise ->
    BitCast -> ScatterElements -> Reshape`` behind an ``If`` that passes ``x`` through when
    ``K = 0``. Source: ONNX operator spec, GatherElements-13, ScatterElements-18, Expand-13.
    """
    ops, upd = _bit_ops(dtype, "g")
    apply = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Shape", ["x"], ["batch"], start=0, end=1),
        helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
        helper.make_node("Concat", ["batch", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["x", "flat_shape"], ["flat"]),
        helper.make_node("Constant", [], ["axis0"], value_ints=[0]),
        helper.make_node("Unsqueeze", ["positions", "axis0"], ["pos_row"]),
        helper.make_node("Concat", ["batch", "k"], ["grid_shape"], axis=0),
        helper.make_node("Expand", ["pos_row", "grid_shape"], ["grid"]),
        helper.make_node("GatherElements", ["flat", "grid"], ["g"], axis=1),
        *ops,
        helper.make_node("ScatterElements", ["flat", "grid", upd], ["scattered"], axis=1),
        helper.make_node("Reshape", ["scattered", "shape"], ["y_faulty"]),
    ]
    return _gated_function(f"BroadcastFaults_{dtype.name}", "positions", apply, dtype,
                           "enpheeph-onnx run-time fault feed: the same elements of every "
                           "sample")


def _mask_dtype(d: DType) -> np.dtype:
    return d.container if d.is_float else d.numpy


@dataclass(frozen=True)
class _Port:
    site: FaultSite
    dtype: DType
    indices: str
    and_: str
    or_: str
    xor: str
    broadcast: tuple[str, str, str, str] | None = None  # positions, and, or, xor


def instrument(model: onnx.ModelProto, sites: Sequence[FaultSite]
               ) -> tuple[onnx.ModelProto, dict[str, _Port]]:
    """The campaign model: ``sites`` made overridable (weights) or fed (others)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    value_sites = [s for s in sites if s.kind is not SiteKind.WEIGHT]
    if value_sites:
        m = ensure_opset(m)
    clamp_ir_version(m)
    weight_names = {s.name for s in sites if s.kind is SiteKind.WEIGHT}
    m = weight_constants(m, weight_names)  # so that Constant-node weights can be overridden
    g = m.graph
    listed = {i.name for i in g.input}
    for t in g.initializer:
        if t.name in weight_names and t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))

    ports: dict[str, _Port] = {}
    funcs: dict[str, onnx.FunctionProto] = {}
    new_nodes: list[onnx.NodeProto] = []
    by_producer: dict[str, list[FaultSite]] = {}
    inputs_first = []
    for s in value_sites:
        if s.kind is SiteKind.INPUT:
            inputs_first.append(s)
        else:
            by_producer.setdefault(s.name, []).append(s)

    def fault_nodes(s: FaultSite, src: str, dst: str) -> list[onnx.NodeProto]:
        d = BY_NAME[s.dtype]
        f = feed_function(d)
        funcs.setdefault(f.name, f)
        p = _Port(s, d, f"enpheeph/{s.name}/indices", f"enpheeph/{s.name}/and",
                  f"enpheeph/{s.name}/or", f"enpheeph/{s.name}/xor")
        ports[s.name] = p
        rank = max(len(s.shape), 1)  # a scalar is fed as a 1-element vector
        k = f"faults_{len(ports)}"  # one dim name per site: K differs between sites
        g.input.append(helper.make_tensor_value_info(p.indices, onnx.TensorProto.INT64,
                                                     [k, rank]))
        mt = helper.np_dtype_to_tensor_dtype(_mask_dtype(d))
        for name in (p.and_, p.or_, p.xor):
            g.input.append(helper.make_tensor_value_info(name, mt, [k]))
        node = f"enpheeph/{s.name}/FeedFaults"
        if _broadcastable(s):
            bf = broadcast_function(d)
            funcs.setdefault(bf.name, bf)
            kb = f"{k}_b"
            names = tuple(f"enpheeph/{s.name}/broadcast/{x}"
                          for x in ("positions", "and", "or", "xor"))
            g.input.append(helper.make_tensor_value_info(names[0], onnx.TensorProto.INT64,
                                                         [kb]))
            for name in names[1:]:
                g.input.append(helper.make_tensor_value_info(name, mt, [kb]))
            p = replace(p, broadcast=names)  # type: ignore[arg-type]
            ports[s.name] = p
            mid = f"enpheeph/{s.name}/broadcast/out"
            return [
                helper.make_node(bf.name, [src, *names], [mid], name=f"{node}/Broadcast",
                                 domain=FAULT_DOMAIN),
                helper.make_node(f.name, [mid, p.indices, p.and_, p.or_, p.xor], [dst],
                                 name=node, domain=FAULT_DOMAIN),
            ]
        if s.shape:
            return [helper.make_node(f.name, [src, p.indices, p.and_, p.or_, p.xor], [dst],
                                     name=node, domain=FAULT_DOMAIN)]
        one, scalar = f"{node}/shape1", f"{node}/shape0"
        g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), one),
                              numpy_helper.from_array(np.zeros(0, np.int64), scalar)])
        return [
            helper.make_node("Reshape", [src, one], [f"{node}/vec"], name=f"{node}/Reshape1"),
            helper.make_node(f.name, [f"{node}/vec", p.indices, p.and_, p.or_, p.xor],
                             [f"{node}/out"], name=node, domain=FAULT_DOMAIN),
            helper.make_node("Reshape", [f"{node}/out", scalar], [dst], name=f"{node}/Reshape0"),
        ]

    renamed: dict[str, str] = {}
    for s in inputs_first:
        out = f"enpheeph/{s.name}/out"
        new_nodes.extend(fault_nodes(s, s.name, out))
        renamed[s.name] = out

    def splice(graph: onnx.GraphProto, new_nodes: list[onnx.NodeProto],
               main: bool = True) -> None:
        """Fault nodes after the producers of the sites in ``graph`` and in its bodies (a
        body's fault inputs are main-graph inputs, read from the outer scope)."""
        for n in graph.node:
            for k, name in enumerate(n.input):
                if main and name in renamed:
                    n.input[k] = renamed[name]
            for _, body in node_bodies(n):
                if renamed:  # bodies reading a faulted graph input from outer scope
                    rename_outer_reads(body, renamed)
                splice(body, [], main=False)
            extra = []
            for k, name in enumerate(n.output):
                if name in by_producer:
                    pre = f"enpheeph/{name}/in"
                    n.output[k] = pre
                    extra.extend(fault_nodes(by_producer[name][0], pre, name))
            new_nodes.append(n)
            new_nodes.extend(extra)
        del graph.node[:]
        graph.node.extend(new_nodes)
        vi = [v for v in graph.value_info if v.name not in by_producer]
        del graph.value_info[:]
        graph.value_info.extend(vi)

    splice(g, new_nodes)
    if funcs:
        m.functions.extend(funcs.values())
        if not any(o.domain == FAULT_DOMAIN for o in m.opset_import):
            m.opset_import.append(helper.make_opsetid(FAULT_DOMAIN, 1))
    onnx.checker.check_model(m)
    return m, ports


@dataclass
class _Variant:
    """One instrumented model and its session: weights overridable, value faults fed at
    the sites in ``ports``."""

    model: onnx.ModelProto
    session: Any
    ports: dict[str, _Port]
    golden: dict[str, np.ndarray] | None = None
    start: int = 0  # the suffix's first node (0: the whole model)
    inputs: frozenset[str] = frozenset()  # the session's input names


class FaultEngine:
    """Instrumented models and onnxruntime sessions for many fault trials.

    Every targeted weight is an overridable initializer in every session. Activation and
    input faults need fault nodes, and a fault node costs even when idle (it blocks
    onnxruntime's fusions of the nodes around it), so the engine keeps sessions
    instrumented at only the sites a trial hits, built when a set of hit sites comes back
    (at most ``max_variants`` of them; otherwise one session instrumented at every site
    serves). Each session's faulty outputs are compared with that same session's golden
    outputs (:meth:`reference`), so instrumentation never shows up as an SDC.

    Args:
        model: the source model (not modified).
        sites: candidate fault sites (weights, activations, inputs) of ``model``.
        provider: ``"cpu"``, ``"cuda"`` or ``"tensorrt"`` (verified, see :func:`make_session`).
        threads: intra-op threads (``None``: onnxruntime's default).
        max_variants: sessions kept for sets of hit activation/input sites.
        suffix: run a trial on the suffix of the graph after the golden tensors crossing
            the cut before its first hit site (:mod:`enpheeph_onnx.suffix`), cached per
            batch; each cut is checked bit-identical to the full model before use.
        cache_mb: the most memory the suffix cache may hold; beyond it full runs serve.
        suffix_worth: keep a cut only if its fault-free run takes at most this fraction of
            a whole-model run (default :data:`SUFFIX_WORTH`; ``inf`` keeps every cut).
        optimization: onnxruntime's graph optimizations (:class:`Optimization`). At
            ``ALL`` weight sites are served on the graph onnxruntime optimizes
            (:mod:`enpheeph_onnx.held`), activation/input sites by the segment chain.

    Raises:
        EnpheephError: ``ALL`` with weight and activation/input sites together, or with
            weights that cannot be probed (:func:`enpheeph_onnx.held.locate`: dtype, size,
            a value-dependent fusion). Weights onnxruntime folds into other constants (a
            ``Conv`` and its ``BatchNormalization``) stay constants at either level: a
            trial hitting one runs on a session of the model with its faults written in,
            as ``inject`` writes them (:attr:`folded_weights`).

    Sessions are keyed by (first node of the suffix, instrumented sites). The golden
    references and the suffix cache are kept for the last ``data`` object (by identity):
    pass a new mapping, not the same one modified in place, to run on other data.
    """

    def __init__(self, model: onnx.ModelProto, sites: Sequence[FaultSite],
                 provider: Provider = "cpu", threads: int | None = None,
                 max_variants: int = 16, suffix: bool = True, cache_mb: float = 512.0,
                 suffix_worth: float | None = None,
                 optimization: Optimization = Optimization.EXTENDED) -> None:
        model = name_body_tensors(model)  # body activations under their site names
        held = Optimization(optimization) is Optimization.ALL and any(
            s.kind is SiteKind.WEIGHT for s in sites)
        if held and any(s.kind is not SiteKind.WEIGHT for s in sites):
            raise EnpheephError(
                "--optimization all runs weight faults on the graph onnxruntime optimizes, "
                "where activations are no longer the model's tensors, so one campaign cannot "
                "mix weights with activations or inputs; use --kinds weight, or "
                "--kinds activation,input, or --optimization extended")
        self.optimization = Optimization(optimization)
        self._held: HeldWeights | None = None
        self.source = model
        self.suffix = suffix
        self.cache_mb = cache_mb
        self.suffix_worth = SUFFIX_WORTH if suffix_worth is None else suffix_worth
        self._pos = site_positions(model, sites)
        self._suffix_models: dict[int, onnx.ModelProto | None] = {}
        self._bad_cuts: set[int] = set()
        self._verified: set[int] = set()
        self._slow_cuts: set[int] = set()
        self._cut_seen: dict[int, int] = {}
        self._full_seconds: float | None = None
        self._inferred: onnx.ModelProto | None = None
        self._cache: GoldenCache | None = None
        self._cache_key: tuple[int, int | None] | None = None
        self._cache_data: Mapping[str, np.ndarray] | None = None
        self.sites = {s.name: s for s in sites}
        self.provider = provider
        self.options = session_options(threads, self.optimization)
        self.max_variants = max_variants
        self._weight_sites = [s for s in sites if s.kind is SiteKind.WEIGHT]
        self._value_sites = [s for s in sites if s.kind is not SiteKind.WEIGHT]
        self._full = frozenset(s.name for s in self._value_sites)
        # whether trials need sessions instrumented at exactly their hit sites
        # (:meth:`_check_exact`); None: not measured yet
        self._exact: bool | None = None if self._full else False
        self._variants: OrderedDict[tuple[int, frozenset[str]], _Variant] = OrderedDict()
        self._seen: dict[frozenset[str], int] = {}  # sightings of each hit set
        self._ref_data: Mapping[str, np.ndarray] | None = None
        self._ref_batch: int | None = None
        self._weights: dict[str, np.ndarray] = {}
        if held:
            self._held = HeldWeights(model, sites, provider, threads, suffix, cache_mb,
                                     folded="bake")
            self.model, self.session = self._held.model, self._held.session
        else:
            base = self._variant((0, frozenset()))
            self.model, self.session = base.model, base.session
            tensors = {t.name: t for t in self.model.graph.initializer}
            for s in self._weight_sites:
                self._weights[s.name] = numpy_helper.to_array(tensors[s.name]).copy()
        self.providers = self.session.get_providers()
        self._shape_cache: dict[tuple[tuple[str, tuple[int, ...]], ...],
                                dict[str, tuple[int, ...]]] = {}
        self._chain: ValueChain | None = None
        self._chain_tried = False
        self._warned_all = False
        self.threads = threads
        # at ALL: a chain on the graph onnxruntime runs (built from the first data)
        self._runtime_chain: ValueChain | None = None
        self._runtime_tried = False
        self._chain_checked = False  # the source chain's golden run equals the model's
        # weights kept constant, faulted by a session per trial (:meth:`_check_weights`);
        # None: not measured yet
        self._baked: frozenset[str] | None = (
            None if self._held is None else self._held.folded)
        self._baked_refs: dict[tuple[frozenset[str], int, int | None],
                               dict[str, np.ndarray]] = {}
        self._last_baked: tuple[FaultSet, dict[str, np.ndarray]] | None = None
        self._last: tuple[FaultSet, ValueChain] | None = None  # which chain served a trial

    def chain(self) -> ValueChain | None:
        """The segment chain that serves activation/input-only trials (suffix
        re-execution with host-side faults, :mod:`enpheeph_onnx.chain`), or ``None``."""
        if not self._chain_tried:
            self._chain_tried = True
            if self.suffix and self._value_sites:
                if self._inferred is None:
                    self._inferred = infer_shapes(self.source)
                rc = self._runtime_chain  # one --cache-mb bound for both chains
                used = 0.0 if rc is None else (rc.cache_bytes + rc.session_bytes) / 2**20
                try:
                    self._chain = ValueChain(
                        self._inferred, self._value_sites, self.provider,
                        self.options, max(0.0, self.cache_mb - used))
                except ChainUnavailable as e:
                    log.info("activation faults fed in the graph: %s", e)
        return self._chain

    def runtime_chain(self, data: Mapping[str, np.ndarray], batch_size: int | None
                      ) -> ValueChain | None:
        """At ``--optimization all``: the segment chain on the graph onnxruntime runs
        (:mod:`enpheeph_onnx.runtime_graph`; NCHWc layouts kept across the boundaries),
        for the sites found in it, built on first use from the first batch of ``data``;
        ``None`` elsewhere."""
        if not self._runtime_tried and self.suffix and self._value_sites and (
                self.optimization is Optimization.ALL):
            self._runtime_tried = True
            try:
                if has_subgraphs(self.source.graph):  # before the costly placement
                    raise ChainUnavailable("the graph has subgraphs")
                runtime = optimize_offline(self.source, self.provider, self.threads)
                first = batch_of(data, 0, batch_size or sample_count(data))
                model, placed = place_values(self.source, runtime, self._value_sites, first,
                                             self.provider, self.threads)
                if placed:
                    self._runtime_chain = ValueChain(
                        model, [s for s in self._value_sites if s.name in placed],
                        self.provider, runtime_options(self.threads), self.cache_mb, placed)
            except (ChainUnavailable, EnpheephError) as e:
                log.info("no segment chain on the runtime graph: %s", e)
        return self._runtime_chain

    def _chains(self, fs: FaultSet, data: Mapping[str, np.ndarray],
                batch_size: int | None) -> Iterator[ValueChain]:
        """The prepared chains that can serve ``fs``, best first (the runtime graph's, then
        the source graph's, built only when the first cannot serve); a chain that fails to
        prepare is dropped for good."""
        for which in ("runtime", "source"):
            c = (self.runtime_chain(data, batch_size) if which == "runtime"
                 else self.chain())
            if c is None or not c.serves(fs):
                continue
            try:
                c.prepare(data, batch_size)
            except ChainUnavailable as e:
                log.info("segment chain (%s graph) abandoned: %s", which, e)
                if which == "runtime":
                    self._runtime_chain = None
                else:
                    self._chain = None
                continue
            if which == "source" and not self._chain_checked:
                self._chain_checked = True
                whole = self._run(self._variant((0, frozenset())), data, FaultSet.empty(),
                                  batch_size)
                cut = c.reference(data, batch_size)
                if any(whole[n].tobytes() != cut[n].tobytes() for n in whole):
                    # the cuts keep onnxruntime from fusing across them (a Conv and its
                    # BatchNormalization, float16 computed in float32): trials would not
                    # equal inject + run of the same faults
                    log.info("segment chain abandoned: its golden outputs differ from the "
                             "whole model's (onnxruntime fuses across the cuts)")
                    self._chain = None
                    continue
            yield c

    def _variant(self, key: tuple[int, frozenset[str]]) -> _Variant:
        v = self._variants.get(key)
        if v is None:
            start, hit = key
            src = self.source if start == 0 else self._suffix_models[start]
            assert src is not None
            present = _tensor_names(src)
            chosen = [s for s in (*self._weight_sites,
                                  *(s for s in self._value_sites if s.name in hit))
                      if s.name in present]
            model, ports = instrument(src, chosen)
            sess = make_session(model, self.provider, self.options)
            fed = [*sess.get_inputs(), *sess.get_overridable_initializers()]
            v = _Variant(model, sess, ports, start=start,
                         inputs=frozenset(i.name for i in fed))
            self._variants[key] = v
            log.debug("built a session from node %d instrumented at %d site(s)", start,
                      len(hit))
            if self._exact:  # sessions per hit set, the least recently used ones go
                spare = [k for k in self._variants if k[1] and k != key]
                for k in spare[:max(0, len(spare) + 1 - self.max_variants)]:
                    del self._variants[k]
        self._variants.move_to_end(key)
        return v

    def _start(self, faults: FaultSet) -> int:
        """The first node of the suffix a trial could run on (0: the whole model)."""
        if not self.suffix or not len(faults):
            return 0
        start = min(self._pos.get(name, 0) for name in faults.hit_sites())
        return 0 if start in self._bad_cuts else start

    def _has_suffix(self, start: int) -> bool:
        """Build the suffix model of a cut (once); False where none can be had."""
        if start not in self._suffix_models:
            if self._inferred is None:
                self._inferred = infer_shapes(self.source)  # once: every cut needs shapes
            self._suffix_models[start] = suffix_model(self._inferred, start)
        if self._suffix_models[start] is None:
            self._bad_cuts.add(start)
            return False
        return True

    def _key(self, faults: FaultSet, sighting: bool = True) -> tuple[int, frozenset[str]]:
        """The session for a trial: instrumented at exactly its hit sites once that set of
        sites has come back (a session built for a set seen once, e.g. the random sites of
        a multi-fault trial, would not pay off), else at every site; run from the trial's
        first hit site on where that cut is usable (suffix re-execution), else whole.
        Sightings count by hit set alone, so the choice between a per-set and the
        everywhere-instrumented session is the same with and without suffixes.
        ``sighting``: count this call as a sighting (:meth:`run` does, :meth:`reference`
        does not, so both pick the same session for the same trial)."""
        hit = frozenset(faults.hit_sites() & self._full)
        start = self._start(faults)
        if start and (start, hit) in self._variants:
            return (start, hit)
        if not hit or (0, hit) in self._variants or self._exact:
            base = (0, hit)
        else:
            if sighting:
                self._seen[hit] = self._seen.get(hit, 0) + 1
            sets = {k[1] for k in self._variants if k[1] and k[1] != self._full}
            room = len(sets) < self.max_variants
            base = (0, hit) if room and self._seen.get(hit, 0) >= 2 else (0, self._full)
        # the everywhere-instrumented session always runs whole: a suffix of it would be
        # built for first sightings, which do not come back; a weights-only cut is built
        # when it comes back
        if not start or (hit and base[1] == self._full):
            return base
        if not hit:
            if sighting:
                self._cut_seen[start] = self._cut_seen.get(start, 0) + 1
            if self._cut_seen.get(start, 0) < 2:
                return base
        return (start, base[1]) if self._has_suffix(start) else base

    @property
    def ports(self) -> dict[str, _Port]:
        """The fault inputs of a session instrumented at every activation/input site."""
        return self._variant((0, self._full)).ports

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.source.graph.input
                if i.name not in {t.name for t in self.source.graph.initializer}]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def _concrete_shapes(self, batch: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        key = tuple(sorted((k, tuple(v.shape)) for k, v in batch.items()))
        if key not in self._shape_cache:
            m = onnx.ModelProto()
            m.CopyFrom(self.source)
            for inp in m.graph.input:
                if inp.name in batch:
                    dims = inp.type.tensor_type.shape.dim
                    for dim, n in zip(dims, batch[inp.name].shape, strict=True):
                        dim.Clear()
                        dim.dim_value = int(n)
            inferred = infer_shapes(m).graph
            shapes = {}
            for v in _value_infos(inferred):
                dims = v.type.tensor_type.shape.dim
                if v.type.tensor_type.HasField("shape") and all(
                        d.HasField("dim_value") for d in dims):
                    shapes[v.name] = tuple(int(d.dim_value) for d in dims)
            self._shape_cache[key] = shapes
        return self._shape_cache[key]

    def weight_feeds(self, faults: FaultSet | Iterable[Fault]) -> dict[str, np.ndarray]:
        """Perturbed copies of the weights hit by ``faults`` (vectorized numpy bit ops)."""
        fs = as_fault_set(faults)
        feeds = {}
        for name, rows in fs.by_site().items():
            site = self.sites.get(name)
            if site is None or site.kind is not SiteKind.WEIGHT:
                continue
            out = self._weights[name].copy()
            apply_in_place(out, fs, rows, site)
            feeds[name] = _feedable(out, BY_NAME[site.dtype])
        return feeds

    def value_feeds(self, faults: FaultSet | Iterable[Fault], batch: Mapping[str, np.ndarray],
                    start: int = 0, ports: dict[str, _Port] | None = None
                    ) -> dict[str, np.ndarray]:
        """Index and mask inputs for every fed site, for one batch (``*`` expanded).

        ``start`` is the batch's offset in the data: an integer coordinate on a site's
        dynamic leading (batch) dimension names a sample of the whole data, so it is
        shifted into the batch, or dropped when the sample is in another batch.
        ``ports``: those of the session that runs (default: every site instrumented).
        """
        fs = as_fault_set(faults)
        ports = self.ports if ports is None else ports
        rows_of = fs.by_site()
        shapes: dict[str, tuple[int, ...]] | None = None
        feeds: dict[str, np.ndarray] = {}
        n = sample_count(batch)
        for name, p in ports.items():
            rows = rows_of.get(name, np.zeros(0, np.int64))
            site = p.site
            sparse, bcast = rows, rows[:0]
            if len(rows) and site.shape and not isinstance(site.shape[0], int):
                fs, rows = batch_rows(fs, rows, site, start, n)
                sparse = rows
                if p.broadcast is not None:
                    rank = len(site.shape)
                    idx = fs.index[rows, :rank]
                    if (idx[:, 0] < 0).all() and (idx[:, 1:] >= 0).all():
                        sparse, bcast = rows[:0], rows
            if len(sparse) and shapes is None:
                shapes = self._concrete_shapes(batch)
            shape = shapes.get(name) if shapes is not None else None
            if shape is None and site.shape and site.shape[0] == "batch" and all(
                    isinstance(d, int) for d in site.shape[1:]):
                shape = (n, *site.shape[1:])  # measured on the data: only the batch varies
            idx, a, o, x = _site_feed(fs, sparse, shape, p)
            feeds[p.indices], feeds[p.and_], feeds[p.or_], feeds[p.xor] = idx, a, o, x
            if p.broadcast is not None:
                per_sample = tuple(int(d) for d in site.shape[1:])  # type: ignore[arg-type]
                if len(bcast):
                    sub = fs.take(bcast)
                    sub = FaultSet(sub.sites, sub.site, sub.index[:, 1:len(site.shape)],
                                   sub.model, sub.bits, sub.value)
                    lin, a, o, x = fold(sub, np.arange(len(sub)), per_sample, p.dtype)
                    if not p.dtype.is_float:
                        a, o, x = (a.view(p.dtype.numpy), o.view(p.dtype.numpy),
                                   x.view(p.dtype.numpy))
                else:
                    lin = np.zeros(0, np.int64)
                    a = o = x = np.zeros(0, dtype=_mask_dtype(p.dtype))
                pos, band, bor, bxor = p.broadcast
                feeds[pos], feeds[band], feeds[bor], feeds[bxor] = lin, a, o, x
        return feeds

    def run(self, data: Mapping[str, np.ndarray], faults: FaultSet | Sequence[Fault] = (),
            batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Outputs for ``data`` with ``faults`` applied (none: the golden run).

        Args:
            data: model inputs keyed by name, batch along axis 0.
            faults: faults on the engine's sites (a :class:`FaultSet` or :class:`Fault`
                objects), applied in order.
            batch_size: samples per ``session.run`` (``None``: all at once).

        Returns:
            Outputs keyed by name, concatenated along axis 0.

        Raises:
            EnpheephError: a fault that cannot be applied (bit beyond the element width,
                value that does not fit, site the engine was not built for).
        """
        fs = as_fault_set(faults)
        self._check_sites(fs)
        if self._baked is None:
            self._check_weights(data, batch_size)
        if self._baked and fs.hit_sites() & self._baked:
            return self._run_baked(data, fs, batch_size)
        if self._held is not None:
            return self._held.run(data, fs, batch_size)
        for c in self._chains(fs, data, batch_size):
            out = c.run(data, fs, batch_size)
            if out is not None:
                self._last = (fs, c)
                return out
        if len(fs) and self.optimization is Optimization.ALL and not self._warned_all:
            self._warned_all = True
            log.warning("a trial runs on fault-node sessions at --optimization all (no "
                        "segment chain can serve it): fault nodes change onnxruntime's "
                        "layout choices, so its outputs can differ from inject + run of the "
                        "same faults (in the last bits, or entirely where a NaN meets a "
                        "pooling kernel); --optimization extended has no such difference")
        if self._exact is None and fs.hit_sites() & self._full:
            self._check_exact(data, batch_size)
        key = self._key(fs)
        if key[0] and key[0] not in self._verified:
            key = self._verify(key, data, batch_size, fs)
        return self._run(self._variant(key), data, fs, batch_size)

    def _adhoc(self, model: onnx.ModelProto, sites: Sequence[FaultSite]) -> _Variant:
        """A session of ``model`` instrumented at ``sites``, not kept among the variants."""
        m, ports = instrument(model, sites)
        sess = make_session(m, self.provider, self.options)
        fed = [*sess.get_inputs(), *sess.get_overridable_initializers()]
        return _Variant(m, sess, ports, inputs=frozenset(i.name for i in fed))

    def _check_weights(self, data: Mapping[str, np.ndarray], batch_size: int | None) -> None:
        """Find the weights onnxruntime computes with differently once they are
        overridable (it folds constant weights: a ``BatchNormalization`` into the ``Conv``
        before it, a ``MatMul`` and ``Add`` into a ``Gemm``, a decomposed ``LayerNorm``
        into one kernel), once, on the first data: the golden run with every weight
        overridable is compared bit for bit with the unmodified model's, and where they
        differ, each weight alone. Those weights stay constants: a trial hitting one runs
        on a session of the model with the faults written into its initializers, as
        ``inject`` writes them (:meth:`_run_baked`), so that it equals ``inject`` + ``run``
        bit for bit; the others are fed as before."""
        self._baked = frozenset()
        if not self._weight_sites:
            return
        empty = FaultSet.empty()
        plain = self._run(self._adhoc(self.source, []), data, empty, batch_size)

        def same(v: _Variant) -> bool:
            out = self._run(v, data, empty, batch_size)
            return all(out[n].tobytes() == plain[n].tobytes() for n in plain)

        if same(self._variant((0, frozenset()))):
            return
        self._baked = frozenset(s.name for s in self._weight_sites
                                if not same(self._adhoc(self.source, [s])))
        log.info("%d weight(s) onnxruntime folds (e.g. %r) stay constants: a trial hitting "
                 "one builds a session with its faults written in", len(self._baked),
                 min(self._baked, default=""))
        self._weight_sites = [s for s in self._weight_sites if s.name not in self._baked]
        self._variants.clear()
        base = self._variant((0, frozenset()))
        self.model, self.session = base.model, base.session

    def _run_baked(self, data: Mapping[str, np.ndarray], fs: FaultSet,
                   batch_size: int | None) -> dict[str, np.ndarray]:
        """A trial hitting a weight onnxruntime folds (:meth:`_check_weights`): the hit
        weights written into a copy of the model (:func:`enpheeph_onnx.rewrite.perturb_weights`,
        what ``inject`` does), activation/input faults fed at their sites; its reference
        is the same instrumentation without faults (:meth:`reference`)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.source)
        weights = np.array([n in self.sites and self.sites[n].kind is SiteKind.WEIGHT
                            for n in fs.sites] + [False])
        perturb_weights(m, self.sites, fs.take(np.flatnonzero(weights[fs.site])))
        hit = fs.hit_sites()
        values = [s for s in self._value_sites if s.name in hit]
        out = self._run(self._adhoc(m, values), data, fs, batch_size)
        key = (frozenset(s.name for s in values), id(data), batch_size)
        if key not in self._baked_refs:
            self._baked_refs.clear()  # the last data's references only
            self._baked_refs[key] = self._run(self._adhoc(self.source, values), data,
                                              FaultSet.empty(), batch_size)
        self._last_baked = (fs, self._baked_refs[key])
        return out

    @property
    def folded_weights(self) -> frozenset[str]:
        """The weight sites onnxruntime folds into other constants when they are not
        overridable, kept constant and faulted by a session per trial
        (:meth:`_check_weights`); empty until the first run."""
        return self._baked or frozenset()

    @property
    def exact_sessions(self) -> bool:
        """Whether fault nodes at every site were measured to change the golden run, so
        that each trial runs on a session instrumented at its hit sites only
        (:meth:`_check_exact`); False until a trial with activation/input faults ran."""
        return bool(self._exact)

    def _check_exact(self, data: Mapping[str, np.ndarray], batch_size: int | None) -> None:
        """Whether fault nodes at every site leave the golden run bit-identical (once, on
        the first data with a fault on an activation or input). Where they do not (float16
        on onnxruntime's CPU provider computes in float32 between the casts it inserts,
        and a fault node rounds its tensor to float16), each trial runs on a session
        instrumented at exactly its hit sites, the fusion boundaries ``inject`` gives the
        same faults, so that a trial equals ``inject`` + ``run`` bit for bit."""
        plain = self._run(self._variant((0, frozenset())), data, FaultSet.empty(), batch_size)
        every = self._run(self._variant((0, self._full)), data, FaultSet.empty(), batch_size)
        self._exact = any(plain[n].tobytes() != every[n].tobytes() for n in plain)
        if self._exact:
            log.info("fault nodes at every site change the golden outputs (e.g. float16 "
                     "computed in float32 between onnxruntime's casts): each trial runs on "
                     "a session instrumented at its hit sites only")
            del self._variants[(0, self._full)]

    def _verify(self, key: tuple[int, frozenset[str]], data: Mapping[str, np.ndarray],
                batch_size: int | None, fs: FaultSet) -> tuple[int, frozenset[str]]:
        """Use a cut only if its fault-free suffix run equals the full model bit for bit
        (and the golden cache fits ``cache_mb``); otherwise abandon it."""
        start = key[0]
        ok = False
        try:
            full = self.reference(data, FaultSet.empty(), batch_size)
            if self._full_seconds is None:  # what a whole-model run costs, once
                tic = time.perf_counter()
                self._run(self._variant((0, frozenset())), data, FaultSet.empty(),
                          batch_size)
                self._full_seconds = time.perf_counter() - tic
            v = self._variant(key)  # the session the trial will use, without faults
            part = self._run(v, data, FaultSet.empty(), batch_size)  # (warms it up)
            tic = time.perf_counter()
            self._run(v, data, FaultSet.empty(), batch_size)
            seconds = time.perf_counter() - tic
            ok = all(full[n].tobytes() == part[n].tobytes() for n in full)
            if ok and seconds > self.suffix_worth * self._full_seconds:
                log.debug("suffix from node %d abandoned: %.1f ms vs %.1f ms for the whole "
                          "model", start, 1e3 * seconds, 1e3 * self._full_seconds)
                ok = False
                self._slow_cuts.add(start)
            if ok and data is self._ref_data and batch_size == self._ref_batch:
                v.golden = part
        except _NoCache as e:
            log.info("suffix re-execution off: %s", e)
            self.suffix = False
        except Exception as e:  # a suffix onnxruntime or the checker refuses: run whole
            log.info("suffix from node %d abandoned: %s", start, e)
        if ok:
            self._verified.add(start)
            return key
        if self.suffix and start not in self._slow_cuts:
            log.info("suffix from node %d abandoned: its outputs differ from the full "
                     "model's", start)
        self._bad_cuts.add(start)
        for k in [k for k in self._variants if k[0] == start]:
            del self._variants[k]
        return self._key(fs, sighting=False)

    def reference(self, data: Mapping[str, np.ndarray], faults: FaultSet | Sequence[Fault] = (),
                  batch_size: int | None = None) -> dict[str, np.ndarray]:
        """The golden outputs of the session that :meth:`run` used for ``faults`` (call it
        after :meth:`run`): the reference to classify that run's outputs against. Cached
        per session for the last ``data`` object."""
        fs = as_fault_set(faults)
        if self._last_baked is not None and self._last_baked[0] is fs:
            return self._last_baked[1]
        if self._held is not None:
            return self._held.reference(data, batch_size)
        if self._last is not None and self._last[0] is fs:
            return self._last[1].reference(data, batch_size)
        for c in (self._runtime_chain, self._chain):
            if c is not None and c.serves(fs):
                return c.reference(data, batch_size)
        if data is not self._ref_data or batch_size != self._ref_batch:
            for v in self._variants.values():
                v.golden = None
            self._ref_data, self._ref_batch = data, batch_size
        v = self._variant(self._key(fs, sighting=False))
        if v.golden is None:
            v.golden = self._run(v, data, FaultSet.empty(), batch_size)
        return v.golden

    def _check_sites(self, fs: FaultSet) -> None:
        unknown = fs.hit_sites() - set(self.sites)
        if unknown:
            raise EnpheephError(f"fault site {sorted(unknown)[0]!r} is not one of the sites "
                                "this engine was built for (a fault is never dropped)")

    def _run(self, v: _Variant, data: Mapping[str, np.ndarray], faults: FaultSet,
             batch_size: int | None) -> dict[str, np.ndarray]:
        undo: list[Any] = []
        try:
            return self._run_faulted(v, data, faults, batch_size, undo)
        finally:
            for action in reversed(undo):  # the golden weights back, bit for bit
                action()

    def _run_faulted(self, v: _Variant, data: Mapping[str, np.ndarray], faults: FaultSet,
                     batch_size: int | None, undo: list[Any]) -> dict[str, np.ndarray]:
        names = self.output_names
        # the hit weights are perturbed in place (no copy of a large tensor per trial) and
        # restored by ``undo`` after the run
        wfeeds = {}
        for name, rows in faults.by_site().items():
            site = self.sites.get(name)
            if site is None or site.kind is not SiteKind.WEIGHT or name not in v.inputs:
                continue
            arr = self._weights[name]
            apply_in_place(arr, faults, rows, site, undo)
            wfeeds[name] = _feedable(arr, BY_NAME[site.dtype])
        n = sample_count(data)
        step = batch_size or n
        cache = self._golden_cache(data, batch_size) if v.start else None
        chunks: list[list[np.ndarray]] = [[] for _ in names]
        for b, start in enumerate(range(0, n, step)):
            batch = batch_of(data, start, step)
            feeds = {k: a for k, a in batch.items() if k in v.inputs}
            if cache is not None:
                feeds.update(feeds_of(cache, b, v.inputs & set(cache.names)))
            feeds.update(wfeeds)
            feeds.update(self.value_feeds(faults, batch, start, v.ports))
            for i, out in enumerate(run_session(v.session, names, feeds)):
                chunks[i].append(out)
        sizes = [min(step, n - start) for start in range(0, n, step)]
        return {nm: join_batches(nm, c, sizes) for nm, c in zip(names, chunks, strict=True)}

    def _golden_cache(self, data: Mapping[str, np.ndarray], batch_size: int | None
                      ) -> GoldenCache:
        """The golden crossing tensors of every cut in use, per batch of ``data``."""
        key = (id(data), batch_size)
        if self._cache is not None and self._cache_key == key:
            return self._cache
        inputs = set(self.input_names)
        names: dict[str, None] = {}  # for every cut a site can ask for
        for start in sorted(set(self._pos.values()) - {0}):
            for name in crossing_tensors(self.source, start) or ():
                if name not in inputs:
                    names.setdefault(name, None)
        model = exposed(self.model, list(names))
        sess = make_session(model, self.provider, self.options)
        n = sample_count(data)
        step = batch_size or n
        batches = []
        total = 0
        for start in range(0, n, step):
            feeds = batch_of(data, start, step)
            try:
                outs = dict(zip(names, run_session(sess, list(names), feeds), strict=True))
            except Exception as e:  # e.g. a bfloat16 tensor numpy cannot hold
                raise _NoCache(f"the crossing tensors cannot be fetched ({e})") from None
            total += sum(a.nbytes for a in outs.values())
            if total > self.cache_mb * 2**20:
                raise _NoCache(f"the golden cache would exceed {self.cache_mb:g} MB")
            batches.append(outs)
        self._cache = GoldenCache(tuple(names), batches)
        self._cache_key = key
        self._cache_data = data  # keep the data alive: its id() keys the cache
        return self._cache

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the suffix cache (0 when none is built)."""
        chain = sum(c.cache_bytes for c in (self._chain, self._runtime_chain) if c is not None)
        held = 0 if self._held is None else self._held.cache_bytes
        return chain + held + (0 if self._cache is None else self._cache.nbytes)

    def chain_stats(self) -> dict[str, int]:
        """Boundaries, sessions and their estimated bytes of the segment chains in use
        (the runtime graph's and the source graph's, summed)."""
        chains = [c for c in (self._runtime_chain, self._chain) if c is not None]
        return {"boundaries": sum(len(c.bounds) for c in chains),
                "sessions": sum(c.session_count for c in chains),
                "session_bytes": sum(c.session_bytes for c in chains),
                "runtime_graph_sites": (0 if self._runtime_chain is None
                                        else len(self._runtime_chain.sites))}

    @property
    def cuts(self) -> list[int]:
        """Node positions of the verified weight cuts (of the runtime graph at
        ``--optimization all``)."""
        return sorted(self._verified if self._held is None else self._held.verified)

    def golden_deviation(self, data: Mapping[str, np.ndarray], batch_size: int | None = None,
                         golden: Mapping[str, np.ndarray] | None = None) -> float:
        """How far this engine's golden outputs for ``data`` lie from a plain onnxruntime
        session of the unmodified model at the same optimization level: the largest
        absolute difference over every output element (0.0 where they are bit-identical).
        Non-zero where the campaign's graph has other fusion boundaries than the model's:
        at ``ALL``, fed weights that are not pre-packed
        (:meth:`enpheeph_onnx.held.HeldWeights.deviation`). (Weights onnxruntime would
        fold stay constants, :attr:`folded_weights`, so at ``EXTENDED`` it is 0.)
        ``golden``: what :meth:`run` gave for ``data`` without faults, if the caller has it
        (saves a golden pass)."""
        if self._held is not None:
            return self._held.deviation(data, batch_size)
        rc = self.runtime_chain(data, batch_size)
        if rc is not None:
            try:
                ref = rc.reference(data, batch_size)
            except ChainUnavailable as e:
                log.info("segment chain (runtime graph) abandoned: %s", e)
                self._runtime_chain = None
                return 0.0
            return deviation(ref, self.source, data, batch_size, self.provider, self.threads)
        ref = self.run(data, FaultSet.empty(), batch_size) if golden is None else golden
        return deviation(ref, self.source, data, batch_size, self.provider, self.threads,
                         self.optimization)


SUFFIX_WORTH = 0.7
"""A cut is kept only if its fault-free suffix run takes at most this fraction of a
whole-model run (measured when it is verified): a session build is not repaid otherwise."""


class _NoCache(Exception):
    """No golden cache can be built (too big, or tensors numpy cannot hold)."""


def _value_infos(g: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The typed tensors of ``g`` and of its bodies, at any depth (main graph first)."""
    out = [*g.input, *g.value_info, *g.output]
    for n in g.node:
        for _, body in node_bodies(n):
            out.extend(_value_infos(body))
    return out


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    """Inputs, initializers and node outputs of ``model``, those of its bodies included."""
    def names(g: onnx.GraphProto) -> set[str]:
        out = ({i.name for i in g.input} | {t.name for t in g.initializer}
               | {o for n in g.node for o in n.output})
        for n in g.node:
            for _, body in node_bodies(n):
                out |= names(body)
        return out

    return names(model.graph)


def as_fault_set(faults: FaultSet | Iterable[Fault]) -> FaultSet:
    """``faults`` as a :class:`FaultSet` (converted when given as :class:`Fault` objects)."""
    return faults if isinstance(faults, FaultSet) else FaultSet.from_faults(faults)


def _feedable(arr: np.ndarray, d: DType) -> Any:
    """``arr`` as onnxruntime accepts it: bfloat16 (ml_dtypes) only as an ``OrtValue``."""
    if d.name == "bfloat16":
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
            np.ascontiguousarray(arr).view(np.uint16), onnx.TensorProto.BFLOAT16)
    return arr


def _site_feed(fs: FaultSet, rows: np.ndarray, shape: tuple[int, ...] | None, p: _Port
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mdt = _mask_dtype(p.dtype)
    rank = max(len(p.site.shape), 1)
    if not len(rows):
        empty = np.zeros(0, dtype=mdt)
        return np.zeros((0, rank), np.int64), empty, empty.copy(), empty.copy()
    if shape is None:
        raise EnpheephError(f"cannot infer the concrete shape of {p.site.name!r} for this "
                            "batch, so its faults cannot be applied")
    lin, a, o, x = fold(fs, rows, shape, p.dtype)
    idx = (np.stack(np.unravel_index(lin, shape), axis=1) if shape else lin[:, None]
           ).astype(np.int64).reshape(-1, rank)
    if not p.dtype.is_float:
        a, o, x = a.view(p.dtype.numpy), o.view(p.dtype.numpy), x.view(p.dtype.numpy)
    return idx, a, o, x


__all__ = ["FaultEngine", "as_fault_set", "feed_function", "instrument", "run_batched"]
