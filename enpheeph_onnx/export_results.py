"""Export a stored campaign as CSV (stdlib ``csv``) or Parquet (``pyarrow``) tables.

Tables: ``trials`` (one row per trial: level, rate, accuracy, outcome counts, faults as
text), ``faults`` (one row per fault) and ``outcomes`` (one row per (trial, input)).
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from pathlib import Path

from .errors import EnpheephError
from .faults import Fault
from .model import atomic_path
from .store import ResultStore

_QUERIES = {
    "trials": (
        "SELECT t.trial, t.level, t.rate, t.n_faults, t.accuracy, t.samples, t.masked, "
        "t.tolerable_sdc, t.critical_sdc, t.due, t.seconds FROM trial t ORDER BY t.trial"),
    "faults": ("SELECT trial, ordinal, site, kind, layer, sample, idx, model, bits, value "
               "FROM fault ORDER BY trial, ordinal"),
    "outcomes": ("SELECT o.trial, o.sample, o.outcome, "
                 "CASE o.outcome WHEN 0 THEN 'masked' WHEN 1 THEN 'tolerable_sdc' "
                 "WHEN 2 THEN 'critical_sdc' ELSE 'due' END AS outcome_name, o.correct "
                 "FROM outcome o ORDER BY o.trial, o.sample"),
}


_TYPES: dict[str, dict[str, str]] = {
    "trials": {"trial": "int", "level": "int", "rate": "real", "n_faults": "int",
               "accuracy": "real", "samples": "int", "masked": "int", "tolerable_sdc": "int",
               "critical_sdc": "int", "due": "int", "seconds": "real", "faults": "text"},
    "faults": {"trial": "int", "ordinal": "int", "site": "text", "kind": "text",
               "layer": "text", "sample": "int", "idx": "text", "model": "text",
               "bits": "text", "value": "real"},
    "outcomes": {"trial": "int", "sample": "int", "outcome": "int", "outcome_name": "text",
                 "correct": "int"},
}
"""Column types of the Parquet tables (fixed, so exports of different campaigns concat)."""


def _typed(v: object, kind: str) -> object:
    if v is None:
        return None
    if kind == "real":
        return float(v)  # type: ignore[arg-type]  # "nan"/"inf" values are stored as text
    return v


def _rows(conn: sqlite3.Connection, table: str) -> tuple[list[str], list[tuple[object, ...]]]:
    cur = conn.execute(_QUERIES[table])
    cols = [d[0] for d in cur.description]
    rows = cur.fetchall()
    if table == "trials":
        texts: dict[int, list[str]] = {}
        for t, site, idx, model, bits, value in conn.execute(
                "SELECT trial, site, idx, model, bits, value FROM fault ORDER BY trial, ordinal"):
            f = Fault.from_json({"site": site, "index": json.loads(idx), "model": model,
                                 "bits": json.loads(bits),
                                 **({"value": value} if value is not None else {})})
            texts.setdefault(t, []).append(str(f))
        cols.append("faults")
        rows = [(*r, "; ".join(texts.get(r[0], []))) for r in rows]
    return cols, rows


def export_table(db: str | os.PathLike[str], table: str, fmt: str,
                 out: str | os.PathLike[str]) -> int:
    """Write one table of ``db`` to ``out``; returns the number of rows.

    Raises:
        EnpheephError: unknown table/format, missing database, or pyarrow missing for
            Parquet.
    """
    if table not in _QUERIES:
        raise EnpheephError(f"unknown table {table!r}: use {', '.join(_QUERIES)}")
    if fmt not in ("csv", "parquet"):
        raise EnpheephError(f"unknown format {fmt!r}: use csv or parquet")
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise EnpheephError("Parquet export needs pyarrow: pip install pyarrow, or use "
                                "--format csv") from None
    with ResultStore.open(db) as store:
        cols, rows = _rows(store.conn, table)
    with atomic_path(out) as tmp:
        if fmt == "csv":
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                w.writerows(rows)
        else:
            types = {"int": pa.int64(), "real": pa.float64(), "text": pa.string()}
            schema = pa.schema([(c, types[_TYPES[table][c]]) for c in cols])
            columns = {c: [_typed(r[i], _TYPES[table][c]) for r in rows]
                       for i, c in enumerate(cols)}
            pq.write_table(pa.table(columns, schema=schema), Path(tmp))
    return len(rows)
