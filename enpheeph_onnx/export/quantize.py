"""Static int8 quantization of ONNX models with ``onnxruntime.quantization``.

:func:`quantize_int8` turns a float model into an int8 one whose quantized tensors are
ordinary fault sites: int8 weight initializers (and int32 biases) feeding
``DequantizeLinear``, int8 activations produced by ``QuantizeLinear`` (QDQ format), or the
int8 operands of ``QLinearConv``/``QLinearMatMul``/``QGemm`` (QOperator format).
:func:`enpheeph_onnx.discover_sites` reports their ``scale`` and ``zero_point``.

The (de)quantization arithmetic, from the ONNX operator spec (QuantizeLinear-21/23,
DequantizeLinear-21/23, https://onnx.ai/onnx/operators/onnx__QuantizeLinear.html and
https://onnx.ai/onnx/operators/onnx__DequantizeLinear.html)::

    QuantizeLinear:    y = saturate(round(x / y_scale) + y_zero_point)
    DequantizeLinear:  x = (y - y_zero_point) * y_scale

``round`` rounds half to even; ``saturate`` clips to the int8 range [-128, 127]. A scale
and zero point are either one per tensor or one per slice along ``axis`` (per channel).

Needs only onnxruntime (no torch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import EnpheephError
from ..model import (
    TARGET_OPSET,
    ModelSource,
    clamp_ir_version,
    default_opset,
    ensure_opset,
    load_model,
    save_model,
    set_metadata,
)

log = logging.getLogger(__name__)

QUANT_FORMATS = ("qdq", "qoperator")
"""Accepted values of ``quant_format``."""

METADATA_KEY = "enpheeph.quantization"
"""``metadata_props`` key of the JSON quantization record."""

_QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                  "QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
                  "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearAveragePool"}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _calibration_batches(model: onnx.ModelProto, calibration: Mapping[str, np.ndarray],
                         batch_size: int) -> list[dict[str, np.ndarray]]:
    """Check the calibration arrays against the model's inputs and cut them in batches.

    Raises:
        EnpheephError: no data, an input missing or unknown, arrays of different lengths.
    """
    if batch_size < 1:
        raise EnpheephError(f"batch_size must be >= 1, got {batch_size}")
    inputs = _data_inputs(model)
    names = [i.name for i in inputs]
    if not calibration:
        raise EnpheephError(
            f"the calibration data is empty: give one array per model input ({names}), "
            "batch along axis 0"
        )
    missing = [n for n in names if n not in calibration]
    if missing:
        raise EnpheephError(
            f"the calibration data lacks the model input(s) {missing} (it has "
            f"{sorted(calibration)}); key the arrays by input name"
        )
    unknown = sorted(set(calibration) - set(names))
    if unknown:
        raise EnpheephError(
            f"the calibration data has array(s) {unknown} that are not model inputs "
            f"(inputs: {names})"
        )
    arrays: dict[str, np.ndarray] = {}
    for vi in inputs:
        a = np.asarray(calibration[vi.name])
        if a.ndim == 0:
            raise EnpheephError(
                f"calibration array {vi.name!r} is a scalar: stack the samples along axis 0"
            )
        np_type = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        arrays[vi.name] = np.ascontiguousarray(a, dtype=np_type)
    lengths = sorted({len(a) for a in arrays.values()})
    if len(lengths) != 1:
        raise EnpheephError(f"calibration arrays have different lengths {lengths}")
    n = lengths[0]
    if n == 0:
        raise EnpheephError("the calibration data is empty: the arrays hold no samples")
    return [{k: a[s:s + batch_size] for k, a in arrays.items()} for s in range(0, n, batch_size)]


@contextlib.contextmanager
def _captured_root_logging() -> Iterator[list[logging.LogRecord]]:
    """Collect the records logged on the root logger meanwhile, without printing them.

    ``onnxruntime.quantization`` warns through ``logging.warning`` (the root logger),
    which also installs a stderr handler on an unconfigured root logger
    (``logging.basicConfig``); this keeps both from leaking into the caller's logging.
    """
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [_Collect()]
    try:
        yield records
    finally:
        root.handlers[:] = saved



def quantize_int8(
    model: ModelSource,
    calibration: Mapping[str, np.ndarray],
    out: str | os.PathLike[str] | None = None,
    *,
    per_channel: bool = False,
    quant_format: str = "qdq",
    batch_size: int = 32,
    reduce_range: bool = True,
) -> onnx.ModelProto:
    """Statically quantize ``model`` to int8 weights and int8 activations.

    Runs ``onnxruntime.quantization.quantize_static`` with

    * ``weight_type=QuantType.QInt8``, symmetric (``WeightSymmetric``, onnxruntime's
      default for int8): weight zero points are 0, a stored weight is
      ``round(w / scale)``, and bit 7 is its sign bit;
    * ``reduce_range=True`` (default): weights use the 7-bit range [-64, 64] of their
      int8 storage. onnxruntime's graph optimizer fuses QDQ groups into ``QLinearConv``/
      ``QGemm`` and turns int8 activations into uint8 (``QDQS8ToU8Transformer``); on x86
      CPUs without VNNI its u8 x s8 kernels add pairs of products in saturating int16
      (``vpmaddubsw``), so with full-range weights (255 x 127 x 2 > 32767) the fused
      model deviates from the ONNX semantics (measured on the digits CNN: ~10 % of the
      first pooled activations off by up to 53 steps, logits by 0.78) and differs between
      machines and between a session with constant and one with overridable
      quantization parameters (no fusion then). With 7-bit weights no pair can saturate
      (255 x 64 x 2 <= 32767): the fused model equals the unfused one and the ONNX
      reference bit for bit. This is onnxruntime's own advice for x86 CPUs without
      VNNI. A *faulted* weight beyond [-64, 64] (e.g. bit 6 or 7 flipped) can still
      saturate in those kernels, as it would on that hardware. ``reduce_range=False``
      gives full-range int8 weights;
    * ``activation_type=QuantType.QInt8``, asymmetric (``ActivationSymmetric=False``):
      a per-tensor scale and zero point from the calibration min/max, so ReLU outputs
      (range [0, max], zero point -128) use all 256 codes. ``QInt8`` rather than
      ``QUInt8`` so that activation faults hit signed 8-bit tensors like the weights, and
      signed 8-bit is what QDQ on GPUs and ARM CPUs expects; onnxruntime's x86 kernels convert
      them to uint8 internally (same results);
    * ``calibrate_method=CalibrationMethod.MinMax`` (deterministic: the same data give
      the same scales, so the output is byte-identical across runs), biases quantized to
      int32 (``scale = input_scale * weight_scale``, zero point 0), calibration on the
      CPU provider;
    * ``quant_format="qdq"`` (default): ``QuantizeLinear``/``DequantizeLinear`` pairs
      around float ops, int8 weights stored as initializers feeding ``DequantizeLinear``;
      ``"qoperator"``: ``QLinearConv``/``QLinearMatMul`` (and ``com.microsoft.QGemm`` for
      ``Gemm``) on int8 tensors.

    Opset: quantize_static accepts and keeps a default-domain opset 26 model, so a model
    below 26 is converted up first (:func:`enpheeph_onnx.model.ensure_opset`) and the
    float model at opset 26 is quantized; should the quantizer ever return another opset,
    the result is converted to 26 as well. The IR version is clamped to 10..13 and the
    result passes the full ``onnx.checker``.

    quantize_static works on files: the input and output models live in a temporary
    directory that is always removed. Its log messages (e.g. its advice to pre-process)
    are captured and logged at DEBUG level on this module's logger.

    The result records ``enpheeph.quantization`` metadata, the JSON object
    ``{"format": "qdq"|"qoperator", "weights": "int8", "activations": "int8",
    "per_channel": bool, "reduce_range": bool}`` (keys sorted); other metadata of
    ``model`` is kept.

    Args:
        model: the float model (path or ``ModelProto``; not modified).
        calibration: one array per model input, keyed by input name, samples along
            axis 0 (cast to the input's element type); min/max ranges are taken over all
            of them.
        out: path to write the quantized model to (atomically), or ``None``.
        per_channel: one weight scale per output channel (``axis`` 0 for ``Conv``
            weights) instead of one per tensor.
        quant_format: ``"qdq"`` or ``"qoperator"``.
        batch_size: samples per calibration run.
        reduce_range: 7-bit weights (see above); ``False`` for the full int8 range.

    Returns:
        The quantized model (default-domain opset 26, IR <= 13).

    Raises:
        EnpheephError: empty calibration data, calibration missing a model input (or
            naming an unknown one, or of unequal lengths), an unknown ``quant_format``,
            a model that cannot be converted to opset 26 or that quantize_static rejects
            or leaves unquantized.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if quant_format not in QUANT_FORMATS:
        raise EnpheephError(f"unknown quant_format {quant_format!r}: use 'qdq' or 'qoperator'")
    source = load_model(model)
    batches = _calibration_batches(source, calibration, batch_size)
    work = onnx.ModelProto()
    work.CopyFrom(source)
    if default_opset(work) != TARGET_OPSET:
        work = ensure_opset(work)  # raises EnpheephError above 26 or when conversion fails
    clamp_ir_version(work)

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(batches)

    fmt = QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator
    with tempfile.TemporaryDirectory(prefix="enpheeph-quantize-") as tmp:
        src_path, dst_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(work, str(src_path))
        with _captured_root_logging() as records:
            try:
                quantize_static(
                    str(src_path), str(dst_path), _Reader(),
                    quant_format=fmt,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    calibration_providers=["CPUExecutionProvider"],
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                )
            except Exception as e:  # quantize_static raises many kinds, all user-facing
                raise EnpheephError(
                    f"onnxruntime.quantization.quantize_static rejects this model or its "
                    f"calibration data: {type(e).__name__}: {_first_line(e)}"
                ) from None
        for r in records:
            log.debug("onnxruntime.quantization: %s", r.getMessage())
        if not dst_path.is_file():
            raise EnpheephError("onnxruntime.quantization.quantize_static wrote no model")
        result = onnx.load_model(str(dst_path), load_external_data=True)

    def quantized_ops(m: onnx.ModelProto) -> int:
        return sum(n.op_type in _QUANTIZED_OPS for n in m.graph.node)

    if quantized_ops(result) <= quantized_ops(work):
        raise EnpheephError(
            "quantize_static quantized no operator of this model (it quantizes Conv, "
            "MatMul, Gemm and similar ops): nothing to fault as int8"
        )
    if default_opset(result) != TARGET_OPSET:
        result = ensure_opset(result)
    clamp_ir_version(result)
    del result.metadata_props[:]
    result.metadata_props.extend(work.metadata_props)
    record: dict[str, Any] = {"format": quant_format, "weights": "int8",
                              "activations": "int8", "per_channel": bool(per_channel),
                              "reduce_range": bool(reduce_range)}
    set_metadata(result, {METADATA_KEY: json.dumps(record, sort_keys=True)})
    try:
        onnx.checker.check_model(result, full_check=True)
    except Exception as e:
        raise EnpheephError(
            f"the quantized model fails the ONNX checker: {_first_line(e)}"
        ) from None
    if out is not None:
        save_model(result, out)
    return result


__all__ = ["METADATA_KEY", "QUANT_FORMATS", "quantize_int8"]
