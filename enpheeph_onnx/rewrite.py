"""Graph rewriting: a fault plan in, a standalone faulty ONNX model out.

* **Weight faults** perturb the stored data of initializers and ``Constant`` tensors with
  the exact numpy bit operations of :mod:`enpheeph_onnx.bits`; no node is added and every
  other element keeps its bits. A weight shared by several nodes is faulted once, as
  memory is.
* **Activation and input faults** insert a fault node after the tensor. Each fault node
  calls a model-local ONNX function in the ``enpheeph`` domain whose body is standard ONNX
  (``BitCast`` to the same-width unsigned integer, ``BitwiseXor``/``BitwiseOr``/
  ``BitwiseAnd`` with a broadcastable mask, ``BitCast`` back; integer tensors take the
  bitwise op directly), so the faulty model runs in stock onnxruntime with no plugin.
  ``*`` coordinates broadcast (the mask has size 1 there); an integer coordinate on a
  dynamic dimension (e.g. one image of a batch) is applied to a ``Slice`` of the tensor
  and ``Concat``-ed back, and does nothing when that image is not in the batch.
  Each run of consecutive faults with the same model and index pattern on a site is one
  fault node; its masks fold the run's faults in order, vectorized over the columns of a
  :class:`~enpheeph_onnx.faultset.FaultSet` (no Python object per fault: 1,000,000
  activation faults inject in about a second).
  The dense mask is one ``BitwiseXor``/``Or``/``And`` pass over the tensor (the ``BitCast``
  s are free); a sparse gather/scatter of the hit elements only is not cheaper in
  onnxruntime 1.31 (CPU), whose ``ScatterElements``/``ScatterND`` copy the whole tensor
  (measured: one fault on a 2M-element tensor costs the same ~0.5 ms either way).

Node and tensor names are deterministic: ``enpheeph/<site>/<n>/...``. The faulty model
records its provenance in ``metadata_props`` (``enpheeph.faults``, ``enpheeph.source_sha256``,
``enpheeph.version``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from . import __version__
from .bits import BY_NAME, DType
from .errors import EnpheephError
from .faults import Fault, FaultModel, FaultPlan
from .faultset import MODEL_CODES, FaultSet, fold
from .model import (
    TARGET_OPSET,
    ModelSource,
    clamp_ir_version,
    default_opset,
    ensure_opset,
    load_model,
    model_sha256,
    save_model,
    set_metadata,
)
from .sites import (
    FaultSite,
    SiteKind,
    discover_sites,
    expand_state_addresses,
    lookup_site,
    site_map,
    with_measured_shapes,
)

log = logging.getLogger(__name__)

FAULT_DOMAIN = "enpheeph"
"""Domain of the model-local fault functions."""

_FUNC_PREFIX = {
    FaultModel.BIT_FLIP: "BitFlip",
    FaultModel.STUCK_AT_0: "StuckAt0",
    FaultModel.STUCK_AT_1: "StuckAt1",
    FaultModel.VALUE: "Value",
}


@dataclass(frozen=True)
class WeightChange:
    """A perturbed weight: how many faults hit it and how many elements changed bits."""

    site: str
    faults: int
    elements_changed: int


@dataclass(frozen=True)
class InjectionResult:
    """What :func:`inject` produced.

    Attributes:
        model: the faulty model (IR <= 13, default-domain opset <= 26, checked).
        plan: the faults, in application order (as given: a plan or a fault set).
        weights: one entry per perturbed weight.
        nodes: names of the inserted fault nodes, in graph order of insertion.
        source_sha256: SHA-256 of the source model.
        converted_from_opset: the source opset if it was converted to 26, else ``None``.
    """

    model: onnx.ModelProto
    plan: FaultPlan | FaultSet
    weights: tuple[WeightChange, ...]
    nodes: tuple[str, ...]
    source_sha256: str
    converted_from_opset: int | None = None

    def save(self, path: str | Path) -> None:
        """Write the faulty model atomically."""
        save_model(self.model, path)


def validate_faults(sites: dict[str, FaultSite], faults: Iterable[Fault],
                    model: onnx.ModelProto | None = None) -> None:
    """Check every fault against the model's sites.

    Raises:
        EnpheephError: unknown site, index of the wrong rank or out of range, bit beyond
            the element width, or a value that does not fit the dtype.
    """
    for f in faults:
        site = lookup_site(sites, f.site, model)
        if len(f.index) != len(site.shape):
            shape = "[" + ",".join("?" if d is None else str(d) for d in site.shape) + "]"
            raise EnpheephError(
                f"fault {f}: index has {len(f.index)} coordinates but {site.name!r} has rank "
                f"{len(site.shape)} (shape {shape})"
            )
        for axis, (i, n) in enumerate(zip(f.index, site.shape, strict=True)):
            if i is not None and isinstance(n, int) and i >= n:
                raise EnpheephError(
                    f"fault {f}: index {i} is out of range for dimension {axis} of "
                    f"{site.name!r} (size {n}, valid 0-{n - 1})"
                )
        f.transform(BY_NAME[site.dtype])  # raises for bits beyond width / unfit values


def validate_fault_set(sites: dict[str, FaultSite], faults: FaultSet) -> None:
    """Check a columnar fault set against the model's sites, vectorized (the
    :func:`validate_faults` of many faults).

    Raises:
        EnpheephError: unknown site, index out of range for a dimension, bit beyond the
            element width, or a value that does not fit the dtype.
    """
    for name, rows in faults.by_site().items():
        site = sites.get(name)
        if site is None:
            raise EnpheephError(f"unknown fault site {name!r} (enpheeph-onnx sites MODEL "
                                "lists them)")
        rank = len(site.shape)
        idx = faults.index[rows]
        if idx.shape[1] > rank and (idx[:, rank:] != 0).any():
            raise EnpheephError(f"faults on {name!r} have more coordinates than its rank "
                                f"{rank}")
        for axis, n in enumerate(site.shape):
            if axis >= idx.shape[1]:
                if rank:
                    raise EnpheephError(f"faults on {name!r} have fewer coordinates than "
                                        f"its rank {rank}")
                break
            if isinstance(n, int) and (idx[:, axis] >= n).any():
                bad = int(idx[:, axis].max())
                raise EnpheephError(
                    f"a fault on {name!r}: index {bad} is out of range for dimension {axis} "
                    f"(size {n}, valid 0-{n - 1})")
        faults.transforms(BY_NAME[site.dtype], rows)  # bits beyond width, unfit values


def _weight_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out: dict[str, onnx.TensorProto] = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            for a in n.attribute:
                if a.name == "value":
                    out.setdefault(n.output[0], a.t)
    return out


def perturb_weights(
    model: onnx.ModelProto, sites: dict[str, FaultSite], faults: FaultSet | Iterable[Fault]
) -> list[WeightChange]:
    """Apply weight faults to ``model``'s stored tensors in place (exact numpy bit ops,
    vectorized over the faults of each tensor: :func:`enpheeph_onnx.faultset.fold`)."""
    fs = faults if isinstance(faults, FaultSet) else FaultSet.from_faults(faults)
    tensors = _weight_tensors(model)
    changes = []
    for name, rows in fs.by_site().items():
        if sites[name].kind is not SiteKind.WEIGHT:
            continue
        t = tensors[name]
        d = BY_NAME[sites[name].dtype]
        old = numpy_helper.to_array(t)
        new = np.array(old, copy=True)
        u = new.reshape(-1).view(d.container)
        lin, a, o, x = fold(fs, rows, old.shape, d)
        u[lin] = ((u[lin] & a) | o) ^ x
        changed = int(np.count_nonzero(old.reshape(-1).view(d.container) != u))
        t.CopyFrom(numpy_helper.from_array(new, t.name))
        changes.append(WeightChange(name, len(rows), changed))
        log.debug("perturbed %s: %d element(s) changed", name, changed)
    return changes


def fault_function(model: FaultModel, dtype: DType) -> onnx.FunctionProto:
    """The model-local function applying ``model`` to a ``dtype`` tensor.

    Inputs ``(x, mask)`` (``(x, keep, value)`` for the value model), all masks in the
    container dtype (the dtype itself for integers) and broadcastable to ``x``:

    * ``BitFlip``: ``y = BitCast(BitwiseXor(BitCast(x, uint), mask), T)``
    * ``StuckAt1``: ``BitwiseOr`` with ``mask``; ``StuckAt0``: ``BitwiseAnd`` with
      ``mask`` = ~bits at the faulted positions and all ones elsewhere;
    * ``Value``: ``BitwiseOr(BitwiseAnd(u, keep), value)``.

    Source: ONNX operator spec, BitCast-26, BitwiseXor-18, BitwiseAnd-18, BitwiseOr-18.
    """
    name = f"{_FUNC_PREFIX[model]}_{dtype.name}"
    inputs = ["x", "keep", "value"] if model is FaultModel.VALUE else ["x", "mask"]
    nodes = []
    u = "x"
    if dtype.is_float:
        nodes.append(helper.make_node("BitCast", ["x"], ["u"], to=dtype.container_onnx))
        u = "u"
    if model is FaultModel.VALUE:
        nodes.append(helper.make_node("BitwiseAnd", [u, "keep"], ["kept"]))
        nodes.append(helper.make_node("BitwiseOr", ["kept", "value"], ["f"]))
    else:
        op = {FaultModel.BIT_FLIP: "BitwiseXor", FaultModel.STUCK_AT_0: "BitwiseAnd",
              FaultModel.STUCK_AT_1: "BitwiseOr"}[model]
        nodes.append(helper.make_node(op, [u, "mask"], ["f"]))
    if dtype.is_float:
        nodes.append(helper.make_node("BitCast", ["f"], ["y"], to=dtype.onnx))
    else:
        nodes[-1].output[0] = "y"
    return helper.make_function(
        FAULT_DOMAIN, name, inputs, ["y"], nodes,
        opset_imports=[helper.make_opsetid("", TARGET_OPSET)],
        doc_string=f"enpheeph-onnx {model.value} fault on {dtype.name} tensors",
    )


_STAR, _STATIC = -1, -2
"""Pattern codes of one coordinate (:func:`_pattern_codes`); an int on a dynamic dimension is
coded as itself (>= 0)."""


def _pattern_codes(index: np.ndarray, shape: tuple[object, ...]) -> np.ndarray:
    """Per fault (row of ``index``, one column per dimension of ``shape``) and dimension:
    ``_STAR`` (``*``), ``_STATIC`` (an int on a static dim) or the int on a dynamic dim."""
    codes = np.where(index < 0, _STAR, _STATIC).astype(np.int64)
    for axis, n in enumerate(shape):
        if not isinstance(n, int):
            codes[:, axis] = np.where(index[:, axis] < 0, _STAR, index[:, axis])
    return codes


def _runs(models: np.ndarray, codes: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of the runs of consecutive faults with the same model and index
    pattern (one fault node each)."""
    k = len(models)
    if not k:
        return []
    change = np.ones(k, bool)
    change[1:] = (models[1:] != models[:-1]) | (codes[1:] != codes[:-1]).any(1)
    starts = np.flatnonzero(change)
    return list(zip(starts.tolist(), [*starts[1:].tolist(), k], strict=True))


def _run_masks(fs: FaultSet, rows: np.ndarray, codes: np.ndarray, shape: tuple[object, ...],
               d: DType) -> list[np.ndarray]:
    """The mask constants of the fault node of one run (``rows`` of ``fs``, all with the
    model and pattern ``codes``): container dtype (the dtype itself for integers), size 1
    where the pattern is not an int on a static dim. The run's faults are folded in order,
    vectorized: XORs, ORs and ANDs accumulate, the last value on an element wins."""
    static = [c == _STATIC for c in codes.tolist()]
    mshape = tuple(n if st and isinstance(n, int) else 1
                   for n, st in zip(shape, static, strict=True))
    idx = fs.index[rows, :len(shape)]
    if mshape:
        lin = np.ravel_multi_index(tuple(idx[:, a] if st else np.zeros(len(rows), np.int64)
                                         for a, st in enumerate(static)), mshape)
    else:
        lin = np.zeros(len(rows), np.int64)
    size = int(np.prod(mshape)) if mshape else 1
    a, o, x = fs.transforms(d, rows)
    model = MODEL_CODES[int(fs.model[rows[0]])]
    c, ones = d.container, d.container.type(d.all_ones)
    second = None
    if model is FaultModel.BIT_FLIP:
        first = np.zeros(size, c)
        np.bitwise_xor.at(first, lin, x)
    elif model is FaultModel.STUCK_AT_1:
        first = np.zeros(size, c)
        np.bitwise_or.at(first, lin, o)
    elif model is FaultModel.STUCK_AT_0:
        first = np.full(size, ones, c)
        np.bitwise_and.at(first, lin, a)
    else:
        _, back = np.unique(lin[::-1], return_index=True)
        last = len(lin) - 1 - back  # the last fault on each element
        first = np.full(size, ones, c)
        second = np.zeros(size, c)
        first[lin[last]] = 0
        second[lin[last]] = o[last]
    masks = [first] if second is None else [first, second]
    masks = [m.reshape(mshape) for m in masks]
    if not d.is_float:
        masks = [m.view(d.numpy) for m in masks]
    return masks


def _is_identity(model: FaultModel, masks: list[np.ndarray], d: DType) -> bool:
    """Whether a fault node with ``masks`` (:func:`_run_masks`) leaves every bit as it is:
    XOR/OR with zeros, AND with ones (a value fault always writes)."""
    if model is FaultModel.VALUE:
        return False
    m = masks[0].view(d.container) if not d.is_float else masks[0]
    want = d.container.type(d.all_ones) if model is FaultModel.STUCK_AT_0 else 0
    return bool(np.all(m == want))


class _Builder:
    """Inserts fault nodes into a graphsurgeon graph with deterministic names."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.functions: dict[str, onnx.FunctionProto] = {}
        self.nodes: list[str] = []

    def const(self, name: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(name, np.array(value, order="C", copy=True))  # keeps 0-d

    def node(self, op: str, name: str, inputs: list[gs.Tensor], domain: str = "",
             attrs: dict[str, object] | None = None) -> gs.Variable:
        out = gs.Variable(f"{name}/out")
        self.graph.nodes.append(gs.Node(op, name, attrs or {}, inputs, [out], domain=domain))
        return out

    def fault(self, x: gs.Tensor, prefix: str, model: FaultModel, masks: list[np.ndarray],
              dyn: list[tuple[int, int]], site: FaultSite) -> gs.Tensor:
        """One fault node: ``model`` with ``masks`` (:func:`_run_masks`) on ``x``, on the
        ``Slice`` at index ``i`` of each dynamic axis of ``dyn`` ``(axis, i)``."""
        fn = fault_function(model, BY_NAME[site.dtype])
        self.functions.setdefault(fn.name, fn)
        mask_names = ["keep", "value"] if len(masks) == 2 else ["mask"]
        consts = [self.const(f"{prefix}/{m}", a) for m, a in zip(mask_names, masks, strict=True)]
        return self._sliced(x, prefix, dyn, lambda t, pre: self._call(fn.name, pre, t, consts))

    def _call(self, fname: str, prefix: str, x: gs.Tensor, consts: list[gs.Constant]) -> gs.Tensor:
        name = f"{prefix}/{fname}"
        self.nodes.append(name)
        return self.node(fname, name, [x, *consts], domain=FAULT_DOMAIN)

    def _sliced(self, x: gs.Tensor, prefix: str, dyn: list[tuple[int, int]], apply) -> gs.Tensor:  # type: ignore[no-untyped-def]
        if not dyn:
            return apply(x, prefix)
        axis, i = dyn[0]
        ax = self.const(f"{prefix}/axis{axis}", np.array([axis], np.int64))
        bounds = [0, i, i + 1, np.iinfo(np.int64).max]
        parts = []
        for k, part in enumerate(("head", "mid", "tail")):
            s = self.const(f"{prefix}/axis{axis}/{part}/start", np.array([bounds[k]], np.int64))
            e = self.const(f"{prefix}/axis{axis}/{part}/end", np.array([bounds[k + 1]], np.int64))
            parts.append(self.node("Slice", f"{prefix}/axis{axis}/{part}/Slice", [x, s, e, ax]))
        parts[1] = self._sliced(parts[1], f"{prefix}/axis{axis}", dyn[1:], apply)
        return self.node("Concat", f"{prefix}/axis{axis}/Concat", parts, attrs={"axis": axis})


def _subgraphs(nodes: Iterable[gs.Node]) -> Iterator[gs.Graph]:
    """Every ``If``/``Loop``/``Scan`` body (graph attribute) of ``nodes``, at any depth."""
    for n in nodes:
        for value in n.attrs.values():
            graphs = value if isinstance(value, list | tuple) else [value]
            for g in graphs:
                if isinstance(g, gs.Graph):
                    yield g
                    yield from _subgraphs(g.nodes)


def _prefix(site: str, generation: int) -> str:
    return f"enpheeph/{site}" if generation == 0 else f"enpheeph/{site}/gen{generation}"


def insert_fault_nodes(
    model: onnx.ModelProto, sites: dict[str, FaultSite], faults: FaultSet | Iterable[Fault]
) -> tuple[onnx.ModelProto, list[str]]:
    """Insert fault nodes for activation and input faults (weight faults are skipped);
    returns the new model and the inserted fault-node names. ``model`` must be at opset 26.

    Per site (in order of first appearance), each run of consecutive faults with the same
    model and index pattern becomes one node whose masks fold the run's faults, vectorized
    over the columns of a :class:`~enpheeph_onnx.faultset.FaultSet` (no Python per fault).
    """
    fs = faults if isinstance(faults, FaultSet) else FaultSet.from_faults(faults)
    if not len(fs):
        return model, []
    fed = np.array([n in sites and sites[n].kind is not SiteKind.WEIGHT  # (unused names)
                    for n in fs.sites] + [False])
    fs = fs.take(np.flatnonzero(fed[fs.site]))
    if not len(fs):
        return model, []
    by_site = sorted(fs.by_site().items(), key=lambda kv: int(kv[1][0]))
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    b = _Builder(graph)
    taken = set(tensors) | {n.name for n in graph.nodes}
    original = list(graph.nodes)
    bodies = list(_subgraphs(original))
    # the graph computing each tensor of a body (body sites: path-named, see
    # enpheeph_onnx.model.name_body_tensors), with that graph's nodes before any insertion
    owner_of: dict[str, gs.Graph] = {}
    for sub in bodies:
        for n in sub.nodes:
            for t in n.outputs:
                owner_of.setdefault(t.name, sub)
    originals = {id(graph): original, **{id(sub): list(sub.nodes) for sub in bodies}}
    # per graph: node position (-1: the start) -> the chains after it
    after: dict[int, dict[int, list[gs.Node]]] = {}
    for name, rows in by_site:
        site = sites[name]
        owner = graph if name in tensors else owner_of.get(name)
        if owner is None:
            raise EnpheephError(f"fault site {name!r} is not a tensor of the model")
        x = tensors[name] if owner is graph else next(
            t for n in owner.nodes for t in n.outputs if t.name == name)
        codes = _pattern_codes(fs.index[rows, :len(site.shape)], site.shape)
        d = BY_NAME[site.dtype]
        runs = []
        for start, end in _runs(fs.model[rows], codes):
            run_rows = rows[start:end]
            fmodel = MODEL_CODES[int(fs.model[run_rows[0]])]
            masks = _run_masks(fs, run_rows, codes[start], site.shape, d)
            if not _is_identity(fmodel, masks, d):  # e.g. a bit flipped twice: no node,
                runs.append((codes[start], fmodel, masks))  # so no rounding (float16)
        if not runs:
            continue
        b.graph = owner
        first_new = len(owner.nodes)
        position = {id(n): i for i, n in enumerate(originals[id(owner)])}
        producer = position.get(id(x.inputs[0]), -1) if x.inputs else -1
        consumers = [n for n in owner.nodes if any(t is x for t in n.inputs)]
        # a site faulted before (re-injection) gets the next free generation of names
        gen = 0
        while any(t.startswith(_prefix(name, gen) + "/") for t in taken):
            gen += 1
        base = _prefix(name, gen)
        if site.kind is SiteKind.ACTIVATION:
            x.name = f"{base}/in"
        cur: gs.Tensor = x
        for n, (pattern, fmodel, masks) in enumerate(runs):
            dyn = [(axis, int(c)) for axis, c in enumerate(pattern.tolist()) if c >= 0]
            cur = b.fault(cur, f"{base}/{n}", fmodel, masks, dyn, site)
        if site.kind is SiteKind.ACTIVATION:
            cur.name = name
        else:
            cur.name = f"{base}/out"
        cur.dtype = x.dtype
        cur.shape = x.shape
        chain = owner.nodes[first_new:]
        taken.update(t.name for c in chain for t in c.outputs)
        for node in consumers:
            for k, t in enumerate(node.inputs):
                if t is x:
                    node.inputs[k] = cur
        owner.outputs[:] = [cur if t is x else t for t in owner.outputs]
        # If/Loop/Scan bodies that read the site from the outer scope see the faulty value
        # too (graphsurgeon shares outer tensors by object; a body's own tensor of the same
        # name is another object, so shadowing is respected)
        inserted = {id(c) for c in chain}
        for sub in bodies:
            if sub is owner:
                continue
            for node in sub.nodes:
                if id(node) in inserted:
                    continue
                for k, t in enumerate(node.inputs):
                    if t is x:
                        node.inputs[k] = cur
            sub.outputs[:] = [cur if t is x else t for t in sub.outputs]
        after.setdefault(id(owner), {}).setdefault(producer, []).extend(chain)
    b.graph = graph
    # Each site's chain goes right after the node producing the site (graph inputs: first),
    # in the order it was built (topological): the source graph is sorted (onnx.checker), so
    # the result is, without graphsurgeon's recursive toposort (which overflows the Python
    # stack on the long chains of thousands of fault runs).
    for g in [graph, *bodies]:
        chains = after.get(id(g))
        if chains:
            g.nodes[:] = chains.get(-1, []) + [m for i, n in enumerate(originals[id(g)])
                                               for m in (n, *chains.get(i, []))]
    out = gs.export_onnx(graph, do_type_check=False)
    # graphsurgeon resets model-level fields: restore them.
    del out.opset_import[:]
    for op in model.opset_import:
        if op.domain != FAULT_DOMAIN:
            out.opset_import.append(op)
    out.opset_import.append(helper.make_opsetid(FAULT_DOMAIN, 1))
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    out.doc_string = model.doc_string
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    existing = {(f.domain, f.name) for f in out.functions}
    out.functions.extend(f for f in b.functions.values() if (f.domain, f.name) not in existing)
    return out, b.nodes



_CHECK_ONE_BY_ONE = 256
"""Plans up to this size are validated fault by fault (errors quote the fault), larger ones
column-wise."""

PROVENANCE_FAULTS = 1000
"""Up to this many faults are recorded in full in ``enpheeph.faults``; above it only their
count and the sha256 of their binary encoding (``enpheeph.faults_sha256``)."""


def inject(model: ModelSource, faults: FaultPlan | FaultSet | Iterable[Fault],
           sample: Mapping[str, np.ndarray] | None = None) -> InjectionResult:
    """Declare faults, get a faulty model.

    Args:
        model: a path to an ``.onnx`` file or a ``ModelProto`` (not modified).
        faults: a :class:`FaultPlan`, :class:`~enpheeph_onnx.faultset.FaultSet` (columns:
            millions of faults) or faults, applied in order; empty gives a model whose
            outputs are bit-identical to the source's.
        sample: a batch of model inputs, to measure the tensors whose shape ONNX cannot
            infer so they can be faulted too
            (:func:`enpheeph_onnx.sites.with_measured_shapes`).

    Returns:
        :class:`InjectionResult` with the faulty ``ModelProto`` (IR <= 13, opset <= 26,
        passing ``onnx.checker``) and what changed.

    Raises:
        EnpheephError: unreadable model, invalid fault, or an opset that cannot be
            converted to 26 (needed only for activation/input faults).

    Example:
        >>> from enpheeph_onnx import inject, parse_fault
        >>> res = inject("models/digits_cnn.onnx",
        ...              [parse_fault("conv1.weight[0,0,1,1]:bitflip:30")])
        >>> res.weights[0].elements_changed
        1
    """
    source = load_model(model)
    sha = model_sha256(model)
    work = onnx.ModelProto()
    work.CopyFrom(source)
    if sample is not None:
        work = with_measured_shapes(work, dict(sample))
    found = discover_sites(work)
    sites = site_map(found)
    given: FaultPlan | FaultSet
    if isinstance(faults, FaultSet):
        fs = given = faults
        validate_fault_set(sites, fs)
    else:
        plan = faults if isinstance(faults, FaultPlan) else FaultPlan(tuple(faults))
        plan = FaultPlan(tuple(expand_state_addresses(plan.faults, found)))
        given = plan
        fs = FaultSet.from_faults(plan.faults)
        if len(plan) <= _CHECK_ONE_BY_ONE:
            validate_faults(sites, plan, work)  # messages that quote the fault
        else:
            for name in fs.sites:
                lookup_site(sites, name, work)  # unknown sites: the usual hints
            validate_fault_set(sites, fs)
    kinds = np.array([n in sites and sites[n].kind is not SiteKind.WEIGHT  # (unused names)
                      for n in fs.sites] + [False])
    value_rows = np.flatnonzero(kinds[fs.site]) if len(fs) else np.zeros(0, np.int64)
    converted = None
    if len(value_rows):
        before = default_opset(work)
        work = ensure_opset(work)
        converted = before if before != TARGET_OPSET else None
    clamp_ir_version(work)
    weights = perturb_weights(work, sites, fs)
    ranks = {s.name: len(s.shape) for s in found}
    work, nodes = insert_fault_nodes(work, sites, fs.take(value_rows))
    record = {"enpheeph.source_sha256": sha, "enpheeph.version": __version__}
    if len(fs) <= PROVENANCE_FAULTS:
        plan_json = given.dumps() if isinstance(given, FaultPlan) else FaultPlan(
            fs.to_faults(ranks)).dumps()
        record["enpheeph.faults"] = plan_json
    else:
        import hashlib

        layout, data = fs.encode()
        record["enpheeph.faults"] = json.dumps({"count": len(fs)})
        record["enpheeph.faults_sha256"] = hashlib.sha256(layout.encode() + data).hexdigest()
    set_metadata(work, record)
    try:
        onnx.checker.check_model(work, full_check=True)
    except Exception as e:  # pragma: no cover - a failure here is a bug in the rewriter
        raise RuntimeError(f"the rewritten model fails the ONNX checker: {e}") from e
    return InjectionResult(work, given, tuple(weights), tuple(nodes), sha, converted)
