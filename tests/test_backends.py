"""Campaign backends (issue 10): local worker processes and Ray actors give the serial
backend's results trial by trial; a worker killed mid-campaign loses no trial and runs
none twice; the driver killed mid-campaign resumes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from enpheeph_onnx.campaign import CampaignConfig, CountMode, Dataset, run_campaign
from enpheeph_onnx.campaign.backends import Backend, BackendKind
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.store import ResultStore

from .conftest import DATA, MODEL
from .helpers import assert_user_error, invoke

CFG = CampaignConfig(count=CountMode.FAULT_RATE, rates=(1e-4, 1e-3, 1e-2), trials=400, seed=4,
                     batch_size=128)


def _data() -> Dataset:
    d = np.load(DATA)
    return Dataset({"input": d["input"]}, d["labels"])


def _stored(db: Path) -> tuple[dict, dict, list, dict]:
    """Outcomes, faults (encoded), trial rows without the timing, workers."""
    with ResultStore.open(db) as s:
        ids = s._site_ids()
        outcomes = {t: (c.tobytes(), None if k is None else k.tobytes())
                    for t, c, k in s.outcome_sets()}
        faults = {t: f.encode(ids) for t, f in s.fault_sets()}
        rows = [r[:-1] for r in s.conn.execute("SELECT * FROM trial ORDER BY trial")]
        return outcomes, faults, rows, s.workers()


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("serial") / "s.sqlite"
    run_campaign(MODEL, _data(), CFG, db, progress=False)
    return db


def assert_same_results(a: Path, b: Path) -> None:
    oa, fa, ra, _ = _stored(a)
    ob, fb, rb, _ = _stored(b)
    assert len(oa) == CFG.trials * len(CFG.rates)
    assert oa == ob and fa == fb and ra == rb


def test_local_workers_equal_the_serial_backend(serial: Path, tmp_path: Path) -> None:
    db = tmp_path / "l.sqlite"
    res = run_campaign(MODEL, _data(), CFG, db, progress=False,
                       backend=Backend(BackendKind.LOCAL, 2))
    assert res.backend == {"kind": "local", "workers": 2, "address": None, "restarts": 0}
    assert_same_results(serial, db)
    workers = _stored(db)[3]
    assert len(set(workers.values())) == 2 and "driver" not in workers.values()
    with ResultStore.open(db) as s:
        assert set(s.meta()["workers"]) == set(workers.values())
    assert set(_stored(serial)[3].values()) == {"driver"}


def _kill_when_trials_are_stored(db: Path, kill, errors: list) -> None:  # type: ignore[no-untyped-def]
    """Wait until some trials are committed, then ``kill()`` (True once it killed)."""
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if db.exists():
                try:
                    with sqlite3.connect(db) as c:
                        n = c.execute("SELECT count(*) FROM trial").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0
                if n >= 4 and kill():
                    return
            time.sleep(0.02)
        errors.append("nothing killed in time")
    except Exception as e:  # reported by the test
        errors.append(repr(e))


def _sigkill(pid: int | None) -> bool:
    if pid is None:
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def test_a_killed_local_worker_loses_no_trial(serial: Path, tmp_path: Path) -> None:
    db = tmp_path / "k.sqlite"
    errors: list[str] = []

    def pid() -> int | None:  # a worker process of this one (Linux /proc)
        for entry in Path("/proc").iterdir():
            try:
                if not entry.name.isdigit():
                    continue
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if ppid == os.getpid() and b"enpheeph_onnx.campaign.worker" in cmd:
                return int(entry.name)
        return None

    killer = threading.Thread(target=_kill_when_trials_are_stored,
                              args=(db, lambda: _sigkill(pid()), errors))
    killer.start()
    res = run_campaign(MODEL, _data(), CFG, db, progress=False, commit_every=0.0,
                       backend=Backend(BackendKind.LOCAL, 2))
    killer.join()
    assert not errors, errors
    assert res.backend["restarts"] == 1
    assert_same_results(serial, db)  # (a trial stored twice would fail its primary key)


def test_the_killed_driver_resumes_with_workers(serial: Path, tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite"
    args = [sys.executable, "-m", "enpheeph_onnx", "campaign", str(MODEL), "--data",
            str(DATA), "--fault-rate", "1e-4:1e-2:1", "--trials", "400", "--seed", "4",
            "--batch-size", "128", "--db", str(db), "--no-progress", "--backend", "local",
            "--workers", "2"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[str] = []
    _kill_when_trials_are_stored(db, lambda: _sigkill(p.pid), errors)
    p.wait(timeout=60)
    assert not errors and p.returncode == -signal.SIGKILL
    with sqlite3.connect(db) as c:
        stored = c.execute("SELECT count(*) FROM trial").fetchone()[0]
    assert 0 < stored < 1200
    r = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_same_results(serial, db)


def test_backend_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(EnpheephError, match="at least 1 worker"):
        Backend(BackendKind.LOCAL, 0)
    with pytest.raises(EnpheephError, match="--backend ray"):
        Backend(BackendKind.LOCAL, 2, "auto")
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--workers", "2"),
                      "--workers needs --backend local")
    assert_user_error(*invoke("campaign", MODEL, "--data", DATA, "--backend", "local",
                              "--workers", "0"), "--workers")


# -- Ray ------------------------------------------------------------------------------------

try:  # the Ray tests skip without Ray; the local ones above run anyway
    import ray
except ImportError:
    ray = None


@pytest.fixture(scope="module")
def ray_cluster():  # type: ignore[no-untyped-def]
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'enpheeph-onnx[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_actors_equal_the_serial_backend(serial: Path, tmp_path: Path,
                                             ray_cluster) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "r.sqlite"
    res = run_campaign(MODEL, _data(), CFG, db, progress=False,
                       backend=Backend(BackendKind.RAY, 2))
    assert res.backend["kind"] == "ray" and res.backend["restarts"] == 0
    assert_same_results(serial, db)
    workers = set(_stored(db)[3].values())
    assert len(workers) == 2 and all(w.startswith("ray:") for w in workers)
    assert ray_cluster.is_initialized()  # a connection made before is kept


def test_a_killed_ray_actor_loses_no_trial(serial: Path, tmp_path: Path,
                                           ray_cluster) -> None:  # type: ignore[no-untyped-def]
    db = tmp_path / "rk.sqlite"
    errors: list[str] = []
    killed: list[str] = []

    def kill_actor() -> bool:
        names = [a["name"] for a in ray_cluster.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("enpheeph-")]
        if names:
            ray_cluster.kill(ray_cluster.get_actor(names[0]))
            killed.append(names[0])
        return bool(names)

    killer = threading.Thread(target=_kill_when_trials_are_stored,
                              args=(db, kill_actor, errors))
    killer.start()
    res = run_campaign(MODEL, _data(), CFG, db, progress=False, commit_every=0.0,
                       backend=Backend(BackendKind.RAY, 2))
    killer.join()
    assert not errors and killed and res.backend["restarts"] >= 1
    assert_same_results(serial, db)


def test_ray_missing_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(EnpheephError, match=r"needs Ray: pip install 'enpheeph-onnx\[ray\]'"):
        run_campaign(MODEL, _data(), CFG, tmp_path / "x.sqlite", progress=False,
                     backend=Backend(BackendKind.RAY, 2))
    assert not (tmp_path / "x.sqlite").exists()
