"""Exporters: PyTorch models (dense, pruned, int8-quantized, spiking) to annotated ONNX.

Needs the ``torch`` extra (``pip install 'enpheeph-onnx[torch]'``); importing this package
does not import torch, the functions do.
"""

from __future__ import annotations

from .core import ExportMismatchError, export_model, load_factory
from .quantize import quantize_int8
from .snn import export_snn, trace_states, unroll

__all__ = ["ExportMismatchError", "export_model", "export_snn", "load_factory", "quantize_int8",
           "trace_states", "unroll"]
