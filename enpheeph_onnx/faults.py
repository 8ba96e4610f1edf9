"""Faults, fault models and fault plans.

A :class:`Fault` says *where* (a fault site and an index into it), *what* (a
:class:`FaultModel`: bit flip, stuck-at-0, stuck-at-1, or value replacement) and *which
bits* (bit 0 = least significant bit of the stored element). A :class:`FaultPlan` is an
ordered list of faults; faults on the same element apply in plan order.

Textual form (CLI ``--fault``): ``SITE[INDEX]:MODEL[:BITS]``, e.g.
``conv1.weight[0,0,1,1]:bitflip:30`` or ``/relu1/Relu_output_0[*,3,2,2]:stuck-at-1:23-30``
or ``fc2.bias[3]:value=0``. JSON form (``--plan``)::

    {"faults": [{"site": "conv1.weight", "index": [0, 0, 1, 1], "model": "bitflip",
                 "bits": [30]}]}
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bits import BitTransform, DType, Index, apply_transform, bit_mask, value_bits
from .errors import EnpheephError


class FaultModel(enum.Enum):
    """What a fault does to the selected bits of the stored element."""

    BIT_FLIP = "bitflip"
    STUCK_AT_0 = "stuck-at-0"
    STUCK_AT_1 = "stuck-at-1"
    VALUE = "value"

    @classmethod
    def parse(cls, text: str) -> FaultModel:
        """Parse ``bitflip`` (or ``bit-flip``), ``stuck-at-0``, ``stuck-at-1`` (or
        ``stuck_at_0``, ``stuck_at_1``) or ``value``, in any case.

        Raises:
            EnpheephError: any other text.
        """
        aliases = {"bit-flip": "bitflip", "bitflip": "bitflip",
                   "stuck-at-0": "stuck-at-0", "stuck_at_0": "stuck-at-0",
                   "stuck-at-1": "stuck-at-1", "stuck_at_1": "stuck-at-1", "value": "value"}
        key = aliases.get(text.strip().lower())
        if key is None:
            raise EnpheephError(
                f"unknown fault model {text!r}: use bitflip, stuck-at-0, stuck-at-1 or value"
            )
        return cls(key)


@dataclass(frozen=True)
class Fault:
    """One fault at one fault site.

    Attributes:
        site: the tensor name, exactly as ``enpheeph-onnx sites`` prints it.
        index: one coordinate per tensor dimension; ``None`` (``*`` in text) means every
            position along that dimension, e.g. every image of a batch.
        model: the fault model.
        bits: bit positions of the stored element (0 = least significant); empty for
            :attr:`FaultModel.VALUE`.
        value: the replacement value for :attr:`FaultModel.VALUE`, else ``None``.
    """

    site: str
    index: Index
    model: FaultModel
    bits: tuple[int, ...] = ()
    value: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", tuple(None if i is None else int(i)
                                                for i in self.index))
        object.__setattr__(self, "bits", tuple(sorted({int(b) for b in self.bits})))
        self._check()

    def _check(self) -> None:
        """Raises EnpheephError for an inconsistent fault (normalized fields assumed)."""
        if self.model is FaultModel.VALUE:
            if self.value is None:
                raise EnpheephError(f"fault on {self.site!r}: value model needs value=<number>")
            if self.bits:
                raise EnpheephError(f"fault on {self.site!r}: value model takes no bits")
        else:
            if not self.bits:
                raise EnpheephError(
                    f"fault on {self.site!r}: {self.model.value} needs bits, e.g. ':30' or ':0-7'"
                )
            if self.value is not None:
                raise EnpheephError(f"fault on {self.site!r}: only the value model takes a value")
        if any(b < 0 for b in self.bits):
            raise EnpheephError(f"fault on {self.site!r}: negative bit position")
        if any(i is not None and i < 0 for i in self.index):
            raise EnpheephError(
                f"fault on {self.site!r}: negative index {self.index_text()}; "
                "coordinates count from 0"
            )

    @classmethod
    def trusted(cls, site: str, index: Index, model: FaultModel, bits: tuple[int, ...] = (),
                value: float | None = None) -> Fault:
        """Build a fault from already-validated parts (sorted unique bits, ints >= 0),
        skipping ``__post_init__``: the samplers create millions of faults."""
        f = object.__new__(cls)
        object.__setattr__(f, "site", site)
        object.__setattr__(f, "index", index)
        object.__setattr__(f, "model", model)
        object.__setattr__(f, "bits", bits)
        object.__setattr__(f, "value", value)
        return f

    def index_text(self) -> str:
        return "[" + ",".join("*" if i is None else str(i) for i in self.index) + "]"

    def __str__(self) -> str:
        if self.model is FaultModel.VALUE:
            return f"{self.site}{self.index_text()}:value={self.value!r}"
        return f"{self.site}{self.index_text()}:{self.model.value}:{format_bits(self.bits)}"

    def transform(self, dtype: DType) -> BitTransform:
        """The bit transform this fault applies to one ``dtype`` element.

        Raises:
            EnpheephError: a bit is beyond the element width, or the value does not fit.
        """
        width = dtype.bits
        if self.bits and max(self.bits) >= width:
            raise EnpheephError(
                f"fault on {self.site!r}: bit {max(self.bits)} is beyond the {width}-bit "
                f"{dtype.name} element (bits 0-{width - 1})"
            )
        ones = dtype.all_ones
        m = bit_mask(self.bits)
        if self.model is FaultModel.BIT_FLIP:
            return BitTransform(ones, 0, m, width)
        if self.model is FaultModel.STUCK_AT_0:
            return BitTransform(ones & ~m, 0, 0, width)
        if self.model is FaultModel.STUCK_AT_1:
            return BitTransform(ones, m, 0, width)
        assert self.value is not None
        return BitTransform(0, value_bits(self.value, dtype), 0, width)

    def to_json(self) -> dict[str, Any]:
        """The plan-file object for this fault."""
        out: dict[str, Any] = {
            "site": self.site,
            "index": ["*" if i is None else i for i in self.index],
            "model": self.model.value,
            "bits": list(self.bits),
        }
        if self.model is FaultModel.VALUE:
            out["value"] = _json_number(self.value)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> Fault:
        """Parse one plan-file object.

        Raises:
            EnpheephError: a key is missing, unknown or of the wrong type.
        """
        if type(obj) is not dict:
            raise EnpheephError(f"each fault must be an object, got {obj!r}")
        if not obj.keys() <= _FAULT_KEYS:
            unknown = sorted(set(obj) - _FAULT_KEYS)
            raise EnpheephError(f"unknown fault key(s) {unknown}; "
                                "allowed: site, index, model, bits, value")
        try:
            site, index, model_text = obj["site"], obj["index"], obj["model"]
        except KeyError as e:
            raise EnpheephError(f"fault {obj!r} lacks the key {e.args[0]!r}") from None
        bits = obj.get("bits", [])
        if type(site) is not str or not site:
            raise EnpheephError(f"fault site must be a non-empty string, got {site!r}")
        if type(index) is not list or not all(type(i) is int or i == "*" for i in index):
            raise EnpheephError(f"fault index must be a list of integers or '*', got {index!r}")
        if type(bits) is not list or not all(type(b) is int for b in bits):
            raise EnpheephError(f"fault bits must be a list of integers, got {bits!r}")
        if type(model_text) is not str:
            raise EnpheephError(f"fault model must be a string, got {model_text!r}")
        model = _MODEL_BY_TEXT.get(model_text) or FaultModel.parse(model_text)
        value = obj.get("value")
        if value is not None:
            value = _parse_number(value)
        f = cls.trusted(site, tuple(None if i == "*" else i for i in index), model,
                        tuple(sorted(set(bits))) if len(bits) > 1 else tuple(bits), value)
        f._check()  # the types are checked above: skip __post_init__'s normalization
        return f


_FAULT_KEYS = frozenset({"site", "index", "model", "bits", "value"})
_MODEL_BY_TEXT = {m.value: m for m in FaultModel}


def _json_number(v: float | None) -> float | str | None:
    if v is None or np.isfinite(v):
        return v
    return "nan" if np.isnan(v) else ("inf" if v > 0 else "-inf")


def _parse_number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise EnpheephError(f"fault value must be a number, got {v!r}")
    try:
        return float(v)
    except ValueError:
        raise EnpheephError(f"fault value must be a number, got {v!r}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(ValueError):
    pass


def parse_json(text: str | bytes, where: str) -> Any:
    """``text`` as JSON, strictly: a key given twice in one object is an error (``json``
    keeps the last one silently), and so is nesting too deep for the parser.

    Raises:
        EnpheephError: invalid JSON, a duplicate key, too deep, or not UTF-8.
    """
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise EnpheephError(f"{where}: key {e.args[0]!r} appears twice in one object; keep "
                            "one") from None
    except RecursionError:
        raise EnpheephError(f"{where} is nested too deeply to be a plan") from None
    except UnicodeDecodeError:
        raise EnpheephError(f"{where} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise EnpheephError(f"{where} is not valid JSON: {e.msg} at line {e.lineno}"
                            ) from None


def format_bits(bits: Sequence[int]) -> str:
    """``(0, 1, 2, 7)`` -> ``"0-2,7"``."""
    parts: list[str] = []
    run: list[int] = []
    for b in sorted(bits):
        if run and b == run[-1] + 1:
            run.append(b)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [b]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def parse_bits(text: str) -> tuple[int, ...]:
    """Parse a bit list such as ``"30"``, ``"23,24"``, ``"0-7,31"``.

    Raises:
        EnpheephError: malformed text, a reversed range, or a bit beyond 63.
    """
    return parse_ranges(text, 63)


def parse_ranges(text: str, highest: int | None = None) -> tuple[int, ...]:
    """Parse a list of numbers and ranges (``"3"``, ``"1,4"``, ``"0-7,31"``), each at most
    ``highest`` (checked before anything is expanded).

    Raises:
        EnpheephError: malformed text, a reversed range, a number beyond ``highest``.
    """
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise EnpheephError(f"malformed bit list {text!r}: use e.g. '30', '23,24' or '0-7'")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise EnpheephError(f"bit range {part!r} is reversed: write it low-high")
        if highest == 63 and hi > 63:
            raise EnpheephError(f"bit {hi} does not exist: elements have at most 64 bits "
                                "(0-63)")
        if highest is not None and hi > highest:
            raise EnpheephError(f"{hi} in {text!r} is beyond the largest allowed, {highest}")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


_EXPR = re.compile(r"^(?P<site>.+)\[(?P<index>[^\[\]]*)\]:(?P<rest>[^\[\]]+)$", re.DOTALL)


def parse_fault(text: str) -> Fault:
    """Parse ``SITE[INDEX]:MODEL[:BITS]``.

    INDEX is one comma-separated coordinate per dimension (``*`` = all positions); MODEL is
    ``bitflip``, ``stuck-at-0``, ``stuck-at-1`` or ``value=<number>``; BITS is a list and/or
    ranges (``30``, ``23,24``, ``0-7``).

    Raises:
        EnpheephError: the text is malformed.
    """
    hint = ("write SITE[INDEX]:MODEL[:BITS], e.g. 'conv1.weight[0,0,1,1]:bitflip:30' "
            "or 'fc.bias[3]:value=0'")
    m = _EXPR.match(text.strip())
    if not m:
        raise EnpheephError(f"malformed fault {text!r}: {hint}")
    site = m.group("site")
    index_text = m.group("index").strip()
    index: list[int | None] = []
    if index_text:
        for c in index_text.split(","):
            c = c.strip()
            if c == "*":
                index.append(None)
            elif re.fullmatch(r"\d+", c):
                index.append(int(c))
            else:
                raise EnpheephError(
                    f"malformed index {c!r} in fault {text!r}: coordinates are integers >= 0 "
                    "or '*'"
                )
    rest = m.group("rest").strip()
    if rest.lower().startswith("value="):
        return Fault(site, tuple(index), FaultModel.VALUE, (), _parse_number(rest[6:].strip()))
    model_text, _, bits_text = rest.partition(":")
    try:
        model = FaultModel.parse(model_text)
    except EnpheephError as e:
        raise EnpheephError(f"{e} (in fault {text!r})") from None
    if model is FaultModel.VALUE:
        raise EnpheephError(f"malformed fault {text!r}: the value model is written value=<number>")
    if not bits_text:
        raise EnpheephError(f"fault {text!r} names no bits: {hint}")
    return Fault(site, tuple(index), model, parse_bits(bits_text))


@dataclass(frozen=True)
class FaultPlan:
    """An ordered list of faults (faults on the same element apply in this order)."""

    faults: tuple[Fault, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "faults", tuple(self.faults))

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.faults)

    def __len__(self) -> int:
        return len(self.faults)

    def to_json(self) -> dict[str, Any]:
        return {"faults": [f.to_json() for f in self.faults]}

    def dumps(self) -> str:
        """The plan as compact, deterministic JSON text."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, obj: Any) -> FaultPlan:
        """Parse ``{"faults": [...]}``.

        Raises:
            EnpheephError: malformed plan.
        """
        if not isinstance(obj, dict) or not isinstance(obj.get("faults"), list):
            raise EnpheephError('a fault plan is an object {"faults": [...]}')
        unknown = set(obj) - {"faults", "version", "meta"}
        if unknown:
            raise EnpheephError(f"unknown plan key(s) {sorted(unknown)}; allowed: faults")
        return cls(tuple(Fault.from_json(f) for f in obj["faults"]))

    @classmethod
    def load(cls, path: str | Path) -> FaultPlan:
        """Read a plan file.

        Raises:
            EnpheephError: the file is missing or is not a valid plan.
        """
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise EnpheephError(f"cannot read plan {p}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise EnpheephError(f"plan {p} is neither a JSON fault plan nor a binary (.npz) "
                                "one; write one with FaultPlan.dumps() or FaultSet.save_npz()"
                                ) from None
        obj = parse_json(text, f"plan {p}")
        if isinstance(obj, dict) and obj.get("format") == "enpheeph-onnx campaign plan":
            raise EnpheephError(f"{p} is a campaign plan: replay it with 'campaign --plan'; "
                                "'inject --plan' takes a fault plan {\"faults\": [...]}")
        try:
            return cls.from_json(obj)
        except EnpheephError as e:
            raise EnpheephError(f"plan {p}: {e}") from None


def apply_faults(values: np.ndarray, faults: Iterable[Fault], dtype: DType) -> np.ndarray:
    """Numpy reference: ``values`` (any shape, ``dtype``) with ``faults`` applied in order.

    Returns a new array; ``values`` is not modified.
    """
    out = np.array(values, copy=True)
    for f in faults:
        out = apply_transform(out, f.index, f.transform(dtype))
    return out
