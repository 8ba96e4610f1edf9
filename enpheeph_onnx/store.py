"""SQLite results store (stdlib ``sqlite3``, WAL journal).

One file holds one campaign: its resolved configuration and provenance (key/value rows),
then one row per trial, one per fault and one per (trial, input sample) outcome. Trials
are committed in batches, each trial with its faults and outcomes in the same
transaction, so an interrupted campaign (Ctrl-C, SIGKILL, power loss) loses at most the
uncommitted batch, which ``--resume`` recomputes. Schema::

    campaign(key TEXT PRIMARY KEY, value TEXT)   -- JSON values: config, sha256, versions
    trial(trial INTEGER PRIMARY KEY, level INTEGER, rate REAL, accuracy REAL,
          samples INTEGER, masked INTEGER, tolerable_sdc INTEGER, critical_sdc INTEGER,
          due INTEGER, n_faults INTEGER, seconds REAL)
    fault(trial INTEGER, ordinal INTEGER, site TEXT, kind TEXT, layer TEXT, sample INTEGER,
          idx TEXT, model TEXT, bits TEXT, value REAL, PRIMARY KEY (trial, ordinal))
    outcome(trial INTEGER, sample INTEGER, outcome INTEGER, correct INTEGER,
            PRIMARY KEY (trial, sample))  -- outcome: 0 masked, 1 tolerable SDC,
                                          -- 2 critical SDC, 3 DUE; correct: top-1 == label

``fault.sample`` is the input sample a per-sample fault hits, NULL when it hits every
input of the trial; ``fault.value`` is a number, or the text ``nan``/``inf``/``-inf``
(SQLite would store a REAL NaN as NULL).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EnpheephError
from .faults import Fault

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trial (
    trial INTEGER PRIMARY KEY, level INTEGER NOT NULL, rate REAL, accuracy REAL,
    samples INTEGER NOT NULL, masked INTEGER NOT NULL, tolerable_sdc INTEGER NOT NULL,
    critical_sdc INTEGER NOT NULL, due INTEGER NOT NULL, n_faults INTEGER NOT NULL,
    seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fault (
    trial INTEGER NOT NULL, ordinal INTEGER NOT NULL, site TEXT NOT NULL, kind TEXT NOT NULL,
    layer TEXT NOT NULL, sample INTEGER, idx TEXT NOT NULL, model TEXT NOT NULL,
    bits TEXT NOT NULL, value, PRIMARY KEY (trial, ordinal));
CREATE TABLE IF NOT EXISTS outcome (
    trial INTEGER NOT NULL, sample INTEGER NOT NULL, outcome INTEGER NOT NULL,
    correct INTEGER, PRIMARY KEY (trial, sample));
"""
OUTCOMES = ("masked", "tolerable_sdc", "critical_sdc", "due")


@dataclass(frozen=True)
class TrialRecord:
    """One trial: its faults and per-sample outcomes.

    Attributes:
        trial: global trial number (levels x trials per level).
        level: index of the fault rate (0 for a fixed fault count).
        rate: the fault rate or bit error rate of the level, ``None`` for a fixed count.
        faults: the injected faults, in order.
        outcomes: ``uint8 [samples]`` codes, 0 masked, 1 tolerable SDC, 2 critical SDC, 3 DUE.
        correct: ``bool [samples]`` top-1 equals the label, or ``None`` without labels.
        seconds: wall time of the faulty run.
    """

    trial: int
    level: int
    rate: float | None
    faults: tuple[Fault, ...]
    outcomes: np.ndarray
    correct: np.ndarray | None
    seconds: float

    @property
    def samples(self) -> int:
        return len(self.outcomes)

    def count(self, outcome: str) -> int:
        return int(np.count_nonzero(self.outcomes == OUTCOMES.index(outcome)))

    @property
    def masked(self) -> int:
        return self.count("masked")

    @property
    def tolerable_sdc(self) -> int:
        return self.count("tolerable_sdc")

    @property
    def critical_sdc(self) -> int:
        return self.count("critical_sdc")

    @property
    def due(self) -> int:
        return self.count("due")

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else float(np.mean(self.correct))

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.trial, "level": self.level, "rate": self.rate,
                "accuracy": self.accuracy, "masked": self.masked,
                "tolerable_sdc": self.tolerable_sdc, "critical_sdc": self.critical_sdc,
                "due": self.due, "seconds": self.seconds,
                "faults": [f.to_json() for f in self.faults]}


class ResultStore:
    """An open results database: :meth:`create` a new one, :meth:`open` an existing one."""

    def __init__(self, path: Path, conn: sqlite3.Connection,
                 kinds: dict[str, tuple[str, str]] | None = None,
                 per_sample: bool = False) -> None:
        self.path = path
        self.conn = conn
        self.kinds = kinds or {}
        self.per_sample = per_sample
        self._pending: list[TrialRecord] = []

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any],
               kinds: dict[str, tuple[str, str]], per_sample: bool = False) -> ResultStore:
        """Create ``path`` and write the campaign metadata.

        ``kinds`` maps each site name to ``(kind, layer)`` for the fault rows;
        ``per_sample``: a non-weight fault's first coordinate names its input sample.

        Raises:
            EnpheephError: the file exists or its folder does not.
        """
        p = Path(path)
        if p.exists():
            raise EnpheephError(
                f"results database {p} already exists: continue it with --resume, or choose "
                "another --db path"
            )
        if not p.parent.is_dir():
            raise EnpheephError(f"folder {p.parent} of --db does not exist: create it first")
        conn = sqlite3.connect(p)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany("INSERT INTO campaign VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in
                              {**meta, "schema_version": SCHEMA_VERSION}.items()])
        return cls(p, conn, kinds, per_sample)

    @classmethod
    def open(cls, path: str | os.PathLike[str], kinds: dict[str, tuple[str, str]] | None = None,
             per_sample: bool = False) -> ResultStore:
        """Open an existing database.

        Raises:
            EnpheephError: missing file or not an enpheeph-onnx results database.
        """
        p = Path(path)
        if not p.is_file():
            raise EnpheephError(f"results database not found: {p}")
        conn = sqlite3.connect(p)
        try:
            version = conn.execute(
                "SELECT value FROM campaign WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise EnpheephError(f"{p} is not an enpheeph-onnx results database") from None
        if version is None or json.loads(version[0]) != SCHEMA_VERSION:
            conn.close()
            raise EnpheephError(f"{p} was written by another version of enpheeph-onnx")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return cls(p, conn, kinds, per_sample)

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM campaign")}

    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO campaign VALUES (?, ?)",
                              (key, json.dumps(value)))

    def done_trials(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT trial FROM trial")}

    def add(self, rec: TrialRecord) -> None:
        """Queue a trial; it is written at the next :meth:`flush`."""
        self._pending.append(rec)

    def flush(self) -> None:
        """Commit the queued trials, each with its faults and outcomes, in one transaction."""
        if not self._pending:
            return
        with self.conn:
            for rec in self._pending:
                self._insert(rec)
        self._pending.clear()

    def _insert(self, rec: TrialRecord) -> None:
        self.conn.execute(
            "INSERT INTO trial VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rec.trial, rec.level, rec.rate, rec.accuracy, rec.samples, rec.masked,
             rec.tolerable_sdc, rec.critical_sdc, rec.due, len(rec.faults), rec.seconds))
        rows = []
        for k, f in enumerate(rec.faults):
            kind, layer = self.kinds.get(f.site, ("", ""))
            sample = f.index[0] if (self.per_sample and kind != "weight" and f.index) else None
            rows.append((rec.trial, k, f.site, kind, layer, sample,
                         json.dumps(f.to_json()["index"]), f.model.value,
                         json.dumps(list(f.bits)), f.to_json().get("value")))
        self.conn.executemany("INSERT INTO fault VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        correct = rec.correct.tolist() if rec.correct is not None else [None] * rec.samples
        self.conn.executemany(
            "INSERT INTO outcome VALUES (?, ?, ?, ?)",
            zip([rec.trial] * rec.samples, range(rec.samples), rec.outcomes.tolist(),
                [None if c is None else int(c) for c in correct], strict=True))

    def trials(self, with_outcomes: bool = True) -> Iterator[TrialRecord]:
        """Every stored trial in order (outcome arrays loaded when ``with_outcomes``)."""
        faults: dict[int, list[Fault]] = {}
        for row in self.conn.execute(
                "SELECT trial, site, idx, model, bits, value FROM fault ORDER BY trial, ordinal"):
            faults.setdefault(row[0], []).append(Fault.from_json(
                {"site": row[1], "index": json.loads(row[2]), "model": row[3],
                 "bits": json.loads(row[4]), **({"value": row[5]} if row[5] is not None else {})}))
        outcomes: dict[int, tuple[list[int], list[int | None]]] = {}
        if with_outcomes:
            for t, o, c in self.conn.execute(
                    "SELECT trial, outcome, correct FROM outcome ORDER BY trial, sample"):
                entry = outcomes.setdefault(t, ([], []))
                entry[0].append(o)
                entry[1].append(c)
        for r in self.conn.execute(
                "SELECT trial, level, rate, seconds, samples FROM trial ORDER BY trial"):
            codes, corr = outcomes.get(r[0], ([], []))
            yield TrialRecord(
                r[0], r[1], r[2], tuple(faults.get(r[0], [])), np.array(codes, np.uint8),
                None if not corr or corr[0] is None else np.array(corr, bool), r[3])

    def close(self) -> None:
        self.flush()
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fault_rows(store: ResultStore) -> Sequence[tuple[Any, ...]]:
    """``(trial, site, kind, layer, sample, bits_json)`` for every stored fault."""
    return store.conn.execute(
        "SELECT trial, site, kind, layer, sample, bits FROM fault ORDER BY trial, ordinal"
    ).fetchall()
