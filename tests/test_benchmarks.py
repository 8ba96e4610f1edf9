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
