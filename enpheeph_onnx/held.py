"""Weight faults on the weights onnxruntime holds, at deployed speed (``--optimization all``).

At ``ORT_ENABLE_ALL`` onnxruntime rewrites a convolutional network before it runs it: the
filters of a ``Conv`` are re-ordered into the blocked NCHWc layout of its
``com.microsoft.nchwc`` kernels, ``Gemm`` + ``Relu`` fuse, constant ``Transpose`` s of weights
fold. Those layouts apply only to constant weights, so a campaign that feeds perturbed copies
of the stored weights (:mod:`enpheeph_onnx.engine`) runs at ``ORT_ENABLE_EXTENDED``, about
1.6x slower than the deployed session on CNNs on x86 CPUs. This module instead

1. optimizes the model offline once (:attr:`onnxruntime.SessionOptions.optimized_model_filepath`
   at ``ORT_ENABLE_ALL``): the **runtime graph**, with the weights as the runtime holds them;
2. locates every element of every targeted weight in the runtime graph's initializers with
   two **probes**: the same model with each weight's elements replaced by distinct integer
   codes (``offset + i + 1``, exact in the weight's float dtype), and once more with the
   codes reversed and negated, each optimized the same way. Where code ``offset + i + 1``
   lands (and its reversed code too) is where element ``i`` is held: a permutation, plus
   zero padding. An
   initializer that changes between the probes but is not such a copy is *derived* from
   targeted weights (e.g. ``Conv`` + ``BatchNormalization`` folding scales the filters):
   those weights are never faulted in the wrong place; neither is a weight read by a node
   on constants only that computes with it (``Abs(w)``, ``Mul(w, c)``: folded into a new
   constant). Such weights are :class:`UnheldWeight`: refused, or (``folded="bake"``, what
   the campaign engine asks for) left to a session per trial of the model with their
   faults written into its initializers, as ``inject`` writes them. The runtime graph's
   values at the located positions are checked to equal the stored weight bit for bit;
3. runs trials on the runtime graph with the held weights as graph inputs (fed from numpy
   arrays that the faults change in place, bit flips by ``np.bitwise_xor.at``, and that are
   restored from a golden copy after the run), with suffix re-execution on the runtime
   graph: a trial runs from the first node that reads a faulted weight, on golden tensors
   cached per batch.

A fault on element ``i`` of a stored weight is thus applied to every held copy of it, which
is exactly what ``inject`` (perturb the stored weight, let onnxruntime re-order it) does.
What differs from a default onnxruntime session of the model is only pre-packing: a fed
``Gemm``/``MatMul`` weight is not pre-packed, which changes the summation order (a few ulp,
measured: up to 3.3e-6 on a 16384-input layer). The campaign's golden run is this graph's
own, so no trial shows that difference as an SDC; :meth:`HeldWeights.deviation` measures it
against the unmodified model and the campaign reports it.

Float32 and float64 weights only are held in place (a code must be exact in the weight's
dtype; a float32 weight of more than 2^24 elements cannot be coded), on models without
subgraphs; other weights are unheld (baked by the engine, see above).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .bits import BY_NAME
from .errors import EnpheephError
from .faultset import BIT_FLIP, FaultSet, fold
from .model import has_subgraphs
from .runtime import Provider, batch_of, join_batches, make_session, run_session, sample_count
from .runtime_graph import deviation, optimize_offline, runtime_options
from .sites import FaultSite, SiteKind
from .suffix import crossing_tensors

log = logging.getLogger(__name__)

_CODE_LIMIT = {np.dtype(np.float32): 2**24, np.dtype(np.float64): 2**53}
"""Codes up to this are exact integers in the dtype (its significand bits + 1)."""


@dataclass(frozen=True)
class HeldCopy:
    """Where the runtime holds one copy of a stored weight.

    Attributes:
        tensor: the initializer of the runtime graph that holds it.
        positions: int64 ``[n]``, the flat position in ``tensor`` of each flat element of
            the stored weight (``None``: the same layout, position = element).
    """

    tensor: str
    positions: np.ndarray | None


def weight_constants(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose ``Constant``-node weights named in ``names`` are
    initializers (so they can be coded and located); ``model`` itself when it has none."""
    if not any(n.op_type == "Constant" and n.output[0] in names for n in model.graph.node):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = []
    for n in g.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] in names:
            t = onnx.TensorProto()
            t.CopyFrom(next(a.t for a in n.attribute if a.name == "value"))
            t.name = n.output[0]
            g.initializer.append(t)
        else:
            keep.append(n)
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    return m


class UnheldWeight(EnpheephError):
    """A targeted weight this module cannot serve in place: onnxruntime does not hold it as
    stored (folded into another constant, transformed, held only in part), or it cannot be
    probed (not float32/float64, too many elements, a fusion that depends on its values).
    :class:`HeldWeights` with ``folded="bake"`` leaves such weights to the caller instead
    of refusing them."""


_LAYOUT = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
"""Ops that move a constant's elements without changing them (folded into a copy the
probe locates)."""

_VALUE_FREE = {"Shape", "Size"}
"""Ops whose output does not depend on their input's values."""


def _refuse_folded(model: onnx.ModelProto, weights: set[str]) -> None:
    """Refuse a targeted weight read by a node whose inputs are all constants and that
    computes with the values (onnxruntime folds it into a new constant, which a fault on
    the stored weight would not reach: say ``Abs(w)``, ``Clip(w)``, ``Mul(w, c)``); layout
    ops are followed to their readers."""
    g = model.graph
    const = {t.name for t in g.initializer} | {
        o for n in g.node if n.op_type == "Constant" for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    for w in sorted(weights):
        todo, seen = [w], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in readers.get(t, []):
                if n.op_type in _VALUE_FREE or not all(x in const for x in n.input if x):
                    continue
                if n.op_type in _LAYOUT:
                    const.update(n.output)
                    todo.extend(n.output)
                    continue
                raise UnheldWeight(
                    f"--optimization all: weight {w!r} is read by {n.op_type} "
                    f"{n.name or n.output[0]!r} on constants only, which onnxruntime folds "
                    "into a new constant that a fault on the stored weight would not reach; "
                    "use --optimization extended or leave the weight out (--sites)")


def _structure(model: onnx.ModelProto) -> list[tuple[str, str, int, int]]:
    return [(n.op_type, n.domain, len(n.input), len(n.output)) for n in model.graph.node]


def locate(model: onnx.ModelProto, runtime: onnx.ModelProto, sites: Sequence[FaultSite],
           provider: Provider, threads: int | None) -> dict[str, tuple[HeldCopy, ...]]:
    """Every held copy of every weight site of ``model`` in ``runtime`` (its
    :func:`optimize_offline` graph), found with a coded probe (module docstring).

    Raises:
        UnheldWeight: a weight that cannot be coded (dtype, size), that the runtime graph
            does not hold as a copy of its stored bits (folded or transformed), or a probe
            whose optimized graph differs in structure from the runtime graph.
    """
    inits = {t.name: t for t in model.graph.initializer}
    codes: dict[str, tuple[int, int]] = {}  # site -> (offset, size)
    offsets: dict[np.dtype, int] = {}
    stored: dict[str, np.ndarray] = {}
    for s in sites:
        arr = numpy_helper.to_array(inits[s.name])
        stored[s.name] = arr
        dt = arr.dtype
        if dt not in _CODE_LIMIT:
            raise UnheldWeight(
                f"--optimization all cannot locate weight {s.name!r} ({dt.name}) in the "
                "graph onnxruntime runs: only float32/float64 weights can be probed; use "
                "--optimization extended")
        off = offsets.get(dt, 0)
        if off + arr.size >= _CODE_LIMIT[dt]:
            raise UnheldWeight(
                f"--optimization all cannot locate weight {s.name!r}: its {dt.name} codes "
                f"would pass {_CODE_LIMIT[dt]:,} (too many weight elements to probe at once); "
                "target fewer weights (--sites) or use --optimization extended")
        codes[s.name] = (off, arr.size)
        offsets[dt] = off + arr.size
    _refuse_folded(model, set(codes))

    def coded(reverse: bool) -> onnx.ModelProto:
        """The probe: codes ``off + i + 1``; reversed and negated, ``-(off + size - i)``
        (a sign change and a reversal: a folded ``Abs``, ``Relu`` or ``Clip`` of a weight
        does not reproduce it)."""
        p = onnx.ModelProto()
        p.CopyFrom(model)
        for t in p.graph.initializer:
            if t.name in codes:
                off, size = codes[t.name]
                i = np.arange(size, dtype=np.float64)
                v = -(off + size - i) if reverse else off + i + 1
                t.CopyFrom(numpy_helper.from_array(
                    v.astype(stored[t.name].dtype).reshape(stored[t.name].shape), t.name))
        return optimize_offline(p, provider, threads)

    fwd, rev = coded(False), coded(True)
    if not _structure(fwd) == _structure(rev) == _structure(runtime):
        raise UnheldWeight(
            "--optimization all: onnxruntime optimizes the model differently when its weights "
            "change (a value-dependent fusion), so the weights it holds cannot be located; "
            "use --optimization extended")
    real = {t.name: t for t in runtime.graph.initializer}
    other = {t.name: t for t in rev.graph.initializer}
    ranges = sorted((off, size, name) for name, (off, size) in codes.items())
    copies: dict[str, list[HeldCopy]] = {name: [] for name in codes}
    derived: list[str] = []

    def bits(arr: np.ndarray) -> np.ndarray:
        return arr.view(f"u{arr.dtype.itemsize}")

    def add(name: str, tensor: str, positions: np.ndarray | None) -> None:
        held = bits(numpy_helper.to_array(real[tensor]).reshape(-1))
        src = bits(stored[name].reshape(-1))
        if not np.array_equal(held if positions is None else held[positions], src):
            raise UnheldWeight(
                f"--optimization all: onnxruntime holds weight {name!r} transformed in "
                f"{tensor!r}, so a fault on its stored bits has no single place in the "
                "running graph; use --optimization extended")
        copies[name].append(HeldCopy(tensor, positions))

    for t in fwd.graph.initializer:
        if t.name not in real or t.name not in other:
            continue
        a = numpy_helper.to_array(t).reshape(-1)
        b = numpy_helper.to_array(other[t.name]).reshape(-1)
        if a.dtype not in _CODE_LIMIT or np.array_equal(bits(a), bits(b)):
            continue  # independent of the targeted weights
        dt = a.dtype
        if t.name in codes and a.size == codes[t.name][1]:  # the weight itself, in place?
            off, size = codes[t.name]
            if (np.array_equal(a, np.arange(off + 1, off + size + 1, dtype=dt))
                    and np.array_equal(b, -np.arange(off + size, off, -1, dtype=dt))):
                add(t.name, t.name, None)
                continue
        # (all in the weight's dtype: the codes are integers it holds exactly)
        lows = np.array([r[0] for r in ranges], dt)
        sizes = np.array([r[1] for r in ranges], dt)
        nz = np.flatnonzero(a)
        va = a[nz]
        which = np.searchsorted(lows, va, side="left") - 1  # (code > its offset)
        ok = len(nz) > 0 and bool((which >= 0).all()) and bool((va == np.round(va)).all())
        elem = np.zeros(0, dt)
        if ok:
            elem = va - lows[which] - 1
            # a copy: the reversed codes land on the same positions, reversed
            ok = bool((elem < sizes[which]).all()
                      and np.array_equal(a != 0, b != 0)
                      and np.array_equal(b[nz], -(lows[which] + sizes[which] - elem)))
        if not ok:
            derived.append(t.name)
            continue
        for k in np.unique(which).tolist():
            _, size_k, name = ranges[k]
            mine = which == k
            e = elem[mine].astype(np.int64)
            if len(e) != size_k or not (np.bincount(e, minlength=size_k) == 1).all():
                raise UnheldWeight(
                    f"--optimization all: onnxruntime holds only part of weight {name!r} in "
                    f"{t.name!r}, so its faults cannot be placed; use --optimization extended")
            positions = np.empty(size_k, np.int64)
            positions[e] = nz[mine]
            same = t.name == name and bool((positions == np.arange(size_k)).all())
            add(name, t.name, None if same else positions)
    for name, found in copies.items():
        if not found:
            raise UnheldWeight(
                f"--optimization all: weight {name!r} is not held by onnxruntime as stored "
                f"(folded into {', '.join(derived) or 'other constants'}, e.g. Conv + "
                "BatchNormalization), so its faults cannot be placed; use --optimization "
                "extended or leave it out (--sites)")
    if derived:
        raise UnheldWeight(
            f"--optimization all: onnxruntime folds targeted weights into {derived[0]!r} as "
            "well as holding them as stored, so a fault would miss that copy; use "
            "--optimization extended")
    return {name: tuple(c) for name, c in copies.items()}


def locate_held(model: onnx.ModelProto, runtime: onnx.ModelProto, sites: Sequence[FaultSite],
                provider: Provider, threads: int | None
                ) -> tuple[dict[str, tuple[HeldCopy, ...]], frozenset[str]]:
    """:func:`locate` for the weights onnxruntime holds as stored, and the names of the
    others (:class:`UnheldWeight`: folded, transformed, not probeable): probed all at once,
    and where that fails, one by one (then the held ones together again)."""
    try:
        return locate(model, runtime, sites, provider, threads), frozenset()
    except UnheldWeight:
        pass
    held, folded = [], set()
    for s in sites:
        try:
            locate(model, runtime, [s], provider, threads)
            held.append(s)
        except UnheldWeight:
            folded.add(s.name)
    return (locate(model, runtime, held, provider, threads) if held else {}), frozenset(folded)


@dataclass
class _Cut:
    session: Any
    inputs: tuple[str, ...]  # golden crossing tensors it reads
    weights: tuple[str, ...]  # held tensors it reads
    data: tuple[str, ...]  # graph inputs it reads


class HeldWeights:
    """Weight-fault trials on the runtime graph (module docstring).

    Args:
        model: the source model (not modified).
        sites: its weight sites to target (other kinds are not served here).
        provider: onnxruntime provider.
        threads: intra-op threads (``None``: onnxruntime's default).
        suffix: run trials from the first node reading a faulted weight.
        cache_mb: the most memory the golden tensors of the cuts may hold (beyond it,
            whole runs serve).
        folded: ``"refuse"``: a weight this module cannot serve in place raises
            :class:`UnheldWeight`; ``"bake"``: such weights (every weight of a model with
            subgraphs) are left out, listed in :attr:`folded`, for the caller to serve with
            a session per trial that has their faults written in.

    Raises:
        UnheldWeight: with ``folded="refuse"``: see :func:`locate`; a model with subgraphs.
    """

    def __init__(self, model: onnx.ModelProto, sites: Sequence[FaultSite],
                 provider: Provider = "cpu", threads: int | None = None, suffix: bool = True,
                 cache_mb: float = 512.0, folded: str = "refuse") -> None:
        self.sites = {s.name: s for s in sites if s.kind is SiteKind.WEIGHT}
        bodies = has_subgraphs(model.graph)
        if bodies and folded != "bake":
            raise UnheldWeight("--optimization all serves weight faults in place only on "
                               "models without If/Loop/Scan subgraphs; use --optimization "
                               "extended")
        self.source = weight_constants(model, set(self.sites))
        self.provider = provider
        self.threads = threads
        self.suffix = suffix
        self.cache_mb = cache_mb
        runtime = optimize_offline(self.source, provider, threads)
        self.folded: frozenset[str] = frozenset()
        if folded == "bake" and bodies:  # a body may read any of them: none held
            self.copies, self.folded = {}, frozenset(self.sites)
        elif folded == "bake":  # the caller serves the weights onnxruntime folds
            self.copies, self.folded = locate_held(self.source, runtime,
                                                   list(self.sites.values()), provider,
                                                   threads)
            for name in self.folded:
                del self.sites[name]
        else:
            self.copies = locate(self.source, runtime, list(self.sites.values()), provider,
                                 threads)
        held = {c.tensor for cs in self.copies.values() for c in cs}
        g = runtime.graph
        self.values: dict[str, np.ndarray] = {}
        self._golden_values: dict[str, np.ndarray] = {}  # restores the faulted elements
        keep = []
        listed = {i.name for i in g.input}  # IR 3 lists every initializer as an input
        for t in g.initializer:
            if t.name in held:
                self.values[t.name] = numpy_helper.to_array(t).copy()
                self._golden_values[t.name] = self.values[t.name].copy()
                if t.name not in listed:
                    g.input.append(helper.make_tensor_value_info(t.name, t.data_type,
                                                                 list(t.dims)))
            else:
                keep.append(t)
        del g.initializer[:]
        g.initializer.extend(keep)
        self.model = runtime
        self.options = runtime_options(threads)
        self.session = make_session(runtime, provider, self.options)
        self.output_names = [o.name for o in self.session.get_outputs()]
        fed = set(self.values)
        self._data_inputs = [i.name for i in g.input if i.name not in fed]
        first: dict[str, int] = {}
        for i, n in enumerate(g.node):
            for name in n.input:
                if name in fed:
                    first.setdefault(name, i)
        self._first = first
        self._cuts: dict[int, _Cut | None] = {}
        self.verified: set[int] = set()
        self._golden: dict[str, np.ndarray] | None = None
        self._cache: list[dict[str, np.ndarray]] | None = None
        self._key: tuple[int, int | None] | None = None
        self._data: Mapping[str, np.ndarray] | None = None
        self._deviation: float | None = None

    # ------------------------------------------------------------------ faults

    def apply(self, fs: FaultSet, undo: list[Any]) -> None:
        """Apply the weight faults of ``fs`` to the held arrays in place (every copy),
        appending restore actions to ``undo`` (run them in reverse order).

        Raises:
            EnpheephError: a fault on a site this object does not hold, or a bit beyond the
                element width.
        """
        for name, rows in fs.by_site().items():
            site = self.sites.get(name)
            if site is None:
                raise EnpheephError(f"fault site {name!r} is not a weight this campaign "
                                    "targets (a fault is never dropped)")
            d = BY_NAME[site.dtype]
            shape = tuple(int(n) for n in site.shape)  # type: ignore[arg-type]
            idx = fs.index[rows, :len(shape)]
            masks = fs.bits[rows]
            if d.bits < 64 and (masks >> np.uint64(d.bits)).any():
                fs.transforms(d, rows)  # raises: a bit beyond the element width
            if ((idx >= np.asarray(shape)).any(1) & (idx >= 0).all(1)).any():
                raise EnpheephError(f"a fault on weight {name!r} lies outside its shape "
                                    f"{list(shape)} (a fault is never dropped)")
            flips = bool((fs.model[rows] == BIT_FLIP).all()) and bool((idx >= 0).all())
            if flips:
                lin = (np.ravel_multi_index(tuple(idx.T), shape) if shape
                       else np.zeros(len(rows), np.int64))  # a scalar weight
                m = masks.astype(d.container)
            else:
                lin, a, o, x = fold(fs, rows, shape, d)
            for c in self.copies[name]:
                u = self.values[c.tensor].reshape(-1).view(d.container)
                g = self._golden_values[c.tensor].reshape(-1).view(d.container)
                pos = lin if c.positions is None else c.positions[lin]
                # restored from the golden copy: cheaper than a second xor.at
                undo.append(lambda u=u, g=g, pos=pos: u.__setitem__(pos, g[pos]))
                if flips:
                    np.bitwise_xor.at(u, pos, m)  # repeated elements XOR in turn
                else:
                    u[pos] = ((u[pos] & a) | o) ^ x

    # ------------------------------------------------------------------ runs

    def run(self, data: Mapping[str, np.ndarray], faults: FaultSet,
            batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Outputs for ``data`` with the weight ``faults`` applied (none: the golden run).

        Returns:
            Outputs keyed by name, concatenated along axis 0.

        Raises:
            EnpheephError: see :meth:`apply`; onnxruntime cannot run the data.
        """
        start = min((self._first[c.tensor] for name in faults.hit_sites()
                     for c in self.copies.get(name, ())), default=0)
        # (the cut's golden tensors and its check need the golden weights: before the faults)
        cut = self._cut(start, data, batch_size) if start else None
        undo: list[Any] = []
        try:
            self.apply(faults, undo)
            return self._run(cut, data, batch_size)
        finally:
            for action in reversed(undo):
                action()

    def reference(self, data: Mapping[str, np.ndarray], batch_size: int | None = None
                  ) -> dict[str, np.ndarray]:
        """The golden outputs of the runtime graph for ``data`` (cached per data object)."""
        self._use(data, batch_size)
        if self._golden is None:
            self._golden = self._run(None, data, batch_size)
        return self._golden

    def deviation(self, data: Mapping[str, np.ndarray], batch_size: int | None = None
                  ) -> float:
        """The largest absolute difference, over every output element, between the golden
        outputs of the runtime graph and those of a default onnxruntime session of the
        unmodified model at ``ORT_ENABLE_ALL`` with pre-packing (0.0: bit-identical up to
        signed zeros; ``nan`` where only one of them is NaN)."""
        ref = self.reference(data, batch_size)
        if self._deviation is None:
            self._deviation = deviation(ref, self.source, data, batch_size, self.provider,
                                        self.threads)
        return self._deviation

    @property
    def cache_bytes(self) -> int:
        """Bytes of golden tensors held for the cuts."""
        return 0 if self._cache is None else int(
            sum(a.nbytes for b in self._cache for a in b.values()))

    def _use(self, data: Mapping[str, np.ndarray], batch_size: int | None) -> None:
        key = (id(data), batch_size)
        if key != self._key:
            self._key, self._data = key, data
            self._golden = None
            self._cache = None
            self._deviation = None
            self.verified.clear()

    def _run(self, cut: _Cut | None, data: Mapping[str, np.ndarray], batch_size: int | None
             ) -> dict[str, np.ndarray]:
        n = sample_count(data)
        step = batch_size or n
        names = self.output_names
        chunks: list[list[np.ndarray]] = [[] for _ in names]
        if cut is None:
            sess, weights = self.session, list(self.values)
        else:
            sess, weights = cut.session, list(cut.weights)
        wfeeds = {k: self.values[k] for k in weights}
        for b, s in enumerate(range(0, n, step)):
            if cut is None:
                feeds: dict[str, Any] = {k: v for k, v in batch_of(data, s, step).items()
                                         if k in self._data_inputs}
            else:
                assert self._cache is not None
                feeds = {k: self._cache[b][k] for k in cut.inputs}
                feeds.update({k: v for k, v in batch_of(data, s, step).items()
                              if k in cut.data})
            feeds.update(wfeeds)
            for i, out in enumerate(run_session(sess, names, feeds)):
                chunks[i].append(out)
        sizes = [min(step, n - s) for s in range(0, n, step)]
        return {nm: join_batches(nm, c, sizes) for nm, c in zip(names, chunks, strict=True)}

    def _cut(self, start: int, data: Mapping[str, np.ndarray], batch_size: int | None
             ) -> _Cut | None:
        """The verified suffix session from node ``start`` on, or ``None`` (whole runs)."""
        if not self.suffix:
            return None
        self._use(data, batch_size)
        if not self._fill(data, batch_size):
            return None
        if start not in self._cuts:
            self._cuts[start] = self._build(start)
        cut = self._cuts[start]
        if cut is None:
            return None
        if start not in self.verified:
            try:
                ok = all(a.tobytes() == b.tobytes() for a, b in zip(
                    self._run(cut, data, batch_size).values(),
                    self._run(None, data, batch_size).values(), strict=True))
            except EnpheephError as e:
                log.info("suffix of the runtime graph from node %d abandoned: %s", start, e)
                ok = False
            if not ok:
                log.info("suffix of the runtime graph from node %d abandoned: its outputs "
                         "differ from the whole graph's", start)
                self._cuts[start] = None
                return None
            self.verified.add(start)
        return cut

    def _build(self, start: int) -> _Cut | None:
        g = self.model.graph
        crossing = crossing_tensors(self.model, start)
        if crossing is None:
            return None
        fed = set(self.values)
        golden = [n for n in crossing if n not in fed and n not in self._data_inputs]
        data = tuple(n for n in crossing if n in self._data_inputs)
        nodes = list(g.node)[start:]
        used = {name for n in nodes for name in n.input}
        weights = tuple(n for n in self.values if n in used)
        elem = self._dtypes()
        inputs = [helper.make_tensor_value_info(n, elem[n], None) for n in golden]
        inputs += [i for i in g.input if i.name in weights or i.name in data]
        graph = helper.make_graph(nodes, f"{g.name}_from_{start}", inputs, list(g.output),
                                  [t for t in g.initializer if t.name in used])
        m = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        m.ir_version = self.model.ir_version
        m.functions.extend(self.model.functions)
        try:
            sess = make_session(m, self.provider, self.options)
        except EnpheephError as e:
            log.info("no suffix of the runtime graph from node %d: %s", start, e)
            return None
        return _Cut(sess, tuple(golden), weights, data)

    def _dtypes(self) -> dict[str, int]:
        """Element types of the tensors crossing the cuts (from the golden cache)."""
        assert self._cache is not None
        return {k: helper.np_dtype_to_tensor_dtype(v.dtype) for k, v in self._cache[0].items()}

    def _fill(self, data: Mapping[str, np.ndarray], batch_size: int | None) -> bool:
        """Compute the golden tensors crossing every cut, per batch (False: they do not fit
        ``cache_mb``; trials then run whole)."""
        if self._cache is not None:
            return True
        fed = set(self.values)
        names: dict[str, None] = {}
        for start in sorted(set(self._first.values()) - {0}):
            for name in crossing_tensors(self.model, start) or ():
                if name not in fed and name not in self._data_inputs:
                    names.setdefault(name, None)
        n_batches = len(range(0, sample_count(data), batch_size or sample_count(data)))
        if not names:  # no usable cut needs a tensor (e.g. an output produced before it)
            self._cache = [{} for _ in range(n_batches)]
            return True
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        have = {o.name for o in m.graph.output}
        m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
        sess = make_session(m, self.provider, self.options)
        n = sample_count(data)
        step = batch_size or n
        batches, total = [], 0
        wanted = list(names)
        for s in range(0, n, step):
            feeds: dict[str, Any] = {k: v for k, v in batch_of(data, s, step).items()
                                     if k in self._data_inputs}
            feeds.update(self.values)
            outs = dict(zip(wanted, run_session(sess, wanted, feeds), strict=True))
            total += sum(a.nbytes for a in outs.values())
            if total > self.cache_mb * 2**20:
                log.info("suffix re-execution of the runtime graph off: the golden tensors "
                         "would exceed %g MB", self.cache_mb)
                self.suffix = False
                return False
            batches.append(outs)
        self._cache = batches
        return True


__all__ = ["HeldCopy", "HeldWeights", "locate", "weight_constants"]
