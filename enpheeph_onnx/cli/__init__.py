"""The ``enpheeph-onnx`` command line: a thin shell over the Python API.

stdout carries results (tables, ``--json``); stderr carries logs, progress and the final
one-line summary. Exit codes: 0 success, 1 a check failed, 2 usage or input error (a
one-line message, no traceback, no output file).

==========================  ====================================================
module                      holds
==========================  ====================================================
``group``                   the click group, one-line errors, exit codes
``options``                 shared option groups (same name, help, validation)
``common``                  output-path checks, the summary line, tables, JSON
``model_commands``          ``sites``, ``inject``, ``run``
``campaign_commands``       ``plan``, ``campaign``, ``sample-size``
``result_commands``         ``report``, ``export-results``, ``export-model``
==========================  ====================================================
"""

from __future__ import annotations

from . import campaign_commands, model_commands, result_commands  # noqa: F401 (register)
from .group import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    main()
