"""Campaign cost at scale, measured from outside: the CLI in a subprocess, wall clock.

Unlike ``scripts/bench_engine.py`` (which times the engine in-process), this script treats
``enpheeph-onnx`` as a black box, so that it gives comparable numbers for any version of the
code that accepts the same CLI flags (``campaign``, ``report``, ``--resume``).

Method
------

1. A 4.6M-parameter CNN is built with :mod:`onnx.helper` only (no torch): input ``input``
   float32 ``[batch, 3, 32, 32]`` (dynamic dimension ``batch``); Conv 3->64 3x3 pad 1, Relu,
   MaxPool 2; Conv 64->128, Relu, MaxPool 2; Conv 128->256, Relu (8x8); Flatten; Gemm
   16384->256, Relu; Gemm 256->10, output ``logits`` ``[batch, 10]``. Weights are He-scaled
   normal from ``numpy.random.default_rng(0)``, biases small normal (non-zero, so that no
   weight looks pruned), float32, opset 26, IR version 10, checked with :mod:`onnx.checker`.
   ``--quick`` uses a tiny model of the same structure (channels 4/8/8, FC 512->16->10).
   One untimed campaign (1 trial) and its report warm the CLI up (file cache, and
   byte-compilation unless ``PYTHONDONTWRITEBYTECODE`` is set) before anything is timed.
2. The data (``.npz``): ``input`` = 32 samples (8 with ``--quick``) uniform in [0, 1) from
   ``default_rng(1)``; ``labels`` = argmax of the golden logits computed by onnxruntime, so
   the golden accuracy is 1.0.
3. **golden** = median of 20 runs (after 3 warm-ups) of a plain onnxruntime
   ``InferenceSession`` (CPU, default session options) on all inputs at once.
4. **per-trial cost** for each row (weights / activations, each at the default
   ``--optimization extended`` and with ``--optimization all``) and fault count K per trial:
   the wall time of ``CLI campaign MODEL --data DATA --kinds KIND --faults-per-trial K
   --bits 0 --trials N --batch-size 32 --seed 0 --db DB --no-progress`` is measured for
   N = N1 and N = N2 (2 and 22; 2 and 202 at K = 1 and 2 and 102 at K = 1,000, where a trial
   costs milliseconds and 20 of them would be within the +-0.2 s noise of process start;
   quick: 2 and 6),
   and

       per-trial = (t(N2) - t(N1)) / (N2 - N1),    ratio = per-trial / golden.

   The difference cancels everything a campaign pays once (interpreter start, imports, model
   loading and instrumentation, session creation, the golden pass, the summary). Trial *t*
   draws its faults from ``SeedSequence(seed, spawn_key=(t,))``, so the N1 trials are the
   first N1 trials of the N2 campaign. When the N2 campaign of a cell is projected to take
   longer than ``--max-cell-seconds`` (projection from the N1 times, see
   :func:`projected_seconds`), N2 is reduced to ``--reduced-n2`` for that cell and the JSON
   says so (``reduced``). A failing command records the first line of its stderr instead of
   a number, and the benchmark goes on.
5. On the N2 database of each cell: **bytes/fault** = size of the DB file (plus ``-wal``
   when present), right after the campaign, divided by the faults stored (sum of K over the
   trials, = K x N2); the wall time of ``CLI report DB -o DIR`` (summary + plots); and the
   wall time of re-running the same campaign command with ``--resume`` on the finished DB.
6. Everything goes to ``--out`` (JSON; with platform, CPU count, onnxruntime version, load
   average before each cell, the golden time measured again at the end (``golden_after_s``,
   an indication of how much the machine's load changed; the ratios use ``golden_s``) and
   the git commit of the ``enpheeph_onnx`` package the CLI imports), and a
   Markdown table (rows = target, columns = K, cells = trial / golden) is printed, with
   tables for report time, resume time and bytes/fault.

Subprocesses run in the work directory (not in the repository), so that ``python -m
enpheeph_onnx`` imports the package named by ``PYTHONPATH`` or installed, never one that
happens to be in the current directory; their stdout goes to log files in the work
directory. Timer: :func:`time.perf_counter`. On a shared 2-core machine expect +-15 %.

Reproduce::

    python scripts/bench_campaign.py --quick --out /tmp/bench_quick.json   # ~1.5 min
    python scripts/bench_campaign.py --out docs/bench_campaign.json        # ~8 min
    PYTHONPATH=/tmp/before python scripts/bench_campaign.py --out results/before.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

TARGETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("weights", "weight", ()),
    ("weights, --optimization all", "weight", ("--optimization", "all")),
    ("activations", "activation", ()),
    ("activations, --optimization all", "activation", ("--optimization", "all")),
)
"""(row name, ``--kinds``, extra campaign flags)."""


@dataclass(frozen=True)
class Plan:
    """Sizes of one benchmark run (full or ``--quick``)."""

    channels: tuple[int, int, int]
    hidden: int
    samples: int
    ks: tuple[int, ...]
    n1: int
    n2: int
    n2_k1: int  # more trials where a trial costs milliseconds: t(N2) - t(N1) stays above noise
    n2_k1000: int  # the same for K <= 1,000 (a trial costs tens of milliseconds)

    def n2_for(self, k: int) -> int:
        return self.n2_k1 if k == 1 else self.n2_k1000 if k <= 1000 else self.n2


FULL = Plan(channels=(64, 128, 256), hidden=256, samples=32, ks=(1, 1000, 100000, 1000000),
            n1=2, n2=22, n2_k1=202, n2_k1000=102)
QUICK = Plan(channels=(4, 8, 8), hidden=16, samples=8, ks=(1, 100), n1=2, n2=6, n2_k1=6,
             n2_k1000=6)


# --------------------------------------------------------------------------- model and data


def build_model(channels: tuple[int, int, int], hidden: int, classes: int = 10) -> onnx.ModelProto:
    """The CNN of the module docstring, with ``channels`` conv widths and ``hidden`` FC units."""
    rng = np.random.default_rng(0)
    inits: list[TensorProto] = []

    def weight(name: str, shape: tuple[int, ...], fan_in: int) -> str:
        w = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        inits.append(numpy_helper.from_array(w, name))
        return name

    def bias(name: str, n: int) -> str:
        b = (rng.standard_normal(n) * 0.01).astype(np.float32)
        inits.append(numpy_helper.from_array(b, name))
        return name

    nodes: list[onnx.NodeProto] = []
    x, c_in = "input", 3
    for i, c_out in enumerate(channels, start=1):
        w = weight(f"conv{i}.weight", (c_out, c_in, 3, 3), c_in * 9)
        b = bias(f"conv{i}.bias", c_out)
        nodes.append(helper.make_node("Conv", [x, w, b], [f"conv{i}"], name=f"conv{i}",
                                      kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        x = f"relu{i}"
        if i < 3:
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], name=f"pool{i}",
                                          kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{i}"
        c_in = c_out
    flat = channels[2] * 8 * 8
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    w1, b1 = weight("fc1.weight", (hidden, flat), flat), bias("fc1.bias", hidden)
    nodes.append(helper.make_node("Gemm", ["flat", w1, b1], ["fc1"], name="fc1", transB=1))
    nodes.append(helper.make_node("Relu", ["fc1"], ["relu_fc1"], name="relu_fc1"))
    w2, b2 = weight("fc2.weight", (classes, hidden), hidden), bias("fc2.bias", classes)
    nodes.append(helper.make_node("Gemm", ["relu_fc1", w2, b2], ["logits"], name="fc2",
                                  transB=1))
    graph = helper.make_graph(
        nodes, "bench_scale_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 26)],
                              producer_name="bench_scale")
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def count_parameters(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def golden_seconds(model_path: Path, x: np.ndarray, runs: int = 20,
                   warmups: int = 3, extended: bool = False,
                   provider: str = "cpu") -> tuple[float, np.ndarray]:
    """Median wall time of a plain session on ``provider`` (default options; ``extended``:
    graph optimizations at ORT_ENABLE_EXTENDED and no weight pre-packing, as campaigns run
    by default) on all of ``x`` (host arrays in and out, as ``session.run`` does); logits.
    A CUDA session that fell back to CPU is refused."""
    so = ort.SessionOptions()
    if extended:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.add_session_config_entry("session.disable_prepacking", "1")
    if provider == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    sess = ort.InferenceSession(str(model_path), so, providers=PROVIDERS[provider])
    if sess.get_providers()[0] != PROVIDERS[provider][0]:
        raise SystemExit(f"onnxruntime fell back to {sess.get_providers()[0]}")
    feed = {"input": x}
    out = sess.run(None, feed)[0]
    for _ in range(warmups - 1):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), np.asarray(out)


GOLDEN_RSS_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as z:
    x = z["input"]
for _ in range(3):
    sess.run(None, {"input": x})
"""
"""Golden inference in a process of its own: its peak RSS is the memory baseline."""


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Timed:
    """One CLI invocation: wall seconds, exit status, (on failure) the error line, and the
    peak resident memory of the process (``ru_maxrss`` from ``wait4``, MiB)."""

    argv: list[str]
    seconds: float
    rc: int
    error: str | None
    rss_mib: float | None = None

    def ok(self) -> bool:
        return self.error is None


def run_cli(argv: list[str], cwd: Path, log: Path, timeout: float) -> Timed:
    """Run ``argv`` in ``cwd``, stdout and stderr to ``log``(.err); time it with perf_counter."""
    err_path = log.with_suffix(".err")
    with log.open("wb") as out, err_path.open("wb") as err:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL)
        except OSError as exc:
            return Timed(argv, time.perf_counter() - t0, -1, f"cannot start: {exc}")
        reaped: dict[str, Any] = {}

        def reap() -> None:  # wait4 gives this child's own rusage (peak RSS)
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(status=status, usage=usage, t=time.perf_counter())

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        if waiter.is_alive():
            proc.kill()
            waiter.join()
            return Timed(argv, time.perf_counter() - t0, -1, f"timed out after {timeout:.0f} s")
        seconds = reaped["t"] - t0
        rc = os.waitstatus_to_exitcode(reaped["status"])
        proc.returncode = rc
        rss = reaped["usage"].ru_maxrss / 1024  # KiB on Linux
    if rc == 0:
        return Timed(argv, seconds, rc, None, rss)
    lines = [ln.strip() for ln in err_path.read_text(errors="replace").splitlines() if ln.strip()]
    first = lines[0] if lines else f"exit status {rc}, nothing on stderr"
    return Timed(argv, seconds, rc, first)


def cli_python(prefix: list[str]) -> list[str]:
    """The interpreter that the CLI prefix runs (for locating the imported package)."""
    if "-m" in prefix:
        return prefix[: prefix.index("-m")]
    exe = shutil.which(prefix[0]) if prefix else None
    if exe:
        try:
            first = Path(exe).read_bytes()[:512].split(b"\n", 1)[0].decode()
        except (OSError, UnicodeDecodeError):
            first = ""
        if first.startswith("#!"):
            return shlex.split(first[2:])
    return [sys.executable]


def code_under_test(prefix: list[str], cwd: Path) -> dict[str, Any]:
    """Where the CLI's ``enpheeph_onnx`` lives, its version and the git commit there."""
    info: dict[str, Any] = {"python": cli_python(prefix)}
    probe = ("import enpheeph_onnx, json; print(json.dumps({'file': enpheeph_onnx.__file__, "
             "'version': getattr(enpheeph_onnx, '__version__', None)}))")
    try:
        res = subprocess.run([*info["python"], "-c", probe], cwd=cwd, capture_output=True,
                             text=True, timeout=120, check=True)
        info.update(json.loads(res.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        info["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return info
    pkg_dir = Path(info["file"]).resolve().parent
    git = ["git", "--no-optional-locks", "-C", str(pkg_dir)]
    try:
        info["git_commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--",
                                "."], capture_output=True, text=True, timeout=60,
                               check=True).stdout.strip()
        info["git_dirty_package"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


# --------------------------------------------------------------------------- measurement


def db_bytes(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def stored_faults(db: Path) -> int | None:
    """Rows of the ``fault`` table, read-only (a cross-check; None if the schema differs)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT COUNT(*) FROM fault").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return None


def projected_seconds(t_n1: float, n1: int, n2: int, per_trial_k1: float | None,
                      t_n1_k1: float | None) -> float:
    """Projected wall time of the N2 campaign of a cell from its N1 run.

    With the K = 1 cell of the same target measured (its per-trial cost and N1 time), a
    trial of this cell is estimated at ``per_trial_k1 + (t_n1 - t_n1_k1) / n1`` (the extra
    time of the N1 run is charged to its trials); otherwise at ``t_n1 / n1`` (an upper bound).
    """
    if per_trial_k1 is not None and t_n1_k1 is not None:
        per_trial = max(per_trial_k1, per_trial_k1 + (t_n1 - t_n1_k1) / n1)
    else:
        per_trial = t_n1 / n1
    return t_n1 + (n2 - n1) * per_trial


CAMPAIGN_PROVIDER = ["cpu"]
"""The ``--provider`` every measured campaign runs with (set from the command line)."""


def campaign_argv(prefix: list[str], model: Path, data: Path, kind: str, k: int, trials: int,
                  db: Path, batch: int, extra: tuple[str, ...] = ()) -> list[str]:
    return [*prefix, "campaign", str(model), "--data", str(data), "--kinds", kind,
            "--faults-per-trial", str(k), "--bits", "0", "--trials", str(trials),
            "--batch-size", str(batch), "--seed", "0", "--db", str(db), "--no-progress",
            "--provider", CAMPAIGN_PROVIDER[0], *extra]


def measure_cell(prefix: list[str], work: Path, model: Path, data: Path, target: str,
                 kind: str, k: int, plan: Plan, golden: float, k1: dict[str, Any] | None,
                 args: argparse.Namespace, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """All numbers of one (target, K) cell."""
    cell: dict[str, Any] = {"target": target, "kind": kind, "k": k, "n1": plan.n1,
                            "flags": list(extra),
                            "loadavg_before": list(os.getloadavg())
                            if hasattr(os, "getloadavg") else None}
    tag = f"{kind}{'_'.join(('', *extra)).replace('--', '')}_k{k}"

    def log(name: str) -> Path:
        return work / "logs" / f"{tag}_{name}.log"

    db1 = work / "db" / f"{tag}_n{plan.n1}.sqlite"
    r1 = run_cli(campaign_argv(prefix, model, data, kind, k, plan.n1, db1, plan.samples, extra),
                 work, log(f"n{plan.n1}"), args.timeout)
    cell["t_n1_s"] = r1.seconds if r1.ok() else None
    cell["command_n1"] = shlex.join(r1.argv)
    if not r1.ok():
        cell["error"] = f"N={plan.n1}: {r1.error}"
        print(f"  {tag}: N={plan.n1} failed: {r1.error}", flush=True)
        return cell
    print(f"  {tag}: N={plan.n1} {r1.seconds:.2f} s", flush=True)

    n2 = plan.n2_for(k)
    per_k1 = k1.get("per_trial_s") if k1 else None
    t1_k1 = k1.get("t_n1_s") if k1 else None
    projection = projected_seconds(r1.seconds, plan.n1, n2, per_k1, t1_k1)
    cell["projected_t_n2_s"] = projection
    if k > 1 and projection > args.max_cell_seconds and args.reduced_n2 < n2:
        # (K = 1 trials cost milliseconds; the projection from N1 is startup-dominated)
        n2 = max(args.reduced_n2, plan.n1 + 1)
        cell["reduced"] = (f"N2 reduced from {plan.n2} to {n2}: the {plan.n2}-trial campaign "
                           f"was projected at {projection:.0f} s > {args.max_cell_seconds:.0f} s")
        print(f"  {tag}: {cell['reduced']}", flush=True)
    cell["n2"] = n2

    db2 = work / "db" / f"{tag}_n{n2}.sqlite"
    argv2 = campaign_argv(prefix, model, data, kind, k, n2, db2, plan.samples, extra)
    r2 = run_cli(argv2, work, log(f"n{n2}"), args.timeout)
    cell["command_n2"] = shlex.join(argv2)
    cell["t_n2_s"] = r2.seconds if r2.ok() else None
    if not r2.ok():
        cell["error"] = f"N={n2}: {r2.error}"
        print(f"  {tag}: N={n2} failed: {r2.error}", flush=True)
        return cell
    per_trial = (r2.seconds - r1.seconds) / (n2 - plan.n1)
    cell["per_trial_s"] = per_trial
    cell["ratio"] = per_trial / golden
    cell["rss_mib"] = r2.rss_mib
    faults = k * n2
    size = db_bytes(db2)
    cell.update(db_bytes=size, faults_expected=faults,
                bytes_per_fault=size / faults if faults else None)
    print(f"  {tag}: N={n2} {r2.seconds:.2f} s, per trial {per_trial * 1e3:.1f} ms "
          f"= {per_trial / golden:.2f} x golden, {size} B", flush=True)

    rep = run_cli([*prefix, "report", str(db2), "-o", str(work / "report" / tag)], work,
                  log("report"), args.timeout)
    cell["report_s"] = rep.seconds if rep.ok() else None
    if not rep.ok():
        cell["report_error"] = rep.error
    res = run_cli([*argv2, "--resume"], work, log("resume"), args.timeout)
    cell["resume_s"] = res.seconds if res.ok() else None
    if not res.ok():
        cell["resume_error"] = res.error
    cell["faults_stored"] = stored_faults(db2)
    print(f"  {tag}: report {fmt_s(cell['report_s'], rep.error)}, "
          f"resume {fmt_s(cell['resume_s'], res.error)}", flush=True)
    return cell


# --------------------------------------------------------------------------- output


def fmt_s(v: float | None, err: str | None = None) -> str:
    return f"{v:.2f} s" if v is not None else f"ERROR ({err})"


def cell_text(cell: dict[str, Any] | None, key: str, fmt: str) -> str:
    if cell is None:
        return "-"
    v = cell.get(key)
    if v is None:
        err = cell.get("error") or cell.get(key.replace("_s", "_error")) or "n/a"
        return f"ERROR: {err}".replace("|", "/")
    text = format(v, fmt)
    return text + (f" (N2={cell['n2']})" if cell.get("reduced") and key == "ratio" else "")


def markdown(results: dict[str, Any]) -> str:
    ks = results["plan"]["ks"]
    cells = {(c["target"], c["k"]): c for c in results["cells"]}
    out: list[str] = []
    for title, key, fmt in (("per-trial time / golden", "ratio", ".2f"),
                            ("peak RSS of the N2 campaign (MiB)", "rss_mib", ".0f"),
                            ("report time (s)", "report_s", ".2f"),
                            ("resume of the finished campaign (s)", "resume_s", ".2f"),
                            ("DB bytes / fault", "bytes_per_fault", ".1f")):
        head = f"**{title}**"
        if key == "ratio":
            head += (f" (golden {results['golden_s'] * 1e3:.2f} ms, default session options, "
                     f"{results['plan']['samples']} samples; "
                     f"{results.get('golden_extended_s', 0) * 1e3:.2f} ms at EXTENDED)")
        if key == "rss_mib":
            head += (f" (golden inference process: "
                     f"{results.get('golden_process_rss_mib') or 0:.0f} MiB)")
        out.append(head)
        out.append("")
        out.append("| target | " + " | ".join(f"K={k}" for k in ks) + " |")
        out.append("|---|" + "---|" * len(ks))
        for target, _, _ in TARGETS:
            row = [cell_text(cells.get((target, k)), key, fmt) for k in ks]
            out.append(f"| {target} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_campaign.json"),
                    help="JSON results file [bench_campaign.json]")
    ap.add_argument("--quick", action="store_true", help="tiny model, K in {1, 100}, N 2/6")
    ap.add_argument("--cli", default="python -m enpheeph_onnx",
                    help="command prefix of the CLI under test [python -m enpheeph_onnx]")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where models, data, DBs, logs and reports go [a temp dir, removed]")
    ap.add_argument("--max-cell-seconds", type=float, default=360.0,
                    help="reduce N2 of a cell whose N2 campaign is projected longer [360]")
    ap.add_argument("--reduced-n2", type=int, default=7, help="N2 of a reduced cell [7]")
    ap.add_argument("--ks", default=None,
                    help="comma-separated K values to measure [the plan's: 1,1000,100000,"
                         "1000000; quick: 1,100]")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="limit per CLI command, seconds [3600]")
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu",
                    help="onnxruntime provider of the golden session and every campaign [cpu]")
    args = ap.parse_args(argv)
    CAMPAIGN_PROVIDER[0] = args.provider
    plan = QUICK if args.quick else FULL
    if args.ks:
        plan = replace(plan, ks=tuple(int(k) for k in args.ks.split(",")))
    prefix = shlex.split(args.cli)

    with work_dir(ap, args.workdir, "bench_campaign_", ("db", "logs", "report")) as work:
        return run(args, plan, prefix, work)


@contextlib.contextmanager
def work_dir(ap: argparse.ArgumentParser, given: Path | None, prefix: str,
             subdirs: tuple[str, ...]) -> Iterator[Path]:
    """``given`` (which must be empty or absent) or a temporary directory removed after,
    with ``subdirs`` created in it."""
    tmp = tempfile.TemporaryDirectory(prefix=prefix) if given is None else None
    work = Path(tmp.name) if tmp is not None else given.resolve()  # type: ignore[union-attr]
    if tmp is None and work.exists() and any(work.iterdir()):
        ap.error(f"--workdir {work} is not empty")
    try:
        for sub in subdirs:
            (work / sub).mkdir(parents=True, exist_ok=True)
        yield work
    finally:
        if tmp is not None:
            tmp.cleanup()


def finish(results: dict[str, Any], out: Path, started: float,
           table: Callable[[dict[str, Any]], str] | None = None) -> int:
    """Record the end load and total time, write ``out`` and print ``table(results)``
    (default: this script's tables)."""
    results["loadavg_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["total_s"] = time.perf_counter() - started
    write_json(out, results)
    print()
    print((table or markdown)(results))
    print(f"total {results['total_s']:.0f} s; results in {out}")
    return 0


def run(args: argparse.Namespace, plan: Plan, prefix: list[str], work: Path) -> int:
    started = time.perf_counter()
    model = build_model(plan.channels, plan.hidden)
    params = count_parameters(model)
    model_path = work / "cnn.onnx"
    onnx.save(model, model_path)
    print(f"model: {params:,} parameters ({model_path})", flush=True)

    x = np.random.default_rng(1).random((plan.samples, 3, 32, 32), dtype=np.float32)
    golden, logits = golden_seconds(model_path, x, provider=args.provider)
    golden_ext = golden_seconds(model_path, x, extended=True, provider=args.provider)[0]
    labels = logits.argmax(axis=1).astype(np.int64)
    data_path = work / "data.npz"
    np.savez(data_path, input=x, labels=labels)
    print(f"golden: {golden * 1e3:.2f} ms for {plan.samples} samples (median of 20); "
          f"{golden_ext * 1e3:.2f} ms at ORT_ENABLE_EXTENDED", flush=True)
    inference = run_cli([sys.executable, "-c", GOLDEN_RSS_SCRIPT, str(model_path),
                         str(data_path)], work, work / "logs" / "golden_rss.log", args.timeout)
    print(f"golden inference process: peak RSS {inference.rss_mib} MiB", flush=True)

    code = code_under_test(prefix, work)
    print(f"code under test: {code.get('file')} (commit {code.get('git_commit')})", flush=True)

    # Untimed warm-up: byte-compiles the package, fills the file cache, imports matplotlib.
    warm_db = work / "db" / "warmup.sqlite"
    warm = [run_cli(campaign_argv(prefix, model_path, data_path, "weight", 1, 1, warm_db,
                                  plan.samples), work, work / "logs" / "warmup.log", args.timeout)]
    if warm[0].ok():
        warm.append(run_cli([*prefix, "report", str(warm_db), "-o", str(work / "report" / "w")],
                            work, work / "logs" / "warmup_report.log", args.timeout))
    print("warm-up: " + ", ".join(fmt_s(w.seconds if w.ok() else None, w.error) for w in warm),
          flush=True)

    results: dict[str, Any] = {
        "method": "per_trial = (t(N2) - t(N1)) / (N2 - N1) of CLI campaigns (subprocess wall "
                  "clock); ratio = per_trial / golden (plain onnxruntime CPU session, default "
                  "options, median of 20 runs of all inputs at once)",
        "cli": args.cli,
        "quick": args.quick,
        "plan": {"channels": list(plan.channels), "hidden": plan.hidden,
                 "samples": plan.samples, "ks": list(plan.ks), "n1": plan.n1, "n2": plan.n2,
                 "n2_k1": plan.n2_k1, "n2_k1000": plan.n2_k1000,
                 "max_cell_seconds": args.max_cell_seconds, "reduced_n2": args.reduced_n2},
        "parameters": params,
        "golden_s": golden,
        "golden_extended_s": golden_ext,
        "golden_process_rss_mib": inference.rss_mib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "onnxruntime": ort.__version__,
        "provider": args.provider,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "code_under_test": code,
        "loadavg_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "warmup": [{"command": shlex.join(w.argv), "seconds": w.seconds, "error": w.error}
                   for w in warm],
        "cells": [],
    }
    for target, kind, extra in TARGETS:
        k1: dict[str, Any] | None = None
        for k in plan.ks:
            cell = measure_cell(prefix, work, model_path, data_path, target, kind, k, plan,
                                golden, k1, args, extra)
            if k == plan.ks[0] and "per_trial_s" in cell:
                k1 = cell
            results["cells"].append(cell)
            write_json(args.out, results)
    results["golden_after_s"] = golden_seconds(model_path, x, provider=args.provider)[0]
    print(f"golden again at the end: {results['golden_after_s'] * 1e3:.2f} ms", flush=True)
    return finish(results, args.out, started)


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
