"""Helpers every command shares: output-path checks, the summary line, tables, JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import EnpheephError


def refuse_overwrite(out: Path | None, *inputs: Path | None, what: str = "-o/--output",
                     folder: bool = False) -> None:
    """Refuse an output path that is one of the command's inputs (it would be destroyed),
    and (``folder`` False) one that is a folder or empty.

    Raises:
        EnpheephError: ``out`` is (or resolves to, or is a hard link of) an input; a file
            output names a folder.
    """
    if out is None:
        return
    if not folder and (str(out) in ("", ".") or out.is_dir()):
        raise EnpheephError(f"{what} {str(out)!r} is a folder, not a file: give a file path")
    for src in inputs:
        if src is None:
            continue
        same = out.resolve() == src.resolve()
        if not same and out.exists() and src.exists():
            try:
                same = out.samefile(src)
            except OSError:
                same = False
        if same:
            raise EnpheephError(f"{what} {out} is also an input of this command; choose "
                                "another path (the input would be overwritten)")


def summary(ok: bool, text: str) -> None:
    """The final one-line ``PASSED``/``FAILED`` summary on stderr."""
    click.echo(f"{'PASSED' if ok else 'FAILED'} {text}", err=True)


def table(rows: list[list[str]], header: list[str]) -> str:
    """A left-aligned plain-text table."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def fmt(x: float | None, spec: str = ".4f") -> str:
    """``x`` formatted, ``-`` for None, never ``-0.0000``; ``spec`` ``"auto"``: ``.4f``
    unless the magnitude needs an exponent (below 1e-3 or from 1e5: ``.4g``)."""
    if x is None:
        return "-"
    if spec == "auto":
        spec = ".4g" if x and (abs(x) < 1e-3 or abs(x) >= 1e5) else ".4f"
    text = format(x, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def finite(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats replaced by None: ``--json`` output is strict JSON."""
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def echo_json(obj: Any) -> None:
    """Print ``obj`` as strict JSON (NaN/Inf as null) on stdout."""
    click.echo(json.dumps(finite(obj), indent=1, default=_json_default, allow_nan=False))
