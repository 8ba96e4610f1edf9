"""Columnar fault sets: many faults as numpy arrays, from the sampler to the engine and store.

A :class:`FaultSet` holds K faults as parallel arrays (one row per fault, in application
order) over a table of site names:

==========  =================  ===========================================================
column      dtype / shape      meaning
==========  =================  ===========================================================
``site``    int32 ``[K]``      row of :attr:`FaultSet.sites` (the tensor name)
``index``   int64 ``[K, R]``   one coordinate per dimension, ``-1`` = ``*`` (every
                               position); R = the largest site rank, columns beyond a
                               site's rank are 0
``model``   uint8 ``[K]``      :data:`MODEL_CODES` (0 bit flip, 1 stuck-at-0, 2 stuck-at-1,
                               3 value)
``bits``    uint64 ``[K]``     the bit mask (bit 0 = least significant); 0 for values
``value``   float64 ``[K]``    the replacement value (value model), else 0
==========  =================  ===========================================================

It converts both ways, exactly, to the user-facing :class:`~enpheeph_onnx.faults.Fault`
tuples (:meth:`FaultSet.from_faults`, :meth:`FaultSet.to_faults`), is saved as a binary
``.npz`` plan (:meth:`save_npz`, :meth:`load_npz`; no pickle) and stored per trial in a
compact byte string (:meth:`encode`, :meth:`decode`: each column in the smallest unsigned
type that holds it, a constant column stored once: 4-7 bytes per fault, no compression
pass, about 2 ms per 100,000 faults).

The bit arithmetic is that of :mod:`enpheeph_onnx.bits`, vectorized: every fault is the
affine transform ``u -> ((u & and) | or) ^ xor`` on the stored bits, and :func:`fold`
folds the faults that hit one tensor into one transform per element, in order (ScatterND
leaves duplicate indices undefined: ONNX spec, ScatterND-18).
"""

from __future__ import annotations

import functools
import io
import json
import os
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bits import DType
from .errors import EnpheephError
from .faults import Fault, FaultModel

MODEL_CODES: tuple[FaultModel, ...] = (FaultModel.BIT_FLIP, FaultModel.STUCK_AT_0,
                                       FaultModel.STUCK_AT_1, FaultModel.VALUE)
"""Fault model of each ``model`` code."""
CODE_OF: dict[FaultModel, int] = {m: i for i, m in enumerate(MODEL_CODES)}
BIT_FLIP, STUCK_AT_0, STUCK_AT_1, VALUE = range(4)

_BIT_VALUES = 1 << np.arange(64, dtype=np.uint64)


def bits_mask(positions: np.ndarray) -> np.ndarray:
    """``uint64`` masks ``1 << positions`` (positions int, 0-63)."""
    return _BIT_VALUES[np.asarray(positions, dtype=np.int64)]


@dataclass(frozen=True, eq=False)
class FaultSet:
    """K faults as columns (see the module docstring). Build with :meth:`from_faults`,
    :meth:`empty` or the samplers; arrays are not copied, do not modify them."""

    sites: tuple[str, ...]
    site: np.ndarray
    index: np.ndarray
    model: np.ndarray
    bits: np.ndarray
    value: np.ndarray

    def __post_init__(self) -> None:
        k = len(self.site)
        if self.index.ndim != 2 or len(self.index) != k or not (
                len(self.model) == len(self.bits) == len(self.value) == k):
            raise ValueError("FaultSet columns must have one row per fault")

    # -- construction -----------------------------------------------------------------

    @classmethod
    def empty(cls, sites: Sequence[str] = (), rank: int = 1) -> FaultSet:
        return cls(tuple(sites), np.zeros(0, np.int32), np.zeros((0, rank), np.int64),
                   np.zeros(0, np.uint8), np.zeros(0, np.uint64), np.zeros(0, np.float64))

    @classmethod
    def from_faults(cls, faults: Iterable[Fault], sites: Sequence[str] | None = None
                    ) -> FaultSet:
        """The columns of ``faults`` (order kept). ``sites``: the site table to use (every
        fault's site must be in it); default: the sites in order of first appearance.

        Raises:
            EnpheephError: a fault's site is not in ``sites``, or a bit is beyond 63.
        """
        faults = list(faults)
        table = list(dict.fromkeys(f.site for f in faults)) if sites is None else list(sites)
        pos = {name: i for i, name in enumerate(table)}
        missing = [f.site for f in faults if f.site not in pos]
        if missing:
            raise EnpheephError(f"unknown fault site {missing[0]!r}")
        rank = max([len(f.index) for f in faults] + [1])
        k = len(faults)
        index = np.zeros((k, rank), np.int64)
        for r, f in enumerate(faults):
            if f.index:
                try:
                    index[r, :len(f.index)] = [-1 if i is None else i for i in f.index]
                except OverflowError:
                    raise EnpheephError(f"fault index {list(f.index)} on {f.site!r} is beyond "
                                        "any tensor (coordinates are 64-bit)") from None
        if any(b > 63 for f in faults for b in f.bits):
            raise EnpheephError("a fault bit beyond 63 does not exist in any element type")
        masks = np.array([sum(1 << b for b in f.bits) for f in faults], dtype=np.uint64)
        return cls(tuple(table), np.array([pos[f.site] for f in faults], np.int32), index,
                   np.array([CODE_OF[f.model] for f in faults], np.uint8), masks,
                   np.array([0.0 if f.value is None else f.value for f in faults], np.float64))

    @classmethod
    def concat(cls, parts: Sequence[FaultSet]) -> FaultSet:
        """The faults of ``parts`` one after the other (site tables merged)."""
        if not parts:
            return cls.empty()
        table = list(dict.fromkeys(s for p in parts for s in p.sites))
        pos = {name: i for i, name in enumerate(table)}
        rank = max(p.index.shape[1] for p in parts)
        index = np.zeros((sum(len(p) for p in parts), rank), np.int64)
        row = 0
        for p in parts:
            index[row:row + len(p), :p.index.shape[1]] = p.index
            row += len(p)
        remap = [np.array([pos[s] for s in p.sites], np.int32) for p in parts]
        return cls(tuple(table),
                   np.concatenate([m[p.site] if len(p) else np.zeros(0, np.int32)
                                   for m, p in zip(remap, parts, strict=True)]).astype(np.int32),
                   index, np.concatenate([p.model for p in parts]),
                   np.concatenate([p.bits for p in parts]),
                   np.concatenate([p.value for p in parts]))

    # -- views ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.site)

    def take(self, rows: np.ndarray) -> FaultSet:
        """The faults at ``rows`` (int indices or a bool mask), same site table."""
        return FaultSet(self.sites, self.site[rows], self.index[rows], self.model[rows],
                        self.bits[rows], self.value[rows])

    def site_names(self) -> list[str]:
        """The site name of every fault (a Python list: for small sets and messages)."""
        return [self.sites[i] for i in self.site.tolist()]

    @functools.cached_property
    def _counts(self) -> np.ndarray:
        """Faults per site-table entry (computed once: campaigns ask on every trial)."""
        return np.bincount(self.site, minlength=len(self.sites)) if len(self) else np.zeros(
            len(self.sites), np.int64)

    def hit_sites(self) -> set[str]:
        return {self.sites[i] for i in np.flatnonzero(self._counts).tolist()}

    def by_site(self) -> dict[str, np.ndarray]:
        """Row numbers of each hit site, in order."""
        if not len(self):
            return {}
        ids = np.flatnonzero(self._counts)
        if len(ids) == 1:
            return {self.sites[int(ids[0])]: np.arange(len(self))}
        # (a stable sort of 16-bit keys is a radix sort: ~4x faster than of int32)
        key = self.site.astype(np.int16) if len(self.sites) < 2**15 else self.site
        order = np.argsort(key, kind="stable")
        ends = np.cumsum(self._counts[ids]).tolist()
        starts = [0, *ends[:-1]]
        return {self.sites[i]: order[s:e] for i, s, e in zip(ids.tolist(), starts, ends,
                                                             strict=True)}

    def same_bits(self) -> int | None:
        """The bit position shared by every fault (each with exactly one bit), else
        ``None``: a cheap :meth:`single_bits` for the question "one bit or many?"."""
        if not len(self) or not (self.bits == self.bits[0]).all():
            return None
        b = int(self.bits[0])
        return b.bit_length() - 1 if b and not b & (b - 1) else None

    def single_bits(self) -> np.ndarray:
        """The bit position of every fault (int64), -1 where it has no or several bits."""
        b = self.bits
        single = (b != 0) & ((b & (b - np.uint64(1))) == 0)
        out = np.full(len(b), -1, np.int64)
        if single.any():
            out[single] = np.round(np.log2(b[single].astype(np.float64))).astype(np.int64)
        return out

    def to_faults(self, ranks: dict[str, int] | None = None) -> tuple[Fault, ...]:
        """The faults as :class:`Fault` objects, exactly. ``ranks``: each site's rank (a
        site not in it, or no ``ranks``: the width of :attr:`index`); the index columns
        beyond a site's rank are dropped."""
        out = []
        width = self.index.shape[1]
        idx_rows = self.index.tolist()
        bit_rows = self.bits.tolist()
        for r, (s, m) in enumerate(zip(self.site.tolist(), self.model.tolist(), strict=True)):
            name = self.sites[s]
            rank = ranks.get(name, width) if ranks is not None else width
            index = tuple(None if i < 0 else i for i in idx_rows[r][:rank])
            model = MODEL_CODES[m]
            if model is FaultModel.VALUE:
                out.append(Fault.trusted(name, index, model, (), float(self.value[r])))
            else:
                mask = bit_rows[r]
                out.append(Fault.trusted(name, index, model,
                                         tuple(b for b in range(64) if mask >> b & 1)))
        return tuple(out)

    def equals(self, other: FaultSet) -> bool:
        """Same faults in the same order (site names compared, not table positions)."""
        if len(self) != len(other):
            return False
        if not len(self):
            return True
        w = max(self.index.shape[1], other.index.shape[1])

        def padded(fs: FaultSet) -> np.ndarray:
            out = np.zeros((len(fs), w), np.int64)
            out[:, :fs.index.shape[1]] = fs.index
            return out

        names_a = np.array(self.sites, dtype=object)[self.site]
        names_b = np.array(other.sites, dtype=object)[other.site]
        return bool((names_a == names_b).all() and (padded(self) == padded(other)).all()
                    and (self.model == other.model).all() and (self.bits == other.bits).all()
                    and (self.value.view(np.uint64) == other.value.view(np.uint64)).all())

    # -- bit arithmetic -----------------------------------------------------------------

    def transforms(self, dtype: DType, rows: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(and, or, xor)`` masks (``dtype.container`` arrays) of the faults at ``rows``.

        Integer values must be integral and in range (the samplers round and saturate).

        Raises:
            EnpheephError: a bit beyond the element width, or a value that does not fit.
        """
        rows = np.arange(len(self)) if rows is None else rows
        model, mask = self.model[rows], self.bits[rows]
        c, width = dtype.container, dtype.bits
        if width < 64 and (mask >> np.uint64(width)).any():
            bad = int(np.max(self.single_bits()[rows]))
            raise EnpheephError(
                f"fault on {self.sites[int(self.site[rows][0])]!r}: bit "
                f"{bad if bad >= 0 else '>= ' + str(width)} is beyond the {width}-bit "
                f"{dtype.name} element (bits 0-{width - 1})")
        m = mask.astype(c)
        ones = c.type(dtype.all_ones)
        k = len(rows)
        a = np.full(k, ones, c)
        o = np.zeros(k, c)
        x = np.zeros(k, c)
        sel = model == BIT_FLIP
        x[sel] = m[sel]
        sel = model == STUCK_AT_0
        a[sel] = ~m[sel]
        sel = model == STUCK_AT_1
        o[sel] = m[sel]
        sel = model == VALUE
        if sel.any():
            a[sel] = 0
            o[sel] = value_bits_array(self.value[rows][sel], dtype)
        return a, o, x

    # -- files ------------------------------------------------------------------------

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The columns (and the site table as a unicode array) keyed by ``prefix + name``."""
        return {f"{prefix}sites": np.array(self.sites, dtype=np.str_).reshape(-1),
                f"{prefix}site": self.site, f"{prefix}index": self.index,
                f"{prefix}model": self.model, f"{prefix}bits": self.bits,
                f"{prefix}value": self.value}

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str = "") -> FaultSet:
        """Inverse of :meth:`arrays`.

        Raises:
            EnpheephError: a column is missing or has the wrong shape or dtype.
        """
        try:
            cols = {k: np.asarray(arrays[prefix + k]) for k in
                    ("sites", "site", "index", "model", "bits", "value")}
            fs = cls(tuple(str(s) for s in cols["sites"].tolist()),
                     cols["site"].astype(np.int32, casting="safe"),
                     cols["index"].astype(np.int64, casting="safe"),
                     cols["model"].astype(np.uint8, casting="safe"),
                     cols["bits"].astype(np.uint64, casting="safe"),
                     cols["value"].astype(np.float64, casting="safe"))
        except (KeyError, TypeError, ValueError) as e:
            raise EnpheephError(f"malformed fault columns ({e})") from None
        if len(fs) and (fs.site.min() < 0 or fs.site.max() >= len(fs.sites)
                        or fs.model.max() > VALUE or fs.index.min() < -1
                        or ((fs.model != VALUE) & (fs.bits == 0)).any()):
            raise EnpheephError("malformed fault columns (a site, model or index is out of "
                                "range, or a bit fault without bits)")
        return fs

    def save_npz(self, path: str | os.PathLike[str]) -> None:
        """Write a binary fault plan (``{"format": ...}`` header + columns, no pickle)."""
        from .model import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, format=np.array(PLAN_FORMAT), **self.arrays())

    @classmethod
    def load_npz(cls, path: str | os.PathLike[str]) -> FaultSet:
        """Read a binary fault plan written by :meth:`save_npz`.

        Raises:
            EnpheephError: unreadable or not a fault plan.
        """
        z = _open_npz(path)
        fmt = str(z.get("format", ""))
        if fmt != PLAN_FORMAT:
            if "header" in z and "offsets" in z:
                raise EnpheephError(f"{path} is a campaign plan: replay it with 'campaign "
                                    "--plan'; 'inject --plan' takes a fault set "
                                    "(FaultSet.save_npz)")
            if fmt.startswith("enpheeph-onnx fault plan"):
                raise EnpheephError(f"{path} is a fault plan of another version ({fmt!r}); "
                                    f"this version reads {PLAN_FORMAT!r}")
            raise EnpheephError(f"{path} is an .npz file but not a fault plan (arrays "
                                f"{sorted(z)[:4]}); write one with FaultSet.save_npz()")
        try:
            return cls.from_arrays(z)
        except EnpheephError as e:
            raise EnpheephError(f"plan {path}: {e}") from None

    # -- store encoding -------------------------------------------------------------------

    def encode(self, site_ids: dict[str, int] | None = None) -> tuple[str, bytes]:
        """Compact bytes for the results store: ``(layout, data)``. ``site_ids`` maps
        names to the store's site numbers (default: this set's table)."""
        ids: np.ndarray = self.site
        if site_ids is not None:
            ids = np.array([site_ids[s] for s in self.sites] + [0], np.int64)[self.site]
        cols: list[tuple[str, np.ndarray]] = [("site", _small(np.asarray(ids)))]
        for j in range(self.index.shape[1]):
            cols.append((f"i{j}", _small(self.index[:, j] + 1)))
        cols.append(("model", self.model))
        single = self.single_bits()
        if (single >= 0).all() or not len(self):
            cols.append(("bit", single.astype(np.uint8)))
        else:
            cols.append(("bits", self.bits))
        if (self.model == VALUE).any():
            cols.append(("value", self.value))
        spec, parts = [], []
        for name, a in cols:
            if len(a) and (a == a[0]).all():  # a constant column is stored once, in the layout
                spec.append([name, a.dtype.str, a[0].item()])
            else:
                spec.append([name, a.dtype.str, None])
                parts.append(a.tobytes())
        layout = json.dumps({"n": len(self), "cols": spec}, separators=(",", ":"))
        return layout, b"".join(parts)

    @classmethod
    def decode(cls, layout: str, data: bytes, sites: Sequence[str]) -> FaultSet:
        """Inverse of :meth:`encode`, with ``sites`` the store's site table."""
        spec = json.loads(layout)
        n = int(spec["n"])
        cols: dict[str, np.ndarray] = {}
        off = 0
        for name, dt, const in spec["cols"]:
            d = np.dtype(dt)
            if const is not None:
                cols[name] = np.full(n, const, dtype=d)
                continue
            cols[name] = np.frombuffer(data, d, n, off)
            off += n * d.itemsize
        rank = sum(1 for c in cols if c.startswith("i") and c[1:].isdigit())
        index = np.zeros((n, max(rank, 1)), np.int64)
        for j in range(rank):
            index[:, j] = cols[f"i{j}"].astype(np.int64) - 1
        bits = (bits_mask(cols["bit"]) if "bit" in cols else cols["bits"].astype(np.uint64)
                ) if n else np.zeros(0, np.uint64)
        return cls(tuple(sites), cols["site"].astype(np.int32), index,
                   cols["model"].astype(np.uint8), bits,
                   cols["value"].astype(np.float64) if "value" in cols else np.zeros(n))


PLAN_FORMAT = "enpheeph-onnx fault plan v1"


def _open_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise EnpheephError(f"cannot read plan {p}: {e.strerror}") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise EnpheephError(f"{p} is not a valid .npz file ({e})") from None


def _small(a: np.ndarray) -> np.ndarray:
    """``a`` (ints >= 0) in the smallest unsigned dtype that holds it."""
    hi = int(a.max()) if len(a) else 0
    for dt in (np.uint8, np.uint16, np.uint32):
        if hi <= np.iinfo(dt).max:
            return a.astype(dt)
    return a.astype(np.uint64)


def value_bits_array(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Stored bits (``dtype.container``) of ``values`` in ``dtype``; the vectorized
    :func:`enpheeph_onnx.bits.value_bits` (floats rounded to nearest, integers exact).

    Raises:
        EnpheephError: an integer value that is not integral or out of range.
    """
    v = np.asarray(values, np.float64)
    if dtype.is_float:
        with np.errstate(over="ignore"):
            return v.astype(dtype.numpy).view(dtype.container)
    info = np.iinfo(dtype.numpy)
    bad = ~np.isfinite(v) | (v != np.round(v)) | (v < info.min) | (v > info.max)
    if bad.any():
        raise EnpheephError(f"value {v[bad][0]} does not fit {dtype.name} (integers "
                            f"{info.min}..{info.max})")
    return v.astype(dtype.numpy).view(dtype.container)


def compose(first: tuple[np.ndarray, np.ndarray, np.ndarray],
            then: tuple[np.ndarray, np.ndarray, np.ndarray], ones: Any
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Element-wise composition of affine bit transforms (``first``, then ``then``); see
    :meth:`enpheeph_onnx.bits.BitTransform.then` for the derivation."""
    a1, o1, x1 = first
    a2, o2, x2 = then
    z = ((((o1 ^ x1) & a2) | o2) ^ x2)
    w = (((((ones & a1) | o1) ^ x1) & a2) | o2) ^ x2
    return z ^ w, z & w, z & ~w


def fold(fs: FaultSet, rows: np.ndarray, shape: Sequence[int], dtype: DType
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold the faults ``rows`` of ``fs`` (all on one tensor of concrete ``shape``) into
    unique linear element indices and one transform per element.

    ``*`` coordinates are expanded over ``shape``; a fault with a coordinate beyond
    ``shape`` is dropped (that element does not exist in this batch). Faults on the same
    element compose in row order.

    Returns:
        ``(linear int64[M], and[M], or[M], xor[M])`` in ``dtype.container``; applying
        ``u[i] = ((u[i] & and) | or) ^ xor`` equals applying the faults in order.
    """
    shape = tuple(int(n) for n in shape)
    rank = len(shape)
    a, o, x = fs.transforms(dtype, rows)
    c = dtype.container
    if not len(rows):
        return np.zeros(0, np.int64), a, o, x
    idx = fs.index[rows, :rank] if rank else np.zeros((len(rows), 0), np.int64)
    dims = np.asarray(shape, np.int64)
    inside = ((idx < dims) | (idx < 0)).all(1) if rank else np.ones(len(rows), bool)
    stars = idx < 0
    if rank and not stars.any():
        keep = np.flatnonzero(inside)
        lin = np.ravel_multi_index(tuple(idx[keep].T), shape).astype(np.int64)
        owner = keep
    elif not rank:
        lin = np.zeros(len(rows), np.int64)
        owner = np.arange(len(rows))
    else:
        strides = np.cumprod((*shape[1:], 1)[::-1])[::-1].astype(np.int64)
        pattern_code = stars.astype(np.int64) @ (1 << np.arange(rank, dtype=np.int64))
        parts, owners = [], []
        for code in np.unique(pattern_code[inside]).tolist():
            sel = np.flatnonzero(inside & (pattern_code == code))
            base = (np.where(stars[sel], 0, idx[sel]) * strides).sum(1)
            offsets = np.zeros(1, np.int64)
            for axis in range(rank):
                if code >> axis & 1:
                    offsets = (offsets[:, None] + np.arange(shape[axis], dtype=np.int64)
                               * strides[axis]).ravel()
            parts.append((base[:, None] + offsets[None, :]).ravel())
            owners.append(np.repeat(sel, len(offsets)))
        lin = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    order = np.lexsort((owner, lin))
    lin, owner = lin[order], owner[order]
    first = np.ones(len(lin), bool)
    first[1:] = lin[1:] != lin[:-1]
    if first.all():
        return lin, a[owner], o[owner], x[owner]
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(lin)))
    acc = (a[owner[starts]], o[owner[starts]], x[owner[starts]])
    ones = c.type(dtype.all_ones)
    for j in range(1, int(sizes.max())):
        g = np.flatnonzero(sizes > j)
        nxt = owner[starts[g] + j]
        new = compose((acc[0][g], acc[1][g], acc[2][g]), (a[nxt], o[nxt], x[nxt]), ones)
        for col, val in zip(acc, new, strict=True):
            col[g] = val
    return lin[starts], acc[0], acc[1], acc[2]


__all__ = ["CODE_OF", "MODEL_CODES", "PLAN_FORMAT", "FaultSet", "bits_mask", "compose", "fold",
           "value_bits_array"]
