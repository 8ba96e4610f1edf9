"""Benchmark the columnar fault path from outside: storage, summary, resume and plans.

Every figure is the wall time (and peak RSS) of a separate ``enpheeph-onnx`` process, so it
includes interpreter start, imports, SQLite and everything else a user waits for:

1. a campaign of ``--trials`` trials x ``--faults`` weight faults per trial (``--bits 0``) on the
   shipped digits CNN, stored in SQLite: database bytes per stored fault;
2. ``report`` of that database (summary + plots + summary.md) and a Python process that only
   loads the summary (``load_summary``): seconds and peak RSS;
3. ``campaign --resume`` of the finished campaign (nothing left to run): seconds;
4. ``inject --plan`` of a binary plan of ``--plan-faults`` weight faults on a synthetic MLP of
   ``--params`` parameters, and of a JSON plan of ``--json-faults`` weight faults: seconds.

Usage: ``python scripts/bench_store.py [--quick] [--out results.json]``. The issue's targets
(issue 7): 100 trials x 100k faults summarised in <= 3 s and <= 1 GB, resume <= 2 s,
<= 8 bytes per fault, a 1,000,000-fault plan on a >= 10M-parameter model injected in <= 5 s,
a 100,000-fault JSON plan in <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "enpheeph_onnx"]
MODEL = ROOT / "models" / "digits_cnn.onnx"
DATA = ROOT / "models" / "digits_test.npz"


def timed(cmd: list[str]) -> float:
    """Wall seconds of one child process; raises on a non-zero exit."""
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} ... failed: {r.stderr.strip()[-300:]}")
    return seconds


def peak_rss_of(code: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``python -c code``, measured inside the child."""
    wrapped = (f"import resource, time\nt = time.perf_counter()\n{code}\n"
               "print(time.perf_counter() - t, "
               "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    r = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True,
                       check=True)
    seconds, rss = r.stdout.split()[-2:]
    return float(seconds), float(rss)


def mlp(params: int, path: Path) -> int:
    """A one-layer MLP ``input [batch, 1024] -> Gemm -> output`` with about ``params``
    float32 weights; returns the parameter count."""
    out = max(1, params // 1024)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, out), dtype=np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"], name="fc")], "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", out])],
        [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 26)])
    m.ir_version = 10
    onnx.save(m, path)
    return int(w.size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test, ~20 s)")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--faults", type=int, default=100_000)
    ap.add_argument("--params", type=int, default=10_240_000)
    ap.add_argument("--plan-faults", type=int, default=1_000_000)
    ap.add_argument("--json-faults", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.faults = 4, 2000
        args.params, args.plan_faults, args.json_faults = 200_000, 20_000, 2000
    res: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                           "cpus": os.cpu_count(), "quick": args.quick,
                           "trials": args.trials, "faults_per_trial": args.faults}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "r.sqlite"
        camp = [*CLI, "campaign", str(MODEL), "--data", str(DATA), "--faults-per-trial",
                str(args.faults), "--bits", "0", "--trials", str(args.trials), "--seed", "0",
                "--db", str(db), "--no-progress"]
        res["campaign_s"] = timed(camp)
        size = sum(p.stat().st_size for p in work.glob("r.sqlite*"))
        res["db_bytes"] = size
        res["db_bytes_per_fault"] = size / (args.trials * args.faults)
        res["summary_s"], res["summary_rss_mib"] = peak_rss_of(
            f"from enpheeph_onnx.campaign import load_summary; load_summary({str(db)!r})")
        res["report_s"] = timed([*CLI, "report", str(db), "-o", str(work / "report")])
        res["resume_s"] = timed([*camp, "--resume"])

        model = work / "mlp.onnx"
        res["mlp_params"] = mlp(args.params, model)
        from enpheeph_onnx.campaign import CampaignConfig, Sampler, select_sites
        from enpheeph_onnx.faults import FaultPlan
        from enpheeph_onnx.model import load_model
        from enpheeph_onnx.sites import discover_sites

        proto = load_model(model)
        for key, n in (("plan", args.plan_faults), ("json", args.json_faults)):
            cfg = CampaignConfig(faults_per_trial=n, bits=tuple(range(31)), trials=1)
            sites = select_sites(discover_sites(proto), cfg)
            fs = Sampler(sites, cfg, 1).sample(0)
            path = work / ("plan.npz" if key == "plan" else "plan.json")
            if key == "plan":
                fs.save_npz(path)
            else:
                path.write_text(FaultPlan(fs.to_faults({s.name: len(s.shape)
                                                        for s in sites})).dumps())
            res[f"inject_{key}_faults"] = n
            res[f"inject_{key}_s"] = timed(
                [*CLI, "inject", str(model), "--plan", str(path), "-o", str(work / "f.onnx")])
    print(json.dumps(res, indent=1))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
