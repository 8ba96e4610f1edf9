"""Exporters: PyTorch models (dense, pruned, int8-quantized, spiking) to annotated ONNX.

Needs the ``torch`` extra (``pip install 'enpheeph-onnx[torch]'``); importing this package
does not import torch, the functions do.
"""

from __future__ import annotations

from .core import export_model, load_factory

__all__ = ["export_model", "load_factory"]
