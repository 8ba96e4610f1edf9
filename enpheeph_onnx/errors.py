"""Exceptions raised by enpheeph-onnx.

Every problem caused by the user's input (a bad fault expression, a missing file, an
unsupported dtype, ...) raises :class:`EnpheephError` with a one-line message that says
what is wrong and how to fix it. The CLI prints that line and exits with code 2; any
other exception is a bug.
"""

from __future__ import annotations


class EnpheephError(ValueError):
    """A user-facing error: one line saying what is wrong and how to fix it."""


class RunFailure(EnpheephError):
    """onnxruntime failed while running a model (e.g. an index out of range). On a golden
    run it is the user's problem; on a faulty run it is the fault's effect: a campaign
    records that trial's inputs as DUE (a detected error) and goes on."""


class GateFailedError(Exception):
    """A reliability gate (``--fail-above``) was exceeded; the CLI exits with code 1."""
