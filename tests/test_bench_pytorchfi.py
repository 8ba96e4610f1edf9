"""scripts/bench_pytorchfi.py --quick: the same faults through both tools give the same
outcomes, and the JSON has every figure (its timings are measured by running the script, not
asserted here: at a few milliseconds per quick trial they are noise-bound)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("pytorchfi")


def test_bench_pytorchfi_quick(tmp_path: Path) -> None:
    out = tmp_path / "pfi.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_pytorchfi.py"), "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    r = json.loads(out.read_text())
    assert r["quick"] and r["golden_top1_equal"]
    assert 0 <= r["golden_max_abs_logit_diff"] < 1e-5
    assert r["golden_s"]["ours"] > 0 and r["golden_s"]["pytorchfi"] > 0
    assert r["cpu_count"] >= 1 and r["platform"]
    assert r["versions"]["pytorchfi"] == "0.6.0" and r["versions"]["torch"]
    samples = r["sizes"]["samples"]
    cells = {(c["target"], c["bits"]): c for c in r["cells"]}
    assert set(cells) == {(t, b) for t in ("weights", "activations") for b in ("all", "0")}
    for (target, bits), c in cells.items():
        assert c["k"] == 100
        for tool in ("ours", "pytorchfi"):
            t = c[tool]
            assert "error" not in t, t.get("error")
            assert t["t_n1_s"] > 0 and t["t_n2_s"] > 0 and t["n2"] == 3
            assert isinstance(t["per_trial_s"], float)
            assert t["in_process_trial_s_median"] > 0
            assert sum(t["outcomes"].values()) == 3 * samples
        ag = c["agreement"]
        assert ag["trials_compared"] == 3 and ag["inputs_compared"] == 3 * samples
        # top-1 agrees wherever neither tool reports a NaN/Inf (None: there is no such input)
        assert ag["top1_changed_agreement"] in (1.0, None), (target, bits, ag)
        if ag["top1_changed_agreement"] is None:
            assert c["pytorchfi"]["outcomes"]["due"] == 3 * samples or \
                c["ours"]["outcomes"]["due"] == 3 * samples
        if target == "weights":  # the same four outcome counts, trial by trial
            assert ag["trials_same_counts"] == 3, (bits, ag["mismatched_trials"])
        if bits == "0":  # bit 0 of a finite float never gives a NaN or Inf
            assert c["ours"]["outcomes"]["due"] == c["pytorchfi"]["outcomes"]["due"] == 0
    # bits uniform in 0-31 hit top-1 somewhere; bit 0 on weights never stays masked
    assert cells[("weights", "all")]["ours"]["outcomes"]["critical_sdc"] > 0
    assert cells[("weights", "0")]["ours"]["outcomes"]["masked"] == 0
