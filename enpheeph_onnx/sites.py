"""Fault sites: every tensor of a model that a fault can hit.

Three kinds (:class:`SiteKind`):

* **weight** — an initializer, or the tensor held by a ``Constant`` node (some exporters,
  e.g. torch.ao's quantized export, keep all weights there); stored in memory, so a fault
  persists for every inference;
* **activation** — the output of a node, recomputed at every inference;
* **input** — a graph input that is not an initializer.

Only tensors whose element type faults can hit (:data:`enpheeph_onnx.bits.SUPPORTED`) are
sites; ``int64`` shape/index tensors and ``bool`` tensors are not. Weights and activations of
control-flow bodies (``If``/``Loop``/``Scan``) are sites under path names,
``<node>/<attribute>/<name>`` (:func:`enpheeph_onnx.model.hoist_subgraph_weights`,
:func:`enpheeph_onnx.model.name_body_tensors`); a fault on an activation of a ``Loop`` or
``Scan`` body hits it at every iteration.
"""

from __future__ import annotations

import enum
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .bits import BY_NAME, DType, dtype_for_onnx
from .errors import EnpheephError
from .model import ModelSource, as_model

Dim = int | str | None
"""A dimension: a size, a symbolic name, or ``None`` when unknown."""


class SiteKind(enum.Enum):
    WEIGHT = "weight"
    ACTIVATION = "activation"
    INPUT = "input"


@dataclass(frozen=True)
class FaultSite:
    """One injectable tensor.

    Attributes:
        name: tensor name in the graph (may contain ``/``, ``.``, ``:``).
        kind: weight, activation or input.
        source: where it lives: ``"initializer"``, ``"constant"`` (a ``Constant`` node's
            value), ``"graph_input"``, ``"node_output"`` or ``"body_output"`` (a node output
            inside an ``If``/``Loop``/``Scan`` body).
        op_type: the producing op for activations, the consuming op(s) (comma-joined,
            sorted) for weights and inputs.
        node: the producing node's name (activations, constants) or the first consumer's.
        layer: a layer name derived from the tensor/node name (``conv1.weight`` ->
            ``conv1``, ``/conv1/Conv_output_0`` -> ``conv1``); ``""`` if none.
        shape: dimensions; a symbolic dim as its name, an unknown one as ``None``.
        dtype: numpy name of the element type (``"float32"``, ``"int8"``, ...).
        bits: bits per stored element.
        elements: element count, or ``None`` when a dimension is not static.
        zero_fraction: fraction of elements equal to zero (weights only), else ``None``.
        sparsity: fraction of *pruned* elements of a weight: those whose stored value is
            zero (the real value 0: for a quantized weight, its zero point). Pruned models
            are recognised by these zeros, whether or not the exporter recorded the pruning
            (``enpheeph.pruned`` metadata); ``None`` for non-weights.
        scale, zero_point: quantization parameters of an int8/uint8 tensor (a scalar, or a
            list per channel) when a (De)QuantizeLinear or QLinear* node names them.
        role: for annotated models (``enpheeph.annotations`` metadata, e.g. spiking
            networks exported by :mod:`enpheeph_onnx.export`), the tensor's role:
            ``"membrane"``, ``"spike"``, ``"synaptic_current"``, ``"threshold"``, ...
        time_step: the time step of an unrolled recurrent/spiking network, else ``None``.
    """

    name: str
    kind: SiteKind
    source: str
    op_type: str
    node: str
    layer: str
    shape: tuple[Dim, ...]
    dtype: str
    bits: int
    elements: int | None
    zero_fraction: float | None = None
    sparsity: float | None = None
    scale: float | list[float] | None = None
    zero_point: int | list[int] | None = None
    role: str | None = None
    time_step: int | None = None

    @property
    def static_elements(self) -> int:
        """Elements per sample: the product of the static dimensions (dynamic ones count 1)."""
        return int(np.prod([d for d in self.shape if isinstance(d, int)], dtype=np.int64))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["shape"] = list(self.shape)
        return d


def _layer_of(tensor: str, node: str) -> str:
    if node.startswith("/"):
        parts = [p for p in node.split("/") if p]
        return "/".join(parts[:-1]) if len(parts) > 1 else ""
    if tensor.startswith("/"):
        parts = [p for p in tensor.split("/") if p]
        return "/".join(parts[:-1]) if len(parts) > 1 else ""
    if "." in tensor:
        return tensor.rsplit(".", 1)[0]
    return ""


def _shape_of(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _elements(shape: tuple[Dim, ...]) -> int | None:
    if all(isinstance(d, int) for d in shape):
        return int(np.prod(shape, dtype=np.int64))
    return None


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` with data propagation; the model if it fails."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort: unknown shapes stay unknown
        return model


def _weight_site(name: str, source: str, tensor: onnx.TensorProto, consumers: list[onnx.NodeProto],
                 node_name: str) -> FaultSite | None:
    d = dtype_for_onnx(tensor.data_type)
    if d is None:
        return None
    arr = numpy_helper.to_array(tensor)
    with np.errstate(invalid="ignore"):
        zeros = float(np.count_nonzero(arr == 0) / arr.size) if arr.size else 0.0
    ops = ",".join(sorted({n.op_type for n in consumers}))
    node = node_name or (consumers[0].name if consumers else "")
    return FaultSite(name, SiteKind.WEIGHT, source, ops, node, _layer_of(name, node),
                     tuple(int(x) for x in arr.shape), d.name, d.bits, int(arr.size), zeros)


def unresolved_tensors(model: ModelSource) -> list[str]:
    """Main-graph tensors (node outputs) whose type or shape ONNX shape inference cannot
    give (outputs of ``com.microsoft`` or ``ai.onnx.ml`` ops, of ``Loop``, anything after
    them): sites only once measured (:func:`measure_tensors`)."""
    model = as_model(model)
    g = infer_shapes(model).graph
    typed = {vi.name for vi in [*g.input, *g.value_info, *g.output]
             if vi.type.tensor_type.elem_type and _shape_of(vi) is not None}
    for p in model.metadata_props:  # measured already (with_measured_shapes)
        if p.key == MEASURED_KEY:
            typed |= set(json.loads(p.value))
    return [o for n in g.node if not (n.op_type == "Constant" and n.domain in ("", "ai.onnx"))
            for o in n.output if o and o not in typed]


def unresolved_body_tensors(model: ModelSource) -> list[str]:
    """Tensors computed inside ``If``/``Loop``/``Scan`` bodies (under their path names,
    :func:`enpheeph_onnx.model.name_body_tensors`) whose type or shape ONNX shape inference
    cannot give (a ``Loop`` state declared without a shape, anything after it): listed by
    ``sites`` with shape ``?``, but no sites, since onnxruntime cannot hand a body's tensor
    back to measure it."""
    model = as_model(model)
    from .model import name_body_tensors, node_bodies

    out: list[str] = []

    def visit(g: onnx.GraphProto) -> None:
        for n in g.node:
            for _, body in node_bodies(n):
                typed = {vi.name: vi for vi in [*body.value_info, *body.output]}
                for x in body.node:
                    if x.op_type == "Constant" and x.domain in ("", "ai.onnx"):
                        continue
                    for o in x.output:
                        vi = typed.get(o)
                        elem = vi.type.tensor_type.elem_type if vi is not None else 0
                        if o and (not elem or _shape_of(vi) is None) and (
                                not elem or dtype_for_onnx(elem) is not None):
                            out.append(o)
                visit(body)

    visit(infer_shapes(name_body_tensors(model)).graph)
    return out


def measure_tensors(model: onnx.ModelProto, names: list[str],
                    sample: dict[str, np.ndarray]) -> dict[str, tuple[np.dtype, tuple[Dim, ...]]]:
    """dtype and shape of the tensors ``names``, measured by running ``model`` with them as
    outputs on ``sample`` (one batch of the data) and on its first sample alone: a dimension
    that follows the batch becomes the symbolic ``"batch"``. Tensors onnxruntime cannot
    hand back (sequences, maps) are left out.

    Raises:
        EnpheephError: onnxruntime cannot run the model on ``sample``.
    """
    from .runtime import batch_of, make_session, run_session, sample_count, session_options
    from .suffix import exposed

    if not names:
        return {}
    sess = make_session(exposed(model, names), "cpu", session_options())
    wanted = [o.name for o in sess.get_outputs() if o.name in set(names)]
    inits = {t.name for t in model.graph.initializer}
    missing = [i.name for i in sess.get_inputs() if i.name not in sample and i.name not in inits]
    if missing:
        raise EnpheephError(
            f"the data has no array for model input {missing[0]!r} (it has "
            f"{', '.join(sorted(sample)) or 'none'}), so the tensors whose shape ONNX cannot "
            "infer cannot be measured; save one array per model input, keyed by its name")
    feeds = {i.name: sample[i.name] for i in sess.get_inputs() if i.name in sample}
    n = sample_count(feeds)
    try:
        full = run_session(sess, wanted, feeds)
    except EnpheephError:  # e.g. a model with a fixed batch of 1: one sample, static dims
        feeds, n = batch_of(feeds, 0, 1), 1
        full = run_session(sess, wanted, feeds)
    one = run_session(sess, wanted, batch_of(feeds, 0, 1)) if n > 1 else full
    out: dict[str, tuple[np.dtype, tuple[Dim, ...]]] = {}
    for name, a, b in zip(wanted, full, one, strict=True):
        if not isinstance(a, np.ndarray):
            continue
        dims: tuple[Dim, ...] = tuple(
            "batch" if n > 1 and i == 0 and da == n and db == 1 else int(da)
            for i, (da, db) in enumerate(zip(a.shape, np.shape(b), strict=False)))
        if len(dims) == a.ndim:
            out[name] = (a.dtype, dims)
    return out


def with_measured_shapes(model: ModelSource, sample: dict[str, np.ndarray]
                         ) -> onnx.ModelProto:
    """``model`` with ``value_info`` for the tensors shape inference cannot type, measured
    on ``sample`` (:func:`measure_tensors`), so that every later step (sites, segment
    extraction, fault feeds) knows them; ``model`` itself when there are none.

    Raises:
        EnpheephError: onnxruntime cannot run the model on ``sample``.
    """
    model = as_model(model)
    measured = measure_tensors(model, unresolved_tensors(model), sample)
    if not measured:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {v.name for v in m.graph.value_info}
    # the graph gets the element types only: declared shapes would be what onnxruntime
    # plans memory by, and equal symbolic shapes on an ai.onnx.ml op's input and output
    # made it compute other numbers (review, measured); the shapes go to the metadata
    m.graph.value_info.extend(
        onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dt),
                                           None)
        for name, (dt, _) in measured.items() if name not in known)
    entry = onnx.StringStringEntryProto(key=MEASURED_KEY, value=json.dumps(
        {name: list(dims) for name, (_, dims) in measured.items()}))
    kept = [p for p in m.metadata_props if p.key != MEASURED_KEY]
    del m.metadata_props[:]
    m.metadata_props.extend([*kept, entry])
    return m


MEASURED_KEY = "enpheeph.measured_shapes"
"""Model metadata entry (JSON ``{tensor: shape}``) with the shapes
:func:`with_measured_shapes` measured."""


def discover_sites(model: ModelSource, sample: dict[str, np.ndarray] | None = None
                   ) -> list[FaultSite]:
    """All fault sites of ``model``'s main graph: weights, then inputs, then activations in
    graph order.

    Weights are read from initializers and ``Constant`` nodes (``value`` attribute);
    activation and input shapes come from ONNX shape inference (symbolic dims kept). A
    tensor inference cannot type (:func:`unresolved_tensors`) is a site when ``sample`` (a
    batch of model inputs) is given, with the dtype and shape measured on it
    (:func:`measure_tensors`); without it, it is left out (``sites`` lists it as ``?``).

    Raises:
        EnpheephError: onnxruntime cannot run the model on ``sample``.
    """
    model = as_model(model)
    from .model import name_body_tensors, node_bodies

    model = name_body_tensors(model)  # body tensors under their path names
    inferred = infer_shapes(model)
    g = inferred.graph
    infos: dict[str, onnx.ValueInfoProto] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        infos.setdefault(vi.name, vi)
    measured = {} if sample is None else measure_tensors(
        model, unresolved_tensors(model), sample)
    for name, (dt, dims) in measured.items():
        infos[name] = onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(dt), list(dims))
    for p in model.metadata_props:  # shapes measured earlier (with_measured_shapes)
        if p.key == MEASURED_KEY:
            for name, dims in json.loads(p.value).items():
                vi = infos.get(name)
                if vi is not None and vi.type.tensor_type.elem_type and _shape_of(vi) is None:
                    infos[name] = onnx.helper.make_tensor_value_info(
                        name, vi.type.tensor_type.elem_type, dims)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)

    def readers(nodes: Sequence[onnx.NodeProto]) -> None:  # bodies read outer tensors too
        for n in nodes:
            for i in n.input:
                if i:
                    consumers[i].append(n)
            for a in n.attribute:
                for body in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                             a.graphs if a.type == onnx.AttributeProto.GRAPHS else []):
                    readers(body.node)

    readers(g.node)

    sites: list[FaultSite] = []
    seen: set[str] = set()
    init_names = {t.name for t in g.initializer}
    for t in g.initializer:
        s = _weight_site(t.name, "initializer", t, consumers[t.name], "")
        if s is not None and s.name not in seen:
            sites.append(s)
            seen.add(s.name)
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            attr = next((a for a in n.attribute if a.name == "value"), None)
            if attr is None or not n.output:
                continue
            s = _weight_site(n.output[0], "constant", attr.t, consumers[n.output[0]], n.name)
            if s is not None and s.name not in seen:
                sites.append(s)
                seen.add(s.name)

    def value_site(name: str, kind: SiteKind, source: str, op: str, node: str) -> None:
        vi = infos.get(name)
        if vi is None or name in seen:
            return
        d: DType | None = dtype_for_onnx(vi.type.tensor_type.elem_type)
        shape = _shape_of(vi)
        if d is None or shape is None:
            return
        sites.append(FaultSite(name, kind, source, op, node, _layer_of(name, node), shape,
                               d.name, d.bits, _elements(shape)))
        seen.add(name)

    for vi in g.input:
        if vi.name not in init_names:
            cons = consumers[vi.name]
            value_site(vi.name, SiteKind.INPUT, "graph_input",
                       ",".join(sorted({c.op_type for c in cons})), cons[0].name if cons else "")
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            continue
        for o in n.output:
            if o:
                value_site(o, SiteKind.ACTIVATION, "node_output", n.op_type, n.name)

    def body_sites(nodes: Sequence[onnx.NodeProto], prefix: str) -> None:
        for i, n in enumerate(nodes):
            for attr, body in node_bodies(n):
                path = f"{prefix}{n.name or f'{n.op_type}_{i}'}/{attr}/"
                for vi in [*body.value_info, *body.output]:
                    infos.setdefault(vi.name, vi)
                for x in body.node:
                    if x.op_type == "Constant" and x.domain in ("", "ai.onnx"):
                        continue
                    for o in x.output:
                        if o.startswith(path):  # computed in the body (path-named)
                            value_site(o, SiteKind.ACTIVATION, "body_output", x.op_type,
                                       x.name)
                body_sites(body.node, path)

    body_sites(g.node, "")
    return _annotate(model, sites)


# -- model-aware annotations: quantization, pruning, spiking time steps ----------------------

# (op type, domain) -> [(tensor position, scale position, zero-point position, axis)];
# position -1 - k means output k; axis None = the node's "axis" attribute (default 1),
# "transB" = 0 if the node transposes B else 1 (per-channel scales follow output channels).
_QPARAMS: dict[tuple[str, str], list[tuple[int, int, int, int | str | None]]] = {
    ("DequantizeLinear", ""): [(0, 1, 2, None)],
    ("QuantizeLinear", ""): [(-1, 1, 2, None)],
    ("QLinearConv", ""): [(0, 1, 2, 1), (3, 4, 5, 0), (-1, 6, 7, 1)],
    ("QLinearMatMul", ""): [(0, 1, 2, -2), (3, 4, 5, -1), (-1, 6, 7, -1)],
    ("QGemm", "com.microsoft"): [(0, 1, 2, 1), (3, 4, 5, "transB"), (-1, 7, 8, 1)],
}


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node values of the main graph, by tensor name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            attr = next((a for a in n.attribute if a.name == "value"), None)
            if attr is not None:
                out.setdefault(n.output[0], numpy_helper.to_array(attr.t))
    return out


def quantization_params(model: onnx.ModelProto
                        ) -> dict[str, tuple[np.ndarray, np.ndarray | None, int]]:
    """``tensor -> (scale, zero_point, axis)`` for the quantized tensors of ``model``:
    inputs of ``DequantizeLinear``, outputs of ``QuantizeLinear`` and the quantized
    operands of ``QLinearConv``/``QLinearMatMul``/``QGemm`` (ONNX operator spec,
    DequantizeLinear-21: ``y = (x - zero_point) * scale``)."""
    consts = constant_values(model)
    out: dict[str, tuple[np.ndarray, np.ndarray | None, int]] = {}
    for n in model.graph.node:
        spec = _QPARAMS.get((n.op_type, "" if n.domain == "ai.onnx" else n.domain))
        if spec is None:
            continue
        attr_axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        for t, sc, zp, ax in spec:
            axis = attr_axis if ax is None else ((0 if trans_b else 1) if ax == "transB"
                                                 else ax)
            tensor = n.output[-1 - t] if t < 0 else (n.input[t] if t < len(n.input) else "")
            scale = consts.get(n.input[sc]) if sc < len(n.input) else None
            zero = consts.get(n.input[zp]) if zp < len(n.input) and n.input[zp] else None
            if tensor and scale is not None:
                out.setdefault(tensor, (np.asarray(scale), None if zero is None
                                        else np.asarray(zero), int(axis)))
    return out


def pruned_mask(values: np.ndarray, qparams: tuple[np.ndarray, np.ndarray | None, int] | None
                ) -> np.ndarray:
    """Boolean mask of the pruned elements of a weight: stored value equal to the real
    value 0 (0 for floats; the zero point for quantized weights). A scalar (a zero point,
    a neuron threshold) is a parameter, never a pruned weight."""
    if values.size <= 1:
        return np.zeros(values.shape, dtype=bool)
    if qparams is None or qparams[1] is None:
        with np.errstate(invalid="ignore"):
            return np.asarray(values == 0)
    zp = qparams[1]
    if zp.ndim == 0 or values.ndim == 0:
        return np.asarray(values == zp)
    axis = qparams[2] % values.ndim
    shape = [1] * values.ndim
    shape[axis] = -1
    return np.asarray(values == zp.reshape(shape))


def _scalar_or_list(a: np.ndarray | None, kind: type) -> float | int | list | None:
    if a is None:
        return None
    return kind(a.reshape(-1)[0]) if a.size == 1 else [kind(v) for v in a.reshape(-1)]


def annotations(model: onnx.ModelProto) -> dict[str, dict[str, object]]:
    """Per-tensor annotations written by the exporter (``enpheeph.annotations`` metadata:
    ``{"tensors": {name: {"layer": ..., "role": ..., "time_step": ...}}}``)."""
    import json

    for p in model.metadata_props:
        if p.key == "enpheeph.annotations":
            try:
                return dict(json.loads(p.value).get("tensors", {}))
            except (ValueError, AttributeError):
                return {}
    return {}


def _annotate(model: onnx.ModelProto, sites: list[FaultSite]) -> list[FaultSite]:
    from dataclasses import replace

    qp = quantization_params(model)
    notes = annotations(model)
    consts = constant_values(model) if any(s.kind is SiteKind.WEIGHT for s in sites) else {}
    out = []
    for s in sites:
        changes: dict[str, object] = {}
        q = qp.get(s.name)
        if q is not None and not BY_NAME[s.dtype].is_float:
            changes["scale"] = _scalar_or_list(q[0], float)
            changes["zero_point"] = _scalar_or_list(q[1], int) if q[1] is not None else 0
        if s.kind is SiteKind.WEIGHT and s.name in consts:
            arr = consts[s.name]
            changes["sparsity"] = (float(np.count_nonzero(pruned_mask(arr, q)) / arr.size)
                                   if arr.size else 0.0)
        note = notes.get(s.name)
        if note:
            for key in ("layer", "role", "time_step"):
                if key in note:
                    changes[key] = note[key]
        out.append(replace(s, **changes) if changes else s)
    return out


def site_map(sites: list[FaultSite]) -> dict[str, FaultSite]:
    return {s.name: s for s in sites}


def tensor_types(model: onnx.ModelProto) -> dict[str, str]:
    """Every named tensor of the main graph and its ONNX element type name."""
    g = infer_shapes(model).graph
    out = {t.name: onnx.helper.tensor_dtype_to_string(t.data_type) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        out.setdefault(vi.name, onnx.helper.tensor_dtype_to_string(vi.type.tensor_type.elem_type))
    return out


def lookup_site(sites: dict[str, FaultSite], name: str,
                model: onnx.ModelProto | None = None) -> FaultSite:
    """The site called ``name``.

    Raises:
        EnpheephError: no such site (with the closest names as a hint), or the tensor
            exists in ``model`` but has an element type faults cannot hit.
    """
    site = sites.get(name)
    if site is None and model is not None:
        other = tensor_types(model).get(name)
        if other is not None and name in unresolved_tensors(model):
            raise EnpheephError(
                f"tensor {name!r} has no shape ONNX can infer, so it is no site yet: give "
                "the data (--data IN.npz) to measure it on")
        if other is not None:
            from .bits import BY_NAME

            raise EnpheephError(
                f"tensor {name!r} has unsupported dtype {other.removeprefix('TensorProto.')}: "
                f"faults hit {', '.join(BY_NAME)} tensors"
            )
    if site is None:
        import difflib

        close = difflib.get_close_matches(name, list(sites), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise EnpheephError(
            f"unknown fault site {name!r}{hint} (list them with 'enpheeph-onnx sites MODEL')"
        )
    return site


def expand_state_addresses(faults: Sequence[Any], sites: list[FaultSite]) -> list[Any]:
    """Resolve neuron-state addresses ``LAYER.ROLE@STEPS`` into faults on tensors.

    In annotated spiking/recurrent models each time step's state is its own tensor;
    ``lif1.membrane@3[*,5]:bitflip:30`` addresses layer ``lif1``'s membrane potential at
    step 3, ``@3-5`` or ``@1,4`` several steps (transient faults), ``@all`` every step (a
    permanent fault). A fault whose site is an existing tensor name is kept as it is.

    Raises:
        EnpheephError: unknown layer/role, or a time step the model does not have.
    """
    from dataclasses import replace

    names = {s.name for s in sites}
    out: list[Any] = []
    for f in faults:
        if f.site in names or "@" not in f.site:
            out.append(f)
            continue
        base, _, steps_text = f.site.rpartition("@")
        layer, _, role = base.rpartition(".")
        states = [s for s in sites if s.time_step is not None and s.layer == layer
                  and s.role == role]
        if not states:
            known = sorted({f"{s.layer}.{s.role}" for s in sites if s.time_step is not None})
            raise EnpheephError(
                f"unknown neuron state {base!r} in {f.site!r}: "
                + (f"the model has {', '.join(known)}" if known
                   else "the model has no time-step annotations (export it with "
                        "enpheeph_onnx.export)")
            )
        t = steps_text.strip().lower()
        if t in ("all", "*"):
            wanted = None
        else:
            from .faults import parse_bits

            try:
                wanted = set(parse_bits(t))
            except EnpheephError:
                raise EnpheephError(f"malformed time steps {steps_text!r} in {f.site!r}: use "
                                    "@3, @3-5, @1,4 or @all") from None
        have = {s.time_step for s in states}
        missing = sorted(wanted - have) if wanted is not None else []
        if missing:
            raise EnpheephError(
                f"time step {missing[0]} does not exist for {base!r}: the model has steps "
                f"{min(have)}-{max(have)}"  # type: ignore[type-var]
            )
        for s in sorted(states, key=lambda s: s.time_step or 0):
            if wanted is None or s.time_step in wanted:
                out.append(replace(f, site=s.name))
    return out
