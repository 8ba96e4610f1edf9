"""Make PyTorch's CPU training reproducible bit for bit on every x86-64 CPU.

PyTorch picks its CPU kernels by the instruction set of the machine: ATen's vectorised
kernels, oneDNN's convolutions and MKL's BLAS each have AVX2 and AVX-512 variants that sum in
another order, so the same seeded training gives weights that differ by up to 0.076 on the
digits CNN between an AVX2 and an AVX-512 machine. Pinning the libraries' *maximum* ISA to AVX2
is not enough (measured: an AVX-512 machine pinned to AVX2 still differs from an AVX2 one by
up to 1.5e-3, MKL's blocking depends on more than the ISA). What is reproducible (measured:
one digest for every ISA setting on an AVX-512 Xeon) is:

* ATen's scalar kernels (``ATEN_CPU_CAPABILITY=default``),
* MKL's conditional numerical reproducibility in its compatible code path
  (``MKL_CBWR=COMPATIBLE``, Intel's documented switch for bitwise-identical results on all
  Intel-compatible CPUs),
* no oneDNN (``torch.backends.mkldnn.enabled = False``: convolutions go through ATen and MKL),
* one thread and deterministic algorithms.

Environment variables are read when torch loads: call :func:`pin_cpu_isa` before
``import torch`` and :func:`pin_torch` after it. Training is slower (about 2x on the digits CNN).
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: The environment variables and the value each is set to.
ISA_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "default",  # ATen's CPU kernel dispatch: scalar kernels
    "MKL_CBWR": "COMPATIBLE",  # MKL: same bits on every Intel-compatible CPU
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN, should anything still reach it
}


def pin_cpu_isa() -> None:
    """Set :data:`ISA_ENV` in ``os.environ``, overriding other values.

    Raises:
        RuntimeError: torch is already imported with other values (they would have no effect).
    """
    if "torch" in sys.modules:
        if any(os.environ.get(k) != v for k, v in ISA_ENV.items()):
            raise RuntimeError("pin_cpu_isa() must run before torch is imported")
        return
    os.environ.update(ISA_ENV)


def pin_torch(torch: Any) -> None:
    """Configure an imported ``torch`` module for reproducible CPU training: no oneDNN, one
    thread, deterministic algorithms. Call :func:`pin_cpu_isa` before importing it.

    Raises:
        RuntimeError: :func:`pin_cpu_isa` was not called before torch was imported.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "DEFAULT":
        raise RuntimeError(f"torch runs {capability} kernels: call pin_cpu_isa() before "
                           "importing torch")
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
