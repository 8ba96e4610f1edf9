"""Activation and input faults applied between graph segments, on the host.

A trial whose faults all lie on activations or inputs needs no fault node in the graph.
The graph, in topological order, is cut right after the producer of every candidate site
(a **boundary**); the golden values of the tensors alive at each boundary (produced before
it and read at or after it, or graph outputs) are cached once per batch. A trial then

1. takes the cached golden tensors at its first hit boundary,
2. applies the faults of the sites at that boundary to copies of them, in numpy, with the
   same folded bit transforms as weight faults (:func:`enpheeph_onnx.faultset.fold`:
   ``u = ((u & and) | or) ^ xor`` on the stored bits),
3. runs the **segment** session up to its next hit boundary, applies that boundary's faults
   in place on the fresh outputs, and so on, the last segment ending at the graph outputs.

So a single-fault trial runs only the suffix after its site, with no fault node in any
graph (an idle fault node costs a tensor copy and blocks the fusions around it), and a
trial with faults everywhere costs one tensor copy per boundary. The segment sessions use
the same options as every other session (:func:`enpheeph_onnx.runtime.session_options`),
so a trial equals ``inject`` + ``run`` of the same faults bit for bit. Segments are extracted
with :class:`onnx.utils.Extractor`; each one is checked, on the first and last batch,
to turn the golden tensors at its start into exactly the golden tensors at its end (bit for
bit), else the chain is not used and the engine's instrumented sessions serve.

Sessions: one *fine* segment between consecutive boundaries (always kept: together they
hold the model's weights once); a *suffix* from every boundary to the outputs, built up
front for single-site trials (it stops before a cheap tail of small tensors, run by the fine
segments, where that keeps a large final layer out of every suffix); a segment between two
non-consecutive boundaries when that pair comes back a second time (a trial's hit
boundaries are otherwise bridged by the fine segments). Suffix and pair sessions are kept
least-recently-used while they and the golden tensors fit ``cache_mb`` (a session is
counted at twice its initializer bytes: onnxruntime holds the model's copy and its own,
measured).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.utils

from .bits import BY_NAME
from .errors import EnpheephError
from .faultset import BIT_FLIP, FaultSet, fold
from .model import has_subgraphs
from .runtime import Provider, batch_of, join_batches, make_session, run_session, sample_count
from .runtime_graph import Placement
from .sites import FaultSite, SiteKind
from .suffix import extract

log = logging.getLogger(__name__)


class ChainUnavailable(Exception):
    """The model cannot be run as a chain of segments (subgraphs, unknown shapes, a
    segment whose fault-free outputs differ from the golden tensors)."""


@dataclass
class _Segment:
    start: int
    end: int
    session: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nbytes: int = 0


@dataclass
class _Golden:
    """Golden tensors of one data object: live values at every boundary per batch (or
    none when they exceed the cache bound), the reference outputs, the probes used to
    verify segments."""

    key: tuple[int, int | None]
    data: Mapping[str, np.ndarray]
    starts: list[int]
    sizes: list[int]
    live: list[dict[str, np.ndarray]] | None
    probes: dict[int, dict[str, np.ndarray]]
    outputs: dict[str, np.ndarray]
    nbytes: int = 0


def batch_rows(fs: FaultSet, rows: np.ndarray, site: FaultSite, start: int, n: int
               ) -> tuple[FaultSet, np.ndarray]:
    """The faults ``rows`` of ``site`` that fall in the batch of ``n`` samples at
    ``start`` of the data, with an integer coordinate on the site's dynamic leading (batch)
    dimension shifted into the batch (``*`` coordinates are kept)."""
    if not len(rows) or not site.shape or isinstance(site.shape[0], int):
        return fs, rows
    lead = fs.index[rows, 0]
    mine = (lead < 0) | ((lead >= start) & (lead < start + n))
    rows = rows[mine]
    lead = lead[mine]
    if start and (lead >= 0).any():
        index = fs.index.copy()
        index[rows, 0] = np.where(lead >= 0, lead - start, lead)
        fs = FaultSet(fs.sites, fs.site, index, fs.model, fs.bits, fs.value)
    return fs, rows


def apply_in_place(arr: np.ndarray, fs: FaultSet, rows: np.ndarray, site: FaultSite,
                   undo: list[Any] | None = None) -> None:
    """Apply the faults ``rows`` (on ``site``, coordinates within ``arr``) to ``arr``'s
    stored bits, in plan order (duplicates composed, ``*`` expanded over ``arr.shape``).
    ``undo``: when given, a restore action (call it to put the old bits back) is
    appended before anything changes.

    Raises:
        EnpheephError: ``arr`` is not a contiguous writable array of the site's dtype.
    """
    d = BY_NAME[site.dtype]
    if arr.dtype != d.numpy or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise EnpheephError(f"cannot apply faults to {site.name!r}: its value is "
                            f"{arr.dtype} (expected a writable contiguous {d.name} array)")
    u = arr.reshape(-1).view(d.container)
    idx = fs.index[rows, :arr.ndim]
    masks = fs.bits[rows]
    if d.bits < 64 and (masks >> np.uint64(d.bits)).any():
        fs.transforms(d, rows)  # raises: a bit beyond the element width
    flips = arr.ndim > 0 and bool((fs.model[rows] == BIT_FLIP).all())
    if flips and (idx >= 0).all():
        # bit flips commute: no fold needed, repeated elements XOR in place (ufunc.at)
        inside = (idx < np.asarray(arr.shape)).all(1)
        lin = np.ravel_multi_index(tuple(idx[inside].T), arr.shape)
        _save(undo, u, lin)
        np.bitwise_xor.at(u, lin, masks[inside].astype(d.container))
        return
    if flips and arr.ndim > 1 and (idx[:, 0] < 0).all() and (idx[:, 1:] >= 0).all():
        # the same elements of every sample: one per-sample mask, XORed into each row
        per = arr.shape[1:]
        inside = (idx[:, 1:] < np.asarray(per)).all(1)
        lin = np.ravel_multi_index(tuple(idx[inside, 1:].T), per)
        mask = np.zeros(int(np.prod(per)), d.container)
        np.bitwise_xor.at(mask, lin, masks[inside].astype(d.container))
        cols = np.flatnonzero(mask)
        rows2d = u.reshape(arr.shape[0], -1)
        if 4 * len(cols) < mask.size:
            if undo is not None:
                old = rows2d[:, cols]
                undo.append(lambda: rows2d.__setitem__((slice(None), cols), old))
            rows2d[:, cols] ^= mask[cols]
        else:
            _save(undo, u, None)
            rows2d ^= mask
        return
    lin, a, o, x = fold(fs, rows, arr.shape, d)
    if len(lin):
        _save(undo, u, lin)
        u[lin] = ((u[lin] & a) | o) ^ x


def _save(undo: list[Any] | None, u: np.ndarray, lin: np.ndarray | None) -> None:
    """Append to ``undo`` the action restoring ``u`` at ``lin`` (``None``: all of it)."""
    if undo is None:
        return
    if lin is None:
        whole = u.copy()
        undo.append(lambda: np.copyto(u, whole))
    else:
        old = u[lin]
        undo.append(lambda: u.__setitem__(lin, old))


class ValueChain:
    """Segment sessions of a model and the golden tensors between them.

    Args:
        model: the source model, shape-inferred (every tensor alive at a boundary needs
            its type).
        sites: activation and input sites (weights are ignored: their trials run on the
            engine's instrumented sessions).
        provider: onnxruntime provider of the segment sessions.
        options: their session options.
        cache_mb: the most memory the golden tensors and the suffix and span sessions may
            hold: golden tensors beyond it are not cached (trials then run from the graph
            inputs), sessions beyond it are dropped, least recently used first (the fine
            segments, which hold the weights once, are always kept).

    Raises:
        ChainUnavailable: the graph has subgraphs (``If``/``Loop``/``Scan`` bodies read
            outer tensors), or no site can be cut after.
    """

    def __init__(self, model: onnx.ModelProto, sites: Sequence[FaultSite],
                 provider: Provider, options: Any, cache_mb: float = 512.0,
                 placement: Mapping[str, Placement] | None = None) -> None:
        g = model.graph
        if has_subgraphs(g):
            raise ChainUnavailable("the graph has subgraphs")
        self.model = model
        self.provider = provider
        self.options = options
        self.cache_mb = cache_mb
        nodes = list(g.node)
        self.end = len(nodes)
        inits = {t.name for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in inits]
        self.outputs = [o.name for o in g.output]
        birth: dict[str, int] = {name: 0 for name in self.inputs}
        const: set[str] = set()
        last_read: dict[str, int] = {}
        self._readers: list[set[str]] = []
        for i, n in enumerate(nodes):
            for x in n.input:
                if x:
                    last_read[x] = i
            self._readers.append({x for x in n.input if x})
            for o in n.output:
                if o:
                    birth[o] = i + 1
            if not any(n.input):
                const.update(n.output)  # Constant nodes go with the segments that read them
        self._birth = {t: b for t, b in birth.items() if t not in const}
        death = {t: (self.end + 1 if t in set(self.outputs) else last_read.get(t, -1) + 1)
                 for t in self._birth}
        self._death = death
        self.cut: dict[str, int] = {}
        self.sites: dict[str, FaultSite] = {}
        # site -> its tensor in ``model`` (the site itself, or where the runtime graph
        # holds it: :mod:`enpheeph_onnx.runtime_graph`; sites without one are not served)
        self.placement = {s.name: Placement(s.name) for s in sites} if placement is None \
            else dict(placement)
        for s in sites:
            t = self.placement[s.name].tensor if s.name in self.placement else None
            if t is None:
                continue
            if s.kind is SiteKind.INPUT and t in self.inputs:
                self.cut[s.name] = 0
            elif s.kind in (SiteKind.ACTIVATION, SiteKind.INPUT) and t in self._birth:
                self.cut[s.name] = self._birth[t]
            else:
                continue
            self.sites[s.name] = s
        if not self.cut:
            raise ChainUnavailable("no activation or input site to cut after")
        self.bounds = sorted({0, *self.cut.values()} - {self.end})
        self._fine: dict[int, Any] = {}  # _Segment, None (computes nothing alive) or _BAD
        self._spans: OrderedDict[tuple[int, int], _Segment] = OrderedDict()
        self._bad_spans: set[tuple[int, int]] = set()
        self._sightings: dict[tuple[int, int], int] = {}
        self._unroutable: set[tuple[int, ...]] = set()
        self._tails: dict[int, int] = {}
        self._live: dict[int, list[str]] = {}
        self._extractor = onnx.utils.Extractor(model)  # one name index for every segment
        sizes = {t.name: int(np.prod(t.dims)) * max(1, _itemsize(t.data_type))
                 for t in g.initializer}
        self._node_weights = [sum(sizes.get(x, 0) for x in set(n.input)) for n in nodes]
        self._prepared: tuple[int, int | None] | None = None
        self._golden: _Golden | None = None

    # -- structure ---------------------------------------------------------------------------

    def live(self, c: int) -> list[str]:
        """Tensors alive at boundary ``c``: produced before it (or graph inputs) and read at
        or after it, or graph outputs; in order of production (computed once per
        boundary: trials ask for it on every batch)."""
        if c not in self._live:
            self._live[c] = sorted((t for t, b in self._birth.items()
                                    if b <= c < self._death[t]),
                                   key=lambda t: (self._birth[t], t))
        return self._live[c]

    def _next(self, c: int) -> int:
        i = self.bounds.index(c)
        return self.bounds[i + 1] if i + 1 < len(self.bounds) else self.end

    def _build(self, start: int, end: int) -> _Segment | None:
        """The segment session of nodes ``[start, end)`` (``None``: it computes nothing
        alive after it)."""
        readers = set().union(*self._readers[start:end]) if end > start else set()
        ins = [t for t in self.live(start) if t in readers]
        outs = [t for t in self.live(end) if self._birth[t] > start] if end < self.end else [
            t for t in self.outputs if t in self._birth and self._birth[t] > start]
        if not outs:
            return None
        try:
            m = extract(self._extractor, ins, outs)
        except Exception as e:  # a tensor without an inferred type, ...
            raise ChainUnavailable(f"segment [{start}, {end}) cannot be extracted ({e})"
                                   ) from None
        nbytes = self._weight_bytes(start, end)
        try:
            sess = make_session(m, self.provider, self.options)
        except EnpheephError as e:
            raise ChainUnavailable(f"segment [{start}, {end}): {e}") from None
        return _Segment(start, end, sess, tuple(ins), tuple(outs), nbytes)

    def _fine_segment(self, c: int) -> _Segment | None:
        """The segment from boundary ``c`` to the next one (``None``: nothing alive after
        it is computed there). Raises :class:`_Unusable` where it cannot be built or does
        not reproduce the golden tensors (a fusion across the boundary before it, say)."""
        if c not in self._fine:
            try:
                seg = self._build(c, self._next(c))
                if seg is not None and self._golden is not None:
                    self._check(seg, self._golden)
            except ChainUnavailable as e:
                log.debug("no fine segment from %d: %s", c, e)
                seg = _BAD
            self._fine[c] = seg
        seg = self._fine[c]
        if seg is _BAD:
            raise _Unusable(c)
        return seg

    def _span(self, start: int, end: int) -> _Segment | None:
        """A checked session for ``[start, end)`` skipping the boundaries between, built on
        demand (``None`` where it cannot be had)."""
        key = (start, end)
        seg = self._spans.get(key)
        if seg is not None:
            self._spans.move_to_end(key)
            return seg
        if key in self._bad_spans:
            return None
        try:
            seg = self._build(start, end)
            if seg is not None and self._golden is not None:
                self._check(seg, self._golden)
        except ChainUnavailable as e:
            log.debug("no session for [%d, %d): %s", start, end, e)
            self._bad_spans.add(key)
            return None
        if seg is None:
            self._bad_spans.add(key)
            return None
        self._spans[key] = seg
        while self._spans and self.session_bytes + self.cache_bytes > self.cache_mb * 2**20:
            old, _ = self._spans.popitem(last=False)
            self._bad_spans.add(old)  # never rebuilt: the fine segments serve it
        return seg

    def _route(self, a: int, b: int) -> list[_Segment] | None:
        """Sessions that take the tensors alive at boundary ``a`` to those at ``b`` (or to
        the outputs when ``b`` is the end): one span when it exists or the pair has come
        back, else the fine segments between; ``None`` where neither reproduces the
        golden tensors."""
        if b == self.end and self._next(a) != b:
            t = self._tail_start(a)
            if t != self.end:  # span to a cheap tail, then the tail's fine segments
                head = self._route(a, t)
                tail = self._route(t, b)
                return None if head is None or tail is None else head + tail
        key = (a, b)
        self._sightings[key] = self._sightings.get(key, 0) + 1
        if self._next(a) != b and (key in self._spans or b == self.end
                                   or self._tail_start(a) == b
                                   or self._sightings[key] >= 2):
            span = self._span(a, b)
            if span is not None:
                return [span]
        out = []
        c = a
        try:
            while c != b:
                seg = self._fine_segment(c)
                if seg is not None:
                    out.append(seg)
                c = self._next(c)
        except _Unusable:
            span = self._span(a, b) if self._next(a) != b else None
            return None if span is None else [span]
        return out

    def _tail_start(self, a: int) -> int:
        """Where the suffix session from boundary ``a`` should stop: the boundary ``t``
        after which only cheap boundaries remain (the tensors alive at them, summed, at most
        half the largest set alive at any boundary: running fine segments there costs
        about one tensor copy) that leaves the fewest weight bytes in the ``[a, t)``
        session, if at most half of those to the end — so that the suffixes from every
        boundary do not each hold a copy of, say, a large final fully connected layer. The
        graph end when no tail is cheap."""
        if a in self._tails:
            return self._tails[a]
        gold = self._golden
        if gold is None:
            return self.end
        probe = gold.probes[min(gold.probes)]
        size = {c: sum(probe[t].nbytes for t in self.live(c) if t in probe)
                for c in self.bounds}
        largest = max(size.values(), default=0)
        best, best_weight = self.end, self._weight_bytes(a, self.end)
        limit = 0.5 * best_weight
        for t in sorted(c for c in size if c > a):
            tail = sum(v for c, v in size.items() if c >= t)
            w = self._weight_bytes(a, t)
            if tail <= 0.5 * largest and w <= limit and w < best_weight:
                best, best_weight = t, w
        self._tails[a] = best
        return best

    def _weight_bytes(self, a: int, b: int) -> int:
        """Initializer bytes read by nodes ``[a, b)`` (a shared one counted per node)."""
        return int(sum(self._node_weights[a:b]))

    def _stops(self, faults: FaultSet) -> tuple[int, ...]:
        cuts = {self.cut[name] for name in faults.hit_sites()}
        first = min(cuts) if self._golden is None or self._golden.live is not None else 0
        return tuple(sorted({first, *cuts, self.end}))  # a site produced last cuts at the end

    def serves(self, faults: FaultSet) -> bool:
        """Whether every fault of ``faults`` lies on a site this chain can cut after, and
        its boundaries can be bridged by checked segments (known once a trial tried)."""
        hit = faults.hit_sites()
        if not (len(faults) and hit <= set(self.cut)
                and self._stops(faults) not in self._unroutable):
            return False
        blocked = [n for n in hit if self.placement[n].block is not None]
        if blocked:  # blocks hold channels apart: ``*`` only on the batch axis
            rows = faults.by_site()
            return all(bool((faults.index[rows[n], 1:4] >= 0).all()) for n in blocked)
        return True

    def prepare(self, data: Mapping[str, np.ndarray], batch_size: int | None) -> None:
        """Golden tensors for ``data`` and, up front, the fine segments and a suffix from
        every boundary (within ``cache_mb``), each checked against the golden tensors.

        Raises:
            ChainUnavailable: the golden tensors cannot be computed or fetched.
        """
        if self._prepared == (id(data), batch_size):
            return
        gold = self._golden_for(data, batch_size)
        for c in self.bounds:
            with contextlib.suppress(_Unusable):
                self._fine_segment(c)
        if gold.live is not None:
            for c in self.bounds[1:]:
                if self._next(c) != self.end:
                    t = self._tail_start(c)
                    if self._next(c) != t:
                        self._span(c, t)
        self._prepared = (id(data), batch_size)

    # -- golden tensors ----------------------------------------------------------------------

    def _prefix(self, c: int) -> tuple[list[str], Any]:
        """The tensors alive at boundary ``c`` (graph outputs at the end) that the inputs do
        not give, and a session computing just them: the graph has no other boundary, so
        its fusions are the model's."""
        names = [t for t in (self.live(c) if c < self.end else self.outputs)
                 if t not in self.inputs]
        if not names:
            return [], None
        try:
            m = extract(self._extractor, self.inputs, names)
        except Exception as e:
            raise ChainUnavailable(f"no prefix up to node {c} ({e})") from None
        try:
            return names, make_session(m, self.provider, self.options)
        except EnpheephError as e:
            raise ChainUnavailable(str(e)) from None

    def _golden_for(self, data: Mapping[str, np.ndarray], batch_size: int | None) -> _Golden:
        """Golden tensors at every boundary, each computed by its own prefix session (the
        values the unmodified model computes there), per batch when they fit
        ``cache_mb``, else for the probed (first and last) batches only."""
        key = (id(data), batch_size)
        if self._golden is not None and self._golden.key == key:
            return self._golden
        n = sample_count(data)
        step = batch_size or n
        starts = list(range(0, n, step))
        sizes = [min(step, n - s) for s in starts]
        feeds = [{k: v for k, v in batch_of(data, s, step).items() if k in self.inputs}
                 for s in starts]
        probe_ids = sorted({0, len(starts) - 1})
        vals: list[dict[str, np.ndarray]] = [dict(f) for f in feeds]
        live = True
        total = 0
        for c in [*self.bounds[1:], self.end]:
            names, sess = self._prefix(c)  # one prefix session alive at a time
            if sess is None:
                continue
            batches = range(len(starts)) if live or c == self.end else probe_ids
            for b in batches:
                got = self._fetch(sess, names, feeds[b])
                vals[b].update(got)
                if c < self.end and live:
                    total += sum(a.nbytes for a in got.values())
            del sess
            if live and total > self.cache_mb * 2**20:
                log.info("golden tensors would exceed %g MB: trials run from the inputs",
                         self.cache_mb)
                live = False
                keep = set(self.outputs) | set(self.inputs)
                for b in range(len(starts)):
                    if b not in probe_ids:
                        vals[b] = {k: v for k, v in vals[b].items() if k in keep}
        outputs = {o: join_batches(o, [v[o] for v in vals], sizes) for o in self.outputs}
        probes = {b: vals[b] for b in probe_ids}
        self._golden = _Golden(key, data, starts, sizes, vals if live else None, probes,
                               outputs, total if live else 0)
        self._prepared = None
        self._tails.clear()
        self._fine.clear()  # checked again on the new golden tensors
        self._spans.clear()
        self._bad_spans.clear()
        self._unroutable.clear()
        return self._golden

    @staticmethod
    def _fetch(sess: Any, names: list[str], feeds: Mapping[str, np.ndarray]
               ) -> dict[str, np.ndarray]:
        wanted = {i.name for i in sess.get_inputs()}
        try:
            outs = run_session(sess, names, {k: v for k, v in feeds.items() if k in wanted})
        except Exception as e:  # e.g. a bfloat16 tensor numpy cannot hold
            raise ChainUnavailable(f"the golden tensors cannot be fetched ({e})") from None
        return dict(zip(names, outs, strict=True))

    def _check(self, seg: _Segment, gold: _Golden) -> None:
        """Raise :class:`ChainUnavailable` unless ``seg`` turns the golden tensors at its
        start into the golden tensors at its end, on the probed batches."""
        for vals in gold.probes.values():
            outs = run_session(seg.session, list(seg.outputs),
                               {t: vals[t] for t in seg.inputs})
            for t, arr in zip(seg.outputs, outs, strict=True):
                ref = vals[t]
                if arr.shape != ref.shape or arr.tobytes() != ref.tobytes():
                    raise ChainUnavailable(
                        f"segment [{seg.start}, {seg.end}) does not reproduce {t!r}")

    @property
    def session_bytes(self) -> int:
        """Estimated memory of the suffix and span sessions (twice their weights)."""
        return 2 * sum(s.nbytes for s in self._spans.values())

    @property
    def session_count(self) -> int:
        """Segment sessions held (fine segments, suffixes and spans)."""
        return sum(1 for s in self._fine.values() if isinstance(s, _Segment)) + len(self._spans)

    @property
    def cache_bytes(self) -> int:
        """Bytes of golden tensors held."""
        return 0 if self._golden is None else self._golden.nbytes

    def reference(self, data: Mapping[str, np.ndarray], batch_size: int | None
                  ) -> dict[str, np.ndarray]:
        """The fault-free outputs (those of the unmodified model, by construction)."""
        return self._golden_for(data, batch_size).outputs

    # -- trials ------------------------------------------------------------------------------

    def run(self, data: Mapping[str, np.ndarray], faults: FaultSet, batch_size: int | None
            ) -> dict[str, np.ndarray] | None:
        """Outputs for ``data`` with ``faults`` (all on sites of this chain) applied;
        ``None`` where its boundaries cannot be bridged by checked segments (the engine's
        instrumented sessions then serve this and every trial with the same boundaries).

        Raises:
            EnpheephError: onnxruntime fails on the faulty tensors.
        """
        gold = self._golden_for(data, batch_size)
        rows_of = faults.by_site()
        at: dict[int, list[str]] = {}
        for name in rows_of:
            at.setdefault(self.cut[name], []).append(name)
        stops = self._stops(faults)
        routes = [self._route(a, b) for a, b in itertools.pairwise(stops)]
        if any(r is None for r in routes):
            self._unroutable.add(stops)
            return None
        chunks: dict[str, list[np.ndarray]] = {o: [] for o in self.outputs}
        for b, (s, n) in enumerate(zip(gold.starts, gold.sizes, strict=True)):
            if gold.live is not None:
                golden = gold.live[b]
                host = {t: golden[t] for t in self.live(stops[0])}
            else:
                host = {k: v for k, v in batch_of(data, s, n).items() if k in self.inputs}
            owned: set[str] = set()
            borrowed: set[str] = set()  # cached golden tensors faulted in place
            undo: list[Any] = []
            try:
                for stop, route in zip(stops, [*routes, []], strict=True):
                    for name in at.get(stop, ()):
                        site = self.sites[name]
                        place = self.placement[name]
                        t = place.tensor
                        fs, rows = batch_rows(faults, rows_of[name], site, s, n)
                        if not len(rows) or t not in host:
                            continue  # no fault in this batch, or a tensor nothing reads
                        if place.block is not None:  # coordinates of the stored blocks
                            sub = fs.take(rows)
                            fs = FaultSet(sub.sites, sub.site,
                                          place.coordinates(sub.index[:, :4]), sub.model,
                                          sub.bits, sub.value)
                            rows = np.arange(len(fs))
                        if t not in owned and (gold.live is None or t in self.inputs
                                               or t in borrowed):
                            host[t] = np.array(host[t], copy=True, order="C")
                            owned.add(t)
                        if t in owned:
                            apply_in_place(place.view(host[t]), fs, rows, site)
                        else:  # the cache's own array: the touched bits are put back below
                            borrowed.add(t)
                            apply_in_place(place.view(host[t]), fs, rows, site, undo)
                    for seg in route or ():
                        outs = run_session(seg.session, list(seg.outputs),
                                           {t: host[t] for t in seg.inputs})
                        for t, arr in zip(seg.outputs, outs, strict=True):
                            host[t] = arr
                            if arr.flags.writeable and arr.flags.c_contiguous:
                                owned.add(t)
                            else:
                                owned.discard(t)
                for o in self.outputs:
                    chunks[o].append(host[o].copy() if o in borrowed and o not in owned
                                     else host[o])
            finally:
                for restore in reversed(undo):
                    restore()
        return {o: join_batches(o, c, gold.sizes) for o, c in chunks.items()}


def _itemsize(data_type: int) -> int:
    try:
        return int(onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except Exception:  # string tensors and other types without a fixed width
        return 0


class _Unusable(Exception):
    """A fine segment that cannot be built or checked."""


_BAD: Any = object()


__all__ = ["ChainUnavailable", "ValueChain", "apply_in_place", "batch_rows"]
