"""Suffix re-execution: run only the part of the graph a fault can change.

Every tensor computed before the first node that reads a faulted site is golden. For a
*cut* at node position ``p`` (in the graph's topological order) the **suffix model** holds
``nodes[p:]`` and takes as inputs the tensors that cross the cut: those produced before
``p`` (or graph inputs) and read at or after it. A trial whose faults all lie at or after
``p`` runs the suffix session on the golden values of the crossing tensors, cached once per
batch, instead of the whole model.

The suffix model is extracted with :class:`onnx.utils.Extractor`. A cut is used only where
it is safe: no node has subgraphs (an ``If``/``Loop`` body may read any outer tensor), every
graph output is produced after the cut, and the engine checks, when it first builds a
suffix session, that its fault-free outputs are bit-identical to the full model's (else the
cut is abandoned and full runs serve).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.utils

from .model import has_subgraphs
from .sites import FaultSite, SiteKind

log = logging.getLogger(__name__)


def site_positions(model: onnx.ModelProto, sites: Iterable[FaultSite]) -> dict[str, int]:
    """The node position at which each site is first read: the first consumer of a weight
    or input, the producer of an activation (its fault node sits right after it, so the
    cut is at the producer's position: the producer runs in the suffix)."""
    nodes = model.graph.node
    first_reader: dict[str, int] = {}
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for name in n.input:
            first_reader.setdefault(name, i)
        for name in n.output:
            producer[name] = i
    out = {}
    for s in sites:
        if s.kind is SiteKind.ACTIVATION and s.name in producer:
            out[s.name] = producer[s.name]
        else:
            out[s.name] = first_reader.get(s.name, 0)
    return out


def crossing_tensors(model: onnx.ModelProto, start: int) -> list[str] | None:
    """Tensors produced before node ``start`` (or graph inputs) and read at or after it, in
    a deterministic order; ``None`` when no safe cut exists there (see the module
    docstring)."""
    g = model.graph
    nodes = list(g.node)
    if has_subgraphs(g):
        return None
    inits = {t.name for t in g.initializer}
    before = {o for n in nodes[:start] for o in n.output} | {
        i.name for i in g.input if i.name not in inits}
    outputs = {o.name for o in g.output}
    if not outputs <= {o for n in nodes[start:] for o in n.output}:
        return None  # an output produced before the cut (or a graph input passed through)
    seen: dict[str, None] = {}
    for n in nodes[start:]:
        for name in n.input:
            if name and name in before:
                seen.setdefault(name, None)
    return list(seen)


def extract(extractor: onnx.utils.Extractor, inputs: Sequence[str], outputs: Sequence[str]
            ) -> onnx.ModelProto:
    """The subgraph of ``extractor``'s model from ``inputs`` to ``outputs`` as a model with
    the source's IR version, opsets and model-local functions (which
    :meth:`onnx.utils.Extractor.extract_model` does not carry over).

    Raises:
        Exception: whatever the extractor raises (e.g. a tensor without a known type).
    """
    source = extractor.model
    m = extractor.extract_model(list(inputs), list(outputs))
    m.ir_version = source.ir_version
    del m.opset_import[:]
    m.opset_import.extend(source.opset_import)
    m.functions.extend(source.functions)
    return m


def suffix_model(model: onnx.ModelProto, start: int) -> onnx.ModelProto | None:
    """``nodes[start:]`` of ``model`` (shape-inferred: the crossing tensors need their
    types) as a model whose inputs are the crossing tensors; ``None`` where no safe cut
    exists or the extraction fails."""
    cut = crossing_tensors(model, start)
    if cut is None:
        return None
    try:
        return extract(onnx.utils.Extractor(model), cut, [o.name for o in model.graph.output])
    except Exception as e:  # no shape for a crossing tensor, ...: full runs serve
        log.debug("no suffix at node %d: %s", start, e)
        return None


@dataclass
class GoldenCache:
    """Golden values of crossing tensors, per batch of one data object.

    Attributes:
        names: the cached tensors (the union over the cuts in use).
        batches: one ``{name: array}`` per batch, in batch order.
        nbytes: total bytes held.
    """

    names: tuple[str, ...]
    batches: list[dict[str, np.ndarray]]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for b in self.batches for a in b.values()))


def exposed(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``names`` added as graph outputs (to fill a cache)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    vi = {v.name: v for v in [*m.graph.value_info, *m.graph.input]}
    for name in names:
        if name in have:
            continue
        if name in vi:
            m.graph.output.append(vi[name])
        else:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    return m


def feeds_of(cache: GoldenCache, batch: int, wanted: Iterable[str]) -> Mapping[str, np.ndarray]:
    """The cached tensors of one batch that a suffix session reads."""
    b = cache.batches[batch]
    return {name: b[name] for name in wanted}


__all__ = ["GoldenCache", "crossing_tensors", "exposed", "extract", "feeds_of", "site_positions",
           "suffix_model"]
