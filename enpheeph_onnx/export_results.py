"""Export a stored campaign as CSV (stdlib ``csv``) or Parquet (``pyarrow``) tables.

Tables: ``trials`` (one row per trial: level, rate, stratum, accuracy — the trial's score,
see :mod:`enpheeph_onnx.store` —, outcome counts, attribution), ``faults`` (one row per
stored fault: site, kind, layer, index, model, bits, value) and ``outcomes`` (one row per
(trial, input): outcome, top-1 correct, a user metric's score). The store's columnar
blobs are decoded here; the database is read through :class:`~enpheeph_onnx.store.ResultStore` only.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import EnpheephError
from .faultset import MODEL_CODES
from .model import atomic_path
from .store import OUTCOMES, ResultStore

_TYPES: dict[str, dict[str, str]] = {
    "trials": {"trial": "int", "level": "int", "rate": "real", "stratum_layer": "text",
               "stratum_bit": "int", "n_faults": "int", "accuracy": "real", "samples": "int",
               "masked": "int", "tolerable_sdc": "int", "critical_sdc": "int", "due": "int",
               "layer": "text", "bit": "int", "seconds": "real"},
    "faults": {"trial": "int", "ordinal": "int", "site": "text", "kind": "text",
               "layer": "text", "index": "text", "model": "text", "bits": "text",
               "value": "real"},
    "outcomes": {"trial": "int", "sample": "int", "outcome": "int", "outcome_name": "text",
                 "correct": "int", "score": "real"},
}
"""Column types of the tables (fixed, so exports of different campaigns concatenate)."""
TABLES = tuple(_TYPES)


def _none(v: float, missing: bool) -> Any:
    return None if missing else v


def _trial_rows(store: ResultStore) -> Iterator[tuple[Any, ...]]:
    t = store.trial_table()
    for i in range(len(t)):
        rate, acc = float(t.rate[i]), float(t.accuracy[i])
        yield (int(t.trial[i]), int(t.level[i]), _none(rate, math.isnan(rate)),
               t.stratum_layer[i], _none(int(t.stratum_bit[i]), t.stratum_bit[i] < 0),
               int(t.n_faults[i]), _none(acc, math.isnan(acc)), int(t.samples[i]),
               *(int(c) for c in t.counts[i]), t.layer[i],
               _none(int(t.bit[i]), t.bit[i] < 0), float(t.seconds[i]))


def _fault_rows(store: ResultStore) -> Iterator[tuple[Any, ...]]:
    if store.meta().get("config", {}).get("store_faults") == "none":
        raise EnpheephError(
            f"{store.path} stored no faults (campaign --store-faults none); re-create them "
            "with 'enpheeph-onnx plan' and the campaign's options and seed")
    info = {s.name: s for s in store.sites()}
    for trial, fs in store.fault_sets():
        names = fs.site_names()
        idx = fs.index.tolist()
        bits = fs.bits.tolist()
        for k, name in enumerate(names):
            s = info[name]
            model = MODEL_CODES[int(fs.model[k])]
            yield (trial, k, name, s.kind, s.layer,
                   json.dumps(["*" if i < 0 else i for i in idx[k][:s.rank]]), model.value,
                   json.dumps([b for b in range(64) if bits[k] >> b & 1]),
                   float(fs.value[k]) if model.value == "value" else None)


def _outcome_rows(store: ResultStore) -> Iterator[tuple[Any, ...]]:
    scores = store.score_sets()
    for trial, codes, ok in store.outcome_sets():
        sc = scores.get(trial)
        for i, c in enumerate(codes.tolist()):
            yield (trial, i, c, OUTCOMES[c], None if ok is None else int(ok[i]),
                   None if sc is None else float(sc[i]))


_ROWS = {"trials": _trial_rows, "faults": _fault_rows, "outcomes": _outcome_rows}


def export_table(db: str | os.PathLike[str], table: str, fmt: str,
                 out: str | os.PathLike[str]) -> int:
    """Write one table of ``db`` to ``out`` (atomically); returns the number of rows.

    Raises:
        EnpheephError: unknown table/format, missing database, or pyarrow missing for
            Parquet.
    """
    if table not in _ROWS:
        raise EnpheephError(f"unknown table {table!r}: use {', '.join(_ROWS)}")
    if fmt not in ("csv", "parquet"):
        raise EnpheephError(f"unknown format {fmt!r}: use csv or parquet")
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise EnpheephError("Parquet export needs pyarrow: pip install pyarrow, or use "
                                "--format csv") from None
    cols = list(_TYPES[table])
    with ResultStore.open(db) as store:
        rows = list(_ROWS[table](store))
    with atomic_path(out) as tmp:
        if fmt == "csv":
            with open(tmp, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                w.writerows(rows)
        else:
            types = {"int": pa.int64(), "real": pa.float64(), "text": pa.string()}
            schema = pa.schema([(c, types[_TYPES[table][c]]) for c in cols])
            columns = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
            pq.write_table(pa.table(columns, schema=schema), Path(tmp))
    return len(rows)


__all__ = ["TABLES", "export_table"]
