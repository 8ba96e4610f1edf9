"""The benchmark scripts run (their --quick variants) and report sane figures; the timings
themselves are measured by running the scripts, not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_bench_store_quick(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_store.py"), "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    r = json.loads(out.read_text())
    assert r["quick"] and r["trials"] == 4 and r["faults_per_trial"] == 2000
    assert 0 < r["db_bytes_per_fault"] < 50  # 4 trials x 2000 faults: page overhead dominates
    assert r["inject_plan_faults"] == 20_000 and r["inject_json_faults"] == 2000
    assert all(r[k] > 0 for k in ("campaign_s", "summary_s", "report_s", "resume_s",
                                  "inject_plan_s", "inject_json_s"))


def test_bench_campaign_quick(tmp_path: Path) -> None:
    """The outside-method campaign benchmark: every (target, K) cell measured, with the
    database, report, resume and peak-memory figures it prints."""
    out = tmp_path / "campaign.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_campaign.py"), "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=900)
    r = json.loads(out.read_text())
    assert r["quick"] and r["golden_s"] > 0 and r["golden_extended_s"] > 0
    assert r["golden_process_rss_mib"] > 10
    cells = {(c["target"], c["k"]): c for c in r["cells"]}
    assert set(cells) == {(t, k) for t in ("weights", "weights, --optimization all",
                                           "activations", "activations, --optimization all")
                          for k in (1, 100)}
    for (target, k), c in cells.items():
        assert "error" not in c, c.get("error")
        assert c["n2"] == 6 and c["t_n2_s"] > 0 and c["per_trial_s"] is not None
        assert c["rss_mib"] > r["golden_process_rss_mib"] / 4
        assert c["faults_expected"] == k * 6 and c["db_bytes"] > 0
        assert c["report_s"] > 0 and c["resume_s"] > 0
        assert ("--optimization" in c["flags"]) == target.endswith("all")


def test_bench_backends_quick(tmp_path: Path) -> None:
    """The backend benchmark runs and every backend gives the serial results."""
    out = tmp_path / "bb.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_backends.py"), "--quick",
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert {"serial", "local, 1 worker", "local, 2 workers"} <= set(res["rows"])
    assert all(row["same_as_serial"] for row in res["rows"].values())
    assert res["rows"]["serial"]["t_n2_s"] > res["rows"]["serial"]["t_n1_s"] > 0
    assert 0.2 < res["parallel_throughput"] < 2.5
