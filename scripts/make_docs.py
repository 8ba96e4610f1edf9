"""Regenerate the numbers and figures the README quotes, into ``docs/``, and the README's
generated blocks from them.

The README never holds a number by hand: each quoted result sits between
``<!-- make_docs:NAME begin -->`` and ``<!-- make_docs:NAME end -->`` and is exactly the
content of ``docs/NAME.md``, which this script writes from campaigns on the shipped models
with fixed seeds (through the CLI, as a user runs them; the main job is timed from
outside). ``tests/test_docs.py`` checks that every block equals its file (it reads files;
it reruns nothing).

Usage::

    python scripts/make_docs.py            # ~2 min: campaigns, figures, docs/*.md, README
    python scripts/make_docs.py --render   # README blocks from the docs/*.md already there
    python scripts/make_docs.py --check    # exit 1 when a README block differs from docs/

Writes ``docs/main_job.md``, ``docs/main_job_accuracy_vs_rate.png``, ``docs/bits.md``,
``docs/variants.md``, ``docs/compare_accuracy_vs_rate.png`` and ``docs/numbers.json`` (every
number, unformatted, with the machine that measured them). Benchmark figures come from
the ``scripts/bench_*.py`` scripts and ``scripts/reproduce_paper.py``, which write their own
``docs/*.json``; the README's paper section is the block ``reproduce_paper``, written by
``scripts/reproduce_paper.py`` (``--render`` re-renders it from its JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- make_docs:(?P<name>[a-z_]+) begin -->\n(?P<body>.*?)"
                   r"<!-- make_docs:(?P=name) end -->", re.S)
MAIN_JOB = ("campaign models/digits_cnn.onnx --data models/digits_test.npz --fault-rate "
            "1e-7:1e-1:2 --trials 30 --seed 0 -o {db} --resume")
VARIANTS = (("dense", "digits_cnn", "digits_test"), ("pruned", "digits_cnn_pruned", "digits_test"),
            ("int8", "digits_cnn_int8", "digits_test"), ("snn", "digits_snn", "digits_snn_test"))


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``enpheeph-onnx ARGS`` in a fresh interpreter, from the project root."""
    r = subprocess.run([sys.executable, "-m", "enpheeph_onnx", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800)
    if check and r.returncode != 0:
        raise SystemExit(f"enpheeph-onnx {' '.join(args)} failed ({r.returncode}):\n"
                         f"{r.stderr}")
    return r


def campaign_json(*args: str) -> dict[str, Any]:
    return json.loads(cli("campaign", *args, "--json", "--no-progress").stdout)  # type: ignore[no-any-return]


def main_job(tmp: Path, numbers: dict[str, Any]) -> str:
    """The README's first command, timed from outside (campaign + report), its abridged
    output and the figure of its report."""
    db = tmp / "digits.sqlite"
    start = time.perf_counter()
    run = cli(*MAIN_JOB.format(db=db).split(), "--no-progress")
    cli("report", str(db), "-o", str(tmp / "report"))
    seconds = time.perf_counter() - start
    shutil.copyfile(tmp / "report" / "accuracy_vs_rate.png",
                    DOCS / "main_job_accuracy_vs_rate.png")
    s = json.loads(cli(*MAIN_JOB.format(db=db).split(), "--json").stdout)
    numbers["main_job"] = {"seconds": seconds, "golden_accuracy": s["golden_accuracy"],
                           "mean_accuracy": s["mean_accuracy"],
                           "accuracy_drop": s["accuracy_drop"],
                           "per_rate": [{"rate": r["rate"], "accuracy": r["accuracy"],
                                         "mean_faults": r["mean_faults"]}
                                        for r in s["per_rate"]]}
    lines = run.stdout.splitlines()
    table_at = next(i for i, ln in enumerate(lines) if ln.startswith("fault rate"))
    note_at = next(i for i, ln in enumerate(lines) if ln.startswith("(95 %"))
    rows = [ln for ln in lines[table_at + 2:note_at]
            if ln.split() and float(ln.split()[0]) >= 1e-4]
    passed = run.stderr.strip().splitlines()[-1].replace(str(db), "results/digits.sqlite")
    out = [*lines[:4], "", *lines[table_at:table_at + 2], "...", *rows, lines[note_at], "...",
           passed]
    hold = [r for r in s["per_rate"] if r["accuracy"]["mean"] >= s["golden_accuracy"] - 0.01]
    last_ok = max(r["rate"] for r in hold)
    faults = next(r["mean_faults"] for r in s["per_rate"] if r["rate"] == last_ok)
    rate_text = f"{last_ok:.0e}".replace("e-0", "e-")
    return (f"The main job takes about {seconds:.0f} s on this {os.cpu_count()}-core CPU "
            "(campaign and report, measured by `scripts/make_docs.py`). `--resume` makes it "
            "safe to re-run or to\ninterrupt (Ctrl-C, kill): finished trials are kept and the "
            "next run continues. It prints\n(abridged; intervals are over the 30 trials of "
            "each rate, see Statistics below):\n\n```\n" + "\n".join(out) + "\n```\n\n"
            "and `results/report/accuracy_vs_rate.png` shows the mean accuracy with its 95 % "
            "band over trials\nand every trial's accuracy as a dot, above the critical-SDC "
            "and DUE rates:\n\n![accuracy versus fault rate, the main job]"
            "(docs/main_job_accuracy_vs_rate.png)\n\n"
            f"On this 13,706-parameter model the mean accuracy stays within a point of golden "
            f"up to {rate_text} faults per\nparameter (≈{faults:.1f} faults per trial) and "
            "falls below it beyond.\n")


def bits(numbers: dict[str, Any]) -> str:
    """A single flip of bit 30 against one of bit 0, 100 trials each."""
    res = {}
    for bit in (30, 0):
        s = campaign_json("models/digits_cnn.onnx", "--data", "models/digits_test.npz",
                          "--bits", str(bit), "--faults-per-trial", "1", "--trials", "100")
        acc = s["per_rate"][0]["accuracy"]
        crit = s["per_rate"][0]["p_trial_critical"]
        res[bit] = {"drop": s["accuracy_drop"], "mean": acc["mean"], "low": acc["ci_low"],
                    "high": acc["ci_high"], "critical_trials": crit["k"], "trials": crit["n"]}
    numbers["bits"] = res
    b30, b0 = res[30], res[0]
    return (f"A single flip of bit 30 (the top exponent bit of a float32 weight) costs "
            f"{100 * b30['drop']:.1f} points on\naverage (accuracy {b30['mean']:.3f} "
            f"[{b30['low']:.3f}, {b30['high']:.3f}] over {b30['trials']} trials; "
            f"{b30['critical_trials']} of {b30['trials']} trials have a critical\nSDC), a "
            f"flip of bit 0 {100 * b0['drop']:.1f} points:\n\n```bash\n"
            "enpheeph-onnx campaign models/digits_cnn.onnx --data models/digits_test.npz "
            f"--bits 30 --faults-per-trial 1 --trials 100   # drop {b30['drop']:.4f}\n"
            "enpheeph-onnx campaign models/digits_cnn.onnx --data models/digits_test.npz "
            f"--bits 0 --faults-per-trial 1 --trials 100    # drop {b0['drop']:.4f}\n```\n")


def variants(tmp: Path, numbers: dict[str, Any]) -> str:
    """The four shipped variants' sweeps and their comparison figure."""
    dbs, res = [], {}
    for label, model, data in VARIANTS:
        db = tmp / f"{label}.sqlite"
        s = campaign_json(f"models/{model}.onnx", "--data", f"models/{data}.npz",
                          "--fault-rate", "1e-6:1e-1:1", "--trials", "30", "-o", str(db))
        res[label] = {"golden": s["golden_accuracy"], "mean": s["mean_accuracy"],
                      "per_rate": {str(r["rate"]): r["accuracy"]["mean"]
                                   for r in s["per_rate"]}}
        dbs.append(db)
    labels = [x for label, _, _ in VARIANTS for x in ("--label", label)]
    cli("report", *map(str, dbs), *labels, "-o", str(tmp / "variants"))
    shutil.copyfile(tmp / "variants" / "compare_accuracy_vs_rate.png",
                    DOCS / "compare_accuracy_vs_rate.png")
    numbers["variants"] = res
    means = ", ".join(f"{'SNN' if k == 'snn' else k} {v['mean']:.3f}" for k, v in res.items())
    goldens = " / ".join(f"{v['golden']:.4f}" for v in res.values())
    at = ", ".join(f"{'SNN' if k == 'snn' else k} {v['per_rate']['0.01']:.3f}"
                   for k, v in res.items())
    return ("![accuracy versus fault rate for the four variants]"
            "(docs/compare_accuracy_vs_rate.png)\n\n"
            f"Mean accuracy over the sweep: {means} (golden\n{goldens}); at 1e-2 faults per "
            f"parameter: {at}. Bands are 95 % Wilson\nintervals over the 30 trials of each "
            "rate.\n")


def _k(k: int) -> str:
    return f"{k:,}"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


def perf_campaign(d: dict[str, Any]) -> str:
    """The per-trial cost table of ``docs/bench_campaign.json``."""
    cells = {(c["target"], c["k"]): c for c in d["cells"]}
    ks = sorted({c["k"] for c in d["cells"]})
    head = "| per trial: ms (/ golden) | " + " | ".join(f"K = {_k(k)}" for k in ks) + " |"
    lines = [head, "|---|" + "---|" * len(ks)]
    for target, label in (("weights", "weights"),
                          ("weights, --optimization all", "weights, `--optimization all`"),
                          ("activations", "activations"),
                          ("activations, --optimization all",
                           "activations, `--optimization all`")):
        row = []
        for k in ks:
            c = cells.get((target, k))
            row.append("-" if c is None or c.get("per_trial_s") is None else
                       f"{_ms(c['per_trial_s'])} ({c['ratio']:.2f})")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for kind in ("weights", "activations"):
        row = []
        for k in ks:
            a, b = cells.get((kind, k)), cells.get((f"{kind}, --optimization all", k))
            row.append(" / ".join("-" if c is None or c.get("rss_mib") is None
                                  else f"{c['rss_mib']:.0f}" for c in (a, b)))
        lines.append(f"| peak RSS (MiB): {kind} / {kind} `all` | " + " | ".join(row) + " |")
    return ("\n".join(lines) + "\n\n"
            f"(`python scripts/bench_campaign.py`, {d['total_s']:.0f} s on this "
            f"{d['cpu_count']}-core machine, onnxruntime {d['onnxruntime']}; "
            "`docs/bench_campaign.json`.) The golden run measured "
            f"{d['golden_s'] * 1e3:.1f} ms at the start and {d['golden_after_s'] * 1e3:.1f} ms "
            f"at the end ({d['golden_extended_s'] * 1e3:.1f} ms at the campaigns' default\n"
            "`ORT_ENABLE_EXTENDED`); the ratios use the first. Golden inference in a process "
            f"of its own peaks at {d['golden_process_rss_mib']:.0f} MiB.\n")


def perf_pytorchfi(d: dict[str, Any]) -> str:
    """PyTorchFI's time per trial over ours, from ``docs/bench_pytorchfi.json``."""
    cells = {(c["target"], c["k"], c["bits"]): c for c in d["cells"]}
    ks = sorted({c["k"] for c in d["cells"]})

    def x(c: dict[str, Any] | None) -> str:
        if c is None or c.get("speedup") is None:
            return "n/a"
        return f"{c['speedup']:.0f}x" if c["speedup"] >= 10 else f"{c['speedup']:.1f}x"

    lines = ["| PyTorchFI / ours, bits uniform / bit 0 | "
             + " | ".join(f"K = {_k(k)}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for target in ("weights", "activations"):
        lines.append(f"| {target} | " + " | ".join(
            f"{x(cells.get((target, k, 'all')))} / {x(cells.get((target, k, '0')))}"
            for k in ks) + " |")
    c = cells[("weights", ks[0], "0")]
    ours, theirs = (c[w]["in_process_trial_s_median"] for w in ("ours", "pytorchfi"))
    return ("\n".join(lines) + "\n\n"
            f"(`python scripts/bench_pytorchfi.py`, {d['total_s']:.0f} s, ours at "
            f"`--optimization {d['optimization']}`; `docs/bench_pytorchfi.json`. n/a: a "
            "difference below the start-up noise; in-process a single bit-0 weight trial "
            f"takes {ours * 1e3:.1f} ms for us against {theirs * 1e3:.1f} ms for "
            "PyTorchFI.)\n")


def perf_overhead(d: dict[str, Any]) -> str:
    """Standalone injected models, from ``docs/bench_overhead.json``."""
    cells = {(c["target"], c["k"], c["bits"]): c for c in d["cells"]}
    ks = sorted({c["k"] for c in d["cells"]})
    w = [c["ratio"] for c in d["cells"] if c["target"] == "weights"]
    mech = [c["mechanism_ratio"] for c in d["cells"]
            if c["target"] == "activations" and c["k"] >= 1000]
    acts = ", ".join(f"K = {_k(k)} {cells[('activations', k, '0')]['ratio']:.2f} / "
                     f"{cells[('activations', k, 'all')]['ratio']:.2f}" for k in ks)
    return (f"(`python scripts/bench_overhead.py`, {d['total_s']:.0f} s; "
            "`docs/bench_overhead.json`): weight faults "
            f"{min(w):.2f}-{max(w):.2f}x at every K; activation faults with bit 0 / all "
            f"bits: {acts}; mechanism (every mask 0) {min(mech):.2f}-{max(mech):.2f}x from "
            "K = 1,000 on.\n")


def perf_store(d: dict[str, Any]) -> str:
    """Storage, summary and plans, from ``docs/bench_store.json``."""
    return (f"(`python scripts/bench_store.py`): a {d['trials']}-trial x "
            f"{_k(d['faults_per_trial'])}-weight-fault campaign on the digits CNN runs in "
            f"{d['campaign_s']:.1f} s and stores {d['db_bytes_per_fault']:.1f} bytes per "
            f"fault ({d['db_bytes'] / 1e6:.0f} MB); loading its summary takes "
            f"{d['summary_s']:.1f} s at {d['summary_rss_mib']:.0f} MiB peak RSS (a whole "
            f"process, imports included), `report` {d['report_s']:.1f} s, `campaign "
            f"--resume` of the finished campaign {d['resume_s']:.1f} s. `inject --plan` of a "
            f"binary {_k(d['inject_plan_faults'])}-fault plan on a "
            f"{_k(d['mlp_params'])}-parameter model: {d['inject_plan_s']:.1f} s; of a "
            f"{_k(d['inject_json_faults'])}-fault JSON plan: {d['inject_json_s']:.1f} s.\n")


def perf_backends(d: dict[str, Any]) -> str:
    """The backends side by side, from ``docs/bench_backends.json``."""
    r = d["rows"]
    ms = {k: v["per_trial_s"] * 1e3 for k, v in r.items()}
    same = all(v["same_as_serial"] for v in r.values())
    return (f"(`python scripts/bench_backends.py`, `docs/bench_backends.json`): per-trial "
            f"cost from the difference of a {d['n2']}- and a {d['n1']}-trial-per-level CLI "
            f"campaign, {d['levels']} levels: serial {ms['serial']:.2f} ms, `--backend local "
            f"--workers 1` {ms['local, 1 worker']:.2f} ms, `--workers 2` "
            f"{ms['local, 2 workers']:.2f} ms (**{d['speedup_2_over_1_local']:.2f}x over one "
            f"worker**, {r['local, 2 workers']['speedup_vs_serial']:.2f}x over serial), "
            f"`--backend ray --workers 2` {ms['ray, 2 actors']:.2f} ms"
            + ("; every backend's outcomes equal the serial run's" if same else "")
            + f". Two pure-Python processes at once did {d['parallel_throughput']:.2f}x the "
            "work of one in the same run, which bounds what two workers can gain.\n")


PERF = {"perf_campaign": ("bench_campaign", perf_campaign),
        "perf_pytorchfi": ("bench_pytorchfi", perf_pytorchfi),
        "perf_overhead": ("bench_overhead", perf_overhead),
        "perf_store": ("bench_store", perf_store),
        "perf_backends": ("bench_backends", perf_backends)}
"""README blocks rendered from the benchmark scripts' JSON (the benchmarks are not rerun:
each takes minutes; rerun one and then ``make_docs.py --render``)."""


def render_perf(docs: Path = DOCS) -> dict[str, str]:
    """The benchmark blocks' text, from ``docs/bench_*.json``."""
    return {name: fn(json.loads((docs / f"{src}.json").read_text()))
            for name, (src, fn) in PERF.items()}


def render(readme: str, docs: Path = DOCS) -> str:
    """``readme`` with every generated block replaced by its ``docs/NAME.md``."""
    def body(m: re.Match[str]) -> str:
        name = m.group("name")
        text = (docs / f"{name}.md").read_text()
        return f"<!-- make_docs:{name} begin -->\n{text}<!-- make_docs:{name} end -->"

    return BLOCK.sub(body, readme)


def stale_blocks(readme: str, docs: Path = DOCS) -> list[str]:
    """Names of the README blocks that differ from (or lack) their ``docs/NAME.md``."""
    bad = []
    for m in BLOCK.finditer(readme):
        path = docs / f"{m.group('name')}.md"
        if not path.is_file() or path.read_text() != m.group("body"):
            bad.append(m.group("name"))
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--render", action="store_true",
                      help="only rewrite the README blocks from docs/*.md")
    mode.add_argument("--check", action="store_true",
                      help="exit 1 when a README block differs from its docs/*.md")
    args = ap.parse_args()
    readme = README.read_text()
    if args.check:
        bad = stale_blocks(readme)
        if bad:
            raise SystemExit(f"README blocks out of date: {', '.join(bad)} (run "
                             "python scripts/make_docs.py --render)")
        print(f"PASSED make_docs --check: {len(BLOCK.findall(readme))} blocks")
        return
    if not args.render:
        numbers: dict[str, Any] = {"machine": {"cpus": os.cpu_count(),
                                               "processor": platform.processor(),
                                               "python": platform.python_version()},
                                   "date": time.strftime("%Y-%m-%d")}
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            texts = {"main_job": main_job(tmp, numbers), "bits": bits(numbers),
                     "variants": variants(tmp, numbers)}
        for name, text in texts.items():
            (DOCS / f"{name}.md").write_text(text)
        (DOCS / "numbers.json").write_text(json.dumps(numbers, indent=1) + "\n")
    for name, text in render_perf().items():
        (DOCS / f"{name}.md").write_text(text)
    README.write_text(render(readme))
    print(f"PASSED make_docs: {len(BLOCK.findall(readme))} README blocks from docs/")


if __name__ == "__main__":
    main()
