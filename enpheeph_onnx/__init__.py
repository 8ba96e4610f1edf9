"""enpheeph-onnx: fault injection for deep neural networks on ONNX graphs.

Declare faults (bit flip, stuck-at-0/1, value) on weights, activations or inputs, get a
faulty ONNX model that runs in stock onnxruntime, and run statistically sound
fault-injection campaigns with stored, resumable results.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import EnpheephError
from .faults import Fault, FaultModel, FaultPlan, apply_faults, parse_fault
from .model import load_model, save_model
from .rewrite import InjectionResult, WeightChange, inject
from .sites import FaultSite, SiteKind, discover_sites

__all__ = [
    "EnpheephError",
    "Fault",
    "FaultModel",
    "FaultPlan",
    "FaultSite",
    "InjectionResult",
    "SiteKind",
    "WeightChange",
    "__version__",
    "apply_faults",
    "discover_sites",
    "inject",
    "load_model",
    "parse_fault",
    "save_model",
]
