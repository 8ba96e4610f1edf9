"""SQLite results store (stdlib ``sqlite3``, WAL journal).

One file holds one campaign: its resolved configuration and provenance, then one row per
trial and one per fault, committed trial by trial, so an interrupted campaign loses at
most the trial that was running. Schema::

    campaign(key TEXT PRIMARY KEY, value TEXT)          -- config, sha256, versions, golden
    trial(trial INTEGER PRIMARY KEY, accuracy REAL, samples INTEGER, masked INTEGER,
          tolerable_sdc INTEGER, critical_sdc INTEGER, due INTEGER, n_faults INTEGER,
          seconds REAL)
    fault(trial INTEGER, ordinal INTEGER, site TEXT, kind TEXT, layer TEXT,
          idx TEXT, model TEXT, bits TEXT, value REAL, PRIMARY KEY (trial, ordinal))
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EnpheephError
from .faults import Fault

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trial (
    trial INTEGER PRIMARY KEY, accuracy REAL, samples INTEGER NOT NULL,
    masked INTEGER NOT NULL, tolerable_sdc INTEGER NOT NULL, critical_sdc INTEGER NOT NULL,
    due INTEGER NOT NULL, n_faults INTEGER NOT NULL, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fault (
    trial INTEGER NOT NULL REFERENCES trial(trial), ordinal INTEGER NOT NULL,
    site TEXT NOT NULL, kind TEXT NOT NULL, layer TEXT NOT NULL, idx TEXT NOT NULL,
    model TEXT NOT NULL, bits TEXT NOT NULL, value REAL, PRIMARY KEY (trial, ordinal));
"""


@dataclass(frozen=True)
class TrialRecord:
    """One trial's outcome counts over the data (one count per input sample).

    ``accuracy`` is top-1 accuracy on the labels (``None`` without labels).
    """

    trial: int
    faults: tuple[Fault, ...]
    samples: int
    masked: int
    tolerable_sdc: int
    critical_sdc: int
    due: int
    accuracy: float | None
    seconds: float


class ResultStore:
    """An open results database.

    Use :meth:`create` for a new campaign (refuses an existing file) and :meth:`open` to
    read one.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any],
               kinds: dict[str, tuple[str, str]]) -> ResultStore:
        """Create ``path`` and write the campaign metadata.

        ``kinds`` maps each site name to ``(kind, layer)`` for the fault rows.

        Raises:
            EnpheephError: the file exists or its folder does not.
        """
        p = Path(path)
        if p.exists():
            raise EnpheephError(
                f"results database {p} already exists: choose another --db path or delete it"
            )
        if not p.parent.is_dir():
            raise EnpheephError(f"folder {p.parent} of --db does not exist: create it first")
        conn = sqlite3.connect(p)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany("INSERT INTO campaign VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in meta.items()])
        store = cls(p, conn)
        store._kinds = kinds
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ResultStore:
        """Open an existing database.

        Raises:
            EnpheephError: missing file or not an enpheeph-onnx database.
        """
        p = Path(path)
        if not p.is_file():
            raise EnpheephError(f"results database not found: {p}")
        conn = sqlite3.connect(p)
        try:
            conn.execute("SELECT count(*) FROM campaign").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise EnpheephError(f"{p} is not an enpheeph-onnx results database") from None
        store = cls(p, conn)
        store._kinds = {}
        return store

    _kinds: dict[str, tuple[str, str]]

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM campaign")}

    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO campaign VALUES (?, ?)",
                              (key, json.dumps(value)))

    def add_trial(self, rec: TrialRecord) -> None:
        """Store one trial and its faults in one transaction."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO trial VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (rec.trial, rec.accuracy, rec.samples, rec.masked, rec.tolerable_sdc,
                 rec.critical_sdc, rec.due, len(rec.faults), rec.seconds))
            self.conn.executemany(
                "INSERT INTO fault VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(rec.trial, k, f.site, *self._kinds.get(f.site, ("", "")),
                  json.dumps(f.to_json()["index"]), f.model.value, json.dumps(list(f.bits)),
                  f.value) for k, f in enumerate(rec.faults)])

    def trials(self) -> Iterator[TrialRecord]:
        faults: dict[int, list[Fault]] = {}
        for row in self.conn.execute(
                "SELECT trial, site, idx, model, bits, value FROM fault ORDER BY trial, ordinal"):
            faults.setdefault(row[0], []).append(Fault.from_json(
                {"site": row[1], "index": json.loads(row[2]), "model": row[3],
                 "bits": json.loads(row[4]), **({"value": row[5]} if row[5] is not None else {})}))
        for r in self.conn.execute(
                "SELECT trial, accuracy, samples, masked, tolerable_sdc, critical_sdc, due, "
                "seconds FROM trial ORDER BY trial"):
            yield TrialRecord(r[0], tuple(faults.get(r[0], [])), r[2], r[3], r[4], r[5], r[6],
                              r[1], r[7])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

