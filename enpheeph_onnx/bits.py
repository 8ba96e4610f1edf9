"""Bit-level fault arithmetic: the numpy reference every rewritten graph must equal.

A fault acts on the **stored** bits of one tensor element: IEEE-754 bits for floats,
two's complement for integers, bit 0 being the least significant. Every fault model is an
*affine bit transform* ``u -> ((u & and_mask) | or_mask) ^ xor_mask`` on the element's
unsigned container (``uint32`` for ``float32``, ``uint16`` for ``float16``/``bfloat16``, ...):

=============  ==============  =============  ==============
fault model    and_mask        or_mask        xor_mask
=============  ==============  =============  ==============
bit flip       all ones        0              bits
stuck-at-0     ~bits           0              0
stuck-at-1     all ones        bits           0
value v        0               bits(v)        0
=============  ==============  =============  ==============

(the XOR / AND-NOT / OR masks of the enpheeph paper, Colucci et al., 2022). Two transforms
compose into a third one (:func:`compose`), which is how several faults on the same
element in one trial are folded before a graph applies them in one ``ScatterND``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
from onnx import TensorProto

from .errors import EnpheephError


@dataclass(frozen=True)
class DType:
    """A tensor element type that faults can hit.

    Attributes:
        name: numpy name (``"float32"``, ``"bfloat16"``, ...).
        onnx: the ``TensorProto.DataType`` value.
        numpy: the numpy dtype of the values (``ml_dtypes.bfloat16`` for bfloat16).
        container: the unsigned integer numpy dtype of the same width (the stored bits).
        container_onnx: its ``TensorProto.DataType`` value.
        is_float: IEEE-754 floating point (graphs then ``BitCast`` to the container).
    """

    name: str
    onnx: int
    numpy: np.dtype
    container: np.dtype
    container_onnx: int
    is_float: bool

    @property
    def bits(self) -> int:
        """Bits per stored element."""
        return self.container.itemsize * 8

    @property
    def all_ones(self) -> int:
        """The container's all-ones value, ``2**bits - 1``."""
        return (1 << self.bits) - 1


def _dt(name: str, onnx_type: int, np_type: object, cont: str, cont_onnx: int, f: bool) -> DType:
    return DType(name, onnx_type, np.dtype(np_type), np.dtype(cont), cont_onnx, f)


_T = TensorProto
SUPPORTED: dict[int, DType] = {
    d.onnx: d
    for d in (
        _dt("float32", _T.FLOAT, np.float32, "uint32", _T.UINT32, True),
        _dt("float16", _T.FLOAT16, np.float16, "uint16", _T.UINT16, True),
        _dt("bfloat16", _T.BFLOAT16, ml_dtypes.bfloat16, "uint16", _T.UINT16, True),
        _dt("float64", _T.DOUBLE, np.float64, "uint64", _T.UINT64, True),
        _dt("int8", _T.INT8, np.int8, "uint8", _T.UINT8, False),
        _dt("uint8", _T.UINT8, np.uint8, "uint8", _T.UINT8, False),
        _dt("int16", _T.INT16, np.int16, "uint16", _T.UINT16, False),
        _dt("uint16", _T.UINT16, np.uint16, "uint16", _T.UINT16, False),
        _dt("int32", _T.INT32, np.int32, "uint32", _T.UINT32, False),
        _dt("uint32", _T.UINT32, np.uint32, "uint32", _T.UINT32, False),
    )
}
"""Element types a fault can hit, keyed by ONNX data type. ``int64`` is left out on
purpose: in ONNX graphs it holds shapes, axes and indices, not data."""

BY_NAME: dict[str, DType] = {d.name: d for d in SUPPORTED.values()}


def dtype_for_onnx(elem_type: int) -> DType | None:
    """The :class:`DType` for an ONNX data type, or ``None`` if faults cannot hit it."""
    return SUPPORTED.get(elem_type)


def dtype_for_numpy(dtype: np.dtype) -> DType:
    """The :class:`DType` of a numpy dtype.

    Raises:
        EnpheephError: the dtype is not one faults can hit.
    """
    d = BY_NAME.get(np.dtype(dtype).name)
    if d is None:
        raise EnpheephError(
            f"unsupported dtype {np.dtype(dtype).name}: faults hit "
            f"{', '.join(BY_NAME)}"
        )
    return d


def bit_mask(bits: Iterable[int]) -> int:
    """The integer whose set bits are ``bits`` (bit 0 = least significant)."""
    m = 0
    for b in bits:
        m |= 1 << int(b)
    return m


@dataclass(frozen=True)
class BitTransform:
    """``u -> ((u & and_mask) | or_mask) ^ xor_mask`` on a ``width``-bit container."""

    and_mask: int
    or_mask: int
    xor_mask: int
    width: int

    @classmethod
    def identity(cls, width: int) -> BitTransform:
        return cls((1 << width) - 1, 0, 0, width)

    def apply(self, u: np.ndarray) -> np.ndarray:
        """Apply to an array of unsigned container values (same dtype returned)."""
        c = u.dtype.type
        return ((u & c(self.and_mask)) | c(self.or_mask)) ^ c(self.xor_mask)

    def then(self, other: BitTransform) -> BitTransform:
        """The transform that applies ``self`` first, then ``other``.

        Per bit, a transform is one of identity, set-0, set-1 or flip, fully described by
        its images ``z`` and ``w`` of the all-zero and the all-one word; the composed masks
        are ``and = z ^ w``, ``or = z & w``, ``xor = z & ~w``.
        """
        ones = (1 << self.width) - 1

        def both(u: int) -> int:
            u = ((u & self.and_mask) | self.or_mask) ^ self.xor_mask
            return ((u & other.and_mask) | other.or_mask) ^ other.xor_mask

        z, w = both(0), both(ones)
        return BitTransform(z ^ w, z & w, z & ~w & ones, self.width)


def compose(transforms: Sequence[BitTransform]) -> BitTransform:
    """Fold transforms applied in order into one.

    Raises:
        ValueError: ``transforms`` is empty.
    """
    if not transforms:
        raise ValueError("compose() needs at least one transform")
    out = transforms[0]
    for t in transforms[1:]:
        out = out.then(t)
    return out


def to_container(values: np.ndarray) -> np.ndarray:
    """View an array's stored bits as the same-width unsigned integer array (no copy)."""
    d = dtype_for_numpy(values.dtype)
    return values.view(d.container)


def from_container(bits: np.ndarray, dtype: DType) -> np.ndarray:
    """View container bits as values of ``dtype`` (no copy)."""
    return bits.view(dtype.numpy)


def value_bits(value: float, dtype: DType) -> int:
    """The stored bits of ``value`` in ``dtype``.

    Floats are rounded to the nearest representable value (``nan``/``inf`` allowed);
    integers must be integral and in range.

    Raises:
        EnpheephError: the value is not representable in an integer dtype.
    """
    if dtype.is_float:
        with np.errstate(over="ignore"):  # beyond the range rounds to +-inf, as IEEE-754 does
            arr = np.array([value], dtype=np.float64).astype(dtype.numpy)
    else:
        info = np.iinfo(dtype.numpy)
        if not float(value).is_integer() or not info.min <= value <= info.max:
            raise EnpheephError(
                f"value {value} does not fit {dtype.name} (integers {info.min}..{info.max})"
            )
        arr = np.array([int(value)], dtype=dtype.numpy)
    return int(arr.view(dtype.container)[0])


Index = tuple[int | None, ...]
"""One coordinate per dimension; ``None`` means every position along that dimension."""


def index_selector(index: Index, shape: Sequence[int]) -> tuple[slice | int, ...] | None:
    """A numpy basic-indexing selector for ``index`` on an array of ``shape``.

    Returns ``None`` when a coordinate lies beyond ``shape`` (the element does not exist in
    this array, e.g. image 5 of a batch of 4: the fault does not occur).

    Raises:
        EnpheephError: the index rank differs from the array rank.
    """
    if len(index) != len(shape):
        raise EnpheephError(
            f"index has {len(index)} coordinates but the tensor has rank {len(shape)}"
        )
    sel: list[slice | int] = []
    for i, n in zip(index, shape, strict=True):
        if i is None:
            sel.append(slice(None))
        elif 0 <= i < n:
            sel.append(i)
        else:
            return None
    return tuple(sel)


def apply_transform(values: np.ndarray, index: Index, transform: BitTransform) -> np.ndarray:
    """Reference fault: a copy of ``values`` with ``transform`` applied at ``index``.

    Args:
        values: any shape, a dtype from :data:`SUPPORTED` (numpy or ml_dtypes).
        index: one coordinate per dimension (``None`` = all positions).
        transform: the bit transform; its width must equal the element width.

    Returns:
        A new array of the same shape and dtype; elements outside ``index`` are untouched.
    """
    out = np.array(values, copy=True)
    u = to_container(out)
    if transform.width != u.dtype.itemsize * 8:
        raise EnpheephError(
            f"a {transform.width}-bit fault cannot hit {values.dtype.name} elements"
        )
    sel = index_selector(index, out.shape)
    if sel is not None:
        u[sel] = transform.apply(u[sel])
    return out
