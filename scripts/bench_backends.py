"""Campaign backends side by side: serial, local workers (1 and 2), Ray actors (2).

Method: the CLI in a subprocess, wall clock (:func:`time.perf_counter`), on the shipped
digits CNN and its 360 test inputs: ``campaign models/digits_cnn.onnx --data
models/digits_test.npz --fault-rate 1e-4:1e-2:1 --trials N --seed 4 --no-progress
--backend B [--workers W]`` for N = N1 and N2 trials per level (3 levels), and

    per-trial = (t(N2) - t(N1)) / (3 (N2 - N1)),   speed-up(B) = per-trial(serial) / per-trial(B)

(the difference cancels start-up: interpreter, imports, worker start, golden runs). Every
run's results are checked equal to the serial run's (outcomes of every trial). Also
measured: how much work this machine does with 2 processes at once (a pure-Python loop,
alone and twice in parallel: ``parallel_throughput`` = 2 x t(alone) / t(two at once)),
which bounds what 2 workers can gain. Ray rows only where Ray is installed. Output: JSON
(``--out``) and a Markdown table.

Reproduce::

    python scripts/bench_backends.py --out docs/bench_backends.json     # ~2 min
    python scripts/bench_backends.py --quick --out /tmp/bb.json         # ~45 s
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "digits_cnn.onnx"
DATA = ROOT / "models" / "digits_test.npz"


def _burn(n: int) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t


def parallel_throughput(n: int = 10_000_000) -> float:
    """2 x t(one loop alone) / t(two loops at once, in two processes)."""
    alone = _burn(n)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [1000, 1000])  # both processes up before the clock starts
        t = time.perf_counter()
        pool.map(_burn, [n, n])
        both = time.perf_counter() - t
    return 2 * alone / both


def campaign(work: Path, trials: int, backend: list[str], tag: str) -> tuple[float, Path]:
    db = work / f"{tag}-{trials}.sqlite"
    db.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "enpheeph_onnx", "campaign", str(MODEL), "--data", str(DATA),
            "--fault-rate", "1e-4:1e-2:1", "--trials", str(trials), "--seed", "4",
            "--no-progress", "--db", str(db), *backend]
    t = time.perf_counter()
    r = subprocess.run(argv, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.strip().splitlines()[-1]}")
    return seconds, db


def outcomes(db: Path) -> dict[int, bytes]:
    with sqlite3.connect(db) as c:
        return dict(c.execute("SELECT trial, outcome FROM outcome_set"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_backends.json"))
    ap.add_argument("--quick", action="store_true", help="N1/N2 = 5/80 trials per level")
    args = ap.parse_args(argv)
    n1, n2 = (5, 80) if args.quick else (20, 400)
    try:
        import ray  # noqa: F401

        have_ray = True
    except ImportError:
        have_ray = False
    rows: dict[str, list[str]] = {"serial": [], "local, 1 worker": ["--backend", "local",
                                                                    "--workers", "1"],
                                  "local, 2 workers": ["--backend", "local", "--workers", "2"]}
    if have_ray:
        rows["ray, 2 actors"] = ["--backend", "ray", "--workers", "2"]
    results: dict[str, Any] = {
        "method": __doc__, "quick": args.quick, "n1": n1, "n2": n2, "levels": 3,
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "parallel_throughput": parallel_throughput(3_000_000 if args.quick else 10_000_000),
        "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reference: dict[int, bytes] | None = None
        for name, backend in rows.items():
            t1, _ = campaign(work, n1, backend, name.replace(" ", "_").replace(",", ""))
            t2, db = campaign(work, n2, backend, name.replace(" ", "_").replace(",", ""))
            got = outcomes(db)
            if reference is None:
                reference = got
            same = got == reference
            per = (t2 - t1) / (3 * (n2 - n1))
            results["rows"][name] = {"t_n1_s": t1, "t_n2_s": t2, "per_trial_s": per,
                                     "same_as_serial": same}
            print(f"{name}: {t1:.2f} s / {t2:.2f} s, {1e3 * per:.2f} ms per trial, "
                  f"same results: {same}", file=sys.stderr)
    base = results["rows"]["serial"]["per_trial_s"]
    for r in results["rows"].values():
        r["speedup_vs_serial"] = (base / r["per_trial_s"] if r["per_trial_s"] > 0 and base > 0
                                  else None)
    one = results["rows"]["local, 1 worker"]["per_trial_s"]
    two = results["rows"]["local, 2 workers"]["per_trial_s"]
    results["speedup_2_over_1_local"] = one / two if one > 0 and two > 0 else None
    args.out.write_text(json.dumps(results, indent=1))
    def num(v: float | None, scale: float = 1.0) -> str:
        return "-" if v is None else f"{scale * v:.2f}"

    print("| backend | per trial (ms) | speed-up vs serial | same results |")
    print("|---|---|---|---|")
    for name, r in results["rows"].items():
        print(f"| {name} | {num(r['per_trial_s'], 1e3)} | {num(r['speedup_vs_serial'])} | "
              f"{r['same_as_serial']} |")
    print(f"\n2 local workers over 1: {num(results['speedup_2_over_1_local'])}x; this "
          f"machine's 2-process throughput: {results['parallel_throughput']:.2f}x one process")
    return 0 if all(r["same_as_serial"] for r in results["rows"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
