"""SQLite results store (stdlib ``sqlite3``, WAL journal). All of the project's SQL is here.

One file holds one campaign: its resolved configuration and provenance (key/value rows),
its fault sites, then one row per trial with the trial's faults and per-input outcomes as
compact columnar blobs. Trials are committed in batches, each trial with its faults and
outcomes in the same transaction, so an interrupted campaign (Ctrl-C, SIGKILL, power
loss) loses at most the uncommitted batch, which ``--resume`` recomputes. Schema::

    campaign(key TEXT PRIMARY KEY, value TEXT)      -- JSON values: config, sha256, versions
    site(id INTEGER PRIMARY KEY, name TEXT UNIQUE, kind TEXT, layer TEXT, rank INTEGER)
    trial(trial INTEGER PRIMARY KEY, level INTEGER, rate REAL,
          stratum_layer TEXT, stratum_bit INTEGER,   -- stratified campaigns, else NULL
          accuracy REAL, samples INTEGER, masked INTEGER, tolerable_sdc INTEGER,
          critical_sdc INTEGER, due INTEGER, n_faults INTEGER,
          layer TEXT, bit INTEGER,                  -- the one layer / bit all faults hit
          first_faults TEXT, seconds REAL)
    fault_set(trial INTEGER PRIMARY KEY, layout TEXT, data BLOB)
    outcome_set(trial INTEGER PRIMARY KEY, outcome BLOB, correct BLOB)
    worker(trial INTEGER PRIMARY KEY, name TEXT)    -- who ran it: driver, host:pid, ray:...
    score_set(trial INTEGER PRIMARY KEY, score BLOB) -- a user metric's per-input scores

``fault_set`` holds a trial's faults as columns (:meth:`FaultSet.encode`: site id, one
column per index dimension shifted by one so that 0 is ``*``, model, bit, value — each in
the smallest unsigned type, no compression pass; 4-7 bytes per fault); it is absent with
``--store-faults none`` (the faults are reproducible from the seed). ``outcome_set.outcome``
is the ``uint8`` :class:`~enpheeph_onnx.campaign.outcomes.Outcome` code of each input,
``correct`` the packed top-1-correct bits (NULL without labels); ``score_set.score`` the
``float64`` per-input scores of a ``--metric`` that returns them. ``trial.accuracy`` is the
trial's *score*: its top-1 accuracy with labels, the metric's mean score when the metric
scores, else the fraction of inputs that are neither critical SDC nor DUE (``acceptable``);
the campaign key ``score`` names which. Everything a summary needs is in the ``trial``
table, so summarising and resuming read no fault.
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
from .faultset import FaultSet

SCHEMA_VERSION = 3
SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS site (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    layer TEXT NOT NULL, rank INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS trial (
    trial INTEGER PRIMARY KEY, level INTEGER NOT NULL, rate REAL, stratum_layer TEXT,
    stratum_bit INTEGER, accuracy REAL, samples INTEGER NOT NULL, masked INTEGER NOT NULL,
    tolerable_sdc INTEGER NOT NULL, critical_sdc INTEGER NOT NULL, due INTEGER NOT NULL,
    n_faults INTEGER NOT NULL, layer TEXT, bit INTEGER, first_faults TEXT NOT NULL,
    seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS fault_set (
    trial INTEGER PRIMARY KEY, layout TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outcome_set (
    trial INTEGER PRIMARY KEY, outcome BLOB NOT NULL, correct BLOB);
CREATE TABLE IF NOT EXISTS worker (trial INTEGER PRIMARY KEY, name TEXT NOT NULL);
"""
WORKER_TABLE = ("CREATE TABLE IF NOT EXISTS worker "
                "(trial INTEGER PRIMARY KEY, name TEXT NOT NULL)")
"""Which worker ran each trial (``driver`` for the serial backend); created on first write
in databases from before it existed, so they stay readable and resumable."""
SCORE_TABLE = ("CREATE TABLE IF NOT EXISTS score_set "
               "(trial INTEGER PRIMARY KEY, score BLOB NOT NULL)")
"""Per-input scores of a user metric; created on the first scored trial."""
OUTCOMES = ("masked", "tolerable_sdc", "critical_sdc", "due")
TRIAL_COLUMNS = ("trial", "level", "rate", "stratum_layer", "stratum_bit", "accuracy",
                 "samples", "masked", "tolerable_sdc", "critical_sdc", "due", "n_faults",
                 "layer", "bit", "first_faults", "seconds")


@dataclass(frozen=True)
class SiteInfo:
    """A fault site as the store records it."""

    name: str
    kind: str
    layer: str
    rank: int


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial.

    Attributes:
        trial: global trial number.
        level: index of the fault rate (0 for a fixed fault count).
        rate: the fault rate or bit error rate of the level, ``None`` for a fixed count.
        stratum_layer, stratum_bit: the stratum of a stratified campaign, else ``None``.
        faults: the injected faults, in order.
        outcomes: ``uint8 [samples]`` outcome codes (0 masked, 1 tolerable SDC,
            2 critical SDC, 3 DUE).
        correct: ``bool [samples]`` top-1 equals the label (never for a DUE), or ``None``
            without labels.
        scores: ``float64 [samples]`` a user metric's per-input scores, or ``None``.
        score: the trial's score when neither ``scores`` nor ``correct`` gives it (the
            fraction of acceptable inputs of an unlabelled campaign), else ``None``.
        seconds: wall time of the faulty run.
        layer, bit: the single layer / bit position that every fault hits (exclusive
            attribution), else ``None``.
        first_faults: the text of the first faults (for tables).
    """

    trial: int
    level: int
    rate: float | None
    faults: FaultSet
    outcomes: np.ndarray
    correct: np.ndarray | None
    seconds: float
    stratum_layer: str | None = None
    stratum_bit: int | None = None
    layer: str | None = None
    bit: int | None = None
    first_faults: tuple[str, ...] = ()
    scores: np.ndarray | None = None
    score: float | None = None

    @property
    def samples(self) -> int:
        return len(self.outcomes)

    def counts(self) -> np.ndarray:
        """``int64 [4]``: masked, tolerable SDC, critical SDC, DUE."""
        return np.bincount(self.outcomes, minlength=4)[:4].astype(np.int64)

    @property
    def accuracy(self) -> float | None:
        """The trial's score (the ``trial.accuracy`` column): the mean of ``scores``, else
        top-1 accuracy, else ``score``."""
        if self.scores is not None:
            return float(np.mean(self.scores)) if len(self.scores) else None
        if self.correct is not None:
            return float(np.mean(self.correct))
        return self.score


@dataclass(frozen=True)
class TrialTable:
    """The ``trial`` table as columns (one row per trial, in trial order); what summaries
    and reports read. Missing values: NaN (floats), -1 (ints), ``None`` (text)."""

    trial: np.ndarray
    level: np.ndarray
    rate: np.ndarray
    stratum_layer: np.ndarray
    stratum_bit: np.ndarray
    accuracy: np.ndarray
    samples: np.ndarray
    counts: np.ndarray
    n_faults: np.ndarray
    layer: np.ndarray
    bit: np.ndarray
    first_faults: tuple[str, ...]
    seconds: np.ndarray

    def __len__(self) -> int:
        return len(self.trial)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> TrialTable:
        cols = list(zip(*rows, strict=True)) if rows else [() for _ in TRIAL_COLUMNS]
        c = dict(zip(TRIAL_COLUMNS, cols, strict=True))

        def num(name: str, dt: Any, missing: float) -> np.ndarray:
            return np.array([missing if v is None else v for v in c[name]], dtype=dt)

        return cls(
            num("trial", np.int64, -1), num("level", np.int64, -1),
            num("rate", np.float64, np.nan),
            np.array(c["stratum_layer"], dtype=object), num("stratum_bit", np.int64, -1),
            num("accuracy", np.float64, np.nan), num("samples", np.int64, 0),
            np.stack([num(k, np.int64, 0) for k in OUTCOMES], axis=1).reshape(-1, 4),
            num("n_faults", np.int64, 0), np.array(c["layer"], dtype=object),
            num("bit", np.int64, -1), tuple(c["first_faults"]), num("seconds", np.float64, 0))

    @classmethod
    def from_records(cls, records: Sequence[TrialRecord]) -> TrialTable:
        return cls.from_rows([_trial_row(r) for r in records])

    def take(self, rows: np.ndarray) -> TrialTable:
        idx = np.asarray(rows)
        return TrialTable(self.trial[idx], self.level[idx], self.rate[idx],
                          self.stratum_layer[idx], self.stratum_bit[idx], self.accuracy[idx],
                          self.samples[idx], self.counts[idx], self.n_faults[idx],
                          self.layer[idx], self.bit[idx],
                          tuple(np.array(self.first_faults, dtype=object)[idx].tolist()),
                          self.seconds[idx])


def _trial_row(rec: TrialRecord) -> tuple[Any, ...]:
    c = rec.counts()
    return (rec.trial, rec.level, rec.rate, rec.stratum_layer, rec.stratum_bit, rec.accuracy,
            rec.samples, int(c[0]), int(c[1]), int(c[2]), int(c[3]), len(rec.faults),
            rec.layer, rec.bit, json.dumps(list(rec.first_faults)), rec.seconds)


class ResultStore:
    """An open results database: :meth:`create` a new one, :meth:`open` an existing one."""

    def __init__(self, path: Path, conn: sqlite3.Connection, store_faults: bool = True) -> None:
        self.path = path
        self.conn = conn
        self.store_faults = store_faults
        self._pending: list[TrialRecord] = []
        self._workers: list[str] = []
        self._ids: dict[str, int] | None = None

    @classmethod
    def create(cls, path: str | os.PathLike[str], meta: dict[str, Any],
               sites: Sequence[SiteInfo], store_faults: bool = True) -> ResultStore:
        """Create ``path`` and write the campaign metadata and site table.

        Raises:
            EnpheephError: the file exists or its folder does not.
        """
        p = Path(path)
        if p.exists():
            raise EnpheephError(
                f"results database {p} already exists: continue it with --resume, or choose "
                "another -o/--output path"
            )
        from .model import require_folder

        require_folder(p.parent, "folder of -o/--output")
        conn = sqlite3.connect(p)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany("INSERT INTO campaign VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in
                              {**meta, "schema_version": SCHEMA_VERSION}.items()])
            conn.executemany("INSERT INTO site VALUES (?, ?, ?, ?, ?)",
                             [(i, s.name, s.kind, s.layer, s.rank) for i, s in enumerate(sites)])
        return cls(p, conn, store_faults)

    @classmethod
    def open(cls, path: str | os.PathLike[str], store_faults: bool = True) -> ResultStore:
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
            raise EnpheephError(f"{p} was written by another version of enpheeph-onnx (schema "
                                f"{json.loads(version[0]) if version else '?'}, this version "
                                f"reads {SCHEMA_VERSION}); re-run the campaign into a new "
                                "-o/--output")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return cls(p, conn, store_faults)

    # -- metadata and sites ---------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM campaign")}

    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO campaign VALUES (?, ?)",
                              (key, json.dumps(value)))

    def sites(self) -> list[SiteInfo]:
        return [SiteInfo(*row) for row in self.conn.execute(
            "SELECT name, kind, layer, rank FROM site ORDER BY id")]

    def _site_ids(self) -> dict[str, int]:
        if self._ids is None:
            self._ids = {name: i for i, name in self.conn.execute("SELECT id, name FROM site")}
        return self._ids

    # -- trials ---------------------------------------------------------------------------

    def done_trials(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT trial FROM trial")}

    def add(self, rec: TrialRecord, worker: str = "driver") -> None:
        """Queue a trial (and the name of the worker that ran it); it is written at the
        next :meth:`flush`."""
        self._pending.append(rec)
        self._workers.append(worker)

    def flush(self) -> None:
        """Commit the queued trials, each with its faults and outcomes, in one transaction."""
        if not self._pending:
            return
        ids = self._site_ids()
        with self.conn:
            self.conn.executemany(f"INSERT INTO trial VALUES ({','.join('?' * 16)})",
                                  [_trial_row(r) for r in self._pending])
            if self.store_faults:
                self.conn.executemany("INSERT INTO fault_set VALUES (?, ?, ?)",
                                      [(r.trial, *r.faults.encode(ids)) for r in self._pending])
            self.conn.executemany(
                "INSERT INTO outcome_set VALUES (?, ?, ?)",
                [(r.trial, r.outcomes.astype(np.uint8).tobytes(),
                  None if r.correct is None else np.packbits(r.correct).tobytes())
                 for r in self._pending])
            scored = [(r.trial, r.scores.astype(np.float64).tobytes())
                      for r in self._pending if r.scores is not None]
            if scored:
                self.conn.execute(SCORE_TABLE)
                self.conn.executemany("INSERT INTO score_set VALUES (?, ?)", scored)
            self.conn.execute(WORKER_TABLE)
            self.conn.executemany("INSERT INTO worker VALUES (?, ?)",
                                  [(r.trial, w) for r, w in zip(self._pending, self._workers,
                                                                strict=True)])
        self._pending.clear()
        self._workers.clear()

    def trial_table(self) -> TrialTable:
        """Every stored trial's row, as columns (no fault is read)."""
        return TrialTable.from_rows(self.conn.execute(
            f"SELECT {', '.join(TRIAL_COLUMNS)} FROM trial ORDER BY trial").fetchall())

    def workers(self) -> dict[int, str]:
        """Which worker ran each stored trial (``driver``: the serial backend); empty for
        databases written before workers were recorded."""
        try:
            return dict(self.conn.execute("SELECT trial, name FROM worker"))
        except sqlite3.OperationalError:  # no such table
            return {}

    def fault_sets(self) -> Iterator[tuple[int, FaultSet]]:
        """``(trial, faults)`` for every trial whose faults are stored, in trial order."""
        names = [s.name for s in self.sites()]
        for trial, layout, data in self.conn.execute(
                "SELECT trial, layout, data FROM fault_set ORDER BY trial"):
            yield trial, self._decode(trial, layout, data, names)

    def _decode(self, trial: int, layout: str, data: bytes, names: list[str]) -> FaultSet:
        try:
            fs = FaultSet.decode(layout, data, names)
            if len(fs) and (fs.site.max() >= len(names) or fs.site.min() < 0):
                raise ValueError("site id out of range")
            return fs
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise EnpheephError(f"results database {self.path} is damaged: the faults of "
                                f"trial {trial} cannot be read ({e})") from None

    def faults(self, trial: int) -> FaultSet | None:
        """The faults of one trial, or ``None`` when they were not stored."""
        row = self.conn.execute("SELECT layout, data FROM fault_set WHERE trial = ?",
                                (trial,)).fetchone()
        if row is None:
            return None
        return self._decode(trial, row[0], row[1], [s.name for s in self.sites()])

    def outcome_sets(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """``(trial, outcomes uint8[N], correct bool[N] | None)`` in trial order."""
        for trial, samples, outcome, correct in self.conn.execute(
                "SELECT o.trial, t.samples, o.outcome, o.correct FROM outcome_set o "
                "JOIN trial t ON t.trial = o.trial ORDER BY o.trial"):
            codes = np.frombuffer(outcome, np.uint8)
            if len(codes) != samples or (len(codes) and codes.max() > 3) or (
                    correct is not None and len(correct) != (samples + 7) // 8):
                raise EnpheephError(f"results database {self.path} is damaged: the outcomes "
                                    f"of trial {trial} do not match its {samples} inputs")
            yield trial, codes, (None if correct is None else np.unpackbits(
                np.frombuffer(correct, np.uint8), count=len(codes)).astype(bool))

    def score_sets(self) -> dict[int, np.ndarray]:
        """``trial -> float64 [samples]`` per-input metric scores (empty when none)."""
        try:
            rows = self.conn.execute("SELECT trial, score FROM score_set").fetchall()
        except sqlite3.OperationalError:  # no such table: no metric scores
            return {}
        return {t: np.frombuffer(b, np.float64) for t, b in rows}

    def close(self) -> None:
        self.flush()
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["OUTCOMES", "SCHEMA_VERSION", "ResultStore", "SiteInfo", "TrialRecord", "TrialTable"]
