"""scripts/bench_overhead.py --quick: standalone faulty models are built, timed against the
golden model, and their mechanism twins reproduce the golden outputs (the ratios themselves
are measured by running the script, not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_bench_overhead_quick(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_overhead.py"), "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    r = json.loads(out.read_text())
    assert r["quick"] and r["cpu_count"] >= 1 and r["versions"]["onnxruntime"]
    cells = {(c["target"], c["k"]): c for c in r["cells"]}
    assert set(cells) == {(t, k) for t in ("weights", "activations") for k in (1, 1000)}
    for (target, k), c in cells.items():
        assert c["bits"] == "0" and c["pairs"] == 40
        assert c["ratio"] > 0 and c["mechanism_ratio"] > 0
        assert c["golden_median_s"] > 0 and c["faulty_median_s"] > 0
        assert c["inject_s"] >= 0 and c["model_bytes"] > 0
        if k == 1000:  # a thousand bit-0 flips reach the logits of some input
            assert c["inputs_changed"] >= 1
        if target == "weights":
            assert c["same_graph"] and c["fault_nodes"] == 0 and c["mechanism_ratio"] == 1.0
            assert c["elements_changed"] >= 1
            assert c["goal"] == 1.0
        else:
            assert 1 <= c["fault_nodes"] <= c["sites_hit"] and "mechanism" in c
    # K = 1000 activation faults spread over (nearly) every activation tensor
    assert cells[("activations", 1000)]["sites_hit"] >= 10
