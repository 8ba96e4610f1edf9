"""Crash safety (issue 9): a campaign killed with SIGKILL at several points and resumed
each time ends with the database an uninterrupted run gives; the same seed gives the same
results at any --batch-size and thread count."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx.store import ResultStore

from .conftest import DATA, MODEL

ARGS = ["campaign", str(MODEL), "--data", str(DATA), "--fault-rate", "1e-7:1e-1:2",
        "--trials", "500", "--seed", "5", "--no-progress"]


def _table(db: Path) -> dict[str, object]:
    store = ResultStore.open(db)
    try:
        t = store.trial_table()
        faults = {n: fs.index.tobytes() + fs.bits.tobytes() for n, fs in store.fault_sets()}
    finally:
        store.close()
    cols = {k: getattr(t, k) for k in ("trial", "level", "rate", "accuracy", "samples",
                                       "counts", "n_faults", "layer", "bit")}
    return {**{k: np.asarray(v).tolist() for k, v in cols.items()},
            "first_faults": list(t.first_faults), "faults": faults}


def _done(db: Path) -> int:
    """Trials stored so far (read while a campaign may be writing: WAL journal)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM trial").fetchone()[0])
    except sqlite3.Error:  # the schema is not written yet
        return 0


def _cli(*extra: str) -> list[str]:
    return [sys.executable, "-m", "enpheeph_onnx", *ARGS, *extra]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path: Path
                                                                          ) -> None:
    whole = tmp_path / "whole.sqlite"
    subprocess.run(_cli("--db", str(whole)), check=True, capture_output=True, timeout=300)
    db = tmp_path / "killed.sqlite"
    rng = np.random.default_rng(0)
    kills, progress = 0, [0]
    while kills < 5:
        p = subprocess.Popen(_cli("--db", str(db), "--resume"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        # wait until this run has stored a trial, then kill at a random moment after it
        deadline = time.monotonic() + 60
        while p.poll() is None and time.monotonic() < deadline and _done(db) <= progress[-1]:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.4)))
        if p.poll() is not None:
            break  # it finished first
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        progress.append(_done(db))
    assert kills == 5 and progress == sorted(progress) and progress[-1] > 0, progress
    subprocess.run(_cli("--db", str(db), "--resume"), check=True, capture_output=True,
                   timeout=300)
    assert _table(db) == _table(whole)


def test_batch_size_and_threads_do_not_change_the_results(tmp_path: Path) -> None:
    tables = []
    for i, batch in enumerate((512, 7, 100)):
        db = tmp_path / f"r{i}.sqlite"
        subprocess.run([sys.executable, "-m", "enpheeph_onnx", "campaign", str(MODEL),
                        "--data", str(DATA), "--fault-rate", "1e-4,1e-2", "--trials", "6",
                        "--seed", "3", "--no-progress", "--batch-size", str(batch),
                        "--db", str(db)], check=True, capture_output=True, timeout=300)
        tables.append(_table(db))
    assert tables[0] == tables[1] == tables[2]
    # intra-op threads (the API's ``threads``): the same outputs, bit for bit
    from enpheeph_onnx import discover_sites, load_model
    from enpheeph_onnx.campaign import CampaignConfig
    from enpheeph_onnx.campaign.config import SiteSelection
    from enpheeph_onnx.campaign.sampling import Sampler
    from enpheeph_onnx.engine import FaultEngine
    from enpheeph_onnx.sites import SiteKind

    m = load_model(MODEL)
    x = {"input": dict(np.load(DATA))["input"]}
    for kinds in ((SiteKind.WEIGHT,), (SiteKind.ACTIVATION,)):
        sites = [s for s in discover_sites(m) if s.kind in kinds]
        cfg = CampaignConfig(selection=SiteSelection(kinds=kinds), faults_per_trial=20,
                             trials=4, seed=1)
        sam = Sampler(sites, cfg, len(x["input"]))
        one, two = FaultEngine(m, sites, threads=1), FaultEngine(m, sites, threads=2)
        for t in range(4):
            fs = sam.sample(t)
            assert one.run(x, fs, 50)["logits"].tobytes() == two.run(x, fs, 50)[
                "logits"].tobytes()
